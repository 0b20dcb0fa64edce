// Adam / AdamW over the whole parameter arena in one dispatch (step.wgsl is prepended).
// params, grads, m and v are four buffers of the same layout; padding between tensors has
// zero gradient and zero parameters, so it stays zero. The update is PyTorch's:
//   g += wd·p (Adam, L2) | p −= lr·wd·p (AdamW, DECOUPLED)
//   m = β1·m + (1−β1)·g ;  v = β2·v + (1−β2)·g²
//   p −= (lr / (1−β1^t)) · m / (sqrt(v) / sqrt(1−β2^t) + eps)
// The per-step lr and bias corrections come from the Step uniform.
// The divergence guard: an updated parameter that is not finite lowers health[0] to this
// step's number with atomicMin, so the first such step is known at the epoch's end without a
// readback per step (the trainer sets the word to 0xFFFFFFFF when an epoch starts).

struct AdamParams {
    len4: u32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    weight_decay: f32,
}

override DECOUPLED: bool = false;

@group(0) @binding(0) var<uniform> p: AdamParams;
// Private copies of the uniforms, taken first thing in each entry: once a branch has made the
// execution mask live, lavapipe loads a uniform lane by lane (a gather) on every read.
var<private> P: AdamParams;
@group(0) @binding(1) var<uniform> step: Step;
var<private> S: Step;
@group(0) @binding(2) var<storage, read_write> params: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> grads: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> m1: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> m2: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read_write> health: array<atomic<u32>>;

fn flush_subnormal(x: vec4<f32>) -> vec4<f32> {
    return select(x, vec4<f32>(0.0), abs(x) < vec4<f32>(1.17549435e-38));
}

@compute @workgroup_size(64)
fn adam(@builtin(global_invocation_id) gid: vec3<u32>) {
    P = p;
    S = step;
    let i = gid.x + gid.y * 65535u * 64u;
    if (i >= P.len4) { return; }
    let lr = S.adam_lr;
    var w = params[i];
    var g = grads[i];
    if (DECOUPLED) {
        w -= lr * P.weight_decay * w;
    } else {
        g += P.weight_decay * w;
    }
    // Moments below f32's smallest normal are stored as 0. A parameter whose gradient stops
    // (a pixel that is rarely inked) has m shrink by β1 per step into the subnormal range,
    // where every CPU operation on it takes a microcode assist: measured on lavapipe, 80,000
    // subnormal m values after two MNIST epochs made this kernel 2.4× slower (4.9 against
    // 2.1 ms). Such an m moves its parameter by under lr·1.2e-38/ε ≈ 1e-33.
    let m = flush_subnormal(P.beta1 * m1[i] + (1.0 - P.beta1) * g);
    let v = flush_subnormal(P.beta2 * m2[i] + (1.0 - P.beta2) * g * g);
    m1[i] = m;
    m2[i] = v;
    let denom = sqrt(v) / sqrt(S.adam_bc2) + vec4<f32>(P.eps);
    let updated = w - (lr / S.adam_bc1) * m / denom;
    params[i] = updated;
    // False for NaN and ±inf alike (every comparison with NaN is false).
    if (!all(abs(updated) <= vec4<f32>(3.4028235e38))) {
        atomicMin(&health[0], S.step);
    }
}
