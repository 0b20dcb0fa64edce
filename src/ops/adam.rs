//! `shaders/adam.wgsl`: Adam / AdamW over a whole parameter arena in one dispatch.

use crate::error::{Result, VaeError};
use crate::gpu::kernels::layout::{storage, uniform};
use crate::gpu::{grid_1d, Dispatch, Gpu, Shader, Tensor};
use crate::ops::step::{StepBuffer, StepParams};

/// The value of a health word no step has lowered: every parameter stayed finite.
pub const HEALTHY: u32 = u32::MAX;

/// Adam hyper-parameters (PyTorch's defaults).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamConfig {
    /// Learning rate (1e-3).
    pub lr: f32,
    /// Decay of the first moment (0.9).
    pub beta1: f32,
    /// Decay of the second moment (0.999).
    pub beta2: f32,
    /// Added to √v̂ in the denominator (1e-8).
    pub eps: f32,
    /// L2 penalty (0): added to the gradient as wd·p, or with `decoupled` applied to the weights.
    pub weight_decay: f32,
    /// AdamW: decay the weights directly instead of adding wd·p to the gradient.
    pub decoupled: bool,
}

impl Default for AdamConfig {
    fn default() -> Self {
        AdamConfig {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            decoupled: false,
        }
    }
}

impl AdamConfig {
    /// Fills the optimizer fields of the step uniform for optimizer step `t` (1-based).
    pub fn step_fields(&self, t: u64, p: &mut StepParams) {
        p.adam_lr = self.lr;
        p.adam_bc1 = (1.0 - (self.beta1 as f64).powf(t as f64)) as f32;
        p.adam_bc2 = (1.0 - (self.beta2 as f64).powf(t as f64)) as f32;
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct AdamParams {
    len4: u32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    weight_decay: f32,
    _pad: [u32; 3],
}

/// Plans one Adam update of `params` from `grads`, with moments `m` and `v` (all the same
/// length, a multiple of 4). `health` (at least one u32 word) takes the lowest step number at
/// which an updated parameter was not finite (atomic min; see [`HEALTHY`]).
#[allow(clippy::too_many_arguments)]
pub fn adam(
    gpu: &Gpu,
    label: &str,
    cfg: &AdamConfig,
    step: &StepBuffer,
    params: &Tensor,
    grads: &Tensor,
    m: &Tensor,
    v: &Tensor,
    health: &Tensor,
) -> Result<Dispatch> {
    let n = params.len();
    if grads.len() != n || m.len() != n || v.len() != n || !n.is_multiple_of(4) {
        return Err(VaeError::Shape(format!(
            "{label}: params, grads, m and v need one length divisible by 4; got {}, {}, {}, {}",
            n,
            grads.len(),
            m.len(),
            v.len()
        )));
    }
    let layout = [
        uniform(0),
        uniform(1),
        storage(2, false),
        storage(3, true),
        storage(4, false),
        storage(5, false),
        storage(6, false),
    ];
    let constants = [("DECOUPLED", if cfg.decoupled { 1.0 } else { 0.0 })];
    let pipeline = gpu.kernels.pipeline(Shader::Adam, "adam", &constants, &layout)?;
    let raw = AdamParams {
        len4: (n / 4) as u32,
        beta1: cfg.beta1,
        beta2: cfg.beta2,
        eps: cfg.eps,
        weight_decay: cfg.weight_decay,
        _pad: [0; 3],
    };
    let ubuf = gpu.uniform(label, &raw)?;
    let res = [
        ubuf.raw().as_entire_binding(),
        step.binding(),
        params.binding(),
        grads.binding(),
        m.binding(),
        v.binding(),
        health.binding(),
    ];
    gpu.dispatch(
        label,
        pipeline,
        &res,
        Some(ubuf.clone()),
        grid_1d(n / 4, 64),
        0.0,
        28.0 * n as f64,
    )
}
