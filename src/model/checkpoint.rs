//! Checkpoints: the model's tensors in PyTorch's layout ([out, in] weights) as safetensors,
//! its configuration as string metadata.
//!
//! Keys: with one hidden layer those of the PyTorch reference model, fc1 (encoder), fc21 (μ),
//! fc22 (log σ²), fc3 and fc4 (decoder) (an autoencoder's code: fc2); otherwise enc{i}, mu,
//! logvar (or code), dec{i}, out. A learned variance adds `log_c`; a hierarchical VAE, for each
//! upper layer z_k (k = 2, 3, …), q_z{k}.{0, mu, logvar} and p_z{k−1}.{0, mu, logvar}; a
//! VQ-VAE its `codebook`. A conditional model's first encoder and decoder layers take
//! [x | one-hot | zero padding] and [z | one-hot | zero padding]: their weights keep the
//! padding columns, which multiply zeros and never change.

use std::ops::Range;
use std::path::Path;

use crate::error::{Result, VaeError};
use crate::gpu::Gpu;
use crate::io::safetensors::{read_safetensors, write_safetensors, NamedTensor};
use crate::model::{Vae, VaeConfig};
use crate::nn::{Conv2d, Linear};

/// Checkpoint key of a learned decoder log-variance.
pub const LOG_C_KEY: &str = "log_c";
/// Checkpoint key of a VQ-VAE's codebook, [K, Z/G].
pub const CODEBOOK_KEY: &str = crate::model::latent::quantized::CODEBOOK_SLOT;

/// One tensor of a checkpoint: its key and shape in the file, the arena slot holding it, and
/// for each of its values in file order the slot element that holds it. Layouts differ only
/// by such an index: a dense weight is stored [in, out] and filed [out, in], a convolution's
/// weight is stored by tap and filed [out, in, k, k], a feature map is NHWC in the model and
/// NCHW (PyTorch's flatten order) in the file.
pub(crate) struct CheckpointTensor {
    /// Key in the file.
    pub key: String,
    /// Shape in the file.
    pub shape: Vec<usize>,
    /// The arena slot.
    pub slot: usize,
    /// Slot element of each file value.
    pub index: Vec<usize>,
}

impl CheckpointTensor {
    /// A dense layer as `{key}.weight` [cols.len(), inputs.len()] and `{key}.bias`: file output
    /// o is the layer's output column `cols[o]`, file input i its input row `inputs[i]`.
    pub fn dense(key: &str, l: &Linear, cols: &[usize], inputs: &[usize]) -> [Self; 2] {
        let mut index = Vec::with_capacity(cols.len() * inputs.len());
        for &c in cols {
            index.extend(inputs.iter().map(|&i| i * l.out_features + c));
        }
        [
            CheckpointTensor {
                key: format!("{key}.weight"),
                shape: vec![cols.len(), inputs.len()],
                slot: l.w,
                index,
            },
            CheckpointTensor {
                key: format!("{key}.bias"),
                shape: vec![cols.len()],
                slot: l.b,
                index: cols.to_vec(),
            },
        ]
    }

    /// A dense layer's output columns `cols` in order, every input row in order.
    pub fn dense_range(key: &str, l: &Linear, cols: Range<usize>) -> [Self; 2] {
        Self::dense(
            key,
            l,
            &cols.collect::<Vec<_>>(),
            &(0..l.in_features).collect::<Vec<_>>(),
        )
    }

    /// A convolution's weight in PyTorch's layout, [out, in, k, k] for Conv2d and
    /// [in, out, k, k] for ConvTranspose2d (both the planned convolution's [C', C, k, k]), and
    /// its bias.
    pub fn conv(key: &str, c: &Conv2d) -> [Self; 2] {
        let (conv_in, conv_out) = if c.transposed {
            (c.out_channels, c.in_channels)
        } else {
            (c.in_channels, c.out_channels)
        };
        let taps = c.kernel * c.kernel;
        let mut index = Vec::with_capacity(conv_out * conv_in * taps);
        for o in 0..conv_out {
            for i in 0..conv_in {
                index.extend((0..taps).map(|t| (t * conv_in + i) * conv_out + o));
            }
        }
        [
            CheckpointTensor {
                key: format!("{key}.weight"),
                shape: vec![conv_out, conv_in, c.kernel, c.kernel],
                slot: c.w,
                index,
            },
            CheckpointTensor {
                key: format!("{key}.bias"),
                shape: vec![c.out_channels],
                slot: c.b,
                index: (0..c.out_channels).collect(),
            },
        ]
    }

    /// A parameter filed whole, as stored.
    pub fn whole(key: &str, slot: usize, shape: &[usize]) -> Self {
        CheckpointTensor {
            key: key.to_string(),
            shape: shape.to_vec(),
            slot,
            index: (0..shape.iter().product()).collect(),
        }
    }
}

/// Where each value of a C×H×W feature map flattened in PyTorch's order (c·H·W + y·W + x)
/// sits in the model's NHWC order ((y·W + x)·C + c); `extra` more values after it keep their
/// place (a conditional model's one-hot).
pub(crate) fn nchw_order([c, h, w]: [usize; 3], extra: usize) -> Vec<usize> {
    let plane = h * w;
    (0..c * plane)
        .map(|f| (f % plane) * c + f / plane)
        .chain(c * plane..c * plane + extra)
        .collect()
}

impl Vae {
    /// The checkpoint tensors, in file order (see the module docs).
    pub fn checkpoint_tensors(&self, gpu: &Gpu) -> Result<Vec<NamedTensor>> {
        let values = self.arena.read_params(gpu)?;
        Ok(self
            .checkpoint_layout()
            .into_iter()
            .map(|t| NamedTensor {
                data: t.index.iter().map(|&i| values[t.slot][i]).collect(),
                name: t.key,
                shape: t.shape,
            })
            .collect())
    }

    /// Every checkpoint tensor in file order: the encoder's, the decoder's, the latent's dense
    /// layers, then the parameters kept whole (the likelihood's, then the latent's).
    pub(crate) fn checkpoint_layout(&self) -> Vec<CheckpointTensor> {
        let mut out = self.encoder.checkpoint();
        out.extend(self.decoder.checkpoint());
        for (name, l, cols) in self.latent.checkpoint_pieces() {
            out.extend(CheckpointTensor::dense_range(&name, l, cols));
        }
        let slots = self.arena.layout.slots();
        let whole = self
            .likelihood
            .log_c
            .map(|s| (LOG_C_KEY, s))
            .into_iter()
            .chain(self.latent.checkpoint_slots());
        out.extend(whole.map(|(key, slot)| CheckpointTensor::whole(key, slot, &slots[slot].shape)));
        out
    }

    /// Writes the model (F32 tensors, configuration as string metadata) atomically. A model
    /// holding a value that is not finite (a diverged run) is refused, naming the tensor, so
    /// that it never replaces a good file.
    pub fn save(&self, gpu: &Gpu, path: &Path, extra: &[(String, String)]) -> Result<()> {
        let mut meta = self.config.to_metadata();
        meta.push(("format".into(), "vae-wgpu/1".into()));
        meta.extend(extra.iter().cloned());
        let tensors = self.checkpoint_tensors(gpu)?;
        if let Some((t, i)) = tensors
            .iter()
            .find_map(|t| t.data.iter().position(|x| !x.is_finite()).map(|i| (t, i)))
        {
            return Err(VaeError::Checkpoint {
                path: path.into(),
                problem: format!(
                    "not written: tensor '{}' holds {} at index {i} (the model diverged)",
                    t.name, t.data[i]
                ),
            });
        }
        write_safetensors(path, &tensors, &meta)
    }

    /// Loads a checkpoint written by [`Vae::save`], taking the configuration from its metadata.
    /// The file is read once, so a pipe (`/dev/stdin`) works.
    pub fn load(gpu: &Gpu, path: &Path) -> Result<Self> {
        let (tensors, meta) = read_safetensors(path)?;
        Self::from_checkpoint(gpu, path, &tensors, &meta)
    }

    /// Builds the model a checkpoint holds from its contents, read already with
    /// [`read_safetensors`] (for a caller that reads its metadata too, reading the file once);
    /// `path` names the file in errors. Sizes its metadata describes beyond the device's
    /// limits or the host memory budget are refused naming the file.
    pub fn from_checkpoint(gpu: &Gpu, path: &Path, tensors: &[NamedTensor], meta: &[(String, String)]) -> Result<Self> {
        Self::from_checkpoint_as(gpu, path, tensors, meta, true)
    }

    /// [`Vae::load`] for inference: the parameters alone on the device, without gradients or
    /// Adam's moments (a quarter of the arena's bytes); training it is refused.
    ///
    /// ```
    /// use vae_wgpu::{Gpu, GpuOptions, Vae, VaeConfig};
    ///
    /// # fn main() -> vae_wgpu::Result<()> {
    /// let gpu = Gpu::new(GpuOptions::default())?;
    /// let path = std::env::temp_dir().join(format!("vae-wgpu-doc-{}.safetensors", std::process::id()));
    /// Vae::new(&gpu, VaeConfig::default(), 1)?.save(&gpu, &path, &[])?;
    /// let vae = Vae::load_weights_only(&gpu, &path)?;
    /// let (params, grads, adam) = vae.arena.device_bytes();
    /// assert_eq!(params, 2_611_776); // the default model; grads and adam are placeholders
    /// assert!(grads + adam <= 48);
    /// # std::fs::remove_file(&path).ok();
    /// # Ok(())
    /// # }
    /// ```
    pub fn load_weights_only(gpu: &Gpu, path: &Path) -> Result<Self> {
        let (tensors, meta) = read_safetensors(path)?;
        Self::from_checkpoint_as(gpu, path, &tensors, &meta, false)
    }

    /// [`Vae::from_checkpoint`] with the parameters alone when `trainable` is false.
    pub fn from_checkpoint_as(
        gpu: &Gpu,
        path: &Path,
        tensors: &[NamedTensor],
        meta: &[(String, String)],
        trainable: bool,
    ) -> Result<Self> {
        let bad = |problem: String| VaeError::Checkpoint {
            path: path.into(),
            problem,
        };
        refuse_training_state(path, meta)?;
        let config = VaeConfig::from_metadata(meta).map_err(|e| bad(e.to_string()))?;
        let sizes = format!(
            "hidden {}, latent {}, code {}, top {}",
            meta_value(meta, "hidden"),
            meta_value(meta, "latent"),
            meta_value(meta, "code"),
            meta_value(meta, "top"),
        );
        let vae = Vae::build(gpu, config, 0, trainable).map_err(|e| match e {
            VaeError::BufferTooLarge {
                label,
                bytes,
                limit,
                limit_name,
            } => bad(format!(
                "its metadata describes a model too large for this device ({sizes}): buffer '{label}' would \
                 need {bytes} bytes, more than the device's {limit_name} of {limit} bytes"
            )),
            e @ VaeError::HostMemory { .. } => bad(format!(
                "its metadata describes a model too large for this machine ({sizes}): {e}"
            )),
            other => other,
        })?;
        vae.set_weights(gpu, path, tensors, meta)?;
        Ok(vae)
    }

    /// Loads weights into this model; a checkpoint of another configuration, or one holding a
    /// value that is not finite, is an error naming the difference or the tensor.
    pub fn load_weights(&self, gpu: &Gpu, path: &Path) -> Result<()> {
        let (tensors, meta) = read_safetensors(path)?;
        refuse_training_state(path, &meta)?;
        self.set_weights(gpu, path, &tensors, &meta)
    }

    /// Writes the tensors of the checkpoint `path` (read already) into this model.
    fn set_weights(&self, gpu: &Gpu, path: &Path, tensors: &[NamedTensor], meta: &[(String, String)]) -> Result<()> {
        let bad = |problem: String| VaeError::Checkpoint {
            path: path.into(),
            problem,
        };
        if let Ok(theirs) = VaeConfig::from_metadata(meta) {
            if theirs != self.config {
                return Err(bad(format!(
                    "it holds a model configured as {theirs:?}, but this model is {:?}; \
                     build the model from the checkpoint (Vae::load) or train a new one",
                    self.config
                )));
            }
        }
        // A diverged run's weights would decode to noise or to one constant image.
        for t in tensors {
            if let Some(i) = t.data.iter().position(|x| !x.is_finite()) {
                return Err(bad(format!(
                    "tensor '{}' holds {} at index {i}: the run that wrote it diverged; use a checkpoint \
                     from before that, or train again with a lower learning rate",
                    t.name, t.data[i]
                )));
            }
        }
        let layout = self.checkpoint_layout();
        if tensors.len() != layout.len() {
            return Err(bad(format!("{} tensors, expected {}", tensors.len(), layout.len())));
        }
        let mut values: Vec<Vec<f32>> = self.arena.layout.slots().iter().map(|s| vec![0.0; s.len()]).collect();
        for t in layout {
            let file = tensors
                .iter()
                .find(|f| f.name == t.key)
                .ok_or_else(|| bad(format!("missing tensor '{}'", t.key)))?;
            if file.shape != t.shape {
                return Err(bad(format!(
                    "'{}' has shape {:?}, expected {:?}",
                    t.key, file.shape, t.shape
                )));
            }
            for (&i, &v) in t.index.iter().zip(&file.data) {
                values[t.slot][i] = v;
            }
        }
        self.arena.write_params(gpu, &values)
    }
}

/// A metadata value for messages ("?" when absent).
fn meta_value<'m>(meta: &'m [(String, String)], key: &str) -> &'m str {
    meta.iter().find(|(k, _)| k == key).map_or("?", |(_, v)| v.as_str())
}

/// Refuses a training state (what `--resume` reads besides the model) given as a model.
fn refuse_training_state(path: &Path, meta: &[(String, String)]) -> Result<()> {
    if meta_value(meta, "format") == crate::train::TRAIN_STATE_FORMAT {
        return Err(VaeError::Checkpoint {
            path: path.into(),
            problem: format!(
                "it is a training state (format {}: the optimizer's moments for --resume), not a model; \
                 load the checkpoint.safetensors saved beside it, or the run directory",
                crate::train::TRAIN_STATE_FORMAT
            ),
        });
    }
    Ok(())
}
