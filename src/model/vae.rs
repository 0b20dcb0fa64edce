//! The VAE: its layers and arena, checkpoints, and the plans that train and run it.

use std::path::Path;

use crate::error::{Result, VaeError};
use crate::gpu::{Dispatch, Gpu, Tensor};
use crate::io::safetensors::{read_safetensors, write_safetensors, NamedTensor};
use crate::model::config::{Code, VaeConfig};
use crate::nn::{ArenaLayout, Layer, Linear, ParamArena};
use crate::ops::Activation;

/// Which tensors get a texture mirror that the subgroup matmul reads instead of the buffer
/// (see [`crate::ops::mirror`]). Mirrors only exist where the subgroup strategy is chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TextureMirrors {
    /// The operands of the large products: weights of at least [`MIRROR_MIN_WEIGHTS`] values,
    /// and in every workspace the input, the hidden activations, their gradients and the
    /// output gradient.
    Auto,
    /// As `Auto`, and every weight whose size is a whole number of texels.
    All,
    /// No mirrors: every matmul reads buffers.
    None,
}

/// Under [`TextureMirrors::Auto`], the smallest weight that gets a mirror: below it the copy
/// after each step costs about what the texel fetches save.
pub const MIRROR_MIN_WEIGHTS: usize = 65_536;

impl TextureMirrors {
    /// `VAE_WGPU_TEXTURES` = auto | all | none; `default` when unset.
    pub fn from_env(default: TextureMirrors) -> Result<Self> {
        match std::env::var("VAE_WGPU_TEXTURES").as_deref() {
            Err(_) => Ok(default),
            Ok("auto") => Ok(TextureMirrors::Auto),
            Ok("all") => Ok(TextureMirrors::All),
            Ok("none") => Ok(TextureMirrors::None),
            Ok(v) => Err(VaeError::Config(format!(
                "VAE_WGPU_TEXTURES={v:?}; expected auto, all or none"
            ))),
        }
    }
}

/// Checkpoint key of a learned decoder log-variance.
pub const LOG_C_KEY: &str = "log_c";
/// Checkpoint key of a VQ-VAE's codebook, [K, Z/G].
pub const CODEBOOK_KEY: &str = "codebook";

/// The networks of one upper stochastic layer of a hierarchical VAE (see [`crate::model::TopLatent`]), one
/// hidden layer each. Written for z₂ above z₁; upper layer i is z_{i+2} above z_{i+1}.
pub struct TopLayers {
    /// z₁ → hidden, in q(z₂|z₁).
    pub up: Linear,
    /// hidden → [μ₂ | log σ₂²].
    pub up_head: Linear,
    /// z₂ → hidden, in p(z₁|z₂).
    pub prior: Linear,
    /// hidden → [μₚ | log σₚ²].
    pub prior_head: Linear,
}

impl TopLayers {
    fn new(layout: &mut ArenaLayout, cfg: &VaeConfig, i: usize) -> Self {
        let (act, t) = (cfg.activation, cfg.top[i]);
        // Slot names: "top.*" for z₂ (the first, and once the only, upper layer), "top.z3.*"
        // and so on above it.
        let name = |part: &str| match i {
            0 => format!("top.{part}"),
            _ => format!("top.z{}.{part}", i + 2),
        };
        TopLayers {
            // A conditional model's rows carry the one-hot after the draws (z₁'s as the decoder
            // reads them), so both networks see the label.
            up: Linear::new(layout, &name("up.0"), cfg.top_below_dim(i), t.hidden, act),
            up_head: Linear::new(layout, &name("up.head"), t.hidden, 2 * t.latent, Activation::Identity),
            prior: Linear::new(layout, &name("prior.0"), cfg.top_input_dim(i), t.hidden, act),
            prior_head: Linear::new(
                layout,
                &name("prior.head"),
                t.hidden,
                2 * cfg.top_below_latent(i),
                Activation::Identity,
            ),
        }
    }

    /// The four layers in forward order.
    pub fn layers(&self) -> [&Linear; 4] {
        [&self.up, &self.up_head, &self.prior, &self.prior_head]
    }

    /// Plans the conditional prior's network: z₂ [B, Z₂'] (z₂'s rows as
    /// [`VaeConfig::top_input_dim`] gives them) → `hidden` [B, H] → `p1` [B, 2Z] = [μₚ | log σₚ²]
    /// of p(z₁|z₂).
    pub fn plan_prior(
        &self,
        gpu: &Gpu,
        arena: &ParamArena,
        z2: &Tensor,
        hidden: &Tensor,
        p1: &Tensor,
    ) -> Result<Vec<Dispatch>> {
        let mut d = self.prior.forward(gpu, arena, z2, hidden)?;
        d.extend(self.prior_head.forward(gpu, arena, hidden, p1)?);
        Ok(d)
    }
}

/// A Gaussian-encoder VAE with an MLP encoder and decoder, all parameters in one arena.
pub struct Vae {
    /// The architecture and likelihood it was built from.
    pub config: VaeConfig,
    /// Encoder hidden layers.
    pub encoder: Vec<Linear>,
    /// Encoder head: [μ | log σ²], 2·Z wide (one matmul for both); an autoencoder's code, Z wide.
    pub head: Linear,
    /// Decoder hidden layers.
    pub decoder: Vec<Linear>,
    /// Decoder output layer: logits (Bernoulli) or means (Gaussian).
    pub out: Linear,
    /// Arena slot of the learned log-variance (Gaussian decoders with a learned variance).
    pub log_c: Option<usize>,
    /// Arena slot of a VQ-VAE's codebook [K, Z/G].
    pub codebook: Option<usize>,
    /// A hierarchical VAE's upper stochastic layers' networks, from z₂ up (empty: one layer).
    pub top: Vec<TopLayers>,
    /// Every parameter, gradient and Adam moment, one buffer each.
    pub arena: ParamArena,
    /// Texture mirrors of the weights, and of the activations of workspaces built from now on
    /// (none unless the subgroup strategy is chosen).
    mirrors: TextureMirrors,
}

type Layers = (ArenaLayout, Vec<Linear>, Linear, Vec<Linear>, Linear, Option<usize>);

fn build_layers(cfg: &VaeConfig) -> Layers {
    let mut layout = ArenaLayout::default();
    let mut encoder = Vec::new();
    let mut width = cfg.enc_input_dim();
    for (i, &h) in cfg.hidden.iter().enumerate() {
        encoder.push(Linear::new(
            &mut layout,
            &format!("encoder.{i}"),
            width,
            h,
            cfg.activation,
        ));
        width = h;
    }
    let head = Linear::new(
        &mut layout,
        "encoder.head",
        width,
        cfg.head_width(),
        Activation::Identity,
    );
    let mut decoder = Vec::new();
    let mut width = cfg.dec_input_dim();
    for (i, &h) in cfg.hidden.iter().rev().enumerate() {
        decoder.push(Linear::new(
            &mut layout,
            &format!("decoder.{i}"),
            width,
            h,
            cfg.activation,
        ));
        width = h;
    }
    let out = Linear::new(&mut layout, "decoder.out", width, cfg.input_dim, Activation::Identity);
    let log_c = cfg
        .likelihood
        .learned_log_c_len(cfg.input_dim)
        .map(|n| layout.add("decoder.log_c", &[n]));
    (layout, encoder, head, decoder, out, log_c)
}

impl Vae {
    /// A freshly initialised model (PyTorch's nn.Linear initialisation, host PCG64 from `seed`).
    pub fn new(gpu: &Gpu, config: VaeConfig, seed: u64) -> Result<Self> {
        config.validate()?;
        let (mut layout, encoder, head, decoder, out, log_c) = build_layers(&config);
        let codebook = match config.code {
            Code::Quantized { codes, groups, .. } => Some(layout.add("codebook", &[codes, config.latent / groups])),
            _ => None,
        };
        let top: Vec<TopLayers> = (0..config.top.len())
            .map(|i| TopLayers::new(&mut layout, &config, i))
            .collect();
        let mut values: Vec<Vec<f32>> = layout.slots().iter().map(|s| vec![0.0; s.len()]).collect();
        let mut rng = crate::rng::host_rng(seed, 0);
        for l in encoder.iter().chain([&head]).chain(decoder.iter()).chain([&out]) {
            l.init(&mut rng, &mut values);
        }
        // After the codebook's draws, so that adding an upper layer changes no other initial
        // value (each upper layer's after those below it).
        let top_layers = top.iter().flat_map(|t| t.layers());
        // The codebook uniform in ±1, the scale of a fresh encoder's outputs. The ±1/K of some
        // implementations leaves every z_e far from every entry: measured here, the penalty ran
        // to 1,000 nats in the first epoch and the codes collapsed (recon 185 against 119 after
        // 3 epochs of 10,000 images, K = 512, G = 10).
        if let (Some(slot), Code::Quantized { .. }) = (codebook, config.code) {
            let bound = 1.0f32;
            for v in values[slot].iter_mut() {
                *v = crate::rng::uniform_f32(&mut rng, -bound, bound);
            }
        }
        for l in top_layers {
            l.init(&mut rng, &mut values);
        }
        // log c starts at 0 (c = 1), as the zeros `values` already hold.
        let init = crate::nn::arena::flatten(&layout, &values)?;
        let arena = ParamArena::new(gpu, layout, &init)?;
        let mut vae = Vae {
            config,
            encoder,
            head,
            decoder,
            out,
            log_c,
            codebook,
            top,
            arena,
            mirrors: TextureMirrors::None,
        };
        vae.set_texture_mirrors(gpu, TextureMirrors::from_env(TextureMirrors::Auto)?)?;
        Ok(vae)
    }

    /// Creates (or drops) the weights' texture mirrors by `policy` and fills them; workspaces
    /// built from now on follow the same policy. Training keeps the mirrors current; after
    /// writing parameters other than through [`ParamArena::write_params`], call
    /// [`ParamArena::sync_mirrors`].
    pub fn set_texture_mirrors(&mut self, gpu: &Gpu, policy: TextureMirrors) -> Result<()> {
        let subgroup = crate::ops::MatmulStrategy::preferred(gpu)? == crate::ops::MatmulStrategy::Subgroup;
        self.mirrors = if subgroup { policy } else { TextureMirrors::None };
        let wanted: Vec<(usize, bool)> = self
            .layers()
            .map(|l| {
                let size = l.in_features * l.out_features;
                let on = size % 4 == 0
                    && match self.mirrors {
                        TextureMirrors::Auto => size >= MIRROR_MIN_WEIGHTS,
                        TextureMirrors::All => true,
                        TextureMirrors::None => false,
                    };
                (l.w, on)
            })
            .collect();
        self.arena.set_mirrors(gpu, &wanted)
    }

    /// The texture-mirror policy of this model (None where the subgroup strategy is not used).
    pub fn texture_mirrors(&self) -> TextureMirrors {
        self.mirrors
    }

    /// Number of weights with a texture mirror.
    pub fn mirrored_weights(&self) -> usize {
        self.arena.mirrored()
    }

    /// Every layer in forward order.
    pub fn layers(&self) -> impl Iterator<Item = &Linear> {
        self.encoder
            .iter()
            .chain([&self.head])
            .chain(self.decoder.iter())
            .chain([&self.out])
            .chain(self.top.iter().flat_map(|t| t.layers()))
    }

    /// Model size in parameters: [`VaeConfig::num_params`] (the arena's alignment padding
    /// between tensors excluded).
    pub fn num_params(&self) -> usize {
        self.arena.layout.num_params()
    }

    /// The checkpoint tensors in PyTorch's layout ([out, in] weights). With one hidden layer
    /// the keys are those of the PyTorch reference model: fc1 (encoder), fc21 (μ), fc22
    /// (log σ²), fc3 and fc4 (decoder). Otherwise: enc{i}, mu, logvar, dec{i}, out. A learned
    /// variance adds `log_c`; a hierarchical VAE, for each upper layer z_k (k = 2, 3, …) q_z{k}.{0, mu, logvar} and
    /// p_z{k−1}.{0, mu, logvar}. A conditional model's first encoder and decoder layers take
    /// [x | one-hot | zero padding] and [z | one-hot | zero padding]: their weights keep the
    /// padding columns, which multiply zeros and never change.
    pub fn checkpoint_tensors(&self, gpu: &Gpu) -> Result<Vec<NamedTensor>> {
        let values = self.arena.read_params(gpu)?;
        let mut out = Vec::new();
        let mut push = |name: &str, l: &Linear, cols: std::ops::Range<usize>| {
            let (w, b) = (&values[l.w], &values[l.b]);
            let n_out = cols.len();
            let mut wt = vec![0.0f32; n_out * l.in_features];
            for (o, c) in cols.clone().enumerate() {
                for i in 0..l.in_features {
                    wt[o * l.in_features + i] = w[i * l.out_features + c];
                }
            }
            out.push(NamedTensor {
                name: format!("{name}.weight"),
                shape: vec![n_out, l.in_features],
                data: wt,
            });
            out.push(NamedTensor {
                name: format!("{name}.bias"),
                shape: vec![n_out],
                data: b[cols].to_vec(),
            });
        };
        for (name, l, cols) in self.pieces() {
            push(&name, l, cols);
        }
        if let Some(slot) = self.log_c {
            out.push(NamedTensor {
                name: LOG_C_KEY.into(),
                shape: vec![values[slot].len()],
                data: values[slot].clone(),
            });
        }
        if let Some(slot) = self.codebook {
            out.push(NamedTensor {
                name: CODEBOOK_KEY.into(),
                shape: self.arena.layout.slots()[slot].shape.clone(),
                data: values[slot].clone(),
            });
        }
        Ok(out)
    }

    /// The head's columns as checkpoint tensors: μ and log σ² apart (as the PyTorch model
    /// has them), or the autoencoder's code whole.
    fn head_pieces(&self) -> Vec<std::ops::Range<usize>> {
        let z = self.config.latent;
        let mut pieces = vec![0..z];
        if self.config.is_vae() {
            pieces.push(z..2 * z);
        }
        pieces
    }

    /// Every dense checkpoint tensor pair as (name, layer, the layer's output columns it
    /// holds), in file order: the heads of Gaussian layers split into μ and log σ².
    fn pieces(&self) -> Vec<(String, &Linear, std::ops::Range<usize>)> {
        let names = self.checkpoint_names();
        let mut ni = names.into_iter();
        let mut out = Vec::new();
        let whole = |l: &Linear| 0..l.out_features;
        for l in &self.encoder {
            out.push((ni.next().unwrap_or_default(), l, whole(l)));
        }
        for cols in self.head_pieces() {
            out.push((ni.next().unwrap_or_default(), &self.head, cols));
        }
        for l in self.decoder.iter().chain([&self.out]) {
            out.push((ni.next().unwrap_or_default(), l, whole(l)));
        }
        for (i, t) in self.top.iter().enumerate() {
            let half = |l: &Linear| (0..l.out_features / 2, l.out_features / 2..l.out_features);
            let ((m2, v2), (mp, vp)) = (half(&t.up_head), half(&t.prior_head));
            let (q, p) = (format!("q_z{}", i + 2), format!("p_z{}", i + 1));
            out.push((format!("{q}.0"), &t.up, whole(&t.up)));
            out.push((format!("{q}.mu"), &t.up_head, m2));
            out.push((format!("{q}.logvar"), &t.up_head, v2));
            out.push((format!("{p}.0"), &t.prior, whole(&t.prior)));
            out.push((format!("{p}.mu"), &t.prior_head, mp));
            out.push((format!("{p}.logvar"), &t.prior_head, vp));
        }
        out
    }

    fn checkpoint_names(&self) -> Vec<String> {
        if self.config.hidden.len() == 1 {
            let names: &[&str] = if self.config.is_vae() {
                &["fc1", "fc21", "fc22", "fc3", "fc4"]
            } else {
                &["fc1", "fc2", "fc3", "fc4"]
            };
            return names.iter().map(|s| s.to_string()).collect();
        }
        let mut n: Vec<String> = (0..self.encoder.len()).map(|i| format!("enc{i}")).collect();
        if self.config.is_vae() {
            n.push("mu".into());
            n.push("logvar".into());
        } else {
            n.push("code".into());
        }
        n.extend((0..self.decoder.len()).map(|i| format!("dec{i}")));
        n.push("out".into());
        n
    }

    /// Writes the model (F32 tensors, configuration as string metadata) atomically.
    pub fn save(&self, gpu: &Gpu, path: &Path, extra: &[(String, String)]) -> Result<()> {
        let mut meta = self.config.to_metadata();
        meta.push(("format".into(), "vae-wgpu/1".into()));
        meta.extend(extra.iter().cloned());
        write_safetensors(path, &self.checkpoint_tensors(gpu)?, &meta)
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

    /// Loads weights into this model; a checkpoint of another configuration is an error
    /// naming the difference.
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
        let expected = self.checkpoint_tensors_shapes();
        if tensors.len() != expected.len() {
            return Err(bad(format!("{} tensors, expected {}", tensors.len(), expected.len())));
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
        let fill = |name: &str, l: &Linear, cols: std::ops::Range<usize>, values: &mut Vec<Vec<f32>>| -> Result<()> {
            let w = find(&format!("{name}.weight"), &[cols.len(), l.in_features])?;
            let b = find(&format!("{name}.bias"), &[cols.len()])?;
            for (o, c) in cols.clone().enumerate() {
                for i in 0..l.in_features {
                    values[l.w][i * l.out_features + c] = w.data[o * l.in_features + i];
                }
                values[l.b][c] = b.data[o];
            }
            Ok(())
        };
        for (name, l, cols) in self.pieces() {
            fill(&name, l, cols, &mut values)?;
        }
        if let Some(slot) = self.log_c {
            let t = find(LOG_C_KEY, &[values[slot].len()])?;
            values[slot].copy_from_slice(&t.data);
        }
        if let Some(slot) = self.codebook {
            let t = find(CODEBOOK_KEY, &self.arena.layout.slots()[slot].shape)?;
            values[slot].copy_from_slice(&t.data);
        }
        self.arena.write_params(gpu, &values)
    }

    fn checkpoint_tensors_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let mut v = Vec::new();
        for (name, l, cols) in self.pieces() {
            v.push((format!("{name}.weight"), vec![cols.len(), l.in_features]));
            v.push((format!("{name}.bias"), vec![cols.len()]));
        }
        if let Some(slot) = self.log_c {
            v.push((LOG_C_KEY.into(), vec![self.arena.layout.slots()[slot].len()]));
        }
        if let Some(slot) = self.codebook {
            v.push((CODEBOOK_KEY.into(), self.arena.layout.slots()[slot].shape.clone()));
        }
        v
    }

    /// Plans the encoder: x [B, D'] (D' = `config.enc_input_dim()`) → hidden activations → enc
    /// [B, 2Z] = [μ | log σ²] (an autoencoder: the code, [B, Z]).
    pub fn plan_encode(&self, gpu: &Gpu, x: &Tensor, hidden: &[Tensor], enc: &Tensor) -> Result<Vec<Dispatch>> {
        let mut out = Vec::new();
        let mut input = x;
        for (l, h) in self.encoder.iter().zip(hidden) {
            out.extend(l.forward(gpu, &self.arena, input, h)?);
            input = h;
        }
        out.extend(self.head.forward(gpu, &self.arena, input, enc)?);
        Ok(out)
    }

    /// Plans the decoder: z [R, Z'] (Z' = `config.dec_input_dim()`) → hidden activations → out [R, D] (logits or means).
    pub fn plan_decode(&self, gpu: &Gpu, z: &Tensor, hidden: &[Tensor], out_t: &Tensor) -> Result<Vec<Dispatch>> {
        let mut out = Vec::new();
        let mut input = z;
        for (l, h) in self.decoder.iter().zip(hidden) {
            out.extend(l.forward(gpu, &self.arena, input, h)?);
            input = h;
        }
        out.extend(self.out.forward(gpu, &self.arena, input, out_t)?);
        Ok(out)
    }
}
