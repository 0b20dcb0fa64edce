//! The likelihood block p(x|z): Bernoulli on logits, or Gaussian on means with a fixed
//! variance, one learned log-variance, or one per pixel. Forward is one fused dispatch
//! (`loss.wgsl`): each draw's NLL and its gradient with respect to the decoder's output; a
//! learned log-variance adds the reduction of its per-element gradient in backward.

use crate::error::Result;
use crate::gpu::{Dispatch, Gpu, Tensor};
use crate::model::block::{rows, Ctx, WorkspaceSpec};
use crate::model::terms::{TermId, TermKind, TermLayout, TermRows, TermSpec};
use crate::model::VaeConfig;
use crate::nn::ArenaLayout;
use crate::ops::{self, Likelihood};

/// Arena slot name of a learned log-variance (checkpoint key `log_c`).
pub const LOG_C_SLOT: &str = "decoder.log_c";

/// The decoder's likelihood and, when learned, its log-variance's arena slot.
#[derive(Clone, Copy)]
pub struct LikelihoodBlock {
    kind: Likelihood,
    /// Pixels per example.
    input_dim: usize,
    /// Arena slot of a learned log-variance ([D] per pixel, [1] shared), started at 0 (c = 1).
    pub log_c: Option<usize>,
}

impl LikelihoodBlock {
    /// The likelihood of `cfg`, its log-variance registered when it has one.
    pub fn new(layout: &mut ArenaLayout, cfg: &VaeConfig) -> Self {
        LikelihoodBlock {
            kind: cfg.likelihood,
            input_dim: cfg.input_dim,
            log_c: cfg
                .likelihood
                .learned_log_c_len(cfg.input_dim)
                .map(|n| layout.add(LOG_C_SLOT, &[n])),
        }
    }

    /// Its workspace: the NLL terms (declared first: the reconstruction column) and a learned
    /// log-variance's per-element gradient [L·B, D].
    pub fn workspace(&self, gpu: &Gpu, spec: &WorkspaceSpec, terms: &mut TermLayout) -> Result<LikelihoodWorkspace> {
        Ok(LikelihoodWorkspace {
            block: *self,
            nll: terms.add(TermSpec::new("nll", TermKind::Nll, TermRows::PerDraw(1))),
            dlc: match self.log_c {
                Some(_) => Some(gpu.tensor("d_log_c_terms", &[spec.draws(), self.input_dim])?),
                None => None,
            },
        })
    }
}

/// The NLL terms and a learned log-variance's gradient scratch.
pub struct LikelihoodWorkspace {
    block: LikelihoodBlock,
    nll: TermId,
    dlc: Option<Tensor>,
}

impl LikelihoodWorkspace {
    /// Each draw's NLL of `x` under the decoder's `out`, and `d_out` = `draw_weight`·∂NLL/∂out
    /// (the objective's weight), its texture mirror refreshed when `train`.
    pub fn forward(
        &self,
        c: &Ctx,
        out: &Tensor,
        x: &Tensor,
        d_out: &Tensor,
        draw_weight: f32,
        train: bool,
    ) -> Result<Vec<Dispatch>> {
        let log_c = self.block.log_c.map(|slot| c.arena.param(slot));
        let dlc = self.dlc.as_ref().map(|t| rows(t, c.draws()));
        let learned = match (&log_c, &dlc) {
            (Some(log_c), Some(dlc)) => Some(ops::LearnedLogC { log_c, dlc }),
            _ => None,
        };
        let mut d = vec![ops::loss(
            c.gpu,
            "loss",
            self.block.kind,
            out,
            x,
            draw_weight,
            &c.terms.view(self.nll, c.b),
            d_out,
            learned.as_ref(),
        )?];
        // Under per-draw weights the gradient is final only in backward, which refreshes it.
        if train && c.weights.is_none() {
            d.extend(ops::refresh_mirror("loss", d_out));
        }
        Ok(d)
    }

    /// Per-draw weights (the importance-weighted bound's), applied to `d_out` and a learned
    /// log-variance's terms; then that log-variance's gradient, reduced from its terms.
    pub fn backward(&self, c: &Ctx, d_out: &Tensor) -> Result<Vec<Dispatch>> {
        let mut d = Vec::new();
        let dlc = self.dlc.as_ref().map(|t| rows(t, c.draws()));
        if let Some(w) = &c.weights {
            d.push(ops::iw_scale_rows(c.gpu, "iw.scale_d_out", c.b, c.samples, w, d_out)?);
            d.extend(ops::refresh_mirror("iw.scale_d_out", d_out));
            if let Some(dlc) = &dlc {
                d.push(ops::iw_scale_rows(c.gpu, "iw.scale_d_log_c", c.b, c.samples, w, dlc)?);
            }
        }
        if let (Some(slot), Some(dlc), Likelihood::GaussianLearned { per_pixel }) =
            (self.block.log_c, &dlc, self.block.kind)
        {
            d.push(ops::log_c_grad(
                c.gpu,
                "log_c.grad",
                per_pixel,
                dlc,
                &c.arena.grad(slot),
            )?);
        }
        Ok(d)
    }

    /// The NLL term.
    pub fn nll(&self) -> TermId {
        self.nll
    }

    /// Every tensor it holds.
    pub fn tensors(&self) -> Vec<&Tensor> {
        self.dlc.iter().collect()
    }
}
