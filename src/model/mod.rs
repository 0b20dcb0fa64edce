//! The model: a chain of blocks, each in its own file with its forward and backward plans.
//!
//! ```text
//! inputs ──x──▶ encoder ──enc──▶ latent ──z──▶ decoder ──out──▶ likelihood ──terms──▶ objective
//! inputs.rs     mlp.rs           latent/       mlp.rs           likelihood.rs          objective.rs
//!               (contractive.rs)
//! ```
//!
//! - `inputs.rs`: a batch from its [`crate::data::BatchSource`], one-hot labels, masking noise.
//! - `mlp.rs`: the MLP encoder (and its penalty, `contractive.rs`) and decoder.
//! - `latent/`: Gaussian, hierarchical, deterministic and quantized codes, a file each.
//! - `likelihood.rs`: Bernoulli and Gaussian (fixed, learned global, learned per pixel).
//! - `objective.rs`: the ELBO and the importance-weighted bound, their gradient weights and
//!   metric rows (chosen per workspace: the objective is how a step trains, not the model).
//!
//! `block.rs` holds the contracts blocks meet (`Network`, `Latent`) and what plans read;
//! `terms.rs` the per-example terms blocks declare by name; `workspace.rs` a step's tensors;
//! `step.rs` the step itself, read top to bottom with no branch on the kind of any block.
//! `config.rs` describes a model ([`VaeConfig`]), `vae.rs` builds it ([`Vae`]),
//! `checkpoint.rs` saves and loads it. `docs/architecture.md` walks through the chain and
//! where a new block goes.

pub(crate) mod block;
pub(crate) mod checkpoint;
mod config;
mod contractive;
mod conv;
pub(crate) mod inputs;
pub(crate) mod latent;
mod likelihood;
mod mlp;
pub(crate) mod objective;
pub(crate) mod step;
pub(crate) mod terms;
mod vae;
pub(crate) mod workspace;

pub use crate::ops::{Activation, Likelihood, LOGVAR_MAX, LOGVAR_MIN, LOG_C_MAX, LOG_C_MIN};
pub use checkpoint::{CODEBOOK_KEY, LOG_C_KEY};
pub use config::{
    code_name, likelihood_name, parse_code, parse_hidden, parse_likelihood, parse_top, parse_variance, top_name, Arch,
    Code, ConvArch, TopLatent, VaeConfig, CONV_KERNEL, CONV_PADDING, CONV_STRIDE, MAX_CONV_LAYERS, MAX_TOP_LAYERS,
};
pub use objective::Objective;
pub use vae::{TextureMirrors, Vae, MIRROR_MIN_WEIGHTS};
