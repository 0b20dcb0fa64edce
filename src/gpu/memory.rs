//! Device memory: exact-size allocations for long-lived tensors, a pool for transient ones,
//! and counters (live, peak, allocation count) that tests and benchmarks read.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::error::{Result, VaeError};

/// Counters of device memory owned by vae-wgpu.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryStats {
    /// Bytes currently allocated on the device, including pooled buffers not in use.
    pub live_bytes: u64,
    /// Highest `live_bytes` seen.
    pub peak_bytes: u64,
    /// Number of device buffers ever created (a repeated step must not raise it).
    pub allocations: u64,
    /// Bytes held by the pool, free for reuse.
    pub pooled_free_bytes: u64,
}

type PoolKey = (u64, u32);

#[derive(Default)]
struct Ledger {
    stats: MemoryStats,
    free: HashMap<PoolKey, Vec<wgpu::Buffer>>,
}

/// Allocator front for one device. Cheap to clone; clones share the ledger.
#[derive(Clone)]
pub struct DeviceMemory {
    device: wgpu::Device,
    ledger: Arc<Mutex<Ledger>>,
    max_binding: u64,
    max_buffer: u64,
}

/// One device buffer with its accounting; pooled buffers go back to the pool when dropped. A
/// host's own buffer ([`GpuBuffer::external`]) has no accounting: the crate never frees it.
pub struct GpuBuffer {
    raw: wgpu::Buffer,
    bytes: u64,
    usage: wgpu::BufferUsages,
    pooled: bool,
    ledger: Option<Arc<Mutex<Ledger>>>,
}

impl GpuBuffer {
    /// The wgpu buffer, for binding or for a host application to use directly.
    pub fn raw(&self) -> &wgpu::Buffer {
        &self.raw
    }
    /// Size in bytes.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
    /// A host's buffer, outside the ledger: dropping it drops this handle's reference only
    /// (wgpu frees the buffer with its last one, which the host holds).
    pub fn external(raw: wgpu::Buffer) -> Self {
        GpuBuffer {
            bytes: raw.size(),
            usage: raw.usage(),
            raw,
            pooled: false,
            ledger: None,
        }
    }
    /// Whether the buffer is a host's ([`GpuBuffer::external`]).
    pub fn is_external(&self) -> bool {
        self.ledger.is_none()
    }
    /// The usages it was created with.
    pub fn usage(&self) -> wgpu::BufferUsages {
        self.usage
    }
}

impl Drop for GpuBuffer {
    fn drop(&mut self) {
        let Some(Ok(mut l)) = self.ledger.as_ref().map(|l| l.lock()) else {
            return;
        };
        if self.pooled {
            l.stats.pooled_free_bytes += self.bytes;
            l.free
                .entry((self.bytes, self.usage.bits()))
                .or_default()
                .push(self.raw.clone());
        } else {
            // No destroy(): a bind group may still refer to the buffer; wgpu frees it with the
            // last reference.
            l.stats.live_bytes -= self.bytes;
        }
    }
}

/// A 2-D rgba32float storage texture with its accounting (each texel is one vec4).
pub struct GpuTexture {
    raw: wgpu::Texture,
    view: wgpu::TextureView,
    bytes: u64,
    ledger: Arc<Mutex<Ledger>>,
}

impl GpuTexture {
    /// The texture view, for binding.
    pub fn view(&self) -> &wgpu::TextureView {
        &self.view
    }
    /// The texture itself, for copies.
    pub fn raw(&self) -> &wgpu::Texture {
        &self.raw
    }
    /// Width and height in texels.
    pub fn size(&self) -> (u32, u32) {
        (self.raw.width(), self.raw.height())
    }
    /// Size in bytes.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl Drop for GpuTexture {
    fn drop(&mut self) {
        if let Ok(mut l) = self.ledger.lock() {
            l.stats.live_bytes -= self.bytes;
        }
    }
}

/// Storage buffers are sized in whole vec4s, so every kernel may read them as `array<vec4<f32>>`.
pub const SIZE_ALIGN: u64 = 16;

impl DeviceMemory {
    /// A ledger for `device`, checking requests against its limits.
    pub fn new(device: &wgpu::Device) -> Self {
        let limits = device.limits();
        DeviceMemory {
            device: device.clone(),
            ledger: Arc::new(Mutex::new(Ledger::default())),
            max_binding: limits.max_storage_buffer_binding_size,
            max_buffer: limits.max_buffer_size,
        }
    }

    /// Current counters.
    pub fn stats(&self) -> MemoryStats {
        self.ledger.lock().map(|l| l.stats).unwrap_or_default()
    }

    pub(crate) fn check(&self, label: &str, bytes: u64, usage: wgpu::BufferUsages) -> Result<()> {
        if bytes > self.max_buffer {
            return Err(VaeError::BufferTooLarge {
                label: label.into(),
                bytes,
                limit: self.max_buffer,
                limit_name: "max_buffer_size",
            });
        }
        if usage.contains(wgpu::BufferUsages::STORAGE) && bytes > self.max_binding {
            return Err(VaeError::BufferTooLarge {
                label: label.into(),
                bytes,
                limit: self.max_binding,
                limit_name: "max_storage_buffer_binding_size",
            });
        }
        Ok(())
    }

    /// Creates a buffer inside error scopes of its own, so that running out of device memory
    /// (or a refused descriptor) is this call's typed error rather than a later, unattributed
    /// one — on a host's device too, whose error handlers the crate leaves alone.
    fn create(&self, label: &str, bytes: u64, usage: wgpu::BufferUsages) -> Result<wgpu::Buffer> {
        self.check(label, bytes, usage)?;
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let invalid = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let raw = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: bytes,
            usage,
            mapped_at_creation: false,
        });
        let invalid = pollster::block_on(invalid.pop());
        if let Some(e) = pollster::block_on(oom.pop()).or(invalid) {
            return Err(VaeError::Gpu(format!(
                "allocating {bytes} bytes for '{label}' failed: {e}; use a smaller batch size or model"
            )));
        }
        self.record_allocation(bytes)?;
        Ok(raw)
    }

    /// A long-lived buffer of exactly `bytes` (rounded up to 16), freed when dropped.
    pub fn alloc(&self, label: &str, bytes: u64, usage: wgpu::BufferUsages) -> Result<Arc<GpuBuffer>> {
        let bytes = round_up(bytes.max(SIZE_ALIGN), SIZE_ALIGN);
        let raw = self.create(label, bytes, usage)?;
        Ok(Arc::new(GpuBuffer {
            raw,
            bytes,
            usage,
            pooled: false,
            ledger: Some(self.ledger.clone()),
        }))
    }

    /// A transient buffer: reuses a free pooled buffer of the same size class and usage, or
    /// creates one. Size classes are powers of two, so varying requests settle quickly.
    pub fn alloc_pooled(&self, label: &str, bytes: u64, usage: wgpu::BufferUsages) -> Result<Arc<GpuBuffer>> {
        let bytes = bytes.max(SIZE_ALIGN).next_power_of_two();
        {
            let mut l = self
                .ledger
                .lock()
                .map_err(|_| VaeError::Gpu("memory ledger poisoned".into()))?;
            if let Some(raw) = l.free.get_mut(&(bytes, usage.bits())).and_then(|v| v.pop()) {
                l.stats.pooled_free_bytes -= bytes;
                return Ok(Arc::new(GpuBuffer {
                    raw,
                    bytes,
                    usage,
                    pooled: true,
                    ledger: Some(self.ledger.clone()),
                }));
            }
        }
        let raw = self.create(label, bytes, usage)?;
        Ok(Arc::new(GpuBuffer {
            raw,
            bytes,
            usage,
            pooled: true,
            ledger: Some(self.ledger.clone()),
        }))
    }

    /// Counts a new device allocation of `bytes` in the ledger.
    fn record_allocation(&self, bytes: u64) -> Result<()> {
        let mut l = self
            .ledger
            .lock()
            .map_err(|_| VaeError::Gpu("memory ledger poisoned".into()))?;
        l.stats.allocations += 1;
        l.stats.live_bytes += bytes;
        l.stats.peak_bytes = l.stats.peak_bytes.max(l.stats.live_bytes);
        Ok(())
    }

    /// A `width`×`height` rgba32float texture bound as a storage texture (read or write).
    pub fn texture(&self, label: &str, width: u32, height: u32) -> Result<Arc<GpuTexture>> {
        let max = self.device.limits().max_texture_dimension_2d;
        if width == 0 || height == 0 || width > max || height > max {
            return Err(VaeError::Shape(format!(
                "{label}: a {width}×{height} texture exceeds the device's 2-D texture limit of {max}"
            )));
        }
        let raw = self.device.create_texture(&wgpu::TextureDescriptor {
            label: Some(label),
            size: wgpu::Extent3d {
                width,
                height,
                depth_or_array_layers: 1,
            },
            mip_level_count: 1,
            sample_count: 1,
            dimension: wgpu::TextureDimension::D2,
            format: wgpu::TextureFormat::Rgba32Float,
            usage: wgpu::TextureUsages::STORAGE_BINDING.union(wgpu::TextureUsages::COPY_DST),
            view_formats: &[],
        });
        let view = raw.create_view(&Default::default());
        let bytes = 16 * width as u64 * height as u64;
        self.record_allocation(bytes)?;
        Ok(Arc::new(GpuTexture {
            raw,
            view,
            bytes,
            ledger: self.ledger.clone(),
        }))
    }

    /// Releases pooled buffers that are not in use.
    pub fn trim_pool(&self) {
        if let Ok(mut l) = self.ledger.lock() {
            let freed: u64 = l.stats.pooled_free_bytes;
            l.free.clear();
            l.stats.live_bytes -= freed;
            l.stats.pooled_free_bytes = 0;
        }
    }
}

/// Rounds `v` up to a multiple of `a`.
pub fn round_up(v: u64, a: u64) -> u64 {
    v.div_ceil(a) * a
}
