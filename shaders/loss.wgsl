// Reconstruction losses and their gradients in one pass; one workgroup per row.
// Per row r (an example, or one of its L samples: target row r mod B), over D pixels:
//   bernoulli: nll = Σ_d softplus(l_d) − x_d·l_d      dl = scale·(sigmoid(l_d) − x_d)
//   gaussian:  nll = Σ_d (x_d − μ_d)²/(2c) + ½·log(2πc)   dμ = scale·(μ_d − x_d)/c
// with l / μ the decoder output. softplus and sigmoid use their stable forms, so no exp of an
// unbounded argument. D must be a multiple of 4 (rows are read as vec4).

struct LossParams {
    rows: u32,       // R = L·B rows of decoder output
    batch: u32,      // B target rows
    d4: u32,         // D / 4
    scale: f32,      // gradient scale (1/L: mean over samples, sum over the batch)
    log_c: f32,      // gaussian: log of the variance c
}

@group(0) @binding(0) var<uniform> p: LossParams;
@group(0) @binding(1) var<storage, read> out: array<vec4<f32>>;         // [R, D] logits or means
@group(0) @binding(2) var<storage, read> target_x: array<vec4<f32>>;    // [B, D]
@group(0) @binding(3) var<storage, read_write> nll: array<f32>;         // [R]
@group(0) @binding(4) var<storage, read_write> grad: array<vec4<f32>>;  // [R, D]

var<workgroup> partial: array<f32, 64>;

fn softplus4(l: vec4<f32>) -> vec4<f32> {
    // softplus(l) = max(l, 0) + log1p(exp(-|l|)); log(1 + t) loses nothing that matters at
    // t = exp(-|l|) <= 1 except for tiny t, where log1p(t) ≈ t − t²/2.
    let t = exp(-abs(l));
    let lp = select(log(1.0 + t), t - 0.5 * t * t, t < vec4<f32>(1e-4));
    return max(l, vec4<f32>(0.0)) + lp;
}

fn sigmoid4(l: vec4<f32>) -> vec4<f32> {
    let t = exp(-abs(l));
    return select(t / (1.0 + t), 1.0 / (1.0 + t), l >= vec4<f32>(0.0));
}

fn finish_row(r: u32, li: u32, s: f32) {
    partial[li] = s;
    workgroupBarrier();
    for (var width = 32u; width > 0u; width >>= 1u) {
        if (li < width) { partial[li] += partial[li + width]; }
        workgroupBarrier();
    }
    if (li == 0u) { nll[r] = partial[0]; }
}

@compute @workgroup_size(64)
fn bernoulli(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let r = wid.x + wid.y * 65535u;
    if (r >= p.rows) { return; }
    let t = r % p.batch;
    var s = 0.0;
    for (var q = li; q < p.d4; q += 64u) {
        let l = out[r * p.d4 + q];
        let x = target_x[t * p.d4 + q];
        let v = softplus4(l) - x * l;
        s += v.x + v.y + v.z + v.w;
        grad[r * p.d4 + q] = p.scale * (sigmoid4(l) - x);
    }
    finish_row(r, li, s);
}

@compute @workgroup_size(64)
fn gaussian(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let r = wid.x + wid.y * 65535u;
    if (r >= p.rows) { return; }
    let t = r % p.batch;
    let inv_c = exp(-p.log_c);
    var s = 0.0;
    for (var q = li; q < p.d4; q += 64u) {
        let mu = out[r * p.d4 + q];
        let diff = mu - target_x[t * p.d4 + q];
        let v = diff * diff;
        s += v.x + v.y + v.z + v.w;
        grad[r * p.d4 + q] = p.scale * inv_c * diff;
    }
    s = 0.5 * inv_c * s;
    if (li == 0u) {
        s += f32(p.d4 * 4u) * 0.5 * (log(6.283185307179586) + p.log_c);
    }
    finish_row(r, li, s);
}
