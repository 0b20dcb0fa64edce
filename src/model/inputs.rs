//! The inputs block: a batch from its source into x (the encoder's input and the loss's target),
//! a conditional model's one-hot labels after the pixels and after every row of draws that
//! carries them, and a denoising model's masking noise on the encoder's copy.

use crate::data::BatchSource;
use crate::error::{Result, VaeError};
use crate::gpu::{Dispatch, Gpu, Tensor};
use crate::model::block::{rows, Ctx, WorkspaceSpec};
use crate::ops;

/// Where a step's batch comes from and what is done to it before the encoder.
pub struct Inputs<'a> {
    /// The source of the batch.
    pub source: &'a dyn BatchSource,
    /// Dynamic binarization: each pixel resampled to 0 or 1 with its grey level's probability.
    pub binarize: bool,
    /// Denoising: the probability that masking noise zeroes an input pixel of the encoder
    /// (0: off); the loss still compares with the clean batch. Needs a workspace made with
    /// [`WorkspaceSpec::denoise`].
    pub denoise: f32,
}

/// The batch [B, D'] and, for a denoising model, the encoder's corrupted copy of it.
pub struct InputsWorkspace {
    /// The batch as gathered: the first D columns pixels, then (conditional) the one-hot.
    pub x: Tensor,
    /// The encoder's input when denoising (with a texture mirror where `x` has one: the first
    /// encoder layer reads it instead of `x`).
    noisy: Option<Tensor>,
    /// A conditional model's classes (0 otherwise): the one-hot's columns.
    classes: usize,
}

impl InputsWorkspace {
    /// The batch for `spec`, rows of `width` values, for a model of `classes` classes.
    pub fn new(gpu: &Gpu, spec: &WorkspaceSpec, width: usize, classes: usize) -> Result<Self> {
        let mirror = spec.mirrors && (spec.batch * width).is_multiple_of(4);
        let t = |name: &str| ops::mirrored(gpu, name, gpu.tensor(name, &[spec.batch, width])?, mirror);
        Ok(InputsWorkspace {
            x: t("x")?,
            noisy: if spec.denoise { Some(t("x_noisy")?) } else { None },
            classes,
        })
    }

    /// Every tensor it holds.
    pub fn tensors(&self) -> Vec<&Tensor> {
        std::iter::once(&self.x).chain(&self.noisy).collect()
    }
}

impl Inputs<'_> {
    /// Plans the gather into the first b rows of x, the one-hot labels into x, each of
    /// `labelled` (rows of L·b draws, with the column their label starts at) and each of
    /// `enc_labelled` (rows of the b examples inside the encoder), and the masking noise.
    /// Returns the dispatches and the encoder's input (x or its noisy copy).
    pub fn forward(
        &self,
        c: &Ctx,
        ws: &InputsWorkspace,
        labelled: &[(Tensor, usize)],
        enc_labelled: &[(Tensor, usize)],
    ) -> Result<(Vec<Dispatch>, Tensor)> {
        let x = rows(&ws.x, c.b);
        let mut d = vec![self.source.plan_gather(c.gpu, c.step, &x, self.binarize)?];
        // x's one-hot is written with each row set's (the kernel conditions both).
        for (i, (target, cols)) in labelled.iter().enumerate() {
            let label = if i == 0 { "condition" } else { "condition.top" };
            d.push(
                self.source
                    .plan_labels(c.gpu, label, c.step, ws.classes, &x, &rows(target, c.draws()), *cols)?,
            );
        }
        for (target, cols) in enc_labelled {
            d.push(self.source.plan_labels(
                c.gpu,
                "condition.encoder",
                c.step,
                ws.classes,
                &x,
                &rows(target, c.b),
                *cols,
            )?);
        }
        if self.denoise > 0.0 {
            let noisy = ws.noisy.as_ref().ok_or_else(|| {
                VaeError::Config("a denoising step needs a workspace made with WorkspaceSpec::denoise".into())
            })?;
            let noisy = rows(noisy, c.b);
            d.push(ops::corrupt(
                c.gpu,
                "corrupt",
                c.step,
                &x,
                self.source.dim(),
                self.denoise,
                &noisy,
            )?);
            d.extend(ops::refresh_mirror("x_noisy", &noisy));
            return Ok((d, noisy));
        }
        d.extend(ops::refresh_mirror("x", &x));
        Ok((d, x))
    }
}

/// The host's side of the conditioning, for inference on host vectors: rows of `width` columns: each `dim` values of `v`, then for a model with `classes` the
/// one-hot of the row's label, then zeros. `labels` is required for a conditional model and
/// refused for others; `what` names the use in the message.
pub(crate) fn labelled_rows(
    classes: usize,
    v: &[f32],
    dim: usize,
    width: usize,
    labels: Option<&[u32]>,
    what: &str,
) -> Result<Vec<f32>> {
    let n = v.len() / dim;
    let mut rows = vec![0.0f32; n * width];
    let l = match (classes, labels) {
        (0, None) => None,
        (0, Some(_)) => {
            return Err(VaeError::Config(
                "labels given, but the model is not conditional".into(),
            ))
        }
        (_, None) => {
            return Err(VaeError::Config(format!(
                "a conditional model {what} with a class label per code"
            )))
        }
        (classes, Some(l)) => {
            if l.len() != n || l.iter().any(|&c| c as usize >= classes) {
                return Err(VaeError::Shape(format!(
                    "{} labels for {n} codes, each must be below {classes}",
                    l.len()
                )));
            }
            Some(l)
        }
    };
    for (i, (row, src)) in rows.chunks_exact_mut(width).zip(v.chunks_exact(dim)).enumerate() {
        row[..dim].copy_from_slice(src);
        if let Some(l) = l {
            row[dim + l[i] as usize] = 1.0;
        }
    }
    Ok(rows)
}
