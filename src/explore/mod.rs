//! Latent-space exploration on the CPU, for the small per-latent work that follows a GPU
//! encode or precedes a decode: interpolation paths, class means and attribute arithmetic,
//! the Gaussian-quantile grid for manifold pictures, a linear probe of how well the latents
//! separate the classes, and class-coloured scatter plots of 2-D latents; [`figures`] decodes
//! them into pictures on the GPU.

pub mod figures;
pub mod interp;
pub mod plot;
pub mod probe;

pub use self::figures::{
    arithmetic_figure, class_figure, hierarchy_figure, interpolation_figure, manifold_figure, Figure, FIGURE_PAD,
};
pub use self::interp::{
    class_means, interpolation_path, latent_arithmetic, lerp, manifold_grid, normal_quantile, slerp,
};
pub use self::plot::{scatter_plot_rgb, write_scatter_png, MIN_PLOT_SIZE, PALETTE};
pub use self::probe::{LinearProbe, MAX_PROBE_CLASSES};
