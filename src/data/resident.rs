//! A byte dataset resident on the GPU, and the batches gathered from it.

use crate::data::source::BatchSource;
use crate::error::{Result, VaeError};
use crate::gpu::{Dispatch, Gpu, Tensor};
use crate::ops::{self, StepBuffer};

/// A byte dataset resident on the GPU (four pixels per u32 word), with its labels on the host
/// and, when it has labels, on the device (one u32 each, for conditional models).
pub struct GpuDataset {
    /// The pixels as bytes, four per u32 word, example after example.
    pub words: Tensor,
    /// Examples.
    pub count: usize,
    /// Pixels per example (a multiple of 4).
    pub dim: usize,
    /// One class label per example, or empty for an unlabelled dataset.
    pub labels: Vec<u8>,
    /// The labels as u32 on the device, when there are labels.
    pub labels_gpu: Option<Tensor>,
}

impl GpuDataset {
    /// Uploads `count` examples of `dim` bytes (dim a multiple of 4) and their labels (`labels`
    /// empty for an unlabelled dataset, else one per example).
    pub fn upload(gpu: &Gpu, label: &str, pixels: &[u8], count: usize, dim: usize, labels: Vec<u8>) -> Result<Self> {
        if !dim.is_multiple_of(4) || pixels.len() != count * dim || count == 0 {
            return Err(VaeError::Shape(format!(
                "{label}: {} bytes for {count} examples of {dim} pixels (dim must be a multiple of 4, count > 0)",
                pixels.len()
            )));
        }
        if !labels.is_empty() && labels.len() != count {
            return Err(VaeError::Shape(format!(
                "{label}: {} labels for {count} examples",
                labels.len()
            )));
        }
        let words: Vec<u32> = pixels
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let labels_gpu = if labels.is_empty() {
            None
        } else {
            let l: Vec<u32> = labels.iter().map(|&v| v as u32).collect();
            Some(gpu.upload_words(&format!("{label}_labels"), &l)?)
        };
        Ok(GpuDataset {
            words: gpu.upload_words(label, &words)?,
            count,
            dim,
            labels,
            labels_gpu,
        })
    }

    /// The batches of this dataset taken in `order` (a permutation of its indices on the
    /// device, one u32 each; the step uniform's `batch_start` indexes it).
    pub fn batches<'a>(&'a self, order: &'a Tensor) -> ResidentBatches<'a> {
        ResidentBatches { data: self, order }
    }
}

/// The batches of a [`GpuDataset`] in a device-side order: the gather reads the bytes straight
/// from the resident dataset.
pub struct ResidentBatches<'a> {
    data: &'a GpuDataset,
    order: &'a Tensor,
}

impl BatchSource for ResidentBatches<'_> {
    fn dim(&self) -> usize {
        self.data.dim
    }

    fn plan_gather(&self, gpu: &Gpu, step: &StepBuffer, x: &Tensor, binarize: bool) -> Result<Dispatch> {
        let d = self.data;
        ops::gather(gpu, "gather", step, &d.words, d.count, d.dim, self.order, x, binarize)
    }

    fn plan_labels(
        &self,
        gpu: &Gpu,
        label: &str,
        step: &StepBuffer,
        x: &Tensor,
        rows: &Tensor,
        rows_dim: usize,
    ) -> Result<Dispatch> {
        let labels = self.data.labels_gpu.as_ref().ok_or_else(|| {
            VaeError::Config("a conditional model needs a labelled dataset (binarized MNIST has no labels)".into())
        })?;
        ops::condition(gpu, label, step, labels, self.order, x, self.data.dim, rows, rows_dim)
    }
}
