//! The GPU runtime: context, device memory, tensors, kernel registry, and dispatch recording.
//!
//! Work is planned once and recorded many times: an op validates shapes and builds a
//! [`Dispatch`] (pipeline + bind group + workgroup count); a step records its dispatches into
//! one compute pass. Recording is separate from submitting, so a host application can record
//! into its own command encoder.

pub(crate) mod affinity;
mod context;
pub(crate) mod kernels;
pub(crate) mod memory;
pub(crate) mod mirror;
mod options;
mod tensor;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub use context::{device_requirements, is_lavapipe, AdapterReport, GpuContext};
pub use kernels::{KernelRegistry, Shader};
pub use memory::{DeviceMemory, GpuBuffer, GpuTexture, MemoryStats};
pub use options::{GpuOptions, MatmulStrategy, TextureMirrors};
pub use tensor::Tensor;

use crate::error::{Result, VaeError};

/// Buffer usage of every tensor: bound as storage, written by uploads, copied for readback.
pub const TENSOR_USAGE: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE
    .union(wgpu::BufferUsages::COPY_DST)
    .union(wgpu::BufferUsages::COPY_SRC);

/// One planned unit of GPU work in a step's list: a kernel launch (pipeline, bound buffers and
/// grid, planned once) or the copy of a tensor into its texture mirror. A copy is a transfer,
/// so [`Gpu::record`] ends the compute pass before it and starts a new one after it.
pub struct Dispatch {
    /// Name shown in profiles, e.g. `fc1.forward`.
    pub label: String,
    work: Work,
    /// Workgroup counts (zero for a copy).
    pub workgroups: [u32; 3],
    /// Floating point operations of one launch (for GFLOP/s reports).
    pub flops: f64,
    /// Bytes read and written by one launch, counted once (for GB/s reports).
    pub bytes: f64,
}

enum Work {
    Kernel {
        pipeline: wgpu::ComputePipeline,
        bind_group: wgpu::BindGroup,
        // Keeps the dispatch's own uniform alive as long as the bind group refers to it.
        _uniform: Option<Arc<GpuBuffer>>,
    },
    MirrorCopy {
        src: Tensor,
        dst: Arc<GpuTexture>,
    },
}

impl Dispatch {
    /// The copy of `src` into its mirror `dst` (see [`crate::gpu::mirror::refresh_mirror`]).
    pub(crate) fn mirror_copy(label: String, src: Tensor, dst: Arc<GpuTexture>) -> Self {
        let bytes = 2.0 * src.bytes() as f64;
        Dispatch {
            label,
            work: Work::MirrorCopy { src, dst },
            workgroups: [0; 3],
            flops: 0.0,
            bytes,
        }
    }

    /// True for a copy into a texture mirror, which must be recorded outside compute passes
    /// with [`Dispatch::record_copy`].
    pub fn is_copy(&self) -> bool {
        matches!(self.work, Work::MirrorCopy { .. })
    }

    /// Records this kernel launch into a compute pass (a copy records nothing here).
    pub fn record(&self, pass: &mut wgpu::ComputePass<'_>) {
        if let Work::Kernel {
            pipeline, bind_group, ..
        } = &self.work
        {
            pass.set_pipeline(pipeline);
            pass.set_bind_group(0, bind_group, &[]);
            let [x, y, z] = self.workgroups;
            pass.dispatch_workgroups(x, y, z);
        }
    }

    /// Records this copy into `encoder`, outside any pass (a kernel records nothing here).
    pub fn record_copy(&self, encoder: &mut wgpu::CommandEncoder) {
        if let Work::MirrorCopy { src, dst } = &self.work {
            mirror::copy_to_mirror(encoder, src, dst);
        }
    }
}

/// Counters of host–device traffic, for the step-structure tests and benchmarks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrafficStats {
    /// Queue submits.
    pub submits: u64,
    /// Buffers mapped and read on the host.
    pub readbacks: u64,
    /// Kernel launches.
    pub dispatches: u64,
    /// Compute passes.
    pub passes: u64,
    /// Copies into texture mirrors.
    pub copies: u64,
}

/// The runtime: device, memory ledger, kernels. Everything else borrows it.
pub struct Gpu {
    /// Device, queue and adapter report.
    pub ctx: GpuContext,
    /// The ledger of every buffer and texture this runtime allocated.
    pub memory: DeviceMemory,
    /// Shader modules and pipelines, compiled once and cached by key.
    pub kernels: KernelRegistry,
    options: GpuOptions,
    host_budget: u64,
    // Bound where a kernel's optional input or output is unused.
    dummy_read: Tensor,
    dummy_write: Tensor,
    dummy_texture: Arc<GpuTexture>,
    submits: AtomicU64,
    readbacks: AtomicU64,
    dispatches: AtomicU64,
    passes: AtomicU64,
    copies: AtomicU64,
}

impl Gpu {
    /// Selects an adapter by `options` (see [`GpuContext::new`]) and creates the runtime on
    /// it. `GpuOptions::default()` takes the default adapter; [`GpuOptions::from_env`] follows
    /// wgpu's and this crate's environment variables.
    pub fn new(options: GpuOptions) -> Result<Self> {
        Self::with_context(GpuContext::new(&options)?, options)
    }

    /// Runs on a host application's device and queue (create the device with
    /// [`device_requirements`]); the adapter options in `options` are not used. The host's
    /// error handlers stay its own.
    ///
    /// ```
    /// use vae_wgpu::{wgpu, Gpu, GpuOptions};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let instance = wgpu::Instance::default();
    /// let adapter = pollster::block_on(instance.request_adapter(&Default::default()))?;
    /// let (features, limits) = vae_wgpu::gpu::device_requirements(&adapter);
    /// let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
    ///     required_features: features,
    ///     required_limits: limits,
    ///     ..Default::default()
    /// }))?;
    /// // The host keeps its handles; the crate gets clones.
    /// let gpu = Gpu::from_device(&adapter.get_info(), device.clone(), queue.clone(), GpuOptions::default())?;
    /// assert_eq!(gpu.report().name, adapter.get_info().name);
    /// # Ok(())
    /// # }
    /// ```
    pub fn from_device(
        info: &wgpu::AdapterInfo,
        device: wgpu::Device,
        queue: wgpu::Queue,
        options: GpuOptions,
    ) -> Result<Self> {
        Self::with_context(GpuContext::from_device(info, device, queue, &options), options)
    }

    fn with_context(ctx: GpuContext, options: GpuOptions) -> Result<Self> {
        let memory = DeviceMemory::new(&ctx.device);
        let kernels = KernelRegistry::new(&ctx.device, options.shader_dir.clone());
        let dummy_read = Tensor::view(memory.alloc("dummy.read", 16, TENSOR_USAGE)?, 0, &[4]);
        let dummy_write = Tensor::view(memory.alloc("dummy.write", 16, TENSOR_USAGE)?, 0, &[4]);
        let dummy_texture = memory.texture("dummy.texture", 1, 1)?;
        Ok(Gpu {
            ctx,
            memory,
            kernels,
            dummy_read,
            dummy_write,
            dummy_texture,
            host_budget: options.host_memory_budget.unwrap_or_else(options::default_host_budget),
            options,
            submits: AtomicU64::new(0),
            readbacks: AtomicU64::new(0),
            dispatches: AtomicU64::new(0),
            passes: AtomicU64::new(0),
            copies: AtomicU64::new(0),
        })
    }

    /// Refuses to go on when `what` would need `bytes` of host memory beyond the budget
    /// ([`GpuOptions::host_memory_budget`]); call it before allocating from a size a user gave.
    pub fn check_host(&self, what: &str, bytes: u128) -> Result<()> {
        if bytes > self.host_budget as u128 {
            return Err(VaeError::HostMemory {
                what: what.into(),
                bytes,
                budget: self.host_budget,
            });
        }
        Ok(())
    }

    /// Refuses a storage buffer of `bytes` for `what` beyond the device's limits, before any
    /// host memory is spent on its contents.
    pub fn check_buffer(&self, what: &str, bytes: u128) -> Result<()> {
        let bytes = u64::try_from(bytes).unwrap_or(u64::MAX);
        self.memory.check(what, bytes, TENSOR_USAGE)
    }

    /// The options the runtime was made with.
    pub fn options(&self) -> &GpuOptions {
        &self.options
    }

    /// The adapter's name, backend and limits.
    pub fn report(&self) -> &AdapterReport {
        &self.ctx.report
    }

    /// Submits, readbacks, dispatches, compute passes and mirror copies so far.
    pub fn traffic(&self) -> TrafficStats {
        TrafficStats {
            submits: self.submits.load(Ordering::Relaxed),
            readbacks: self.readbacks.load(Ordering::Relaxed),
            dispatches: self.dispatches.load(Ordering::Relaxed),
            passes: self.passes.load(Ordering::Relaxed),
            copies: self.copies.load(Ordering::Relaxed),
        }
    }

    /// A long-lived tensor of `shape`, allocated at its exact size (contents undefined).
    pub fn tensor(&self, label: &str, shape: &[usize]) -> Result<Tensor> {
        let bytes = tensor_bytes(label, shape)?;
        Ok(Tensor::view(self.memory.alloc(label, bytes, TENSOR_USAGE)?, 0, shape))
    }

    /// A host's buffer as a tensor of `shape` from byte `offset` on, with no copy and no
    /// allocation; `what` names it in errors. The buffer must belong to this device, have
    /// `STORAGE` usage (the only one the crate needs: it reads and writes the buffer from
    /// kernels, never by copy; other usages are the host's business),
    /// an offset that is a multiple of the device's `min_storage_buffer_offset_alignment`, and
    /// room for the tensor's 4-byte elements (at least 16 bytes) from the offset on. The tensor
    /// holds a reference to the buffer, never frees it and is outside
    /// the ledger's counts ([`DeviceMemory::stats`]).
    ///
    /// ```
    /// use vae_wgpu::{wgpu, Gpu, GpuOptions, VaeError};
    ///
    /// # fn main() -> vae_wgpu::Result<()> {
    /// let gpu = Gpu::new(GpuOptions::default())?;
    /// let desc = |usage| wgpu::BufferDescriptor { label: None, size: 1024, usage, mapped_at_creation: false };
    /// let host = gpu.ctx.device.create_buffer(&desc(wgpu::BufferUsages::STORAGE));
    /// let x = gpu.wrap_buffer("x", &host, 0, &[16, 16])?;
    /// assert_eq!(x.shape(), [16, 16]);
    /// let uniform = gpu.ctx.device.create_buffer(&desc(wgpu::BufferUsages::UNIFORM));
    /// let refused = gpu.wrap_buffer("x", &uniform, 0, &[16, 16]);
    /// assert!(matches!(refused, Err(VaeError::HostBuffer { .. })));
    /// # Ok(())
    /// # }
    /// ```
    pub fn wrap_buffer(&self, what: &str, buffer: &wgpu::Buffer, offset: u64, shape: &[usize]) -> Result<Tensor> {
        let what = format!("{what} {shape:?}");
        let fail = |problem: String| VaeError::HostBuffer {
            what: what.clone(),
            problem,
        };
        if shape.is_empty() || shape.contains(&0) {
            return Err(fail("a tensor needs a shape with no zero dimension".into()));
        }
        if !buffer.usage().contains(wgpu::BufferUsages::STORAGE) {
            return Err(fail(format!(
                "its usages {:?} lack STORAGE, which every buffer the crate reads or writes needs",
                buffer.usage()
            )));
        }
        let align = self.ctx.device.limits().min_storage_buffer_offset_alignment as u64;
        if !offset.is_multiple_of(align) {
            return Err(fail(format!(
                "offset {offset} is not a multiple of the device's min_storage_buffer_offset_alignment, {align}"
            )));
        }
        let bytes = tensor_bytes(&what, shape)?;
        let need = offset.saturating_add(bytes.max(16));
        if need > buffer.size() {
            return Err(fail(format!(
                "it holds {} bytes; the tensor needs {need} (offset {offset}, then {bytes} bytes of 4-byte \
                 elements, at least 16)",
                buffer.size()
            )));
        }
        self.memory.check(&what, bytes, wgpu::BufferUsages::STORAGE)?;
        // A trial binding, inside an error scope of its own: a buffer of another device (or
        // one destroyed) is refused here, naming it, rather than at the first plan.
        let device = &self.ctx.device;
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("wrap_buffer.check"),
            entries: &[kernels::layout::storage(0, true)],
        });
        let _ = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("wrap_buffer.check"),
            layout: &layout,
            entries: &[wgpu::BindGroupEntry {
                binding: 0,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer,
                    offset,
                    size: std::num::NonZeroU64::new(bytes.max(16).min(buffer.size() - offset)),
                }),
            }],
        });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(fail(format!(
                "it cannot be bound on this device (a buffer of another wgpu::Device, or destroyed?): {e}"
            )));
        }
        Ok(Tensor::view(
            Arc::new(GpuBuffer::external(buffer.clone())),
            offset,
            shape,
        ))
    }

    /// A transient tensor from the pool; its buffer returns to the pool when the last view drops.
    pub fn tensor_pooled(&self, label: &str, shape: &[usize]) -> Result<Tensor> {
        let bytes = tensor_bytes(label, shape)?;
        Ok(Tensor::view(
            self.memory.alloc_pooled(label, bytes, TENSOR_USAGE)?,
            0,
            shape,
        ))
    }

    /// A new tensor holding `data`.
    pub fn upload(&self, label: &str, shape: &[usize], data: &[f32]) -> Result<Tensor> {
        let t = self.tensor(label, shape)?;
        self.write(&t, data)?;
        Ok(t)
    }

    /// A new tensor holding raw 32-bit words (indices, packed bytes).
    pub fn upload_words(&self, label: &str, words: &[u32]) -> Result<Tensor> {
        let t = self.tensor(label, &[words.len()])?;
        self.ctx
            .queue
            .write_buffer(t.raw(), t.offset(), bytemuck::cast_slice(words));
        Ok(t)
    }

    /// Overwrites a tensor with host data (queued; visible to the next submit).
    pub fn write(&self, t: &Tensor, data: &[f32]) -> Result<()> {
        if data.len() != t.len() {
            return Err(VaeError::Shape(format!(
                "writing {} values into a tensor of shape {:?} ({} elements)",
                data.len(),
                t.shape(),
                t.len()
            )));
        }
        if !data.is_empty() {
            self.ctx
                .queue
                .write_buffer(t.raw(), t.offset(), bytemuck::cast_slice(data));
        }
        Ok(())
    }

    /// Writes raw 32-bit words into a tensor's buffer at its offset.
    pub fn write_words(&self, t: &Tensor, words: &[u32]) -> Result<()> {
        if words.len() > t.len() {
            return Err(VaeError::Shape(format!(
                "writing {} words into a tensor of {} elements",
                words.len(),
                t.len()
            )));
        }
        self.ctx
            .queue
            .write_buffer(t.raw(), t.offset(), bytemuck::cast_slice(words));
        Ok(())
    }

    /// Writes u32 words into `t` from element `at` on, through the queue (see
    /// [`Gpu::write_words`]).
    pub fn write_words_at(&self, t: &Tensor, at: usize, words: &[u32]) -> Result<()> {
        if at.checked_add(words.len()).is_none_or(|end| end > t.len()) {
            return Err(VaeError::Shape(format!(
                "writing {} words at {at} into a tensor of {} elements",
                words.len(),
                t.len()
            )));
        }
        self.ctx
            .queue
            .write_buffer(t.raw(), t.offset() + 4 * at as u64, bytemuck::cast_slice(words));
        Ok(())
    }

    /// Copies a tensor back to the host (waits for all submitted work).
    pub fn read(&self, t: &Tensor) -> Result<Vec<f32>> {
        let words = self.read_words(t)?;
        Ok(bytemuck::cast_slice(&words).to_vec())
    }

    /// Copies a tensor's 32-bit words back to the host.
    pub fn read_words(&self, t: &Tensor) -> Result<Vec<u32>> {
        Ok(self.read_many(&[t])?.pop().unwrap_or_default())
    }

    /// Copies several tensors' 32-bit words back to the host in one readback (one staging
    /// buffer, one map), waiting for all submitted work.
    pub fn read_many(&self, tensors: &[&Tensor]) -> Result<Vec<Vec<u32>>> {
        let total: u64 = tensors.iter().map(|t| t.bytes()).sum();
        if total == 0 {
            return Ok(tensors.iter().map(|_| Vec::new()).collect());
        }
        let staging = self.memory.alloc_pooled(
            "readback",
            total,
            wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        )?;
        let mut enc = self.ctx.device.create_command_encoder(&Default::default());
        let mut at = 0;
        for t in tensors {
            if t.bytes() > 0 {
                enc.copy_buffer_to_buffer(t.raw(), t.offset(), staging.raw(), at, t.bytes());
            }
            at += t.bytes();
        }
        self.ctx.queue.submit([enc.finish()]);
        self.readbacks.fetch_add(1, Ordering::Relaxed);
        let slice = staging.raw().slice(0..total);
        let (tx, rx) = std::sync::mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.ctx.wait()?;
        rx.recv()
            .map_err(|e| VaeError::Readback(e.to_string()))?
            .map_err(|e| VaeError::Readback(e.to_string()))?;
        let out = {
            let view = slice
                .get_mapped_range()
                .map_err(|e| VaeError::Readback(e.to_string()))?;
            let words: &[u32] = bytemuck::cast_slice(&view);
            let mut at = 0;
            tensors
                .iter()
                .map(|t| {
                    let n = t.len();
                    let v = words[at..at + n].to_vec();
                    at += n;
                    v
                })
                .collect()
        };
        staging.raw().unmap();
        Ok(out)
    }

    /// A uniform buffer holding `value`, owned by the dispatch that binds it.
    pub fn uniform<T: bytemuck::Pod>(&self, label: &str, value: &T) -> Result<Arc<GpuBuffer>> {
        let bytes = bytemuck::bytes_of(value);
        let buf = self.memory.alloc(
            label,
            bytes.len() as u64,
            wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        )?;
        self.ctx.queue.write_buffer(buf.raw(), 0, bytes);
        Ok(buf)
    }

    /// Placeholder for an unused read-only binding.
    pub fn dummy_read(&self) -> &Tensor {
        &self.dummy_read
    }

    /// Placeholder for an unused storage-texture binding (1×1 rgba32float).
    pub fn dummy_texture(&self) -> &GpuTexture {
        &self.dummy_texture
    }

    /// Placeholder for an unused read-write binding.
    pub fn dummy_write(&self) -> &Tensor {
        &self.dummy_write
    }

    /// Builds a dispatch: a bind group over `resources` (binding i = `resources[i]`) for a
    /// pipeline of `kernels`.
    #[allow(clippy::too_many_arguments)]
    pub fn dispatch(
        &self,
        label: impl Into<String>,
        pipeline: wgpu::ComputePipeline,
        resources: &[wgpu::BindingResource<'_>],
        uniform: Option<Arc<GpuBuffer>>,
        workgroups: [u32; 3],
        flops: f64,
        bytes: f64,
    ) -> Result<Dispatch> {
        let numbered: Vec<(u32, wgpu::BindingResource<'_>)> = resources
            .iter()
            .enumerate()
            .map(|(i, r)| (i as u32, r.clone()))
            .collect();
        self.dispatch_bound(label, pipeline, &numbered, uniform, workgroups, flops, bytes)
    }

    /// [`Gpu::dispatch`] with explicit binding numbers, for an entry point that uses only some
    /// of its shader module's bindings.
    #[allow(clippy::too_many_arguments)]
    pub fn dispatch_bound(
        &self,
        label: impl Into<String>,
        pipeline: wgpu::ComputePipeline,
        resources: &[(u32, wgpu::BindingResource<'_>)],
        uniform: Option<Arc<GpuBuffer>>,
        workgroups: [u32; 3],
        flops: f64,
        bytes: f64,
    ) -> Result<Dispatch> {
        let label = label.into();
        let entries: Vec<wgpu::BindGroupEntry> = resources
            .iter()
            .map(|(i, r)| wgpu::BindGroupEntry {
                binding: *i,
                resource: r.clone(),
            })
            .collect();
        let scope = self.ctx.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let bind_group = self.ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(&label),
            layout: &pipeline.get_bind_group_layout(0),
            entries: &entries,
        });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(VaeError::Gpu(format!("binding buffers for {label}: {e}")));
        }
        let max = self.ctx.report.max_compute_workgroups_per_dimension;
        if workgroups.iter().any(|&w| w > max) {
            return Err(VaeError::Shape(format!(
                "{label}: grid {workgroups:?} exceeds the device's {max} workgroups per dimension"
            )));
        }
        Ok(Dispatch {
            label,
            work: Work::Kernel {
                pipeline,
                bind_group,
                _uniform: uniform,
            },
            workgroups,
            flops,
            bytes,
        })
    }

    /// Records `dispatches` into `encoder`: runs of kernel launches share one compute pass,
    /// and each mirror copy sits between two passes.
    pub fn record(&self, encoder: &mut wgpu::CommandEncoder, dispatches: &[&Dispatch]) {
        let mut rest = dispatches;
        while !rest.is_empty() {
            let run = rest.iter().take_while(|d| !d.is_copy()).count();
            if run > 0 {
                let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some("vae-wgpu"),
                    timestamp_writes: None,
                });
                for d in &rest[..run] {
                    d.record(&mut pass);
                }
                self.passes.fetch_add(1, Ordering::Relaxed);
                self.dispatches.fetch_add(run as u64, Ordering::Relaxed);
            }
            let copies = rest[run..].iter().take_while(|d| d.is_copy()).count();
            for d in &rest[run..run + copies] {
                d.record_copy(encoder);
            }
            self.copies.fetch_add(copies as u64, Ordering::Relaxed);
            rest = &rest[run + copies..];
        }
    }

    /// Submits finished command buffers (counted for the step-structure checks).
    pub fn submit(&self, commands: wgpu::CommandBuffer) {
        self.ctx.queue.submit([commands]);
        self.submits.fetch_add(1, Ordering::Relaxed);
    }

    /// Records `dispatches` with [`Gpu::record`] (one compute pass per run of kernels between
    /// mirror copies), submits once, and waits.
    pub fn run(&self, dispatches: &[&Dispatch]) -> Result<()> {
        let mut enc = self.ctx.device.create_command_encoder(&Default::default());
        self.record(&mut enc, dispatches);
        self.submit(enc.finish());
        self.ctx.wait()
    }
}

/// Bytes of an f32 tensor of `shape`, refused when they overflow.
fn tensor_bytes(label: &str, shape: &[usize]) -> Result<u64> {
    shape
        .iter()
        .try_fold(4u64, |acc, &d| acc.checked_mul(d as u64))
        .ok_or_else(|| VaeError::BufferTooLarge {
            label: label.into(),
            bytes: u64::MAX,
            limit: 0,
            limit_name: "size (the shape overflows)",
        })
}

/// Workgroup grid for `items` invocations in groups of `group`, folded into two dimensions
/// past 65535 groups (kernels compute the flat index as x + y·65535·group).
pub fn grid_1d(items: usize, group: usize) -> [u32; 3] {
    let groups = items.div_ceil(group).max(1);
    if groups <= 65535 {
        [groups as u32, 1, 1]
    } else {
        [65535, groups.div_ceil(65535) as u32, 1]
    }
}
