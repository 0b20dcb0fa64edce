// Copies a row-major [rows, cols] matrix from a buffer (the parameter arena) into an rgba32float
// storage texture of cols/4 × rows texels, texel (q, r) = src[r, 4q..4q+3]. Run after each
// optimizer step for the weights the subgroup matmul reads as a texture (see matmul.wgsl,
// B_TEXTURE). cols must be a multiple of 4; src is bound at the matrix's first element.

struct MirrorParams {
    cols4: u32,    // texels per row
    rows: u32,
}

@group(0) @binding(0) var<uniform> p: MirrorParams;
@group(0) @binding(1) var<storage, read> src: array<vec4<f32>>;
@group(0) @binding(2) var dst: texture_storage_2d<rgba32float, write>;

// One invocation per texel on a (column, row) grid: no integer division, which the CPU
// driver would do lane by lane.
@compute @workgroup_size(64)
fn mirror(@builtin(global_invocation_id) gid: vec3<u32>) {
    let q = gid.x;
    let r = gid.y;
    if (q >= p.cols4 || r >= p.rows) { return; }
    textureStore(dst, vec2<u32>(q, r), src[r * p.cols4 + q]);
}
