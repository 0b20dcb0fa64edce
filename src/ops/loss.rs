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
    Gaussian {
        /// The variance c (> 0).
        variance: f32,
    },
    /// Gaussian with a learned log-variance parameter, one per pixel or one shared by all,
    /// clamped to [`LOG_C_MIN`, `LOG_C_MAX`] (zero gradient outside). Initialised to 0 (c = 1).
    GaussianLearned {
        /// One log-variance per pixel, or one shared by all.
        per_pixel: bool,
    },
}

/// Floor of a learned log-variance: σ ≥ e⁻³ ≈ 0.05, about 13 grey levels of 255. Without it a
/// pixel that is constant in the data (MNIST's border) drives c → 0 and the NLL → −∞.
pub const LOG_C_MIN: f32 = -6.0;
/// Ceiling of a learned log-variance (bounds exp(−log c) in the other direction).
pub const LOG_C_MAX: f32 = 6.0;

impl Likelihood {
    /// Whether the likelihood has its own parameters (a learned log-variance).
    pub fn learned_log_c_len(&self, pixels: usize) -> Option<usize> {
        match self {
            Likelihood::GaussianLearned { per_pixel: true } => Some(pixels),
            Likelihood::GaussianLearned { per_pixel: false } => Some(1),
            _ => None,
        }
    }
}

/// The learned log-variance's parameter view and a scratch for its per-element gradient.
pub struct LearnedLogC<'a> {
    /// The parameter (arena view): `[D]` per pixel or `[1]` shared.
    pub log_c: &'a Tensor,
    /// Per-element gradient contributions, [R, D]; reduced by [`log_c_grad`].
    pub dlc: &'a Tensor,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct LossParams {
    rows: u32,
    batch: u32,
    d4: u32,
    scale: f32,
    log_c: f32,
    x_stride4: u32,
    n4: u32,
    _pad: u32,
}

/// Plans `nll[r]` and grad = scale · ∂nll/∂out for decoder output `out` [R, D] against targets
/// `x` [B, D'] (row r uses target r mod B; R = L·B for L samples; the first D of each target
/// row's D' ≥ D values are the pixels). D and D' must be multiples of 4. A learned variance
/// needs `learned`, where the per-element gradient of log c goes.
#[allow(clippy::too_many_arguments)]
pub fn loss(
    gpu: &Gpu,
    label: &str,
    likelihood: Likelihood,
    out: &Tensor,
    x: &Tensor,
    scale: f32,
    nll: &Tensor,
    grad: &Tensor,
    learned: Option<&LearnedLogC<'_>>,
) -> Result<Dispatch> {
    let ([r, d], [b, dx]) = (out.shape(), x.shape()) else {
        return Err(VaeError::Shape(format!(
            "{label}: output and target must be 2-D, got {:?} and {:?}",
            out.shape(),
            x.shape()
        )));
    };
    let (r, d, b) = (*r, *d, *b);
    let dx = *dx;
    if dx < d || dx % 4 != 0 || b == 0 || r % b != 0 || d % 4 != 0 || nll.len() != r || grad.shape() != out.shape() {
        return Err(VaeError::Shape(format!(
            "{label}: output {:?} and target {:?} need widths divisible by 4 (the target's at least the \
             output's) and rows a multiple of the target's; nll needs {r} elements (got {:?}) and the \
             gradient the output's shape (got {:?})",
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
        Likelihood::GaussianLearned { .. } => ("gaussian_learned", 0.0),
    };
    let mut layout = vec![
        uniform(0),
        storage(1, true),
        storage(2, true),
        storage(3, false),
        storage(4, false),
    ];
    let mut constants = Vec::new();
    if let Likelihood::GaussianLearned { per_pixel } = likelihood {
        let Some(l) = learned else {
            return Err(VaeError::Config(format!(
                "{label}: a learned variance needs its log c parameter and gradient scratch"
            )));
        };
        let want = if per_pixel { d } else { 1 };
        if l.log_c.len() != want || l.dlc.len() != r * d {
            return Err(VaeError::Shape(format!(
                "{label}: log c needs {want} values (got {}) and its scratch {} (got {})",
                l.log_c.len(),
                r * d,
                l.dlc.len()
            )));
        }
        layout.extend([storage(5, true), storage(6, false)]);
        constants.push(("PER_PIXEL", if per_pixel { 1.0 } else { 0.0 }));
    }
    let pipeline = gpu.kernels.pipeline(Shader::Loss, entry, &constants, &layout)?;
    let params = LossParams {
        rows: r as u32,
        batch: b as u32,
        d4: (d / 4) as u32,
        scale,
        log_c,
        x_stride4: (dx / 4) as u32,
        n4: 0,
        _pad: 0,
    };
    let ubuf = gpu.uniform(label, &params)?;
    let mut res = vec![
        ubuf.raw().as_entire_binding(),
        out.binding(),
        x.binding(),
        nll.binding(),
        grad.binding(),
    ];
    if let (Likelihood::GaussianLearned { .. }, Some(l)) = (likelihood, learned) {
        res.extend([l.log_c.binding(), l.dlc.binding()]);
    }
    // One invocation per row, ROWS_WG (16) rows per workgroup.
    let groups = r.div_ceil(16);
    let grid = if groups <= 65535 {
        [groups as u32, 1, 1]
    } else {
        [65535, groups.div_ceil(65535) as u32, 1]
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

/// Plans the gradient of a learned log-variance from the loss's per-element contributions
/// `dlc` [R, D]: column sums into `grad` `[D]` (per pixel) or the total into `grad` `[1]` (shared;
/// written as a vec4 whose other lanes are zero, so `grad` must be a 4-aligned arena slot).
pub fn log_c_grad(gpu: &Gpu, label: &str, per_pixel: bool, dlc: &Tensor, grad: &Tensor) -> Result<Dispatch> {
    if per_pixel {
        return crate::ops::colsum(gpu, label, dlc, grad, false);
    }
    if grad.len() != 1 || !dlc.len().is_multiple_of(4) {
        return Err(VaeError::Shape(format!(
            "{label}: a shared log c has one gradient (got {:?}) and its scratch a multiple of 4 values (got {})",
            grad.shape(),
            dlc.len()
        )));
    }
    let layout = [uniform(0), storage(6, false), storage(7, false)];
    let pipeline = gpu.kernels.pipeline(Shader::Loss, "log_c_sum", &[], &layout)?;
    let params = LossParams {
        rows: 0,
        batch: 0,
        d4: 0,
        scale: 0.0,
        log_c: 0.0,
        x_stride4: 0,
        n4: (dlc.len() / 4) as u32,
        _pad: 0,
    };
    let ubuf = gpu.uniform(label, &params)?;
    // The arena view is one float long; bind the vec4 that holds it (the rest is padding).
    let grad4 = Tensor::view(grad.buffer().clone(), grad.offset(), &[4]);
    let res = [
        (0, ubuf.raw().as_entire_binding()),
        (6, dlc.binding()),
        (7, grad4.binding()),
    ];
    gpu.dispatch_bound(
        label,
        pipeline,
        &res,
        Some(ubuf.clone()),
        [1, 1, 1],
        0.0,
        4.0 * dlc.len() as f64,
    )
}
