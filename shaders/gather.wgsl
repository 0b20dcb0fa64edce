// Batch gather from a dataset resident on the GPU as bytes (step.wgsl and rng.wgsl are
// prepended): row b of the batch is example perm[batch_start + b], each byte becomes
// byte/255 in [0, 1], or with BINARIZE a Bernoulli draw with that probability (dynamic
// binarization, keyed by (seed, step, stream 2, element)). Four pixels per u32 word, so the
// example size D must be a multiple of 4.

struct GatherParams {
    rows: u32,      // B
    d4: u32,        // D / 4 (u32 words per example)
    count: u32,     // examples in the dataset (bounds check on perm entries)
    perm_len: u32,
}

override BINARIZE: bool = false;
const BINARIZE_STREAM: u32 = 2u;

@group(0) @binding(0) var<uniform> p: GatherParams;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read> data: array<u32>;
@group(0) @binding(3) var<storage, read> perm: array<u32>;
@group(0) @binding(4) var<storage, read_write> x: array<vec4<f32>>;

@compute @workgroup_size(64)
fn gather(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x + gid.y * 65535u * 64u;
    if (i >= p.rows * p.d4) { return; }
    let b = i / p.d4;
    let q = i % p.d4;
    let pos = step.batch_start + b;
    var v = vec4<f32>(0.0);
    if (pos < p.perm_len) {
        let ex = min(perm[pos], p.count - 1u);
        let w = data[ex * p.d4 + q];
        v = vec4<f32>(f32(w & 255u), f32((w >> 8u) & 255u), f32((w >> 16u) & 255u), f32(w >> 24u)) * (1.0 / 255.0);
    }
    if (BINARIZE) {
        let e = i * 4u;
        let u = vec4<f32>(
            rng_uniform(step.seed, step.step, BINARIZE_STREAM, e),
            rng_uniform(step.seed, step.step, BINARIZE_STREAM, e + 1u),
            rng_uniform(step.seed, step.step, BINARIZE_STREAM, e + 2u),
            rng_uniform(step.seed, step.step, BINARIZE_STREAM, e + 3u));
        v = select(vec4<f32>(0.0), vec4<f32>(1.0), u < v);
    }
    x[i] = v;
}
