//! vae-wgpu: variational autoencoders trained and run entirely on the GPU, every numeric
//! operation a WGSL compute shader dispatched through wgpu.
//!
//! The public API, bottom up: [`gpu`] (the runtime: adapter selection and [`GpuOptions`],
//! tensors, dispatch recording into a caller's encoder), [`data`] (IDX and .amat readers, the
//! resident dataset and batch sources), [`model`] (configuration, the [`Vae`], checkpoints),
//! [`train`] (the [`Trainer`] and the [`Evaluator`]), [`infer`] (decoding and prior draws),
//! [`explore`] (latent-space tools: interpolation, arithmetic, the linear probe, figures),
//! [`io`] (safetensors, PNG) and [`rng`] (the device's counter-based generator, mirrored on the
//! host). Under it, crate-private: one typed wrapper per kernel (`ops/`), the parameter arena
//! and dense layers (`nn/`), and the model's blocks and plans (`model/`).
//!
//! Training and evaluating a small VAE on synthetic 4×4 images:
//!
//! ```
//! use vae_wgpu::data::GpuDataset;
//! use vae_wgpu::{Evaluator, Gpu, GpuOptions, TrainConfig, Trainer, Vae, VaeConfig};
//!
//! # fn main() -> vae_wgpu::Result<()> {
//! let gpu = Gpu::new(GpuOptions::default())?;
//! // 256 images of 16 bytes: the left or the right half lit.
//! let pixels: Vec<u8> = (0..256 * 16)
//!     .map(|i| if (i % 4 < 2) == (i / 16 % 2 == 0) { 255 } else { 0 })
//!     .collect();
//! let train = GpuDataset::upload(&gpu, "train", &pixels, 256, 16, Vec::new())?;
//! let test = GpuDataset::upload(&gpu, "test", &pixels[..64 * 16], 64, 16, Vec::new())?;
//!
//! let config = VaeConfig { input_dim: 16, hidden: vec![32], latent: 2, ..Default::default() };
//! let vae = Vae::new(&gpu, config, 1)?;
//! let train_config = TrainConfig { batch_size: 32, ..Default::default() };
//! let mut trainer = Trainer::new(&gpu, &vae, train, train_config)?;
//! let evaluator = Evaluator::new(&gpu, test)?;
//! let before = evaluator.elbo(&vae, 1, false)?.loss;
//! for _ in 0..10 {
//!     trainer.train_epoch(|_done, _steps| {})?;
//! }
//! let after = evaluator.elbo(&vae, 1, false)?.loss;
//! assert!(after < before, "test -ELBO {before} before, {after} after");
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs)]

pub mod data;
pub mod error;
pub mod explore;
#[cfg(test)]
mod fuzz;
pub mod gpu;
pub mod infer;
pub mod io;
pub mod model;
mod nn;
mod ops;
pub mod rng;
pub mod run;
pub mod train;

pub use error::{Result, VaeError};
pub use gpu::{Dispatch, Gpu, GpuOptions, Tensor};
pub use infer::Inference;
pub use model::{Code, Vae, VaeConfig};
pub use train::{Evaluator, TrainConfig, Trainer};
pub use wgpu;

/// The machinery under the public API: kernel wrappers, the parameter arena, plans, workspaces
/// and the runtime's internals. For this crate's benches and kernel tests; not a stable API.
#[doc(hidden)]
pub mod internals {
    pub use crate::model::block::{Ctx, WorkspaceSpec};
    pub use crate::model::inputs::Inputs;
    pub use crate::model::step::{plan_decode, plan_encode, plan_reconstruct, plan_step};
    pub use crate::model::terms::{TermKind, METRIC_SLOTS, SLOT_KL, SLOT_RECON};
    pub use crate::model::workspace::Workspace;

    /// One typed wrapper per kernel.
    pub mod ops {
        pub use crate::ops::*;
    }
    /// The parameter arena and dense layers.
    pub mod nn {
        pub use crate::nn::*;
    }
    /// lavapipe's worker threads and their CPUs.
    pub mod affinity {
        pub use crate::gpu::affinity::*;
    }
}
