//! GPU integration tests: every kernel against an f64 CPU reference on the real adapter.
//! One binary, one shared device (creating devices and compiling pipelines is the slow part on
//! lavapipe). No adapter is a failure with the install hint, never a skip.

mod common;
mod conv;
mod conv_model;
mod embed;
mod family;
mod fixtures;
mod iwae;
mod kernels;
mod latent_kernels;
mod model;
mod pca;
mod pinned;
mod reference;
mod reliability;
mod rng;
mod runtime;
mod train;
