//! `shaders/loss.wgsl`: reconstruction NLL per row and its gradient, in one pass.

use crate::error::{Result, VaeError};
use crate::gpu::kernels::layout::{storage, uniform};
use crate::gpu::{Dispatch, Gpu, Shader, Tensor};

/// The decoder's likelihood p(x | z).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Likelihood {
    /// Bernoulli with logits: NLL = Σ softplus(l) − x·l (x may be grey levels in [0, 1]).
    Bernoulli,
    /// Gaussian with fixed variance c: NLL = Σ (x − μ)²/(2c) + ½·log(2πc).
    Gaussian { variance: f32 },
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct LossParams {
    rows: u32,
    batch: u32,
    d4: u32,
    scale: f32,
    log_c: f32,
    _pad: [u32; 3],
}

/// Plans nll[r] and grad = scale · ∂nll/∂out for decoder output `out` [R, D] against targets
/// `x` [B, D] (row r uses target r mod B; R = L·B for L samples). D must be a multiple of 4.
pub fn loss(
    gpu: &Gpu,
    label: &str,
    likelihood: Likelihood,
    out: &Tensor,
    x: &Tensor,
    scale: f32,
    nll: &Tensor,
    grad: &Tensor,
) -> Result<Dispatch> {
    let ([r, d], [b, dx]) = (out.shape(), x.shape()) else {
        return Err(VaeError::Shape(format!(
            "{label}: output and target must be 2-D, got {:?} and {:?}",
            out.shape(),
            x.shape()
        )));
    };
    let (r, d, b) = (*r, *d, *b);
    if d != *dx || b == 0 || r % b != 0 || d % 4 != 0 || nll.len() != r || grad.shape() != out.shape() {
        return Err(VaeError::Shape(format!(
            "{label}: output {:?} and target {:?} need equal widths divisible by 4 and rows a multiple \
             of the target's; nll needs {r} elements (got {:?}) and the gradient the output's shape (got {:?})",
            out.shape(),
            x.shape(),
            nll.shape(),
            grad.shape()
        )));
    }
    let (entry, log_c) = match likelihood {
        Likelihood::Bernoulli => ("bernoulli", 0.0),
        Likelihood::Gaussian { variance } => {
            if !(variance > 0.0 && variance.is_finite()) {
                return Err(VaeError::Config(format!(
                    "Gaussian variance must be positive and finite, got {variance}"
                )));
            }
            ("gaussian", variance.ln())
        }
    };
    let layout = [
        uniform(0),
        storage(1, true),
        storage(2, true),
        storage(3, false),
        storage(4, false),
    ];
    let pipeline = gpu.kernels.pipeline(Shader::Loss, entry, &[], &layout)?;
    let params = LossParams {
        rows: r as u32,
        batch: b as u32,
        d4: (d / 4) as u32,
        scale,
        log_c,
        _pad: [0; 3],
    };
    let ubuf = gpu.uniform(label, &params)?;
    let res = [
        ubuf.raw().as_entire_binding(),
        out.binding(),
        x.binding(),
        nll.binding(),
        grad.binding(),
    ];
    let grid = if r <= 65535 {
        [r as u32, 1, 1]
    } else {
        [65535, r.div_ceil(65535) as u32, 1]
    };
    gpu.dispatch(
        label,
        pipeline,
        &res,
        Some(ubuf.clone()),
        grid,
        0.0,
        4.0 * (3 * r * d) as f64,
    )
}
