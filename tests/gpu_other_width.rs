//! The kernel tests again at the lavapipe width the library would not pick on this machine:
//! 256-bit (8-lane subgroups) where it picks 512, else 512-bit (16 lanes), so the subgroup
//! matmul's two lane layouts (`LANES` = 8 and 16) are tested on every machine. A separate test
//! binary because the driver reads `LP_NATIVE_VECTOR_WIDTH` once per process, when the first
//! device starts it; `tests/gpu` runs at the library's choice.

use std::sync::OnceLock;

#[path = "gpu/common.rs"]
#[allow(dead_code)]
mod shared;

/// The shared helpers, with a device created at the other width.
mod common {
    pub use crate::shared::*;
    use std::sync::OnceLock;
    use vae_wgpu::Gpu;

    pub fn gpu() -> &'static Gpu {
        static GPU: OnceLock<Gpu> = OnceLock::new();
        GPU.get_or_init(|| {
            crate::set_width();
            match Gpu::new() {
                Ok(g) => {
                    eprintln!("adapter: {}", g.report());
                    g
                }
                Err(e) => panic!("GPU tests need an adapter: {e}"),
            }
        })
    }
}

#[path = "gpu/kernels.rs"]
mod kernels;

/// The width this binary runs at: the one the library would not pick.
fn other_width() -> &'static str {
    match vae_wgpu::gpu::preferred_lavapipe_width() {
        Some("512") => "256",
        _ => "512",
    }
}

fn set_width() {
    static SET: OnceLock<()> = OnceLock::new();
    SET.get_or_init(|| {
        // Before any device: nothing else in this process reads the environment yet. An
        // explicit setting wins (then both binaries run at it).
        if std::env::var_os("LP_NATIVE_VECTOR_WIDTH").is_none() {
            std::env::set_var("LP_NATIVE_VECTOR_WIDTH", other_width());
        }
    });
}

/// On lavapipe the width sets the subgroup size (8 lanes at 256 bits, 16 at 512), and the
/// subgroup matmul picks its lane layout by it; the kernel tests above check that layout
/// against f64.
#[test]
fn lavapipe_width_picks_the_matmul_lane_layout() {
    use vae_wgpu::ops::{self, Epilogue, MatmulStrategy};
    let g = common::gpu();
    if !g.report().name.contains("llvmpipe") {
        eprintln!("not lavapipe ({}): the width setting does not apply", g.report().name);
        return;
    }
    let width: u32 = std::env::var("LP_NATIVE_VECTOR_WIDTH").unwrap().parse().unwrap();
    assert_eq!(g.report().subgroup_min_size, width / 32, "lanes = width / 32 bits");
    let a = g.tensor("a", &[8, 8]).unwrap();
    let c = g.tensor("c", &[8, 8]).unwrap();
    let d = ops::matmul(
        g,
        "m",
        &a,
        false,
        &a,
        false,
        &c,
        &Epilogue::default(),
        Some(MatmulStrategy::Subgroup),
    )
    .unwrap();
    assert_eq!(d.label.contains("Subgroup16"), width >= 512, "{}", d.label);
}
