// Activation functions shared by the matmul epilogue and the standalone activation kernels.
// Codes: 0 identity, 1 ReLU, 2 LeakyReLU, 3 tanh, 4 sigmoid (src/ops/activation.rs).
// Derivatives are taken from the activation's output y, so backward needs no pre-activation.
// This file is prepended to the kernels that use it.

fn act_apply(code: u32, x: f32, slope: f32) -> f32 {
    switch code {
        case 1u: { return max(x, 0.0); }
        case 2u: { return select(slope * x, x, x > 0.0); }
        case 3u: {
            // Through exp(-2|x|) <= 1, so large |x| cannot overflow to inf/inf.
            let t = exp(-2.0 * abs(x));
            return sign(x) * (1.0 - t) / (1.0 + t);
        }
        case 4u: {
            let t = exp(-abs(x));
            return select(t / (1.0 + t), 1.0 / (1.0 + t), x >= 0.0);
        }
        default: { return x; }
    }
}

fn act_grad(code: u32, y: f32, slope: f32) -> f32 {
    switch code {
        case 1u: { return select(0.0, 1.0, y > 0.0); }
        case 2u: { return select(slope, 1.0, y > 0.0); }
        case 3u: { return 1.0 - y * y; }
        case 4u: { return y * (1.0 - y); }
        default: { return 1.0; }
    }
}

fn act_apply4(code: u32, x: vec4<f32>, slope: f32) -> vec4<f32> {
    return vec4<f32>(act_apply(code, x.x, slope), act_apply(code, x.y, slope),
                     act_apply(code, x.z, slope), act_apply(code, x.w, slope));
}

fn act_grad4(code: u32, y: vec4<f32>, slope: f32) -> vec4<f32> {
    return vec4<f32>(act_grad(code, y.x, slope), act_grad(code, y.y, slope),
                     act_grad(code, y.z, slope), act_grad(code, y.w, slope));
}
