//! What the examples share: value parsers for their command lines, the names of their flags
//! for the library's configuration fields, and progress bars.
#![allow(dead_code)]

pub mod data;

use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use vae_wgpu::VaeError;

/// The flag that sets a library configuration field, for error messages.
pub fn flag_for(field: &str) -> &str {
    match field {
        "VaeConfig::input_dim" => "the dataset's image size",
        "VaeConfig::hidden" => "--hidden",
        "VaeConfig::latent" => "--latent",
        "VaeConfig::activation" => "--activation",
        "VaeConfig::likelihood" => "--likelihood/--variance",
        "VaeConfig::classes" => "--conditional",
        "VaeConfig::code" => "the model (--autoencoder, --vq or a VAE)",
        "VaeConfig::arch" => "--arch",
        "ConvArch" | "ConvArch::channels" => "--conv",
        "ConvArch::input" => "the dataset's image shape",
        "Code::Hierarchical" => "--top",
        "Code::Deterministic::l1" => "--l1",
        "Code::Deterministic::contractive" => "--contractive",
        "Code::Quantized::codes" => "--vq K",
        "Code::Quantized::groups" => "--vq K:G",
        "Code::Quantized::commitment" => "--commitment",
        "TrainConfig::batch_size" => "--batch-size",
        "TrainConfig::mc_samples" => "--mc-samples",
        "TrainConfig::objective" => "--objective iwae --iw-k",
        "TrainConfig::beta" => "--beta",
        "TrainConfig::kl_schedule" => "--kl-warmup/--kl-cycles",
        "TrainConfig::lr_schedule" => "--lr-schedule/--passes",
        "TrainConfig::denoise" => "--denoise",
        "TrainConfig::vq_ema" => "--vq-ema",
        "TrainConfig::drop_last" => "--drop-last",
        "TrainConfig::epochs" => "--epochs",
        "AdamConfig::weight_decay" => "the weight decay",
        "Evaluator::iw_nll k" => "--eval-iw",
        "GpuOptions::matmul" => "VAE_WGPU_MATMUL",
        "GpuOptions::texture_mirrors" => "VAE_WGPU_TEXTURES",
        "GpuOptions::shader_dir" => "VAE_WGPU_SHADER_DIR",
        "GpuOptions::adapter_name" => "WGPU_ADAPTER_NAME",
        other => other,
    }
}

/// An error as a user of the example should read it: configuration fields by their flags.
pub fn explain(e: &VaeError) -> String {
    match e {
        VaeError::Setting { fields, problem } => {
            let flags: Vec<&str> = fields.iter().map(|f| flag_for(f)).collect();
            format!("{}: {problem}", flags.join(" with "))
        }
        VaeError::RunExists { .. } => format!("{e} (--resume DIR continues it, --overwrite replaces it)"),
        VaeError::Diverged { .. } => format!("{e} (--lr sets the learning rate)"),
        VaeError::NoAdapter { .. } => {
            // A Vulkan loader told where to look for drivers finds only those.
            let set: Vec<String> = ["VK_ICD_FILENAMES", "VK_DRIVER_FILES"]
                .iter()
                .filter_map(|v| std::env::var(v).ok().map(|val| format!("{v}={val:?}")))
                .collect();
            if set.is_empty() {
                e.to_string()
            } else {
                format!(
                    "{e}. Note: {} is set, so Vulkan looks for drivers only there: check that it names an \
                     installed driver's .json, or unset it",
                    set.join(" and ")
                )
            }
        }
        other => other.to_string(),
    }
}

/// The flags that size the model, for refusals of buffers the device cannot hold.
pub const MODEL_SIZE_FLAGS: &str = "--latent/--hidden/--vq/--top/--conv (the model's sizes)";

/// Turns a buffer the device cannot hold into a refusal of the flags that size it (the library
/// names only its buffer); other errors pass as they are.
pub fn sized_by(flags: &'static str) -> impl Fn(VaeError) -> VaeError {
    move |e| match e {
        VaeError::BufferTooLarge {
            label,
            bytes,
            limit,
            limit_name,
        } => VaeError::Setting {
            fields: vec![flags],
            problem: format!(
                "buffer '{label}' would need {bytes} bytes, more than the device's {limit_name} of {limit} \
                 bytes; choose smaller values"
            ),
        },
        other => other,
    }
}

/// SIGINT and SIGTERM, caught: the training loop finishes its step, saves and exits with 130
/// or 143 (128 + the signal), the shell's convention for a process the signal ended. A second
/// signal of the same kind ends the process at once.
pub struct Signals {
    int: std::sync::Arc<std::sync::atomic::AtomicBool>,
    term: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Signals {
    /// Installs the handlers.
    pub fn install() -> vae_wgpu::Result<Self> {
        let (int, term) = (Default::default(), Default::default());
        #[cfg(unix)]
        for (sig, flag) in [
            (signal_hook::consts::SIGINT, &int),
            (signal_hook::consts::SIGTERM, &term),
        ] {
            let code = 128 + sig as u32;
            signal_hook::flag::register_conditional_shutdown(sig, code as i32, std::sync::Arc::clone(flag))
                .and_then(|_| signal_hook::flag::register(sig, std::sync::Arc::clone(flag)))
                .map_err(|e| VaeError::Config(format!("installing the signal handlers: {e}")))?;
        }
        Ok(Signals { int, term })
    }

    /// Whether a signal has come.
    pub fn raised(&self) -> bool {
        self.exit_code().is_some()
    }

    /// The exit code for the signal that came, if one did.
    pub fn exit_code(&self) -> Option<i32> {
        use std::sync::atomic::Ordering::Relaxed;
        if self.int.load(Relaxed) {
            Some(130)
        } else if self.term.load(Relaxed) {
            Some(143)
        } else {
            None
        }
    }
}

/// The checkpoint a `--checkpoint` value names: the file itself, or a run directory's
/// `checkpoint.safetensors`.
pub fn checkpoint_file(path: &std::path::Path) -> vae_wgpu::Result<std::path::PathBuf> {
    if path.is_dir() {
        let inside = path.join(vae_wgpu::run::CHECKPOINT);
        if inside.is_file() {
            return Ok(inside);
        }
        return Err(VaeError::Config(format!(
            "--checkpoint {} is a directory without a {}: name a checkpoint file, or a run \
             directory train_mnist wrote",
            path.display(),
            vae_wgpu::run::CHECKPOINT
        )));
    }
    Ok(path.to_path_buf())
}

/// Prints `e` for a user and exits with `code`.
pub fn fail(e: &VaeError, code: i32) -> ! {
    eprintln!("error: {}", explain(e));
    std::process::exit(code)
}

/// A progress bar over `len` steps on stderr, with an ETA; hidden when stderr is not a
/// terminal, so that a redirected log holds no redraws.
pub fn progress_bar(len: u64, prefix: impl Into<String>) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {elapsed} ETA {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("#>."),
    );
    bar.set_prefix(prefix.into());
    bar.enable_steady_tick(Duration::from_millis(250));
    bar
}

/// Parses a whole number of at least 1.
pub fn positive(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("{s:?} is not a whole number")),
    }
}

/// Parses a finite number ≥ 0.
pub fn non_negative(s: &str) -> Result<f32, String> {
    s.parse::<f32>()
        .ok()
        .filter(|v| *v >= 0.0 && v.is_finite())
        .ok_or_else(|| format!("{s:?} is not a finite number >= 0"))
}

/// Parses a finite number > 0.
pub fn positive_f32(s: &str) -> Result<f32, String> {
    s.parse::<f32>()
        .ok()
        .filter(|v| *v > 0.0 && v.is_finite())
        .ok_or_else(|| format!("{s:?} is not a finite number > 0"))
}

/// Parses a number of Monte Carlo or importance samples: 1 to 32,768 (the random key's
/// sample field).
pub fn samples(s: &str) -> Result<usize, String> {
    let n = positive(s)?;
    if n > vae_wgpu::train::MAX_SAMPLES {
        return Err(format!(
            "at most {} samples (the random key's sample field), got {n}",
            vae_wgpu::train::MAX_SAMPLES
        ));
    }
    Ok(n)
}

/// The image shape [C, H, W] a checkpoint's model makes: its `image_shape` metadata, else a
/// convolutional model's input, else 1×28×28 (files from before other shapes), checked
/// against the model's pixel count.
pub fn image_shape(meta: &[(String, String)], cfg: &vae_wgpu::VaeConfig) -> vae_wgpu::Result<[usize; 3]> {
    let recorded = meta.iter().find(|(k, _)| k == "image_shape").map(|(_, v)| v.as_str());
    let shape = match recorded {
        Some(v) => {
            let parts: Vec<usize> = v.split(',').filter_map(|p| p.trim().parse().ok()).collect();
            match parts[..] {
                [c, h, w] => [c, h, w],
                _ => {
                    return Err(VaeError::Config(format!(
                        "the checkpoint's image_shape {v:?} is not C,H,W"
                    )))
                }
            }
        }
        None => cfg.conv().map_or([1, 28, 28], |c| c.input),
    };
    if shape.iter().product::<usize>() != cfg.input_dim || !matches!(shape[0], 1 | 3) {
        return Err(VaeError::Config(format!(
            "the model makes {} values per image, which are not {}×{}×{} images of 1 or 3 channels",
            cfg.input_dim, shape[0], shape[1], shape[2]
        )));
    }
    Ok(shape)
}

/// Writes a grid of `count` images of `shape` [C, H, W] (grey, or colour with the channels
/// interleaved) with `cols` columns and `pad` pixels of padding.
pub fn write_grid(
    path: &std::path::Path,
    images: &[f32],
    count: usize,
    shape: [usize; 3],
    cols: usize,
    pad: usize,
) -> vae_wgpu::Result<()> {
    match shape {
        [1, h, w] => vae_wgpu::io::write_grid_png(path, images, count, h, w, cols, pad),
        [_, h, w] => vae_wgpu::io::write_colour_grid_png(path, images, count, h, w, cols, pad),
    }
}
