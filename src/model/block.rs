//! The contracts the model's blocks meet. A model is the chain inputs → encoder → latent →
//! decoder → likelihood → objective; each block owns its parameters (registered in the arena
//! when the model is built), makes its own workspace for a batch size, and plans its forward
//! and backward passes over that workspace. [`crate::model::step::plan_step`] reads the chain
//! top to bottom and never asks which kind a block is.
//!
//! Between blocks, tensors are rows: the encoder's input [b, D'], its output (the latent's
//! input, "enc") [b, head], the latent's draws z [L·b, Z'] (the decoder's input) and the
//! decoder's output [L·b, D]. Those links live in [`crate::model::Workspace`]; everything a
//! block keeps for itself lives in its own workspace.

use crate::error::Result;
use crate::gpu::{Dispatch, Gpu, Tensor};
use crate::model::checkpoint::CheckpointTensor;
use crate::model::terms::{TermLayout, Terms};
use crate::nn::{Layer, Linear, ParamArena};
use crate::ops::StepBuffer;

/// What a block plans with: the runtime, the parameters, the step uniform, the workspace's
/// terms, and the plan's size (`b` examples of `samples` draws each, b at most the workspace's
/// batch: the epoch's last partial batch views prefixes of the same buffers).
pub struct Ctx<'a> {
    /// The runtime.
    pub gpu: &'a Gpu,
    /// The model's parameters and gradients.
    pub arena: &'a ParamArena,
    /// The per-step uniform (RNG key, β, Adam's step, the metric row).
    pub step: &'a StepBuffer,
    /// The workspace's per-example terms.
    pub terms: &'a Terms,
    /// Examples in this plan.
    pub b: usize,
    /// Draws of z per example.
    pub samples: usize,
    /// The importance-weighted bound's normalized weight of each of the L·b draws, which
    /// backward applies in place of 1/L and β (None under the ELBO).
    pub weights: Option<Tensor>,
}

impl Ctx<'_> {
    /// Rows of a per-draw tensor in this plan: L·b.
    pub fn draws(&self) -> usize {
        self.samples * self.b
    }
}

/// The first `n` rows of a 2-D tensor.
pub fn rows(t: &Tensor, n: usize) -> Tensor {
    let cols = t.shape()[1];
    t.reshape_prefix(&[n, cols])
}

/// What a workspace is made for: its size, and what its mode needs beyond the forward pass.
#[derive(Clone, Copy, Debug)]
pub struct WorkspaceSpec {
    /// Examples per step (B).
    pub batch: usize,
    /// Draws of z per example (L; K for importance sampling).
    pub samples: usize,
    /// Allocate the activations' gradients (a training workspace).
    pub train: bool,
    /// Allocate the importance-weighted bound's log-ratio terms (an evaluation workspace).
    pub log_ratio: bool,
    /// Train on the importance-weighted bound over the `samples` draws instead of the ELBO
    /// (implies `log_ratio`).
    pub iw: bool,
    /// A denoising model's corrupted copy of the input, which the encoder reads instead.
    pub denoise: bool,
    /// Train a VQ-VAE's codebook by moving averages with this decay instead of by Adam.
    pub vq_ema: Option<f32>,
    /// Give the large products' operands texture mirrors (`Workspace::new`
    /// sets it from the model's policy).
    pub mirrors: bool,
}

impl WorkspaceSpec {
    /// An evaluation workspace of `batch` examples and `samples` draws each.
    pub fn eval(batch: usize, samples: usize) -> Self {
        WorkspaceSpec {
            batch,
            samples,
            train: false,
            log_ratio: false,
            iw: false,
            denoise: false,
            vq_ema: None,
            mirrors: false,
        }
    }

    /// Rows of a per-draw tensor: L·B.
    pub fn draws(&self) -> usize {
        self.samples * self.batch
    }
}

/// An encoder or a decoder: a network from rows to rows whose parameters live in the arena.
pub trait Network: Send + Sync {
    /// Its dense layers in forward order (texture mirrors, lookups by name).
    fn layers(&self) -> Vec<&Linear>;
    /// Its convolutions in forward order (texture mirrors of their weights).
    fn convs(&self) -> Vec<&crate::nn::Conv2d> {
        Vec::new()
    }
    /// Draws its initial parameters, layer by layer in forward order.
    fn init(&self, rng: &mut rand_pcg::Pcg64Mcg, values: &mut [Vec<f32>]) {
        for l in self.layers() {
            l.init(rng, values);
        }
    }
    /// Its parameters as checkpoint tensors, in file order.
    fn checkpoint(&self) -> Vec<CheckpointTensor>;
    /// Its workspace for `rows` rows (the batch for an encoder, the draws for a decoder);
    /// penalties it adds declare their terms in `terms`.
    fn workspace(
        &self,
        gpu: &Gpu,
        spec: &WorkspaceSpec,
        rows: usize,
        terms: &mut TermLayout,
    ) -> Result<Box<dyn NetworkWorkspace>>;
}

/// A network's activations for one batch size, and the plans that run it.
pub trait NetworkWorkspace: Send + Sync {
    /// y = net(x) for x's rows (a prefix of the workspace's).
    fn forward(&self, c: &Ctx, x: &Tensor, y: &Tensor) -> Result<Vec<Dispatch>>;
    /// The terms of the network's penalties (a contractive encoder's) for the plan's rows,
    /// after its forward pass; none for most networks. Not part of an inference plan.
    fn penalties(&self, _c: &Ctx) -> Result<Vec<Dispatch>> {
        Ok(Vec::new())
    }
    /// The parameter gradients from dL/dy (overwritten, a penalty's gradients added), and
    /// dL/dx if `dx` is given.
    fn backward(&self, c: &Ctx, x: &Tensor, dy: &Tensor, dx: Option<&Tensor>) -> Result<Vec<Dispatch>>;
    /// Rows of the plan's b examples that carry a conditional model's one-hot label, each with
    /// the column it starts at (a convolutional encoder's dense input); written by the inputs
    /// block before the encoder runs.
    fn labelled_rows(&self) -> Vec<(Tensor, usize)> {
        Vec::new()
    }
    /// Every tensor it holds (for byte counts).
    fn tensors(&self) -> Vec<&Tensor>;
}

/// The latent block: from the encoder's output to the draws of z the decoder reads, with the
/// terms it adds to the objective (a KL, a code's penalty) and their gradients.
pub trait Latent: Send + Sync {
    /// Dense layers it owns (a hierarchy's networks), in forward order.
    fn layers(&self) -> Vec<&Linear>;
    /// Its dense layers as checkpoint tensors: (name, layer, the layer's output columns the
    /// tensor holds), in file order.
    fn checkpoint_pieces(&self) -> Vec<(String, &Linear, std::ops::Range<usize>)> {
        Vec::new()
    }
    /// Its other parameters in the checkpoint: (key, arena slot), after the dense layers.
    fn checkpoint_slots(&self) -> Vec<(&'static str, usize)> {
        Vec::new()
    }
    /// Fills its parameters' initial values (after the encoder's and decoder's draws).
    fn init(&self, rng: &mut rand_pcg::Pcg64Mcg, values: &mut [Vec<f32>]);
    /// Draws `n` codes for the decoder from the prior, the noise scaled by `temperature`
    /// (see [`crate::infer::prior_latents`]); `labels` for a conditional prior.
    fn sample_prior(
        &self,
        gpu: &Gpu,
        arena: &ParamArena,
        seed: u64,
        n: usize,
        temperature: f32,
        labels: Option<&[u32]>,
    ) -> Result<Vec<f32>>;
    /// z₁ drawn down from values of the topmost layer (see
    /// [`crate::infer::conditional_prior_draws`]): a hierarchy only.
    fn draw_down(
        &self,
        _gpu: &Gpu,
        _arena: &ParamArena,
        _top: &[f32],
        _labels: Option<&[u32]>,
        _seed: u64,
        _temperature: f32,
    ) -> Result<Vec<f32>> {
        Err(crate::VaeError::Config(
            "a conditional prior p(z1|z2) needs a hierarchical VAE (Code::Hierarchical)".into(),
        ))
    }
    /// Plans draws from the prior on the device into the first Z columns of the decoder's
    /// rows `z` [n, Z'], the noise scaled by `temperature` and keyed by `step` (seed, step 0,
    /// [`crate::rng::STREAM_SAMPLE`]) as [`Latent::sample_prior`] keys it; `labels` (one u32
    /// per row, read through `order`) for a conditional prior. Returns the dispatches and the
    /// scratch tensors they use, which the caller keeps as long as it keeps the dispatches.
    #[allow(clippy::too_many_arguments)]
    fn plan_prior_draws(
        &self,
        _gpu: &Gpu,
        _arena: &ParamArena,
        _step: &StepBuffer,
        _temperature: f32,
        _labels: Option<&Tensor>,
        _order: &Tensor,
        _z: &Tensor,
    ) -> Result<(Vec<Dispatch>, Vec<Tensor>)> {
        Err(crate::VaeError::Config(
            "this model's code has no prior to sample from (an autoencoder's code is deterministic, a \
             VQ-VAE's prior is not modelled)"
                .into(),
        ))
    }
    /// Its workspace; its terms are declared in `terms`. A training workspace may reset the
    /// block's own optimizer state in `arena`: a codebook trained by moving averages gets its
    /// gradient and Adam moments cleared, so that Adam leaves it alone.
    fn workspace(
        &self,
        gpu: &Gpu,
        arena: &ParamArena,
        spec: &WorkspaceSpec,
        terms: &mut TermLayout,
    ) -> Result<Box<dyn LatentWorkspace>>;
}

/// A latent block's tensors for one batch size, and the plans that run it.
pub trait LatentWorkspace: Send + Sync {
    /// z from the encoder's output `enc` [b, head], with the latent's terms.
    fn forward(&self, c: &Ctx, enc: &Tensor, z: &Tensor) -> Result<Vec<Dispatch>>;
    /// dL/d`enc` from dL/dz (and the terms' own gradients); the block's parameter gradients.
    fn backward(&self, c: &Ctx, enc: &Tensor, z: &Tensor, dz: &Tensor, denc: &Tensor) -> Result<Vec<Dispatch>>;
    /// Rows besides z that carry a conditional model's one-hot label, each with the column
    /// the label starts at (a hierarchy's upper layers).
    fn labelled_rows(&self) -> Vec<(Tensor, usize)> {
        Vec::new()
    }
    /// Training state beyond Adam's moments, by name (a codebook's moving averages).
    fn state(&self) -> Vec<(&'static str, &Tensor)> {
        Vec::new()
    }
    /// Named per-example outputs besides the terms (a VQ-VAE's chosen codebook entries).
    fn output(&self, _name: &str) -> Option<&Tensor> {
        None
    }
    /// Every tensor it holds (for byte counts).
    fn tensors(&self) -> Vec<&Tensor>;
}
