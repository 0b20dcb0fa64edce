//! The latent blocks, one file per kind: a Gaussian posterior with its closed-form KL
//! ([`gaussian`]), a hierarchy of them ([`hierarchical`]), a deterministic code with its L1
//! penalty ([`deterministic`]) and a quantized code with its codebook ([`quantized`]).

pub mod deterministic;
pub mod gaussian;
pub mod hierarchical;
pub mod quantized;

use crate::model::block::Latent;
use crate::model::{Code, VaeConfig};
use crate::nn::ArenaLayout;

/// The latent block of `cfg`, its parameters registered in `layout` (after the encoder's,
/// the decoder's and the likelihood's).
pub fn build(layout: &mut ArenaLayout, cfg: &VaeConfig) -> Box<dyn Latent> {
    match &cfg.code {
        Code::Gaussian => Box::new(gaussian::GaussianLatent::new(cfg)),
        Code::Hierarchical(_) => Box::new(hierarchical::Hierarchy::new(layout, cfg)),
        &Code::Deterministic { l1, .. } => Box::new(deterministic::DeterministicCode::new(cfg, l1)),
        &Code::Quantized {
            codes,
            groups,
            commitment,
        } => Box::new(quantized::QuantizedCode::new(layout, cfg, codes, groups, commitment)),
    }
}
