//! Writes a grid of new samples from a trained checkpoint:
//! `cargo run --release --example sample -- --checkpoint FILE [--out samples.png] [--n 64]
//! [--seed N] [--temperature T] [--class C]`. A conditional model draws class C, or (without
//! --class) cycles through its classes, one per grid row of 8.

mod common;

use std::path::{Path, PathBuf};

use clap::Parser;

use vae_wgpu::infer::{decode_conditional, prior_latents};
use vae_wgpu::model::Vae;
use vae_wgpu::{Gpu, Result, VaeError};

/// New images from a trained VAE's prior, written as one PNG grid.
#[derive(Parser, Debug)]
#[command(name = "sample", allow_negative_numbers = true)]
struct Args {
    /// A checkpoint written by train_mnist, or its run directory
    #[arg(long, value_name = "FILE|DIR")]
    checkpoint: PathBuf,
    /// The PNG to write, 8 images per row (its directory must exist)
    #[arg(long, value_name = "FILE", default_value = "samples.png")]
    out: PathBuf,
    /// How many samples
    #[arg(long, value_name = "N", default_value_t = 64, value_parser = common::positive)]
    n: usize,
    /// Seed of the prior draws
    #[arg(long, value_name = "N", default_value_t = 7)]
    seed: u64,
    /// Scales the prior draws' noise: z ~ N(0, T²I); in a hierarchical VAE every layer's ε
    #[arg(long, value_name = "T", default_value_t = 1.0, value_parser = common::positive_f32)]
    temperature: f32,
    /// Conditional models: draw class C (default: cycle through the classes, one per row)
    #[arg(long, value_name = "C")]
    class: Option<u32>,
}

/// Draws the samples and writes the grid.
fn run(args: Args) -> Result<()> {
    let Args {
        checkpoint,
        out,
        n,
        seed,
        temperature,
        class,
    } = args;
    let checkpoint = common::checkpoint_file(&checkpoint)?;
    refuse_overwriting_a_checkpoint(&out, &checkpoint)?;
    let gpu = Gpu::new(vae_wgpu::GpuOptions::from_env()?)?;
    // Read once: the checkpoint may be a pipe.
    let (tensors, meta) = vae_wgpu::io::read_safetensors(&checkpoint)?;
    let vae = Vae::from_checkpoint_as(&gpu, &checkpoint, &tensors, &meta, false)?;
    if !vae.config.is_vae() {
        return Err(VaeError::Config(format!(
            "{} holds a model without a prior (code {}): there is nothing to sample. \
             `cargo run --release --example explore -- --checkpoint FILE` shows its reconstructions",
            checkpoint.display(),
            vae_wgpu::model::code_name(&vae.config.code)
        )));
    }
    let shape = common::image_shape(&meta, &vae.config)?;
    let classes = vae.config.classes;
    let labels: Option<Vec<u32>> = match (classes, class) {
        (0, Some(_)) => return Err(VaeError::Config("--class needs a conditional model".into())),
        (0, None) => None,
        (c, Some(k)) if k as usize >= c => {
            return Err(VaeError::Config(format!(
                "--class {k}: the model has classes 0..{}",
                c - 1
            )))
        }
        (_, Some(k)) => Some(vec![k; n]),
        (c, None) => Some((0..n).map(|i| ((i / 8) % c) as u32).collect()),
    };
    let z = prior_latents(&gpu, &vae, seed, n, temperature, labels.as_deref()).map_err(common::sized_by("--n"))?;
    let images = decode_conditional(&gpu, &vae, &z, labels.as_deref()).map_err(common::sized_by("--n"))?;
    common::write_grid(&out, &images, n, shape, 8, 2)?;
    println!("wrote {} samples to {}", n, out.display());
    Ok(())
}

/// Refuses an --out that names a checkpoint: the one read, or any .safetensors file (a PNG
/// written there would replace a model).
fn refuse_overwriting_a_checkpoint(out: &Path, checkpoint: &Path) -> Result<()> {
    let same = match (std::fs::canonicalize(out), std::fs::canonicalize(checkpoint)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    let safetensors = out.extension().is_some_and(|e| e.eq_ignore_ascii_case("safetensors"));
    if same || safetensors {
        return Err(VaeError::Config(format!(
            "--out {} names {}: the PNG would replace a model; write the samples to a .png file",
            out.display(),
            if same {
                "the checkpoint being read"
            } else {
                "a checkpoint file"
            }
        )));
    }
    Ok(())
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        common::fail(&e, 1);
    }
}
