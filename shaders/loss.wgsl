// Reconstruction losses and their gradients in one pass; one invocation per row, which keeps
// four running sums (one per vec4 lane) along its row. No workgroup reduction: on lavapipe a
// workgroup per row with a tree in workgroup memory took twice as long, since every barrier
// switches between the workgroup's SIMD batches.
// Per row r (an example, or one of its L samples: target row r mod B), over D pixels:
//   bernoulli: nll = Σ_d softplus(l_d) − x_d·l_d      dl = scale·(sigmoid(l_d) − x_d)
//   gaussian:  nll = Σ_d (x_d − μ_d)²/(2c) + ½·log(2πc)   dμ = scale·(μ_d − x_d)/c
//   gaussian_learned: as gaussian with a learned log c, one per pixel (PER_PIXEL) or one for
//              all, clamped to [LOG_C_MIN, LOG_C_MAX]; also writes per element
//              dlc = scale·½·(1 − (x_d − μ_d)²/c) (0 where clamped), which log_c_sum or a
//              column sum reduces to the parameter's gradient.
// with l / μ the decoder output. softplus and sigmoid use their stable forms, so no exp of an
// unbounded argument. D must be a multiple of 4 (rows are read as vec4). Target rows may be
// wider than D (a conditional model's input carries the one-hot label after the pixels):
// their stride is x_stride4 vec4s.

struct LossParams {
    rows: u32,       // R = L·B rows of decoder output
    batch: u32,      // B target rows
    d4: u32,         // D / 4
    scale: f32,      // gradient scale (1/L: mean over samples, sum over the batch)
    log_c: f32,      // gaussian: log of the variance c
    x_stride4: u32,  // target row stride in vec4s (≥ d4)
    n4: u32,         // log_c_sum: vec4s of dlc to add up
}

// Bounds of a learned log-variance: the floor keeps a pixel that is constant in the data
// (MNIST's borders) from driving c → 0 and the NLL → −∞; the ceiling bounds exp(−log c).
const LOG_C_MIN: f32 = -6.0;
const LOG_C_MAX: f32 = 6.0;
override PER_PIXEL: bool = false;
// Rows (invocations) per workgroup of the row kernels.
const ROWS_WG: u32 = 16u;

@group(0) @binding(0) var<uniform> p: LossParams;
// Private copies of the uniforms, taken first thing in each entry: once a branch has made the
// execution mask live, lavapipe loads a uniform lane by lane (a gather) on every read.
var<private> P: LossParams;
@group(0) @binding(1) var<storage, read> out: array<vec4<f32>>;         // [R, D] logits or means
@group(0) @binding(2) var<storage, read> target_x: array<vec4<f32>>;    // [B, D]
@group(0) @binding(3) var<storage, read_write> nll: array<f32>;         // [R]
@group(0) @binding(4) var<storage, read_write> grad: array<vec4<f32>>;  // [R, D]
@group(0) @binding(5) var<storage, read> log_c: array<vec4<f32>>;       // learned: [D] or [1] (padded)
@group(0) @binding(6) var<storage, read_write> dlc: array<vec4<f32>>;   // learned: [R, D]
@group(0) @binding(7) var<storage, read_write> dlc_total: array<vec4<f32>>; // log_c_sum: [4]

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

// Row r of invocation gid (the grid may be 2-D for many rows).
fn row_of(gid: vec3<u32>) -> u32 {
    return gid.x + gid.y * 65535u * ROWS_WG;
}

@compute @workgroup_size(ROWS_WG)
fn bernoulli(@builtin(global_invocation_id) gid: vec3<u32>) {
    P = p;
    let r = row_of(gid);
    if (r >= P.rows) { return; }
    let t = r % P.batch;
    var s = vec4<f32>(0.0);
    for (var q = 0u; q < P.d4; q++) {
        let l = out[r * P.d4 + q];
        let x = target_x[t * P.x_stride4 + q];
        let v = softplus4(l) - x * l;
        s += v;
        grad[r * P.d4 + q] = P.scale * (sigmoid4(l) - x);
    }
    nll[r] = s.x + s.y + s.z + s.w;
}

@compute @workgroup_size(ROWS_WG)
fn gaussian(@builtin(global_invocation_id) gid: vec3<u32>) {
    P = p;
    let r = row_of(gid);
    if (r >= P.rows) { return; }
    let t = r % P.batch;
    let inv_c = exp(-P.log_c);
    var s = vec4<f32>(0.0);
    for (var q = 0u; q < P.d4; q++) {
        let mu = out[r * P.d4 + q];
        let diff = mu - target_x[t * P.x_stride4 + q];
        let v = diff * diff;
        s += v;
        grad[r * P.d4 + q] = P.scale * inv_c * diff;
    }
    nll[r] = 0.5 * inv_c * (s.x + s.y + s.z + s.w) + f32(P.d4 * 4u) * 0.5 * (log(6.283185307179586) + P.log_c);
}

fn raw_log_c(q: u32) -> vec4<f32> {
    if (PER_PIXEL) { return log_c[q]; }
    return vec4<f32>(log_c[0].x);
}

@compute @workgroup_size(ROWS_WG)
fn gaussian_learned(@builtin(global_invocation_id) gid: vec3<u32>) {
    P = p;
    let r = row_of(gid);
    if (r >= P.rows) { return; }
    let t = r % P.batch;
    var s = vec4<f32>(0.0);
    for (var q = 0u; q < P.d4; q++) {
        let raw = raw_log_c(q);
        let lc = clamp(raw, vec4<f32>(LOG_C_MIN), vec4<f32>(LOG_C_MAX));
        let inv_c = exp(-lc);
        let diff = out[r * P.d4 + q] - target_x[t * P.x_stride4 + q];
        let e = diff * diff * inv_c;
        let v = 0.5 * (vec4<f32>(1.8378770664093453) + lc + e);
        s += v;
        grad[r * P.d4 + q] = P.scale * inv_c * diff;
        let inside = raw >= vec4<f32>(LOG_C_MIN) & raw <= vec4<f32>(LOG_C_MAX);
        dlc[r * P.d4 + q] = select(vec4<f32>(0.0), P.scale * 0.5 * (vec4<f32>(1.0) - e), inside);
    }
    nll[r] = s.x + s.y + s.z + s.w;
}

var<workgroup> partial: array<f32, 64>;

// The gradient of a single learned log c: the sum of every dlc element, written to
// dlc_total[0].x (the other lanes of the vec4 are zero: they are arena padding).
@compute @workgroup_size(64)
fn log_c_sum(@builtin(local_invocation_index) li: u32) {
    P = p;
    var s = vec4<f32>(0.0);
    for (var i = li; i < P.n4; i += 64u) {
        s += dlc[i];
    }
    partial[li] = s.x + s.y + s.z + s.w;
    workgroupBarrier();
    for (var width = 32u; width > 0u; width >>= 1u) {
        if (li < width) { partial[li] += partial[li + width]; }
        workgroupBarrier();
    }
    if (li == 0u) { dlc_total[0] = vec4<f32>(partial[0], 0.0, 0.0, 0.0); }
}
