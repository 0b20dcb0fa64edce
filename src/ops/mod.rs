//! One thin typed wrapper per kernel: validates shapes, compiles (or fetches) the pipeline,
//! binds buffers, and returns a [`Dispatch`](crate::gpu::Dispatch) to record.

pub mod activation;
pub mod adam;
pub mod code;
pub mod conv;
pub mod gather;
pub mod iwae;
pub mod loss;
pub mod matmul;
pub mod reduce;
pub mod reparam;
pub mod step;

pub use crate::gpu::mirror::{mirror_texture, mirrored, refresh_mirror, TEX_W};
pub use activation::{activation_backward, activation_forward, pixel_means, Activation};
pub use adam::{adam, AdamConfig, HEALTHY};
pub use code::{
    code_backward, code_forward, contractive, vq_backward, vq_codebook_grad_scored, vq_ema, vq_ema_scored, vq_forward,
    vq_forward_scored, vq_scored_fits, VqScratch,
};
pub use conv::{channel_sum, col2im, copy_columns, im2col, ConvGeometry};
pub use gather::{condition, corrupt, gather, gather_f32};
pub use iwae::{iw_log_weights, iw_normalize, iw_scale_rows};
pub use loss::{log_c_grad, loss, LearnedLogC, Likelihood, LOG_C_MAX, LOG_C_MIN};
pub use matmul::{conv_matmul, matmul, onehot_matmul, ConvProduct, Epilogue, MatmulStrategy};
pub use reduce::{colsum, read_log_totals, sum_segments, Segment, MAX_SEGMENTS};
pub use reparam::{
    hier_kl, prior_draw, reparam_kl_backward, reparam_kl_backward_at, reparam_kl_forward, reparam_kl_forward_at,
    sample_backward, sample_forward, sample_forward_at, top_sample_base, LOGVAR_MAX, LOGVAR_MIN, MAX_SAMPLES,
    TOP_SAMPLE_BASE,
};
pub use step::{StepBuffer, StepParams};
