// An autoencoder's deterministic code, forward and backward: the counterpart of reparam_kl.wgsl
// for models whose head writes the code itself, one row per example: enc [B, Z].
//
// forward:  z[b, j] = enc[b, j] (z rows may be wider than Z, z_stride: a conditional decoder's
//           input carries the one-hot label after the code); pen[b, j] = l1·|enc[b, j]|, the
//           L1 penalty's terms (a segment sum adds them up, in the KL's metric slot)
// backward: denc[b, j] = dz[b, j] + l1·sign(enc[b, j])   (sign(0) = 0: the subgradient 0)
// One invocation per (b, j), as in reparam_kl.wgsl.

struct CodeParams {
    batch: u32,     // B examples
    latent: u32,    // Z
    z_stride: u32,  // row stride of z (≥ Z)
    l1: f32,        // weight of the L1 penalty
}

@group(0) @binding(0) var<uniform> p: CodeParams;
// Private copies of the uniforms, taken first thing in each entry: once a branch has made the
// execution mask live, lavapipe loads a uniform lane by lane (a gather) on every read.
var<private> P: CodeParams;
@group(0) @binding(1) var<storage, read> enc: array<f32>;          // [B, Z]
@group(0) @binding(2) var<storage, read_write> z: array<f32>;      // forward: [B, Z'] out; backward: dz in
@group(0) @binding(3) var<storage, read_write> pen: array<f32>;    // forward: [B, Z] out
@group(0) @binding(4) var<storage, read_write> denc: array<f32>;   // backward: [B, Z] out

@compute @workgroup_size(64)
fn code_forward(@builtin(global_invocation_id) gid: vec3<u32>) {
    P = p;
    let i = gid.x + gid.y * 65535u * 64u;
    if (i >= P.batch * P.latent) { return; }
    let b = i / P.latent;
    let j = i % P.latent;
    let v = enc[i];
    z[b * P.z_stride + j] = v;
    pen[i] = P.l1 * abs(v);
}

@compute @workgroup_size(64)
fn code_backward(@builtin(global_invocation_id) gid: vec3<u32>) {
    P = p;
    let i = gid.x + gid.y * 65535u * 64u;
    if (i >= P.batch * P.latent) { return; }
    let b = i / P.latent;
    let j = i % P.latent;
    denc[i] = z[b * P.z_stride + j] + P.l1 * sign(enc[i]);
}

// ---- the contractive penalty c·Σ_b ‖∂z/∂x‖²_F of a one-hidden-layer encoder ----
// z = W2ᵀ·act(W1ᵀx + b1) + b2 has the Jacobian J_b = W2ᵀ·diag(m_b)·W1ᵀ, m_b = act′ of example
// b's hidden layer, so Σ_b ‖J_b‖²_F = Σ_{h,h′} S·G1·G2 with S = MᵀM (Σ_b m_b m_bᵀ), G1 = W1ᵀW1
// and G2 = W2W2ᵀ, all [H, H] and computed by the matmul kernel. W1 here is the rows that
// multiply pixels: a conditional model's one-hot is not part of x. This entry forms, per (h, h′):
//   terms = c·S·G1·G2 (summed into the metric row), A1 = 2c·S·G2 and A2 = 2c·S·G1,
// the gradients being ∂/∂W1 = W1·A1 and ∂/∂W2 = A2·W2 (the matmul adds them in). act′ is
// piecewise constant (ReLU, LeakyReLU), so the mask carries no gradient.

struct ContractiveParams {
    count: u32,     // H·H
    weight: f32,    // c
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> cp: ContractiveParams;
var<private> CP: ContractiveParams;
@group(0) @binding(5) var<storage, read> s_mm: array<f32>;
@group(0) @binding(6) var<storage, read> g1: array<f32>;
@group(0) @binding(7) var<storage, read> g2: array<f32>;
@group(0) @binding(8) var<storage, read_write> terms: array<f32>;
@group(0) @binding(9) var<storage, read_write> a1: array<f32>;
@group(0) @binding(10) var<storage, read_write> a2: array<f32>;

@compute @workgroup_size(64)
fn contractive(@builtin(global_invocation_id) gid: vec3<u32>) {
    CP = cp;
    let i = gid.x + gid.y * 65535u * 64u;
    if (i >= CP.count) { return; }
    let s = s_mm[i];
    let c = CP.weight;
    terms[i] = c * s * g1[i] * g2[i];
    a1[i] = 2.0 * c * s * g2[i];
    a2[i] = 2.0 * c * s * g1[i];
}

// ---- VQ-VAE: nearest-codebook quantization with the straight-through estimator ----
// z_e = enc [B, Z] is G vectors of d = Z/G values per example; the codebook is K vectors of d.
// The two terms are weighted by s = D/Z: the VQ-VAE paper's implementation averages the
// reconstruction over the D pixels and the codebook terms over the Z values, while here the
// reconstruction is summed over pixels, so s keeps their balance (without it, a summed
// Bernoulli loss overwhelms the commitment, z_e runs away from the codebook and every vector
// collapses onto one entry).
// forward  (one invocation per (b, g)): k = argmin_k ‖z_e[b, g] − e_k‖² (the first on ties);
//          z[b, g·d + c] = e_k[c]; idx[b·G + g] = k; terms[b, g·d + c] = s(1 + β)(z_e − e_k)²
//          (the codebook term ‖sg(z_e) − e‖² and the commitment β‖z_e − sg(e)‖² have one value)
// backward (per (b, j)): dz_e[b, j] = dz[b, j] + 2sβ(z_e[b, j] − e_k[j mod d])   (straight through)
// codebook (per (k, c)): de_k[c] = s·Σ_{(b, g): idx = k} 2(e_k[c] − z_e[b, g·d + c]); only the
//          codebook term trains the codebook, a fixed-order loop over the B·G assignments.

struct VqParams {
    batch: u32,     // B
    latent: u32,    // Z
    groups: u32,    // G
    codes: u32,     // K
    z_stride: u32,  // row stride of z (≥ Z)
    commitment: f32,
    scale: f32,     // D/Z: the VQ terms as per-value means against the per-pixel recon
    decay: f32,     // vq_ema: γ
}

@group(0) @binding(0) var<uniform> vp: VqParams;
var<private> VP: VqParams;
@group(0) @binding(11) var<storage, read> codebook: array<f32>;       // [K, d]
@group(0) @binding(12) var<storage, read_write> vq_idx: array<f32>;   // [B·G], exact integers
@group(0) @binding(13) var<storage, read_write> dcodebook: array<f32>; // [K, d]
@group(0) @binding(14) var<storage, read_write> ema_n: array<f32>;     // [K, d]: N_k, per value
@group(0) @binding(15) var<storage, read_write> ema_m: array<f32>;     // [K, d]: M_k
@group(0) @binding(16) var<storage, read_write> book_out: array<f32>;  // [K, d]: the codebook
@group(0) @binding(17) var<storage, read_write> vq_scores: array<f32>; // [B·G, K]; half norms [K]; sums [K, d + 4]
@group(0) @binding(18) var<storage, read_write> vq_rows: array<f32>;   // [B·G, d] or [B·G, d + 4]

@compute @workgroup_size(64)
fn vq_forward(@builtin(global_invocation_id) gid: vec3<u32>) {
    VP = vp;
    let i = gid.x + gid.y * 65535u * 64u;
    if (i >= VP.batch * VP.groups) { return; }
    let b = i / VP.groups;
    let g = i % VP.groups;
    let d = VP.latent / VP.groups;
    let base = b * VP.latent + g * d;
    var best = 0u;
    var best_dist = 3.4e38;
    for (var k = 0u; k < VP.codes; k++) {
        var dist = 0.0;
        for (var c = 0u; c < d; c++) {
            let diff = enc[base + c] - codebook[k * d + c];
            dist += diff * diff;
        }
        if (dist < best_dist) {
            best_dist = dist;
            best = k;
        }
    }
    vq_idx[i] = f32(best);
    for (var c = 0u; c < d; c++) {
        let e = codebook[best * d + c];
        let diff = enc[base + c] - e;
        z[b * VP.z_stride + g * d + c] = e;
        pen[base + c] = VP.scale * (1.0 + VP.commitment) * diff * diff;
    }
}

@compute @workgroup_size(64)
fn vq_backward(@builtin(global_invocation_id) gid: vec3<u32>) {
    VP = vp;
    let i = gid.x + gid.y * 65535u * 64u;
    if (i >= VP.batch * VP.latent) { return; }
    let b = i / VP.latent;
    let j = i % VP.latent;
    let d = VP.latent / VP.groups;
    let k = u32(vq_idx[b * VP.groups + j / d]);
    let e = codebook[k * d + j % d];
    denc[i] = z[b * VP.z_stride + j] + 2.0 * VP.scale * VP.commitment * (enc[i] - e);
}

// How many of the B·G vectors chose entry k, and the sum of their value c minus `centre`, in
// a fixed order. The gradient centres on the entry's value: Σ(z − e) adds small differences,
// where n·e − Σz would cancel in f32 for a popular entry.
fn assigned(k: u32, c: u32, centre: f32) -> vec2<f32> {
    let d = VP.latent / VP.groups;
    var n = 0.0;
    var s = 0.0;
    for (var a = 0u; a < VP.batch * VP.groups; a++) {
        if (u32(vq_idx[a]) == k) {
            n += 1.0;
            s += enc[(a / VP.groups) * VP.latent + (a % VP.groups) * d + c] - centre;
        }
    }
    return vec2<f32>(n, s);
}

@compute @workgroup_size(64)
fn vq_codebook_grad(@builtin(global_invocation_id) gid: vec3<u32>) {
    VP = vp;
    let i = gid.x + gid.y * 65535u * 64u;
    let d = VP.latent / VP.groups;
    if (i >= VP.codes * d) { return; }
    // Σ over the assignments of 2(e − z_e).
    let ns = assigned(i / d, i % d, codebook[i]);
    dcodebook[i] = -VP.scale * 2.0 * ns.y;
}

// ---- the VQ-VAE's codebook by exponential moving averages (instead of its gradient) ----
// per (k, c): n = #{(b, g): idx = k}, s = Σ of their z_e[.., c], in a fixed order;
//   N = γN + (1 − γ)n ;  M = γM + (1 − γ)s ;  e_k[c] = M / N  (kept while N ≤ 1e-20: a code
//   never chosen keeps its value, and one left unchosen keeps its last mean, M/N constant).
// N is kept per value, [K, d], so that each invocation owns what it writes.
@compute @workgroup_size(64)
fn vq_ema(@builtin(global_invocation_id) gid: vec3<u32>) {
    VP = vp;
    let i = gid.x + gid.y * 65535u * 64u;
    let d = VP.latent / VP.groups;
    if (i >= VP.codes * d) { return; }
    let ns = assigned(i / d, i % d, 0.0);
    ema_update(i, ns.x, ns.y);
}

// Value i of the moving averages from this step's count n and sum s (shared by both forms).
fn ema_update(i: u32, n: f32, s: f32) {
    let big_n = VP.decay * ema_n[i] + (1.0 - VP.decay) * n;
    let big_m = VP.decay * ema_m[i] + (1.0 - VP.decay) * s;
    ema_n[i] = big_n;
    ema_m[i] = big_m;
    if (big_n > 1e-20) { book_out[i] = big_m / big_n; }
}

// ---- VQ-VAE at scale: distances as one matmul ----
// For vectors of d % 4 == 0 values (a convolutional code's channels) the loops above cost
// B·G·K·d scalar loads. There the nearest entry is the argmax over k of z·e_k − ½‖e_k‖², so
// the B·G × K scores are one matmul (z_e's vectors times the codebookᵀ, the half norms its
// bias) and each vector's pick is a tree reduction; the codebook's gradient
// s·Σ 2(e_k − z_e) over each entry's vectors is the matmul onehot(idx)ᵀ · R with
// R = 2s(e − z_e) per vector (the one-hot gathered by the matmul kernel from idx, ONE_HOT_A),
// and the moving averages take their sums and counts from onehot(idx)ᵀ · [z_e | 1 | 0 0 0].
// Ties go to the lowest index, as in vq_forward, but the scores round differently from the
// distances, so the two can pick differently between near-equal entries.
//   vq_half_norms (per k):            scores[k] = −½‖e_k‖²  (the next matmul's bias)
//   vq_pick (a workgroup per vector): k = argmax scores[r, ·]; idx, z and pen as vq_forward;
//                                     rows[r] = 2s(e_k − z_e), or [z_e | 1 | 0 0 0] (VQ_EMA)
//   vq_ema_apply (per (k, c)):        from sums[k] = [Σ z_e | n | 0…] as vq_ema

override VQ_EMA: bool = false;

@compute @workgroup_size(64)
fn vq_half_norms(@builtin(global_invocation_id) gid: vec3<u32>) {
    VP = vp;
    let k = gid.x;
    if (k >= VP.codes) { return; }
    let d = VP.latent / VP.groups;
    var s = 0.0;
    for (var c = 0u; c < d; c++) {
        let e = codebook[k * d + c];
        s += e * e;
    }
    vq_scores[k] = -0.5 * s;
}

var<workgroup> pick_v: array<f32, 64>;
var<workgroup> pick_k: array<u32, 64>;

@compute @workgroup_size(64)
fn vq_pick(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    VP = vp;
    let r = wid.x + wid.y * 65535u;
    if (r >= VP.batch * VP.groups) { return; }
    var bv = -3.4e38;
    var bk = VP.codes;
    for (var k = li; k < VP.codes; k += 64u) {
        let v = vq_scores[r * VP.codes + k];
        if (v > bv) {
            bv = v;
            bk = k;
        }
    }
    pick_v[li] = bv;
    pick_k[li] = bk;
    workgroupBarrier();
    for (var w = 32u; w > 0u; w /= 2u) {
        if (li < w) {
            let ov = pick_v[li + w];
            let ok = pick_k[li + w];
            if (ov > pick_v[li] || (ov == pick_v[li] && ok < pick_k[li])) {
                pick_v[li] = ov;
                pick_k[li] = ok;
            }
        }
        workgroupBarrier();
    }
    // A row of non-finite scores picks entry 0.
    let k = select(pick_k[0], 0u, pick_k[0] >= VP.codes);
    let d = VP.latent / VP.groups;
    let b = r / VP.groups;
    let g = r % VP.groups;
    if (li == 0u) { vq_idx[r] = f32(k); }
    for (var c = li; c < d; c += 64u) {
        let e = codebook[k * d + c];
        let ze = enc[b * VP.latent + g * d + c];
        let diff = ze - e;
        z[b * VP.z_stride + g * d + c] = e;
        pen[b * VP.latent + g * d + c] = VP.scale * (1.0 + VP.commitment) * diff * diff;
        if (VQ_EMA) {
            vq_rows[r * (d + 4u) + c] = ze;
        } else {
            vq_rows[r * d + c] = 2.0 * VP.scale * (e - ze);
        }
    }
    if (VQ_EMA && li < 4u) { vq_rows[r * (d + 4u) + d + li] = select(0.0, 1.0, li == 0u); }
}

@compute @workgroup_size(64)
fn vq_ema_apply(@builtin(global_invocation_id) gid: vec3<u32>) {
    VP = vp;
    let i = gid.x + gid.y * 65535u * 64u;
    let d = VP.latent / VP.groups;
    if (i >= VP.codes * d) { return; }
    let k = i / d;
    ema_update(i, vq_scores[k * (d + 4u) + d], vq_scores[k * (d + 4u) + i % d]);
}
