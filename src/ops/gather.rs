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
    x_stride4: u32,
    _pad: [u32; 3],
}

/// Plans x[b, ..D] = data[perm[batch_start + b]] / 255 for the B rows of `x` [B, D'] (D' ≥ D;
/// `batch_start` from the step uniform), or Bernoulli draws with those probabilities when
/// `binarize`. `data` holds `count` examples of D = `dim` bytes packed four per u32 word;
/// positions past the end of `perm` give zero rows. Columns past D are left to [`condition`].
#[allow(clippy::too_many_arguments)]
pub fn gather(
    gpu: &Gpu,
    label: &str,
    step: &StepBuffer,
    data: &Tensor,
    count: usize,
    dim: usize,
    perm: &Tensor,
    x: &Tensor,
    binarize: bool,
) -> Result<Dispatch> {
    gather_entry(gpu, label, step, data, false, count, dim, perm, x, binarize)
}

/// [`gather`] from a dataset of f32 grey levels in [0, 1] (`data` holds `count` examples of
/// `dim` values, dim a multiple of 4), copied as they are or binarized with the byte path's
/// keys. byte·(1/255) in `data` gives [`gather`]'s batch bit for bit.
#[allow(clippy::too_many_arguments)]
pub fn gather_f32(
    gpu: &Gpu,
    label: &str,
    step: &StepBuffer,
    data: &Tensor,
    count: usize,
    dim: usize,
    perm: &Tensor,
    x: &Tensor,
    binarize: bool,
) -> Result<Dispatch> {
    gather_entry(gpu, label, step, data, true, count, dim, perm, x, binarize)
}

#[allow(clippy::too_many_arguments)]
fn gather_entry(
    gpu: &Gpu,
    label: &str,
    step: &StepBuffer,
    data: &Tensor,
    f32_data: bool,
    count: usize,
    dim: usize,
    perm: &Tensor,
    x: &Tensor,
    binarize: bool,
) -> Result<Dispatch> {
    let d = dim;
    // Words per example: four bytes or one f32 per word.
    let per_word = if f32_data { 1 } else { 4 };
    let [rows, width] = *x.shape() else {
        return Err(VaeError::Shape(format!(
            "{label}: batch must be [B, D], got {:?}",
            x.shape()
        )));
    };
    if !d.is_multiple_of(4) || width % 4 != 0 || width < d || count == 0 || data.len() < count * d / per_word {
        return Err(VaeError::Shape(format!(
            "{label}: example size {d} and batch row width {width} must be multiples of 4 (width ≥ size) \
             and the data must hold {count} examples ({} words), got {} words",
            count * d / per_word,
            data.len()
        )));
    }
    let data_binding = if f32_data { 10 } else { 2 };
    let layout = [
        uniform(0),
        uniform(1),
        storage(data_binding, true),
        storage(3, true),
        storage(4, false),
    ];
    let constants = [("BINARIZE", if binarize { 1.0 } else { 0.0 })];
    let entry = if f32_data { "gather_f32" } else { "gather" };
    let pipeline = gpu.kernels.pipeline(Shader::Gather, entry, &constants, &layout)?;
    let raw = GatherParams {
        rows: rows as u32,
        d4: (d / 4) as u32,
        count: count as u32,
        perm_len: perm.len() as u32,
        x_stride4: (width / 4) as u32,
        _pad: [0; 3],
    };
    let ubuf = gpu.uniform(label, &raw)?;
    let res = [
        (0, ubuf.raw().as_entire_binding()),
        (1, step.binding()),
        (data_binding, data.binding()),
        (3, perm.binding()),
        (4, x.binding()),
    ];
    gpu.dispatch_bound(
        label,
        pipeline,
        &res,
        Some(ubuf.clone()),
        grid_1d(rows * d / 4, 64),
        0.0,
        // Read one byte or one f32 per pixel, write one f32.
        (rows * d * (4 + if f32_data { 4 } else { 1 })) as f64,
    )
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct CondParams {
    rows: u32,
    samples: u32,
    x_dim: u32,
    x_width: u32,
    z_dim: u32,
    z_width: u32,
    count: u32,
    perm_len: u32,
    classes: u32,
    _pad: [u32; 3],
}

/// Plans the class conditioning of a batch: columns D.. of `x` [B, D'] and Z.. of `z` [L·B, Z']
/// become the one-hot label of the row's example (`labels` one u32 per dataset example, in
/// the order `perm` indexes) over `classes` columns, zero past them (so a label at or beyond
/// `classes` gives all zeros, never a padding column). Pixels and latent codes are untouched.
#[allow(clippy::too_many_arguments)]
pub fn condition(
    gpu: &Gpu,
    label: &str,
    step: &StepBuffer,
    labels: &Tensor,
    classes: usize,
    perm: &Tensor,
    x: &Tensor,
    x_dim: usize,
    z: &Tensor,
    z_dim: usize,
) -> Result<Dispatch> {
    let ([b, xw], [r, zw]) = (x.shape(), z.shape()) else {
        return Err(VaeError::Shape(format!(
            "{label}: x and z must be 2-D, got {:?} and {:?}",
            x.shape(),
            z.shape()
        )));
    };
    let (b, xw, r, zw) = (*b, *xw, *r, *zw);
    if b == 0 || r % b != 0 || xw < x_dim || zw < z_dim || labels.is_empty() {
        return Err(VaeError::Shape(format!(
            "{label}: x {:?} must be wider than {x_dim}, z {:?} wider than {z_dim} with a multiple of \
             x's rows, and labels non-empty",
            x.shape(),
            z.shape()
        )));
    }
    let layout = [
        uniform(0),
        uniform(1),
        storage(3, true),
        storage(5, true),
        storage(6, false),
        storage(7, false),
    ];
    let pipeline = gpu.kernels.pipeline(Shader::Gather, "condition", &[], &layout)?;
    let raw = CondParams {
        rows: b as u32,
        samples: (r / b) as u32,
        x_dim: x_dim as u32,
        x_width: xw as u32,
        z_dim: z_dim as u32,
        z_width: zw as u32,
        count: labels.len() as u32,
        perm_len: perm.len() as u32,
        classes: classes as u32,
        _pad: [0; 3],
    };
    let ubuf = gpu.uniform(label, &raw)?;
    let res = [
        (0, ubuf.raw().as_entire_binding()),
        (1, step.binding()),
        (3, perm.binding()),
        (5, labels.binding()),
        (6, x.binding()),
        (7, z.binding()),
    ];
    let items = b * (xw - x_dim) + r * (zw - z_dim);
    gpu.dispatch_bound(
        label,
        pipeline,
        &res,
        Some(ubuf.clone()),
        grid_1d(items.max(1), 64),
        0.0,
        4.0 * items as f64,
    )
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct CorruptParams {
    rows: u32,
    d4: u32,
    stride4: u32,
    drop: f32,
}

/// Plans masking noise for a denoising model: `noisy` [B, D'] = `clean` with each of the first
/// D = `dim` columns zeroed with probability `drop` (keyed by the step's seed and step, stream
/// [`crate::rng::STREAM_CORRUPT`], element b·D + d); columns past D are copied.
pub fn corrupt(
    gpu: &Gpu,
    label: &str,
    step: &StepBuffer,
    clean: &Tensor,
    dim: usize,
    drop: f32,
    noisy: &Tensor,
) -> Result<Dispatch> {
    let [rows, width] = *clean.shape() else {
        return Err(VaeError::Shape(format!(
            "{label}: the batch must be [B, D'], got {:?}",
            clean.shape()
        )));
    };
    if noisy.shape() != clean.shape() || !dim.is_multiple_of(4) || width % 4 != 0 || dim > width {
        return Err(VaeError::Shape(format!(
            "{label}: clean {:?} and noisy {:?} must match, with {dim} pixels a multiple of 4 within the width",
            clean.shape(),
            noisy.shape()
        )));
    }
    if !(0.0..1.0).contains(&drop) {
        return Err(VaeError::Config(format!(
            "{label}: the masking probability must be in [0, 1), got {drop}"
        )));
    }
    let layout = [uniform(0), uniform(1), storage(8, true), storage(9, false)];
    let pipeline = gpu.kernels.pipeline(Shader::Gather, "corrupt", &[], &layout)?;
    let raw = CorruptParams {
        rows: rows as u32,
        d4: (dim / 4) as u32,
        stride4: (width / 4) as u32,
        drop,
    };
    let ubuf = gpu.uniform(label, &raw)?;
    let res = [
        (0, ubuf.raw().as_entire_binding()),
        (1, step.binding()),
        (8, clean.binding()),
        (9, noisy.binding()),
    ];
    let items = rows * width / 4;
    gpu.dispatch_bound(
        label,
        pipeline,
        &res,
        Some(ubuf.clone()),
        grid_1d(items.max(1), 64),
        0.0,
        8.0 * (rows * width) as f64,
    )
}
