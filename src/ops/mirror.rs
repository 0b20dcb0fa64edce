//! `shaders/mirror.wgsl`: a matrix copied from a buffer into an rgba32float storage texture, so
//! the subgroup matmul can read it as B through texel fetches (vectorised gathers on lavapipe,
//! where every buffer load is a per-lane loop).

use std::sync::Arc;

use crate::error::{Result, VaeError};
use crate::gpu::kernels::layout::{storage, storage_texture, uniform};
use crate::gpu::{Dispatch, Gpu, GpuTexture, Shader, Tensor};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct MirrorParams {
    cols4: u32,
    rows: u32,
    _pad: [u32; 2],
}

/// A texture shaped to mirror the row-major matrix `m` [rows, cols]: cols/4 × rows texels.
pub fn mirror_texture(gpu: &Gpu, label: &str, m: &Tensor) -> Result<Arc<GpuTexture>> {
    let [rows, cols] = *m.shape() else {
        return Err(VaeError::Shape(format!(
            "{label}: a mirror needs a matrix, got {:?}",
            m.shape()
        )));
    };
    if cols % 4 != 0 {
        return Err(VaeError::Shape(format!("{label}: {cols} columns are not whole texels")));
    }
    gpu.memory.texture(label, (cols / 4) as u32, rows as u32)
}

/// Plans the copy of `m` [rows, cols] (starting on a 16-byte boundary) into `tex`.
pub fn mirror(gpu: &Gpu, label: &str, m: &Tensor, tex: &GpuTexture) -> Result<Dispatch> {
    let [rows, cols] = *m.shape() else {
        return Err(VaeError::Shape(format!(
            "{label}: a mirror needs a matrix, got {:?}",
            m.shape()
        )));
    };
    if cols % 4 != 0 || m.offset() % 16 != 0 || tex.size() != ((cols / 4) as u32, rows as u32) {
        return Err(VaeError::Shape(format!(
            "{label}: matrix {:?} at byte {} needs whole, aligned texels and a {}×{rows} texture, got {:?}",
            m.shape(),
            m.offset(),
            cols / 4,
            tex.size()
        )));
    }
    let layout = [uniform(0), storage(1, true), storage_texture(2, false)];
    let pipeline = gpu.kernels.pipeline(Shader::Mirror, "mirror", &[], &layout)?;
    let params = MirrorParams {
        cols4: (cols / 4) as u32,
        rows: rows as u32,
        _pad: [0; 2],
    };
    let ubuf = gpu.uniform(label, &params)?;
    let res = [
        ubuf.raw().as_entire_binding(),
        m.binding(),
        wgpu::BindingResource::TextureView(tex.view()),
    ];
    let n = rows * cols;
    let grid = [(cols / 4).div_ceil(64) as u32, rows as u32, 1];
    gpu.dispatch(label, pipeline, &res, Some(ubuf.clone()), grid, 0.0, 8.0 * n as f64)
}
