//! Adapter selection and the device/queue pair, either our own or a host application's.

use std::sync::{Arc, Mutex};

use crate::error::{Result, VaeError};

/// What a report needs to know about the adapter: name, backend and the relevant limits.
#[derive(Clone, Debug)]
pub struct AdapterReport {
    /// The adapter's name ("llvmpipe (LLVM 15.0.6, 256 bits)" for lavapipe).
    pub name: String,
    /// Vulkan, Metal, DX12, …
    pub backend: wgpu::Backend,
    /// Discrete, integrated, CPU, …; the matmul strategy is chosen from it.
    pub device_type: wgpu::DeviceType,
    /// Driver name and version, as the adapter reports them.
    pub driver: String,
    /// The device's limit on one storage binding, in bytes.
    pub max_storage_buffer_binding_size: u64,
    /// The device's limit on one buffer, in bytes.
    pub max_buffer_size: u64,
    /// Past this many workgroups in x, dispatches use a 2-D grid.
    pub max_compute_workgroups_per_dimension: u32,
    /// Binding offsets into a shared buffer are rounded up to this.
    pub min_storage_buffer_offset_alignment: u32,
    /// Subgroup size range reported by the adapter (0 when subgroups are unavailable).
    pub subgroup_min_size: u32,
    /// Upper end of that range.
    pub subgroup_max_size: u32,
    /// Whether the device was created with `Features::SUBGROUP`.
    pub subgroups: bool,
    /// Whether timestamp queries can be written inside a compute pass (per-dispatch profiling).
    pub timestamps_inside_passes: bool,
    /// `LP_NATIVE_VECTOR_WIDTH` as seen when the instance was created (lavapipe's SIMD width).
    pub lp_native_vector_width: Option<String>,
    /// Thread ids [`GpuContext::new`] pinned one CPU each: the unnamed threads lavapipe started
    /// (its compute workers and its queue thread; see `gpu/affinity.rs`). Empty for
    /// other adapters, a host's device, or when disabled.
    pub pinned_worker_threads: Vec<u32>,
}

impl std::fmt::Display for AdapterReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({:?}, {:?})", self.name, self.backend, self.device_type)?;
        if self.subgroups {
            write!(f, ", subgroup {}", self.subgroup_min_size)?;
            if self.subgroup_max_size != self.subgroup_min_size {
                write!(f, "..{}", self.subgroup_max_size)?;
            }
        }
        Ok(())
    }
}

/// The device and queue every kernel runs on, plus what we learned about the adapter.
///
/// wgpu validation errors are captured (instead of wgpu's default panic) and surface as
/// [`VaeError::Gpu`] from [`GpuContext::check_errors`], which the runtime calls after waits.
#[derive(Clone)]
pub struct GpuContext {
    /// The device every buffer and pipeline belongs to.
    pub device: wgpu::Device,
    /// Its queue; the runtime submits here.
    pub queue: wgpu::Queue,
    /// What was learned about the adapter when the context was made.
    pub report: AdapterReport,
    errors: Arc<Mutex<Vec<String>>>,
}

impl GpuContext {
    /// Picks an adapter by `options` (see [`super::GpuOptions`]): the first whose name
    /// contains [`super::GpuOptions::adapter_name`], else the default adapter of the power
    /// preference, falling back to a software one. On lavapipe it pins the driver's worker
    /// threads to distinct CPUs (`gpu/affinity.rs`) unless the options say not to.
    pub fn new(options: &super::GpuOptions) -> Result<Self> {
        pollster::block_on(Self::new_async(options))
    }

    async fn new_async(options: &super::GpuOptions) -> Result<Self> {
        let threads_before = super::affinity::thread_ids();
        let backends = options.searched_backends();
        let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
        desc.backends = backends;
        desc.flags = options.instance_flags;
        desc.backend_options = options.backend_options.clone();
        let instance = wgpu::Instance::new(desc);
        let adapter = match &options.adapter_name {
            Some(wanted) => {
                let wanted_lc = wanted.to_lowercase();
                let adapters = instance.enumerate_adapters(backends).await;
                let names: Vec<String> = adapters.iter().map(|a| a.get_info().name).collect();
                // With adapters present, a name that matches none is a setting to fix, not a
                // driver to install.
                let found = adapters
                    .into_iter()
                    .find(|a| a.get_info().name.to_lowercase().contains(&wanted_lc));
                match found {
                    Some(a) => a,
                    None if names.is_empty() => {
                        return Err(VaeError::NoAdapter {
                            tried: format!("backends {backends:?}, adapter name {wanted:?}"),
                        })
                    }
                    None => {
                        return Err(VaeError::setting(
                            "GpuOptions::adapter_name",
                            format!(
                                "{wanted:?} (WGPU_ADAPTER_NAME) matches none of the adapters found: {names:?}; \
                                 set it to part of one of those names, or unset it for the default adapter"
                            ),
                        ))
                    }
                }
            }
            None => {
                let mut opts = wgpu::RequestAdapterOptions {
                    power_preference: options.power_preference,
                    force_fallback_adapter: false,
                    compatible_surface: None,
                    apply_limit_buckets: false,
                };
                match instance.request_adapter(&opts).await {
                    Ok(a) => a,
                    Err(first) => {
                        opts.force_fallback_adapter = true;
                        instance.request_adapter(&opts).await.map_err(|e| VaeError::NoAdapter {
                            tried: format!("backends {backends:?}: {first}; software fallback: {e}"),
                        })?
                    }
                }
            }
        };
        let (device, queue) = request_device(&adapter).await?;
        let info = adapter.get_info();
        let mut ctx = Self::assemble(&info, device, queue, options.lp_native_vector_width.clone(), true);
        if is_lavapipe(&info) && options.pin_threads {
            ctx.report.pinned_worker_threads = super::affinity::pin_new_threads(&threads_before);
        }
        Ok(ctx)
    }

    /// Wraps a host application's device and queue, so the host and vae-wgpu share buffers.
    /// The device should have been created with `Features::SUBGROUP` (and the timestamp
    /// features for profiling) if the adapter has them, and with the adapter's limits;
    /// [`device_requirements`] returns both.
    pub fn from_device(
        info: &wgpu::AdapterInfo,
        device: wgpu::Device,
        queue: wgpu::Queue,
        options: &super::GpuOptions,
    ) -> Self {
        Self::assemble(info, device, queue, options.lp_native_vector_width.clone(), false)
    }

    fn assemble(
        info: &wgpu::AdapterInfo,
        device: wgpu::Device,
        queue: wgpu::Queue,
        lp_native_vector_width: Option<String>,
        created: bool,
    ) -> Self {
        let limits = device.limits();
        let features = device.features();
        let subgroups = features.contains(wgpu::Features::SUBGROUP);
        let report = AdapterReport {
            name: info.name.clone(),
            backend: info.backend,
            device_type: info.device_type,
            driver: format!("{} {}", info.driver, info.driver_info),
            max_storage_buffer_binding_size: limits.max_storage_buffer_binding_size,
            max_buffer_size: limits.max_buffer_size,
            max_compute_workgroups_per_dimension: limits.max_compute_workgroups_per_dimension,
            min_storage_buffer_offset_alignment: limits.min_storage_buffer_offset_alignment,
            subgroup_min_size: if subgroups { info.subgroup_min_size } else { 0 },
            subgroup_max_size: if subgroups { info.subgroup_max_size } else { 0 },
            subgroups,
            timestamps_inside_passes: features
                .contains(wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES),
            lp_native_vector_width,
            pinned_worker_threads: Vec::new(),
        };
        let errors = Arc::new(Mutex::new(Vec::new()));
        // On a device of its own the crate catches what its error scopes do not, and a lost
        // device, as errors of the next wait; a host's device keeps the host's own handlers.
        if created {
            let sink = errors.clone();
            device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
                if let Ok(mut v) = sink.lock() {
                    v.push(e.to_string());
                }
            }));
            let sink = errors.clone();
            device.set_device_lost_callback(move |reason, message| {
                if let Ok(mut v) = sink.lock() {
                    v.push(format!("the device was lost ({reason:?}): {message}"));
                }
            });
        }
        GpuContext {
            device,
            queue,
            report,
            errors,
        }
    }

    /// Returns the first wgpu error captured since the last call, as a typed error.
    pub fn check_errors(&self) -> Result<()> {
        let mut errs = self
            .errors
            .lock()
            .map_err(|_| VaeError::Gpu("error sink poisoned".into()))?;
        if errs.is_empty() {
            return Ok(());
        }
        let all = errs.join("\n");
        errs.clear();
        Err(VaeError::Gpu(all))
    }

    /// Blocks until all submitted work is done, then reports captured errors.
    pub fn wait(&self) -> Result<()> {
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| VaeError::Gpu(format!("waiting for the GPU: {e}")))?;
        self.check_errors()
    }
}

/// Whether the adapter is Mesa's software Vulkan driver (lavapipe, adapter "llvmpipe").
pub fn is_lavapipe(info: &wgpu::AdapterInfo) -> bool {
    info.device_type == wgpu::DeviceType::Cpu && info.name.to_lowercase().contains("llvmpipe")
}

/// The features and limits vae-wgpu asks of an adapter: subgroups and in-pass timestamps when
/// present (kernels fall back without them) and the adapter's own maximum limits.
pub fn device_requirements(adapter: &wgpu::Adapter) -> (wgpu::Features, wgpu::Limits) {
    let wanted = wgpu::Features::SUBGROUP
        | wgpu::Features::TIMESTAMP_QUERY
        | wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES
        | wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS;
    (adapter.features() & wanted, adapter.limits())
}

async fn request_device(adapter: &wgpu::Adapter) -> Result<(wgpu::Device, wgpu::Queue)> {
    let (features, limits) = device_requirements(adapter);
    adapter
        .request_device(&wgpu::DeviceDescriptor {
            label: Some("vae-wgpu"),
            required_features: features,
            required_limits: limits,
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        })
        .await
        .map_err(|e| VaeError::DeviceRequest(e.to_string()))
}
