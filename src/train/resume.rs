//! Exact resume: what a [`Trainer`] needs beyond the model's weights to continue a run as if
//! it had never stopped — Adam's moments, the global step (Adam's bias correction and every
//! RNG key) and the epoch (the next epoch's example order). Saved at epoch boundaries, next to
//! the model's checkpoint; resuming with the same seed and batch size gives bit-identical
//! parameters to an uninterrupted run.

use std::path::Path;

use crate::error::{Result, VaeError};
use crate::io::{read_safetensors, write_safetensors, NamedTensor};
use crate::model::terms::METRIC_SLOTS;
use crate::model::{Vae, VaeConfig};
use crate::train::Trainer;

/// The training-state tensor holding an interrupted epoch's metric rows so far.
const METRIC_ROWS: &str = "metrics.rows";

/// The `format` metadata of a training-state file.
pub const TRAIN_STATE_FORMAT: &str = "vae-wgpu-train-state/1";

impl Trainer<'_> {
    /// The codebook's moving-average decay as the state file records it ("none" without).
    fn vq_ema_name(&self) -> String {
        self.config.vq_ema.map_or("none".to_string(), |g| g.to_string())
    }

    /// The blocks' own training state (a codebook's moving averages).
    fn ema_state(&self) -> Vec<(&'static str, &crate::gpu::Tensor)> {
        self.workspace().state()
    }

    /// Writes Adam's first and second moments (the whole parameter arena, `adam.m` and
    /// `adam.v`), the step and epoch counters and, inside an interrupted epoch, its batch and
    /// its metric rows so far (`metrics.rows`) to `path`, atomically. The model's own weights
    /// go to its checkpoint ([`Vae::save`]); together they resume the run exactly.
    pub fn save_state(&self, vae: &Vae, path: &Path) -> Result<()> {
        let a = &vae.arena;
        let mut tensors = vec![
            NamedTensor {
                name: "adam.m".into(),
                shape: vec![a.m.len()],
                data: self.gpu.read(&a.m)?,
            },
            NamedTensor {
                name: "adam.v".into(),
                shape: vec![a.v.len()],
                data: self.gpu.read(&a.v)?,
            },
        ];
        for (name, t) in self.ema_state() {
            tensors.push(NamedTensor {
                name: name.into(),
                shape: t.shape().to_vec(),
                data: self.gpu.read(t)?,
            });
        }
        if self.batch > 0 {
            let rows = self.log.reshape_prefix(&[self.batch, METRIC_SLOTS]);
            tensors.push(NamedTensor {
                name: METRIC_ROWS.into(),
                shape: vec![self.batch, METRIC_SLOTS],
                data: self.gpu.read(&rows)?,
            });
        }
        let mut meta = vae.config.to_metadata();
        meta.extend([
            ("format".to_string(), TRAIN_STATE_FORMAT.to_string()),
            ("step".to_string(), self.step.to_string()),
            ("epoch".to_string(), self.epoch.to_string()),
            ("seed".to_string(), self.config.seed.to_string()),
            ("batch_size".to_string(), self.workspace().batch.to_string()),
            ("batch".to_string(), self.batch.to_string()),
            ("vq_ema".to_string(), self.vq_ema_name()),
        ]);
        write_safetensors(path, &tensors, &meta)
    }

    /// Restores what [`Trainer::save_state`] wrote: Adam's moments into `vae`'s arena, and the
    /// step and epoch counters. The file must come from a run of the same model, seed and
    /// batch size (else the data order and noise would differ from the run it continues);
    /// load the weights first with [`Vae::load`] or [`Vae::load_weights`].
    pub fn load_state(&mut self, vae: &Vae, path: &Path) -> Result<()> {
        let (tensors, meta) = read_safetensors(path)?;
        let bad = |problem: String| VaeError::Checkpoint {
            path: path.into(),
            problem,
        };
        let get = |k: &str| {
            meta.iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
                .ok_or_else(|| bad(format!("lacks the metadata '{k}'; is it a training-state file?")))
        };
        if get("format")? != TRAIN_STATE_FORMAT {
            return Err(bad(format!(
                "format '{}', expected '{TRAIN_STATE_FORMAT}'",
                get("format")?
            )));
        }
        let num = |k: &str| -> Result<u64> {
            get(k)?
                .parse()
                .map_err(|_| bad(format!("metadata '{k}' is not a whole number")))
        };
        let config = VaeConfig::from_metadata(&meta).map_err(|e| bad(e.to_string()))?;
        if config != vae.config {
            return Err(bad(format!(
                "it holds the optimizer state of a model configured as {config:?}, not {:?}",
                vae.config
            )));
        }
        let (seed, batch) = (num("seed")?, num("batch_size")? as usize);
        if seed != self.config.seed || batch != self.workspace().batch {
            return Err(bad(format!(
                "it was saved by a run with seed {seed} and batch size {batch}; this trainer has seed {} \
                 and batch size {}: resume with the run's own settings",
                self.config.seed,
                self.workspace().batch
            )));
        }
        // Older files have no "vq_ema": gradient-trained codebooks.
        let ema = meta
            .iter()
            .find(|(k, _)| k == "vq_ema")
            .map_or("none", |(_, v)| v.as_str());
        if ema != self.vq_ema_name() {
            return Err(bad(format!(
                "it was saved by a run whose codebook moving-average decay is {ema}; this trainer's is {}: \
                 resume with the run's own settings",
                self.vq_ema_name()
            )));
        }
        let a = &vae.arena;
        let mut wanted = vec![
            ("adam.m", a.m.reshape_prefix(&[a.m.len()])),
            ("adam.v", a.v.reshape_prefix(&[a.v.len()])),
        ];
        wanted.extend(self.ema_state().into_iter().map(|(n, t)| (n, t.clone())));
        // Older files have no "batch": saved at an epoch's end.
        let batch = match meta.iter().find(|(k, _)| k == "batch") {
            Some(_) => num("batch")? as usize,
            None => 0,
        };
        let steps = self.steps_per_epoch();
        if batch >= steps {
            return Err(bad(format!(
                "it stopped after batch {batch} of an epoch, but an epoch of this trainer has {steps} batches"
            )));
        }
        if batch > 0 {
            wanted.push((METRIC_ROWS, self.log.reshape_prefix(&[batch, METRIC_SLOTS])));
        }
        let known: Vec<&str> = wanted.iter().map(|(n, _)| *n).collect();
        if let Some(extra) = tensors.iter().find(|t| !known.contains(&t.name.as_str())) {
            return Err(bad(format!(
                "it holds '{}', which this trainer has no place for (a codebook trained by moving \
                 averages saves its running counts and sums: resume with the same --vq-ema)",
                extra.name
            )));
        }
        for (name, t) in &wanted {
            let found = tensors
                .iter()
                .find(|x| x.name == *name)
                .ok_or_else(|| bad(format!("missing tensor '{name}'")))?;
            if found.shape != t.shape() {
                return Err(bad(format!(
                    "'{name}' has shape {:?}, expected {:?}",
                    found.shape,
                    t.shape()
                )));
            }
            self.gpu.write(t, &found.data)?;
        }
        self.step = num("step")?;
        self.epoch = num("epoch")?;
        self.batch = batch;
        Ok(())
    }
}
