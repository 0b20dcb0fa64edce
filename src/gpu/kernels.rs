//! The kernel registry: WGSL sources (with their shared preludes), shader modules and compute
//! pipelines, each compiled once per device and cached by (shader, entry point, constants).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::{Result, VaeError};

const ACT: &str = include_str!("../../shaders/act.wgsl");
const RNG: &str = include_str!("../../shaders/rng.wgsl");
const STEP: &str = include_str!("../../shaders/step.wgsl");

/// The shader files in `shaders/`, one per kernel family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Shader {
    /// `matmul.wgsl`: every matrix product with its epilogues, in three strategies.
    Matmul,
    /// `activation.wgsl`: standalone activation forward and backward.
    Activation,
    /// `reduce.wgsl`: column sums and the per-step metric rows.
    Reduce,
    /// `reparam_kl.wgsl`: the reparameterization and closed-form KL, forward and backward.
    ReparamKl,
    /// `code.wgsl`: an autoencoder's code and L1 penalty, the contractive penalty's elementwise
    /// step, and the VQ-VAE's quantization, forward and backward.
    Code,
    /// `loss.wgsl`: the reconstruction losses and their gradients.
    Loss,
    /// `adam.wgsl`: Adam / AdamW over the parameter arena.
    Adam,
    /// `gather.wgsl`: the batch gather and the one-hot class inputs.
    Gather,
    /// `conv.wgsl`: a convolution's patch matrix (im2col), its adjoint (col2im) and channel
    /// sums.
    Conv,
    /// `iwae.wgsl`: the importance-weighted bound's log-weights, normalized weights and the
    /// per-draw weighting of a gradient.
    Iwae,
}

impl Shader {
    /// Every kernel family, for validation and warm-up.
    pub const ALL: [Shader; 10] = [
        Shader::Matmul,
        Shader::Activation,
        Shader::Reduce,
        Shader::ReparamKl,
        Shader::Code,
        Shader::Loss,
        Shader::Adam,
        Shader::Gather,
        Shader::Conv,
        Shader::Iwae,
    ];

    /// File name under `shaders/`.
    pub fn file(self) -> &'static str {
        match self {
            Shader::Matmul => "matmul.wgsl",
            Shader::Activation => "activation.wgsl",
            Shader::Reduce => "reduce.wgsl",
            Shader::ReparamKl => "reparam_kl.wgsl",
            Shader::Code => "code.wgsl",
            Shader::Loss => "loss.wgsl",
            Shader::Adam => "adam.wgsl",
            Shader::Gather => "gather.wgsl",
            Shader::Conv => "conv.wgsl",
            Shader::Iwae => "iwae.wgsl",
        }
    }

    /// The built-in WGSL module: the shared preludes it uses, then the file itself.
    pub fn source(self) -> String {
        let (preludes, body) = self.parts();
        join(preludes, body)
    }

    /// The module the registry compiles: [`Shader::source`], except that with a shader
    /// directory ([`crate::gpu::GpuOptions::shader_dir`]; kernel development: edit WGSL without a
    /// rebuild) the file is read from that directory where it has a copy. A copy that cannot
    /// be read is an error rather than a silent fall-back to the built-in kernel, so an edit
    /// cannot be measured by mistake against the old code.
    pub fn development_source(self, dir: Option<&std::path::Path>) -> Result<String> {
        let Some(dir) = dir else {
            return Ok(self.source());
        };
        if !dir.is_dir() {
            return Err(VaeError::setting(
                "GpuOptions::shader_dir",
                format!(
                    "{} is not a directory; point it at a directory of edited .wgsl files, or leave it \
                     unset to use the built-in kernels",
                    dir.display()
                ),
            ));
        }
        let path = dir.join(self.file());
        match std::fs::read_to_string(&path) {
            Ok(body) => Ok(join(self.parts().0, &body)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(self.source()),
            Err(source) => Err(VaeError::Io { path, source }),
        }
    }

    fn parts(self) -> (&'static [&'static str], &'static str) {
        match self {
            Shader::Matmul => (&[ACT], include_str!("../../shaders/matmul.wgsl")),
            Shader::Activation => (&[ACT], include_str!("../../shaders/activation.wgsl")),
            Shader::Reduce => (&[STEP], include_str!("../../shaders/reduce.wgsl")),
            Shader::ReparamKl => (&[STEP, RNG], include_str!("../../shaders/reparam_kl.wgsl")),
            Shader::Code => (&[], include_str!("../../shaders/code.wgsl")),
            Shader::Loss => (&[], include_str!("../../shaders/loss.wgsl")),
            Shader::Adam => (&[STEP], include_str!("../../shaders/adam.wgsl")),
            Shader::Gather => (&[STEP, RNG], include_str!("../../shaders/gather.wgsl")),
            Shader::Conv => (&[ACT], include_str!("../../shaders/conv.wgsl")),
            Shader::Iwae => (&[], include_str!("../../shaders/iwae.wgsl")),
        }
    }

    /// Whether the module needs `Features::SUBGROUP` (only the subgroup matmul entry does, but
    /// the module as a whole must be created with it).
    pub fn needs_subgroups(self) -> bool {
        matches!(self, Shader::Matmul)
    }
}

/// Compiled modules and pipelines for one device.
pub struct KernelRegistry {
    device: wgpu::Device,
    subgroups: bool,
    shader_dir: Option<std::path::PathBuf>,
    modules: Mutex<HashMap<Shader, wgpu::ShaderModule>>,
    pipelines: Mutex<HashMap<String, wgpu::ComputePipeline>>,
    compile: Mutex<(Duration, usize)>,
}

impl KernelRegistry {
    /// An empty registry; nothing is compiled until first use.
    pub fn new(device: &wgpu::Device, shader_dir: Option<std::path::PathBuf>) -> Self {
        KernelRegistry {
            device: device.clone(),
            subgroups: device.features().contains(wgpu::Features::SUBGROUP),
            shader_dir,
            modules: Mutex::new(HashMap::new()),
            pipelines: Mutex::new(HashMap::new()),
            compile: Mutex::new((Duration::ZERO, 0)),
        }
    }

    /// Total time spent creating shader modules and pipelines, and the number of pipelines.
    pub fn compile_stats(&self) -> (Duration, usize) {
        self.compile.lock().map(|c| *c).unwrap_or_default()
    }

    fn module(&self, shader: Shader) -> Result<wgpu::ShaderModule> {
        let mut mods = self
            .modules
            .lock()
            .map_err(|_| VaeError::Gpu("registry poisoned".into()))?;
        if let Some(m) = mods.get(&shader) {
            return Ok(m.clone());
        }
        let mut src = shader.development_source(self.shader_dir.as_deref())?;
        if shader.needs_subgroups() && !self.subgroups {
            // Without the feature the subgroup builtins do not validate; drop that entry point.
            src = strip_subgroup_entry(&src);
        }
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let m = self.device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(shader.file()),
            source: wgpu::ShaderSource::Wgsl(src.into()),
        });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(VaeError::Gpu(format!("compiling {}: {e}", shader.file())));
        }
        mods.insert(shader, m.clone());
        Ok(m)
    }

    /// The pipeline for `entry` of `shader` specialised by `constants`, with an explicit bind
    /// group layout (group 0) built from `layout`. Compiled on first request, then cached.
    pub fn pipeline(
        &self,
        shader: Shader,
        entry: &str,
        constants: &[(&str, f64)],
        layout: &[wgpu::BindGroupLayoutEntry],
    ) -> Result<wgpu::ComputePipeline> {
        let key = format!("{}:{entry}:{constants:?}", shader.file());
        if let Some(p) = self
            .pipelines
            .lock()
            .map_err(|_| VaeError::Gpu("registry poisoned".into()))?
            .get(&key)
        {
            return Ok(p.clone());
        }
        let t0 = Instant::now();
        let module = self.module(shader)?;
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let bgl = self.device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some(entry),
            entries: layout,
        });
        let pl = self.device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some(entry),
            bind_group_layouts: &[Some(&bgl)],
            immediate_size: 0,
        });
        let pipeline = self.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(&key),
            layout: Some(&pl),
            module: &module,
            entry_point: Some(entry),
            compilation_options: wgpu::PipelineCompilationOptions {
                constants,
                zero_initialize_workgroup_memory: false,
            },
            cache: None,
        });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(VaeError::Gpu(format!("creating pipeline {key}: {e}")));
        }
        if let Ok(mut c) = self.compile.lock() {
            c.0 += t0.elapsed();
            c.1 += 1;
        }
        self.pipelines
            .lock()
            .map_err(|_| VaeError::Gpu("registry poisoned".into()))?
            .insert(key, pipeline.clone());
        Ok(pipeline)
    }
}

/// A module's text: each prelude, then the kernel file.
fn join(preludes: &[&str], body: &str) -> String {
    let mut s = String::new();
    for p in preludes {
        s.push_str(p);
        s.push('\n');
    }
    s.push_str(body);
    s
}

/// Removes the subgroup strategy of matmul.wgsl (its section runs from the marker comment to
/// the end of the file) for devices without subgroup support.
pub fn strip_subgroup_entry(src: &str) -> String {
    match src.find("// ---- strategy 3: subgroup") {
        Some(i) => src[..i].to_string(),
        None => src.to_string(),
    }
}

/// Layout entry helpers, so each op declares its bindings next to the shader it serves.
pub mod layout {
    /// A uniform buffer at `binding`.
    pub fn uniform(binding: u32) -> wgpu::BindGroupLayoutEntry {
        wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Uniform,
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        }
    }
    /// A storage buffer at `binding`, read-only or read-write.
    pub fn storage(binding: u32, read_only: bool) -> wgpu::BindGroupLayoutEntry {
        wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Storage { read_only },
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        }
    }
    /// A 2-D rgba32float storage texture at `binding`, read-only or write-only.
    pub fn storage_texture(binding: u32, read_only: bool) -> wgpu::BindGroupLayoutEntry {
        wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::StorageTexture {
                access: if read_only {
                    wgpu::StorageTextureAccess::ReadOnly
                } else {
                    wgpu::StorageTextureAccess::WriteOnly
                },
                format: wgpu::TextureFormat::Rgba32Float,
                view_dimension: wgpu::TextureViewDimension::D2,
            },
            count: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wgpu::naga;

    #[test]
    fn shader_dir_overrides_present_files_and_refuses_a_bad_setting() {
        let dir = std::env::temp_dir().join(format!("vae_wgpu_shader_dir_{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("adam.wgsl"), "// edited adam\n").unwrap();
        let adam = Shader::Adam.development_source(Some(&dir)).unwrap();
        let loss = Shader::Loss.development_source(Some(&dir)).unwrap();
        let not_dir = Shader::Adam.development_source(Some(&dir.join("adam.wgsl")));
        assert_eq!(Shader::Adam.development_source(None).unwrap(), Shader::Adam.source());
        std::fs::remove_dir_all(&dir).unwrap();

        // The edited file replaces the kernel but keeps its preludes.
        assert!(adam.starts_with(STEP) && adam.ends_with("// edited adam\n"), "{adam}");
        assert!(!adam.contains("@compute"));
        // A file the directory lacks is the built-in one.
        assert_eq!(loss, Shader::Loss.source());
        match not_dir {
            Err(e @ VaeError::Setting { .. }) => {
                assert!(
                    e.to_string().contains("is not a directory") && e.to_string().contains("shader_dir"),
                    "{e}"
                )
            }
            other => panic!("expected a Setting error, got {other:?}"),
        }
    }

    /// Every shader, as the registry composes it, parses and validates with the naga that wgpu
    /// uses, with no adapter involved.
    #[test]
    fn every_shader_parses_and_validates() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .expect("shaders/ exists")
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .filter(|n| n.ends_with(".wgsl"))
            .collect();
        on_disk.sort();
        let preludes = ["act.wgsl", "rng.wgsl", "step.wgsl"];
        for name in &on_disk {
            assert!(
                preludes.contains(&name.as_str()) || Shader::ALL.iter().any(|s| s.file() == name),
                "shaders/{name} is neither a kernel nor a prelude the registry knows"
            );
        }
        // What a device without subgroups compiles must validate without the capability.
        let no_subgroups = naga::valid::Capabilities::all()
            - naga::valid::Capabilities::SUBGROUP
            - naga::valid::Capabilities::SUBGROUP_BARRIER
            - naga::valid::Capabilities::SUBGROUP_VERTEX_STAGE;
        for shader in Shader::ALL {
            let stripped = strip_subgroup_entry(&shader.source());
            let plain = if shader.needs_subgroups() {
                no_subgroups
            } else {
                naga::valid::Capabilities::all()
            };
            for (src, caps) in [(shader.source(), naga::valid::Capabilities::all()), (stripped, plain)] {
                let module = naga::front::wgsl::parse_str(&src)
                    .unwrap_or_else(|e| panic!("{}: {}", shader.file(), e.emit_to_string(&src)));
                naga::valid::Validator::new(naga::valid::ValidationFlags::all(), caps)
                    .validate(&module)
                    .unwrap_or_else(|e| panic!("{}: {}", shader.file(), e.emit_to_string(&src)));
            }
        }
    }
}
