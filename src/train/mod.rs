//! Training and evaluation loops around the planned steps: one submit per step, no readback
//! inside an epoch, metrics read once per epoch from the GPU-side log.

mod resume;
pub mod schedule;

pub use resume::TRAIN_STATE_FORMAT;
pub use schedule::KlSchedule;

use std::time::Instant;

use crate::error::{Result, VaeError};
use crate::gpu::{Dispatch, Gpu, Tensor};
use crate::model::plan::{
    plan_inputs, plan_step, BatchSource, GpuDataset, Workspace, METRIC_SLOTS, SLOT_KL, SLOT_RECON,
};
use crate::model::{Code, Vae};
use crate::ops::{self, AdamConfig, Likelihood, StepBuffer, StepParams};
use crate::rng;

/// How to train.
#[derive(Clone, Debug)]
pub struct TrainConfig {
    /// Examples per step.
    pub batch_size: usize,
    /// The optimizer's hyper-parameters.
    pub adam: AdamConfig,
    /// Seeds the epochs' example order and the draws of ε (with the model's own seed for
    /// the initial weights).
    pub seed: u64,
    /// Drop the last partial batch of each epoch instead of training on it.
    pub drop_last: bool,
    /// Dynamic binarization of the inputs.
    pub binarize: bool,
    /// Monte Carlo samples per example.
    pub mc_samples: usize,
    /// Denoising: the probability that masking noise zeroes each input pixel of the encoder
    /// in training (0: off); the loss compares the reconstruction with the clean input.
    /// Evaluation always encodes clean inputs.
    pub denoise: f32,
    /// Weight β of the KL term in the gradient (its final value under a schedule). The
    /// reported −ELBO always uses β = 1.
    pub beta: f32,
    /// How β moves over the run.
    pub kl_schedule: KlSchedule,
    /// The run's length in epochs: cyclical annealing spreads its cycles over its
    /// T = epochs × steps-per-epoch steps (0 counts as 1).
    pub epochs: usize,
    /// A VQ-VAE's codebook by exponential moving averages with this decay γ (the VQ-VAE
    /// paper uses 0.99) instead of by its gradient; None trains it by the gradient.
    pub vq_ema: Option<f32>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            batch_size: 128,
            adam: AdamConfig::default(),
            seed: 1,
            drop_last: false,
            binarize: false,
            mc_samples: 1,
            denoise: 0.0,
            beta: 1.0,
            kl_schedule: KlSchedule::Constant,
            epochs: 1,
            vq_ema: None,
        }
    }
}

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

/// Trains a [`Vae`] on a GPU-resident dataset. All state that a resume needs is explicit:
/// the global step, the seed, the model's arena (params, grads, Adam moments).
pub struct Trainer<'g> {
    gpu: &'g Gpu,
    /// How it trains; fixed at construction.
    pub config: TrainConfig,
    data: GpuDataset,
    ws: Workspace,
    step_buf: StepBuffer,
    perm: Tensor,
    log: Tensor,
    full_plan: Vec<Dispatch>,
    last_plan: Option<(usize, Vec<Dispatch>)>,
    /// Optimizer steps taken so far.
    pub step: u64,
    /// Epochs completed.
    pub epoch: u64,
}

impl<'g> Trainer<'g> {
    /// Uploads nothing per step: plans every dispatch of a step now, for the full batch and
    /// for the epoch's last partial batch.
    pub fn new(gpu: &'g Gpu, vae: &Vae, data: GpuDataset, config: TrainConfig) -> Result<Self> {
        let b = config.batch_size;
        if b == 0 || config.mc_samples == 0 {
            return Err(VaeError::Config(
                "batch size and Monte Carlo samples must be at least 1".into(),
            ));
        }
        if config.mc_samples > ops::MAX_SAMPLES {
            return Err(VaeError::Config(format!(
                "at most {} Monte Carlo samples per example (the random key's sample field), got {}",
                ops::MAX_SAMPLES,
                config.mc_samples
            )));
        }
        if !(config.beta >= 0.0 && config.beta.is_finite()) {
            return Err(VaeError::Config(format!(
                "the KL weight beta must be a finite number >= 0, got {}",
                config.beta
            )));
        }
        if !(0.0..1.0).contains(&config.denoise) {
            return Err(VaeError::Config(format!(
                "the denoising mask probability must be in [0, 1), got {}",
                config.denoise
            )));
        }
        if !vae.config.is_vae()
            && (config.mc_samples != 1 || config.beta != 1.0 || config.kl_schedule != KlSchedule::Constant)
        {
            return Err(VaeError::Config(
                "an autoencoder or a VQ-VAE has a deterministic code and no KL term: it takes one \
                 sample per example and no β or KL schedule (its penalties are weights of the model's code)"
                    .into(),
            ));
        }
        if data.dim != vae.config.input_dim {
            return Err(VaeError::Shape(format!(
                "dataset examples have {} values, the model expects {}",
                data.dim, vae.config.input_dim
            )));
        }
        let b = b.min(data.count);
        let steps = Self::steps_for(data.count, b, config.drop_last);
        if steps == 0 {
            return Err(VaeError::Config(format!(
                "no full batch of {b} in {} examples with --drop-last",
                data.count
            )));
        }
        config.kl_schedule.validate(Self::schedule_steps(&config, steps))?;
        let mut ws = Workspace::new(gpu, vae, b, config.mc_samples, true, false)?;
        if config.denoise > 0.0 {
            ws = ws.with_noisy_input(gpu)?;
        }
        if let Some(decay) = config.vq_ema {
            // The codebook's gradient is then 0, and Adam leaves it only without weight decay.
            if config.adam.weight_decay != 0.0 {
                return Err(VaeError::Config(
                    "a codebook trained by moving averages takes no weight decay (Adam would shrink it); \
                     set weight_decay to 0"
                        .into(),
                ));
            }
            ws = ws.with_vq_ema(gpu, vae, decay)?;
            // A model trained by its gradient before keeps that gradient and momentum in the
            // arena: clear them, or Adam would go on moving the codebook.
            if let Some(slot) = vae.codebook {
                vae.arena.freeze_slot(gpu, slot)?;
            }
        }
        let step_buf = StepBuffer::new(gpu)?;
        let perm = gpu.tensor("perm", &[data.count])?;
        // The first epoch's order, so that steps recorded before any epoch (record_step,
        // train_steps) draw real batches, not example 0 in every row of a zero-filled buffer.
        gpu.write_words(&perm, &epoch_order(config.seed, 0, data.count))?;
        let log = gpu.tensor("metric_log", &[steps, METRIC_SLOTS])?;
        let src = BatchSource {
            data: &data,
            perm: &perm,
            binarize: config.binarize,
            denoise: config.denoise,
        };
        let full_plan = plan_step(gpu, vae, &ws, b, &src, &step_buf, &log, Some(&config.adam))?;
        let rem = data.count % b;
        let last_plan = if rem != 0 && !config.drop_last {
            Some((
                rem,
                plan_step(gpu, vae, &ws, rem, &src, &step_buf, &log, Some(&config.adam))?,
            ))
        } else {
            None
        };
        Ok(Trainer {
            gpu,
            config,
            data,
            ws,
            step_buf,
            perm,
            log,
            full_plan,
            last_plan,
            step: 0,
            epoch: 0,
        })
    }

    fn steps_for(count: usize, b: usize, drop_last: bool) -> usize {
        if drop_last {
            count / b
        } else {
            count.div_ceil(b)
        }
    }

    fn schedule_steps(config: &TrainConfig, steps_per_epoch: usize) -> u64 {
        (config.epochs.max(1) * steps_per_epoch) as u64
    }

    /// The KL weight used at global step `step` (0-based).
    pub fn beta_at(&self, step: u64) -> f32 {
        let t = Self::schedule_steps(&self.config, self.steps_per_epoch());
        self.config.kl_schedule.beta_at(self.config.beta, step, t)
    }

    /// Steps per epoch.
    pub fn steps_per_epoch(&self) -> usize {
        Self::steps_for(self.data.count, self.ws.batch, self.config.drop_last)
    }

    /// Kernel dispatches in one full-batch training step.
    pub fn dispatches_per_step(&self) -> usize {
        self.full_plan.iter().filter(|d| !d.is_copy()).count()
    }

    /// Copies into texture mirrors in one full-batch training step.
    pub fn mirror_copies_per_step(&self) -> usize {
        self.full_plan.iter().filter(|d| d.is_copy()).count()
    }

    /// The full-batch step's dispatches and mirror copies, in order (for profiling).
    pub fn full_plan(&self) -> &[Dispatch] {
        &self.full_plan
    }

    /// The dataset being trained on.
    pub fn data(&self) -> &GpuDataset {
        &self.data
    }

    /// Values of the step uniform for a step.
    fn step_params(&self, batch_start: usize, log_row: usize) -> StepParams {
        let mut p = StepParams {
            seed: rng::device_seed(self.config.seed),
            step: self.step as u32,
            batch_start: batch_start as u32,
            stream: rng::STREAM_TRAIN,
            kl_beta: self.beta_at(self.step),
            log_row: log_row as u32,
            ..Default::default()
        };
        self.config.adam.step_fields(self.step + 1, &mut p);
        p
    }

    /// Records one training step (batch `batch_index` of the current epoch order) into
    /// `encoder`, among a host application's own commands, and advances the step count.
    /// Returns the batch's examples. Submit the encoder before recording the next step: the
    /// step's uniform is written with `queue.write_buffer`, which lands at the next submit.
    pub fn record_step(&mut self, encoder: &mut wgpu::CommandEncoder, batch_index: usize) -> Result<usize> {
        let steps = self.steps_per_epoch();
        if batch_index >= steps {
            return Err(VaeError::Config(format!(
                "batch {batch_index} does not exist: an epoch has {steps} batches (0..{steps})"
            )));
        }
        let b = self.ws.batch;
        let start = batch_index * b;
        let plan = match &self.last_plan {
            Some((_, plan)) if start + b > self.data.count => plan,
            _ => &self.full_plan,
        };
        let rows = (self.data.count - start).min(b);
        self.step_buf.write(self.gpu, &self.step_params(start, batch_index));
        let refs: Vec<&Dispatch> = plan.iter().collect();
        self.gpu.record(encoder, &refs);
        self.step += 1;
        Ok(rows)
    }

    /// Runs `n` training steps over the current epoch order without reading anything back
    /// (for benchmarks: the epoch's metric rows are overwritten, the step counter advances).
    pub fn train_steps(&mut self, n: usize) -> Result<()> {
        let steps = self.steps_per_epoch();
        for i in 0..n {
            let mut enc = self.gpu.ctx.device.create_command_encoder(&Default::default());
            self.record_step(&mut enc, i % steps)?;
            self.gpu.submit(enc.finish());
        }
        self.gpu.ctx.wait()
    }

    /// Bytes of the step's activations and their gradients (the planned workspace).
    pub fn workspace_bytes(&self) -> u64 {
        self.ws.bytes()
    }

    /// Device bytes of the workspace's texture mirrors.
    pub fn workspace_mirror_bytes(&self) -> u64 {
        self.ws.mirror_bytes()
    }

    /// Trains one epoch: a fresh permutation uploaded once, one submit per step, no readback
    /// until the end. `progress(done, total)` is called after each submit.
    pub fn train_epoch(&mut self, mut progress: impl FnMut(usize, usize)) -> Result<EpochReport> {
        let t0 = Instant::now();
        // Written every epoch, the first included: `epoch` is a public field a caller may set.
        self.gpu
            .write_words(&self.perm, &epoch_order(self.config.seed, self.epoch, self.data.count))?;
        let steps = self.steps_per_epoch();
        let mut examples = 0;
        for i in 0..steps {
            let mut enc = self.gpu.ctx.device.create_command_encoder(&Default::default());
            examples += self.record_step(&mut enc, i)?;
            self.gpu.submit(enc.finish());
            // Keep the queue bounded without a per-step sync.
            if i % 32 == 31 {
                self.gpu.ctx.wait()?;
            }
            progress(i + 1, steps);
        }
        let totals = ops::read_log_totals(self.gpu, &self.log, steps)?;
        let seconds = t0.elapsed().as_secs_f64();
        self.epoch += 1;
        Ok(EpochReport {
            train: ElboStats::from_totals(&totals, examples),
            steps,
            samples_per_sec: examples as f64 / seconds,
            seconds,
            beta: self.beta_at(self.step.saturating_sub(1)),
        })
    }
}

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
    /// Holds `data` on the device, in its stored order.
    pub fn new(gpu: &'g Gpu, data: GpuDataset) -> Result<Self> {
        let order: Vec<u32> = (0..data.count as u32).collect();
        let perm = gpu.upload_words("eval_perm", &order)?;
        Ok(Evaluator {
            gpu,
            batch: EVAL_BATCH.min(data.count),
            data,
            perm,
            step_buf: StepBuffer::new(gpu)?,
        })
    }

    /// The dataset.
    pub fn data(&self) -> &GpuDataset {
        &self.data
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
        let src = BatchSource {
            data: &self.data,
            perm: &self.perm,
            binarize,
            denoise: 0.0,
        };
        let full = plan_step(self.gpu, vae, ws, b, &src, &self.step_buf, log, None)?;
        let rem = self.data.count % b;
        let last = if rem > 0 {
            Some(plan_step(self.gpu, vae, ws, rem, &src, &self.step_buf, log, None)?)
        } else {
            None
        };
        Ok((full, last))
    }

    /// Runs the evaluation plans of `ws` over the dataset in batches of `ws.batch` (the last
    /// one partial), the draws keyed by `seed`, and calls `after(rows)` once each batch's
    /// results are in `ws` (waiting for the device: evaluation reads back per batch).
    fn run_batches(
        &self,
        vae: &Vae,
        ws: &Workspace,
        seed: u64,
        binarize: bool,
        mut after: impl FnMut(usize) -> Result<()>,
    ) -> Result<()> {
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
            self.write_step(seed, i * b, i);
            self.gpu.run(&plan.iter().collect::<Vec<_>>())?;
            after(rows)?;
        }
        Ok(())
    }

    /// −ELBO per example with one draw per example (fixed evaluation key, so every epoch is
    /// measured with the same ε).
    pub fn elbo(&self, vae: &Vae, seed: u64, binarize: bool) -> Result<ElboStats> {
        let b = self.batch;
        let steps = self.data.count.div_ceil(b);
        let ws = Workspace::new(self.gpu, vae, b, 1, false, false)?;
        let log = self.gpu.tensor("eval_log", &[steps, METRIC_SLOTS])?;
        let (full, last) = self.plans(vae, &ws, b, &log, binarize)?;
        for i in 0..steps {
            let plan = if i + 1 == steps {
                last.as_ref().unwrap_or(&full)
            } else {
                &full
            };
            self.write_step(seed, i * b, i);
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
            return Err(VaeError::Config(
                "per-layer KL needs a VAE: an autoencoder's code has no prior".into(),
            ));
        }
        let ws = Workspace::new(self.gpu, vae, self.batch, 1, false, false)?;
        let mut totals = vec![0.0f64; 1 + vae.config.top.len()];
        self.run_batches(vae, &ws, seed, binarize, |rows| {
            let mut views = vec![if vae.config.top.is_empty() {
                ws.kl(rows)
            } else {
                ws.kl_rows(rows)
            }];
            views.extend((0..vae.config.top.len()).map(|k| ws.kl_top(k, rows)));
            for (total, view) in totals.iter_mut().zip(&views) {
                *total += self.gpu.read(view)?.iter().map(|&v| v as f64).sum::<f64>();
            }
            Ok(())
        })?;
        Ok(totals.into_iter().map(|t| t / self.data.count as f64).collect())
    }

    /// A VQ-VAE's codebook use on this dataset: how many of the K entries the B·G code
    /// vectors chose at least once, and the perplexity exp(−Σ_k p_k ln p_k) of the choices'
    /// frequencies p_k (K if every entry is chosen equally often, 1 if one takes all). Low use
    /// means dead entries, which the codebook's gradient or moving averages never move.
    pub fn code_usage(&self, vae: &Vae, seed: u64) -> Result<CodeUsage> {
        let Code::Quantized { codes, groups, .. } = vae.config.code else {
            return Err(VaeError::Config("codebook use needs a VQ-VAE (--vq)".into()));
        };
        let ws = Workspace::new(self.gpu, vae, self.batch, 1, false, false)?;
        let index = ws
            .vq_index
            .as_ref()
            .ok_or_else(|| VaeError::Gpu("a VQ-VAE workspace lacks its code indices".into()))?;
        let mut counts = vec![0u64; codes];
        self.run_batches(vae, &ws, seed, false, |rows| {
            for &k in &self.gpu.read(&index.reshape_prefix(&[rows * groups]))? {
                // Indices are exact small integers stored as f32.
                counts[(k as usize).min(codes - 1)] += 1;
            }
            Ok(())
        })?;
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
    pub fn iw_nll(&self, vae: &Vae, seed: u64, k: usize, binarize: bool) -> Result<f64> {
        if k == 0 || k > ops::MAX_SAMPLES {
            return Err(VaeError::Config(format!(
                "--eval-iw needs 1 <= K <= {} (the random key's sample field), got {k}",
                ops::MAX_SAMPLES
            )));
        }
        if !vae.config.is_vae() {
            return Err(VaeError::Config(
                "the importance-weighted bound needs a VAE: an autoencoder has no prior and no likelihood bound".into(),
            ));
        }
        // Decoder rows are K·B: keep them near 5000.
        let b = (5000 / k).clamp(1, self.data.count);
        let zd = vae.config.latent;
        let ws = Workspace::new(self.gpu, vae, b, k, false, true)?;
        let lr_all = ws
            .log_ratio
            .as_ref()
            .ok_or_else(|| VaeError::Gpu("workspace lacks log_ratio".into()))?;
        let mut total = 0.0f64;
        self.run_batches(vae, &ws, seed, binarize, |rows| {
            let nll = self.gpu.read(&ws.nll(rows))?;
            let lr_terms = self.gpu.read(&lr_all.reshape_prefix(&[k * rows * zd]))?;
            let mut lr: Vec<f64> = lr_terms
                .chunks_exact(zd)
                .map(|t| t.iter().map(|&v| v as f64).sum())
                .collect();
            // A hierarchical VAE's weight adds each upper layer's log p(z_k|z_{k+1}) − log
            // q(z_k|z_{k−1}) (the topmost's prior N(0, I)).
            for (t, tw) in vae.config.top.iter().zip(&ws.top) {
                let top = tw
                    .log_ratio
                    .as_ref()
                    .ok_or_else(|| VaeError::Gpu("workspace lacks an upper layer's log_ratio".into()))?;
                let terms = self.gpu.read(&top.reshape_prefix(&[k * rows * t.latent]))?;
                for (acc, row) in lr.iter_mut().zip(terms.chunks_exact(t.latent)) {
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
        })?;
        Ok(total / self.data.count as f64)
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
        let perm = self.gpu.upload_words("chosen", &order)?;
        let ws = Workspace::new(self.gpu, vae, n, 1, false, false)?;
        let log = self.gpu.tensor("recon_log", &[1, METRIC_SLOTS])?;
        let src = BatchSource {
            data: &self.data,
            perm: &perm,
            binarize: false,
            denoise: 0.0,
        };
        let plan = plan_step(self.gpu, vae, &ws, n, &src, &self.step_buf, &log, None)?;
        self.write_step(seed, 0, 0);
        self.gpu.run(&plan.iter().collect::<Vec<_>>())?;
        let x = strip_columns(&self.gpu.read(&ws.x)?, vae.config.enc_input_dim(), vae.config.input_dim);
        let out = self.gpu.read(&ws.out)?;
        Ok((x, mean_image(vae.config.likelihood, &out)))
    }

    /// The posterior means μ(x) of every example (an autoencoder: its codes), n·Z values in
    /// dataset order: only the batch inputs and the encoder run.
    pub fn encode_means(&self, vae: &Vae, seed: u64) -> Result<Vec<f32>> {
        let b = self.batch;
        let steps = self.data.count.div_ceil(b);
        let ws = Workspace::new(self.gpu, vae, b, 1, false, false)?;
        let src = BatchSource {
            data: &self.data,
            perm: &self.perm,
            binarize: false,
            denoise: 0.0,
        };
        let plan = |rows: usize| -> Result<Vec<Dispatch>> {
            let (mut d, x) = plan_inputs(self.gpu, vae, &ws, rows, &src, &self.step_buf)?;
            let hidden: Vec<Tensor> = ws
                .enc_hidden
                .iter()
                .map(|t| t.reshape_prefix(&[rows, t.shape()[1]]))
                .collect();
            let enc = ws.enc.reshape_prefix(&[rows, vae.config.head_width()]);
            d.extend(vae.plan_encode(self.gpu, &x, &hidden, &enc)?);
            Ok(d)
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
            self.write_step(seed, i * b, i);
            self.gpu.run(&list.iter().collect::<Vec<_>>())?;
            let hw = vae.config.head_width();
            let enc = self.gpu.read(&ws.enc.reshape_prefix(&[rows, hw]))?;
            means.extend(strip_columns(&enc, hw, zd));
        }
        Ok(means)
    }
}

/// The example order of training epoch `epoch` (0-based): a permutation from the host
/// generator, its purpose tag 1 + epoch.
fn epoch_order(seed: u64, epoch: u64, count: usize) -> Vec<u32> {
    rng::permutation(&mut rng::host_rng(seed, 1 + epoch), count)
}

/// The first `keep` columns of each `width`-wide row.
fn strip_columns(v: &[f32], width: usize, keep: usize) -> Vec<f32> {
    v.chunks_exact(width).flat_map(|r| r[..keep].iter().copied()).collect()
}

/// Decodes latent codes `z` (n·Z values) into decoder means. A conditional model needs
/// [`decode_conditional`].
pub fn decode(gpu: &Gpu, vae: &Vae, z: &[f32]) -> Result<Vec<f32>> {
    decode_conditional(gpu, vae, z, None)
}

/// Decodes latent codes `z` (n·Z values) into decoder means, each conditioned on its class in
/// `labels` (n values) for a conditional model; `labels` must be None for other models.
pub fn decode_conditional(gpu: &Gpu, vae: &Vae, z: &[f32], labels: Option<&[u8]>) -> Result<Vec<f32>> {
    let cfg = &vae.config;
    let zd = cfg.latent;
    if z.is_empty() || !z.len().is_multiple_of(zd) {
        return Err(VaeError::Shape(format!(
            "{} latent values are not a whole number of {zd}-vectors",
            z.len()
        )));
    }
    let n = z.len() / zd;
    let width = cfg.dec_input_dim();
    let rows = labelled_rows(cfg.classes, z, zd, width, labels, "decodes")?;
    let zt = gpu.upload("z", &[n, width], &rows)?;
    let hidden = vae
        .config
        .hidden
        .iter()
        .rev()
        .map(|&h| gpu.tensor("dec_hidden", &[n, h]))
        .collect::<Result<Vec<_>>>()?;
    let out = gpu.tensor("decoded", &[n, vae.config.input_dim])?;
    let plan = vae.plan_decode(gpu, &zt, &hidden, &out)?;
    gpu.run(&plan.iter().collect::<Vec<_>>())?;
    Ok(mean_image(vae.config.likelihood, &gpu.read(&out)?))
}

/// Rows of `width` columns: each `dim` values of `v`, then for a model with `classes` the
/// one-hot of the row's label, then zeros. `labels` is required for a conditional model and
/// refused for others; `what` names the use in the message.
fn labelled_rows(
    classes: usize,
    v: &[f32],
    dim: usize,
    width: usize,
    labels: Option<&[u8]>,
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

/// Draws `n` latent codes from the prior N(0, I) scaled by `temperature` (host-side, from the
/// same counter-based generator as the device, stream [`rng::STREAM_SAMPLE`]).
pub fn prior_samples(seed: u64, n: usize, latent: usize, temperature: f32) -> Vec<f32> {
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

/// Draws `n` codes for the decoder from the model's prior, the noise scaled by `temperature`:
/// [`prior_samples`] for a one-layer model; for a hierarchical VAE, the topmost layer from
/// N(0, I) (as [`prior_samples`] draws), then each layer below from its conditional prior by
/// [`conditional_prior_draws`]. `labels` (n classes) is needed exactly when those priors are
/// conditional, p(z₁|z₂, y); a one-layer model's prior ignores the label, so there it may be
/// given or not.
pub fn prior_latents(
    gpu: &Gpu,
    vae: &Vae,
    seed: u64,
    n: usize,
    temperature: f32,
    labels: Option<&[u8]>,
) -> Result<Vec<f32>> {
    if n == 0 {
        return Ok(Vec::new());
    }
    match vae.config.top.last() {
        None => Ok(prior_samples(seed, n, vae.config.latent, temperature)),
        Some(t) => conditional_prior_draws(
            gpu,
            vae,
            &prior_samples(seed, n, t.latent, temperature),
            labels,
            seed,
            temperature,
        ),
    }
}

/// A hierarchical VAE's z₁ drawn down from the topmost layer's values `top` (n vectors): each
/// layer z_k below from p(z_k|z_{k+1}) (p(z_k|z_{k+1}, y) with one label per row in `labels` for a
/// conditional model), z_k = μₚ + σₚ·ε, the networks run on the device, ε for row e keyed
/// (seed, 0, sample word k of [`rng::STREAM_SAMPLE`], e·Z_k + j) and scaled by `temperature`.
/// n·Z values. With two layers, `top` is z₂.
pub fn conditional_prior_draws(
    gpu: &Gpu,
    vae: &Vae,
    top: &[f32],
    labels: Option<&[u8]>,
    seed: u64,
    temperature: f32,
) -> Result<Vec<f32>> {
    let cfg = &vae.config;
    let Some(t) = cfg.top.last() else {
        return Err(VaeError::Config(
            "a conditional prior p(z1|z2) needs a hierarchical VAE (--top)".into(),
        ));
    };
    if top.is_empty() || !top.len().is_multiple_of(t.latent) {
        return Err(VaeError::Shape(format!(
            "{} values are not a whole number of vectors of the top layer's {}",
            top.len(),
            t.latent
        )));
    }
    let n = top.len() / t.latent;
    let mut z = top.to_vec();
    for i in (0..cfg.top.len()).rev() {
        // z holds z_{i+2}; draw z_{i+1} from p(z_{i+1}|z_{i+2}).
        let (t, zd) = (cfg.top[i], cfg.top_below_latent(i));
        let width = cfg.top_input_dim(i);
        let rows = labelled_rows(cfg.classes, &z, t.latent, width, labels, "draws from p(z|z above, y)")?;
        let above = gpu.upload("z_above", &[n, width], &rows)?;
        let hidden = gpu.tensor("prior_hidden", &[n, t.hidden])?;
        let p_out = gpu.tensor("p_below", &[n, 2 * zd])?;
        let plan = vae.top[i].plan_prior(gpu, &vae.arena, &above, &hidden, &p_out)?;
        gpu.run(&plan.iter().collect::<Vec<_>>())?;
        let p = gpu.read(&p_out)?;
        let word = rng::stream_word(rng::STREAM_SAMPLE, i as u32 + 1);
        z = (0..n * zd)
            .map(|k| {
                let (e, j) = (k / zd, k % zd);
                let mu = p[e * 2 * zd + j] as f64;
                let lv = (p[e * 2 * zd + zd + j] as f64).clamp(ops::LOGVAR_MIN as f64, ops::LOGVAR_MAX as f64);
                let eps = rng::normal(rng::device_seed(seed), 0, word, k as u32) * temperature as f64;
                (mu + (0.5 * lv).exp() * eps) as f32
            })
            .collect();
    }
    Ok(z)
}

/// Decoder output to pixel means: sigmoid of logits (Bernoulli), the mean clamped to [0, 1]
/// (Gaussian).
pub fn mean_image(lik: Likelihood, out: &[f32]) -> Vec<f32> {
    match lik {
        Likelihood::Bernoulli => out.iter().map(|&l| 1.0 / (1.0 + (-l).exp())).collect(),
        Likelihood::Gaussian { .. } | Likelihood::GaussianLearned { .. } => {
            out.iter().map(|&m| m.clamp(0.0, 1.0)).collect()
        }
    }
}
