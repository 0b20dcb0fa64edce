//! `shaders/activation.wgsl` (and the shared `act.wgsl`): elementwise activations and their
//! backward, for layers that do not fuse them into a matmul epilogue.

use crate::error::{Result, VaeError};
use crate::gpu::kernels::layout::{storage, uniform};
use crate::gpu::{grid_1d, Dispatch, Gpu, Shader, Tensor};

/// Activation functions. Derivatives are computed from the output, so layers keep only y.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Activation {
    /// y = x.
    #[default]
    Identity,
    /// y = max(x, 0).
    Relu,
    /// Negative slope set where it is applied (matmul epilogue or activation op).
    LeakyRelu,
    /// y = tanh(x).
    Tanh,
    /// y = 1 / (1 + e^−x).
    Sigmoid,
}

impl Activation {
    /// The code act.wgsl switches on.
    pub fn code(self) -> u32 {
        match self {
            Activation::Identity => 0,
            Activation::Relu => 1,
            Activation::LeakyRelu => 2,
            Activation::Tanh => 3,
            Activation::Sigmoid => 4,
        }
    }

    /// Parses `identity` (or `linear`), `relu`, `leaky_relu` (or `leaky-relu`), `tanh` or
    /// `sigmoid`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "identity" | "linear" => Ok(Self::Identity),
            "relu" => Ok(Self::Relu),
            "leaky_relu" | "leaky-relu" => Ok(Self::LeakyRelu),
            "tanh" => Ok(Self::Tanh),
            "sigmoid" => Ok(Self::Sigmoid),
            _ => Err(VaeError::Config(format!(
                "unknown activation {s:?}; expected relu, leaky-relu (leaky_relu), tanh, sigmoid, or identity (linear)"
            ))),
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct ActParams {
    len4: u32,
    leaky_slope: f32,
    _pad: [u32; 2],
}

fn layout() -> [wgpu::BindGroupLayoutEntry; 4] {
    [uniform(0), storage(1, true), storage(2, true), storage(3, false)]
}

fn check_len(label: &str, a: &Tensor, b: &Tensor) -> Result<()> {
    if a.len() != b.len() {
        return Err(VaeError::Shape(format!(
            "{label}: shapes {:?} and {:?} differ",
            a.shape(),
            b.shape()
        )));
    }
    if !a.len().is_multiple_of(4) {
        return Err(VaeError::Shape(format!(
            "{label}: element count {} is not a multiple of 4",
            a.len()
        )));
    }
    Ok(())
}

/// Plans out = act(x).
pub fn activation_forward(
    gpu: &Gpu,
    label: &str,
    act: Activation,
    slope: f32,
    x: &Tensor,
    out: &Tensor,
) -> Result<Dispatch> {
    check_len(label, x, out)?;
    plan(gpu, label, "act_forward", act, slope, x, gpu.dummy_read(), out)
}

/// Plans dx = dy ⊙ act'(y), with y the forward's output.
pub fn activation_backward(
    gpu: &Gpu,
    label: &str,
    act: Activation,
    slope: f32,
    y: &Tensor,
    dy: &Tensor,
    dx: &Tensor,
) -> Result<Dispatch> {
    check_len(label, y, dy)?;
    check_len(label, y, dx)?;
    plan(gpu, label, "act_backward", act, slope, y, dy, dx)
}

#[allow(clippy::too_many_arguments)]
fn plan(
    gpu: &Gpu,
    label: &str,
    entry: &str,
    act: Activation,
    slope: f32,
    x: &Tensor,
    dy: &Tensor,
    out: &Tensor,
) -> Result<Dispatch> {
    let len4 = x.len() / 4;
    let pipeline = gpu
        .kernels
        .pipeline(Shader::Activation, entry, &[("ACT", act.code() as f64)], &layout())?;
    let ubuf = gpu.uniform(
        label,
        &ActParams {
            len4: len4 as u32,
            leaky_slope: slope,
            _pad: [0; 2],
        },
    )?;
    let res = [ubuf.raw().as_entire_binding(), x.binding(), dy.binding(), out.binding()];
    let bytes = 4.0 * x.len() as f64 * if entry == "act_backward" { 3.0 } else { 2.0 };
    gpu.dispatch(label, pipeline, &res, Some(ubuf.clone()), grid_1d(len4, 64), 0.0, bytes)
}

/// Plans a decoder's output `out` as pixel means in `means` (the same shape, a multiple of 4
/// elements): the sigmoid of a Bernoulli decoder's logits, a Gaussian decoder's means clamped
/// to [0, 1]. The device-side counterpart of [`crate::infer::mean_image`].
pub fn pixel_means(
    gpu: &Gpu,
    label: &str,
    likelihood: crate::ops::Likelihood,
    out: &Tensor,
    means: &Tensor,
) -> Result<Dispatch> {
    check_len(label, out, means)?;
    match likelihood {
        crate::ops::Likelihood::Bernoulli => activation_forward(gpu, label, Activation::Sigmoid, 0.0, out, means),
        _ => plan(
            gpu,
            label,
            "unit_clamp",
            Activation::Identity,
            0.0,
            out,
            gpu.dummy_read(),
            means,
        ),
    }
}
