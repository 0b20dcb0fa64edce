// Convolutions as matrix products, images in NHWC (the rows of an image tensor [B·H·W, C] are
// its pixels, so a pixel's channels are contiguous and a feature map flattened per example is
// the [B, H·W·C] the dense layers read).
//
//   im2col        the patch matrix of a convolution's input X: row p = (b, oy, ox) of the
//                 output, column j = (ky·k + kx)·C + c, value X[b, oy·s − pad + ky,
//                 ox·s − pad + kx, c] (0 outside the image and in the padding columns past
//                 k·k·C). The convolution is then one matmul with the weight [k·k·C, C_out].
//   col2im        the adjoint: each pixel of X sums the patch-matrix entries that read it, then
//                 the epilogue (bias, activation, or times the derivative of an activation from
//                 its output). A convolution's input gradient is dY·Wᵀ followed by col2im; a
//                 transposed convolution's forward is the same pair.
//   channel_sum   Σ over pixels per channel: a transposed convolution's bias gradient.
//
// With C % 4 == 0 (CIN4) four consecutive columns of the patch matrix are four channels of one
// pixel, read as one vec4: on lavapipe every buffer load is a per-lane loop, so the vec4 path
// does a quarter of the loads.

struct ConvParams {
    batch: u32,
    in_h: u32,
    in_w: u32,
    in_c: u32,    // C: channels of X
    out_h: u32,
    out_w: u32,
    kernel: u32,
    stride: u32,
    pad: u32,
    cols_w: u32,  // row width of the patch matrix: k·k·C rounded up to a multiple of 4
    count: u32,   // im2col: vec4s of the patch matrix; col2im: elements of X; channel_sum: rows
    leaky_slope: f32,
}

override CIN4: bool = false;
override HAS_BIAS: bool = false;
override ACT: u32 = 0u;
override DACT: u32 = 0u;

@group(0) @binding(0) var<uniform> p: ConvParams;
// A private copy of p, taken first thing in each entry: once a branch has made the execution
// mask live, lavapipe loads a uniform lane by lane (a gather) on every read.
var<private> P: ConvParams;
@group(0) @binding(1) var<storage, read> src: array<vec4<f32>>;  // im2col: X; col2im: patches
@group(0) @binding(2) var<storage, read> bias: array<vec4<f32>>; // col2im: [C]
@group(0) @binding(3) var<storage, read> aux: array<vec4<f32>>;  // col2im: activation output, X's shape
@group(0) @binding(4) var<storage, read_write> dst: array<vec4<f32>>;

fn src1(i: u32) -> f32 {
    return src[i / 4u][i % 4u];
}

fn index_of(gid: vec3<u32>) -> u32 {
    return gid.x + gid.y * 65535u * 64u;
}

// X[b, iy, ix, c] as a flat index, or -1 outside the image (iy, ix signed: padding).
fn x_index(b: u32, iy: i32, ix: i32, c: u32) -> i32 {
    if (iy < 0 || ix < 0 || iy >= i32(P.in_h) || ix >= i32(P.in_w)) { return -1; }
    return i32(((b * P.in_h + u32(iy)) * P.in_w + u32(ix)) * P.in_c + c);
}

// Patch-matrix entry (p, j) for one column j (the scalar path).
fn patch1(b: u32, oy: u32, ox: u32, j: u32) -> f32 {
    let t = j / P.in_c;
    if (t >= P.kernel * P.kernel) { return 0.0; }
    let iy = i32(oy * P.stride + t / P.kernel) - i32(P.pad);
    let ix = i32(ox * P.stride + t % P.kernel) - i32(P.pad);
    let i = x_index(b, iy, ix, j % P.in_c);
    if (i < 0) { return 0.0; }
    return src1(u32(i));
}

@compute @workgroup_size(64)
fn im2col(@builtin(global_invocation_id) gid: vec3<u32>) {
    P = p;
    let i = index_of(gid);
    if (i >= P.count) { return; }
    let row4 = P.cols_w / 4u;
    let row = i / row4;
    let j = (i % row4) * 4u;
    let plane = P.out_h * P.out_w;
    let b = row / plane;
    let oy = (row % plane) / P.out_w;
    let ox = row % P.out_w;
    if (CIN4) {
        let t = j / P.in_c;
        var v = vec4<f32>(0.0);
        if (t < P.kernel * P.kernel) {
            let iy = i32(oy * P.stride + t / P.kernel) - i32(P.pad);
            let ix = i32(ox * P.stride + t % P.kernel) - i32(P.pad);
            let xi = x_index(b, iy, ix, j % P.in_c);
            if (xi >= 0) { v = src[u32(xi) / 4u]; }
        }
        dst[i] = v;
    } else {
        dst[i] = vec4<f32>(patch1(b, oy, ox, j), patch1(b, oy, ox, j + 1u),
                           patch1(b, oy, ox, j + 2u), patch1(b, oy, ox, j + 3u));
    }
}

// Σ of the patch-matrix entries that read X[b, iy, ix, c..c+3] (CIN4) or X[b, iy, ix, c]
// (in lane 0): the taps ky ≡ iy + pad (mod s) whose output row oy = (iy + pad − ky)/s exists,
// and likewise along x.
fn gather_patches(b: u32, iy: u32, ix: u32, c: u32) -> vec4<f32> {
    var s = vec4<f32>(0.0);
    let y = iy + P.pad;
    let x = ix + P.pad;
    for (var ky = y % P.stride; ky < P.kernel && ky <= y; ky += P.stride) {
        let oy = (y - ky) / P.stride;
        if (oy >= P.out_h) { continue; }
        for (var kx = x % P.stride; kx < P.kernel && kx <= x; kx += P.stride) {
            let ox = (x - kx) / P.stride;
            if (ox >= P.out_w) { continue; }
            let at = ((b * P.out_h + oy) * P.out_w + ox) * P.cols_w + (ky * P.kernel + kx) * P.in_c + c;
            if (CIN4) {
                s += src[at / 4u];
            } else {
                s.x += src1(at);
            }
        }
    }
    return s;
}

@compute @workgroup_size(64)
fn col2im(@builtin(global_invocation_id) gid: vec3<u32>) {
    P = p;
    let i = index_of(gid);
    if (i * 4u >= P.count) { return; }
    var v = vec4<f32>(0.0);
    var bq = vec4<f32>(0.0);
    let plane = P.in_h * P.in_w;
    if (CIN4) {
        let pix = (i * 4u) / P.in_c;
        let c = (i * 4u) % P.in_c;
        v = gather_patches(pix / plane, (pix % plane) / P.in_w, pix % P.in_w, c);
        if (HAS_BIAS) { bq = bias[c / 4u]; }
    } else {
        for (var l = 0u; l < 4u; l++) {
            let e = min(i * 4u + l, P.count - 1u);
            let pix = e / P.in_c;
            let c = e % P.in_c;
            v[l] = gather_patches(pix / plane, (pix % plane) / P.in_w, pix % P.in_w, c).x;
            if (HAS_BIAS) { bq[l] = bias[c / 4u][c % 4u]; }
        }
    }
    v = act_apply4(ACT, v + bq, P.leaky_slope);
    if (CIN4 || i * 4u + 4u <= P.count) {
        if (DACT != 0u) { v *= act_grad4(DACT, aux[i], P.leaky_slope); }
        dst[i] = v;
        return;
    }
    // The last, partial vec4 of an X whose size is not a multiple of 4: component stores.
    for (var l = 0u; l < P.count - i * 4u; l++) {
        var e = v[l];
        if (DACT != 0u) { e *= act_grad(DACT, aux[i][l], P.leaky_slope); }
        dst[i][l] = e;
    }
}

// ---- channel sums: dst[c] = Σ_r src[r, c] for src [R, C], any C ----
// One workgroup per quad of channels (one vec4 load a row when CIN4, C % 4 == 0); its lanes
// stride over the rows, then a fixed tree in workgroup memory (deterministic). C is in_c, R
// is count.

var<workgroup> partial: array<vec4<f32>, 64>;

@compute @workgroup_size(64)
fn channel_sum(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    P = p;
    let c0 = wid.x * 4u;
    var s = vec4<f32>(0.0);
    for (var r = li; r < P.count; r += 64u) {
        if (CIN4) {
            s += src[(r * P.in_c + c0) / 4u];
        } else {
            for (var l = 0u; l < 4u; l++) {
                if (c0 + l < P.in_c) { s[l] += src1(r * P.in_c + c0 + l); }
            }
        }
    }
    partial[li] = s;
    workgroupBarrier();
    for (var w = 32u; w > 0u; w /= 2u) {
        if (li < w) { partial[li] += partial[li + w]; }
        workgroupBarrier();
    }
    // Component stores: past C, the vec4's lanes are not this sum's.
    if (li == 0u) {
        for (var l = 0u; l < 4u; l++) {
            if (c0 + l < P.in_c) { dst[wid.x][l] = partial[0][l]; }
        }
    }
}

// ---- column copies: dst[r, 0..n) = src[r, 0..n) between rows of different widths ----
// A convolutional encoder's flattened feature map into the first columns of its dense
// layers' input rows (a conditional model's one-hot fills the rest), and the gradient back.
// Fields: batch = rows, in_c = n, in_w = src row width, out_w = dst row width, count = rows·n;
// CIN4 when n and both widths are multiples of 4 (one vec4 per invocation, else one value).

@compute @workgroup_size(64)
fn copy_columns(@builtin(global_invocation_id) gid: vec3<u32>) {
    P = p;
    let i = index_of(gid);
    if (CIN4) {
        if (i * 4u >= P.count) { return; }
        let r = (i * 4u) / P.in_c;
        let c = (i * 4u) % P.in_c;
        dst[(r * P.out_w + c) / 4u] = src[(r * P.in_w + c) / 4u];
        return;
    }
    if (i >= P.count) { return; }
    let r = i / P.in_c;
    let c = i % P.in_c;
    let d = r * P.out_w + c;
    dst[d / 4u][d % 4u] = src1(r * P.in_w + c);
}
