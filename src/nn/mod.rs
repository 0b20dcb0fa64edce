//! Layers and the parameter arena they live in.

pub mod arena;
pub mod linear;

pub use arena::{ArenaLayout, ParamArena, ParamSlot, PARAM_ALIGN};
pub use linear::{Layer, Linear, LEAKY_SLOPE};
