//! Texture mirrors: a tensor copied into a packed rgba32float storage texture, so the subgroup
//! matmul can read it through texel fetches (vectorised gathers on lavapipe, where every buffer
//! load is a per-lane loop). The layout is the buffer's own: vec4 number `i` of the tensor is
//! texel (`i % TEX_W`, `i / TEX_W`), whatever the tensor's shape, so one texture serves both
//! transposes and the copy is a plain buffer-to-texture transfer.

use std::sync::Arc;

use crate::error::{Result, VaeError};
use crate::gpu::{Dispatch, Gpu, GpuTexture, Tensor};

/// Texels per row of a mirror; `TEX_W` in matmul.wgsl. 256 texels are 4 KiB,
/// a whole number of the 256-byte rows buffer-to-texture copies need.
pub const TEX_W: usize = 256;

/// Texture size (width, height) of the mirror of a tensor with `len` values.
fn mirror_size(len: usize) -> (u32, u32) {
    (TEX_W as u32, (len / 4).div_ceil(TEX_W).max(1) as u32)
}

/// Checks that `tex` can mirror `t`: whole texels, a 16-byte aligned start, room for every
/// texel (a prefix view of a mirrored tensor reads the first texels of its mirror).
pub(crate) fn check_mirror(label: &str, t: &Tensor, tex: &GpuTexture) -> Result<()> {
    let (w, h) = tex.size();
    if !t.len().is_multiple_of(4)
        || !t.offset().is_multiple_of(16)
        || w as usize != TEX_W
        || ((w * h) as usize) < t.len() / 4
    {
        return Err(VaeError::Shape(format!(
            "{label}: a tensor of {} values at byte {} needs a whole number of texels, a 16-byte \
             aligned start and a mirror of at least {:?} texels, got {:?}",
            t.len(),
            t.offset(),
            mirror_size(t.len()),
            tex.size()
        )));
    }
    Ok(())
}

/// A texture sized to mirror `t` (whose length must be a multiple of 4).
pub fn mirror_texture(gpu: &Gpu, label: &str, t: &Tensor) -> Result<Arc<GpuTexture>> {
    if !t.len().is_multiple_of(4) || t.is_empty() || !t.offset().is_multiple_of(16) {
        return Err(VaeError::Shape(format!(
            "{label}: a mirror needs a whole number of texels from a 16-byte boundary, got {} \
             values at byte {}",
            t.len(),
            t.offset()
        )));
    }
    let (w, h) = mirror_size(t.len());
    gpu.memory.texture(label, w, h)
}

/// `t` with a new mirror when `wanted` (see [`mirror_texture`]), else `t` unchanged. A mirror
/// is only a faster way to read `t`, so a tensor too long for the device's largest texture
/// simply gets none.
pub fn mirrored(gpu: &Gpu, label: &str, t: Tensor, wanted: bool) -> Result<Tensor> {
    let max_rows = gpu.ctx.device.limits().max_texture_dimension_2d;
    if !wanted || mirror_size(t.len()).1 > max_rows {
        return Ok(t);
    }
    let tex = mirror_texture(gpu, &format!("{label}.mirror"), &t)?;
    Ok(t.with_mirror(Some(tex)))
}

/// The copy of `t` into its mirror, for whoever just planned a write of `t`; nothing when `t`
/// has no mirror.
pub fn refresh_mirror(label: &str, t: &Tensor) -> Option<Dispatch> {
    t.mirror()
        .map(|tex| Dispatch::mirror_copy(format!("{label}.mirror"), t.clone(), tex.clone()))
}

/// Records the copy of `t` into its mirror `tex` as transfers (outside any compute pass): the
/// whole rows in one copy, the last partial row in another. Plans use [`refresh_mirror`].
pub fn copy_to_mirror(encoder: &mut wgpu::CommandEncoder, t: &Tensor, tex: &GpuTexture) {
    let texels = t.len() / 4;
    let full = texels / TEX_W;
    let rest = texels % TEX_W;
    let copy = |encoder: &mut wgpu::CommandEncoder, offset: u64, width: usize, row: usize, rows: usize| {
        encoder.copy_buffer_to_texture(
            wgpu::TexelCopyBufferInfo {
                buffer: t.raw(),
                layout: wgpu::TexelCopyBufferLayout {
                    offset,
                    bytes_per_row: Some(16 * TEX_W as u32),
                    rows_per_image: None,
                },
            },
            wgpu::TexelCopyTextureInfo {
                texture: tex.raw(),
                mip_level: 0,
                origin: wgpu::Origin3d {
                    x: 0,
                    y: row as u32,
                    z: 0,
                },
                aspect: wgpu::TextureAspect::All,
            },
            wgpu::Extent3d {
                width: width as u32,
                height: rows as u32,
                depth_or_array_layers: 1,
            },
        );
    };
    if full > 0 {
        copy(encoder, t.offset(), TEX_W.min(texels), 0, full);
    }
    if rest > 0 {
        copy(encoder, t.offset() + (16 * full * TEX_W) as u64, rest, full, 1);
    }
}
