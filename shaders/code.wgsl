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
