//! The VAE's latent: q(z|x) = N(μ, σ²) from the encoder's [μ | log σ²], L draws
//! z = μ + σ·ε per example, and KL(q ‖ N(0, I)) in closed form, weighted by β in the gradient
//! (the step uniform's `kl_beta`). One fused dispatch each way (`reparam_kl.wgsl`); ε is drawn
//! again in backward from its counter-based key instead of being stored.

use crate::error::Result;
use crate::gpu::{Dispatch, Gpu, Tensor};
use crate::model::block::{Ctx, Latent, LatentWorkspace, WorkspaceSpec};
use crate::model::terms::{TermId, TermKind, TermLayout, TermRows, TermSpec};
use crate::model::VaeConfig;
use crate::nn::{Linear, ParamArena};
use crate::ops::{self, StepBuffer};
use crate::rng;

/// A Gaussian posterior of `latent` dimensions with a standard normal prior.
pub struct GaussianLatent {
    latent: usize,
}

impl GaussianLatent {
    /// The latent of `cfg` (it has no parameters of its own: the encoder's head makes μ, log σ²).
    pub fn new(cfg: &VaeConfig) -> Self {
        GaussianLatent { latent: cfg.latent }
    }
}

impl Latent for GaussianLatent {
    fn layers(&self) -> Vec<&Linear> {
        Vec::new()
    }

    fn init(&self, _rng: &mut rand_pcg::Pcg64Mcg, _values: &mut [Vec<f32>]) {}

    /// N(0, I) scaled by `temperature`, drawn on the host (a conditional VAE's prior ignores
    /// the label).
    fn sample_prior(
        &self,
        _gpu: &Gpu,
        _arena: &ParamArena,
        seed: u64,
        n: usize,
        temperature: f32,
        _labels: Option<&[u32]>,
    ) -> Result<Vec<f32>> {
        Ok(standard_normals(seed, n, self.latent, temperature))
    }

    fn plan_prior_draws(
        &self,
        gpu: &Gpu,
        _arena: &ParamArena,
        step: &StepBuffer,
        temperature: f32,
        _labels: Option<&Tensor>,
        _order: &Tensor,
        z: &Tensor,
    ) -> Result<(Vec<Dispatch>, Vec<Tensor>)> {
        let d = ops::prior_draw(gpu, "prior.z1", step, None, self.latent, temperature, 0, z)?;
        Ok((vec![d], Vec::new()))
    }

    fn workspace(
        &self,
        _gpu: &Gpu,
        _arena: &ParamArena,
        spec: &WorkspaceSpec,
        terms: &mut TermLayout,
    ) -> Result<Box<dyn LatentWorkspace>> {
        let z = self.latent;
        Ok(Box::new(GaussianWorkspace {
            // The closed form: one KL per example, whatever the draws.
            kl: terms.add(TermSpec::new(
                "kl.z1",
                TermKind::Kl { layer: 0 },
                TermRows::PerExample(z),
            )),
            log_ratio: spec.log_ratio.then(|| {
                terms.add(TermSpec::new(
                    "log_ratio.z1",
                    TermKind::LogRatio { layer: 0 },
                    TermRows::PerDraw(z),
                ))
            }),
        }))
    }
}

/// The Gaussian latent's terms: the KL per example and, for importance weighting, each
/// draw's log p(z) − log q(z|x) terms.
struct GaussianWorkspace {
    kl: TermId,
    log_ratio: Option<TermId>,
}

impl LatentWorkspace for GaussianWorkspace {
    fn forward(&self, c: &Ctx, enc: &Tensor, z: &Tensor) -> Result<Vec<Dispatch>> {
        let log_ratio = self.log_ratio.map(|id| c.terms.view(id, c.b));
        Ok(vec![ops::reparam_kl_forward(
            c.gpu,
            "reparam_kl.forward",
            c.step,
            enc,
            c.samples,
            z,
            &c.terms.view(self.kl, c.b),
            log_ratio.as_ref(),
        )?])
    }

    fn backward(&self, c: &Ctx, enc: &Tensor, _z: &Tensor, dz: &Tensor, denc: &Tensor) -> Result<Vec<Dispatch>> {
        Ok(vec![ops::reparam_kl_backward_at(
            c.gpu,
            "reparam_kl.backward",
            c.step,
            enc,
            c.samples,
            dz,
            denc,
            0,
            1.0,
            c.weights.as_ref(),
        )?])
    }

    fn tensors(&self) -> Vec<&Tensor> {
        Vec::new()
    }
}

/// `n` draws of N(0, I) in `latent` dimensions scaled by `temperature`, from the device's
/// counter-based generator evaluated on the host (stream [`rng::STREAM_SAMPLE`], sample 0).
pub(crate) fn standard_normals(seed: u64, n: usize, latent: usize, temperature: f32) -> Vec<f32> {
    (0..n * latent)
        .map(|i| {
            (rng::normal(
                rng::device_seed(seed),
                0,
                rng::stream_word(rng::STREAM_SAMPLE, 0),
                i as u32,
            ) * temperature as f64) as f32
        })
        .collect()
}
