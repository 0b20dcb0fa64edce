//! The model: a chain of blocks, each in its own file with its forward and backward plans.
//!
//! ```text
//! inputs ──x──▶ encoder ──enc──▶ latent ──z──▶ decoder ──out──▶ likelihood ──terms──▶ objective
//! inputs.rs     mlp.rs           latent/       mlp.rs           likelihood.rs          objective.rs
//!               (contractive.rs)
//! ```
//!
//! - [`inputs`]: a batch from its [`crate::data::BatchSource`], one-hot labels, masking noise.
//! - [`mlp`]: the MLP encoder (and its [`contractive`] penalty) and decoder.
//! - [`latent`]: Gaussian, hierarchical, deterministic and quantized codes.
//! - [`likelihood`]: Bernoulli and Gaussian (fixed, learned global, learned per pixel).
//! - [`objective`]: the ELBO, its gradient weights and metric row.
//!
//! [`block`] holds the contracts ([`block::Network`], [`block::Latent`]) and what plans read;
//! [`terms`] the per-example terms blocks declare by name; [`workspace`] a step's tensors;
//! [`step`] the step itself, read top to bottom with no branch on the kind of any block.
//! [`config`] describes a model, [`vae`] builds it, [`checkpoint`] saves and loads it.

pub mod block;
pub mod checkpoint;
pub mod config;
pub mod contractive;
pub mod inputs;
pub mod latent;
pub mod likelihood;
pub mod mlp;
pub mod objective;
pub mod step;
pub mod terms;
pub mod vae;
pub mod workspace;

pub use block::WorkspaceSpec;
pub use checkpoint::{CODEBOOK_KEY, LOG_C_KEY};
pub use config::{
    code_name, likelihood_name, parse_code, parse_hidden, parse_likelihood, parse_top, parse_variance, top_name, Code,
    TopLatent, VaeConfig, MAX_TOP_LAYERS,
};
pub use inputs::Inputs;
pub use step::{plan_decode, plan_encode, plan_reconstruct, plan_step};
pub use terms::{TermKind, METRIC_SLOTS, SLOT_KL, SLOT_RECON};
pub use vae::{TextureMirrors, Vae, MIRROR_MIN_WEIGHTS};
pub use workspace::Workspace;
