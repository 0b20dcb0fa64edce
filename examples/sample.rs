//! Writes a grid of new samples from a trained checkpoint:
//! `cargo run --release --example sample -- --checkpoint FILE [--out samples.png] [--n 64]
//! [--seed N] [--temperature T] [--class C]`. A conditional model draws class C, or (without
//! --class) cycles through its classes, one per grid row of 8.

use std::path::PathBuf;

use vae_wgpu::data::IMAGE_SIDE;
use vae_wgpu::infer::{decode_conditional, prior_latents};
use vae_wgpu::io::write_grid_png;
use vae_wgpu::model::Vae;
use vae_wgpu::{Gpu, Result, VaeError};

const HELP: &str = "sample: new images from a trained VAE's prior

USAGE: cargo run --release --example sample -- --checkpoint FILE [FLAGS]

  --checkpoint FILE   a checkpoint written by train_mnist
  --out FILE          the PNG to write, 8 images per row (default samples.png; its directory
                      must exist)
  --n N               how many samples (default 64)
  --seed N            seed of the prior draws (default 7)
  --temperature T     scales the prior draws' noise: z ~ N(0, T²I); in a hierarchical VAE
                      every layer's ε (default 1)
  --class C           conditional models: draw class C (default: cycle through the classes,
                      one per row)";

fn run() -> Result<()> {
    let (mut checkpoint, mut out, mut n, mut seed, mut temperature) =
        (None, PathBuf::from("samples.png"), 64usize, 7u64, 1.0f32);
    let mut class: Option<u8> = None;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--help" || flag == "-h" {
            println!("{HELP}");
            return Ok(());
        }
        let v = it
            .next()
            .ok_or_else(|| VaeError::Config(format!("{flag} needs a value")))?;
        let bad = |what: &str| VaeError::Config(format!("{flag} takes {what}, got {v:?}"));
        match flag.as_str() {
            "--checkpoint" => checkpoint = Some(PathBuf::from(&v)),
            "--out" => out = PathBuf::from(&v),
            "--n" => {
                n = v
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| bad("a positive whole number"))?
            }
            "--seed" => seed = v.parse().map_err(|_| bad("a whole number"))?,
            "--class" => class = Some(v.parse().map_err(|_| bad("a class number"))?),
            "--temperature" => {
                temperature = v
                    .parse()
                    .ok()
                    .filter(|t: &f32| *t > 0.0)
                    .ok_or_else(|| bad("a positive number"))?
            }
            _ => return Err(VaeError::Config(format!("unknown flag {flag} (see --help)"))),
        }
    }
    let checkpoint = checkpoint.ok_or_else(|| VaeError::Config("--checkpoint FILE is required".into()))?;
    let gpu = Gpu::new(vae_wgpu::GpuOptions::from_env()?)?;
    let vae = Vae::load(&gpu, &checkpoint)?;
    if !vae.config.is_vae() {
        return Err(VaeError::Config(format!(
            "{} holds a model without a prior (code {}): there is nothing to sample. \
             `cargo run --release --example explore -- --checkpoint FILE` shows its reconstructions",
            checkpoint.display(),
            vae_wgpu::model::code_name(&vae.config.code)
        )));
    }
    if vae.config.input_dim != IMAGE_SIDE * IMAGE_SIDE {
        return Err(VaeError::Config(format!(
            "the model makes {} pixels, not 28×28 images",
            vae.config.input_dim
        )));
    }
    let classes = vae.config.classes;
    let labels: Option<Vec<u8>> = match (classes, class) {
        (0, Some(_)) => return Err(VaeError::Config("--class needs a conditional model".into())),
        (0, None) => None,
        (c, Some(k)) if k as usize >= c => {
            return Err(VaeError::Config(format!(
                "--class {k}: the model has classes 0..{}",
                c - 1
            )))
        }
        (_, Some(k)) => Some(vec![k; n]),
        (c, None) => Some((0..n).map(|i| ((i / 8) % c) as u8).collect()),
    };
    let z = prior_latents(&gpu, &vae, seed, n, temperature, labels.as_deref())?;
    let images = decode_conditional(&gpu, &vae, &z, labels.as_deref())?;
    write_grid_png(&out, &images, n, IMAGE_SIDE, IMAGE_SIDE, 8, 2)?;
    println!("wrote {} samples to {}", n, out.display());
    Ok(())
}

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
