//! The VAE model, its configuration, and the planned steps that train and evaluate it.

pub mod config;
pub mod plan;
pub mod vae;

pub use config::{
    code_name, likelihood_name, parse_code, parse_hidden, parse_likelihood, parse_top, parse_variance, top_name, Code,
    TopLatent, VaeConfig, MAX_TOP_LAYERS,
};
pub use plan::{
    plan_inputs, plan_step, BatchSource, ContractiveScratch, GpuDataset, TopGrads, TopWorkspace, VqEma, Workspace,
    METRIC_SLOTS, SLOT_KL, SLOT_RECON,
};
pub use vae::{TextureMirrors, TopLayers, Vae, CODEBOOK_KEY, MIRROR_MIN_WEIGHTS};
