//! Tensor handles: a shape and a byte range of a device buffer.

use std::sync::Arc;

use crate::gpu::memory::{GpuBuffer, GpuTexture};

/// An f32 (or u32-word) tensor living in a device buffer. Several tensors may view one buffer
/// (the parameter arena); views start at offsets aligned for storage binding.
///
/// A tensor may carry a texture mirror (`gpu/mirror.rs`): a packed rgba32float copy that the
/// subgroup matmul reads instead of the buffer. Whoever writes the tensor also plans the copy
/// into its mirror (`refresh_mirror`), so a mirror is current wherever it is read.
#[derive(Clone)]
pub struct Tensor {
    buf: Arc<GpuBuffer>,
    offset: u64,
    shape: Vec<usize>,
    mirror: Option<Arc<GpuTexture>>,
}

impl Tensor {
    /// A view of `shape` starting at byte `offset` of `buf`.
    pub fn view(buf: Arc<GpuBuffer>, offset: u64, shape: &[usize]) -> Self {
        Tensor {
            buf,
            offset,
            shape: shape.to_vec(),
            mirror: None,
        }
    }
    /// The same view with a texture mirror (or without one).
    pub fn with_mirror(mut self, mirror: Option<Arc<GpuTexture>>) -> Self {
        self.mirror = mirror;
        self
    }
    /// The texture mirror, if the tensor has one.
    pub fn mirror(&self) -> Option<&Arc<GpuTexture>> {
        self.mirror.as_ref()
    }
    /// The dimensions, outermost first.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }
    /// True when the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Byte offset into the buffer.
    pub fn offset(&self) -> u64 {
        self.offset
    }
    /// Size in bytes of the elements (4 bytes each).
    pub fn bytes(&self) -> u64 {
        self.len() as u64 * 4
    }
    /// The underlying buffer (shared with other views).
    pub fn buffer(&self) -> &Arc<GpuBuffer> {
        &self.buf
    }
    /// The wgpu buffer, for hosts that bind it in their own pipelines.
    pub fn raw(&self) -> &wgpu::Buffer {
        self.buf.raw()
    }
    /// Binding of the tensor's bytes, rounded up to whole vec4s (the allocation guarantees room).
    pub fn binding(&self) -> wgpu::BindingResource<'_> {
        let size = (self.bytes().max(4)).div_ceil(16) * 16;
        let size = size.min(self.buf.bytes() - self.offset);
        wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer: self.buf.raw(),
            offset: self.offset,
            size: std::num::NonZeroU64::new(size),
        })
    }
    /// Same tensor with another shape of the same element count, or fewer (a prefix view). The
    /// mirror stays: its layout is the buffer's, so its first texels mirror the prefix.
    pub fn reshape_prefix(&self, shape: &[usize]) -> Self {
        debug_assert!(shape.iter().product::<usize>() <= self.len());
        Tensor {
            buf: self.buf.clone(),
            offset: self.offset,
            shape: shape.to_vec(),
            mirror: self.mirror.clone(),
        }
    }
}
