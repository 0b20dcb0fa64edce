// The importance-weighted bound (Burda, Grosse & Salakhutdinov 2016) as a training objective:
// log (1/K) Σ_k w_k per example, w_k = p(x, z_k)/q(z_k|x), over the K draws the latent block
// made. Rows are sample-major, as the reparameterization writes them: row r = s·B + b.
//
// iw_log_weights (one lane per row): lw[r] = −nll[r] + Σ_j ratio[r·W + j], ratio holding one
//   stochastic layer's terms of log p(z) − log q(z|·); with ACCUMULATE, lw[r] += Σ_j ratio
//   (a hierarchy's further layers, one pass each: a chain's weight is the product of its
//   layers' ratios).
// iw_normalize (one lane per example): the normalized weights w̃[s·B + b] = w_s / Σ_k w_k, by the
//   softmax of the log-weights with their maximum m subtracted (every exponent ≤ 0, the largest
//   exactly 0, so the sum is in [1, K] and neither overflows nor underflows to 0), and the
//   bound's gap to the average reconstruction, gap[b] = −(m + log Σ − log K) − (1/K) Σ_s nll,
//   which the metric row adds to the reconstruction column: the two columns sum to −bound.
// iw_scale_rows (one lane per element): x[r, :] *= w̃[r]. The gradient of −bound is
//   Σ_k w̃_k ∂(−log w_k); the loss writes ∂NLL/∂out unweighted and this applies w̃ per draw.

struct IwParams {
    batch: u32,    // B examples
    samples: u32,  // K draws per example
    width: u32,    // W: a ratio row's terms (iw_log_weights), or a row's elements (iw_scale_rows)
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: IwParams;
// Private copy, taken first thing: lavapipe gathers a uniform lane by lane once a branch has
// made the execution mask live.
var<private> P: IwParams;
// The NLL and the gap terms share the workspace's per-example buffer, so both bindings are
// read_write: one buffer may not be bound read-only and writable in one dispatch.
@group(0) @binding(1) var<storage, read_write> nll: array<f32>;    // [K·B], only read
@group(0) @binding(2) var<storage, read> ratio: array<f32>;        // [K·B, W]
@group(0) @binding(3) var<storage, read_write> lw: array<f32>;     // [K·B] log-weights
@group(0) @binding(4) var<storage, read_write> weights: array<f32>; // [K·B] normalized
@group(0) @binding(5) var<storage, read_write> gap: array<f32>;    // [B]
@group(0) @binding(6) var<storage, read_write> x: array<f32>;      // [K·B, W], scaled in place

override ACCUMULATE: bool = false;

@compute @workgroup_size(64)
fn iw_log_weights(@builtin(global_invocation_id) gid: vec3<u32>) {
    P = p;
    let r = gid.x + gid.y * 65535u * 64u;
    if (r >= P.samples * P.batch) { return; }
    var acc = 0.0;
    for (var j = 0u; j < P.width; j++) {
        acc += ratio[r * P.width + j];
    }
    if (ACCUMULATE) {
        lw[r] = lw[r] + acc;
    } else {
        lw[r] = acc - nll[r];
    }
}

@compute @workgroup_size(64)
fn iw_normalize(@builtin(global_invocation_id) gid: vec3<u32>) {
    P = p;
    let b = gid.x + gid.y * 65535u * 64u;
    if (b >= P.batch) { return; }
    var m = lw[b];
    for (var s = 1u; s < P.samples; s++) {
        m = max(m, lw[s * P.batch + b]);
    }
    var total = 0.0;
    var recon = 0.0;
    for (var s = 0u; s < P.samples; s++) {
        let r = s * P.batch + b;
        let e = exp(lw[r] - m);
        weights[r] = e;
        total += e;
        recon += nll[r];
    }
    let inv = 1.0 / total;
    for (var s = 0u; s < P.samples; s++) {
        let r = s * P.batch + b;
        weights[r] = weights[r] * inv;
    }
    let k = f32(P.samples);
    gap[b] = -(m + log(total) - log(k)) - recon / k;
}

@compute @workgroup_size(64)
fn iw_scale_rows(@builtin(global_invocation_id) gid: vec3<u32>) {
    P = p;
    let i = gid.x + gid.y * 65535u * 64u;
    if (i >= P.samples * P.batch * P.width) { return; }
    x[i] = x[i] * weights[i / P.width];
}
