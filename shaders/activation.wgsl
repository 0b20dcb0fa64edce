// Standalone activation forward and backward over a flat tensor of vec4s. The training step
// fuses both into the matmul epilogue (see matmul.wgsl); these serve other layer types and
// the tests. Backward takes the activation's output y: dx = dy ⊙ f'(y).

struct ActParams {
    len4: u32,          // number of vec4s
    leaky_slope: f32,
}

override ACT: u32 = 0u;

@group(0) @binding(0) var<uniform> p: ActParams;
// Private copies of the uniforms, taken first thing in each entry: once a branch has made the
// execution mask live, lavapipe loads a uniform lane by lane (a gather) on every read.
var<private> P: ActParams;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;   // forward: input; backward: y
@group(0) @binding(2) var<storage, read> dy: array<vec4<f32>>;  // backward only
@group(0) @binding(3) var<storage, read_write> out: array<vec4<f32>>;

@compute @workgroup_size(64)
fn act_forward(@builtin(global_invocation_id) gid: vec3<u32>) {
    P = p;
    let i = gid.x + gid.y * 65535u * 64u;
    if (i >= P.len4) { return; }
    out[i] = act_apply4(ACT, x[i], P.leaky_slope);
}

@compute @workgroup_size(64)
fn act_backward(@builtin(global_invocation_id) gid: vec3<u32>) {
    P = p;
    let i = gid.x + gid.y * 65535u * 64u;
    if (i >= P.len4) { return; }
    out[i] = dy[i] * act_grad4(ACT, x[i], P.leaky_slope);
}

// A Gaussian decoder's means as pixel values: clamped to [0, 1] (a Bernoulli decoder's are the
// sigmoid of its logits, act_forward with ACT 4).
@compute @workgroup_size(64)
fn unit_clamp(@builtin(global_invocation_id) gid: vec3<u32>) {
    P = p;
    let i = gid.x + gid.y * 65535u * 64u;
    if (i >= P.len4) { return; }
    out[i] = clamp(x[i], vec4<f32>(0.0), vec4<f32>(1.0));
}
