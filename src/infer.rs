//! Inference on host vectors: decoding latent codes into images, and drawing codes from the
//! model's prior. Each call runs its own small plan and reads its result back.

use crate::error::{Result, VaeError};
use crate::gpu::Gpu;
use crate::model::block::{Ctx, WorkspaceSpec};
use crate::model::inputs::labelled_rows;
use crate::model::terms::TermLayout;
use crate::model::Vae;
use crate::ops::{Likelihood, StepBuffer};

/// Decodes latent codes `z` (n·Z values) into decoder means. A conditional model needs
/// [`decode_conditional`].
pub fn decode(gpu: &Gpu, vae: &Vae, z: &[f32]) -> Result<Vec<f32>> {
    decode_conditional(gpu, vae, z, None)
}

/// Decodes latent codes `z` (n·Z values) into decoder means, each conditioned on its class in
/// `labels` (n values) for a conditional model; `labels` must be None for other models.
pub fn decode_conditional(gpu: &Gpu, vae: &Vae, z: &[f32], labels: Option<&[u8]>) -> Result<Vec<f32>> {
    let cfg = &vae.config;
    let zd = cfg.latent;
    if z.is_empty() || !z.len().is_multiple_of(zd) {
        return Err(VaeError::Shape(format!(
            "{} latent values are not a whole number of {zd}-vectors",
            z.len()
        )));
    }
    let n = z.len() / zd;
    let width = cfg.dec_input_dim();
    check_rows(gpu, vae, n)?;
    let rows = labelled_rows(cfg.classes, z, zd, width, labels, "decodes")?;
    let zt = gpu.upload("z", &[n, width], &rows)?;
    let out = gpu.tensor("decoded", &[n, cfg.input_dim])?;
    let spec = WorkspaceSpec::eval(n, 1);
    let mut terms = TermLayout::new(n, 1);
    let ws = vae.decoder.workspace(gpu, &spec, n, &mut terms)?;
    let (terms, step) = (terms.allocate(gpu)?, StepBuffer::new(gpu)?);
    let c = Ctx {
        gpu,
        arena: &vae.arena,
        step: &step,
        terms: &terms,
        b: n,
        samples: 1,
        weights: None,
    };
    let plan = ws.forward(&c, &zt, &out)?;
    gpu.run(&plan.iter().collect::<Vec<_>>())?;
    Ok(mean_image(cfg.likelihood, &gpu.read(&out)?))
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
pub fn prior_latents(
    gpu: &Gpu,
    vae: &Vae,
    seed: u64,
    n: usize,
    temperature: f32,
    labels: Option<&[u8]>,
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
    labels: Option<&[u8]>,
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
