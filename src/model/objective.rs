//! The objective block: how the terms combine into the loss and its gradient, and into the
//! metric row. Two bounds on −log p(x):
//! - the ELBO sums the reconstruction NLL (averaged over the L draws) and the KL (or a code's
//!   penalties); its gradient weighs each draw's reconstruction by 1/L, and the KL by β (the
//!   step uniform's `kl_beta`, which the trainer sets from its schedule; the reported −ELBO
//!   always uses β = 1);
//! - the importance-weighted bound (Burda et al. 2016), log (1/K) Σ_k w_k with
//!   w_k = p(x|z_k) p(z_k) / q(z_k|x) over K draws, whose gradient Σ_k w̃_k ∇ log w_k weighs each
//!   draw by its normalized weight w̃_k = w_k / Σ_j w_j. The weights are computed on the device
//!   after the forward pass (`iwae.wgsl`); the likelihood and the latent read them in backward
//!   through [`Ctx::weights`].

use crate::error::{Result, VaeError};
use crate::gpu::{Dispatch, Gpu, Tensor};
use crate::model::block::{Ctx, WorkspaceSpec};
use crate::model::terms::{TermId, TermKind, TermLayout, TermRows, TermSpec};
use crate::ops;

/// The bound a training step maximizes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Objective {
    /// The evidence lower bound, with the closed-form KL and `mc_samples` draws of z.
    #[default]
    Elbo,
    /// The importance-weighted bound over `k` draws per example (k = 1 is the ELBO with the
    /// KL sampled at the draw instead of in closed form).
    Iwae {
        /// Importance samples per example.
        k: usize,
    },
}

impl Objective {
    /// Its name in flags, metadata and `run.json`: `elbo` or `iwae`.
    pub fn name(self) -> &'static str {
        match self {
            Objective::Elbo => "elbo",
            Objective::Iwae { .. } => "iwae",
        }
    }
}

/// How a step's terms become its loss, gradient weights and metrics, for one workspace.
pub(crate) trait ObjectiveBlock: Send + Sync {
    /// The weight the loss gives each draw's reconstruction gradient.
    fn draw_weight(&self, samples: usize) -> f32;
    /// The normalized weight of each of the plan's L·b draws, which backward applies in
    /// place of `draw_weight` and β (None: the draws are weighted uniformly).
    fn weights(&self, _b: usize, _samples: usize) -> Option<Tensor> {
        None
    }
    /// Plans what combines the terms after the forward pass, before any backward pass.
    fn forward(&self, _c: &Ctx) -> Result<Vec<Dispatch>> {
        Ok(Vec::new())
    }
    /// Plans this step's row of the metric log (the reconstruction and KL columns of
    /// `model/terms.rs`).
    fn metrics(&self, c: &Ctx, log: &Tensor) -> Result<Dispatch>;
    /// Every tensor it holds.
    fn tensors(&self) -> Vec<&Tensor> {
        Vec::new()
    }
}

/// The objective block of a workspace made for `spec`; its terms are declared in `terms`.
pub(crate) fn workspace(gpu: &Gpu, spec: &WorkspaceSpec, terms: &mut TermLayout) -> Result<Box<dyn ObjectiveBlock>> {
    if !spec.iw {
        return Ok(Box::new(Elbo));
    }
    let r = spec.draws();
    Ok(Box::new(IwBound {
        gap: terms.add(TermSpec::new("iw.gap", TermKind::BoundGap, TermRows::PerExample(1))),
        lw: gpu.tensor("iw.log_weights", &[r])?,
        weights: gpu.tensor("iw.weights", &[r])?,
    }))
}

/// The evidence lower bound with the closed-form KL (a code's penalty in its place).
pub(crate) struct Elbo;

impl ObjectiveBlock for Elbo {
    /// The L draws' average: 1/L.
    fn draw_weight(&self, samples: usize) -> f32 {
        1.0 / samples as f32
    }

    /// Σ NLL / L and Σ KL (each layer's per-draw terms / L) of the batch.
    fn metrics(&self, c: &Ctx, log: &Tensor) -> Result<Dispatch> {
        let segments = c.terms.segments(c.b)?;
        ops::sum_segments(c.gpu, "metrics", c.step, c.terms.shared(), log, &segments)
    }
}

/// The importance-weighted bound: the draws' log-weights, their normalized weights, and each
/// example's gap between −bound and its mean NLL (the metric row's KL column, so that the
/// columns sum to −bound).
struct IwBound {
    gap: TermId,
    lw: Tensor,
    weights: Tensor,
}

impl IwBound {
    fn nll(c: &Ctx) -> Result<Tensor> {
        match c.terms.of_kind(TermKind::Nll).as_slice() {
            [id] => Ok(c.terms.view(*id, c.b)),
            ids => Err(VaeError::Config(format!(
                "the importance-weighted bound needs one NLL term, the workspace has {}",
                ids.len()
            ))),
        }
    }
}

impl ObjectiveBlock for IwBound {
    /// Unweighted: backward applies each draw's normalized weight.
    fn draw_weight(&self, _samples: usize) -> f32 {
        1.0
    }

    fn weights(&self, b: usize, samples: usize) -> Option<Tensor> {
        Some(self.weights.reshape_prefix(&[samples * b]))
    }

    /// log w per draw (−NLL plus every layer's log-ratio terms, z₁'s first), then the
    /// normalized weights and the gap terms.
    fn forward(&self, c: &Ctx) -> Result<Vec<Dispatch>> {
        let (b, k) = (c.b, c.samples);
        let nll = Self::nll(c)?;
        let lw = self.lw.reshape_prefix(&[k * b]);
        let ratios = c.terms.matching(|kind| matches!(kind, TermKind::LogRatio { .. }));
        if ratios.is_empty() {
            return Err(VaeError::Config(
                "the importance-weighted bound needs the latent's log-ratio terms (a VAE's workspace made \
                 with log_ratio)"
                    .into(),
            ));
        }
        let mut d = Vec::new();
        for (i, (id, _)) in ratios.iter().enumerate() {
            d.push(ops::iw_log_weights(
                c.gpu,
                "iw.log_weights",
                b,
                k,
                &nll,
                &c.terms.view(*id, b),
                &lw,
                i > 0,
            )?);
        }
        d.push(ops::iw_normalize(
            c.gpu,
            "iw.normalize",
            b,
            k,
            &nll,
            &lw,
            &self.weights.reshape_prefix(&[k * b]),
            &c.terms.view(self.gap, b),
        )?);
        Ok(d)
    }

    /// Σ NLL / K in the reconstruction column, Σ gap in the KL column: −bound in all.
    fn metrics(&self, c: &Ctx, log: &Tensor) -> Result<Dispatch> {
        let segments = c
            .terms
            .segments_where(c.b, |kind| matches!(kind, TermKind::Nll | TermKind::BoundGap))?;
        ops::sum_segments(c.gpu, "metrics", c.step, c.terms.shared(), log, &segments)
    }

    fn tensors(&self) -> Vec<&Tensor> {
        vec![&self.lw, &self.weights]
    }
}
