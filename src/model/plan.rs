//! Activations planned once per batch size, and the dispatch lists of one training or
//! evaluation step. Reading this file top to bottom is reading one step.

use crate::error::Result;
use crate::gpu::{Dispatch, Gpu, Tensor};
use crate::model::config::Code;
use crate::model::vae::{TextureMirrors, Vae};
use crate::nn::{Layer, LEAKY_SLOPE, PARAM_ALIGN};
use crate::ops::{self, Activation, AdamConfig, Segment, StepBuffer};

/// Metric log columns written by every step.
pub const SLOT_RECON: usize = 0;
/// Σ KL over the batch.
pub const SLOT_KL: usize = 1;
/// Columns of the metric log.
pub const METRIC_SLOTS: usize = 2;

/// A byte dataset resident on the GPU (four pixels per u32 word), with its labels on the host
/// and, when it has labels, on the device (one u32 each, for conditional models).
pub struct GpuDataset {
    /// The pixels as bytes, four per u32 word, example after example.
    pub words: Tensor,
    /// Examples.
    pub count: usize,
    /// Pixels per example (a multiple of 4).
    pub dim: usize,
    /// One class label per example, or empty for an unlabelled dataset.
    pub labels: Vec<u8>,
    /// The labels as u32 on the device, when there are labels.
    pub labels_gpu: Option<Tensor>,
}

impl GpuDataset {
    /// Uploads `count` examples of `dim` bytes (dim a multiple of 4) and their labels (`labels`
    /// empty for an unlabelled dataset, else one per example).
    pub fn upload(gpu: &Gpu, label: &str, pixels: &[u8], count: usize, dim: usize, labels: Vec<u8>) -> Result<Self> {
        if !dim.is_multiple_of(4) || pixels.len() != count * dim || count == 0 {
            return Err(crate::VaeError::Shape(format!(
                "{label}: {} bytes for {count} examples of {dim} pixels (dim must be a multiple of 4, count > 0)",
                pixels.len()
            )));
        }
        if !labels.is_empty() && labels.len() != count {
            return Err(crate::VaeError::Shape(format!(
                "{label}: {} labels for {count} examples",
                labels.len()
            )));
        }
        let words: Vec<u32> = pixels
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let labels_gpu = if labels.is_empty() {
            None
        } else {
            let l: Vec<u32> = labels.iter().map(|&v| v as u32).collect();
            Some(gpu.upload_words(&format!("{label}_labels"), &l)?)
        };
        Ok(GpuDataset {
            words: gpu.upload_words(label, &words)?,
            count,
            dim,
            labels,
            labels_gpu,
        })
    }
}

/// Gradients of the activations (training only).
pub struct ActivationGrads {
    /// ∂L/∂ of each decoder hidden layer's output, [L·B, h], in decoder order.
    pub dec_hidden: Vec<Tensor>,
    /// ∂L/∂ of the decoder's input (z and, for a conditional model, its class columns).
    pub z: Tensor,
    /// ∂L/∂ of the encoder head's output [B, 2Z] (μ then log σ²).
    pub enc: Tensor,
    /// ∂L/∂ of each encoder hidden layer's output, [B, h].
    pub enc_hidden: Vec<Tensor>,
}

/// Scratch of the contractive penalty (one hidden layer of width H; see code.wgsl).
pub struct ContractiveScratch {
    /// [B, H] of ones: the activation backward of these gives the mask.
    pub ones: Tensor,
    /// M = act′ of the hidden layer, [B, H].
    pub mask: Tensor,
    /// S = MᵀM, G1 = W1ᵀW1, G2 = W2W2ᵀ, and the gradient factors A1, A2: [H, H] each.
    pub s: Tensor,
    /// W1ᵀW1 over W1's pixel rows (a conditional model's label rows are not x's).
    pub g1: Tensor,
    /// W2W2ᵀ.
    pub g2: Tensor,
    /// 2c·S∘G2: the gradient of the penalty is W1·A1 for W1.
    pub a1: Tensor,
    /// 2c·S∘G1: the gradient of the penalty is A2·W2 for the head's W2.
    pub a2: Tensor,
}

/// The running state of a VQ-VAE codebook trained by moving averages (see code.wgsl's
/// `vq_ema`): part of the training state, saved and restored with Adam's moments.
pub struct VqEma {
    /// γ: the weight of the past in each update.
    pub decay: f32,
    /// N, the decayed count of vectors assigned to each entry, [K, d] (repeated per value).
    pub counts: Tensor,
    /// M, the decayed sum of those vectors, [K, d].
    pub sums: Tensor,
}

/// One upper stochastic layer's activations in a hierarchical VAE, one row per draw of the
/// layer below (L·B rows; see [`crate::model::TopLatent`]). Upper layer i holds z_{i+2}, the
/// network q(z_{i+2}|z_{i+1}) and the conditional prior p(z_{i+1}|z_{i+2}) of the layer below;
/// the comments name the i = 0 case, z₂ above z₁.
pub struct TopWorkspace {
    /// q(z₂|z₁)'s hidden layer, [L·B, H₂].
    pub up_hidden: Tensor,
    /// [μ₂ | log σ₂²], [L·B, 2Z₂].
    pub q: Tensor,
    /// The draws of z₂, [L·B, Z₂'] (then a conditional model's one-hot, zero-padded to
    /// [`crate::model::VaeConfig::top_input_dim`]).
    pub z: Tensor,
    /// p(z₁|z₂)'s hidden layer, [L·B, H₂].
    pub prior_hidden: Tensor,
    /// [μₚ | log σₚ²] of p(z₁|z₂), [L·B, 2Z₁].
    pub p_below: Tensor,
    /// ∂L/∂p_below, written by the lower layer's KL term in the forward pass, [L·B, 2Z₁].
    pub d_p_below: Tensor,
    /// The lower layer's KL term's ∂L/∂z₁, [L·B, Z₁].
    pub dz_kl_below: Tensor,
    /// Terms of this layer's log p(z₂|·) − log q(z₂|z₁), [L·B·Z₂], for importance-weighted
    /// evaluation (z₁'s are in [`Workspace::log_ratio`]).
    pub log_ratio: Option<Tensor>,
    /// The rest of the layer's gradients, for a training workspace.
    pub grads: Option<TopGrads>,
}

/// Gradients of a [`TopWorkspace`]'s activations (training only).
pub struct TopGrads {
    /// ∂L/∂ pre-activation of q(z₂|z₁)'s hidden layer.
    pub up_hidden: Tensor,
    /// ∂L/∂[μ₂ | log σ₂²].
    pub q: Tensor,
    /// ∂L/∂z₂ through p(z₁|z₂)'s network.
    pub z: Tensor,
    /// ∂L/∂ pre-activation of p(z₁|z₂)'s hidden layer.
    pub prior_hidden: Tensor,
    /// ∂L/∂z₁ through q(z₂|z₁)'s network, shaped as z₁'s rows.
    pub z_below_up: Tensor,
}

/// Every activation of a step for up to `batch` examples and `samples` draws each, allocated
/// once. Plans for fewer rows (the last partial batch) view prefixes of the same buffers.
pub struct Workspace {
    /// Examples per step (B).
    pub batch: usize,
    /// Draws of z per example (L).
    pub samples: usize,
    /// The batch [B, D (+ classes)], gathered from the dataset: the encoder's input and the
    /// loss's target.
    pub x: Tensor,
    /// A denoising model's encoder input: `x` with masking noise (see
    /// [`Workspace::with_noisy_input`]); the loss still reads the clean `x`.
    pub x_noisy: Option<Tensor>,
    /// Each encoder hidden layer's output, [B, h].
    pub enc_hidden: Vec<Tensor>,
    /// The encoder head's output [B, 2Z]: μ then log σ² per row (an autoencoder: the code, [B, Z]).
    pub enc: Tensor,
    /// The decoder's input [L·B, Z (+ classes)]: the draws of z.
    pub z: Tensor,
    /// Each decoder hidden layer's output, [L·B, h], in decoder order.
    pub dec_hidden: Vec<Tensor>,
    /// The decoder's output [L·B, D]: logits (Bernoulli) or means (Gaussian).
    pub out: Tensor,
    /// ∂L/∂out, written by the loss.
    pub d_out: Tensor,
    /// nll [L·B] at offset 0, the KL's terms [B·Z] at `kl_offset` floats.
    pub per_example: Tensor,
    kl_offset: usize,
    /// Where each upper layer's KL terms start in `per_example`, after the lower layer's
    /// L·B·Z and each other (each aligned for a storage view), with that layer's latent size.
    top_terms: Vec<(usize, usize)>,
    latent: usize,
    /// The contractive penalty's H·H terms sit at `kl_offset`, before the KL's (L1's) terms, so
    /// one segment sums both for any batch size; this is their region's length, padded to
    /// [`PARAM_ALIGN`] floats.
    pen_terms: usize,
    /// The contractive penalty's scratch, for a model that has one.
    pub contractive: Option<ContractiveScratch>,
    /// A VQ-VAE's codebook index of each of the B·G vectors (exact integers as f32).
    pub vq_index: Option<Tensor>,
    /// A VQ-VAE's codebook moving averages, when it is trained by them (see
    /// [`Workspace::with_vq_ema`]).
    pub vq_ema: Option<VqEma>,
    /// Terms of log p(z) − log q(z|x), [L·B, Z], for importance-weighted evaluation.
    pub log_ratio: Option<Tensor>,
    /// Per-element gradient of a learned log-variance, [L·B, D].
    pub dlc: Option<Tensor>,
    /// The activations' gradients, for a training workspace.
    pub grads: Option<ActivationGrads>,
    /// A hierarchical VAE's upper layers, from z₂ up (empty for one stochastic layer).
    pub top: Vec<TopWorkspace>,
}

fn rows(t: &Tensor, n: usize) -> Tensor {
    let cols = t.shape()[1];
    t.reshape_prefix(&[n, cols])
}

impl Workspace {
    /// Allocates a step's activations (and their gradients when `train`).
    pub fn new(gpu: &Gpu, vae: &Vae, batch: usize, samples: usize, train: bool, log_ratio: bool) -> Result<Self> {
        let cfg = &vae.config;
        let r = samples * batch;
        let t = |name: &str, shape: &[usize]| gpu.tensor(name, shape);
        // The operands of the large products get texture mirrors when the model's policy asks.
        let mirror = !matches!(vae.texture_mirrors(), TextureMirrors::None);
        let tm = |name: &str, shape: &[usize]| {
            let whole = shape.iter().product::<usize>() % 4 == 0;
            ops::mirrored(gpu, name, gpu.tensor(name, shape)?, mirror && whole)
        };
        let enc_hidden = cfg
            .hidden
            .iter()
            .map(|&h| tm("enc_hidden", &[batch, h]))
            .collect::<Result<Vec<_>>>()?;
        let dec_hidden = cfg
            .hidden
            .iter()
            .rev()
            .map(|&h| tm("dec_hidden", &[r, h]))
            .collect::<Result<Vec<_>>>()?;
        let kl_offset = r.div_ceil(PARAM_ALIGN) * PARAM_ALIGN;
        let contractive = match cfg.code {
            Code::Deterministic { contractive, .. } if contractive > 0.0 => {
                let h = cfg.hidden[0];
                let sq = |name: &str| t(name, &[h, h]);
                Some(ContractiveScratch {
                    ones: gpu.upload("contractive_ones", &[batch, h], &vec![1.0; batch * h])?,
                    mask: t("contractive_mask", &[batch, h])?,
                    s: sq("contractive_s")?,
                    g1: sq("contractive_g1")?,
                    g2: sq("contractive_g2")?,
                    a1: sq("contractive_a1")?,
                    a2: sq("contractive_a2")?,
                })
            }
            _ => None,
        };
        // Padded so that the KL's terms after them start on a storage-offset boundary (the
        // padding is never written: zeros, which the metric segment adds harmlessly).
        let pen_terms = contractive
            .as_ref()
            .map_or(0, |c| c.s.len().div_ceil(PARAM_ALIGN) * PARAM_ALIGN);
        let mut top = Vec::new();
        for (i, tl) in cfg.top.iter().enumerate() {
            let (below, below_dim) = (cfg.top_below_latent(i), cfg.top_below_dim(i));
            let g = |name: &str, shape: &[usize]| if train { t(name, shape).map(Some) } else { Ok(None) };
            let grads = match (
                g("d_top_up_hidden", &[r, tl.hidden])?,
                g("d_top_q", &[r, 2 * tl.latent])?,
                g("d_top_z", &[r, cfg.top_input_dim(i)])?,
                g("d_top_prior_hidden", &[r, tl.hidden])?,
                g("d_top_z_below_up", &[r, below_dim])?,
            ) {
                (Some(up_hidden), Some(q), Some(z), Some(prior_hidden), Some(z_below_up)) => Some(TopGrads {
                    up_hidden,
                    q,
                    z,
                    prior_hidden,
                    z_below_up,
                }),
                _ => None,
            };
            top.push(TopWorkspace {
                up_hidden: t("top_up_hidden", &[r, tl.hidden])?,
                q: t("top_q", &[r, 2 * tl.latent])?,
                // Padded columns: never written, so zero (a conditional model's one-hot is
                // written by plan_inputs, as z₁'s is).
                z: t("top_z", &[r, cfg.top_input_dim(i)])?,
                prior_hidden: t("top_prior_hidden", &[r, tl.hidden])?,
                p_below: t("top_p_below", &[r, 2 * below])?,
                d_p_below: t("d_top_p_below", &[r, 2 * below])?,
                dz_kl_below: t("d_top_z_kl_below", &[r, below])?,
                log_ratio: if log_ratio {
                    Some(t("top_log_ratio", &[r * tl.latent])?)
                } else {
                    None
                },
                grads,
            });
        }
        // A hierarchical model's lower terms are per draw (L·B·Z), and each upper layer's
        // follow them (L·B·Z_k), every view starting on a storage-offset boundary.
        let kl_len = if cfg.top.is_empty() {
            batch * cfg.latent
        } else {
            r * cfg.latent
        };
        let align = |n: usize| n.div_ceil(PARAM_ALIGN) * PARAM_ALIGN;
        let mut end = align(kl_offset + pen_terms + kl_len);
        let mut top_terms = Vec::new();
        for tl in &cfg.top {
            top_terms.push((end, tl.latent));
            end = align(end + r * tl.latent);
        }
        let grads = if train {
            Some(ActivationGrads {
                dec_hidden: cfg
                    .hidden
                    .iter()
                    .rev()
                    .map(|&h| tm("d_dec_hidden", &[r, h]))
                    .collect::<Result<Vec<_>>>()?,
                z: t("d_z", &[r, cfg.dec_input_dim()])?,
                enc: t("d_enc", &[batch, cfg.head_width()])?,
                enc_hidden: cfg
                    .hidden
                    .iter()
                    .map(|&h| tm("d_enc_hidden", &[batch, h]))
                    .collect::<Result<Vec<_>>>()?,
            })
        } else {
            None
        };
        Ok(Workspace {
            batch,
            samples,
            x: tm("x", &[batch, cfg.enc_input_dim()])?,
            x_noisy: None,
            enc_hidden,
            enc: t("enc", &[batch, cfg.head_width()])?,
            z: t("z", &[r, cfg.dec_input_dim()])?,
            dec_hidden,
            out: t("out", &[r, cfg.input_dim])?,
            // The loss always writes its gradient (evaluation simply ignores it).
            d_out: if train {
                tm("d_out", &[r, cfg.input_dim])?
            } else {
                t("d_out", &[r, cfg.input_dim])?
            },
            per_example: t("per_example", &[end])?,
            kl_offset,
            top_terms,
            latent: cfg.latent,
            pen_terms,
            contractive,
            vq_index: match cfg.code {
                Code::Quantized { groups, .. } => Some(t("vq_index", &[batch * groups])?),
                _ => None,
            },
            log_ratio: if log_ratio {
                Some(t("log_ratio", &[r * cfg.latent])?)
            } else {
                None
            },
            dlc: match cfg.likelihood.learned_log_c_len(cfg.input_dim) {
                Some(_) => Some(t("d_log_c_terms", &[r, cfg.input_dim])?),
                None => None,
            },
            grads,
            top,
            vq_ema: None,
        })
    }

    /// Makes training steps update a VQ-VAE's codebook by exponential moving averages with
    /// decay `decay` (the VQ-VAE paper's alternative to its gradient) instead of by Adam:
    /// allocates the running counts and sums, zero.
    pub fn with_vq_ema(mut self, gpu: &Gpu, vae: &Vae, decay: f32) -> Result<Self> {
        let shape = match (vae.codebook, vae.config.code) {
            (Some(slot), Code::Quantized { .. }) => vae.arena.layout.slots()[slot].shape.clone(),
            _ => {
                return Err(crate::VaeError::Config(
                    "codebook moving averages need a VQ-VAE (a quantized code)".into(),
                ))
            }
        };
        if !(decay > 0.0 && decay < 1.0) {
            return Err(crate::VaeError::Config(format!(
                "the codebook's moving-average decay must be in (0, 1), got {decay}"
            )));
        }
        self.vq_ema = Some(VqEma {
            decay,
            counts: gpu.tensor("vq_ema_counts", &shape)?,
            sums: gpu.tensor("vq_ema_sums", &shape)?,
        });
        Ok(self)
    }

    /// Adds the encoder input of a denoising model, [`Workspace::x_noisy`] (with a texture
    /// mirror where `x` has one: the first encoder layer reads it instead of `x`).
    pub fn with_noisy_input(mut self, gpu: &Gpu) -> Result<Self> {
        let shape = self.x.shape().to_vec();
        let mirror = self.x.mirror().is_some();
        self.x_noisy = Some(ops::mirrored(gpu, "x_noisy", gpu.tensor("x_noisy", &shape)?, mirror)?);
        Ok(self)
    }

    /// Device bytes of every tensor in the workspace (buffers; see [`Workspace::mirror_bytes`]).
    pub fn bytes(&self) -> u64 {
        self.tensors().iter().map(|t| t.buffer().bytes()).sum()
    }

    /// Device bytes of the workspace's texture mirrors.
    pub fn mirror_bytes(&self) -> u64 {
        self.tensors()
            .iter()
            .filter_map(|t| t.mirror())
            .map(|m| m.bytes())
            .sum()
    }

    fn tensors(&self) -> Vec<&Tensor> {
        let mut all: Vec<&Tensor> = vec![&self.x, &self.enc, &self.z, &self.out, &self.d_out, &self.per_example];
        all.extend(self.enc_hidden.iter().chain(&self.dec_hidden));
        all.extend(self.log_ratio.iter().chain(self.dlc.iter()).chain(self.x_noisy.iter()));
        if let Some(c) = &self.contractive {
            all.extend([&c.ones, &c.mask, &c.s, &c.g1, &c.g2, &c.a1, &c.a2]);
        }
        all.extend(self.vq_index.iter());
        if let Some(e) = &self.vq_ema {
            all.extend([&e.counts, &e.sums]);
        }
        for t in &self.top {
            all.extend([
                &t.up_hidden,
                &t.q,
                &t.z,
                &t.prior_hidden,
                &t.p_below,
                &t.d_p_below,
                &t.dz_kl_below,
            ]);
            all.extend(t.log_ratio.iter());
            if let Some(g) = &t.grads {
                all.extend([&g.up_hidden, &g.q, &g.z, &g.prior_hidden, &g.z_below_up]);
            }
        }
        if let Some(g) = &self.grads {
            all.extend([&g.z, &g.enc]);
            all.extend(g.dec_hidden.iter().chain(&g.enc_hidden));
        }
        all
    }

    /// Per-draw NLL for the first `b` examples.
    pub fn nll(&self, b: usize) -> Tensor {
        self.per_example.reshape_prefix(&[self.samples * b])
    }

    /// The KL's terms [b·Z] for the first `b` examples (an autoencoder: its L1 penalty's; a
    /// VQ-VAE: its codebook and commitment terms').
    pub fn kl(&self, b: usize) -> Tensor {
        let buf = self.per_example.buffer().clone();
        let n = b * self.latent;
        let start = self.kl_offset + self.pen_terms;
        Tensor::view(buf, self.per_example.offset() + 4 * start as u64, &[n])
    }

    /// A hierarchical VAE's lower KL terms [r·Z] for its first `r` draws of z₁.
    pub fn kl_rows(&self, r: usize) -> Tensor {
        let buf = self.per_example.buffer().clone();
        let start = self.kl_offset + self.pen_terms;
        Tensor::view(buf, self.per_example.offset() + 4 * start as u64, &[r * self.latent])
    }

    /// A hierarchical VAE's upper layer i's KL terms [r·Z_{i+2}] for its first `r` draws
    /// (after the lower layers', for the workspace's L·B draws).
    pub fn kl_top(&self, i: usize, r: usize) -> Tensor {
        let buf = self.per_example.buffer().clone();
        let (offset, latent) = self.top_terms[i];
        Tensor::view(buf, self.per_example.offset() + 4 * offset as u64, &[r * latent])
    }
}

/// Where a step's batch comes from.
pub struct BatchSource<'a> {
    /// The dataset the batch is gathered from.
    pub data: &'a GpuDataset,
    /// Example order; the step uniform's batch_start indexes it.
    pub perm: &'a Tensor,
    /// Dynamic binarization of grey levels.
    pub binarize: bool,
    /// Denoising: the probability that masking noise zeroes an input pixel of the encoder
    /// (0: off). Needs a workspace [`Workspace::with_noisy_input`].
    pub denoise: f32,
}

/// Plans the batch's inputs for `b` examples (b ≤ ws.batch): the gather into `ws.x`; for a
/// conditional model, the one-hot labels after the pixels and after each of the L·B codes; and
/// for a denoising model the masking noise into `ws.x_noisy`. Returns the dispatches and the
/// encoder's input (`x` or its noisy copy).
pub fn plan_inputs(
    gpu: &Gpu,
    vae: &Vae,
    ws: &Workspace,
    b: usize,
    src: &BatchSource<'_>,
    step: &StepBuffer,
) -> Result<(Vec<Dispatch>, Tensor)> {
    let x = rows(&ws.x, b);
    let mut d = vec![ops::gather(
        gpu,
        "gather",
        step,
        &src.data.words,
        src.data.count,
        src.data.dim,
        src.perm,
        &x,
        src.binarize,
    )?];
    if vae.config.classes > 0 {
        let labels = src.data.labels_gpu.as_ref().ok_or_else(|| {
            crate::VaeError::Config(
                "a conditional model needs a labelled dataset (binarized MNIST has no labels)".into(),
            )
        })?;
        d.push(ops::condition(
            gpu,
            "condition",
            step,
            labels,
            src.perm,
            &x,
            vae.config.input_dim,
            &rows(&ws.z, ws.samples * b),
            vae.config.latent,
        )?);
        // A hierarchical model's upper layers' rows carry the label too, for p(z₁|z₂, y) and
        // q(z₃|z₂, y) and so on. (x's one-hot is written again: the op conditions both.)
        for (tw, t) in ws.top.iter().zip(&vae.config.top) {
            d.push(ops::condition(
                gpu,
                "condition.top",
                step,
                labels,
                src.perm,
                &x,
                vae.config.input_dim,
                &rows(&tw.z, ws.samples * b),
                t.latent,
            )?);
        }
    }
    if src.denoise > 0.0 {
        let noisy = ws.x_noisy.as_ref().ok_or_else(|| {
            crate::VaeError::Config(
                "a denoising step needs a workspace with its noisy input (Workspace::with_noisy_input)".into(),
            )
        })?;
        let noisy = rows(noisy, b);
        d.push(ops::corrupt(
            gpu,
            "corrupt",
            step,
            &x,
            vae.config.input_dim,
            src.denoise,
            &noisy,
        )?);
        d.extend(ops::refresh_mirror("x_noisy", &noisy));
        return Ok((d, noisy));
    }
    d.extend(ops::refresh_mirror("x", &x));
    Ok((d, x))
}

/// Plans one step for `b` examples (b ≤ ws.batch): gather, encode, reparameterize, decode,
/// loss, and the metric row; with `adam`, also the full backward pass and the optimizer.
/// Every list starts from the step uniform, so one plan serves every step of its batch size.
pub fn plan_step(
    gpu: &Gpu,
    vae: &Vae,
    ws: &Workspace,
    b: usize,
    src: &BatchSource<'_>,
    step: &StepBuffer,
    metric_log: &Tensor,
    adam: Option<&AdamConfig>,
) -> Result<Vec<Dispatch>> {
    if adam.is_some() && ws.grads.is_none() {
        return Err(crate::VaeError::Config(
            "plan_step: a training step (adam given) needs a workspace built with train = true".into(),
        ));
    }
    let l = ws.samples;
    let r = l * b;
    let x = rows(&ws.x, b);
    let enc_h: Vec<Tensor> = ws.enc_hidden.iter().map(|t| rows(t, b)).collect();
    let enc = rows(&ws.enc, b);
    let z = rows(&ws.z, r);
    let dec_h: Vec<Tensor> = ws.dec_hidden.iter().map(|t| rows(t, r)).collect();
    let out = rows(&ws.out, r);
    let (nll, kl) = (ws.nll(b), ws.kl(b));
    let zd = vae.config.latent;
    let log_ratio = ws.log_ratio.as_ref().map(|t| t.reshape_prefix(&[r * zd]));

    // Forward.
    let (mut d, x_enc) = plan_inputs(gpu, vae, ws, b, src, step)?;
    d.extend(vae.plan_encode(gpu, &x_enc, &enc_h, &enc)?);
    match vae.config.code {
        Code::Gaussian if !vae.top.is_empty() => {
            d.push(ops::sample_forward(gpu, "sample.forward", step, &enc, l, &z)?);
            d.extend(plan_top_forward(gpu, vae, ws, step, b, &enc, &z, log_ratio.as_ref())?);
        }
        Code::Gaussian => d.push(ops::reparam_kl_forward(
            gpu,
            "reparam_kl.forward",
            step,
            &enc,
            l,
            &z,
            &kl,
            log_ratio.as_ref(),
        )?),
        Code::Deterministic { l1, .. } => {
            if l != 1 || log_ratio.is_some() {
                return Err(crate::VaeError::Config(
                    "an autoencoder's code is deterministic: one sample per example, and no \
                     importance-weighted bound (it has no prior)"
                        .into(),
                ));
            }
            d.push(ops::code_forward(gpu, "code.forward", &enc, l1, &z, &kl)?);
        }
        Code::Quantized { groups, commitment, .. } => {
            let (book, idx) = vq_parts(vae, ws, b)?;
            if l != 1 || log_ratio.is_some() {
                return Err(crate::VaeError::Config(
                    "a quantized code is deterministic: one sample per example, and no importance-weighted bound"
                        .into(),
                ));
            }
            d.push(ops::vq_forward(
                gpu,
                "vq.forward",
                &enc,
                &book,
                groups,
                commitment,
                vq_scale(vae),
                &z,
                &kl,
                &idx,
            )?);
        }
    }
    if let (Some(c), Code::Deterministic { contractive, .. }) = (&ws.contractive, vae.config.code) {
        d.extend(plan_contractive_forward(gpu, vae, ws, c, contractive, b, &enc_h[0])?);
    }
    d.extend(vae.plan_decode(gpu, &z, &dec_h, &out)?);
    // Loss: summed over the batch (as the PyTorch reference), averaged over the L draws.
    let scale = 1.0 / l as f32;
    let grad_out = rows(&ws.d_out, r);
    let dlc = ws.dlc.as_ref().map(|t| rows(t, r));
    let log_c = vae.log_c.map(|slot| vae.arena.param(slot));
    let learned = match (&log_c, &dlc) {
        (Some(log_c), Some(dlc)) => Some(ops::LearnedLogC { log_c, dlc }),
        _ => None,
    };
    d.push(ops::loss(
        gpu,
        "loss",
        vae.config.likelihood,
        &out,
        &x,
        scale,
        &nll,
        &grad_out,
        learned.as_ref(),
    )?);
    if adam.is_some() {
        d.extend(ops::refresh_mirror("loss", &grad_out));
    }

    if let (Some(g), Some(_)) = (&ws.grads, adam) {
        // The learned log-variance's gradient, reduced from the loss's per-element terms.
        if let (Some(slot), Some(dlc), ops::Likelihood::GaussianLearned { per_pixel }) =
            (vae.log_c, &dlc, vae.config.likelihood)
        {
            d.push(ops::log_c_grad(
                gpu,
                "log_c.grad",
                per_pixel,
                dlc,
                &vae.arena.grad(slot),
            )?);
        }
        // Backward through the decoder, output layer first.
        let dz = rows(&g.z, r);
        let d_dec: Vec<Tensor> = g.dec_hidden.iter().map(|t| rows(t, r)).collect();
        let mut dy = grad_out.clone();
        let mut layers: Vec<(&dyn Layer, &Tensor, Option<&Tensor>, Activation)> = Vec::new();
        // (layer, its input x, where dx goes, activation that produced x)
        let n = vae.decoder.len();
        let out_in = if n > 0 { &dec_h[n - 1] } else { &z };
        let out_act = if n > 0 {
            vae.decoder[n - 1].act
        } else {
            Activation::Identity
        };
        layers.push((&vae.out, out_in, Some(if n > 0 { &d_dec[n - 1] } else { &dz }), out_act));
        for i in (0..n).rev() {
            let input = if i > 0 { &dec_h[i - 1] } else { &z };
            let act = if i > 0 {
                vae.decoder[i - 1].act
            } else {
                Activation::Identity
            };
            layers.push((
                &vae.decoder[i],
                input,
                Some(if i > 0 { &d_dec[i - 1] } else { &dz }),
                act,
            ));
        }
        for (layer, input, dx, act) in layers {
            d.extend(layer.backward(gpu, &vae.arena, input, &dy, dx, act)?);
            if let Some(dx) = dx {
                dy = dx.clone();
            }
        }
        // Through the reparameterization and the KL term (an autoencoder: the code's penalty).
        let denc = rows(&g.enc, b);
        match vae.config.code {
            Code::Gaussian if !vae.top.is_empty() => {
                d.extend(plan_top_backward(gpu, vae, ws, step, b, &enc, &dz, &denc)?)
            }
            Code::Gaussian => d.push(ops::reparam_kl_backward(
                gpu,
                "reparam_kl.backward",
                step,
                &enc,
                l,
                &dz,
                &denc,
            )?),
            Code::Deterministic { l1, .. } => d.push(ops::code_backward(gpu, "code.backward", &enc, l1, &dz, &denc)?),
            Code::Quantized { groups, commitment, .. } => {
                let (book, idx) = vq_parts(vae, ws, b)?;
                // With EMA updates the codebook gets no gradient: its slot's gradient stays 0,
                // so Adam leaves it (the trainer refuses weight decay alongside).
                let dbook = vae.arena.grad(vae.codebook.unwrap_or_default());
                d.extend(ops::vq_backward(
                    gpu,
                    "vq.backward",
                    &enc,
                    &book,
                    groups,
                    commitment,
                    vq_scale(vae),
                    &idx,
                    &dz,
                    &denc,
                    if ws.vq_ema.is_some() { None } else { Some(&dbook) },
                )?);
                if let Some(ema) = &ws.vq_ema {
                    d.push(ops::vq_ema(
                        gpu,
                        "vq.ema",
                        &enc,
                        &book,
                        groups,
                        &idx,
                        ema.decay,
                        &ema.counts,
                        &ema.sums,
                    )?);
                }
            }
        }
        // Backward through the encoder, head first; the first layer needs no input gradient.
        let d_enc: Vec<Tensor> = g.enc_hidden.iter().map(|t| rows(t, b)).collect();
        let m = vae.encoder.len();
        let head_in = if m > 0 { &enc_h[m - 1] } else { &x_enc };
        let head_act = if m > 0 {
            vae.encoder[m - 1].act
        } else {
            Activation::Identity
        };
        let head_dx = if m > 0 { Some(&d_enc[m - 1]) } else { None };
        d.extend(vae.head.backward(gpu, &vae.arena, head_in, &denc, head_dx, head_act)?);
        for i in (0..m).rev() {
            let input = if i > 0 { &enc_h[i - 1] } else { &x_enc };
            let act = if i > 0 {
                vae.encoder[i - 1].act
            } else {
                Activation::Identity
            };
            let dx = if i > 0 { Some(&d_enc[i - 1]) } else { None };
            d.extend(vae.encoder[i].backward(gpu, &vae.arena, input, &d_enc[i], dx, act)?);
        }
        // The contractive penalty's gradients, added to the weight gradients just written.
        if let Some(c) = &ws.contractive {
            let acc = ops::Epilogue {
                accumulate: true,
                ..Default::default()
            };
            let a = &vae.arena;
            let (w1, w2) = (vae.encoder[0].w, vae.head.w);
            let d_in = vae.config.input_dim;
            d.push(ops::matmul(
                gpu,
                "contractive.dw1",
                &pixel_rows(&a.param(w1), d_in),
                false,
                &c.a1,
                false,
                &pixel_rows(&a.grad(w1), d_in),
                &acc,
                None,
            )?);
            d.push(ops::matmul(
                gpu,
                "contractive.dw2",
                &c.a2,
                false,
                &a.param(w2),
                false,
                &a.grad(w2),
                &acc,
                None,
            )?);
        }
    }
    // Metrics: this step's Σ NLL / L and Σ KL into its row of the log.
    let mut segs = vec![Segment {
        offset: 0,
        len: r,
        slot: SLOT_RECON,
        scale,
    }];
    if ws.top.is_empty() {
        segs.push(Segment {
            offset: ws.kl_offset,
            len: ws.pen_terms + b * zd,
            slot: SLOT_KL,
            scale: 1.0,
        });
    } else {
        // Every layer's KL terms are per draw: averaged over the L draws, as the NLL is.
        segs.push(Segment {
            offset: ws.kl_offset + ws.pen_terms,
            len: r * zd,
            slot: SLOT_KL,
            scale,
        });
        segs.extend(ws.top_terms.iter().map(|&(offset, latent)| Segment {
            offset,
            len: r * latent,
            slot: SLOT_KL,
            scale,
        }));
    }
    d.push(ops::sum_segments(
        gpu,
        "metrics",
        step,
        &ws.per_example,
        metric_log,
        &segs,
    )?);
    if let Some(adam) = adam {
        let a = &vae.arena;
        d.push(ops::adam(gpu, "adam", adam, step, &a.params, &a.grads, &a.m, &a.v)?);
        // The weights' texture mirrors follow the update.
        d.extend(a.refresh_mirrors());
    }
    Ok(d)
}

/// The layer below upper layer `i` for `r` rows: its posterior's [μ | log σ²] rows with the
/// draws per row (z₁: the encoder's B rows and L draws each; above: one draw per row), its
/// draws, its KL terms' view, its log-ratio terms and its ε key offset.
struct Below {
    q: Tensor,
    samples: usize,
    z: Tensor,
    kl: Tensor,
    log_ratio: Option<Tensor>,
    sample_base: u32,
}

fn below(ws: &Workspace, i: usize, r: usize, enc: &Tensor, z: &Tensor, log_ratio: Option<&Tensor>) -> Below {
    if i == 0 {
        return Below {
            q: enc.clone(),
            samples: ws.samples,
            z: z.clone(),
            kl: ws.kl_rows(r),
            log_ratio: log_ratio.cloned(),
            sample_base: 0,
        };
    }
    let tw = &ws.top[i - 1];
    Below {
        q: rows(&tw.q, r),
        samples: 1,
        z: rows(&tw.z, r),
        kl: ws.kl_top(i - 1, r),
        log_ratio: tw
            .log_ratio
            .as_ref()
            .map(|t| t.reshape_prefix(&[r * ws.top_terms[i - 1].1])),
        sample_base: ops::top_sample_base(i - 1),
    }
}

/// A hierarchical VAE's upper layers, forward, for `b` examples whose z₁ is in `z`: from z₂ up,
/// q(z_k|z_{k−1})'s network and z_k's draw (the topmost with its KL against N(0, I), after the
/// lower terms in `per_example`); then for each upper layer the conditional prior's network
/// p(z_{k−1}|z_k) and the KL term of the layer below into its view, with its gradients (see
/// reparam_kl.wgsl).
#[allow(clippy::too_many_arguments)]
fn plan_top_forward(
    gpu: &Gpu,
    vae: &Vae,
    ws: &Workspace,
    step: &StepBuffer,
    b: usize,
    enc: &Tensor,
    z: &Tensor,
    log_ratio: Option<&Tensor>,
) -> Result<Vec<Dispatch>> {
    check_top(vae, ws)?;
    let a = &vae.arena;
    let (l, levels) = (ws.samples, vae.top.len());
    let r = l * b;
    let mut d = Vec::new();
    for (i, (layers, tw)) in vae.top.iter().zip(&ws.top).enumerate() {
        let (uh, q, zi) = (rows(&tw.up_hidden, r), rows(&tw.q, r), rows(&tw.z, r));
        let lower = below(ws, i, r, enc, z, log_ratio);
        d.extend(layers.up.forward(gpu, a, &lower.z, &uh)?);
        d.extend(layers.up_head.forward(gpu, a, &uh, &q)?);
        let base = ops::top_sample_base(i);
        if i + 1 == levels {
            let ratio = tw
                .log_ratio
                .as_ref()
                .map(|t| t.reshape_prefix(&[r * vae.config.top[i].latent]));
            d.push(ops::reparam_kl_forward_at(
                gpu,
                "top.reparam_kl.forward",
                step,
                &q,
                1,
                &zi,
                &ws.kl_top(i, r),
                ratio.as_ref(),
                base,
            )?);
        } else {
            d.push(ops::sample_forward_at(
                gpu,
                "top.sample.forward",
                step,
                &q,
                1,
                &zi,
                base,
            )?);
        }
    }
    for (i, (layers, tw)) in vae.top.iter().zip(&ws.top).enumerate() {
        let (zi, ph, p_below) = (rows(&tw.z, r), rows(&tw.prior_hidden, r), rows(&tw.p_below, r));
        let lower = below(ws, i, r, enc, z, log_ratio);
        let zd = vae.config.top_below_latent(i);
        d.extend(layers.plan_prior(gpu, a, &zi, &ph, &p_below)?);
        // The terms are per draw, averaged over the L draws.
        d.push(ops::hier_kl(
            gpu,
            "top.hier_kl",
            step,
            &lower.q,
            lower.samples,
            &lower.z,
            &p_below,
            &lower.kl,
            &rows(&tw.d_p_below, r),
            &tw.dz_kl_below.reshape_prefix(&[r * zd]),
            lower.log_ratio.as_ref(),
            lower.sample_base,
            1.0 / l as f32,
        )?);
    }
    Ok(d)
}

/// A hierarchical VAE's upper layers, backward, from the top down: each layer's conditional
/// prior network p(z_{k−1}|z_k) from the lower KL term's gradient into z_k, z_k's draw (the
/// topmost with its KL; below it summing that, q(z_{k+1}|z_k)'s and its own KL term's
/// gradients) into q(z_k|z_{k−1})'s output and through that network into z_{k−1}; last z₁'s
/// sample backward, summing the decoder's `dz`, the upper network's and the KL term's
/// gradients into `denc`.
#[allow(clippy::too_many_arguments)]
fn plan_top_backward(
    gpu: &Gpu,
    vae: &Vae,
    ws: &Workspace,
    step: &StepBuffer,
    b: usize,
    enc: &Tensor,
    dz: &Tensor,
    denc: &Tensor,
) -> Result<Vec<Dispatch>> {
    check_top(vae, ws)?;
    let a = &vae.arena;
    // One row per draw of z₁: L·B.
    let l = ws.samples;
    let r = l * b;
    let levels = vae.top.len();
    let mut d = Vec::new();
    for i in (0..levels).rev() {
        let (layers, tw) = (&vae.top[i], &ws.top[i]);
        let g = grads(tw)?;
        let (uh, q, zi, ph) = (
            rows(&tw.up_hidden, r),
            rows(&tw.q, r),
            rows(&tw.z, r),
            rows(&tw.prior_hidden, r),
        );
        let (d_uh, d_q, dzi, d_ph) = (
            rows(&g.up_hidden, r),
            rows(&g.q, r),
            rows(&g.z, r),
            rows(&g.prior_hidden, r),
        );
        d.extend(
            layers
                .prior_head
                .backward(gpu, a, &ph, &rows(&tw.d_p_below, r), Some(&d_ph), layers.prior.act)?,
        );
        d.extend(
            layers
                .prior
                .backward(gpu, a, &zi, &d_ph, Some(&dzi), Activation::Identity)?,
        );
        let base = ops::top_sample_base(i);
        if i + 1 == levels {
            d.push(ops::reparam_kl_backward_at(
                gpu,
                "top.reparam_kl.backward",
                step,
                &q,
                1,
                &dzi,
                &d_q,
                base,
                1.0 / l as f32,
            )?);
        } else {
            let (above, g_above) = (&ws.top[i + 1], grads(&ws.top[i + 1])?);
            d.push(ops::sample_backward(
                gpu,
                "top.sample.backward",
                step,
                &q,
                1,
                &dzi,
                &rows(&g_above.z_below_up, r),
                &above.dz_kl_below.reshape_prefix(&[r * vae.config.top[i].latent]),
                &d_q,
                base,
                1.0 / l as f32,
            )?);
        }
        let lower_z = if i == 0 {
            rows(&ws.z, r)
        } else {
            rows(&ws.top[i - 1].z, r)
        };
        d.extend(layers.up_head.backward(gpu, a, &uh, &d_q, Some(&d_uh), layers.up.act)?);
        d.extend(layers.up.backward(
            gpu,
            a,
            &lower_z,
            &d_uh,
            Some(&rows(&g.z_below_up, r)),
            Activation::Identity,
        )?);
    }
    let (first, g_first) = (&ws.top[0], grads(&ws.top[0])?);
    d.push(ops::sample_backward(
        gpu,
        "sample.backward",
        step,
        enc,
        l,
        dz,
        &rows(&g_first.z_below_up, r),
        &first.dz_kl_below.reshape_prefix(&[r * vae.config.latent]),
        denc,
        0,
        1.0,
    )?);
    Ok(d)
}

/// An upper layer's gradients, or the error of a workspace built for evaluation.
fn grads(tw: &TopWorkspace) -> Result<&TopGrads> {
    tw.grads
        .as_ref()
        .ok_or_else(|| crate::VaeError::Config("a training step needs a workspace built with train = true".into()))
}

/// A hierarchical model's networks and workspace must have one entry per upper layer.
fn check_top(vae: &Vae, ws: &Workspace) -> Result<()> {
    let n = vae.config.top.len();
    if n == 0 || vae.top.len() != n || ws.top.len() != n {
        return Err(crate::VaeError::Config(
            "a hierarchical VAE needs its upper layers' networks and a workspace built for them".into(),
        ));
    }
    Ok(())
}

/// The contractive penalty's forward for `b` examples: the mask M = act′(h) of the hidden
/// layer `hidden` [b, H], S = MᵀM, G1 = W1ᵀW1 (pixel rows only), G2 = W2W2ᵀ, then the terms
/// and gradient factors (see code.wgsl). Its terms land before the code's L1 terms in `per_example`.
fn plan_contractive_forward(
    gpu: &Gpu,
    vae: &Vae,
    ws: &Workspace,
    c: &ContractiveScratch,
    weight: f32,
    b: usize,
    hidden: &Tensor,
) -> Result<Vec<Dispatch>> {
    let plain = ops::Epilogue::default();
    let layer = &vae.encoder[0];
    let (mask, ones) = (rows(&c.mask, b), rows(&c.ones, b));
    let w1 = pixel_rows(&vae.arena.param(layer.w), vae.config.input_dim);
    let w2 = vae.arena.param(vae.head.w);
    let terms = Tensor::view(
        ws.per_example.buffer().clone(),
        ws.per_example.offset() + 4 * ws.kl_offset as u64,
        &[c.s.len()],
    );
    Ok(vec![
        ops::activation_backward(gpu, "contractive.mask", layer.act, LEAKY_SLOPE, hidden, &ones, &mask)?,
        ops::matmul(gpu, "contractive.s", &mask, true, &mask, false, &c.s, &plain, None)?,
        ops::matmul(gpu, "contractive.g1", &w1, true, &w1, false, &c.g1, &plain, None)?,
        ops::matmul(gpu, "contractive.g2", &w2, false, &w2, true, &c.g2, &plain, None)?,
        ops::contractive(gpu, "contractive", weight, &c.s, &c.g1, &c.g2, &terms, &c.a1, &c.a2)?,
    ])
}

/// The first `d` rows of the first layer's weight (or gradient) [D', H]: the rows that multiply
/// pixels. The contractive penalty is ‖∂z/∂x‖² over the image alone; a conditional model's
/// one-hot and padding rows are not its input's and stay out of it. A texture mirror stays
/// valid for the prefix (same start, same row stride; d·H is a multiple of 4 as d is).
fn pixel_rows(w: &Tensor, d: usize) -> Tensor {
    let h = w.shape()[1];
    w.reshape_prefix(&[d, h])
}

/// A VQ-VAE's codebook (arena view) and the first `b` examples' index slots.
fn vq_parts(vae: &Vae, ws: &Workspace, b: usize) -> Result<(Tensor, Tensor)> {
    match (vae.codebook, &ws.vq_index, vae.config.code) {
        (Some(slot), Some(idx), Code::Quantized { groups, .. }) => {
            Ok((vae.arena.param(slot), idx.reshape_prefix(&[b * groups])))
        }
        _ => Err(crate::VaeError::Config(
            "a quantized code needs the model's codebook and a workspace built for it".into(),
        )),
    }
}

/// The weight of a VQ-VAE's codebook terms, D/Z: the reconstruction is a sum over D pixels
/// and the terms a sum over Z values, where the VQ-VAE paper's implementation takes means of both.
fn vq_scale(vae: &Vae) -> f32 {
    vae.config.input_dim as f32 / vae.config.latent as f32
}
