//! vae-wgpu: variational autoencoders trained and run entirely on the GPU, every numeric
//! operation a WGSL compute shader dispatched through wgpu.
//!
//! Layout, bottom up: [`gpu`] (context, memory, kernel registry, dispatch recording), [`ops`]
//! (one typed wrapper per kernel), [`nn`] (the parameter arena and linear layers), [`model`]
//! (configuration, the VAE, checkpoints, and the plan of one step), [`train`] (the trainer and
//! the evaluator), [`rng`], [`data`] (IDX and .amat readers), [`io`] (safetensors, PNG) and
//! [`explore`] (latent-space tools: interpolation, arithmetic, the linear probe, figures).
#![warn(missing_docs)]

pub mod data;
pub mod error;
pub mod explore;
pub mod gpu;
pub mod infer;
pub mod io;
pub mod model;
pub mod nn;
pub mod ops;
pub mod rng;
pub mod train;

pub use error::{Result, VaeError};
pub use gpu::{Dispatch, Gpu, GpuOptions, Tensor};
pub use wgpu;
