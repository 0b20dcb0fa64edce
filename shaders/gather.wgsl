// Batch gather from a dataset resident on the GPU as bytes (step.wgsl and rng.wgsl are
// prepended): row b of the batch is example perm[batch_start + b], each byte becomes
// byte/255 in [0, 1], or with BINARIZE a Bernoulli draw with that probability (dynamic
// binarization, keyed by (seed, step, stream 2, element)). Four pixels per u32 word, so the
// example size D must be a multiple of 4. The batch rows may be wider than D (x_stride4 vec4s):
// a conditional model's input is [pixels | one-hot label | zero padding], the label part
// written by `condition` below.

struct GatherParams {
    rows: u32,      // B
    d4: u32,        // D / 4 (u32 words per example)
    count: u32,     // examples in the dataset (bounds check on perm entries)
    perm_len: u32,
    x_stride4: u32, // batch row stride in vec4s (≥ d4)
}

override BINARIZE: bool = false;
// Stream words as rng::stream_word builds them (stream << 16 | sample 0): a raw 2 or 4 would
// be the training ε of Monte Carlo sample 2 or 4.
const BINARIZE_STREAM: u32 = 2u << 16u;

@group(0) @binding(0) var<uniform> p: GatherParams;
// Private copies of the uniforms, taken first thing in each entry: once a branch has made the
// execution mask live, lavapipe loads a uniform lane by lane (a gather) on every read.
var<private> P: GatherParams;
@group(0) @binding(1) var<uniform> step: Step;
var<private> S: Step;
@group(0) @binding(2) var<storage, read> data: array<u32>;
@group(0) @binding(3) var<storage, read> perm: array<u32>;
@group(0) @binding(4) var<storage, read_write> x: array<vec4<f32>>;

// The dataset example that batch row b reads, or NONE past the permutation's end (a zero row).
const NONE: u32 = 0xffffffffu;
fn example_of(b: u32) -> u32 {
    let pos = S.batch_start + b;
    if (pos >= P.perm_len) { return NONE; }
    return min(perm[pos], P.count - 1u);
}

// Writes element vec4 i (row b, vec4 q) of the batch: the grey levels v as they are, or with
// BINARIZE a Bernoulli draw with those probabilities.
fn put(i: u32, b: u32, q: u32, levels: vec4<f32>) {
    var v = levels;
    if (BINARIZE) {
        let e = i * 4u;
        let u = vec4<f32>(
            rng_uniform(S.seed, S.step, BINARIZE_STREAM, e),
            rng_uniform(S.seed, S.step, BINARIZE_STREAM, e + 1u),
            rng_uniform(S.seed, S.step, BINARIZE_STREAM, e + 2u),
            rng_uniform(S.seed, S.step, BINARIZE_STREAM, e + 3u));
        v = select(vec4<f32>(0.0), vec4<f32>(1.0), u < v);
    }
    x[b * P.x_stride4 + q] = v;
}

@compute @workgroup_size(64)
fn gather(@builtin(global_invocation_id) gid: vec3<u32>) {
    P = p;
    S = step;
    let i = gid.x + gid.y * 65535u * 64u;
    if (i >= P.rows * P.d4) { return; }
    let b = i / P.d4;
    let q = i % P.d4;
    let ex = example_of(b);
    var v = vec4<f32>(0.0);
    if (ex != NONE) {
        let w = data[ex * P.d4 + q];
        v = vec4<f32>(f32(w & 255u), f32((w >> 8u) & 255u), f32((w >> 16u) & 255u), f32(w >> 24u)) * (1.0 / 255.0);
    }
    put(i, b, q, v);
}

// The same gather from a dataset of f32 grey levels in [0, 1] (a host's own device buffer, a
// float32 array): row b of the batch is example perm[batch_start + b] as it is stored, or with
// BINARIZE a Bernoulli draw with those probabilities under the byte path's keys. Values
// holding byte·(1/255) give the byte path's batch bit for bit.
@group(0) @binding(10) var<storage, read> dataf: array<vec4<f32>>;

@compute @workgroup_size(64)
fn gather_f32(@builtin(global_invocation_id) gid: vec3<u32>) {
    P = p;
    S = step;
    let i = gid.x + gid.y * 65535u * 64u;
    if (i >= P.rows * P.d4) { return; }
    let b = i / P.d4;
    let q = i % P.d4;
    let ex = example_of(b);
    var v = vec4<f32>(0.0);
    if (ex != NONE) { v = dataf[ex * P.d4 + q]; }
    put(i, b, q, v);
}

// ---- class conditioning: one-hot labels after the pixels and after the latent code ----
// x[b, D + c] = [label(b) == c] for c in 0..x_extra, and z[r, Z + c] likewise for every one of
// the L·B decoder rows r (example r mod B); the columns past the classes are zero padding,
// whatever the label (a label at or beyond the class count gives an all-zero one-hot).

struct CondParams {
    rows: u32,      // B
    samples: u32,   // L
    x_dim: u32,     // D
    x_width: u32,   // D' (row stride of x)
    z_dim: u32,     // Z
    z_width: u32,   // Z' (row stride of z)
    count: u32,
    perm_len: u32,
    classes: u32,   // one-hot columns; those past them stay zero
}

@group(0) @binding(0) var<uniform> cp: CondParams;
var<private> CP: CondParams;
@group(0) @binding(5) var<storage, read> labels: array<u32>;
@group(0) @binding(6) var<storage, read_write> xc: array<f32>;
@group(0) @binding(7) var<storage, read_write> zc: array<f32>;

fn label_of(b: u32) -> u32 {
    let pos = S.batch_start + b;
    if (pos >= CP.perm_len) { return 0xffffffffu; }
    return labels[min(perm[pos], CP.count - 1u)];
}

@compute @workgroup_size(64)
fn condition(@builtin(global_invocation_id) gid: vec3<u32>) {
    CP = cp;
    S = step;
    let i = gid.x + gid.y * 65535u * 64u;
    let xe = CP.x_width - CP.x_dim;
    let ze = CP.z_width - CP.z_dim;
    let nx = CP.rows * xe;
    if (i < nx) {
        let b = i / xe;
        let c = i % xe;
        xc[b * CP.x_width + CP.x_dim + c] = select(0.0, 1.0, c < CP.classes && label_of(b) == c);
        return;
    }
    let j = i - nx;
    if (j >= CP.samples * CP.rows * ze) { return; }
    let r = j / ze;
    let c = j % ze;
    zc[r * CP.z_width + CP.z_dim + c] = select(0.0, 1.0, c < CP.classes && label_of(r % CP.rows) == c);
}

// ---- masking noise for denoising: the encoder's input is a corrupted copy of the batch ----
// dst[b, d] = 0 with probability `drop`, else src[b, d], for the D pixels (the draw keyed by
// (seed, step, stream 4, b·D + d)); the columns past D (a conditional model's one-hot label)
// are copied unchanged. The loss still compares the reconstruction with the clean src.

struct CorruptParams {
    rows: u32,      // B
    d4: u32,        // D / 4
    stride4: u32,   // row stride of src and dst in vec4s (≥ d4)
    drop: f32,      // probability that a pixel is zeroed
}

const CORRUPT_STREAM: u32 = 4u << 16u;  // see BINARIZE_STREAM

@group(0) @binding(0) var<uniform> mp: CorruptParams;
var<private> MP: CorruptParams;
@group(0) @binding(8) var<storage, read> clean: array<vec4<f32>>;
@group(0) @binding(9) var<storage, read_write> noisy: array<vec4<f32>>;

@compute @workgroup_size(64)
fn corrupt(@builtin(global_invocation_id) gid: vec3<u32>) {
    MP = mp;
    S = step;
    let i = gid.x + gid.y * 65535u * 64u;
    if (i >= MP.rows * MP.stride4) { return; }
    let b = i / MP.stride4;
    let q = i % MP.stride4;
    var v = clean[i];
    if (q < MP.d4) {
        let e = (b * MP.d4 + q) * 4u;
        let u = vec4<f32>(
            rng_uniform(S.seed, S.step, CORRUPT_STREAM, e),
            rng_uniform(S.seed, S.step, CORRUPT_STREAM, e + 1u),
            rng_uniform(S.seed, S.step, CORRUPT_STREAM, e + 2u),
            rng_uniform(S.seed, S.step, CORRUPT_STREAM, e + 3u));
        v = select(v, vec4<f32>(0.0), u < vec4<f32>(MP.drop));
    }
    noisy[i] = v;
}
