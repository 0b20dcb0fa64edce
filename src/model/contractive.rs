//! The contractive penalty of an MLP encoder with one hidden layer: c·Σ_b ‖∂z/∂x‖²_F, the
//! squared Frobenius norm of the code's Jacobian with respect to the image (a conditional
//! model's one-hot is not part of it). With h = act(x·W₁ + b₁) and z = h·W₂ + b₂,
//! J = W₂ᵀ·diag(act′)·W₁ᵀ, and Σ_b ‖J_b‖² = Σ S∘G₁∘G₂ with S = MᵀM (M the masks act′, [B, H]),
//! G₁ = W₁ᵀW₁, G₂ = W₂W₂ᵀ. Forward: the mask, three products and the elementwise terms (see
//! `code.wgsl`); backward: two products added to the weight gradients.

use crate::error::Result;
use crate::gpu::{Dispatch, Gpu, Tensor};
use crate::model::block::{rows, Ctx};
use crate::model::terms::{TermId, TermKind, TermLayout, TermRows, TermSpec};
use crate::model::{Code, VaeConfig};
use crate::nn::{Linear, LEAKY_SLOPE};
use crate::ops;

/// The penalty's weight and the two layers whose Jacobian it is.
#[derive(Clone)]
pub struct Contractive {
    weight: f32,
    /// The hidden layer, W₁ [D', H].
    first: Linear,
    /// The head, W₂ [H, Z].
    head: Linear,
    /// Pixels per example: the rows of W₁ that multiply the image.
    input_dim: usize,
}

impl Contractive {
    /// The penalty of a model whose code asks for one (validation has checked that the
    /// encoder is one piecewise-linear hidden layer and a head), built on its `layers`.
    pub fn for_config(cfg: &VaeConfig, layers: &[Linear]) -> Option<Self> {
        match (&cfg.code, layers) {
            (&Code::Deterministic { contractive, .. }, [first, head]) if contractive > 0.0 => Some(Contractive {
                weight: contractive,
                first: first.clone(),
                head: head.clone(),
                input_dim: cfg.input_dim,
            }),
            _ => None,
        }
    }

    /// Its scratch for `batch` rows; its H·H terms are declared to be summed in one run with
    /// the code's L1 terms declared next (the latent's).
    pub fn workspace(&self, gpu: &Gpu, batch: usize, terms: &mut TermLayout) -> Result<ContractiveWorkspace> {
        let h = self.first.out_features;
        let sq = |name: &str| gpu.tensor(name, &[h, h]);
        Ok(ContractiveWorkspace {
            penalty: self.clone(),
            ones: gpu.upload("contractive_ones", &[batch, h], &vec![1.0; batch * h])?,
            mask: gpu.tensor("contractive_mask", &[batch, h])?,
            s: sq("contractive_s")?,
            g1: sq("contractive_g1")?,
            g2: sq("contractive_g2")?,
            a1: sq("contractive_a1")?,
            a2: sq("contractive_a2")?,
            terms: terms.add(TermSpec {
                joins_next: true,
                ..TermSpec::new("contractive", TermKind::Penalty, TermRows::Fixed(h * h))
            }),
        })
    }
}

/// The penalty's scratch: [B, H] of ones (whose activation backward is the mask), the mask
/// M, and the [H, H] products S = MᵀM, G₁ = W₁ᵀW₁ (pixel rows only), G₂ = W₂W₂ᵀ and the
/// gradient factors A₁ = 2c·S∘G₂ (dW₁ = W₁·A₁) and A₂ = 2c·S∘G₁ (dW₂ = A₂·W₂).
pub struct ContractiveWorkspace {
    penalty: Contractive,
    ones: Tensor,
    mask: Tensor,
    s: Tensor,
    g1: Tensor,
    g2: Tensor,
    a1: Tensor,
    a2: Tensor,
    terms: TermId,
}

impl ContractiveWorkspace {
    /// The mask from the hidden layer's output `hidden` [b, H], the products, the terms and
    /// the factors.
    pub fn forward(&self, c: &Ctx, hidden: &Tensor) -> Result<Vec<Dispatch>> {
        let p = &self.penalty;
        let plain = ops::Epilogue::default();
        let (mask, ones) = (rows(&self.mask, c.b), rows(&self.ones, c.b));
        let w1 = pixel_rows(&c.arena.param(p.first.w), p.input_dim);
        let w2 = c.arena.param(p.head.w);
        let terms = c.terms.view(self.terms, c.b);
        Ok(vec![
            ops::activation_backward(
                c.gpu,
                "contractive.mask",
                p.first.act,
                LEAKY_SLOPE,
                hidden,
                &ones,
                &mask,
            )?,
            ops::matmul(c.gpu, "contractive.s", &mask, true, &mask, false, &self.s, &plain, None)?,
            ops::matmul(c.gpu, "contractive.g1", &w1, true, &w1, false, &self.g1, &plain, None)?,
            ops::matmul(c.gpu, "contractive.g2", &w2, false, &w2, true, &self.g2, &plain, None)?,
            ops::contractive(
                c.gpu,
                "contractive",
                p.weight,
                &self.s,
                &self.g1,
                &self.g2,
                &terms,
                &self.a1,
                &self.a2,
            )?,
        ])
    }

    /// dW₁ += W₁·A₁ and dW₂ += A₂·W₂, after the layers' own weight gradients.
    pub fn backward(&self, c: &Ctx) -> Result<Vec<Dispatch>> {
        let p = &self.penalty;
        let acc = ops::Epilogue {
            accumulate: true,
            ..Default::default()
        };
        let a = c.arena;
        let (w1, w2) = (p.first.w, p.head.w);
        Ok(vec![
            ops::matmul(
                c.gpu,
                "contractive.dw1",
                &pixel_rows(&a.param(w1), p.input_dim),
                false,
                &self.a1,
                false,
                &pixel_rows(&a.grad(w1), p.input_dim),
                &acc,
                None,
            )?,
            ops::matmul(
                c.gpu,
                "contractive.dw2",
                &self.a2,
                false,
                &a.param(w2),
                false,
                &a.grad(w2),
                &acc,
                None,
            )?,
        ])
    }

    /// Every tensor it holds.
    pub fn tensors(&self) -> Vec<&Tensor> {
        vec![&self.ones, &self.mask, &self.s, &self.g1, &self.g2, &self.a1, &self.a2]
    }
}

/// The first `d` rows of the first layer's weight (or gradient) [D', H]: the rows that multiply
/// pixels. A conditional model's one-hot and padding rows are not the image's and stay out of
/// the penalty. A texture mirror stays valid for the prefix (same start, same row stride;
/// d·H is a multiple of 4 as d is).
fn pixel_rows(w: &Tensor, d: usize) -> Tensor {
    let h = w.shape()[1];
    w.reshape_prefix(&[d, h])
}
