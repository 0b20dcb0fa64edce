//! Shared device, deterministic test data and the f64 reference helpers.

use std::sync::OnceLock;

use vae_wgpu::Gpu;

/// The device all tests share.
pub fn gpu() -> &'static Gpu {
    static GPU: OnceLock<Gpu> = OnceLock::new();
    GPU.get_or_init(
        || match Gpu::new(vae_wgpu::GpuOptions::from_env().expect("the environment's GPU settings")) {
            Ok(g) => {
                eprintln!("adapter: {}", g.report());
                g
            }
            Err(e) => panic!("GPU tests need an adapter: {e}"),
        },
    )
}

/// Deterministic pseudo-random values in [lo, hi) (SplitMix64).
pub fn rand_vec(n: usize, seed: u64, lo: f32, hi: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(1);
    (0..n)
        .map(|_| {
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            lo + (hi - lo) * ((z >> 40) as f32 / (1u64 << 24) as f32)
        })
        .collect()
}

/// Asserts |got − want| <= tol[i] elementwise, reporting the worst index.
pub fn assert_close(what: &str, got: &[f32], want: &[f64], tol: impl Fn(usize) -> f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut worst = (0usize, 0.0f64, 0.0f64);
    for i in 0..got.len() {
        let err = (got[i] as f64 - want[i]).abs();
        let t = tol(i);
        assert!(got[i].is_finite(), "{what}[{i}] = {} is not finite", got[i]);
        if err / t > worst.2 {
            worst = (i, err, err / t);
        }
    }
    assert!(
        worst.2 <= 1.0,
        "{what}: index {} got {} want {} (error {:.3e} is {:.2}× the tolerance)",
        worst.0,
        got[worst.0],
        want[worst.0],
        worst.1,
        worst.2
    );
}

/// Tensors (one vector each, e.g. the arena's parameters by slot) widened to f64 for the
/// reference.
pub fn to_f64(v: &[Vec<f32>]) -> Vec<Vec<f64>> {
    v.iter().map(|t| t.iter().map(|&x| x as f64).collect()).collect()
}

/// The latent of a model with `top` stochastic layers above z₁: Gaussian when there are none.
pub fn hier(top: &[vae_wgpu::model::TopLatent]) -> vae_wgpu::model::Code {
    if top.is_empty() {
        vae_wgpu::model::Code::Gaussian
    } else {
        vae_wgpu::model::Code::Hierarchical(top.to_vec())
    }
}
