//! Where a step's batch comes from. The resident byte dataset ([`crate::data::GpuDataset`]) is
//! one source; a caller's own buffer or a dataset streamed from host memory would be others:
//! the planner only asks a source for these dispatches.

use crate::error::Result;
use crate::gpu::{Dispatch, Gpu, Tensor};
use crate::ops::StepBuffer;

/// A source of batches for the step's inputs block.
pub trait BatchSource {
    /// Pixels per example.
    fn dim(&self) -> usize;
    /// Plans the gather of the step's batch (the examples from the step uniform's
    /// `batch_start` on) into the first [`BatchSource::dim`] columns of `x`'s rows, as grey
    /// levels in [0, 1] (with `binarize`, resampled to 0 or 1 with those probabilities).
    fn plan_gather(&self, gpu: &Gpu, step: &StepBuffer, x: &Tensor, binarize: bool) -> Result<Dispatch>;
    /// Plans the one-hot over `classes` columns of each batch example's label into `x`'s
    /// columns after the pixels and into each of `rows`' rows after its first `rows_dim`
    /// columns (row r takes example r mod b's label); the columns past `classes` are zero. An
    /// unlabelled source refuses.
    #[allow(clippy::too_many_arguments)]
    fn plan_labels(
        &self,
        gpu: &Gpu,
        label: &str,
        step: &StepBuffer,
        classes: usize,
        x: &Tensor,
        rows: &Tensor,
        rows_dim: usize,
    ) -> Result<Dispatch>;
}
