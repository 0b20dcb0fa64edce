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
use crate::nn::Linear;

/// Checkpoint key of a learned decoder log-variance.
pub const LOG_C_KEY: &str = "log_c";
/// Checkpoint key of a VQ-VAE's codebook, [K, Z/G].
pub const CODEBOOK_KEY: &str = crate::model::latent::quantized::CODEBOOK_SLOT;

impl Vae {
    /// The checkpoint tensors, in file order (see the module docs).
    pub fn checkpoint_tensors(&self, gpu: &Gpu) -> Result<Vec<NamedTensor>> {
        let values = self.arena.read_params(gpu)?;
        let mut out = Vec::new();
        for (name, l, cols) in self.pieces() {
            let (w, b) = (&values[l.w], &values[l.b]);
            let mut wt = vec![0.0f32; cols.len() * l.in_features];
            for (o, c) in cols.clone().enumerate() {
                for i in 0..l.in_features {
                    wt[o * l.in_features + i] = w[i * l.out_features + c];
                }
            }
            out.push(NamedTensor {
                name: format!("{name}.weight"),
                shape: vec![cols.len(), l.in_features],
                data: wt,
            });
            out.push(NamedTensor {
                name: format!("{name}.bias"),
                shape: vec![cols.len()],
                data: b[cols].to_vec(),
            });
        }
        for (key, slot) in self.other_slots() {
            out.push(NamedTensor {
                name: key.into(),
                shape: self.arena.layout.slots()[slot].shape.clone(),
                data: values[slot].clone(),
            });
        }
        Ok(out)
    }

    /// Parameters kept whole under a key, after the dense layers: the likelihood's, then the
    /// latent's.
    fn other_slots(&self) -> Vec<(&'static str, usize)> {
        let mut v: Vec<(&'static str, usize)> = self.likelihood.log_c.map(|s| (LOG_C_KEY, s)).into_iter().collect();
        v.extend(self.latent.checkpoint_slots());
        v
    }

    /// Every dense checkpoint tensor pair as (name, layer, the layer's output columns it
    /// holds), in file order: the encoder's hidden layers, its head (split into μ and log σ²
    /// for a VAE), the decoder's layers, the latent's own layers.
    fn pieces(&self) -> Vec<(String, &Linear, Range<usize>)> {
        let cfg = &self.config;
        let z = cfg.latent;
        let (enc, dec) = (self.encoder.layers(), self.decoder.layers());
        let Some((head, enc_hidden)) = enc.split_last() else {
            return Vec::new();
        };
        let head_cols: Vec<(&str, Range<usize>)> = if cfg.is_vae() {
            vec![("mu", 0..z), ("logvar", z..2 * z)]
        } else {
            vec![("code", 0..z)]
        };
        // With one hidden layer, the PyTorch reference model's names.
        let short = cfg.hidden.len() == 1;
        let whole = |l: &Linear| 0..l.out_features;
        let mut out = Vec::new();
        for (i, l) in enc_hidden.iter().enumerate() {
            let name = if short { "fc1".to_string() } else { format!("enc{i}") };
            out.push((name, *l, whole(l)));
        }
        for (k, (long, cols)) in head_cols.iter().enumerate() {
            let name = match (short, head_cols.len()) {
                (true, 1) => "fc2".to_string(),
                (true, _) => format!("fc2{}", k + 1),
                (false, _) => long.to_string(),
            };
            out.push((name, *head, cols.clone()));
        }
        let last = dec.len() - 1;
        for (i, l) in dec.iter().enumerate() {
            let name = match (short, i == last) {
                (true, false) => "fc3".to_string(),
                (true, true) => "fc4".to_string(),
                (false, false) => format!("dec{i}"),
                (false, true) => "out".to_string(),
            };
            out.push((name, *l, whole(l)));
        }
        out.extend(self.latent.checkpoint_pieces());
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
    pub fn load(gpu: &Gpu, path: &Path) -> Result<Self> {
        let (_, meta) = read_safetensors(path)?;
        let config = VaeConfig::from_metadata(&meta).map_err(|e| VaeError::Checkpoint {
            path: path.into(),
            problem: e.to_string(),
        })?;
        let vae = Vae::new(gpu, config, 0)?;
        vae.load_weights(gpu, path)?;
        Ok(vae)
    }

    /// Loads weights into this model; a checkpoint of another configuration, or one holding a
    /// value that is not finite, is an error naming the difference or the tensor.
    pub fn load_weights(&self, gpu: &Gpu, path: &Path) -> Result<()> {
        let (tensors, meta) = read_safetensors(path)?;
        let bad = |problem: String| VaeError::Checkpoint {
            path: path.into(),
            problem,
        };
        if let Ok(theirs) = VaeConfig::from_metadata(&meta) {
            if theirs != self.config {
                return Err(bad(format!(
                    "it holds a model configured as {theirs:?}, but this model is {:?}; \
                     build the model from the checkpoint (Vae::load) or train a new one",
                    self.config
                )));
            }
        }
        // A diverged run's weights would decode to noise or to one constant image.
        for t in &tensors {
            if let Some(i) = t.data.iter().position(|x| !x.is_finite()) {
                return Err(bad(format!(
                    "tensor '{}' holds {} at index {i}: the run that wrote it diverged; use a checkpoint \
                     from before that, or train again with a lower learning rate",
                    t.name, t.data[i]
                )));
            }
        }
        let pieces = self.pieces();
        let others = self.other_slots();
        let expected = 2 * pieces.len() + others.len();
        if tensors.len() != expected {
            return Err(bad(format!("{} tensors, expected {expected}", tensors.len())));
        }
        let mut values: Vec<Vec<f32>> = self.arena.layout.slots().iter().map(|s| vec![0.0; s.len()]).collect();
        let find = |name: &str, shape: &[usize]| -> Result<&NamedTensor> {
            let t = tensors
                .iter()
                .find(|t| t.name == name)
                .ok_or_else(|| bad(format!("missing tensor '{name}'")))?;
            if t.shape != shape {
                return Err(bad(format!("'{name}' has shape {:?}, expected {shape:?}", t.shape)));
            }
            Ok(t)
        };
        for (name, l, cols) in pieces {
            let w = find(&format!("{name}.weight"), &[cols.len(), l.in_features])?;
            let b = find(&format!("{name}.bias"), &[cols.len()])?;
            for (o, c) in cols.clone().enumerate() {
                for i in 0..l.in_features {
                    values[l.w][i * l.out_features + c] = w.data[o * l.in_features + i];
                }
                values[l.b][c] = b.data[o];
            }
        }
        for (key, slot) in others {
            let t = find(key, &self.arena.layout.slots()[slot].shape)?;
            values[slot].copy_from_slice(&t.data);
        }
        self.arena.write_params(gpu, &values)
    }
}
