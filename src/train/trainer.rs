//! The trainer: one submit per training step, no readback inside an epoch, the epoch's
//! metrics read once from the GPU-side log.

use std::time::Instant;

use super::{epoch_order, ElboStats, EpochReport};
use crate::data::GpuDataset;
use crate::error::{Result, VaeError};
use crate::gpu::{Dispatch, Gpu, Tensor};
use crate::model::block::WorkspaceSpec;
use crate::model::inputs::Inputs;
use crate::model::step::plan_step;
use crate::model::terms::{METRIC_SLOTS, SLOT_RECON};
use crate::model::workspace::Workspace;
use crate::model::{Code, Objective, Vae, VaeConfig};
use crate::ops::{self, AdamConfig, StepBuffer, StepParams};
use crate::rng;
use crate::train::{KlSchedule, LrSchedule};

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
    /// Monte Carlo samples per example (the ELBO's; the importance-weighted bound draws its own
    /// K, and takes 1 here).
    pub mc_samples: usize,
    /// The bound the steps maximize: the ELBO, or the importance-weighted bound over K draws.
    pub objective: Objective,
    /// Denoising: the probability that masking noise zeroes each input pixel of the encoder
    /// in training (0: off); the loss compares the reconstruction with the clean input.
    /// Evaluation always encodes clean inputs.
    pub denoise: f32,
    /// Weight β of the KL term in the gradient (its final value under a schedule). The
    /// reported −ELBO always uses β = 1.
    pub beta: f32,
    /// How β moves over the run.
    pub kl_schedule: KlSchedule,
    /// How the learning rate moves over the epochs (a schedule of fixed length must match
    /// `epochs`).
    pub lr_schedule: LrSchedule,
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
            objective: Objective::Elbo,
            denoise: 0.0,
            beta: 1.0,
            kl_schedule: KlSchedule::Constant,
            lr_schedule: LrSchedule::Constant,
            epochs: 1,
            vq_ema: None,
        }
    }
}

impl TrainConfig {
    /// Checks the training settings and their combination with `model`, before anything is
    /// allocated; every refusal names the fields at fault.
    pub fn validate(&self, model: &VaeConfig) -> Result<()> {
        if self.batch_size == 0 {
            return Err(VaeError::setting(
                "TrainConfig::batch_size",
                "must be at least 1, got 0",
            ));
        }
        if self.mc_samples == 0 || self.mc_samples > ops::MAX_SAMPLES {
            return Err(VaeError::setting(
                "TrainConfig::mc_samples",
                format!(
                    "1 to {} Monte Carlo samples per example (the random key's sample field), got {}",
                    ops::MAX_SAMPLES,
                    self.mc_samples
                ),
            ));
        }
        if let Objective::Iwae { k } = self.objective {
            if k == 0 || k > ops::MAX_SAMPLES {
                return Err(VaeError::setting(
                    "TrainConfig::objective",
                    format!(
                        "the importance-weighted bound needs 1 to {} samples per example (the random key's \
                         sample field), got K = {k}",
                        ops::MAX_SAMPLES
                    ),
                ));
            }
            if !model.is_vae() {
                return Err(VaeError::settings(
                    &["TrainConfig::objective", "VaeConfig::code"],
                    "the importance-weighted bound needs a VAE: an autoencoder or a VQ-VAE has no prior, so \
                     no importance weights",
                ));
            }
            let elbo_only = [
                (
                    self.mc_samples != 1,
                    "TrainConfig::mc_samples",
                    "its K draws are the samples",
                ),
                (
                    self.beta != 1.0,
                    "TrainConfig::beta",
                    "a weighted KL is not part of the bound",
                ),
                (
                    self.kl_schedule != KlSchedule::Constant,
                    "TrainConfig::kl_schedule",
                    "a scheduled KL weight is not part of the bound",
                ),
            ];
            if let Some((_, field, why)) = elbo_only.iter().find(|(set, _, _)| *set) {
                return Err(VaeError::settings(
                    &[field, "TrainConfig::objective"],
                    format!("applies to the ELBO, not the importance-weighted bound: {why}"),
                ));
            }
        }
        if !(self.beta >= 0.0 && self.beta.is_finite()) {
            return Err(VaeError::setting(
                "TrainConfig::beta",
                format!("the KL weight must be a finite number >= 0, got {}", self.beta),
            ));
        }
        if !(0.0..1.0).contains(&self.denoise) {
            return Err(VaeError::setting(
                "TrainConfig::denoise",
                format!("the masking probability must be in [0, 1), got {}", self.denoise),
            ));
        }
        if !model.is_vae() {
            let vae_only = [
                (self.mc_samples != 1, "TrainConfig::mc_samples"),
                (self.beta != 1.0, "TrainConfig::beta"),
                (self.kl_schedule != KlSchedule::Constant, "TrainConfig::kl_schedule"),
            ];
            if let Some((_, field)) = vae_only.iter().find(|(set, _)| *set) {
                return Err(VaeError::settings(
                    &[field, "VaeConfig::code"],
                    "applies to a VAE; an autoencoder or a VQ-VAE has a deterministic code and no KL term \
                     (one sample per example, no β or KL schedule; its penalties are weights of the code)",
                ));
            }
        }
        self.lr_schedule.validate(self.epochs)?;
        if let Some(decay) = self.vq_ema {
            if !matches!(model.code, Code::Quantized { .. }) {
                return Err(VaeError::settings(
                    &["TrainConfig::vq_ema", "VaeConfig::code"],
                    "moving averages train a VQ-VAE's codebook; the model has none",
                ));
            }
            if !(decay > 0.0 && decay < 1.0) {
                return Err(VaeError::setting(
                    "TrainConfig::vq_ema",
                    format!("the codebook's moving-average decay must be in (0, 1), got {decay}"),
                ));
            }
            // The codebook's gradient is then 0, and Adam leaves it only without weight decay.
            if self.adam.weight_decay != 0.0 {
                return Err(VaeError::settings(
                    &["TrainConfig::vq_ema", "AdamConfig::weight_decay"],
                    "a codebook trained by moving averages takes no weight decay (Adam would shrink it); \
                     set weight_decay to 0",
                ));
            }
        }
        Ok(())
    }

    /// Draws of z per example in a training step: K under the importance-weighted bound,
    /// else `mc_samples`.
    pub fn draws(&self) -> usize {
        match self.objective {
            Objective::Iwae { k } => k,
            Objective::Elbo => self.mc_samples,
        }
    }
}

/// Trains a [`Vae`] on a GPU-resident dataset. All state that a resume needs is explicit:
/// the global step, the seed, the model's arena (params, grads, Adam moments).
///
/// The README's library example, ten epochs on MNIST (compiled, not run by the tests):
///
/// ```no_run
/// use std::path::Path;
/// use vae_wgpu::data::{DatasetKind, GpuDataset, IMAGE_PIXELS};
/// use vae_wgpu::{Evaluator, Gpu, GpuOptions, TrainConfig, Trainer, Vae, VaeConfig};
///
/// fn main() -> vae_wgpu::Result<()> {
///     let gpu = Gpu::new(GpuOptions::from_env()?)?;
///     let dir = DatasetKind::Mnist.default_dir();
///     let train = DatasetKind::Mnist.load_split(&dir, true)?;
///     let test = DatasetKind::Mnist.load_split(&dir, false)?;
///     let train = GpuDataset::upload(&gpu, "train", &train.images, train.count, IMAGE_PIXELS, train.labels.clone())?;
///     let test = GpuDataset::upload(&gpu, "test", &test.images, test.count, IMAGE_PIXELS, test.labels.clone())?;
///
///     let seed = 1;
///     let vae = Vae::new(&gpu, VaeConfig::default(), seed)?;
///     let mut trainer = Trainer::new(&gpu, &vae, train, TrainConfig::default())?;
///     let evaluator = Evaluator::new(&gpu, test)?;
///     for epoch in 1..=10 {
///         let report = trainer.train_epoch(|_done, _steps| {})?;
///         let test = evaluator.elbo(&vae, seed, false)?;
///         println!("epoch {epoch}: train -ELBO {:.2}, test -ELBO {:.2}", report.train.loss, test.loss);
///     }
///     let iw = evaluator.iw_nll(&vae, seed, 100, false, |_, _| {})?;
///     println!("test -log p(x) by importance sampling: {iw:.2}");
///     vae.save(&gpu, Path::new("vae.safetensors"), &[])
/// }
/// ```
pub struct Trainer<'g> {
    pub(super) gpu: &'g Gpu,
    /// How it trains; fixed at construction but for the learning rate ([`Trainer::set_lr`]).
    pub config: TrainConfig,
    data: GpuDataset,
    ws: Workspace,
    step_buf: StepBuffer,
    perm: Tensor,
    pub(super) log: Tensor,
    /// The model's divergence guard word (see [`crate::model::Vae`]'s arena).
    health: Tensor,
    full_plan: Vec<Dispatch>,
    last_plan: Option<(usize, Vec<Dispatch>)>,
    /// The example order of epoch `order.0` on the host (a streamed dataset's batches are
    /// gathered from it).
    order: (u64, Vec<u32>),
    /// Host time spent gathering and uploading a streamed dataset's batches.
    stream_time: std::time::Duration,
    /// When the current epoch began ([`Trainer::begin_epoch`]), at which batch and step, and
    /// the examples its steps have recorded since.
    epoch_began: (Instant, usize, u64),
    epoch_examples: usize,
    /// Optimizer steps taken so far.
    pub step: u64,
    /// Epochs completed.
    pub epoch: u64,
    /// Batches of the current epoch already trained (0 at an epoch's start; more after an
    /// interrupted epoch, which [`Trainer::train_epoch_until`] continues).
    pub batch: usize,
}

/// How a call of [`Trainer::train_epoch_until`] ended.
#[derive(Clone, Copy, Debug)]
pub enum EpochOutcome {
    /// The epoch ran to its end.
    Done(EpochReport),
    /// The stop flag was set: the epoch stopped after this many of its batches (the state
    /// [`Trainer::save_state`] writes continues it).
    Stopped {
        /// Batches of the epoch trained so far.
        batch: usize,
    },
}

impl<'g> Trainer<'g> {
    /// Uploads nothing per step: plans every dispatch of a step now, for the full batch and
    /// for the epoch's last partial batch. The configuration is checked against the model
    /// first ([`TrainConfig::validate`]).
    pub fn new(gpu: &'g Gpu, vae: &Vae, data: GpuDataset, config: TrainConfig) -> Result<Self> {
        vae.arena.refuse_weights_only("Trainer::new")?;
        config.validate(&vae.config)?;
        if data.dim != vae.config.input_dim {
            return Err(VaeError::Shape(format!(
                "dataset examples have {} values, the model expects {} (VaeConfig::input_dim)",
                data.dim, vae.config.input_dim
            )));
        }
        // Labels held on the host are checked here; a device dataset's cannot be, and a label
        // beyond the classes gives an all-zero one-hot.
        let classes = vae.config.classes;
        if let Some(&bad) = data.labels.iter().find(|&&l| classes > 0 && l as usize >= classes) {
            return Err(VaeError::Config(format!(
                "the dataset has label {bad}, but the conditional model has {classes} classes \
                 (VaeConfig::classes): labels must be below it"
            )));
        }
        let b = config.batch_size.min(data.count);
        let steps = Self::steps_for(data.count, b, config.drop_last);
        if steps == 0 {
            return Err(VaeError::settings(
                &["TrainConfig::drop_last", "TrainConfig::batch_size"],
                format!("no full batch of {b} in {} examples", data.count),
            ));
        }
        config.kl_schedule.validate(Self::schedule_steps(&config, steps))?;
        let spec = WorkspaceSpec {
            train: true,
            denoise: config.denoise > 0.0,
            vq_ema: config.vq_ema,
            iw: matches!(config.objective, Objective::Iwae { .. }),
            ..WorkspaceSpec::eval(b, config.draws())
        };
        let ws = Workspace::new(gpu, vae, &spec)?;
        let step_buf = StepBuffer::new(gpu)?;
        let perm = gpu.tensor("perm", &[data.count])?;
        // The first epoch's order, so that steps recorded before any epoch (record_step,
        // train_steps) draw real batches, not example 0 in every row of a zero-filled buffer.
        let first_order = epoch_order(config.seed, 0, data.count);
        if !data.is_streamed() {
            gpu.write_words(&perm, &first_order)?;
        }
        let log = gpu.tensor("metric_log", &[steps, METRIC_SLOTS])?;
        let batches = data.batches(&perm);
        let inputs = Inputs {
            source: &batches,
            binarize: config.binarize,
            denoise: config.denoise,
        };
        let plan = |rows| plan_step(gpu, vae, &ws, rows, &inputs, &step_buf, &log, Some(&config.adam));
        let full_plan = plan(b)?;
        let rem = data.count % b;
        let last_plan = if rem != 0 && !config.drop_last {
            Some((rem, plan(rem)?))
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
            order: (0, first_order),
            stream_time: std::time::Duration::ZERO,
            epoch_began: (Instant::now(), 0, 0),
            epoch_examples: 0,
            step: 0,
            epoch: 0,
            batch: 0,
            health: vae.arena.health.clone(),
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

    /// Sets Adam's base learning rate from the next step on, for a schedule of the caller's
    /// own (the configured [`LrSchedule`] still scales it); the rate lives in the step uniform,
    /// so no plan changes. Refuses a rate that is not finite and positive.
    pub fn set_lr(&mut self, lr: f32) -> Result<()> {
        if !(lr > 0.0 && lr.is_finite()) {
            return Err(VaeError::setting(
                "AdamConfig::lr",
                format!("the learning rate must be a finite number > 0, got {lr}"),
            ));
        }
        self.config.adam.lr = lr;
        Ok(())
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

    /// Host seconds spent gathering and uploading a streamed dataset's batches so far (0 for a
    /// resident one).
    pub fn stream_seconds(&self) -> f64 {
        self.stream_time.as_secs_f64()
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
        p.adam_lr = self.config.lr_schedule.lr_at(self.config.adam.lr, self.epoch);
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
        if self.data.is_streamed() {
            // The batch's examples into the window, and the order's entries for them pointing
            // at its rows: the gather reads what it would read from the whole dataset.
            let t0 = Instant::now();
            if self.order.0 != self.epoch {
                self.order = (self.epoch, epoch_order(self.config.seed, self.epoch, self.data.count));
            }
            self.data.fill_window(self.gpu, &self.order.1[start..start + rows])?;
            let slots: Vec<u32> = (0..rows as u32).collect();
            self.gpu.write_words_at(&self.perm, start, &slots)?;
            self.stream_time += t0.elapsed();
        }
        self.step_buf.write(self.gpu, &self.step_params(start, batch_index));
        let refs: Vec<&Dispatch> = plan.iter().collect();
        self.gpu.record(encoder, &refs);
        self.step += 1;
        self.epoch_examples += rows;
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

    /// The training workspace (its tensors and terms).
    pub fn workspace(&self) -> &Workspace {
        &self.ws
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
    /// until the end. `progress(done, total)` is called after each submit. A step whose loss
    /// or parameters are not finite makes it a [`VaeError::Diverged`] naming that step.
    pub fn train_epoch(&mut self, progress: impl FnMut(usize, usize)) -> Result<EpochReport> {
        match self.train_epoch_until(|_| false, progress)? {
            EpochOutcome::Done(report) => Ok(report),
            EpochOutcome::Stopped { batch } => Err(VaeError::Config(format!("the epoch stopped after batch {batch}"))),
        }
    }

    /// [`Trainer::train_epoch`] from batch [`Trainer::batch`] on (0, or where an interrupted
    /// epoch stopped), asking `stop(batches done)` after each step but the epoch's last: when
    /// it says so the epoch stops there, and can be saved ([`Trainer::save_state`]) and
    /// continued, bit for bit (a signal, or a periodic save inside a long epoch).
    pub fn train_epoch_until(
        &mut self,
        mut stop: impl FnMut(usize) -> bool,
        mut progress: impl FnMut(usize, usize),
    ) -> Result<EpochOutcome> {
        self.begin_epoch()?;
        let steps = self.steps_per_epoch();
        for i in self.batch..steps {
            let mut enc = self.gpu.ctx.device.create_command_encoder(&Default::default());
            self.record_step(&mut enc, i)?;
            self.gpu.submit(enc.finish());
            self.batch = i + 1;
            // Keep the queue bounded without a per-step sync.
            if i % 32 == 31 {
                self.gpu.ctx.wait()?;
            }
            progress(i + 1, steps);
            if i + 1 < steps && stop(i + 1) {
                self.gpu.ctx.wait()?;
                return Ok(EpochOutcome::Stopped { batch: i + 1 });
            }
        }
        self.end_epoch().map(EpochOutcome::Done)
    }

    /// Starts epoch [`Trainer::epoch`] (from batch [`Trainer::batch`]) for a loop the caller
    /// drives: writes the epoch's example order exactly as [`Trainer::train_epoch`] does (the
    /// host PCG64 permutation of epoch and seed, uploaded with `queue.write_buffer`; a streamed
    /// dataset's entries step by step in [`Trainer::record_step`]) and resets the divergence
    /// guard. No readback. Then [`Trainer::record_step`] each batch (submitting each encoder
    /// before the next step is recorded) and [`Trainer::end_epoch`].
    pub fn begin_epoch(&mut self) -> Result<()> {
        // Written every epoch, the first included: `epoch` is a public field a caller may set.
        self.order = (self.epoch, epoch_order(self.config.seed, self.epoch, self.data.count));
        if !self.data.is_streamed() {
            self.gpu.write_words(&self.perm, &self.order.1)?;
        }
        self.gpu.write_words(&self.health, &[ops::HEALTHY; 4])?;
        self.epoch_began = (Instant::now(), self.batch, self.step);
        self.epoch_examples = 0;
        Ok(())
    }

    /// Ends the epoch begun with [`Trainer::begin_epoch`] once all its batches are submitted:
    /// one readback of the epoch's metric rows and divergence guard (waiting for the device),
    /// its report, [`Trainer::epoch`] advanced and [`Trainer::batch`] back to 0. A step whose
    /// loss or parameters are not finite makes it a [`VaeError::Diverged`] naming that step.
    pub fn end_epoch(&mut self) -> Result<EpochReport> {
        let steps = self.steps_per_epoch();
        let (t0, first, first_step) = self.epoch_began;
        // The metric rows and the divergence guard in one readback.
        let mut words = self.gpu.read_many(&[&self.log, &self.health])?;
        let health = words.pop().unwrap_or_default();
        let rows: Vec<f32> = bytemuck::cast_slice(&words.pop().unwrap_or_default()).to_vec();
        let epoch_start = first_step - first as u64;
        check_finite(self.epoch + 1, epoch_start, &rows[..steps * METRIC_SLOTS], health[0])?;
        let mut totals = vec![0.0f64; METRIC_SLOTS];
        for row in rows.chunks_exact(METRIC_SLOTS).take(steps) {
            for (t, &x) in totals.iter_mut().zip(row) {
                *t += x as f64;
            }
        }
        let seconds = t0.elapsed().as_secs_f64();
        self.epoch += 1;
        self.batch = 0;
        let all = self.data.count
            - if self.config.drop_last {
                self.data.count % self.ws.batch
            } else {
                0
            };
        Ok(EpochReport {
            train: ElboStats::from_totals(&totals, all),
            steps,
            samples_per_sec: self.epoch_examples as f64 / seconds,
            seconds,
            beta: self.beta_at(self.step.saturating_sub(1)),
        })
    }
}

/// The divergence guard's verdict on an epoch: its metric rows (step `epoch_start + r` wrote
/// row r) and the first step whose update left a parameter non-finite (`health`, or
/// [`ops::HEALTHY`]). The earliest of the two names the step.
fn check_finite(epoch: u64, epoch_start: u64, rows: &[f32], health: u32) -> Result<()> {
    let bad_row = rows
        .chunks_exact(METRIC_SLOTS)
        .position(|r| r.iter().any(|x| !x.is_finite()));
    let from_rows = bad_row.map(|r| {
        let row = &rows[r * METRIC_SLOTS..(r + 1) * METRIC_SLOTS];
        let what = if !row[SLOT_RECON].is_finite() {
            "the reconstruction loss"
        } else {
            "the KL term (or the code's penalty)"
        };
        (epoch_start + r as u64, what)
    });
    let from_adam = (health != ops::HEALTHY).then_some((health as u64, "a parameter after Adam's update"));
    let first = match (from_rows, from_adam) {
        (Some(a), Some(b)) => Some(if b.0 <= a.0 { b } else { a }),
        (a, b) => a.or(b),
    };
    match first {
        None => Ok(()),
        Some((step, what)) => Err(VaeError::Diverged {
            epoch,
            step,
            what: what.to_string(),
        }),
    }
}
