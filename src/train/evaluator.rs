//! The evaluator: −ELBO over a whole dataset, the importance-weighted bound, per-layer KL,
//! codebook use, reconstructions and posterior means. Evaluation reads back per batch where
//! its results are per example.

use std::ops::ControlFlow;

use super::{strip_columns, CodeUsage, ElboStats};
use crate::data::GpuDataset;
use crate::error::{Result, VaeError};
use crate::gpu::{Dispatch, Gpu, Tensor};
use crate::model::block::WorkspaceSpec;
use crate::model::inputs::Inputs;
use crate::model::step::{plan_encode, plan_step};
use crate::model::terms::TermRows;
use crate::model::terms::{TermKind, METRIC_SLOTS};
use crate::model::workspace::Workspace;
use crate::model::{Code, Vae};
use crate::ops::{self, StepBuffer, StepParams};
use crate::rng;

/// Evaluation: −ELBO over a whole dataset, and optionally the importance-weighted bound.
pub struct Evaluator<'g> {
    gpu: &'g Gpu,
    data: GpuDataset,
    perm: Tensor,
    step_buf: StepBuffer,
    batch: usize,
}

/// Examples per evaluation submit.
pub const EVAL_BATCH: usize = 500;

impl<'g> Evaluator<'g> {
    /// Holds `data` on the device, in its stored order. A streamed dataset
    /// ([`GpuDataset::streamed`]) is evaluated a window at a time, in batches of at most its
    /// window, with the numbers of the same data resident.
    pub fn new(gpu: &'g Gpu, data: GpuDataset) -> Result<Self> {
        let order: Vec<u32> = (0..data.count as u32).collect();
        let perm = gpu.upload_words("eval_perm", &order)?;
        Ok(Evaluator {
            gpu,
            batch: EVAL_BATCH.min(data.count).min(data.window()),
            data,
            perm,
            step_buf: StepBuffer::new(gpu)?,
        })
    }

    /// A workspace for `spec`, or for fewer examples where a tensor for that many would pass
    /// the device's buffer limits (a wide convolutional model, K draws of each example):
    /// evaluation steps through the dataset in whatever batch the workspace has.
    fn fitting_workspace(&self, vae: &Vae, spec: WorkspaceSpec) -> Result<Workspace> {
        let mut spec = spec;
        loop {
            match Workspace::new(self.gpu, vae, &spec) {
                Err(VaeError::BufferTooLarge { .. }) if spec.batch > 1 => spec.batch = spec.batch.div_ceil(2),
                other => return other,
            }
        }
    }

    /// The dataset.
    pub fn data(&self) -> &GpuDataset {
        &self.data
    }

    /// Before the batch of `rows` examples from `batch_start` on: a streamed dataset's examples
    /// into its window (and the order's entries pointing at the window's rows, so the gather
    /// reads what it would read resident), then the step uniform.
    fn begin_batch(&self, seed: u64, batch_start: usize, rows: usize, log_row: usize) -> Result<()> {
        if self.data.is_streamed() {
            let ids: Vec<u32> = (batch_start as u32..(batch_start + rows) as u32).collect();
            self.data.fill_window(self.gpu, &ids)?;
            let slots: Vec<u32> = (0..rows as u32).collect();
            self.gpu.write_words_at(&self.perm, batch_start, &slots)?;
        }
        self.write_step(seed, batch_start, log_row);
        Ok(())
    }

    fn write_step(&self, seed: u64, batch_start: usize, log_row: usize) {
        let p = StepParams {
            seed: rng::device_seed(seed),
            step: 0,
            batch_start: batch_start as u32,
            stream: rng::STREAM_EVAL,
            kl_beta: 1.0,
            log_row: log_row as u32,
            ..Default::default()
        };
        self.step_buf.write(self.gpu, &p);
    }

    /// Evaluation plans for batches of `b` and for the dataset's last partial batch.
    fn plans(
        &self,
        vae: &Vae,
        ws: &Workspace,
        b: usize,
        log: &Tensor,
        binarize: bool,
    ) -> Result<(Vec<Dispatch>, Option<Vec<Dispatch>>)> {
        let batches = self.data.batches(&self.perm);
        let inputs = Inputs {
            source: &batches,
            binarize,
            denoise: 0.0,
        };
        let full = plan_step(self.gpu, vae, ws, b, &inputs, &self.step_buf, log, None)?;
        let rem = self.data.count % b;
        let last = if rem > 0 {
            Some(plan_step(self.gpu, vae, ws, rem, &inputs, &self.step_buf, log, None)?)
        } else {
            None
        };
        Ok((full, last))
    }

    /// Runs the evaluation plans of `ws` over the dataset in batches of `ws.batch` (the last
    /// one partial), the draws keyed by `seed`, and calls `after(rows)` once each batch's
    /// results are in `ws` (waiting for the device: evaluation reads back per batch), then
    /// `progress(batches done, batches)`, which may stop the run after that batch (then the
    /// result is `Ok(false)`).
    fn run_batches(
        &self,
        vae: &Vae,
        ws: &Workspace,
        seed: u64,
        binarize: bool,
        mut after: impl FnMut(usize) -> Result<()>,
        mut progress: impl FnMut(usize, usize) -> ControlFlow<()>,
    ) -> Result<bool> {
        let b = ws.batch;
        let steps = self.data.count.div_ceil(b);
        let rem = self.data.count % b;
        let log = self.gpu.tensor("eval_batches_log", &[steps, METRIC_SLOTS])?;
        let (full, last) = self.plans(vae, ws, b, &log, binarize)?;
        for i in 0..steps {
            let (plan, rows) = if i + 1 == steps && rem > 0 {
                (last.as_ref().unwrap_or(&full), rem)
            } else {
                (&full, b)
            };
            self.begin_batch(seed, i * b, rows, i)?;
            self.gpu.run(&plan.iter().collect::<Vec<_>>())?;
            after(rows)?;
            if progress(i + 1, steps).is_break() {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// −ELBO per example with one draw per example (fixed evaluation key, so every epoch is
    /// measured with the same ε).
    pub fn elbo(&self, vae: &Vae, seed: u64, binarize: bool) -> Result<ElboStats> {
        let ws = self.fitting_workspace(vae, WorkspaceSpec::eval(self.batch, 1))?;
        let b = ws.batch;
        let steps = self.data.count.div_ceil(b);
        let log = self.gpu.tensor("eval_log", &[steps, METRIC_SLOTS])?;
        let (full, last) = self.plans(vae, &ws, b, &log, binarize)?;
        for i in 0..steps {
            let plan = if i + 1 == steps {
                last.as_ref().unwrap_or(&full)
            } else {
                &full
            };
            self.begin_batch(seed, i * b, b.min(self.data.count - i * b), i)?;
            let refs: Vec<&Dispatch> = plan.iter().collect();
            let mut enc = self.gpu.ctx.device.create_command_encoder(&Default::default());
            self.gpu.record(&mut enc, &refs);
            self.gpu.submit(enc.finish());
        }
        let totals = ops::read_log_totals(self.gpu, &log, steps)?;
        Ok(ElboStats::from_totals(&totals, self.data.count))
    }

    /// A VAE's KL per example split by stochastic layer, from z₁ up, with the draws of
    /// [`Evaluator::elbo`] (same `seed`): the layers' values add up to its `kl`. Each layer
    /// below the top of a hierarchical VAE gives its ladder term E_q[log q(z_k|·)] −
    /// log p(z_k|z_{k+1}) at the drawn values, the top (or only) layer its closed-form
    /// KL(q ‖ N(0, I)). A layer whose KL is near 0 carries no information about x (a
    /// collapsed layer). Reads every batch's terms back (evaluation only).
    pub fn layer_kl(&self, vae: &Vae, seed: u64, binarize: bool) -> Result<Vec<f64>> {
        if !vae.config.is_vae() {
            return Err(VaeError::settings(
                &["VaeConfig::code"],
                "per-layer KL needs a VAE: an autoencoder's code has no prior",
            ));
        }
        let ws = self.fitting_workspace(vae, WorkspaceSpec::eval(self.batch, 1))?;
        let layers: Vec<_> = (0..=vae.config.top().len())
            .map(|layer| ws.terms.of_kind(TermKind::Kl { layer }))
            .collect();
        let mut totals = vec![0.0f64; layers.len()];
        self.run_batches(
            vae,
            &ws,
            seed,
            binarize,
            |rows| {
                for (total, ids) in totals.iter_mut().zip(&layers) {
                    for &id in ids {
                        *total += self
                            .gpu
                            .read(&ws.terms.view(id, rows))?
                            .iter()
                            .map(|&v| v as f64)
                            .sum::<f64>();
                    }
                }
                Ok(())
            },
            |_, _| ControlFlow::Continue(()),
        )?;
        Ok(totals.into_iter().map(|t| t / self.data.count as f64).collect())
    }

    /// A VQ-VAE's codebook use on this dataset: how many of the K entries the B·G code
    /// vectors chose at least once, and the perplexity exp(−Σ_k p_k ln p_k) of the choices'
    /// frequencies p_k (K if every entry is chosen equally often, 1 if one takes all). Low use
    /// means dead entries, which the codebook's gradient or moving averages never move.
    pub fn code_usage(&self, vae: &Vae, seed: u64) -> Result<CodeUsage> {
        let Code::Quantized { codes, groups, .. } = vae.config.code else {
            return Err(VaeError::settings(
                &["VaeConfig::code"],
                "codebook use needs a VQ-VAE (Code::Quantized)",
            ));
        };
        let ws = self.fitting_workspace(vae, WorkspaceSpec::eval(self.batch, 1))?;
        let index = ws.latent_output("vq.index")?;
        let mut counts = vec![0u64; codes];
        self.run_batches(
            vae,
            &ws,
            seed,
            false,
            |rows| {
                for &k in &self.gpu.read(&index.reshape_prefix(&[rows * groups]))? {
                    // Indices are exact small integers stored as f32.
                    counts[(k as usize).min(codes - 1)] += 1;
                }
                Ok(())
            },
            |_, _| ControlFlow::Continue(()),
        )?;
        let total = counts.iter().sum::<u64>() as f64;
        let entropy: f64 = counts
            .iter()
            .filter(|&&c| c > 0)
            .map(|&c| {
                let p = c as f64 / total;
                -p * p.ln()
            })
            .sum();
        Ok(CodeUsage {
            used: counts.iter().filter(|&&c| c > 0).count(),
            perplexity: entropy.exp(),
            counts,
        })
    }

    /// Importance-weighted estimate of −log p(x) per example with `k` draws:
    /// −log (1/K) Σ_k p(x|z_k) p(z_k) / q(z_k|x), averaged over the dataset. For a
    /// hierarchical VAE each draw is a chain (z₁, z₂, …) and its weight, with two layers,
    /// p(x|z₁) p(z₁|z₂) p(z₂) / (q(z₁|x) q(z₂|z₁)), and so on up the layers.
    /// `progress(batches done, batches)` is called after each batch.
    pub fn iw_nll(
        &self,
        vae: &Vae,
        seed: u64,
        k: usize,
        binarize: bool,
        mut progress: impl FnMut(usize, usize),
    ) -> Result<f64> {
        let all = self.iw_nll_until(vae, seed, k, binarize, |done, total| {
            progress(done, total);
            ControlFlow::Continue(())
        })?;
        all.ok_or_else(|| VaeError::Gpu("the importance-weighted estimate stopped unasked".into()))
    }

    /// [`Evaluator::iw_nll`] that can be stopped between batches (a long estimate, K in the
    /// thousands, takes minutes): `progress(batches done, batches)` is called after each
    /// batch and returns [`ControlFlow::Break`] to stop there; the result is then `None`.
    pub fn iw_nll_until(
        &self,
        vae: &Vae,
        seed: u64,
        k: usize,
        binarize: bool,
        progress: impl FnMut(usize, usize) -> ControlFlow<()>,
    ) -> Result<Option<f64>> {
        if k == 0 || k > ops::MAX_SAMPLES {
            return Err(VaeError::setting(
                "Evaluator::iw_nll k",
                format!(
                    "needs 1 <= K <= {} importance samples (the random key's sample field), got {k}",
                    ops::MAX_SAMPLES
                ),
            ));
        }
        if !vae.config.is_vae() {
            return Err(VaeError::setting(
                "VaeConfig::code",
                "the importance-weighted bound needs a VAE: an autoencoder or a VQ-VAE has no prior and no \
                 likelihood bound",
            ));
        }
        // Decoder rows are K·B: keep them near 5000.
        let b = (5000 / k).clamp(1, self.data.count.min(self.data.window()));
        let spec = WorkspaceSpec {
            log_ratio: true,
            ..WorkspaceSpec::eval(b, k)
        };
        let ws = self.fitting_workspace(vae, spec)?;
        // Each layer's log p(z_k|z_{k+1}) − log q(z_k|z_{k−1}) terms (the topmost's prior
        // N(0, I)), from z₁ up: a chain's log-weight adds them all.
        let ratios = ws.terms.matching(|kind| matches!(kind, TermKind::LogRatio { .. }));
        if ratios.len() != 1 + vae.config.top().len() {
            return Err(VaeError::Gpu(format!(
                "the workspace has log-ratio terms for {} layers, the model has {}",
                ratios.len(),
                1 + vae.config.top().len()
            )));
        }
        let mut total = 0.0f64;
        let done = self.run_batches(
            vae,
            &ws,
            seed,
            binarize,
            |rows| {
                let nll = self.gpu.read(&ws.nll(rows))?;
                let mut lr = vec![0.0f64; k * rows];
                for (id, spec) in &ratios {
                    let TermRows::PerDraw(width) = spec.rows else {
                        return Err(VaeError::Gpu(format!("term '{}' is not per draw", spec.name)));
                    };
                    let terms = self.gpu.read(&ws.terms.view(*id, rows))?;
                    for (acc, row) in lr.iter_mut().zip(terms.chunks_exact(width)) {
                        *acc += row.iter().map(|&v| v as f64).sum::<f64>();
                    }
                }
                for e in 0..rows {
                    let w: Vec<f64> = (0..k).map(|s| -(nll[s * rows + e] as f64) + lr[s * rows + e]).collect();
                    let m = w.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let lse = m + w.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
                    total += -(lse - (k as f64).ln());
                }
                Ok(())
            },
            progress,
        )?;
        Ok(done.then(|| total / self.data.count as f64))
    }

    /// Decoder means (probabilities for Bernoulli) of the first `n` examples' reconstructions,
    /// with the originals: (x, x̂), each n·D values.
    pub fn reconstruct(&self, vae: &Vae, seed: u64, n: usize) -> Result<(Vec<f32>, Vec<f32>)> {
        let n = n.min(self.data.count);
        let chosen: Vec<usize> = (0..n).collect();
        self.reconstruct_examples(vae, seed, &chosen)
    }

    /// Reconstructions of the chosen examples (dataset indices), with the originals: (x, x̂),
    /// each n·D values in the order given.
    pub fn reconstruct_examples(&self, vae: &Vae, seed: u64, chosen: &[usize]) -> Result<(Vec<f32>, Vec<f32>)> {
        let n = chosen.len();
        if n == 0 || chosen.iter().any(|&i| i >= self.data.count) {
            return Err(VaeError::Config(format!(
                "choose 1 or more examples below {}, got {chosen:?}",
                self.data.count
            )));
        }
        let order: Vec<u32> = chosen.iter().map(|&i| i as u32).collect();
        // A streamed dataset's chosen examples go into its window, read in its row order.
        let perm = if self.data.is_streamed() {
            if n > self.data.window() {
                return Err(VaeError::Config(format!(
                    "{n} examples chosen from a dataset streamed through a window of {}: choose at most that many",
                    self.data.window()
                )));
            }
            self.data.fill_window(self.gpu, &order)?;
            self.gpu.upload_words("chosen", &(0..n as u32).collect::<Vec<_>>())?
        } else {
            self.gpu.upload_words("chosen", &order)?
        };
        let ws = Workspace::new(self.gpu, vae, &WorkspaceSpec::eval(n, 1))?;
        let log = self.gpu.tensor("recon_log", &[1, METRIC_SLOTS])?;
        let batches = self.data.batches(&perm);
        let inputs = Inputs {
            source: &batches,
            binarize: false,
            denoise: 0.0,
        };
        let mut plan = plan_step(self.gpu, vae, &ws, n, &inputs, &self.step_buf, &log, None)?;
        // The pixel means on the device, as `Inference` computes them.
        let means = self.gpu.tensor("recon_means", &[n, vae.config.input_dim])?;
        plan.push(ops::pixel_means(
            self.gpu,
            "pixel_means",
            vae.config.likelihood,
            &ws.out.reshape_prefix(&[n, vae.config.input_dim]),
            &means,
        )?);
        self.write_step(seed, 0, 0);
        self.gpu.run(&plan.iter().collect::<Vec<_>>())?;
        let x = strip_columns(
            &self.gpu.read(&ws.inputs.x)?,
            vae.config.enc_input_dim(),
            vae.config.input_dim,
        );
        Ok((x, self.gpu.read(&means)?))
    }

    /// The posterior means μ(x) of every example (an autoencoder: its codes), n·Z values in
    /// dataset order: only the batch inputs and the encoder run.
    pub fn encode_means(&self, vae: &Vae, seed: u64) -> Result<Vec<f32>> {
        let ws = self.fitting_workspace(vae, WorkspaceSpec::eval(self.batch, 1))?;
        let b = ws.batch;
        let steps = self.data.count.div_ceil(b);
        let batches = self.data.batches(&self.perm);
        let inputs = Inputs {
            source: &batches,
            binarize: false,
            denoise: 0.0,
        };
        let plan = |rows: usize| -> Result<Vec<Dispatch>> {
            Ok(plan_encode(self.gpu, vae, &ws, rows, &inputs, &self.step_buf)?.0)
        };
        let full = plan(b)?;
        let rem = self.data.count % b;
        let last = if rem > 0 { Some(plan(rem)?) } else { None };
        let zd = vae.config.latent;
        let mut means = Vec::with_capacity(self.data.count * zd);
        for i in 0..steps {
            let rows = b.min(self.data.count - i * b);
            let list = if rows < b {
                last.as_ref().unwrap_or(&full)
            } else {
                &full
            };
            self.begin_batch(seed, i * b, rows, i)?;
            self.gpu.run(&list.iter().collect::<Vec<_>>())?;
            let hw = vae.config.head_width();
            let enc = self.gpu.read(&ws.enc.reshape_prefix(&[rows, hw]))?;
            means.extend(strip_columns(&enc, hw, zd));
        }
        Ok(means)
    }
}
