// Per-step values the host writes once per training step (one write_buffer, no readback).
// This file is prepended to the kernels that need them.
struct Step {
    seed: u32,
    step: u32,          // global optimizer step (RNG key)
    batch_start: u32,   // first position of this batch in the epoch's permutation
    stream: u32,        // RNG stream: training, evaluation, ... (see src/rng.rs)
    kl_beta: f32,       // weight of the KL term in the gradient
    adam_lr: f32,       // learning rate of this step
    adam_bc1: f32,      // 1 - beta1^t
    adam_bc2: f32,      // 1 - beta2^t
    log_row: u32,       // row of the metric log this step's sums go to
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}
