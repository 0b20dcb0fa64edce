//! `shaders/iwae.wgsl`: the importance-weighted bound's log-weights, normalized weights and the
//! per-draw weighting of a gradient. Rows are sample-major (row s·B + b), K draws of B examples.

use crate::error::{Result, VaeError};
use crate::gpu::kernels::layout::{storage, uniform};
use crate::gpu::{grid_1d, Dispatch, Gpu, Shader, Tensor};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct IwParams {
    batch: u32,
    samples: u32,
    width: u32,
    _pad: u32,
}

fn params(gpu: &Gpu, label: &str, b: usize, k: usize, width: usize) -> Result<std::sync::Arc<crate::gpu::GpuBuffer>> {
    gpu.uniform(
        label,
        &IwParams {
            batch: b as u32,
            samples: k as u32,
            width: width as u32,
            _pad: 0,
        },
    )
}

fn need(label: &str, what: &str, t: &Tensor, len: usize) -> Result<()> {
    if t.len() != len {
        return Err(VaeError::Shape(format!(
            "{label}: {what} must have {len} elements, got {:?}",
            t.shape()
        )));
    }
    Ok(())
}

/// Plans the log-weights `lw` [K·B] of `k` draws of `b` examples: −`nll` plus the row sums of
/// one layer's log-ratio terms `ratio` [K·B·W] (log p(z) − log q(z|·) per element); with
/// `accumulate`, adds the row sums to `lw` instead (a further stochastic layer).
#[allow(clippy::too_many_arguments)]
pub fn iw_log_weights(
    gpu: &Gpu,
    label: &str,
    b: usize,
    k: usize,
    nll: &Tensor,
    ratio: &Tensor,
    lw: &Tensor,
    accumulate: bool,
) -> Result<Dispatch> {
    let r = b * k;
    need(label, "the NLL terms", nll, r)?;
    need(label, "the log-weights", lw, r)?;
    if r == 0 || !ratio.len().is_multiple_of(r) {
        return Err(VaeError::Shape(format!(
            "{label}: the log-ratio terms {:?} must be K·B = {r} rows of equal width",
            ratio.shape()
        )));
    }
    let width = ratio.len() / r;
    let layout = [uniform(0), storage(1, false), storage(2, true), storage(3, false)];
    let constants = [("ACCUMULATE", if accumulate { 1.0 } else { 0.0 })];
    let pipeline = gpu
        .kernels
        .pipeline(Shader::Iwae, "iw_log_weights", &constants, &layout)?;
    let ubuf = params(gpu, label, b, k, width)?;
    let res = [
        ubuf.raw().as_entire_binding(),
        nll.binding(),
        ratio.binding(),
        lw.binding(),
    ];
    gpu.dispatch(
        label,
        pipeline,
        &res,
        Some(ubuf.clone()),
        grid_1d(r, 64),
        (r * width) as f64,
        4.0 * (r * width + 3 * r) as f64,
    )
}

/// Plans the normalized weights `weights` [K·B] (each example's softmax over its K
/// log-weights `lw`) and each example's gap (`gap`, B values) between −log (1/K) Σ_k w_k and its mean NLL
/// over the draws (`nll` [K·B]).
#[allow(clippy::too_many_arguments)]
pub fn iw_normalize(
    gpu: &Gpu,
    label: &str,
    b: usize,
    k: usize,
    nll: &Tensor,
    lw: &Tensor,
    weights: &Tensor,
    gap: &Tensor,
) -> Result<Dispatch> {
    let r = b * k;
    need(label, "the NLL terms", nll, r)?;
    need(label, "the log-weights", lw, r)?;
    need(label, "the weights", weights, r)?;
    need(label, "the gap terms", gap, b)?;
    let layout = [
        uniform(0),
        storage(1, false),
        storage(3, false),
        storage(4, false),
        storage(5, false),
    ];
    let pipeline = gpu.kernels.pipeline(Shader::Iwae, "iw_normalize", &[], &layout)?;
    let ubuf = params(gpu, label, b, k, 0)?;
    let res = [
        (0, ubuf.raw().as_entire_binding()),
        (1, nll.binding()),
        (3, lw.binding()),
        (4, weights.binding()),
        (5, gap.binding()),
    ];
    gpu.dispatch_bound(
        label,
        pipeline,
        &res,
        Some(ubuf.clone()),
        grid_1d(b, 64),
        (3 * r) as f64,
        4.0 * (4 * r + b) as f64,
    )
}

/// Plans `x[r, :] *= weights[r]` in place for the K·B rows of `x` (each draw's gradient
/// weighted by its normalized weight).
pub fn iw_scale_rows(gpu: &Gpu, label: &str, b: usize, k: usize, weights: &Tensor, x: &Tensor) -> Result<Dispatch> {
    let r = b * k;
    need(label, "the weights", weights, r)?;
    if r == 0 || !x.len().is_multiple_of(r) {
        return Err(VaeError::Shape(format!(
            "{label}: the rows {:?} must be K·B = {r} rows of equal width",
            x.shape()
        )));
    }
    let width = x.len() / r;
    let layout = [uniform(0), storage(4, false), storage(6, false)];
    let pipeline = gpu.kernels.pipeline(Shader::Iwae, "iw_scale_rows", &[], &layout)?;
    let ubuf = params(gpu, label, b, k, width)?;
    let res = [
        (0, ubuf.raw().as_entire_binding()),
        (4, weights.binding()),
        (6, x.binding()),
    ];
    gpu.dispatch_bound(
        label,
        pipeline,
        &res,
        Some(ubuf.clone()),
        grid_1d(x.len(), 64),
        x.len() as f64,
        4.0 * (2 * x.len() + r) as f64,
    )
}
