//! The objective block: how the terms combine into the loss and its gradient, and into the
//! metric row. The ELBO sums the reconstruction NLL (averaged over the L draws) and the KL (or
//! a code's penalties); its gradient weighs each draw's reconstruction by 1/L, and the KL by β
//! (the step uniform's `kl_beta`, which the trainer sets from its schedule; the reported
//! −ELBO always uses β = 1). Another bound (the importance-weighted one, whose gradient weighs
//! each draw by its normalized weight) is another implementation of [`Objective`].

use crate::error::Result;
use crate::gpu::{Dispatch, Tensor};
use crate::model::block::Ctx;
use crate::ops;

/// How a step's terms become its loss, gradient weights and metrics.
pub trait Objective: Send + Sync {
    /// The weight of each draw's reconstruction gradient.
    fn draw_weight(&self, samples: usize) -> f32;
    /// Plans what combines the terms after the forward pass, before any backward pass.
    fn forward(&self, _c: &Ctx) -> Result<Vec<Dispatch>> {
        Ok(Vec::new())
    }
    /// Plans this step's row of the metric log (the reconstruction and KL columns of
    /// `model/terms.rs`).
    fn metrics(&self, c: &Ctx, log: &Tensor) -> Result<Dispatch>;
}

/// The evidence lower bound with the closed-form KL (a code's penalty in its place).
pub struct Elbo;

impl Objective for Elbo {
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
