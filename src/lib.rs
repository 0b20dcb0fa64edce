//! vae-wgpu: variational autoencoders trained and run entirely on the GPU, every numeric
//! operation a WGSL compute shader dispatched through wgpu.
//!
//! Layout: [`gpu`] (context, memory, kernel registry, dispatch recording), [`ops`] (one typed
//! wrapper per kernel), [`rng`], [`data`] (IDX readers), [`io`] (safetensors, PNG), [`explore`]
//! (CPU latent-space helpers: interpolation, linear probe, scatter plots).

pub mod data;
pub mod error;
pub mod explore;
pub mod gpu;
pub mod io;
pub mod model;
pub mod nn;
pub mod ops;
pub mod rng;
pub mod train;

pub use error::{Result, VaeError};
pub use gpu::{Dispatch, Gpu, Tensor};
pub use wgpu;
