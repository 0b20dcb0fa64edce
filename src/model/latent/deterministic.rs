//! An autoencoder's latent: the code z = head(x) itself, and the L1 penalty l1·Σ|z| of a
//! sparse autoencoder (its subgradient l1·sign(z), 0 at 0). One dispatch each way
//! (`code.wgsl`). There is no prior: no sampling, no KL, no likelihood bound.

use crate::error::{Result, VaeError};
use crate::gpu::{Dispatch, Gpu, Tensor};
use crate::model::block::{Ctx, Latent, LatentWorkspace, WorkspaceSpec};
use crate::model::terms::{TermId, TermKind, TermLayout, TermRows, TermSpec};
use crate::model::VaeConfig;
use crate::nn::{Linear, ParamArena};
use crate::ops;

/// A deterministic code of `latent` values with an L1 penalty of weight `l1` (0: none).
pub struct DeterministicCode {
    latent: usize,
    l1: f32,
}

impl DeterministicCode {
    /// The code of `cfg` with L1 weight `l1`.
    pub fn new(cfg: &VaeConfig, l1: f32) -> Self {
        DeterministicCode { latent: cfg.latent, l1 }
    }
}

impl Latent for DeterministicCode {
    fn layers(&self) -> Vec<&Linear> {
        Vec::new()
    }

    fn init(&self, _rng: &mut rand_pcg::Pcg64Mcg, _values: &mut [Vec<f32>]) {}

    fn sample_prior(
        &self,
        _gpu: &Gpu,
        _arena: &ParamArena,
        _seed: u64,
        _n: usize,
        _temperature: f32,
        _labels: Option<&[u32]>,
    ) -> Result<Vec<f32>> {
        Err(VaeError::Config(
            "an autoencoder has no prior to sample from (its code is deterministic)".into(),
        ))
    }

    fn workspace(
        &self,
        _gpu: &Gpu,
        _arena: &ParamArena,
        spec: &WorkspaceSpec,
        terms: &mut TermLayout,
    ) -> Result<Box<dyn LatentWorkspace>> {
        refuse_draws(spec, "an autoencoder's code")?;
        Ok(Box::new(CodeWorkspace {
            l1: self.l1,
            // Also written when l1 = 0 (zeros), so that a contractive penalty declared before
            // it always has a term to be summed with.
            pen: terms.add(TermSpec::new(
                "l1",
                TermKind::Penalty,
                TermRows::PerExample(self.latent),
            )),
        }))
    }
}

/// A deterministic code is one draw per example and has no importance-weighted bound.
pub(crate) fn refuse_draws(spec: &WorkspaceSpec, what: &str) -> Result<()> {
    if spec.samples != 1 || spec.log_ratio {
        return Err(VaeError::Config(format!(
            "{what} is deterministic: one sample per example, and no importance-weighted bound (it \
             has no prior); got {} samples{}",
            spec.samples,
            if spec.log_ratio { " and log-ratio terms" } else { "" }
        )));
    }
    Ok(())
}

/// The code's L1 terms.
struct CodeWorkspace {
    l1: f32,
    pen: TermId,
}

impl LatentWorkspace for CodeWorkspace {
    fn forward(&self, c: &Ctx, enc: &Tensor, z: &Tensor) -> Result<Vec<Dispatch>> {
        let pen = c.terms.view(self.pen, c.b);
        Ok(vec![ops::code_forward(c.gpu, "code.forward", enc, self.l1, z, &pen)?])
    }

    fn backward(&self, c: &Ctx, enc: &Tensor, _z: &Tensor, dz: &Tensor, denc: &Tensor) -> Result<Vec<Dispatch>> {
        Ok(vec![ops::code_backward(
            c.gpu,
            "code.backward",
            enc,
            self.l1,
            dz,
            denc,
        )?])
    }

    fn tensors(&self) -> Vec<&Tensor> {
        Vec::new()
    }
}
