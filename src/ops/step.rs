//! `shaders/step.wgsl`: the per-step uniform the host writes once per training step.

use std::sync::Arc;

use crate::error::Result;
use crate::gpu::{Gpu, GpuBuffer};

/// Values that change every step. Written with one `write_buffer` before the step's submit.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct StepParams {
    /// Run seed (RNG key).
    pub seed: u32,
    /// Global optimizer step (RNG key; Adam's t is step + 1).
    pub step: u32,
    /// First position of this batch in the epoch's permutation.
    pub batch_start: u32,
    /// RNG stream, see [`crate::rng`].
    pub stream: u32,
    /// Weight of the KL term in the gradient (β).
    pub kl_beta: f32,
    /// Learning rate of this step.
    pub adam_lr: f32,
    /// 1 − β1^t.
    pub adam_bc1: f32,
    /// 1 − β2^t.
    pub adam_bc2: f32,
    /// Row of the metric log that this step's sums are written to.
    pub log_row: u32,
    /// Pads the uniform to 16-byte alignment; always zero.
    pub _pad: [u32; 3],
}

/// The device-side copy of [`StepParams`], bound by every kernel that needs per-step values.
pub struct StepBuffer {
    buf: Arc<GpuBuffer>,
}

impl StepBuffer {
    /// Allocates the uniform (once per plan).
    pub fn new(gpu: &Gpu) -> Result<Self> {
        Ok(StepBuffer {
            buf: gpu.uniform("step", &StepParams::default())?,
        })
    }
    /// Queues new values; they take effect at the next submit.
    pub fn write(&self, gpu: &Gpu, p: &StepParams) {
        gpu.ctx.queue.write_buffer(self.buf.raw(), 0, bytemuck::bytes_of(p));
    }
    /// The binding of the uniform.
    pub fn binding(&self) -> wgpu::BindingResource<'_> {
        self.buf.raw().as_entire_binding()
    }
}
