// Fused reparameterize + closed-form KL, forward and backward (step.wgsl and rng.wgsl are
// prepended). The encoder head writes one row per example: [μ (Z) | log σ² (Z)].
//
// forward:  lv = clamp(log σ², LV_MIN, LV_MAX); σ = exp(lv/2); ε = N(0,1) keyed by
//           (seed, step, stream·2^16 + sample_base + sample, example·Z + j);
//           z[s·B + b, j] = μ + σ·ε for each of the L samples s (rows stacked sample-major);
//           kl[b, j] = ½ (σ² + μ² − 1 − lv), the KL's terms (a segment sum adds them up);
//           with LOG_RATIO, log_ratio[s·B + b, j] = ½(ε² − z² + lv), whose row sums are
//           log p(z) − log q(z|x)
// backward: with dz summed over the L samples,
//           dμ = Σ_s dz + β·μ ;  dlv = ½ Σ_s dz·ε·σ + ½·β·(σ² − 1)   (0 where lv was clamped)
// WEIGHTED backward (the importance-weighted bound): each draw's term is the sampled
//           log q(z|x) − log p(z) = ½(z² − ε² − lv) instead of the closed-form KL, weighted
//           by the draw's normalized weight w̃ (row_weight[s·B + b]); with ε held fixed its
//           gradient is z on z (log q's own μ-dependence cancels through z) and −½ on lv:
//           g_s = dz_s + w̃_s·z_s ;  dμ = Σ_s g_s ;  dlv = ½σ Σ_s g_s·ε_s − ½ Σ_s w̃_s
// ε is drawn again in backward instead of being stored: the RNG is a pure function of its key.
// A hierarchical VAE's upper layer i draws with sample_base 2^15 + i (one draw per row of the
// layer below, sample 0), so its ε never repeats z₁'s or another layer's.
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
    sample_base: u32, // added to the sample index in ε's key
    kl_scale: f32,  // weight of each row's KL terms in the gradient, on top of β (1/L for per-draw rows)
}

@group(0) @binding(0) var<uniform> p: ReparamParams;
// Private copies of the uniforms, taken first thing in each entry: once a branch has made the
// execution mask live, lavapipe loads a uniform lane by lane (a gather) on every read.
var<private> P: ReparamParams;
@group(0) @binding(1) var<uniform> step: Step;
var<private> S: Step;
@group(0) @binding(2) var<storage, read> enc: array<f32>;          // [B, 2Z]
@group(0) @binding(3) var<storage, read_write> z: array<f32>;      // forward: [L·B, Z'] out; backward: dz in
@group(0) @binding(4) var<storage, read_write> kl: array<f32>;     // forward: [B, Z] out (hier_kl: [L·B, Z])
@group(0) @binding(5) var<storage, read_write> denc: array<f32>;   // backward: [B, 2Z] out
@group(0) @binding(6) var<storage, read_write> log_ratio: array<f32>; // forward, LOG_RATIO: [L·B, Z]
@group(0) @binding(11) var<storage, read> row_weight: array<f32>;  // WEIGHTED: [L·B] normalized weights

// Also write the terms of log p(z) − log q(z|x) per sample, for importance-weighted bounds.
override LOG_RATIO: bool = false;
// Write the KL's terms; off for a hierarchical VAE's z₁, whose prior is p(z₁|z₂) (hier_kl).
override WRITE_KL: bool = true;
// Weight each draw's prior terms by row_weight (the importance-weighted bound) instead of by
// β·kl_scale, and take the sampled log q − log p in place of the closed-form KL.
override WEIGHTED: bool = false;

fn eps_at(s: u32, b: u32, j: u32) -> f32 {
    return rng_normal(S.seed, S.step, (S.stream << 16u) | (P.sample_base + s), b * P.latent + j);
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
    if (WRITE_KL) { kl[i] = 0.5 * (sigma * sigma + mu * mu - 1.0 - lv); }
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
    var w_sum = 0.0;
    for (var s = 0u; s < P.samples; s++) {
        let e = eps_at(s, b, j);
        var g = z[(s * P.batch + b) * P.z_stride + j];
        if (WEIGHTED) {
            let w = row_weight[s * P.batch + b];
            g += w * (mu + sigma * e);
            w_sum += w;
        }
        dz_sum += g;
        dz_eps += g * e;
    }
    let inside = raw >= P.lv_min && raw <= P.lv_max;
    if (WEIGHTED) {
        denc[b * 2u * zd + j] = dz_sum;
        denc[b * 2u * zd + zd + j] = select(0.0, 0.5 * dz_eps * sigma - 0.5 * w_sum, inside);
        return;
    }
    let w = beta * P.kl_scale;
    denc[b * 2u * zd + j] = dz_sum + w * mu;
    denc[b * 2u * zd + zd + j] = select(0.0, 0.5 * dz_eps * sigma + 0.5 * w * (sigma * sigma - 1.0), inside);
}

// ---- a hierarchical VAE's lower layer: z₁ ~ q(z₁|x) = N(μ, σ²), prior p(z₁|z₂) = N(μₚ, σₚ²) ----
// The ladder VAE's form of the lower KL term: the entropy of q in closed form, the cross
// entropy with the conditional prior at each draw of z₁ (and of z₂ inside μₚ, σₚ):
//   t = E_q[log q(z₁|x)] − log p(z₁|z₂) = ½(lvₚ − 1 − lv + (z₁ − μₚ)²·e^(−lvₚ))   (2π cancels)
// hier_kl writes t into kl and, weighted by β·kl_scale, its gradients: dz₁ (into dz_kl) and
// [dμₚ | d lvₚ] (into dprior, 0 where lvₚ was clamped). sample_backward then adds the
// decoder's, the upper encoder's and this term's dz₁, and ∂t/∂lv = −½ (the entropy).
// hier_kl runs over the L·B rows r = s·B + b of z₁ (example b's q from enc row b); with
// LOG_RATIO it also writes log p(z₁|z₂) − log q(z₁|x) = ½(lv + ε² − lvₚ − (z₁ − μₚ)²e^(−lvₚ))
// per element, for importance weights. Each row's gradients are weighted by β·kl_scale (1/L:
// the terms are averaged over the L draws, as the NLL is). A layer z_k below the top of a deeper
// hierarchy is the same with q(z_k|z_{k−1})'s rows as enc (one draw per row).
// WEIGHTED (the importance-weighted bound): row r's gradients are weighted by row_weight[r]
// instead of β·kl_scale, and sample_backward's entropy by the sum of its draws' weights. The
// sampled log q(z₁|x) − log p(z₁|z₂) = ½(lvₚ − lv − ε² + (z₁ − μₚ)²e^(−lvₚ)) differs from t only
// by terms constant in the parameters with ε fixed, so its gradients are t's.
@group(0) @binding(7) var<storage, read> prior: array<f32>;          // [L·B, 2Z]: μₚ | log σₚ²
@group(0) @binding(8) var<storage, read_write> dprior: array<f32>;   // [L·B, 2Z]
@group(0) @binding(9) var<storage, read> dz_up: array<f32>;          // [L·B, Z']: from q(z₂|z₁)'s net
@group(0) @binding(10) var<storage, read_write> dz_kl: array<f32>;   // [L·B, Z]

@compute @workgroup_size(64)
fn hier_kl(@builtin(global_invocation_id) gid: vec3<u32>) {
    P = p;
    S = step;
    let i = gid.x + gid.y * 65535u * 64u;
    let zd = P.latent;
    if (i >= P.samples * P.batch * zd) { return; }
    let r = i / zd;
    let j = i % zd;
    let b = r % P.batch;
    var beta = S.kl_beta * P.kl_scale;
    if (WEIGHTED) { beta = row_weight[r]; }
    let lv = clamp(enc[b * 2u * zd + zd + j], P.lv_min, P.lv_max);
    let zv = z[r * P.z_stride + j];
    let mu_p = prior[r * 2u * zd + j];
    let raw_p = prior[r * 2u * zd + zd + j];
    let lv_p = clamp(raw_p, P.lv_min, P.lv_max);
    let inv = exp(-lv_p);
    let d = zv - mu_p;
    kl[i] = 0.5 * (lv_p - 1.0 - lv + d * d * inv);
    dz_kl[i] = beta * d * inv;
    dprior[r * 2u * zd + j] = -beta * d * inv;
    let inside = raw_p >= P.lv_min && raw_p <= P.lv_max;
    dprior[r * 2u * zd + zd + j] = select(0.0, 0.5 * beta * (1.0 - d * d * inv), inside);
    if (LOG_RATIO) {
        let e = eps_at(r / P.batch, b, j);
        log_ratio[i] = 0.5 * (lv + e * e - lv_p - d * d * inv);
    }
}

@compute @workgroup_size(64)
fn sample_backward(@builtin(global_invocation_id) gid: vec3<u32>) {
    P = p;
    S = step;
    let i = gid.x + gid.y * 65535u * 64u;
    let zd = P.latent;
    if (i >= P.batch * zd) { return; }
    let b = i / zd;
    let j = i % zd;
    let raw = enc[b * 2u * zd + zd + j];
    let lv = clamp(raw, P.lv_min, P.lv_max);
    let sigma = exp(0.5 * lv);
    // Each draw s of z₁ (row s·B + b) takes the three gradients; the entropy's −½ per draw,
    // weighted 1/L, adds up to −½β (kl_scale 1). A layer above z₁ has one draw per row, each
    // weighted 1/L: kl_scale 1/L.
    var g_sum = 0.0;
    var g_eps = 0.0;
    var w_sum = 0.0;
    for (var s = 0u; s < P.samples; s++) {
        let r = s * P.batch + b;
        let g = z[r * P.z_stride + j] + dz_up[r * P.z_stride + j] + dz_kl[r * zd + j];
        g_sum += g;
        g_eps += g * eps_at(s, b, j);
        if (WEIGHTED) { w_sum += row_weight[r]; }
    }
    denc[b * 2u * zd + j] = g_sum;
    let inside = raw >= P.lv_min && raw <= P.lv_max;
    // The entropy's −½ per draw (the sampled log q's, under the importance-weighted bound),
    // weighted as the draw's other prior terms are.
    var entropy = S.kl_beta * P.kl_scale;
    if (WEIGHTED) { entropy = w_sum; }
    denc[b * 2u * zd + zd + j] = select(0.0, 0.5 * g_eps * sigma - 0.5 * entropy, inside);
}

// ---- draws from the prior, for generation ----
// z[b, j] = T·ε with HAS_P false (N(0, I) at temperature T), or z[b, j] = μ + σ·T·ε from a
// conditional prior's rows p [B, 2Z] = [μ | log σ²] (log σ² clamped as above), ε keyed as in
// the forward pass with sample 0 (the host's `prior_samples` and `conditional_prior_draws` draw
// the same keys in f64). T comes in kl_scale. z rows may be wider than Z (z_stride): the
// columns past Z (a conditional model's one-hot) are left alone.
override HAS_P: bool = false;

@compute @workgroup_size(64)
fn prior_draw(@builtin(global_invocation_id) gid: vec3<u32>) {
    P = p;
    S = step;
    let i = gid.x + gid.y * 65535u * 64u;
    let zd = P.latent;
    if (i >= P.batch * zd) { return; }
    let b = i / zd;
    let j = i % zd;
    let e = P.kl_scale * eps_at(0u, b, j);
    var zv = e;
    if (HAS_P) {
        let lv = clamp(enc[b * 2u * zd + zd + j], P.lv_min, P.lv_max);
        zv = enc[b * 2u * zd + j] + exp(0.5 * lv) * e;
    }
    z[b * P.z_stride + j] = zv;
}
