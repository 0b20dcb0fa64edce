//! `shaders/code.wgsl`: an autoencoder's deterministic code and its L1 penalty, forward and
//! backward (the counterpart of [`crate::ops::reparam_kl_forward`] for models without a prior).

use crate::error::{Result, VaeError};
use crate::gpu::kernels::layout::{storage, uniform};
use crate::gpu::{grid_1d, Dispatch, Gpu, Shader, Tensor};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct CodeParams {
    batch: u32,
    latent: u32,
    z_stride: u32,
    l1: f32,
}

fn layout() -> [wgpu::BindGroupLayoutEntry; 5] {
    [
        uniform(0),
        storage(1, true),
        storage(2, false),
        storage(3, false),
        storage(4, false),
    ]
}

/// The batch and code width of `enc` [B, Z], checked against `z` [B, Z' ≥ Z].
fn check(label: &str, enc: &Tensor, z: &Tensor) -> Result<(usize, usize, usize)> {
    match (enc.shape(), z.shape()) {
        ([b, zd], [r, zs]) if r == b && zs >= zd && *zd > 0 => Ok((*b, *zd, *zs)),
        _ => Err(VaeError::Shape(format!(
            "{label}: the code {:?} = [B, Z] needs z of [B, Z' ≥ Z], got {:?}",
            enc.shape(),
            z.shape()
        ))),
    }
}

/// Plans z[b, ..Z] = enc[b] and the penalty's terms pen [B·Z] = l1·|enc|.
pub fn code_forward(gpu: &Gpu, label: &str, enc: &Tensor, l1: f32, z: &Tensor, pen: &Tensor) -> Result<Dispatch> {
    let (b, zd, zs) = check(label, enc, z)?;
    if pen.len() != b * zd {
        return Err(VaeError::Shape(format!(
            "{label}: the penalty's terms need B·Z = {} elements, got {:?}",
            b * zd,
            pen.shape()
        )));
    }
    let pipeline = gpu.kernels.pipeline(Shader::Code, "code_forward", &[], &layout())?;
    let ubuf = gpu.uniform(label, &params(b, zd, zs, l1))?;
    let dw = gpu.dummy_write();
    let res = [
        ubuf.raw().as_entire_binding(),
        enc.binding(),
        z.binding(),
        pen.binding(),
        dw.binding(),
    ];
    let bytes = 4.0 * (3 * b * zd) as f64;
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

/// Plans denc [B, Z] = dz[b, ..Z] + l1·sign(enc) from the decoder's input gradient `dz`.
pub fn code_backward(gpu: &Gpu, label: &str, enc: &Tensor, l1: f32, dz: &Tensor, denc: &Tensor) -> Result<Dispatch> {
    let (b, zd, zs) = check(label, enc, dz)?;
    if denc.shape() != enc.shape() {
        return Err(VaeError::Shape(format!(
            "{label}: gradient must be {:?}, got {:?}",
            enc.shape(),
            denc.shape()
        )));
    }
    let pipeline = gpu.kernels.pipeline(Shader::Code, "code_backward", &[], &layout())?;
    let ubuf = gpu.uniform(label, &params(b, zd, zs, l1))?;
    let dw = gpu.dummy_write();
    let res = [
        ubuf.raw().as_entire_binding(),
        enc.binding(),
        dz.binding(),
        dw.binding(),
        denc.binding(),
    ];
    let bytes = 4.0 * (3 * b * zd) as f64;
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

fn params(b: usize, zd: usize, zs: usize, l1: f32) -> CodeParams {
    CodeParams {
        batch: b as u32,
        latent: zd as u32,
        z_stride: zs as u32,
        l1,
    }
}
