//! The VAE: its blocks (encoder, latent, decoder, likelihood) and the parameter arena they
//! share. The objective belongs to a workspace (`model/objective.rs`): it is how a step is
//! trained, not part of the model.

use crate::error::Result;
use crate::gpu::Gpu;
use crate::model::block::{Latent, Network};
use crate::model::config::{Arch, VaeConfig};
use crate::model::conv::{ConvDecoder, ConvEncoder};
use crate::model::likelihood::LikelihoodBlock;
use crate::model::mlp::{MlpDecoder, MlpEncoder};
use crate::nn::{ArenaLayout, Linear, ParamArena};

pub use crate::gpu::TextureMirrors;

/// Under [`TextureMirrors::Auto`], the smallest weight that gets a mirror: below it the copy
/// after each step costs about what the texel fetches save.
pub const MIRROR_MIN_WEIGHTS: usize = 65_536;

/// A VAE (or autoencoder) as a chain of blocks whose parameters share one arena.
pub struct Vae {
    /// The architecture and likelihood it was built from.
    pub config: VaeConfig,
    /// x → the latent block's input.
    pub(crate) encoder: Box<dyn Network>,
    /// The latent block: z from the encoder's output, its terms and prior.
    pub(crate) latent: Box<dyn Latent>,
    /// z → the likelihood's parameters (logits or means).
    pub(crate) decoder: Box<dyn Network>,
    /// p(x|z).
    pub(crate) likelihood: LikelihoodBlock,
    /// Every parameter, gradient and Adam moment, one buffer each.
    pub arena: ParamArena,
    /// Texture mirrors of the weights, and of the activations of workspaces made from now on
    /// (none unless the subgroup strategy is chosen).
    mirrors: TextureMirrors,
}

impl Vae {
    /// A freshly initialised model (PyTorch's nn.Linear initialisation, host PCG64 from
    /// `seed`). Parameters are registered block by block (encoder, decoder, likelihood,
    /// latent) and drawn in the order encoder, decoder, latent.
    pub fn new(gpu: &Gpu, config: VaeConfig, seed: u64) -> Result<Self> {
        Self::build(gpu, config, seed, true)
    }

    /// [`Vae::new`] with the parameters alone (`trainable` false: no gradients or Adam
    /// moments on the device; see [`ParamArena::weights_only`]).
    pub(crate) fn build(gpu: &Gpu, config: VaeConfig, seed: u64, trainable: bool) -> Result<Self> {
        config.validate()?;
        let mut layout = ArenaLayout::default();
        let (encoder, decoder): (Box<dyn Network>, Box<dyn Network>) = match &config.arch {
            Arch::Mlp => (
                Box::new(MlpEncoder::new(&mut layout, &config)),
                Box::new(MlpDecoder::new(&mut layout, &config)),
            ),
            Arch::Conv(arch) => (
                Box::new(ConvEncoder::new(&mut layout, &config, arch)),
                Box::new(ConvDecoder::new(&mut layout, &config, arch)),
            ),
        };
        let likelihood = LikelihoodBlock::new(&mut layout, &config);
        let latent = crate::model::latent::build(&mut layout, &config);
        // Sizes from flags or a checkpoint's metadata: refused before the host spends memory on
        // initial values (those, their flat copy and the upload's).
        let floats = layout.len() as u128;
        gpu.check_buffer("the parameter arena (VaeConfig sizes)", 4 * floats)?;
        gpu.check_host("the model's parameters (VaeConfig sizes)", 3 * 4 * floats)?;
        let mut values: Vec<Vec<f32>> = layout.slots().iter().map(|s| vec![0.0; s.len()]).collect();
        let mut rng = crate::rng::host_rng(seed, 0);
        encoder.init(&mut rng, &mut values);
        decoder.init(&mut rng, &mut values);
        latent.init(&mut rng, &mut values);
        // A learned log c starts at 0 (c = 1), as the zeros `values` already hold.
        let init = crate::nn::arena::flatten(&layout, &values)?;
        let arena = if trainable {
            ParamArena::new(gpu, layout, &init)?
        } else {
            ParamArena::weights_only(gpu, layout, &init)?
        };
        let mut vae = Vae {
            config,
            encoder,
            latent,
            decoder,
            likelihood,
            arena,
            mirrors: TextureMirrors::None,
        };
        vae.set_texture_mirrors(gpu, gpu.options().texture_mirrors)?;
        Ok(vae)
    }

    /// Creates (or drops) the weights' texture mirrors by `policy` and fills them; workspaces
    /// made from now on follow the same policy. Training keeps the mirrors current; after
    /// writing parameters other than through [`ParamArena::write_params`], call
    /// [`ParamArena::sync_mirrors`].
    pub fn set_texture_mirrors(&mut self, gpu: &Gpu, policy: TextureMirrors) -> Result<()> {
        let subgroup = crate::ops::MatmulStrategy::preferred(gpu)? == crate::ops::MatmulStrategy::Subgroup;
        self.mirrors = if subgroup { policy } else { TextureMirrors::None };
        let convs = self.encoder.convs().into_iter().chain(self.decoder.convs());
        // A convolution's weight is read by every pixel of every image, so its mirror pays
        // at any size: under Auto its threshold is 0.
        let wanted: Vec<(usize, bool)> = self
            .layers()
            .into_iter()
            .map(|l| (l.w, l.in_features * l.out_features, MIRROR_MIN_WEIGHTS))
            .chain(convs.map(|c| (c.w, c.weight_len(), 0)))
            .map(|(w, size, min)| {
                let on = size % 4 == 0
                    && match self.mirrors {
                        TextureMirrors::Auto => size >= min,
                        TextureMirrors::All => true,
                        TextureMirrors::None => false,
                    };
                (w, on)
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

    /// Every dense layer in registration order: the encoder's, the decoder's, the latent's.
    pub fn layers(&self) -> Vec<&Linear> {
        let mut all = self.encoder.layers();
        all.extend(self.decoder.layers());
        all.extend(self.latent.layers());
        all
    }

    /// The dense layer named `name` (its arena slots are `{name}.weight` and `{name}.bias`):
    /// `encoder.0`, `encoder.head`, `decoder.out`, `top.up.0`, …
    pub fn layer(&self, name: &str) -> Option<&Linear> {
        self.layers().into_iter().find(|l| l.name == name)
    }

    /// Model size in parameters: [`VaeConfig::num_params`] (the arena's alignment padding
    /// between tensors excluded).
    pub fn num_params(&self) -> usize {
        self.arena.layout.num_params()
    }

    /// Starts the decoder's output bias at the data: for per-pixel training means `mean` in
    /// [0, 1] (D values), logit(clip(mean, 0.001, 0.999)) for a Bernoulli decoder (the IWAE
    /// paper's initialisation: the untrained decoder then predicts the mean image) and the mean
    /// itself for a Gaussian one. A dense decoder only: a convolutional decoder's bias is per
    /// channel.
    pub fn init_output_bias(&self, gpu: &Gpu, mean: &[f32]) -> Result<()> {
        let d = self.config.input_dim;
        let slot = match (self.config.conv(), self.arena.layout.find("decoder.out.bias")) {
            (None, Some(slot)) => slot,
            _ => {
                return Err(crate::VaeError::setting(
                    "VaeConfig::arch",
                    "the output bias is set per pixel for a dense decoder; a convolutional decoder's is per \
                     channel",
                ))
            }
        };
        if mean.len() != d || mean.iter().any(|m| !(0.0..=1.0).contains(m)) {
            return Err(crate::VaeError::Shape(format!(
                "the output bias starts from {d} pixel means in [0, 1], got {} values",
                mean.len()
            )));
        }
        let bias: Vec<f32> = match self.config.likelihood {
            crate::ops::Likelihood::Bernoulli => mean
                .iter()
                .map(|&m| {
                    let p = (m as f64).clamp(0.001, 0.999);
                    (p / (1.0 - p)).ln() as f32
                })
                .collect(),
            _ => mean.to_vec(),
        };
        let mut values = self.arena.read_params(gpu)?;
        values[slot] = bias;
        self.arena.write_params(gpu, &values)
    }
}
