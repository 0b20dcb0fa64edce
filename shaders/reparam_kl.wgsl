// Fused reparameterize + closed-form KL, forward and backward (step.wgsl and rng.wgsl are
// prepended). The encoder head writes one row per example: [μ (Z) | log σ² (Z)].
//
// forward:  lv = clamp(log σ², LV_MIN, LV_MAX); σ = exp(lv/2); ε = N(0,1) keyed by
//           (seed, step, stream·2^16 + sample, example·Z + j);
//           z[s·B + b, j] = μ + σ·ε for each of the L samples s (rows stacked sample-major);
//           kl[b, j] = ½ (σ² + μ² − 1 − lv), the KL's terms (a segment sum adds them up);
//           with LOG_RATIO, log_ratio[s·B + b, j] = ½(ε² − z² + lv), whose row sums are
//           log p(z) − log q(z|x)
// backward: with dz summed over the L samples,
//           dμ = Σ_s dz + β·μ ;  dlv = ½ Σ_s dz·ε·σ + ½·β·(σ² − 1)   (0 where lv was clamped)
// ε is drawn again in backward instead of being stored: the RNG is a pure function of its key.
// One invocation per (b, j): B·Z is small, and one lane per example would leave all but a
// couple of workgroups (CPU threads, on lavapipe) idle. z rows may be wider than Z (z_stride):
// a conditional decoder's input carries the one-hot label after the code.

struct ReparamParams {
    batch: u32,     // B examples
    latent: u32,    // Z
    samples: u32,   // L Monte Carlo samples per example
    lv_min: f32,
    lv_max: f32,
    z_stride: u32,  // row stride of z (≥ Z)
}

@group(0) @binding(0) var<uniform> p: ReparamParams;
// Private copies of the uniforms, taken first thing in each entry: once a branch has made the
// execution mask live, lavapipe loads a uniform lane by lane (a gather) on every read.
var<private> P: ReparamParams;
@group(0) @binding(1) var<uniform> step: Step;
var<private> S: Step;
@group(0) @binding(2) var<storage, read> enc: array<f32>;          // [B, 2Z]
@group(0) @binding(3) var<storage, read_write> z: array<f32>;      // forward: [L·B, Z'] out; backward: dz in
@group(0) @binding(4) var<storage, read_write> kl: array<f32>;     // forward: [B, Z] out
@group(0) @binding(5) var<storage, read_write> denc: array<f32>;   // backward: [B, 2Z] out
@group(0) @binding(6) var<storage, read_write> log_ratio: array<f32>; // forward, LOG_RATIO: [L·B, Z]

// Also write the terms of log p(z) − log q(z|x) per sample, for importance-weighted bounds.
override LOG_RATIO: bool = false;

fn eps_at(s: u32, b: u32, j: u32) -> f32 {
    return rng_normal(S.seed, S.step, (S.stream << 16u) | s, b * P.latent + j);
}

@compute @workgroup_size(64)
fn reparam_kl_forward(@builtin(global_invocation_id) gid: vec3<u32>) {
    P = p;
    S = step;
    let i = gid.x + gid.y * 65535u * 64u;
    let zd = P.latent;
    if (i >= P.batch * zd) { return; }
    let b = i / zd;
    let j = i % zd;
    let mu = enc[b * 2u * zd + j];
    let lv = clamp(enc[b * 2u * zd + zd + j], P.lv_min, P.lv_max);
    let sigma = exp(0.5 * lv);
    for (var s = 0u; s < P.samples; s++) {
        let e = eps_at(s, b, j);
        let zv = mu + sigma * e;
        let r = s * P.batch + b;
        z[r * P.z_stride + j] = zv;
        // log N(z; 0, 1) − log N(z; μ, σ²): the 2π terms cancel.
        if (LOG_RATIO) { log_ratio[r * zd + j] = 0.5 * (e * e - zv * zv + lv); }
    }
    kl[i] = 0.5 * (sigma * sigma + mu * mu - 1.0 - lv);
}

@compute @workgroup_size(64)
fn reparam_kl_backward(@builtin(global_invocation_id) gid: vec3<u32>) {
    P = p;
    S = step;
    let i = gid.x + gid.y * 65535u * 64u;
    let zd = P.latent;
    if (i >= P.batch * zd) { return; }
    let b = i / zd;
    let j = i % zd;
    let beta = S.kl_beta;
    let mu = enc[b * 2u * zd + j];
    let raw = enc[b * 2u * zd + zd + j];
    let lv = clamp(raw, P.lv_min, P.lv_max);
    let sigma = exp(0.5 * lv);
    var dz_sum = 0.0;
    var dz_eps = 0.0;
    for (var s = 0u; s < P.samples; s++) {
        let g = z[(s * P.batch + b) * P.z_stride + j];
        dz_sum += g;
        dz_eps += g * eps_at(s, b, j);
    }
    denc[b * 2u * zd + j] = dz_sum + beta * mu;
    let inside = raw >= P.lv_min && raw <= P.lv_max;
    denc[b * 2u * zd + zd + j] = select(0.0, 0.5 * dz_eps * sigma + 0.5 * beta * (sigma * sigma - 1.0), inside);
}
