// Adam / AdamW over the whole parameter arena in one dispatch (step.wgsl is prepended).
// params, grads, m and v are four buffers of the same layout; padding between tensors has
// zero gradient and zero parameters, so it stays zero. The update is PyTorch's:
//   g += wd·p (Adam, L2) | p −= lr·wd·p (AdamW, DECOUPLED)
//   m = β1·m + (1−β1)·g ;  v = β2·v + (1−β2)·g²
//   p −= (lr / (1−β1^t)) · m / (sqrt(v) / sqrt(1−β2^t) + eps)
// The per-step lr and bias corrections come from the Step uniform.

struct AdamParams {
    len4: u32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    weight_decay: f32,
}

override DECOUPLED: bool = false;

@group(0) @binding(0) var<uniform> p: AdamParams;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read_write> params: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> grads: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> m1: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> m2: array<vec4<f32>>;

@compute @workgroup_size(64)
fn adam(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x + gid.y * 65535u * 64u;
    if (i >= p.len4) { return; }
    let lr = step.adam_lr;
    var w = params[i];
    var g = grads[i];
    if (DECOUPLED) {
        w -= lr * p.weight_decay * w;
    } else {
        g += p.weight_decay * w;
    }
    let m = p.beta1 * m1[i] + (1.0 - p.beta1) * g;
    let v = p.beta2 * m2[i] + (1.0 - p.beta2) * g * g;
    m1[i] = m;
    m2[i] = v;
    let denom = sqrt(v) / sqrt(step.adam_bc2) + vec4<f32>(p.eps);
    params[i] = w - (lr / step.adam_bc1) * m / denom;
}
