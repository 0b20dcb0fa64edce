// C = epilogue(op(A) · op(B)), op(X) = X or Xᵀ, for every dense layer forward and backward.
//
// One kernel, three tiling strategies (entry points) sharing loads and epilogue:
//   matmul_naive     one output per invocation, scalar loads; any shape (the fallback).
//   matmul_tiled     64×64 workgroup-memory tiles, 4×4 outputs per invocation; the classic
//                    design for discrete GPUs.
//   matmul_subgroup  no workgroup memory: a workgroup owns 32 rows, each lane 4 columns; lanes
//                    load different vec4s of A and share them with subgroupBroadcast, B comes
//                    as vec4 straight from storage. Fast on CPU adapters (lavapipe), where
//                    every non-uniform load is a per-lane loop and loads, not FMAs, cost.
// op(A) is M×K, op(B) is K×N, C is M×N, all row-major. A is stored M×K (or K×M when
// TRANS_A), B is stored K×N (or N×K when TRANS_B).
// The vec4 strategies need N % 4 == 0, K % 4 == 0 when A is read along K (not TRANS_A) or B
// is (TRANS_B), and M % 4 == 0 when TRANS_A; the host checks this and picks naive otherwise.
//
// Implicit convolutions (CONV != 0; see the section "implicit convolution operands"): the
// same products with an operand gathered from an image instead of read from a matrix, so a
// convolution needs no patch matrix in memory. CONV = 1: op(A) is the patch matrix of an
// image X (a convolution's forward); 2: op(A) is its transpose (TRANS_A; the weight gradient
// patchesᵀ·dY); 3: the input gradient, one stride class of X's pixels per workgroup layer z,
// op(A) gathering dY at the taps that reach the class and op(B) the weight of those taps.
//
// Epilogue, in this order: r = op(A)·op(B); r += bias[n] (HAS_BIAS); r = act(r) (ACT);
// r *= act'(aux) with act' computed from the activation's output aux (DACT, the fused
// activation backward); c = r, or c += r (ACCUMULATE). COLSUM also writes the column sums of
// op(B), Σ_k op(B)[k, n], to colsum (added when ACCUMULATE): with A = X and B = dY this is the
// bias gradient of the layer whose weight gradient C = Xᵀ·dY is.

struct MatmulParams {
    m: u32,
    n: u32,
    k: u32,
    leaky_slope: f32,
    batch: u32,  // implicit convolutions: images in the batch
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

override TRANS_A: bool = false;
override TRANS_B: bool = false;
override HAS_BIAS: bool = false;
override ACCUMULATE: bool = false;
override COLSUM: bool = false;
// Activation codes as in act.wgsl (prepended).
override ACT: u32 = 0u;
override DACT: u32 = 0u;
// Workgroup size of the subgroup strategy: one subgroup (8 or more lanes).
override SG_WG: u32 = 8u;
// Subgroup strategy: K % 4 != 0 (possible only with TRANS_A and not TRANS_B), so the last k
// step must zero the rows of op(A) and op(B) past K.
override K_TAIL: bool = false;
// Subgroup strategy: two k steps per loop iteration. On lavapipe every loop-carried write is
// blended with the execution mask, so this halves the accumulators' blends and spill traffic;
// it does not pay with TRANS_A, whose transposed A slices raise register pressure further.
override K8: bool = false;
// Lanes the subgroup strategy spreads A's loads over: 8, or 16 where subgroups have 16 or
// more lanes (lavapipe at 512 bits), which halves each lane's A loads.
override LANES: u32 = 8u;
// Subgroup strategy: A (B) comes from a_tex (b_tex) instead of the buffer a (b). The texture is
// a packed rgba32float copy of the matrix as stored: vec4 number i of the buffer is texel
// (i % TEX_W, i / TEX_W). On lavapipe a texel fetch is a vectorised gather, while every buffer
// load is a per-lane scalar loop.
override A_TEXTURE: bool = false;
override B_TEXTURE: bool = false;
const TEX_W: u32 = 256u;
// Implicit convolutions: the mode (above), the kernel side, stride and padding, the channels of
// the image operand (X's for CONV 1 and 2, dY's for 3), X's and Y's sides. Constants, so that
// index arithmetic divides by constants (multiplies and shifts, not per-lane divisions).
override CONV: u32 = 0u;
override KS: u32 = 1u;
override STRIDE: u32 = 1u;
override PAD: u32 = 0u;
override GC: u32 = 4u;
override IMG_H: u32 = 1u;
override IMG_W: u32 = 1u;
override OUT_H: u32 = 1u;
override OUT_W: u32 = 1u;
// op(A) is the one-hot matrix of an index list, transposed (with TRANS_A): A is R class indices
// (exact integers as f32) and op(A)[m, r] = 1 where index r is m. Its product with B [R, N]
// sums B's rows by class (a VQ-VAE's codebook gradient and moving averages).
override ONE_HOT_A: bool = false;

@group(0) @binding(0) var<uniform> p: MatmulParams;
// A private copy of p, taken first thing in each entry: once a branch has made the execution
// mask live, lavapipe loads a uniform lane by lane (a gather) on every read.
var<private> P: MatmulParams;
@group(0) @binding(1) var<storage, read> a: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> b: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> bias: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> aux: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> c: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read_write> colsum: array<vec4<f32>>;
@group(0) @binding(7) var b_tex: texture_storage_2d<rgba32float, read>;
@group(0) @binding(8) var a_tex: texture_storage_2d<rgba32float, read>;

// vec4 number i of A and of B as stored, from the buffer or its packed texture.
fn a_vec(i: u32) -> vec4<f32> {
    if (A_TEXTURE) { return textureLoad(a_tex, vec2<u32>(i % TEX_W, i / TEX_W)); }
    return a[i];
}

fn b_vec(i: u32) -> vec4<f32> {
    if (B_TEXTURE) { return textureLoad(b_tex, vec2<u32>(i % TEX_W, i / TEX_W)); }
    return b[i];
}

// ---- scalar loads (any shape; zero outside the matrix) ----

fn load1(buf_is_a: bool, idx: u32) -> f32 {
    if (buf_is_a) {
        return a[idx / 4u][idx % 4u];
    }
    return b[idx / 4u][idx % 4u];
}

// op(A)[m, k]
fn a_at(m: u32, k: u32) -> f32 {
    if (m >= P.m || k >= P.k) { return 0.0; }
    if (ONE_HOT_A) { return select(0.0, 1.0, load1(true, k) == f32(m)); }
    if (CONV == 1u) { return gathered1(patch_index(m, k)); }
    if (CONV == 2u) { return gathered1(patch_index(k, m)); }
    if (CONV == 3u) { return gathered1(grad_index(m, k)); }
    if (TRANS_A) { return load1(true, k * P.m + m); }
    return load1(true, m * P.k + k);
}

// op(B)[k, n]
fn b_at(k: u32, n: u32) -> f32 {
    if (k >= P.k || n >= P.n) { return 0.0; }
    if (CONV == 3u) { return load1(false, weight_index(k, n)); }
    if (TRANS_B) { return load1(false, n * P.k + k); }
    return load1(false, k * P.n + n);
}

// ---- implicit convolution operands ----
// X [B, IMG_H, IMG_W, ·] and Y [B, OUT_H, OUT_W, ·] are NHWC; a patch-matrix column j is
// (ky·KS + kx)·GC + c, a row p is Y's pixel (b, oy, ox). Out-of-image taps and rows past the
// batch read 0 (index -1).

// The stride class of CONV 3's workgroup layer: X's pixels (iy, ix) ≡ (py, px) mod STRIDE,
// reached by the taps ky ≡ ry = (py + PAD) mod STRIDE (and kx likewise), TAPS_1 per axis,
// from Y's pixel oy = jy + c0y − ty for the class's row jy and the tap ky = ry + STRIDE·ty.
// The host uses this mode only where STRIDE divides IMG_H, IMG_W and KS.
override TAPS_1: u32 = KS / STRIDE;
var<private> CLASS_P: vec2<u32>;   // (py, px)
var<private> CLASS_R: vec2<u32>;   // (ry, rx)
var<private> CLASS_C0: vec2<u32>;  // (c0y, c0x)

fn set_class(z: u32) {
    CLASS_P = vec2<u32>(z / STRIDE, z % STRIDE);
    CLASS_R = (CLASS_P + vec2<u32>(PAD)) % STRIDE;
    CLASS_C0 = (CLASS_P + vec2<u32>(PAD)) / STRIDE;
    P.m = P.batch * (IMG_H / STRIDE) * (IMG_W / STRIDE);
    P.k = TAPS_1 * TAPS_1 * GC;
}

// The image operand's value at a flat index, or 0 at -1.
fn gathered1(i: i32) -> f32 {
    if (i < 0) { return 0.0; }
    return load1(true, u32(i));
}

fn gathered4(i: i32) -> vec4<f32> {
    if (i < 0) { return vec4<f32>(0.0); }
    return a[u32(i) / 4u];
}

// Patch-matrix entry (p, j) of X as a flat index into X.
fn patch_index(p: u32, j: u32) -> i32 {
    let plane = OUT_H * OUT_W;
    let t = j / GC;
    if (p / plane >= P.batch || t >= KS * KS) { return -1; }
    let iy = i32((p % plane) / OUT_W * STRIDE + t / KS) - i32(PAD);
    let ix = i32(p % OUT_W * STRIDE + t % KS) - i32(PAD);
    if (iy < 0 || ix < 0 || iy >= i32(IMG_H) || ix >= i32(IMG_W)) { return -1; }
    return i32(((p / plane * IMG_H + u32(iy)) * IMG_W + u32(ix)) * GC + j % GC);
}

// op(A)[q, kk] of CONV 3: dY at the pixel that tap kk / GC reaches from the class's row q,
// channel kk % GC.
fn grad_index(q: u32, kk: u32) -> i32 {
    let rows = (IMG_H / STRIDE) * (IMG_W / STRIDE);
    let t = kk / GC;
    if (q / rows >= P.batch) { return -1; }
    let oy = i32((q % rows) / (IMG_W / STRIDE) + CLASS_C0.x) - i32(t / TAPS_1);
    let ox = i32(q % (IMG_W / STRIDE) + CLASS_C0.y) - i32(t % TAPS_1);
    if (oy < 0 || ox < 0 || oy >= i32(OUT_H) || ox >= i32(OUT_W)) { return -1; }
    return i32(((q / rows * OUT_H + u32(oy)) * OUT_W + u32(ox)) * GC + kk % GC);
}

// op(B)[kk, n] of CONV 3: the weight [KS·KS·N, GC] (row tap·N + n) at the class's tap kk / GC.
fn weight_index(kk: u32, n: u32) -> u32 {
    let t = kk / GC;
    let ky = CLASS_R.x + STRIDE * (t / TAPS_1);
    let kx = CLASS_R.y + STRIDE * (t % TAPS_1);
    return ((ky * KS + kx) * P.n + n) * GC + kk % GC;
}

// The row of C (and aux) that row m of the product is: CONV 3's class row q is X's pixel.
fn c_row(m: u32) -> u32 {
    if (CONV != 3u) { return m; }
    let rows = (IMG_H / STRIDE) * (IMG_W / STRIDE);
    let iy = CLASS_P.x + STRIDE * ((m % rows) / (IMG_W / STRIDE));
    let ix = CLASS_P.y + STRIDE * (m % (IMG_W / STRIDE));
    return (m / rows * IMG_H + iy) * IMG_W + ix;
}

// Four consecutive patch-matrix columns j..j+3 of row p: one vec4 of X when GC % 4 == 0 (the
// four are channels of one pixel), else four values.
fn patch4(p: u32, j: u32) -> vec4<f32> {
    if (GC % 4u == 0u) { return gathered4(patch_index(p, j)); }
    return vec4<f32>(gathered1(patch_index(p, j)), gathered1(patch_index(p, j + 1u)),
                     gathered1(patch_index(p, j + 2u)), gathered1(patch_index(p, j + 3u)));
}

// ---- epilogues ----

fn epilogue1(m: u32, n: u32, v: f32) {
    let idx = c_row(m) * P.n + n;
    var r = v;
    if (HAS_BIAS) { r += bias[n / 4u][n % 4u]; }
    r = act_apply(ACT, r, P.leaky_slope);
    if (DACT != 0u) { r *= act_grad(DACT, aux[idx / 4u][idx % 4u], P.leaky_slope); }
    if (ACCUMULATE) { r += c[idx / 4u][idx % 4u]; }
    c[idx / 4u][idx % 4u] = r;
}

// Row m, columns 4·nq .. 4·nq+3 (requires N % 4 == 0); bq = bias[nq] (HAS_BIAS), loaded once
// per column quad by the caller: on lavapipe every buffer load is a per-lane loop, and the
// compiler does not merge the repeated loads across the stores in between.
fn epilogue4(m: u32, nq: u32, v: vec4<f32>, bq: vec4<f32>) {
    let idx = c_row(m) * (P.n / 4u) + nq;
    var r = v;
    if (HAS_BIAS) { r += bq; }
    r = act_apply4(ACT, r, P.leaky_slope);
    if (DACT != 0u) { r *= act_grad4(DACT, aux[idx], P.leaky_slope); }
    if (ACCUMULATE) { r += c[idx]; }
    c[idx] = r;
}

fn store_colsum1(n: u32, s: f32) {
    var r = s;
    if (ACCUMULATE) { r += colsum[n / 4u][n % 4u]; }
    colsum[n / 4u][n % 4u] = r;
}

fn store_colsum4(nq: u32, s: vec4<f32>) {
    var r = s;
    if (ACCUMULATE) { r += colsum[nq]; }
    colsum[nq] = r;
}

// The bias quad of column quad nq (zero without HAS_BIAS).
fn bias_quad(nq: u32) -> vec4<f32> {
    if (HAS_BIAS) { return bias[nq]; }
    return vec4<f32>(0.0);
}

// Stores four rows of C held as the columns of a 4×4 block; bq = bias_quad(nq).
fn store_rows(m: u32, nq: u32, blk: mat4x4<f32>, bq: vec4<f32>) {
    for (var r = 0u; r < 4u; r++) {
        if (m + r < P.m) { epilogue4(m + r, nq, blk[r], bq); }
    }
}

// ---- strategy 1: naive ----

@compute @workgroup_size(8, 8)
fn matmul_naive(@builtin(global_invocation_id) gid: vec3<u32>) {
    P = p;
    if (CONV == 3u) { set_class(gid.z); }
    let n = gid.x;
    let m = gid.y;
    if (n >= P.n || m >= P.m) { return; }
    var acc = 0.0;
    for (var k = 0u; k < P.k; k++) {
        acc += a_at(m, k) * b_at(k, n);
    }
    epilogue1(m, n, acc);
    if (COLSUM && m == 0u) {
        var s = 0.0;
        for (var k = 0u; k < P.k; k++) {
            s += b_at(k, n);
        }
        store_colsum1(n, s);
    }
}

// ---- strategy 2: workgroup-memory tiles ----

const T_TILE: u32 = 64u;  // rows and columns of C per workgroup
const T_K: u32 = 16u;     // depth of one tile step
var<workgroup> tile_a: array<vec4<f32>, 256>;  // [k][m quad]: T_K × T_TILE/4
var<workgroup> tile_b: array<vec4<f32>, 256>;  // [k][n quad]

@compute @workgroup_size(16, 16)
fn matmul_tiled(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    P = p;
    if (CONV == 3u) { set_class(wid.z); }
    let m0 = wid.y * T_TILE;
    let n0 = wid.x * T_TILE;
    var acc = mat4x4<f32>();  // column i = row lid.y·4 + i
    var cs = vec4<f32>(0.0);
    // Which quad of the tiles this invocation fills.
    let lk = li / 16u;
    let lq = li % 16u;
    for (var k0 = 0u; k0 < P.k; k0 += T_K) {
        let mq = m0 + lq * 4u;
        tile_a[li] = vec4<f32>(a_at(mq, k0 + lk), a_at(mq + 1u, k0 + lk),
                               a_at(mq + 2u, k0 + lk), a_at(mq + 3u, k0 + lk));
        let nq = n0 + lq * 4u;
        tile_b[li] = vec4<f32>(b_at(k0 + lk, nq), b_at(k0 + lk, nq + 1u),
                               b_at(k0 + lk, nq + 2u), b_at(k0 + lk, nq + 3u));
        workgroupBarrier();
        for (var kk = 0u; kk < T_K; kk++) {
            let av = tile_a[kk * 16u + lid.y];
            let bv = tile_b[kk * 16u + lid.x];
            acc += mat4x4<f32>(av.x * bv, av.y * bv, av.z * bv, av.w * bv);
            if (COLSUM) { cs += bv; }
        }
        workgroupBarrier();
    }
    let nq = n0 / 4u + lid.x;
    if (nq * 4u >= P.n) { return; }
    store_rows(m0 + lid.y * 4u, nq, acc, bias_quad(nq));
    if (COLSUM && wid.y == 0u && lid.y == 0u) { store_colsum4(nq, cs); }
}

// ---- strategy 3: subgroup broadcast, register blocked ----
// Everything from here to the end is this strategy: a device without subgroups compiles the
// file up to the line above (strip_subgroup_entry in src/gpu/kernels.rs).

const S_ROWS: u32 = 32u;  // rows of C per workgroup; each lane holds 32×4 accumulators

// The k..k+3 slice of op(A) for this workgroup's 32 rows is 32 vec4 "units": one per row along
// K (not TRANS_A: unit u = row u), or 4 K-rows of 8 row-quads (TRANS_A: unit u = (u/8, u%8)).
// Lane l (mod LANES) of each subgroup loads units l, l+LANES, ... (4 units with 8 lanes, 2 with
// 16); broadcasts from lanes 0..LANES-1 share them. WGSL wants a constant lane index, hence
// the unrolled broadcasts below, one block per LANES and TRANS_A (the override folds the
// others away), and subgroups of 8 or more lanes.
// Rows past M (and columns past N in b_block) are not checked: they only feed accumulators
// that are never stored, and every out-of-range load is defined (robust buffer access, zero
// texels). Each check would cost a blend per value on lavapipe.
fn a_unit(m0: u32, k: u32, u: u32) -> vec4<f32> {
    if (ONE_HOT_A) {
        let kr = k + u / 8u;
        if (K_TAIL && kr >= P.k) { return vec4<f32>(0.0); }
        let m = f32(m0 + (u % 8u) * 4u);
        return select(vec4<f32>(0.0), vec4<f32>(1.0), vec4<f32>(load1(true, kr)) == vec4<f32>(m, m + 1.0, m + 2.0, m + 3.0));
    }
    if (CONV == 1u) { return patch4(m0 + u, k); }
    if (CONV == 3u) { return gathered4(grad_index(m0 + u, k)); }
    if (CONV == 2u) {
        let kr = k + u / 8u;
        if (K_TAIL && kr >= P.k) { return vec4<f32>(0.0); }
        return patch4(kr, m0 + (u % 8u) * 4u);
    }
    if (TRANS_A) {
        let kr = k + u / 8u;
        let m = m0 + (u % 8u) * 4u;
        if (K_TAIL && kr >= P.k) { return vec4<f32>(0.0); }
        return a_vec((kr * P.m + m) / 4u);
    }
    let m = m0 + u;
    return a_vec((m * P.k + k) / 4u);
}

// op(B)[k..k+3, n..n+3] as a matrix whose column j is op(B)[k + j, n..n+3].
fn b_block(k: u32, n: u32) -> mat4x4<f32> {
    if (CONV == 3u) {
        // Like TRANS_B: four weight rows n..n+3, each a vec4 over the class tap's channels.
        let r0 = b_vec(weight_index(k, n) / 4u);
        let r1 = b_vec(weight_index(k, n + 1u) / 4u);
        let r2 = b_vec(weight_index(k, n + 2u) / 4u);
        let r3 = b_vec(weight_index(k, n + 3u) / 4u);
        return transpose(mat4x4<f32>(r0, r1, r2, r3));
    }
    if (TRANS_B) {
        let r0 = b_vec((n * P.k + k) / 4u);
        let r1 = b_vec(((n + 1u) * P.k + k) / 4u);
        let r2 = b_vec(((n + 2u) * P.k + k) / 4u);
        let r3 = b_vec(((n + 3u) * P.k + k) / 4u);
        return transpose(mat4x4<f32>(r0, r1, r2, r3));
    }
    let nq = n / 4u;
    let stride = P.n / 4u;
    let c0 = b_vec(k * stride + nq);
    if (!K_TAIL) {
        return mat4x4<f32>(c0, b_vec((k + 1u) * stride + nq), b_vec((k + 2u) * stride + nq), b_vec((k + 3u) * stride + nq));
    }
    let c1 = select(vec4<f32>(0.0), b_vec(min(k + 1u, P.k - 1u) * stride + nq), k + 1u < P.k);
    let c2 = select(vec4<f32>(0.0), b_vec(min(k + 2u, P.k - 1u) * stride + nq), k + 2u < P.k);
    let c3 = select(vec4<f32>(0.0), b_vec(min(k + 3u, P.k - 1u) * stride + nq), k + 3u < P.k);
    return mat4x4<f32>(c0, c1, c2, c3);
}

// Rows 4q..4q+3 of the A slice when TRANS_A: unit (kk, q) sits in u_kk of lane q; the matrix
// returned has column r = op(A)[4q + r, k..k+3].
fn a_quad_t(c0: vec4<f32>, c1: vec4<f32>, c2: vec4<f32>, c3: vec4<f32>) -> mat4x4<f32> {
    return transpose(mat4x4<f32>(c0, c1, c2, c3));
}

// c + b·a for 4×4 blocks. fma() is one instruction where the adapter fuses; lavapipe 22.3 emits
// a multiply and an add either way (its code has no FMA instructions).
fn mad_col(b: mat4x4<f32>, a: vec4<f32>, c: vec4<f32>) -> vec4<f32> {
    return fma(b[3], vec4<f32>(a.w), fma(b[2], vec4<f32>(a.z), fma(b[1], vec4<f32>(a.y), fma(b[0], vec4<f32>(a.x), c))));
}

fn mad_blk(b: mat4x4<f32>, a: mat4x4<f32>, c: mat4x4<f32>) -> mat4x4<f32> {
    return mat4x4<f32>(mad_col(b, a[0], c[0]), mad_col(b, a[1], c[1]), mad_col(b, a[2], c[2]), mad_col(b, a[3], c[3]));
}

// The accumulators: eight 4×4 blocks (block q: rows 4q..4q+3, column r = row 4q + r) and the
// column sums. A struct of named blocks, not an array: lavapipe keeps a dynamically indexed
// array in memory, which costs 10×.
struct Acc {
    q0: mat4x4<f32>, q1: mat4x4<f32>, q2: mat4x4<f32>, q3: mat4x4<f32>,
    q4: mat4x4<f32>, q5: mat4x4<f32>, q6: mat4x4<f32>, q7: mat4x4<f32>,
    cs: vec4<f32>,
}

// Adds op(A)[m0.., k..k+3] · op(B)[k..k+3, n..n+3] into acc.
fn k_step(m0: u32, k: u32, n: u32, li_a: u32, acc: ptr<function, Acc>) {
    let u0 = a_unit(m0, k, li_a);
    let u1 = a_unit(m0, k, li_a + LANES);
    var u2 = vec4<f32>(0.0);
    var u3 = vec4<f32>(0.0);
    if (LANES == 8u) {
        u2 = a_unit(m0, k, li_a + 16u);
        u3 = a_unit(m0, k, li_a + 24u);
    }
    let bm = b_block(k, n);
    if (COLSUM) { (*acc).cs += bm * vec4<f32>(1.0); }
    // Unit u sits in u_(u / LANES) of lane u % LANES. TRANS_A: block q takes units
    // q, 8 + q, 16 + q, 24 + q (its four K-rows); otherwise block q's columns are the
    // units (rows) 4q..4q+3.
    if (TRANS_A && LANES == 8u) {
        (*acc).q0 = mad_blk(bm, a_quad_t(subgroupBroadcast(u0, 0u), subgroupBroadcast(u1, 0u), subgroupBroadcast(u2, 0u), subgroupBroadcast(u3, 0u)), (*acc).q0);
        (*acc).q1 = mad_blk(bm, a_quad_t(subgroupBroadcast(u0, 1u), subgroupBroadcast(u1, 1u), subgroupBroadcast(u2, 1u), subgroupBroadcast(u3, 1u)), (*acc).q1);
        (*acc).q2 = mad_blk(bm, a_quad_t(subgroupBroadcast(u0, 2u), subgroupBroadcast(u1, 2u), subgroupBroadcast(u2, 2u), subgroupBroadcast(u3, 2u)), (*acc).q2);
        (*acc).q3 = mad_blk(bm, a_quad_t(subgroupBroadcast(u0, 3u), subgroupBroadcast(u1, 3u), subgroupBroadcast(u2, 3u), subgroupBroadcast(u3, 3u)), (*acc).q3);
        (*acc).q4 = mad_blk(bm, a_quad_t(subgroupBroadcast(u0, 4u), subgroupBroadcast(u1, 4u), subgroupBroadcast(u2, 4u), subgroupBroadcast(u3, 4u)), (*acc).q4);
        (*acc).q5 = mad_blk(bm, a_quad_t(subgroupBroadcast(u0, 5u), subgroupBroadcast(u1, 5u), subgroupBroadcast(u2, 5u), subgroupBroadcast(u3, 5u)), (*acc).q5);
        (*acc).q6 = mad_blk(bm, a_quad_t(subgroupBroadcast(u0, 6u), subgroupBroadcast(u1, 6u), subgroupBroadcast(u2, 6u), subgroupBroadcast(u3, 6u)), (*acc).q6);
        (*acc).q7 = mad_blk(bm, a_quad_t(subgroupBroadcast(u0, 7u), subgroupBroadcast(u1, 7u), subgroupBroadcast(u2, 7u), subgroupBroadcast(u3, 7u)), (*acc).q7);
    } else if (TRANS_A) {
        (*acc).q0 = mad_blk(bm, a_quad_t(subgroupBroadcast(u0, 0u), subgroupBroadcast(u0, 8u), subgroupBroadcast(u1, 0u), subgroupBroadcast(u1, 8u)), (*acc).q0);
        (*acc).q1 = mad_blk(bm, a_quad_t(subgroupBroadcast(u0, 1u), subgroupBroadcast(u0, 9u), subgroupBroadcast(u1, 1u), subgroupBroadcast(u1, 9u)), (*acc).q1);
        (*acc).q2 = mad_blk(bm, a_quad_t(subgroupBroadcast(u0, 2u), subgroupBroadcast(u0, 10u), subgroupBroadcast(u1, 2u), subgroupBroadcast(u1, 10u)), (*acc).q2);
        (*acc).q3 = mad_blk(bm, a_quad_t(subgroupBroadcast(u0, 3u), subgroupBroadcast(u0, 11u), subgroupBroadcast(u1, 3u), subgroupBroadcast(u1, 11u)), (*acc).q3);
        (*acc).q4 = mad_blk(bm, a_quad_t(subgroupBroadcast(u0, 4u), subgroupBroadcast(u0, 12u), subgroupBroadcast(u1, 4u), subgroupBroadcast(u1, 12u)), (*acc).q4);
        (*acc).q5 = mad_blk(bm, a_quad_t(subgroupBroadcast(u0, 5u), subgroupBroadcast(u0, 13u), subgroupBroadcast(u1, 5u), subgroupBroadcast(u1, 13u)), (*acc).q5);
        (*acc).q6 = mad_blk(bm, a_quad_t(subgroupBroadcast(u0, 6u), subgroupBroadcast(u0, 14u), subgroupBroadcast(u1, 6u), subgroupBroadcast(u1, 14u)), (*acc).q6);
        (*acc).q7 = mad_blk(bm, a_quad_t(subgroupBroadcast(u0, 7u), subgroupBroadcast(u0, 15u), subgroupBroadcast(u1, 7u), subgroupBroadcast(u1, 15u)), (*acc).q7);
    } else if (LANES == 8u) {
        (*acc).q0 = mad_blk(bm, mat4x4<f32>(subgroupBroadcast(u0, 0u), subgroupBroadcast(u0, 1u), subgroupBroadcast(u0, 2u), subgroupBroadcast(u0, 3u)), (*acc).q0);
        (*acc).q1 = mad_blk(bm, mat4x4<f32>(subgroupBroadcast(u0, 4u), subgroupBroadcast(u0, 5u), subgroupBroadcast(u0, 6u), subgroupBroadcast(u0, 7u)), (*acc).q1);
        (*acc).q2 = mad_blk(bm, mat4x4<f32>(subgroupBroadcast(u1, 0u), subgroupBroadcast(u1, 1u), subgroupBroadcast(u1, 2u), subgroupBroadcast(u1, 3u)), (*acc).q2);
        (*acc).q3 = mad_blk(bm, mat4x4<f32>(subgroupBroadcast(u1, 4u), subgroupBroadcast(u1, 5u), subgroupBroadcast(u1, 6u), subgroupBroadcast(u1, 7u)), (*acc).q3);
        (*acc).q4 = mad_blk(bm, mat4x4<f32>(subgroupBroadcast(u2, 0u), subgroupBroadcast(u2, 1u), subgroupBroadcast(u2, 2u), subgroupBroadcast(u2, 3u)), (*acc).q4);
        (*acc).q5 = mad_blk(bm, mat4x4<f32>(subgroupBroadcast(u2, 4u), subgroupBroadcast(u2, 5u), subgroupBroadcast(u2, 6u), subgroupBroadcast(u2, 7u)), (*acc).q5);
        (*acc).q6 = mad_blk(bm, mat4x4<f32>(subgroupBroadcast(u3, 0u), subgroupBroadcast(u3, 1u), subgroupBroadcast(u3, 2u), subgroupBroadcast(u3, 3u)), (*acc).q6);
        (*acc).q7 = mad_blk(bm, mat4x4<f32>(subgroupBroadcast(u3, 4u), subgroupBroadcast(u3, 5u), subgroupBroadcast(u3, 6u), subgroupBroadcast(u3, 7u)), (*acc).q7);
    } else {
        (*acc).q0 = mad_blk(bm, mat4x4<f32>(subgroupBroadcast(u0, 0u), subgroupBroadcast(u0, 1u), subgroupBroadcast(u0, 2u), subgroupBroadcast(u0, 3u)), (*acc).q0);
        (*acc).q1 = mad_blk(bm, mat4x4<f32>(subgroupBroadcast(u0, 4u), subgroupBroadcast(u0, 5u), subgroupBroadcast(u0, 6u), subgroupBroadcast(u0, 7u)), (*acc).q1);
        (*acc).q2 = mad_blk(bm, mat4x4<f32>(subgroupBroadcast(u0, 8u), subgroupBroadcast(u0, 9u), subgroupBroadcast(u0, 10u), subgroupBroadcast(u0, 11u)), (*acc).q2);
        (*acc).q3 = mad_blk(bm, mat4x4<f32>(subgroupBroadcast(u0, 12u), subgroupBroadcast(u0, 13u), subgroupBroadcast(u0, 14u), subgroupBroadcast(u0, 15u)), (*acc).q3);
        (*acc).q4 = mad_blk(bm, mat4x4<f32>(subgroupBroadcast(u1, 0u), subgroupBroadcast(u1, 1u), subgroupBroadcast(u1, 2u), subgroupBroadcast(u1, 3u)), (*acc).q4);
        (*acc).q5 = mad_blk(bm, mat4x4<f32>(subgroupBroadcast(u1, 4u), subgroupBroadcast(u1, 5u), subgroupBroadcast(u1, 6u), subgroupBroadcast(u1, 7u)), (*acc).q5);
        (*acc).q6 = mad_blk(bm, mat4x4<f32>(subgroupBroadcast(u1, 8u), subgroupBroadcast(u1, 9u), subgroupBroadcast(u1, 10u), subgroupBroadcast(u1, 11u)), (*acc).q6);
        (*acc).q7 = mad_blk(bm, mat4x4<f32>(subgroupBroadcast(u1, 12u), subgroupBroadcast(u1, 13u), subgroupBroadcast(u1, 14u), subgroupBroadcast(u1, 15u)), (*acc).q7);
    }
}

@compute @workgroup_size(SG_WG)
fn matmul_subgroup(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
    @builtin(subgroup_invocation_id) lane: u32,
) {
    P = p;
    let m0 = wid.y * S_ROWS;
    if (CONV == 3u) {
        set_class(wid.z);
        // The whole workgroup, so subgroup operations stay uniform.
        if (m0 >= P.m) { return; }
    }
    let n = (wid.x * SG_WG + li) * 4u;
    let li_a = lane % LANES;
    var acc = Acc();
    var k = 0u;
    if (K8) {
        for (; k + 8u <= P.k; k += 8u) {
            k_step(m0, k, n, li_a, &acc);
            k_step(m0, k + 4u, n, li_a, &acc);
        }
    }
    for (; k < P.k; k += 4u) {
        k_step(m0, k, n, li_a, &acc);
    }
    if (n >= P.n) { return; }
    let nq = n / 4u;
    let bq = bias_quad(nq);
    store_rows(m0, nq, acc.q0, bq);
    store_rows(m0 + 4u, nq, acc.q1, bq);
    store_rows(m0 + 8u, nq, acc.q2, bq);
    store_rows(m0 + 12u, nq, acc.q3, bq);
    store_rows(m0 + 16u, nq, acc.q4, bq);
    store_rows(m0 + 20u, nq, acc.q5, bq);
    store_rows(m0 + 24u, nq, acc.q6, bq);
    store_rows(m0 + 28u, nq, acc.q7, bq);
    if (COLSUM && wid.y == 0u) { store_colsum4(nq, acc.cs); }
}
