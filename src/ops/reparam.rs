//! `shaders/reparam_kl.wgsl`: fused reparameterize + closed-form KL, forward and backward.

use crate::error::{Result, VaeError};
use crate::gpu::kernels::layout::{storage, uniform};
use crate::gpu::{grid_1d, Dispatch, Gpu, Shader, Tensor};
use crate::ops::step::StepBuffer;

/// Log-variance is clamped to this range before exp: σ² ∈ [e^-30, e^20] ≈ [9e-14, 5e8], so
/// neither σ nor σ² can overflow. Its gradient is zero where the clamp is active.
pub const LOGVAR_MIN: f32 = -30.0;
/// Upper end of the log-variance clamp; see [`LOGVAR_MIN`].
pub const LOGVAR_MAX: f32 = 20.0;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct ReparamParams {
    batch: u32,
    latent: u32,
    samples: u32,
    lv_min: f32,
    lv_max: f32,
    z_stride: u32,
    _pad: [u32; 2],
}

fn layout() -> [wgpu::BindGroupLayoutEntry; 7] {
    [
        uniform(0),
        uniform(1),
        storage(2, true),
        storage(3, false),
        storage(4, false),
        storage(5, false),
        storage(6, false),
    ]
}

fn check(label: &str, enc: &Tensor, z: &Tensor, samples: usize) -> Result<(usize, usize)> {
    let [b, z2] = *enc.shape() else {
        return Err(VaeError::Shape(format!(
            "{label}: encoder output must be [B, 2Z], got {:?}",
            enc.shape()
        )));
    };
    let ok = matches!(z.shape(), [r, w] if *r == samples * b && *w >= z2 / 2);
    if z2 % 2 != 0 || samples == 0 || !ok {
        return Err(VaeError::Shape(format!(
            "{label}: encoder output {:?} = [B, 2Z] needs z of [L·B, Z' ≥ Z] = [{}, {}+] with L = {samples} >= 1; got {:?}",
            enc.shape(),
            samples * b,
            z2 / 2,
            z.shape()
        )));
    }
    Ok((b, z2 / 2))
}

fn z_stride(z: &Tensor) -> usize {
    z.shape().get(1).copied().unwrap_or(0)
}

fn params(
    gpu: &Gpu,
    label: &str,
    b: usize,
    zd: usize,
    samples: usize,
    z_stride: usize,
) -> Result<std::sync::Arc<crate::gpu::GpuBuffer>> {
    gpu.uniform(
        label,
        &ReparamParams {
            batch: b as u32,
            latent: zd as u32,
            samples: samples as u32,
            lv_min: LOGVAR_MIN,
            lv_max: LOGVAR_MAX,
            z_stride: z_stride as u32,
            _pad: [0; 2],
        },
    )
}

/// Plans z = μ + σ·ε for L samples per example (rows sample-major, the first Z columns of each
/// row of `z` [L·B, Z']), the KL's terms kl [B·Z] (their sum is Σ_b KL_b) and, when given, the
/// terms of log p(z) − log q(z|x) in log_ratio [L·B·Z] (row sums over Z give the log-ratio).
#[allow(clippy::too_many_arguments)]
pub fn reparam_kl_forward(
    gpu: &Gpu,
    label: &str,
    step: &StepBuffer,
    enc: &Tensor,
    samples: usize,
    z: &Tensor,
    kl: &Tensor,
    log_ratio: Option<&Tensor>,
) -> Result<Dispatch> {
    let (b, zd) = check(label, enc, z, samples)?;
    if kl.len() != b * zd {
        return Err(VaeError::Shape(format!(
            "{label}: kl must have B·Z = {} elements, got {:?}",
            b * zd,
            kl.shape()
        )));
    }
    if let Some(lr) = log_ratio {
        if lr.len() != samples * b * zd {
            return Err(VaeError::Shape(format!(
                "{label}: log_ratio must have L·B·Z = {} elements, got {:?}",
                samples * b * zd,
                lr.shape()
            )));
        }
    }
    let constants = [("LOG_RATIO", if log_ratio.is_some() { 1.0 } else { 0.0 })];
    let pipeline = gpu
        .kernels
        .pipeline(Shader::ReparamKl, "reparam_kl_forward", &constants, &layout())?;
    let ubuf = params(gpu, label, b, zd, samples, z_stride(z))?;
    let dw = gpu.dummy_write();
    let res = [
        ubuf.raw().as_entire_binding(),
        step.binding(),
        enc.binding(),
        z.binding(),
        kl.binding(),
        dw.binding(),
        log_ratio.unwrap_or(dw).binding(),
    ];
    let bytes = 4.0 * (3 * b * zd + samples * b * zd) as f64;
    gpu.dispatch(
        label,
        pipeline,
        &res,
        Some(ubuf.clone()),
        grid_1d(b * zd, 64),
        0.0,
        bytes,
    )
}

/// Plans denc = [dμ | d log σ²] from dz (shape of z), with the KL weighted by the step's β.
pub fn reparam_kl_backward(
    gpu: &Gpu,
    label: &str,
    step: &StepBuffer,
    enc: &Tensor,
    samples: usize,
    dz: &Tensor,
    denc: &Tensor,
) -> Result<Dispatch> {
    let (b, zd) = check(label, enc, dz, samples)?;
    if denc.shape() != enc.shape() {
        return Err(VaeError::Shape(format!(
            "{label}: gradient must be {:?}, got {:?}",
            enc.shape(),
            denc.shape()
        )));
    }
    let pipeline = gpu
        .kernels
        .pipeline(Shader::ReparamKl, "reparam_kl_backward", &[], &layout())?;
    let ubuf = params(gpu, label, b, zd, samples, z_stride(dz))?;
    let res = [
        ubuf.raw().as_entire_binding(),
        step.binding(),
        enc.binding(),
        dz.binding(),
        gpu.dummy_write().binding(),
        denc.binding(),
        gpu.dummy_write().binding(),
    ];
    gpu.dispatch(
        label,
        pipeline,
        &res,
        Some(ubuf.clone()),
        grid_1d(b * zd, 64),
        0.0,
        4.0 * (4 * b * zd + samples * b * zd) as f64,
    )
}
