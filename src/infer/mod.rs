//! Inference: [`Inference`] records encode, decode, reconstruct and prior draws into a
//! caller's command encoder over device buffers; the functions here are host-vector
//! conveniences (decoding codes into images, drawing codes from the model's prior), each
//! running its own small plan and reading its result back.

mod device;

pub use device::{Inference, MAX_CACHED_PLANS};

use crate::error::{Result, VaeError};
use crate::gpu::Gpu;
use crate::model::Vae;
use crate::ops::Likelihood;

/// Decodes latent codes `z` (n·Z values) into decoder means. A conditional model needs
/// [`decode_conditional`].
pub fn decode(gpu: &Gpu, vae: &Vae, z: &[f32]) -> Result<Vec<f32>> {
    decode_conditional(gpu, vae, z, None)
}

/// Decodes latent codes `z` (n·Z values) into decoder means, each conditioned on its class in
/// `labels` (n values) for a conditional model; `labels` must be None for other models. The
/// host side of [`Inference::record_decode`]: the same plan and kernels, so the same bits.
pub fn decode_conditional(gpu: &Gpu, vae: &Vae, z: &[f32], labels: Option<&[u32]>) -> Result<Vec<f32>> {
    let zd = vae.config.latent;
    if z.is_empty() || !z.len().is_multiple_of(zd) {
        return Err(VaeError::Shape(format!(
            "{} latent values are not a whole number of {zd}-vectors",
            z.len()
        )));
    }
    let n = z.len() / zd;
    check_rows(gpu, vae, n)?;
    match (vae.config.classes, labels) {
        (0, Some(_)) => Err(VaeError::Config(
            "labels given, but the model is not conditional".into(),
        )),
        (c, None) if c > 0 => Err(VaeError::Config(
            "a conditional model decodes with a class label per code".into(),
        )),
        _ => Inference::new(gpu, vae)?.decode(z, labels),
    }
}

/// Draws `n` latent codes from the prior N(0, I) scaled by `temperature` (host-side, from the
/// same counter-based generator as the device, stream [`crate::rng::STREAM_SAMPLE`]).
pub fn prior_samples(seed: u64, n: usize, latent: usize, temperature: f32) -> Vec<f32> {
    crate::model::latent::gaussian::standard_normals(seed, n, latent, temperature)
}

/// Draws `n` codes for the decoder from the model's prior, the noise scaled by `temperature`:
/// [`prior_samples`] for a one-layer model; for a hierarchical VAE, the topmost layer from
/// N(0, I) (as [`prior_samples`] draws), then each layer below from its conditional prior by
/// [`conditional_prior_draws`]. `labels` (n classes) is needed exactly when those priors are
/// conditional, p(z₁|z₂, y); a one-layer model's prior ignores the label, so there it may be
/// given or not. An autoencoder or a VQ-VAE has no prior: an error.
///
/// ```
/// use vae_wgpu::infer::{decode, prior_latents};
/// use vae_wgpu::{Gpu, GpuOptions, Vae, VaeConfig};
///
/// # fn main() -> vae_wgpu::Result<()> {
/// let gpu = Gpu::new(GpuOptions::default())?;
/// let vae = Vae::new(&gpu, VaeConfig { hidden: vec![64], latent: 8, ..Default::default() }, 1)?;
/// let z = prior_latents(&gpu, &vae, 7, 16, 0.8, None)?; // 16 codes at temperature 0.8
/// let images = decode(&gpu, &vae, &z)?; // 16 × 784 pixel means in [0, 1]
/// assert_eq!(images.len(), 16 * 784);
/// assert!(images.iter().all(|p| (0.0..=1.0).contains(p)));
/// # Ok(())
/// # }
/// ```
pub fn prior_latents(
    gpu: &Gpu,
    vae: &Vae,
    seed: u64,
    n: usize,
    temperature: f32,
    labels: Option<&[u32]>,
) -> Result<Vec<f32>> {
    if n == 0 {
        return Ok(Vec::new());
    }
    check_rows(gpu, vae, n)?;
    vae.latent.sample_prior(gpu, &vae.arena, seed, n, temperature, labels)
}

/// A hierarchical VAE's z₁ drawn down from the topmost layer's values `top` (n vectors): each
/// layer z_k below from p(z_k|z_{k+1}) (p(z_k|z_{k+1}, y) with one label per row in `labels` for a
/// conditional model), z_k = μₚ + σₚ·ε, the networks run on the device, ε for row e keyed
/// (seed, 0, sample word k of [`crate::rng::STREAM_SAMPLE`], e·Z_k + j) and scaled by `temperature`.
/// n·Z values. With two layers, `top` is z₂.
pub fn conditional_prior_draws(
    gpu: &Gpu,
    vae: &Vae,
    top: &[f32],
    labels: Option<&[u32]>,
    seed: u64,
    temperature: f32,
) -> Result<Vec<f32>> {
    vae.latent.draw_down(gpu, &vae.arena, top, labels, seed, temperature)
}

/// Refuses `n` rows of decoding beyond the device's buffers and the host's memory budget,
/// before anything is allocated for them.
fn check_rows(gpu: &Gpu, vae: &Vae, n: usize) -> Result<()> {
    let cfg = &vae.config;
    let widest = cfg
        .hidden
        .iter()
        .chain(cfg.top().iter().flat_map(|t| &t.hidden))
        .chain([&cfg.input_dim, &cfg.dec_input_dim()])
        .max()
        .copied()
        .unwrap_or(cfg.input_dim) as u128;
    gpu.check_buffer(&format!("decoding {n} codes"), 4 * n as u128 * widest)?;
    // The codes, their rows for the device, the decoded values and their images.
    gpu.check_host(
        &format!("decoding {n} codes"),
        4 * n as u128 * (2 * cfg.dec_input_dim() as u128 + 2 * cfg.input_dim as u128),
    )
}

/// Decoder output to pixel means: sigmoid of logits (Bernoulli), the mean clamped to [0, 1]
/// (Gaussian).
pub fn mean_image(lik: Likelihood, out: &[f32]) -> Vec<f32> {
    match lik {
        Likelihood::Bernoulli => out.iter().map(|&l| 1.0 / (1.0 + (-l).exp())).collect(),
        Likelihood::Gaussian { .. } | Likelihood::GaussianLearned { .. } => {
            out.iter().map(|&m| m.clamp(0.0, 1.0)).collect()
        }
    }
}
