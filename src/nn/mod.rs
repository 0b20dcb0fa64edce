//! Layers and the parameter arena they live in.

pub mod arena;
pub mod conv;
pub mod linear;

pub use arena::{ArenaLayout, ParamArena, ParamSlot, PARAM_ALIGN};
pub use conv::{conv_out, conv_transpose_out, Conv2d};
pub use linear::{Layer, Linear, LEAKY_SLOPE};
