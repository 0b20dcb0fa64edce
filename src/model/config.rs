//! Model configuration and its string form (stored in checkpoints).

use crate::error::{Result, VaeError};
use crate::ops::{Activation, Likelihood};

/// The latent block: what the encoder's head produces, how z is made from it, and the terms
/// the objective adds for it. Each kind is one file under `model/latent/`.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Code {
    /// The VAE: q(z|x) = N(μ, σ²), the head 2·Z wide ([μ | log σ²]), z drawn by the
    /// reparameterization, and KL(q ‖ N(0, I)) weighted by β.
    #[default]
    Gaussian,
    /// A hierarchical VAE: z = z₁ Gaussian as in [`Code::Gaussian`], and the stochastic layers
    /// above it, lowest first (`layers[0]` is z₂ above z₁, `layers[1]` z₃ above z₂, …; at most
    /// [`MAX_TOP_LAYERS`]). See [`TopLatent`].
    Hierarchical(Vec<TopLatent>),
    /// An autoencoder: the code z = head(x) is deterministic (the head Z wide), and the
    /// objective adds, in place of the KL, the L1 penalty `l1`·Σ|z| (a sparse autoencoder)
    /// and the contractive penalty `contractive`·‖∂z/∂x‖²_F (a contractive autoencoder; one
    /// hidden layer with ReLU or LeakyReLU, whose Jacobian W_headᵀ·diag(act′)·W₁ᵀ has a closed
    /// form; the penalty is planned by the MLP encoder, whose Jacobian it is). There is no
    /// prior, so no sampling and no likelihood bound.
    Deterministic {
        /// Weight of the L1 penalty on the code (0: none).
        l1: f32,
        /// Weight of the squared Frobenius norm of the code's Jacobian (0: none).
        contractive: f32,
    },
    /// VQ-VAE: the head's output z_e (Z values) is cut into `groups` vectors of Z/`groups` values,
    /// and each is replaced by its nearest entry of a learned codebook of `codes` vectors. The
    /// decoder's gradient passes straight through to z_e; the objective adds
    /// ‖sg(z_e) − e‖² (which alone trains the codebook) and `commitment`·‖z_e − sg(e)‖².
    Quantized {
        /// Codebook entries K.
        codes: usize,
        /// Vectors per code, each of Z/groups values.
        groups: usize,
        /// Weight β of the commitment term (0.25 in the VQ-VAE paper).
        commitment: f32,
    },
}

/// One upper stochastic layer of a hierarchical VAE (Burda et al. 2016's stochastic layers,
/// each lower layer's posterior term computed as in the ladder VAE). For z₂ above z₁:
/// q(z₂|z₁) = N(μ₂, σ₂²) from an MLP on z₁, and the learned conditional prior
/// p(z₁|z₂) = N(μₚ, σₚ²) from an MLP on z₂, which replaces N(0, I) as z₁'s prior; the topmost
/// layer's prior is N(0, I). A layer z₃ above z₂ adds q(z₃|z₂) and p(z₂|z₃) the same way, and
/// so on. Each MLP has the hidden layers `hidden` lists (one or more, the IWAE paper's two),
/// with the model's activation. In a conditional model every such MLP also takes the one-hot
/// label: q(z₂|z₁, y), p(z₁|z₂, y).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopLatent {
    /// Dimensions of this layer's latent (even).
    pub latent: usize,
    /// Hidden widths of the q(z₂|z₁) and p(z₁|z₂) networks, input side first (each a multiple
    /// of 4; at least one).
    pub hidden: Vec<usize>,
}

/// The encoder's and decoder's networks.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Arch {
    /// Dense layers on the flattened pixels, `VaeConfig::hidden` wide, mirrored by the decoder.
    #[default]
    Mlp,
    /// Convolutions, then dense layers: see [`ConvArch`].
    Conv(ConvArch),
}

/// Kernel side of every convolution of a [`ConvArch`].
pub const CONV_KERNEL: usize = 4;
/// Stride of every convolution of a [`ConvArch`]: each halves the image.
pub const CONV_STRIDE: usize = 2;
/// Zero padding of every convolution of a [`ConvArch`].
pub const CONV_PADDING: usize = 1;
/// Most convolutions in a [`ConvArch`].
pub const MAX_CONV_LAYERS: usize = 8;

/// A convolutional encoder and decoder on images of `input` = [C, H, W] (stored NHWC, so the
/// model's `input_dim` is C·H·W): the encoder's convolutions (`channels`, each
/// [`CONV_KERNEL`]×[`CONV_KERNEL`], stride [`CONV_STRIDE`], padding [`CONV_PADDING`], with the
/// model's activation) halve the image per layer down to a feature map C'×H'×W', which dense
/// layers (`VaeConfig::hidden`) take to the latent's head; the decoder runs dense layers from
/// z to C'·H'·W' values (each with the activation) and transposed convolutions back up to
/// C×H×W, the last without activation. A VQ-VAE ([`Code::Quantized`]) has no dense layers:
/// the encoder's last convolution (without activation) is z_e, one code per cell of the
/// feature map. A conditional model's one-hot joins at the dense layers.
#[derive(Clone, Debug, PartialEq)]
pub struct ConvArch {
    /// The input image: channels, height, width. H and W must divide by 2^(convolutions).
    pub input: [usize; 3],
    /// Output channels of the encoder's convolutions, in order; the decoder's transposed
    /// convolutions run them backwards, then to the image's channels.
    pub channels: Vec<usize>,
}

impl ConvArch {
    /// The reference architecture's convolutions on `input`: 32 then 64 channels.
    pub fn reference(input: [usize; 3]) -> Self {
        ConvArch {
            input,
            channels: vec![32, 64],
        }
    }

    /// The encoder's feature map (C', H', W'), or None when the image does not halve that often.
    pub fn feature_map(&self) -> Option<[usize; 3]> {
        let [_, h, w] = self.input;
        let div = 1usize.checked_shl(self.channels.len() as u32)?;
        let last = *self.channels.last()?;
        (h.is_multiple_of(div) && w.is_multiple_of(div) && h > 0 && w > 0).then_some([last, h / div, w / div])
    }

    /// Values of the feature map C'·H'·W' (0 when there is none).
    pub fn feature_len(&self) -> usize {
        self.feature_map().map_or(0, |m| m.iter().product())
    }

    /// Each convolution's input side (height, width), from the image down.
    pub fn sides(&self) -> Vec<(usize, usize)> {
        let [_, h, w] = self.input;
        (0..self.channels.len()).map(|i| (h >> i, w >> i)).collect()
    }
}

/// Architecture and likelihood of a VAE. The default is the reference model used across the
/// field: 784 → 400 (ReLU) → 20 μ, 20 log σ²; 20 → 400 (ReLU) → 784 Bernoulli logits.
#[derive(Clone, Debug, PartialEq)]
pub struct VaeConfig {
    /// Pixels per example (a multiple of 4).
    pub input_dim: usize,
    /// Encoder hidden widths; the decoder uses them in reverse.
    pub hidden: Vec<usize>,
    /// Latent dimensions Z (of z₁ in a hierarchical VAE).
    pub latent: usize,
    /// Hidden-layer activation.
    pub activation: Activation,
    /// Decoder likelihood.
    pub likelihood: Likelihood,
    /// The encoder's and decoder's networks: dense (the default) or convolutional.
    pub arch: Arch,
    /// Classes of a conditional VAE (0: unconditional). Encoder and decoder then take the
    /// one-hot label after their input: [x | one-hot(y) | 0…] and [z | one-hot(y) | 0…],
    /// zero-padded to a multiple of 4 so the matmul reads whole vec4s.
    pub classes: usize,
    /// The latent block: a Gaussian posterior (the VAE), a hierarchy of them, a deterministic
    /// code (an autoencoder) or a quantized one (a VQ-VAE).
    pub code: Code,
}

impl Default for VaeConfig {
    fn default() -> Self {
        VaeConfig {
            input_dim: 784,
            hidden: vec![400],
            latent: 20,
            activation: Activation::Relu,
            likelihood: Likelihood::Bernoulli,
            arch: Arch::Mlp,
            classes: 0,
            code: Code::Gaussian,
        }
    }
}

impl VaeConfig {
    /// The stochastic layers above z₁ of a hierarchical VAE, lowest first (empty otherwise).
    pub fn top(&self) -> &[TopLatent] {
        match &self.code {
            Code::Hierarchical(layers) => layers,
            _ => &[],
        }
    }

    /// The convolutional architecture, if the model has one.
    pub fn conv(&self) -> Option<&ConvArch> {
        match &self.arch {
            Arch::Conv(c) => Some(c),
            Arch::Mlp => None,
        }
    }

    /// Width of the encoder's input rows: the pixels, then (conditional, dense encoder) the
    /// padded one-hot. A convolutional encoder reads the image alone; its one-hot joins at
    /// the dense layers ([`VaeConfig::dense_input_dim`]).
    pub fn enc_input_dim(&self) -> usize {
        if self.classes == 0 || self.conv().is_some() {
            self.input_dim
        } else {
            (self.input_dim + self.classes).div_ceil(4) * 4
        }
    }

    /// Width of the rows the encoder's first dense layer reads: [`VaeConfig::enc_input_dim`]
    /// for a dense encoder; for a convolutional one the flattened feature map, then
    /// (conditional) the one-hot, padded to a multiple of 4.
    pub fn dense_input_dim(&self) -> usize {
        match self.conv() {
            None => self.enc_input_dim(),
            Some(c) if self.classes == 0 => c.feature_len(),
            Some(c) => (c.feature_len() + self.classes).div_ceil(4) * 4,
        }
    }

    /// Width of the decoder's input rows: the latent code, then (conditional) the padded one-hot.
    pub fn dec_input_dim(&self) -> usize {
        if self.classes == 0 {
            self.latent
        } else {
            (self.latent + self.classes).div_ceil(4) * 4
        }
    }

    /// Width of the rows of upper layer `i` (z_{i+2}) as the networks read them: its draws,
    /// then (conditional) the one-hot, zero-padded to a multiple of 4 so that every product of
    /// p(z_{i+1}|z_{i+2})'s first layer takes the vec4 strategies (the scalar fallback took
    /// 1.1–1.5 ms per product at Z₂ = 10 on lavapipe, three of them a step). The layer's
    /// weight keeps the padding rows (also in checkpoints, as a conditional layer's): they
    /// multiply zeros, so their gradient is 0 and only weight decay moves them, harmlessly.
    /// Panics unless `i < self.top().len()`.
    pub fn top_input_dim(&self, i: usize) -> usize {
        (self.top()[i].latent + self.classes).div_ceil(4) * 4
    }

    /// Width of the rows below upper layer `i`, the input of its q network: z₁'s rows (the
    /// decoder's input) for i = 0, else upper layer i − 1's. Panics past the last layer.
    pub fn top_below_dim(&self, i: usize) -> usize {
        if i == 0 {
            self.dec_input_dim()
        } else {
            self.top_input_dim(i - 1)
        }
    }

    /// Size of the latent below upper layer `i`: Z for i = 0, else upper layer i − 1's.
    pub fn top_below_latent(&self, i: usize) -> usize {
        if i == 0 {
            self.latent
        } else {
            self.top()[i - 1].latent
        }
    }

    /// Width of the encoder head's output: [μ | log σ²] (2·Z) for a VAE, the code (Z) for an
    /// autoencoder or a VQ-VAE.
    pub fn head_width(&self) -> usize {
        if self.is_vae() {
            2 * self.latent
        } else {
            self.latent
        }
    }

    /// Whether the model is a VAE (Gaussian codes with a prior, one layer or a hierarchy), not
    /// an autoencoder or a VQ-VAE.
    pub fn is_vae(&self) -> bool {
        matches!(self.code, Code::Gaussian | Code::Hierarchical(_))
    }

    /// What the reported loss is a bound on: `-log p(x)`, `-log p(x|y)` for a conditional
    /// VAE, or nothing for an autoencoder and a VQ-VAE (their loss is the reconstruction NLL
    /// plus the code's penalty).
    pub fn bound_on(&self) -> &'static str {
        match (&self.code, self.classes > 0) {
            (Code::Quantized { .. }, _) => "none (VQ-VAE)",
            (Code::Deterministic { .. }, _) => "none (autoencoder)",
            (_, true) => "-log p(x|y)",
            (_, false) => "-log p(x)",
        }
    }

    /// Checks the sizes the kernels need and the combinations the blocks support; every
    /// refusal names the fields at fault.
    pub fn validate(&self) -> Result<()> {
        // The kernels index with 32-bit integers, and every size is checked before it is
        // multiplied: no value from a flag or a file can overflow the arithmetic below.
        let mut sizes: Vec<(&'static str, usize)> = vec![
            ("VaeConfig::input_dim", self.input_dim),
            ("VaeConfig::latent", self.latent),
            ("VaeConfig::classes", self.classes),
        ];
        sizes.extend(self.hidden.iter().map(|&h| ("VaeConfig::hidden", h)));
        sizes.extend(
            self.top()
                .iter()
                .flat_map(|t| std::iter::once(t.latent).chain(t.hidden.iter().copied()))
                .map(|v| ("Code::Hierarchical", v)),
        );
        if let Code::Quantized { codes, groups, .. } = self.code {
            sizes.extend([("Code::Quantized::codes", codes), ("Code::Quantized::groups", groups)]);
        }
        if self.hidden.len() > MAX_HIDDEN_LAYERS {
            return Err(VaeError::setting(
                "VaeConfig::hidden",
                format!("at most {MAX_HIDDEN_LAYERS} hidden layers, got {}", self.hidden.len()),
            ));
        }
        if let Some((field, v)) = sizes.into_iter().find(|&(_, v)| v > MAX_SIZE) {
            return Err(VaeError::setting(
                field,
                format!("{v} is larger than any size the kernels can index (at most {MAX_SIZE})"),
            ));
        }
        if let Some(c) = self.conv() {
            if let Some(&v) = c.input.iter().chain(&c.channels).find(|&&v| v > MAX_SIZE) {
                return Err(VaeError::setting(
                    "ConvArch",
                    format!("{v} is larger than any size the kernels can index (at most {MAX_SIZE})"),
                ));
            }
        }
        if self.input_dim == 0 || !self.input_dim.is_multiple_of(4) {
            return Err(VaeError::setting(
                "VaeConfig::input_dim",
                format!("must be a positive multiple of 4, got {}", self.input_dim),
            ));
        }
        if self.latent == 0 {
            return Err(VaeError::setting("VaeConfig::latent", "must be positive, got 0"));
        }
        if let Some(h) = self.hidden.iter().find(|&&h| h == 0 || h % 4 != 0) {
            return Err(VaeError::setting(
                "VaeConfig::hidden",
                format!("each width must be a positive multiple of 4, got {h}"),
            ));
        }
        if self.classes == 1 || self.classes > 1024 {
            return Err(VaeError::setting(
                "VaeConfig::classes",
                format!(
                    "a conditional model needs 2 to 1024 classes (0: unconditional), got {}",
                    self.classes
                ),
            ));
        }
        if let Likelihood::Gaussian { variance } = self.likelihood {
            if !(variance > 0.0 && variance.is_finite()) {
                return Err(VaeError::setting(
                    "VaeConfig::likelihood",
                    format!("a Gaussian variance must be positive, got {variance}"),
                ));
            }
        }
        if self.is_vae() && !self.latent.is_multiple_of(2) {
            return Err(VaeError::setting(
                "VaeConfig::latent",
                format!(
                    "a VAE's latent size must be even, got {} (the encoder head is 2·Z wide and read as vec4; \
                     autoencoders and VQ-VAEs take any size)",
                    self.latent
                ),
            ));
        }
        if let Some(c) = self.conv() {
            self.validate_conv(c)?;
        }
        match &self.code {
            Code::Gaussian => {}
            Code::Hierarchical(top) => {
                if top.is_empty() || top.len() > MAX_TOP_LAYERS {
                    return Err(VaeError::setting(
                        "Code::Hierarchical",
                        format!("1 to {MAX_TOP_LAYERS} stochastic layers above z, got {}", top.len()),
                    ));
                }
                for (i, t) in top.iter().enumerate() {
                    let widths_ok = !t.hidden.is_empty()
                        && t.hidden.len() <= MAX_HIDDEN_LAYERS
                        && t.hidden.iter().all(|&h| h > 0 && h % 4 == 0);
                    if t.latent == 0 || t.latent % 2 != 0 || !widths_ok {
                        return Err(VaeError::setting(
                            "Code::Hierarchical",
                            format!(
                                "stochastic layer z{} needs an even latent size and 1 to {MAX_HIDDEN_LAYERS} hidden \
                                 widths, each a positive multiple of 4, got {} and {:?}",
                                i + 2,
                                t.latent,
                                t.hidden
                            ),
                        ));
                    }
                }
            }
            &Code::Deterministic { l1, contractive } => {
                if !(l1 >= 0.0 && l1.is_finite()) {
                    return Err(VaeError::setting(
                        "Code::Deterministic::l1",
                        format!("must be 0 or positive, got {l1}"),
                    ));
                }
                if !(contractive >= 0.0 && contractive.is_finite()) {
                    return Err(VaeError::setting(
                        "Code::Deterministic::contractive",
                        format!("must be 0 or positive, got {contractive}"),
                    ));
                }
                let piecewise_linear = matches!(self.activation, Activation::Relu | Activation::LeakyRelu);
                if contractive > 0.0 && (self.hidden.len() != 1 || !piecewise_linear) {
                    return Err(VaeError::settings(
                        &[
                            "Code::Deterministic::contractive",
                            "VaeConfig::hidden",
                            "VaeConfig::activation",
                        ],
                        format!(
                            "the contractive penalty needs one hidden layer with relu or leakyrelu (its \
                             Jacobian then has a closed form), got hidden {:?} with {:?}",
                            self.hidden, self.activation
                        ),
                    ));
                }
            }
            &Code::Quantized {
                codes,
                groups,
                commitment,
            } => {
                if codes < 2 {
                    return Err(VaeError::setting(
                        "Code::Quantized::codes",
                        format!("a codebook needs 2 or more entries, got {codes}"),
                    ));
                }
                if groups == 0 || !self.latent.is_multiple_of(groups) {
                    return Err(VaeError::settings(
                        &["Code::Quantized::groups", "VaeConfig::latent"],
                        format!(
                            "the group count must divide the latent size {}, got {groups}",
                            self.latent
                        ),
                    ));
                }
                if !(commitment >= 0.0 && commitment.is_finite()) {
                    return Err(VaeError::setting(
                        "Code::Quantized::commitment",
                        format!("must be 0 or positive, got {commitment}"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The checks of a convolutional architecture and what it combines with.
    fn validate_conv(&self, c: &ConvArch) -> Result<()> {
        let n = c.channels.len();
        if n == 0 || n > MAX_CONV_LAYERS {
            return Err(VaeError::setting(
                "ConvArch::channels",
                format!("1 to {MAX_CONV_LAYERS} convolutions, got {n}"),
            ));
        }
        if c.channels.contains(&0) || c.input.contains(&0) {
            return Err(VaeError::setting(
                "ConvArch",
                format!(
                    "every channel count and image side must be positive, got channels {:?} on an input of {:?}",
                    c.channels, c.input
                ),
            ));
        }
        let [ch, h, w] = c.input;
        if ch * h * w != self.input_dim {
            return Err(VaeError::settings(
                &["ConvArch::input", "VaeConfig::input_dim"],
                format!(
                    "an image of {ch}×{h}×{w} has {} values, but input_dim is {}",
                    ch * h * w,
                    self.input_dim
                ),
            ));
        }
        let Some([fc, fh, fw]) = c.feature_map() else {
            return Err(VaeError::settings(
                &["ConvArch::input", "ConvArch::channels"],
                format!(
                    "{n} convolutions halve the image {n} times, so its height and width must divide by {}; got {h}×{w}",
                    1usize << n
                ),
            ));
        };
        if let Code::Deterministic { contractive, .. } = self.code {
            if contractive > 0.0 {
                return Err(VaeError::settings(
                    &["Code::Deterministic::contractive", "VaeConfig::arch"],
                    "the contractive penalty has a closed form for a dense encoder only; use Arch::Mlp",
                ));
            }
        }
        if let Code::Quantized { groups, .. } = self.code {
            if self.classes > 0 {
                return Err(VaeError::settings(
                    &["VaeConfig::classes", "Code::Quantized", "VaeConfig::arch"],
                    "a conditional convolutional VQ-VAE is not supported (its code has no dense layer for the one-hot to join); use a dense VQ-VAE or an unconditional one",
                ));
            }
            if !self.hidden.is_empty() {
                return Err(VaeError::settings(
                    &["VaeConfig::hidden", "VaeConfig::arch"],
                    format!(
                        "a convolutional VQ-VAE has no dense layers (its code is the feature map), got hidden {:?}",
                        self.hidden
                    ),
                ));
            }
            if self.latent != fc * fh * fw || groups != fh * fw {
                return Err(VaeError::settings(
                    &["VaeConfig::latent", "Code::Quantized::groups"],
                    format!(
                        "a convolutional VQ-VAE's code is its {fc}×{fh}×{fw} feature map: latent {} in {} groups of {fc}, got latent {} in {groups} groups",
                        fc * fh * fw,
                        fh * fw,
                        self.latent
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Key/value pairs for checkpoint metadata.
    pub fn to_metadata(&self) -> Vec<(String, String)> {
        let hidden: Vec<String> = self.hidden.iter().map(|h| h.to_string()).collect();
        let lik = likelihood_name(self.likelihood);
        let mut meta: Vec<(String, String)> = vec![
            ("input_dim".into(), self.input_dim.to_string()),
            ("hidden".into(), hidden.join(",")),
            ("latent".into(), self.latent.to_string()),
            ("activation".into(), format!("{:?}", self.activation).to_lowercase()),
            ("likelihood".into(), lik),
            ("classes".into(), self.classes.to_string()),
            ("code".into(), code_name(&self.code)),
            ("top".into(), top_name(self.top())),
        ];
        // Written for convolutional models only: a file without `arch` is a dense model.
        if let Some(c) = self.conv() {
            let list = |v: &[usize]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(",");
            meta.extend([
                ("arch".into(), "conv".into()),
                ("conv".into(), list(&c.channels)),
                ("input_shape".into(), list(&c.input)),
            ]);
        }
        meta
    }

    /// Inverse of [`VaeConfig::to_metadata`].
    pub fn from_metadata(meta: &[(String, String)]) -> Result<Self> {
        let get = |k: &str| {
            meta.iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
                .ok_or_else(|| VaeError::Config(format!("checkpoint metadata lacks '{k}'")))
        };
        let num = |k: &str| -> Result<usize> {
            get(k)?
                .parse()
                .map_err(|_| VaeError::Config(format!("checkpoint metadata '{k}' is not a number")))
        };
        let hidden = parse_hidden(get("hidden")?)?;
        let activation = match get("activation")? {
            "leakyrelu" => Activation::LeakyRelu,
            a => Activation::parse(a)?,
        };
        let likelihood = parse_likelihood(get("likelihood")?)?;
        // Checkpoints from before autoencoders were added are VAEs, and those from before
        // hierarchical models have one stochastic layer.
        let code = get("code").map_or(Ok(Code::Gaussian), parse_code)?;
        let top = get("top").map_or(Ok(Vec::new()), parse_top)?;
        let code = match (code, top.is_empty()) {
            (code, true) => code,
            (Code::Gaussian, false) => Code::Hierarchical(top),
            (code, false) => {
                return Err(VaeError::Config(format!(
                    "checkpoint metadata: 'top' = {:?} needs 'code' = gaussian, got {:?}",
                    get("top")?,
                    code_name(&code)
                )))
            }
        };
        // Files from before convolutional models were added hold dense ones.
        let arch = match get("arch").unwrap_or("mlp") {
            "mlp" => Arch::Mlp,
            "conv" => {
                let list = |k: &str| -> Result<Vec<usize>> {
                    get(k)?
                        .split(',')
                        .map(|v| {
                            v.trim().parse().map_err(|_| {
                                VaeError::Config(format!(
                                    "checkpoint metadata '{k}' = {:?} is not a list of whole numbers",
                                    get(k).unwrap_or_default()
                                ))
                            })
                        })
                        .collect()
                };
                let input: [usize; 3] = list("input_shape")?.try_into().map_err(|v: Vec<usize>| {
                    VaeError::Config(format!(
                        "checkpoint metadata 'input_shape' must be C,H,W, got {} values",
                        v.len()
                    ))
                })?;
                Arch::Conv(ConvArch {
                    input,
                    channels: list("conv")?,
                })
            }
            other => {
                return Err(VaeError::Config(format!(
                    "checkpoint metadata 'arch' = {other:?}: expected mlp or conv"
                )))
            }
        };
        let cfg = VaeConfig {
            arch,
            input_dim: num("input_dim")?,
            hidden,
            latent: num("latent")?,
            activation,
            likelihood,
            // Checkpoints from before conditional models were added are unconditional.
            classes: if get("classes").is_ok() { num("classes")? } else { 0 },
            code,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Parameters in the model, the zero-padding input rows of conditional and hierarchical
    /// layers included (they are stored and checkpointed).
    /// (`usize::MAX` for a configuration whose count overflows; see
    /// [`VaeConfig::num_params_checked`].)
    pub fn num_params(&self) -> usize {
        self.num_params_checked().unwrap_or(usize::MAX)
    }

    /// [`VaeConfig::num_params`], or None when the count does not fit a `usize`. Every size of
    /// a validated configuration fits 31 bits, so this never overflows its u128 arithmetic.
    pub fn num_params_checked(&self) -> Option<usize> {
        let dense = |i: usize, o: usize| i as u128 * o as u128 + o as u128;
        let vq_conv = self.conv().is_some() && matches!(self.code, Code::Quantized { .. });
        // The dense layers: encoder to the head, decoder from z (to the image, or to the
        // feature map the transposed convolutions start from); none in a convolutional VQ-VAE.
        let (enc, head, dec) = if vq_conv {
            (0, 0, 0)
        } else {
            let mut widths = vec![self.dense_input_dim()];
            widths.extend(&self.hidden);
            let enc: u128 = widths.windows(2).map(|w| dense(w[0], w[1])).sum();
            let last = *widths.last().unwrap_or(&self.input_dim);
            let mut dw = vec![self.dec_input_dim()];
            dw.extend(self.hidden.iter().rev());
            dw.push(self.conv().map_or(self.input_dim, |c| c.feature_len()));
            let dec: u128 = dw.windows(2).map(|w| dense(w[0], w[1])).sum();
            (enc, dense(last, self.head_width()), dec)
        };
        // Each convolution twice (the encoder's, and the decoder's transposed one with the
        // same channels), weights stored with their rows rounded up to 4.
        let conv: u128 = self.conv().map_or(0, |c| {
            let mut ch = vec![c.input[0]];
            ch.extend(&c.channels);
            ch.windows(2)
                .map(|w| {
                    let taps = (CONV_KERNEL * CONV_KERNEL * w[0]).div_ceil(4) * 4;
                    2 * (taps as u128 * w[1] as u128) + w[0] as u128 + w[1] as u128
                })
                .sum()
        });
        let codebook = match self.code {
            Code::Quantized { codes, groups, .. } => codes as u128 * (self.latent / groups.max(1)) as u128,
            _ => 0,
        };
        // z₁ → h → [μ₂ | log σ₂²] and z₂ → h → [μₚ | log σₚ²], each input with the one-hot
        // and padding of a conditional model (the padding rows included, as for the decoder).
        let chain = |input: usize, hidden: &[usize], out: usize| -> u128 {
            let mut widths = vec![input];
            widths.extend(hidden);
            widths.push(out);
            widths.windows(2).map(|w| dense(w[0], w[1])).sum()
        };
        let top: u128 = (0..self.top().len())
            .map(|i| {
                let t = &self.top()[i];
                chain(self.top_below_dim(i), &t.hidden, 2 * t.latent)
                    + chain(self.top_input_dim(i), &t.hidden, 2 * self.top_below_latent(i))
            })
            .sum();
        let log_c = self.likelihood.learned_log_c_len(self.input_dim).unwrap_or(0) as u128;
        (enc + head + dec + conv + codebook + top + log_c).try_into().ok()
    }
}

/// The largest size of any dimension: the kernels index with 32-bit integers.
pub const MAX_SIZE: usize = 1 << 30;
/// Most hidden layers in the encoder (and the decoder).
pub const MAX_HIDDEN_LAYERS: usize = 64;

/// Most stochastic layers above z: each has its own ε key base (see
/// [`crate::ops::TOP_SAMPLE_BASE`]).
pub const MAX_TOP_LAYERS: usize = 8;

/// The string form of the upper stochastic layers, as [`parse_top`] reads it back: "none",
/// or "Z2:H2" for each layer from z₂ up, comma-separated (latent size and hidden width; two
/// or more hidden layers as "Z2:H2xH2'").
pub fn top_name(t: &[TopLatent]) -> String {
    if t.is_empty() {
        return "none".into();
    }
    t.iter()
        .map(|t| {
            let widths: Vec<String> = t.hidden.iter().map(|h| h.to_string()).collect();
            format!("{}:{}", t.latent, widths.join("x"))
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Parses `none` or `Z2:H2[xH2'…][,Z3:H3…]` (see [`top_name`]); sizes are checked by
/// [`VaeConfig::validate`].
pub fn parse_top(s: &str) -> Result<Vec<TopLatent>> {
    if s == "none" {
        return Ok(Vec::new());
    }
    let bad = || {
        VaeError::Config(format!(
            "stochastic layers {s:?}: expected none or Z2:H2[,Z3:H3...] from z2 up, each H one hidden width or \
             several joined by x, e.g. 10:200, 16:200,8:100 or 50:100x100"
        ))
    };
    s.split(',')
        .map(|level| {
            let (z, h) = level.split_once(':').ok_or_else(bad)?;
            Ok(TopLatent {
                latent: z.trim().parse().map_err(|_| bad())?,
                hidden: h
                    .split('x')
                    .map(|w| w.trim().parse().map_err(|_| bad()))
                    .collect::<Result<_>>()?,
            })
        })
        .collect()
}

/// The string form of a code, as [`parse_code`] reads it back: "gaussian" (also for a
/// hierarchy, whose layers [`top_name`] writes),
/// "deterministic:L1" or "deterministic:L1:C" (C the contractive weight, when not 0), or
/// "quantized:K:G:BETA".
pub fn code_name(c: &Code) -> String {
    match *c {
        Code::Gaussian | Code::Hierarchical(_) => "gaussian".to_string(),
        Code::Deterministic { l1, contractive: 0.0 } => format!("deterministic:{l1}"),
        Code::Deterministic { l1, contractive } => format!("deterministic:{l1}:{contractive}"),
        Code::Quantized {
            codes,
            groups,
            commitment,
        } => format!("quantized:{codes}:{groups}:{commitment}"),
    }
}

/// Parses "gaussian", "deterministic:L1" or "deterministic:L1:C" (weights ≥ 0 of the code's
/// L1 and contractive penalties), or "quantized:K:G:BETA" (K codebook entries, G groups,
/// commitment weight BETA).
pub fn parse_code(s: &str) -> Result<Code> {
    let weight = |v: &str| {
        v.parse::<f32>()
            .ok()
            .filter(|w| *w >= 0.0 && w.is_finite())
            .ok_or_else(|| VaeError::Config(format!("a penalty weight must be 0 or positive, got {v:?}")))
    };
    match s.split_once(':') {
        None if s == "gaussian" => Ok(Code::Gaussian),
        Some(("deterministic", v)) => {
            let (l1, contractive) = match v.split_once(':') {
                Some((a, b)) => (weight(a)?, weight(b)?),
                None => (weight(v)?, 0.0),
            };
            Ok(Code::Deterministic { l1, contractive })
        }
        Some(("quantized", v)) => {
            let parts: Vec<&str> = v.split(':').collect();
            let count = |p: &str| {
                p.parse::<usize>()
                    .map_err(|_| VaeError::Config(format!("quantized:K:G:BETA needs whole numbers K and G, got {p:?}")))
            };
            match parts[..] {
                [k, g, b] => Ok(Code::Quantized {
                    codes: count(k)?,
                    groups: count(g)?,
                    commitment: weight(b)?,
                }),
                _ => Err(VaeError::Config(format!("expected quantized:K:G:BETA, got {s:?}"))),
            }
        }
        _ => Err(VaeError::Config(format!(
            "unknown code {s:?}; expected gaussian, deterministic:L1, deterministic:L1:C or quantized:K:G:BETA"
        ))),
    }
}

/// Parses "400" or "512,256" (empty for no hidden layer).
pub fn parse_hidden(s: &str) -> Result<Vec<usize>> {
    if s.trim().is_empty() {
        return Ok(vec![]);
    }
    s.split(',')
        .map(|p| {
            p.trim()
                .parse::<usize>()
                .map_err(|_| VaeError::Config(format!("hidden sizes must be numbers separated by commas, got {s:?}")))
        })
        .collect()
}

/// The string form of a likelihood, as [`parse_likelihood`] reads it back.
pub fn likelihood_name(l: Likelihood) -> String {
    match l {
        Likelihood::Bernoulli => "bernoulli".to_string(),
        Likelihood::Gaussian { variance } => format!("gaussian:{variance}"),
        Likelihood::GaussianLearned { per_pixel: false } => "gaussian:learned-global".to_string(),
        Likelihood::GaussianLearned { per_pixel: true } => "gaussian:learned-pixel".to_string(),
    }
}

/// Parses a Gaussian decoder's variance: "fixed:C" (C the variance), "learned-global" (one
/// learned log c) or "learned-pixel" (one per pixel).
pub fn parse_variance(s: &str) -> Result<Likelihood> {
    match s {
        "learned-global" => Ok(Likelihood::GaussianLearned { per_pixel: false }),
        "learned-pixel" => Ok(Likelihood::GaussianLearned { per_pixel: true }),
        _ => match s.split_once(':') {
            Some(("fixed", v)) => parse_likelihood(&format!("gaussian:{v}")),
            _ => Err(VaeError::Config(format!(
                "unknown variance {s:?}; expected fixed:C (C > 0, the variance), learned-global or learned-pixel"
            ))),
        },
    }
}

/// Parses "bernoulli", `"gaussian[:VARIANCE]"` (variance default 1.0), "gaussian:learned-global"
/// or "gaussian:learned-pixel".
pub fn parse_likelihood(s: &str) -> Result<Likelihood> {
    match s.split_once(':') {
        None if s == "bernoulli" => Ok(Likelihood::Bernoulli),
        None if s == "gaussian" => Ok(Likelihood::Gaussian { variance: 1.0 }),
        Some(("gaussian", v)) if v.starts_with("learned") => parse_variance(v),
        Some(("gaussian", v)) => v
            .parse::<f32>()
            .ok()
            .filter(|v| *v > 0.0 && v.is_finite())
            .map(|variance| Likelihood::Gaussian { variance })
            .ok_or_else(|| {
                // A positive number that rounds to 0 or ∞ in f32 is out of range, not negative.
                let positive = v.parse::<f64>().is_ok_and(|x| x > 0.0 && x.is_finite());
                VaeError::Config(if positive {
                    format!(
                        "Gaussian variance {v} is outside the range of an f32 (from about 1.4e-45 to 3.4e38), \
                         which the kernels compute in"
                    )
                } else {
                    format!("Gaussian variance must be a positive number, got {v:?}")
                })
            }),
        _ => Err(VaeError::Config(format!(
            "unknown likelihood {s:?}; expected bernoulli or gaussian"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hidden_sizes_parse() {
        assert_eq!(parse_hidden("400").unwrap(), vec![400]);
        assert_eq!(parse_hidden(" 512, 256 ").unwrap(), vec![512, 256]);
        assert_eq!(parse_hidden("").unwrap(), Vec::<usize>::new());
        for bad in ["400,", "a", "4x4", "-4"] {
            assert!(parse_hidden(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn likelihoods_parse_and_print_back() {
        assert_eq!(parse_likelihood("bernoulli").unwrap(), Likelihood::Bernoulli);
        assert_eq!(
            parse_likelihood("gaussian").unwrap(),
            Likelihood::Gaussian { variance: 1.0 }
        );
        assert_eq!(
            parse_likelihood("gaussian:0.3").unwrap(),
            Likelihood::Gaussian { variance: 0.3 }
        );
        assert_eq!(
            parse_likelihood("gaussian:learned-global").unwrap(),
            Likelihood::GaussianLearned { per_pixel: false }
        );
        assert_eq!(
            parse_likelihood("gaussian:learned-pixel").unwrap(),
            Likelihood::GaussianLearned { per_pixel: true }
        );
        for bad in [
            "gaussian:0",
            "gaussian:-1",
            "gaussian:inf",
            "gaussian:x",
            "gaussian:learned",
            "poisson",
            "",
        ] {
            assert!(parse_likelihood(bad).is_err(), "{bad:?} parsed");
        }
        // A positive variance that f32 cannot hold is out of range, not "not positive".
        for (v, needle) in [
            ("1e-50", "1e-50 is outside the range of an f32"),
            ("1e39", "1e39 is outside the range of an f32"),
            ("-1", "must be a positive number"),
        ] {
            let e = parse_likelihood(&format!("gaussian:{v}")).unwrap_err().to_string();
            assert!(e.contains(needle), "{v}: {e}");
            let e = parse_variance(&format!("fixed:{v}")).unwrap_err().to_string();
            assert!(e.contains(needle), "{v}: {e}");
        }
        for l in [
            Likelihood::Bernoulli,
            Likelihood::Gaussian { variance: 0.3 },
            Likelihood::GaussianLearned { per_pixel: false },
            Likelihood::GaussianLearned { per_pixel: true },
        ] {
            assert_eq!(parse_likelihood(&likelihood_name(l)).unwrap(), l);
        }
    }

    #[test]
    fn codes_parse_and_print_back() {
        assert_eq!(parse_code("gaussian").unwrap(), Code::Gaussian);
        assert_eq!(
            parse_code("deterministic:0").unwrap(),
            Code::Deterministic {
                l1: 0.0,
                contractive: 0.0
            }
        );
        assert_eq!(
            parse_code("deterministic:0.5").unwrap(),
            Code::Deterministic {
                l1: 0.5,
                contractive: 0.0
            }
        );
        assert_eq!(
            parse_code("deterministic:0:0.25").unwrap(),
            Code::Deterministic {
                l1: 0.0,
                contractive: 0.25
            }
        );
        for bad in [
            "deterministic",
            "deterministic:-1",
            "deterministic:nan",
            "deterministic:x",
            "deterministic:0:-1",
            "deterministic:0:",
            "quantized:512:10",
            "quantized:x:10:0.25",
            "quantized:512:10:-1",
            "vq",
            "",
        ] {
            assert!(parse_code(bad).is_err(), "{bad:?} parsed");
        }
        for c in [
            Code::Gaussian,
            Code::Deterministic {
                l1: 0.0,
                contractive: 0.0,
            },
            Code::Deterministic {
                l1: 1e-3,
                contractive: 0.0,
            },
            Code::Deterministic {
                l1: 0.5,
                contractive: 2.0,
            },
            Code::Quantized {
                codes: 512,
                groups: 10,
                commitment: 0.25,
            },
        ] {
            assert_eq!(parse_code(&code_name(&c)).unwrap(), c);
        }
    }

    #[test]
    fn variance_option_parses() {
        assert_eq!(
            parse_variance("fixed:0.5").unwrap(),
            Likelihood::Gaussian { variance: 0.5 }
        );
        assert_eq!(
            parse_variance("learned-pixel").unwrap(),
            Likelihood::GaussianLearned { per_pixel: true }
        );
        for bad in ["0.5", "fixed:0", "fixed:", "learned"] {
            assert!(parse_variance(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn metadata_round_trips_every_option() {
        let cases = [
            VaeConfig::default(),
            VaeConfig {
                input_dim: 16,
                hidden: vec![],
                latent: 2,
                activation: Activation::LeakyRelu,
                likelihood: Likelihood::Gaussian { variance: 0.3 },
                classes: 10,
                ..Default::default()
            },
            VaeConfig {
                hidden: vec![512, 256],
                activation: Activation::Tanh,
                likelihood: Likelihood::GaussianLearned { per_pixel: true },
                ..Default::default()
            },
            VaeConfig {
                activation: Activation::Sigmoid,
                likelihood: Likelihood::GaussianLearned { per_pixel: false },
                ..Default::default()
            },
            VaeConfig {
                latent: 3,
                code: Code::Deterministic {
                    l1: 0.25,
                    contractive: 0.0,
                },
                ..Default::default()
            },
            VaeConfig {
                code: Code::Deterministic {
                    l1: 0.0,
                    contractive: 0.0,
                },
                classes: 10,
                ..Default::default()
            },
            VaeConfig {
                code: Code::Hierarchical(vec![TopLatent {
                    latent: 10,
                    hidden: vec![200],
                }]),
                ..Default::default()
            },
            VaeConfig {
                code: Code::Hierarchical(vec![
                    TopLatent {
                        latent: 16,
                        hidden: vec![200],
                    },
                    TopLatent {
                        latent: 6,
                        hidden: vec![100],
                    },
                ]),
                classes: 10,
                ..Default::default()
            },
        ];
        for cfg in cases {
            assert_eq!(VaeConfig::from_metadata(&cfg.to_metadata()).unwrap(), cfg);
        }
        // Checkpoints from before conditional models have no "classes": unconditional.
        let mut old = VaeConfig::default().to_metadata();
        old.retain(|(k, _)| k != "classes");
        assert_eq!(VaeConfig::from_metadata(&old).unwrap().classes, 0);
        // Checkpoints from before autoencoders have no "code": a VAE.
        let mut old = VaeConfig::default().to_metadata();
        old.retain(|(k, _)| k != "code");
        assert_eq!(VaeConfig::from_metadata(&old).unwrap().code, Code::Gaussian);
        // Checkpoints from before hierarchical models have no "top": one stochastic layer.
        let mut old = VaeConfig::default().to_metadata();
        old.retain(|(k, _)| k != "top");
        assert_eq!(VaeConfig::from_metadata(&old).unwrap().code, Code::Gaussian);
        // Upper layers belong to a Gaussian code: any other beside them is refused.
        let mut mixed = VaeConfig::default().to_metadata();
        for (k, v) in mixed.iter_mut() {
            match k.as_str() {
                "code" => *v = "deterministic:0".into(),
                "top" => *v = "10:200".into(),
                _ => {}
            }
        }
        let e = VaeConfig::from_metadata(&mixed).unwrap_err().to_string();
        assert!(e.contains("top") && e.contains("deterministic"), "{e}");
        assert_eq!(top_name(&cases_top()), "16:200,8:100");
        assert_eq!(parse_top("16:200, 8:100").unwrap(), cases_top());
        // The IWAE paper's upper networks: two hidden layers each.
        let two = parse_top("50:100x100").unwrap();
        assert_eq!(
            two,
            vec![TopLatent {
                latent: 50,
                hidden: vec![100, 100]
            }]
        );
        assert_eq!(top_name(&two), "50:100x100");
        assert_eq!(parse_top(&top_name(&two)).unwrap(), two);
        for bad in [
            "10",
            "10:x",
            ":200",
            "a:b",
            "10:200,",
            "10:200,4",
            "50:100x",
            "50:x100",
            "50:100xx100",
        ] {
            let e = parse_top(bad).unwrap_err().to_string();
            assert!(e.contains("Z2:H2"), "{bad}: {e}");
        }
        // A missing key, a non-number and an invalid model are errors naming the problem.
        let mut missing = VaeConfig::default().to_metadata();
        missing.retain(|(k, _)| k != "latent");
        let e = VaeConfig::from_metadata(&missing).unwrap_err().to_string();
        assert!(e.contains("latent"), "{e}");
        let mut nan = VaeConfig::default().to_metadata();
        nan.iter_mut()
            .filter(|(k, _)| k == "input_dim")
            .for_each(|(_, v)| *v = "x".into());
        assert!(VaeConfig::from_metadata(&nan)
            .unwrap_err()
            .to_string()
            .contains("input_dim"));
        let mut odd = VaeConfig::default().to_metadata();
        odd.iter_mut()
            .filter(|(k, _)| k == "latent")
            .for_each(|(_, v)| *v = "3".into());
        assert!(VaeConfig::from_metadata(&odd).is_err());
    }

    fn conv(channels: &[usize], input: [usize; 3]) -> VaeConfig {
        VaeConfig {
            input_dim: input.iter().product(),
            hidden: vec![256],
            arch: Arch::Conv(ConvArch {
                input,
                channels: channels.to_vec(),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn conv_configurations_round_trip_and_size_their_feature_map() {
        let reference = conv(&[32, 64], [1, 28, 28]);
        reference.validate().unwrap();
        let arch = reference.conv().unwrap();
        assert_eq!(arch.feature_map(), Some([64, 7, 7]));
        assert_eq!(arch.sides(), vec![(28, 28), (14, 14)]);
        assert_eq!(reference.dense_input_dim(), 3136);
        assert_eq!(reference.enc_input_dim(), 784);
        // The PyTorch reference model's parameter count (every weight's rows already whole vec4s).
        let torch = (16 * 32 + 32)
            + (16 * 32 * 64 + 64)
            + (3136 * 256 + 256)
            + 2 * (256 * 20 + 20)
            + (20 * 256 + 256)
            + (256 * 3136 + 3136)
            + (16 * 64 * 32 + 32)
            + (16 * 32 + 1);
        assert_eq!(reference.num_params(), torch);
        // The one-hot joins the dense layers: the image alone enters the encoder.
        let cond = VaeConfig {
            classes: 10,
            ..reference.clone()
        };
        assert_eq!(
            (cond.enc_input_dim(), cond.dense_input_dim(), cond.dec_input_dim()),
            (784, 3148, 32)
        );
        let vq = VaeConfig {
            hidden: vec![],
            latent: 3136,
            code: Code::Quantized {
                codes: 512,
                groups: 49,
                commitment: 0.25,
            },
            ..reference.clone()
        };
        vq.validate().unwrap();
        let rgb = conv(&[16, 32, 64], [3, 32, 40]);
        rgb.validate().unwrap();
        for cfg in [reference, cond, vq, rgb] {
            let meta = cfg.to_metadata();
            assert_eq!(VaeConfig::from_metadata(&meta).unwrap(), cfg);
            assert!(meta.iter().any(|(k, v)| k == "arch" && v == "conv"));
        }
        // Dense models keep the metadata they had: no `arch`, so older readers still load them.
        assert!(!VaeConfig::default().to_metadata().iter().any(|(k, _)| k == "arch"));
        let mut bad = conv(&[32, 64], [1, 28, 28]).to_metadata();
        bad.iter_mut()
            .filter(|(k, _)| k == "input_shape")
            .for_each(|(_, v)| *v = "1,28".into());
        assert!(VaeConfig::from_metadata(&bad)
            .unwrap_err()
            .to_string()
            .contains("input_shape"));
        let mut bad = conv(&[32, 64], [1, 28, 28]).to_metadata();
        bad.iter_mut()
            .filter(|(k, _)| k == "arch")
            .for_each(|(_, v)| *v = "resnet".into());
        assert!(VaeConfig::from_metadata(&bad)
            .unwrap_err()
            .to_string()
            .contains("resnet"));
    }

    #[test]
    fn conv_configurations_refuse_by_name() {
        let refused = |cfg: VaeConfig, needles: &[&str]| {
            let e = cfg.validate().expect_err("refused").to_string();
            assert!(needles.iter().all(|n| e.contains(n)), "{e} lacks {needles:?}");
        };
        refused(
            conv(&[32, 64, 128], [1, 28, 28]),
            &["ConvArch::channels", "divide by 8", "28×28"],
        );
        refused(conv(&[], [1, 28, 28]), &["ConvArch::channels", "1 to 8"]);
        refused(conv(&[32, 0], [1, 28, 28]), &["positive"]);
        refused(
            VaeConfig {
                input_dim: 788,
                ..conv(&[32, 64], [1, 28, 28])
            },
            &["ConvArch::input", "input_dim", "784"],
        );
        refused(
            VaeConfig {
                code: Code::Deterministic {
                    l1: 0.0,
                    contractive: 0.5,
                },
                latent: 20,
                ..conv(&[32, 64], [1, 28, 28])
            },
            &["contractive", "VaeConfig::arch"],
        );
        let vq = |latent: usize, groups: usize, hidden: Vec<usize>, classes: usize| VaeConfig {
            hidden,
            latent,
            classes,
            code: Code::Quantized {
                codes: 16,
                groups,
                commitment: 0.25,
            },
            ..conv(&[32, 64], [1, 28, 28])
        };
        refused(
            vq(3136, 49, vec![], 10),
            &["VaeConfig::classes", "conditional convolutional VQ-VAE"],
        );
        refused(vq(3136, 49, vec![256], 0), &["VaeConfig::hidden", "no dense layers"]);
        refused(
            vq(20, 10, vec![], 0),
            &["VaeConfig::latent", "latent 3136 in 49 groups of 64"],
        );
        refused(vq(3136, 64, vec![], 0), &["Code::Quantized::groups"]);
    }

    #[test]
    fn validation_refuses_what_the_kernels_cannot_run() {
        let ok = VaeConfig::default();
        assert!(ok.validate().is_ok());
        let bad = [
            VaeConfig {
                input_dim: 0,
                ..ok.clone()
            },
            VaeConfig {
                input_dim: 786,
                ..ok.clone()
            },
            VaeConfig {
                latent: 0,
                ..ok.clone()
            },
            VaeConfig {
                latent: 7,
                ..ok.clone()
            },
            VaeConfig {
                hidden: vec![400, 0],
                ..ok.clone()
            },
            VaeConfig {
                hidden: vec![402],
                ..ok.clone()
            },
            VaeConfig {
                classes: 1,
                ..ok.clone()
            },
            VaeConfig {
                classes: 1025,
                ..ok.clone()
            },
            VaeConfig {
                likelihood: Likelihood::Gaussian { variance: 0.0 },
                ..ok.clone()
            },
            VaeConfig {
                likelihood: Likelihood::Gaussian { variance: f32::NAN },
                ..ok.clone()
            },
            VaeConfig {
                code: Code::Deterministic {
                    l1: -0.1,
                    contractive: 0.0,
                },
                ..ok.clone()
            },
            VaeConfig {
                code: Code::Deterministic {
                    l1: f32::INFINITY,
                    contractive: 0.0,
                },
                ..ok.clone()
            },
            VaeConfig {
                latent: 0,
                code: Code::Deterministic {
                    l1: 0.0,
                    contractive: 0.0,
                },
                ..ok.clone()
            },
            // The contractive penalty's closed form needs one piecewise-linear hidden layer.
            VaeConfig {
                hidden: vec![400, 200],
                code: Code::Deterministic {
                    l1: 0.0,
                    contractive: 0.1,
                },
                ..ok.clone()
            },
            VaeConfig {
                activation: Activation::Tanh,
                code: Code::Deterministic {
                    l1: 0.0,
                    contractive: 0.1,
                },
                ..ok.clone()
            },
            VaeConfig {
                code: Code::Deterministic {
                    l1: 0.0,
                    contractive: -0.1,
                },
                ..ok.clone()
            },
            // Codebooks of at least 2 entries, groups dividing the latent size.
            VaeConfig {
                code: Code::Quantized {
                    codes: 1,
                    groups: 10,
                    commitment: 0.25,
                },
                ..ok.clone()
            },
            VaeConfig {
                code: Code::Quantized {
                    codes: 16,
                    groups: 3,
                    commitment: 0.25,
                },
                ..ok.clone()
            },
            VaeConfig {
                code: Code::Quantized {
                    codes: 16,
                    groups: 0,
                    commitment: 0.25,
                },
                ..ok.clone()
            },
            // Upper stochastic layers: at most MAX_TOP_LAYERS, each even, hidden a multiple of 4.
            VaeConfig {
                code: Code::Hierarchical(vec![
                    TopLatent {
                        latent: 4,
                        hidden: vec![8]
                    };
                    MAX_TOP_LAYERS + 1
                ]),
                ..ok.clone()
            },
            VaeConfig {
                code: Code::Hierarchical(vec![
                    TopLatent {
                        latent: 4,
                        hidden: vec![8],
                    },
                    TopLatent {
                        latent: 5,
                        hidden: vec![8],
                    },
                ]),
                ..ok.clone()
            },
            // A second stochastic layer: a VAE, an even z₂, hidden a multiple of 4.
            VaeConfig {
                code: Code::Hierarchical(vec![TopLatent {
                    latent: 3,
                    hidden: vec![200],
                }]),
                ..ok.clone()
            },
            VaeConfig {
                code: Code::Hierarchical(vec![TopLatent {
                    latent: 10,
                    hidden: vec![202],
                }]),
                ..ok.clone()
            },
            VaeConfig {
                code: Code::Hierarchical(vec![]),
                ..ok.clone()
            },
        ];
        for cfg in bad {
            assert!(cfg.validate().is_err(), "{cfg:?} validated");
        }
        // An autoencoder's head is the code alone, so an odd latent size is fine.
        let odd = VaeConfig {
            latent: 7,
            code: Code::Deterministic {
                l1: 0.0,
                contractive: 0.0,
            },
            ..ok.clone()
        };
        assert!(odd.validate().is_ok());
    }

    #[test]
    fn sizes_and_parameter_count() {
        // 784·400 + 400 + 400·40 + 40 + 20·400 + 400 + 400·784 + 784: the reference model.
        assert_eq!(VaeConfig::default().num_params(), 652_824);
        // A VQ-VAE's head is the autoencoder's, plus its codebook: 512 entries of 20/10 values.
        let vq = VaeConfig {
            code: Code::Quantized {
                codes: 512,
                groups: 10,
                commitment: 0.25,
            },
            ..Default::default()
        };
        assert_eq!(vq.num_params(), 652_824 - 8_020 + 1_024);
        // The autoencoder's head is 400·20 + 20 instead of 400·40 + 40.
        let ae = VaeConfig {
            code: Code::Deterministic {
                l1: 1.0,
                contractive: 0.0,
            },
            ..Default::default()
        };
        assert_eq!((ae.head_width(), ae.num_params()), (20, 652_824 - 8_020));
        let c = VaeConfig {
            classes: 10,
            ..Default::default()
        };
        // Inputs padded to whole vec4s: 784 + 10 → 796, 20 + 10 → 32.
        assert_eq!((c.enc_input_dim(), c.dec_input_dim()), (796, 32));
        let learned = VaeConfig {
            likelihood: Likelihood::GaussianLearned { per_pixel: true },
            ..Default::default()
        };
        assert_eq!(learned.num_params(), 652_824 + 784);
        // A second layer of 10 with 200 hidden units: 20·200 + 200 + 200·20 + 20 for
        // q(z₂|z₁), 12·200 + 200 + 200·40 + 40 for p(z₁|z₂) (z₂ padded to 12 columns).
        let top = VaeConfig {
            code: Code::Hierarchical(vec![TopLatent {
                latent: 10,
                hidden: vec![200],
            }]),
            ..Default::default()
        };
        assert_eq!(top.num_params(), 652_824 + 8_220 + 10_640);
        // Conditional on 10 classes: q(z₂|z₁, y) reads [z₁ | one-hot] padded to 32 columns and
        // p(z₁|z₂, y) [z₂ | one-hot] padded to 20, (32 − 20)·200 and (20 − 12)·200 more.
        let cond = VaeConfig {
            classes: 10,
            ..top.clone()
        };
        assert_eq!((cond.dec_input_dim(), cond.top_input_dim(0)), (32, 20));
        let flat_cond = VaeConfig {
            code: Code::Gaussian,
            ..cond.clone()
        };
        assert_eq!(
            cond.num_params(),
            flat_cond.num_params() + 8_220 + 10_640 + 12 * 200 + 8 * 200
        );
        // A third layer z₃ of 4 with 100 hidden units above z₂ = 10: q(z₃|z₂) reads z₂'s
        // rows (12 wide) and p(z₂|z₃) z₃'s (4 wide, no padding).
        let three = VaeConfig {
            code: Code::Hierarchical(vec![
                top.top()[0].clone(),
                TopLatent {
                    latent: 4,
                    hidden: vec![100],
                },
            ]),
            ..Default::default()
        };
        assert_eq!(three.top_below_dim(1), 12);
        assert_eq!(
            three.num_params(),
            top.num_params() + (12 * 100 + 100) + (100 * 8 + 8) + (4 * 100 + 100) + (100 * 20 + 20)
        );
        cond.validate().unwrap();
    }

    fn cases_top() -> Vec<TopLatent> {
        vec![
            TopLatent {
                latent: 16,
                hidden: vec![200],
            },
            TopLatent {
                latent: 8,
                hidden: vec![100],
            },
        ]
    }
}
