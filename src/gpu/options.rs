//! The runtime's options: which adapter to use and the kernel choices that are not automatic.
//! The library reads no environment variable; [`GpuOptions::from_env`] is for programs that want
//! wgpu's and this crate's environment conventions, and the examples and benches call it.

use std::path::PathBuf;

use crate::error::{Result, VaeError};
use crate::gpu::Gpu;

/// How the matmul tiles its work. All strategies compute the same result (up to f32 summation
/// order); which one is fast depends on the adapter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MatmulStrategy {
    /// One output per invocation; any shape. The fallback for shapes the vec4 strategies
    /// cannot take.
    Naive,
    /// 64×64 workgroup-memory tiles: the standard design for discrete GPUs.
    Tiled,
    /// Register-blocked, subgroup-broadcast, no workgroup memory: 5–10× faster than tiling on
    /// CPU adapters such as lavapipe. Needs `Features::SUBGROUP` and a fixed subgroup size.
    Subgroup,
}

impl MatmulStrategy {
    /// Parses `naive`, `tiled` or `subgroup`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "naive" => Ok(Self::Naive),
            "tiled" => Ok(Self::Tiled),
            "subgroup" => Ok(Self::Subgroup),
            _ => Err(VaeError::setting(
                "GpuOptions::matmul",
                format!("unknown matmul strategy {s:?}; expected naive, tiled or subgroup"),
            )),
        }
    }

    /// The strategy the runtime uses: [`GpuOptions::matmul`] when set, otherwise the rule: the
    /// subgroup design on CPU adapters with a fixed subgroup size it supports, tiles elsewhere.
    pub fn preferred(gpu: &Gpu) -> Result<Self> {
        if let Some(st) = gpu.options().matmul {
            st.check_supported(gpu)?;
            return Ok(st);
        }
        let r = gpu.report();
        if r.device_type == wgpu::DeviceType::Cpu && Self::Subgroup.check_supported(gpu).is_ok() {
            Ok(Self::Subgroup)
        } else {
            Ok(Self::Tiled)
        }
    }

    /// Whether the adapter can run this strategy at all.
    pub fn check_supported(self, gpu: &Gpu) -> Result<()> {
        if self != Self::Subgroup {
            return Ok(());
        }
        let r = gpu.report();
        if !r.subgroups {
            return Err(VaeError::Unsupported(
                "the subgroup matmul needs Features::SUBGROUP, which this device lacks; leave \
                 GpuOptions::matmul unset (VAE_WGPU_MATMUL) or set it to tiled (or naive)"
                    .into(),
            ));
        }
        let sg = r.subgroup_min_size;
        if sg != r.subgroup_max_size || sg < 8 || !sg.is_power_of_two() {
            return Err(VaeError::Unsupported(format!(
                "the subgroup matmul needs a fixed subgroup size of 8 or more lanes (adapter \
                 reports {}..{}); leave GpuOptions::matmul unset (VAE_WGPU_MATMUL) or set it to tiled",
                r.subgroup_min_size, r.subgroup_max_size
            )));
        }
        Ok(())
    }

    /// Whether the vec4 strategies can take this shape (see matmul.wgsl).
    pub fn vec4_shape_ok(m: usize, n: usize, k: usize, trans_a: bool, trans_b: bool) -> bool {
        let k_along = !trans_a || trans_b;
        n.is_multiple_of(4) && (!k_along || k.is_multiple_of(4)) && (!trans_a || m.is_multiple_of(4))
    }
}

/// Which tensors get a texture mirror that the subgroup matmul reads instead of the buffer
/// (see [`Tensor`](crate::Tensor)). Mirrors only exist where the subgroup strategy is chosen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TextureMirrors {
    /// The operands of the large products: dense weights of at least
    /// [`crate::model::MIRROR_MIN_WEIGHTS`] values, every convolution's weight, and in every
    /// workspace the input, the hidden activations, their gradients and the output gradient.
    #[default]
    Auto,
    /// As `Auto`, and every weight whose size is a whole number of texels.
    All,
    /// No mirrors: every matmul reads buffers.
    None,
}

impl TextureMirrors {
    /// Parses `auto`, `all` or `none`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(TextureMirrors::Auto),
            "all" => Ok(TextureMirrors::All),
            "none" => Ok(TextureMirrors::None),
            _ => Err(VaeError::setting(
                "GpuOptions::texture_mirrors",
                format!("{s:?}; expected auto, all or none"),
            )),
        }
    }
}

/// How [`Gpu::new`] picks its adapter, and the runtime's kernel choices.
#[derive(Clone, Debug)]
pub struct GpuOptions {
    /// Backends searched; empty means every backend this build has (Vulkan, Metal, DX12).
    pub backends: wgpu::Backends,
    /// Take the first adapter whose name contains this (case-insensitive); one that matches
    /// none is an error listing the adapters found.
    pub adapter_name: Option<String>,
    /// The power preference of the default adapter (no name given).
    pub power_preference: wgpu::PowerPreference,
    /// wgpu's instance flags (validation, debug labels).
    pub instance_flags: wgpu::InstanceFlags,
    /// wgpu's per-backend options.
    pub backend_options: wgpu::BackendOptions,
    /// The matmul strategy, instead of the rule of [`MatmulStrategy::preferred`].
    pub matmul: Option<MatmulStrategy>,
    /// Texture mirrors of new models and their workspaces (see [`TextureMirrors`]).
    pub texture_mirrors: TextureMirrors,
    /// Kernel development: read `<kernel>.wgsl` from this directory instead of the built-in
    /// copy where the directory has one (the shared preludes stay built in).
    pub shader_dir: Option<PathBuf>,
    /// On lavapipe, pin the driver's compute worker threads one per CPU (Linux): left to the
    /// scheduler, both workers often shared one CPU for a whole dispatch.
    pub pin_threads: bool,
    /// lavapipe's SIMD width as the driver was told (`LP_NATIVE_VECTOR_WIDTH`, which the driver
    /// reads from the environment itself), recorded in the adapter report.
    pub lp_native_vector_width: Option<String>,
    /// Host memory the crate may ask for at once, in bytes; None: 0.8 × `MemAvailable` of
    /// /proc/meminfo when the runtime is made (Linux; no limit elsewhere). Sizes from flags or
    /// files beyond it are refused before anything is allocated.
    pub host_memory_budget: Option<u64>,
}

impl Default for GpuOptions {
    fn default() -> Self {
        GpuOptions {
            backends: wgpu::Backends::empty(),
            adapter_name: None,
            power_preference: wgpu::PowerPreference::default(),
            instance_flags: wgpu::InstanceFlags::default(),
            backend_options: wgpu::BackendOptions::default(),
            matmul: None,
            texture_mirrors: TextureMirrors::Auto,
            shader_dir: None,
            pin_threads: true,
            lp_native_vector_width: None,
            host_memory_budget: None,
        }
    }
}

/// 0.8 × `MemAvailable` from /proc/meminfo (Linux), the default host memory budget.
pub(crate) fn default_host_budget() -> u64 {
    let kib = std::fs::read_to_string("/proc/meminfo").ok().and_then(|s| {
        s.lines()
            .find(|l| l.starts_with("MemAvailable:"))
            .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()))
    });
    kib.map_or(u64::MAX, |k| k.saturating_mul(1024) / 10 * 8)
}

/// Backends this build of the crate has.
const BUILT_BACKENDS: [(&str, wgpu::Backends); 3] = [
    ("vulkan", wgpu::Backends::VULKAN),
    ("metal", wgpu::Backends::METAL),
    ("dx12", wgpu::Backends::DX12),
];

impl GpuOptions {
    /// The options the environment asks for, by wgpu's conventions and this crate's:
    /// `WGPU_BACKEND` (comma-separated vulkan, metal, dx12), `WGPU_ADAPTER_NAME`,
    /// `WGPU_POWER_PREF` (low, high, none), wgpu's instance and backend variables,
    /// `VAE_WGPU_MATMUL` (naive, tiled, subgroup), `VAE_WGPU_TEXTURES` (auto, all, none),
    /// `VAE_WGPU_SHADER_DIR`, `VAE_WGPU_PIN_THREADS` (1, true, on, or 0, false, off to disable),
    /// `VAE_WGPU_HOST_BUDGET` (bytes) and `LP_NATIVE_VECTOR_WIDTH` (recorded). A value it cannot use is an error naming the
    /// variable, its value and what is accepted.
    pub fn from_env() -> Result<Self> {
        let mut o = Self::from_vars(|k| std::env::var(k).ok())?;
        o.instance_flags = wgpu::InstanceFlags::from_build_config().with_env();
        o.backend_options = wgpu::BackendOptions::from_env_or_default();
        Ok(o)
    }

    /// This crate's and wgpu's adapter-selection variables as [`GpuOptions::from_env`] reads
    /// them, from any lookup (tests pass their own); wgpu's instance and backend options keep
    /// their defaults.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let bad = |name: &str, value: &str, accepted: &str| {
            VaeError::Config(format!(
                "{name}={value:?} is not a setting this program can use; {accepted}"
            ))
        };
        let mut o = GpuOptions::default();
        if let Some(v) = var("WGPU_BACKEND") {
            for name in v.split(',').map(|s| s.trim().to_ascii_lowercase()) {
                let known = BUILT_BACKENDS
                    .iter()
                    .find(|(n, _)| *n == name || (name == "vk" && *n == "vulkan"));
                match known {
                    Some((_, b)) => o.backends |= *b,
                    None => {
                        let other = ["gl", "gles", "opengl", "webgpu", "noop"].contains(&name.as_str());
                        return Err(bad(
                            "WGPU_BACKEND",
                            &v,
                            &format!(
                                "{}this build has the vulkan, metal and dx12 backends: set one or more \
                                 of those, comma-separated, or unset it to search them all",
                                if other {
                                    format!("the {name} backend is not built into vae-wgpu; ")
                                } else {
                                    String::new()
                                }
                            ),
                        ));
                    }
                }
            }
        }
        o.adapter_name = var("WGPU_ADAPTER_NAME").filter(|s| !s.is_empty());
        if let Some(v) = var("WGPU_POWER_PREF") {
            o.power_preference = match v.to_ascii_lowercase().as_str() {
                "low" => wgpu::PowerPreference::LowPower,
                "high" => wgpu::PowerPreference::HighPerformance,
                "none" => wgpu::PowerPreference::None,
                _ => return Err(bad("WGPU_POWER_PREF", &v, "expected low, high or none")),
            };
        }
        if let Some(v) = var("VAE_WGPU_MATMUL") {
            o.matmul = Some(
                MatmulStrategy::parse(&v)
                    .map_err(|_| bad("VAE_WGPU_MATMUL", &v, "expected naive, tiled or subgroup"))?,
            );
        }
        if let Some(v) = var("VAE_WGPU_TEXTURES") {
            o.texture_mirrors =
                TextureMirrors::parse(&v).map_err(|_| bad("VAE_WGPU_TEXTURES", &v, "expected auto, all or none"))?;
        }
        if let Some(v) = var("VAE_WGPU_SHADER_DIR") {
            let dir = PathBuf::from(&v);
            if !dir.is_dir() {
                return Err(bad(
                    "VAE_WGPU_SHADER_DIR",
                    &v,
                    "it is not a directory; point it at a directory of edited .wgsl files, or unset it \
                     to use the built-in kernels",
                ));
            }
            o.shader_dir = Some(dir);
        }
        if let Some(v) = var("VAE_WGPU_PIN_THREADS") {
            o.pin_threads = match v.trim().to_ascii_lowercase().as_str() {
                "1" | "true" | "on" => true,
                "0" | "false" | "off" => false,
                _ => {
                    return Err(bad(
                        "VAE_WGPU_PIN_THREADS",
                        &v,
                        "expected 1, true or on (pin, the default) or 0, false or off (do not pin)",
                    ))
                }
            };
        }
        o.lp_native_vector_width = var("LP_NATIVE_VECTOR_WIDTH");
        if let Some(v) = var("VAE_WGPU_HOST_BUDGET") {
            o.host_memory_budget = Some(match v.trim().parse::<u64>() {
                Ok(b) if b > 0 => b,
                Err(e) if *e.kind() == std::num::IntErrorKind::PosOverflow => {
                    return Err(bad(
                        "VAE_WGPU_HOST_BUDGET",
                        &v,
                        &format!("expected a number of bytes from 1 to {}", u64::MAX),
                    ))
                }
                _ => return Err(bad("VAE_WGPU_HOST_BUDGET", &v, "expected a whole number of bytes > 0")),
            });
        }
        Ok(o)
    }

    /// The backends to search: those asked for, or every backend of this build.
    pub fn searched_backends(&self) -> wgpu::Backends {
        if self.backends.is_empty() {
            BUILT_BACKENDS.iter().fold(wgpu::Backends::empty(), |a, (_, b)| a | *b)
        } else {
            self.backends
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(vars: &[(&str, &str)]) -> Result<GpuOptions> {
        let vars: Vec<(String, String)> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        GpuOptions::from_vars(|k| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()))
    }

    #[test]
    fn environment_settings_parse_and_bad_ones_name_the_variable() {
        let o = opts(&[
            ("WGPU_BACKEND", "Vulkan, dx12"),
            ("WGPU_ADAPTER_NAME", "llvm"),
            ("WGPU_POWER_PREF", "high"),
            ("VAE_WGPU_MATMUL", "tiled"),
            ("VAE_WGPU_TEXTURES", "none"),
            ("VAE_WGPU_PIN_THREADS", "off"),
            ("LP_NATIVE_VECTOR_WIDTH", "512"),
        ])
        .unwrap();
        assert_eq!(o.backends, wgpu::Backends::VULKAN | wgpu::Backends::DX12);
        assert_eq!(o.adapter_name.as_deref(), Some("llvm"));
        assert_eq!(o.power_preference, wgpu::PowerPreference::HighPerformance);
        assert_eq!(o.matmul, Some(MatmulStrategy::Tiled));
        assert_eq!(o.texture_mirrors, TextureMirrors::None);
        assert!(!o.pin_threads);
        assert_eq!(o.lp_native_vector_width.as_deref(), Some("512"));
        let none = opts(&[]).unwrap();
        assert_eq!(
            none.searched_backends(),
            wgpu::Backends::VULKAN | wgpu::Backends::METAL | wgpu::Backends::DX12
        );
        assert!(none.pin_threads && none.matmul.is_none() && none.shader_dir.is_none());
        for (var, value, needle) in [
            ("WGPU_BACKEND", "bogus", "vulkan, metal and dx12"),
            ("WGPU_BACKEND", "gl", "gl backend is not built"),
            ("WGPU_POWER_PREF", "fast", "low, high or none"),
            ("VAE_WGPU_MATMUL", "fast", "naive, tiled or subgroup"),
            ("VAE_WGPU_TEXTURES", "some", "auto, all or none"),
            ("VAE_WGPU_SHADER_DIR", "/nonexistent/shaders", "not a directory"),
            ("VAE_WGPU_PIN_THREADS", "maybe", "0, false or off"),
            ("VAE_WGPU_HOST_BUDGET", "-5", "a whole number of bytes > 0"),
            (
                "VAE_WGPU_HOST_BUDGET",
                "99999999999999999999999",
                "from 1 to 18446744073709551615",
            ),
        ] {
            let e = opts(&[(var, value)]).unwrap_err().to_string();
            assert!(
                e.contains(var) && e.contains(value) && e.contains(needle),
                "{var}={value}: {e}"
            );
        }
    }
}
