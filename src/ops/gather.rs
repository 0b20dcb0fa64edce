//! `shaders/gather.wgsl`: a batch of byte images from a GPU-resident dataset into f32 rows.

use crate::error::{Result, VaeError};
use crate::gpu::kernels::layout::{storage, uniform};
use crate::gpu::{grid_1d, Dispatch, Gpu, Shader, Tensor};
use crate::ops::step::StepBuffer;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct GatherParams {
    rows: u32,
    d4: u32,
    count: u32,
    perm_len: u32,
}

/// Plans x[b] = data[perm[batch_start + b]] / 255 for the B rows of `x` [B, D] (`batch_start`
/// from the step uniform), or Bernoulli draws with those probabilities when `binarize`.
/// `data` holds `count` examples of D bytes packed four per u32 word; positions past the end
/// of `perm` give zero rows.
#[allow(clippy::too_many_arguments)]
pub fn gather(
    gpu: &Gpu,
    label: &str,
    step: &StepBuffer,
    data: &Tensor,
    count: usize,
    perm: &Tensor,
    x: &Tensor,
    binarize: bool,
) -> Result<Dispatch> {
    let [rows, d] = *x.shape() else {
        return Err(VaeError::Shape(format!(
            "{label}: batch must be [B, D], got {:?}",
            x.shape()
        )));
    };
    if d % 4 != 0 || count == 0 || data.len() < count * d / 4 {
        return Err(VaeError::Shape(format!(
            "{label}: example size {d} must be a multiple of 4 and the data must hold {count} examples \
             ({} words), got {} words",
            count * d / 4,
            data.len()
        )));
    }
    let layout = [
        uniform(0),
        uniform(1),
        storage(2, true),
        storage(3, true),
        storage(4, false),
    ];
    let constants = [("BINARIZE", if binarize { 1.0 } else { 0.0 })];
    let pipeline = gpu.kernels.pipeline(Shader::Gather, "gather", &constants, &layout)?;
    let raw = GatherParams {
        rows: rows as u32,
        d4: (d / 4) as u32,
        count: count as u32,
        perm_len: perm.len() as u32,
    };
    let ubuf = gpu.uniform(label, &raw)?;
    let res = [
        ubuf.raw().as_entire_binding(),
        step.binding(),
        data.binding(),
        perm.binding(),
        x.binding(),
    ];
    gpu.dispatch(
        label,
        pipeline,
        &res,
        Some(ubuf.clone()),
        grid_1d(rows * d / 4, 64),
        0.0,
        5.0 * (rows * d) as f64,
    )
}
