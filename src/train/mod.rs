//! Training and evaluation loops around the planned steps: one submit per step, no readback
//! inside an epoch, metrics read once per epoch from the GPU-side log.

mod evaluator;
mod record;
mod resume;
mod schedule;
mod trainer;

pub use evaluator::{Evaluator, EVAL_BATCH};
pub use record::{rounded, settings_json, EpochRecord};
pub use resume::TRAIN_STATE_FORMAT;
pub use schedule::{KlSchedule, LrSchedule};
pub use trainer::{EpochOutcome, TrainConfig, Trainer};

pub use crate::ops::{AdamConfig, MAX_SAMPLES};

use crate::model::terms::{SLOT_KL, SLOT_RECON};
use crate::rng;

/// Per-example averages over an epoch or a dataset, in nats.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ElboStats {
    /// −ELBO = recon + KL (β = 1).
    pub loss: f64,
    /// Reconstruction NLL.
    pub recon: f64,
    /// KL(q(z|x) ‖ p(z)); for an autoencoder, its penalties (L1 on the code, contractive); for
    /// a VQ-VAE, its codebook and commitment terms.
    pub kl: f64,
    /// Examples the means are over.
    pub examples: usize,
}

impl ElboStats {
    fn from_totals(t: &[f64], examples: usize) -> Self {
        let n = examples.max(1) as f64;
        let (recon, kl) = (t[SLOT_RECON] / n, t[SLOT_KL] / n);
        ElboStats {
            loss: recon + kl,
            recon,
            kl,
            examples,
        }
    }
}

/// A VQ-VAE's codebook use over a dataset (see [`Evaluator::code_usage`]).
#[derive(Clone, Debug, PartialEq)]
pub struct CodeUsage {
    /// Entries chosen at least once.
    pub used: usize,
    /// exp of the entropy of the choices' frequencies.
    pub perplexity: f64,
    /// How often each entry was chosen.
    pub counts: Vec<u64>,
}

/// One epoch's outcome.
#[derive(Clone, Copy, Debug)]
pub struct EpochReport {
    /// Means over the epoch's training examples, as trained (with β and any binarization).
    pub train: ElboStats,
    /// Steps taken.
    pub steps: usize,
    /// Training examples per second of wall time, waiting for the GPU at the end.
    pub samples_per_sec: f64,
    /// Wall time of the epoch.
    pub seconds: f64,
    /// The KL weight at the epoch's last step.
    pub beta: f32,
}

/// The example order of training epoch `epoch` (0-based): a permutation from the host
/// generator, its purpose tag 1 + epoch.
pub(crate) fn epoch_order(seed: u64, epoch: u64, count: usize) -> Vec<u32> {
    rng::permutation(&mut rng::host_rng(seed, 1 + epoch), count)
}

/// The first `keep` columns of each `width`-wide row.
pub(crate) fn strip_columns(v: &[f32], width: usize, keep: usize) -> Vec<f32> {
    v.chunks_exact(width).flat_map(|r| r[..keep].iter().copied()).collect()
}
