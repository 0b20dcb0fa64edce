//! The kernel tests again with lavapipe at 512 bits (16-lane subgroups), while `tests/gpu`
//! runs at the driver's default (256 bits, 8 lanes), so on lavapipe the subgroup matmul's two
//! lane layouts (`LANES` = 8 and 16) are both tested. All kernel tests run, not only the
//! matmul's: the driver compiles every kernel differently at each width. Other adapters ignore
//! the setting and simply run the kernel tests twice. A separate test binary because the
//! driver reads `LP_NATIVE_VECTOR_WIDTH` once per process, when the first device starts it.

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
            match Gpu::new(vae_wgpu::GpuOptions::from_env().expect("the environment's GPU settings")) {
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

/// The width this binary runs at, unless the environment already sets one.
const OTHER_WIDTH: &str = "512";

fn set_width() {
    static SET: OnceLock<()> = OnceLock::new();
    SET.get_or_init(|| {
        // Before any device: nothing else in this process reads the environment yet. An
        // explicit setting wins (then both binaries run at it).
        if std::env::var_os("LP_NATIVE_VECTOR_WIDTH").is_none() {
            std::env::set_var("LP_NATIVE_VECTOR_WIDTH", OTHER_WIDTH);
        }
    });
}

/// On lavapipe the width sets the subgroup size (8 lanes at 256 bits, 16 at 512), and the
/// subgroup matmul picks its lane layout by it; the kernel tests above check that layout
/// against f64.
#[test]
fn lavapipe_width_picks_the_matmul_lane_layout() {
    use vae_wgpu::internals::ops::{self, Epilogue, MatmulStrategy};
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
