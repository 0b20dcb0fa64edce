//! A step's tensors for one batch size: the links between the blocks, each block's own
//! workspace, and the per-example terms. Allocated once; plans for fewer rows (the epoch's last
//! partial batch) view prefixes of the same buffers.

use crate::error::{Result, VaeError};
use crate::gpu::{Gpu, Tensor};
use crate::model::block::{LatentWorkspace, NetworkWorkspace, WorkspaceSpec};
use crate::model::inputs::InputsWorkspace;
use crate::model::likelihood::LikelihoodWorkspace;
use crate::model::objective::{self, ObjectiveBlock};
use crate::model::terms::{TermLayout, Terms};
use crate::model::vae::TextureMirrors;
use crate::model::Vae;
use crate::ops;

/// Gradients of the links (training only).
pub struct LinkGrads {
    /// ∂L/∂z, [L·B, Z'] (the decoder's input gradient).
    pub dz: Tensor,
    /// ∂L/∂enc, [B, head] (the latent's input gradient).
    pub denc: Tensor,
}

/// Every tensor of a step for up to `batch` examples of `samples` draws each.
pub struct Workspace {
    /// Examples per step (B).
    pub batch: usize,
    /// Draws of z per example (L).
    pub samples: usize,
    /// The batch [B, D'] (the encoder's input and the loss's target) and a denoising
    /// model's corrupted copy.
    pub inputs: InputsWorkspace,
    /// The encoder's output [B, head]: [μ | log σ²] per row, or an autoencoder's code.
    pub enc: Tensor,
    /// The decoder's input [L·B, Z']: the draws of z, then a conditional model's one-hot.
    pub z: Tensor,
    /// The decoder's output [L·B, D]: logits (Bernoulli) or means (Gaussian).
    pub out: Tensor,
    /// ∂L/∂out, written by the loss (also in evaluation, where nothing reads it).
    pub d_out: Tensor,
    /// The links' gradients, for a training workspace.
    pub grads: Option<LinkGrads>,
    /// The encoder's activations (and its penalties' scratch).
    pub(crate) encoder: Box<dyn NetworkWorkspace>,
    /// The latent block's tensors.
    pub(crate) latent: Box<dyn LatentWorkspace>,
    /// The decoder's activations.
    pub(crate) decoder: Box<dyn NetworkWorkspace>,
    /// The likelihood's terms and scratch.
    pub(crate) likelihood: LikelihoodWorkspace,
    /// Rows of draws that carry a conditional model's one-hot, with the column it starts at
    /// (z's, and a hierarchy's upper layers'); empty for an unconditional model.
    pub(crate) labelled: Vec<(Tensor, usize)>,
    /// Rows of examples that carry it inside the encoder (a convolutional encoder's dense
    /// input).
    pub(crate) enc_labelled: Vec<(Tensor, usize)>,
    /// How the terms combine into the loss, its gradient weights and the metric row.
    pub(crate) objective: Box<dyn ObjectiveBlock>,
    /// The per-example terms the blocks declared.
    pub terms: Terms,
}

impl Workspace {
    /// Allocates a step's tensors for `spec` (its `mirrors` follows the model's texture
    /// mirror policy). The order the blocks declare their terms in is load-bearing: the
    /// likelihood's NLL first (the reconstruction column), then the encoder's penalties, then
    /// the latent's terms — the contractive penalty's terms are summed in one run with the L1
    /// terms the deterministic code declares right after them.
    pub fn new(gpu: &Gpu, vae: &Vae, spec: &WorkspaceSpec) -> Result<Self> {
        let cfg = &vae.config;
        let spec = WorkspaceSpec {
            mirrors: vae.texture_mirrors() != TextureMirrors::None,
            log_ratio: spec.log_ratio || spec.iw,
            ..*spec
        };
        if spec.train {
            vae.arena.refuse_weights_only("a training workspace")?;
        }
        if spec.iw && !cfg.is_vae() {
            return Err(VaeError::settings(
                &["TrainConfig::objective", "VaeConfig::code"],
                "the importance-weighted bound needs a VAE: an autoencoder or a VQ-VAE has no prior",
            ));
        }
        if spec.batch == 0 || spec.samples == 0 || spec.samples > ops::MAX_SAMPLES {
            return Err(VaeError::Config(format!(
                "a workspace needs at least one example and 1 to {} draws each, got {} and {}",
                ops::MAX_SAMPLES,
                spec.batch,
                spec.samples
            )));
        }
        let (b, r) = (spec.batch, spec.draws());
        let t = |name: &str, shape: &[usize]| gpu.tensor(name, shape);
        let mut terms = TermLayout::new(b, spec.samples);
        let likelihood = vae.likelihood.workspace(gpu, &spec, &mut terms)?;
        let encoder = vae.encoder.workspace(gpu, &spec, b, &mut terms)?;
        let latent = vae.latent.workspace(gpu, &vae.arena, &spec, &mut terms)?;
        let decoder = vae.decoder.workspace(gpu, &spec, r, &mut terms)?;
        let objective = objective::workspace(gpu, &spec, &mut terms)?;
        let z = t("z", &[r, cfg.dec_input_dim()])?;
        let labelled = if cfg.classes > 0 {
            let mut rows = vec![(z.clone(), cfg.latent)];
            rows.extend(latent.labelled_rows());
            rows
        } else {
            Vec::new()
        };
        let whole = (r * cfg.input_dim).is_multiple_of(4);
        Ok(Workspace {
            batch: b,
            samples: spec.samples,
            inputs: InputsWorkspace::new(gpu, &spec, cfg.enc_input_dim(), cfg.classes)?,
            enc: t("enc", &[b, cfg.head_width()])?,
            z,
            out: t("out", &[r, cfg.input_dim])?,
            // The loss always writes its gradient; a mirror only where backward reads it.
            d_out: ops::mirrored(
                gpu,
                "d_out",
                t("d_out", &[r, cfg.input_dim])?,
                spec.train && spec.mirrors && whole,
            )?,
            grads: if spec.train {
                Some(LinkGrads {
                    dz: t("d_z", &[r, cfg.dec_input_dim()])?,
                    denc: t("d_enc", &[b, cfg.head_width()])?,
                })
            } else {
                None
            },
            latent,
            decoder,
            likelihood,
            labelled,
            enc_labelled: if cfg.classes > 0 {
                encoder.labelled_rows()
            } else {
                Vec::new()
            },
            encoder,
            objective,
            terms: terms.allocate(gpu)?,
        })
    }

    /// The per-draw NLL for the first `b` examples, [L·b].
    pub fn nll(&self, b: usize) -> Tensor {
        self.terms.view(self.likelihood.nll(), b)
    }

    /// A named per-example output of the latent block (a VQ-VAE's `vq.index`).
    pub fn latent_output(&self, name: &str) -> Result<&Tensor> {
        self.latent
            .output(name)
            .ok_or_else(|| VaeError::Config(format!("this model's latent block has no output '{name}'")))
    }

    /// Training state beyond Adam's moments that the blocks keep (a codebook's moving
    /// averages), by name.
    pub fn state(&self) -> Vec<(&'static str, &Tensor)> {
        self.latent.state()
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
        let mut all: Vec<&Tensor> = vec![&self.enc, &self.z, &self.out, &self.d_out];
        all.extend(self.inputs.tensors());
        if let Some(g) = &self.grads {
            all.extend([&g.dz, &g.denc]);
        }
        all.extend(self.encoder.tensors());
        all.extend(self.latent.tensors());
        all.extend(self.decoder.tensors());
        all.extend(self.likelihood.tensors());
        all.extend(self.objective.tensors());
        all.extend(self.terms.tensors());
        all
    }
}
