//! Randomness. Device side: a counter-based generator (shaders/rng.wgsl), mirrored here bit
//! for bit so the CPU reference and tests draw the same ε. Host side (shuffles, init): PCG64,
//! whose output does not change across crate versions.
//!
//! Streams keep independent uses apart under the same (seed, step): see the constants.

use rand::Rng;

/// Stream of the training step's ε.
pub const STREAM_TRAIN: u32 = 0;
/// Stream of evaluation ε (test ELBO, importance sampling).
pub const STREAM_EVAL: u32 = 1;
/// Stream of dynamic binarization (gather.wgsl keys it as `stream_word(2, 0)`).
pub const STREAM_BINARIZE: u32 = 2;
/// Stream of prior samples.
pub const STREAM_SAMPLE: u32 = 3;
/// Stream of a denoising model's masking noise (gather.wgsl keys it as `stream_word(4, 0)`).
pub const STREAM_CORRUPT: u32 = 4;

fn pcg4d(v: [u32; 4]) -> [u32; 4] {
    let mut v = v.map(|x| x.wrapping_mul(1664525).wrapping_add(1013904223));
    let round = |v: &mut [u32; 4]| {
        v[0] = v[0].wrapping_add(v[1].wrapping_mul(v[3]));
        v[1] = v[1].wrapping_add(v[2].wrapping_mul(v[0]));
        v[2] = v[2].wrapping_add(v[0].wrapping_mul(v[1]));
        v[3] = v[3].wrapping_add(v[1].wrapping_mul(v[2]));
    };
    round(&mut v);
    v = v.map(|x| x ^ (x >> 16));
    round(&mut v);
    v
}

/// The four hash words for a key, exactly as `rng_bits` in rng.wgsl.
pub fn rng_bits(seed: u32, step: u32, stream: u32, index: u32) -> [u32; 4] {
    pcg4d(pcg4d([seed, step, stream, index]))
}

/// The normal `rng_normal` in rng.wgsl draws for this key, computed in f64.
pub fn normal(seed: u32, step: u32, stream: u32, index: u32) -> f64 {
    let h = rng_bits(seed, step, stream, index >> 1);
    let u1 = ((h[0] >> 8) as f64 + 0.5) / 16777216.0;
    let u2 = (h[1] >> 8) as f64 / 16777216.0;
    let r = (-2.0 * u1.ln()).sqrt();
    let theta = std::f64::consts::TAU * u2;
    if index & 1 == 1 {
        r * theta.sin()
    } else {
        r * theta.cos()
    }
}

/// The uniform `rng_uniform` in rng.wgsl draws for this key.
pub fn uniform(seed: u32, step: u32, stream: u32, index: u32) -> f64 {
    let h = rng_bits(seed, step, stream, index);
    ((h[0] >> 8) as f64 + 0.5) / 16777216.0
}

/// The device generator's 32-bit seed word for a run's 64-bit seed. Seeds below 2³² are used
/// as they are; the high word is mixed in (times the golden-ratio constant) rather than
/// dropped, so seeds such as 1 and 2³² + 1 no longer draw the same ε.
pub fn device_seed(seed: u64) -> u32 {
    (seed as u32) ^ ((seed >> 32) as u32).wrapping_mul(0x9E37_79B9)
}

/// The stream word of a key: stream in the high 16 bits, Monte Carlo sample in the low.
pub fn stream_word(stream: u32, sample: u32) -> u32 {
    (stream << 16) | sample
}

/// Host generator for initialisation and shuffles: PCG64 (Mcg128Xsl64) seeded from `seed` and
/// a purpose tag, so init and each epoch's shuffle are independent and reproducible.
pub fn host_rng(seed: u64, purpose: u64) -> rand_pcg::Pcg64Mcg {
    let s = (seed as u128) << 64 | (purpose as u128 ^ 0x9e37_79b9_7f4a_7c15);
    rand_pcg::Pcg64Mcg::new(s | 1)
}

/// Uniform f32 in [lo, hi) from the host generator.
pub fn uniform_f32(rng: &mut impl Rng, lo: f32, hi: f32) -> f32 {
    let u = (rng.next_u32() >> 8) as f32 / 16777216.0;
    lo + (hi - lo) * u
}

/// A uniformly random permutation of 0..n (Fisher–Yates with unbiased bounded draws).
pub fn permutation(rng: &mut impl Rng, n: usize) -> Vec<u32> {
    let mut p: Vec<u32> = (0..n as u32).collect();
    for i in (1..n).rev() {
        let j = bounded(rng, i as u64 + 1) as usize;
        p.swap(i, j);
    }
    p
}

// Lemire's multiply-shift with rejection: unbiased and stable across rand versions.
fn bounded(rng: &mut impl Rng, n: u64) -> u64 {
    loop {
        let x = rng.next_u64();
        let m = (x as u128) * (n as u128);
        let lo = m as u64;
        if lo >= n.wrapping_neg() % n {
            return (m >> 64) as u64;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_seed_keeps_small_seeds_and_mixes_the_high_word() {
        assert_eq!(device_seed(1), 1);
        assert_eq!(device_seed(u32::MAX as u64), u32::MAX);
        assert_eq!(device_seed((1 << 32) | 1), 1 ^ 0x9E37_79B9);
        assert_ne!(device_seed((1 << 32) | 1), device_seed(1));
        assert_ne!(device_seed(2 << 32), device_seed(1 << 32));
    }

    #[test]
    fn permutation_is_a_permutation_and_reproducible() {
        let a = permutation(&mut host_rng(7, 1), 1000);
        let b = permutation(&mut host_rng(7, 1), 1000);
        let c = permutation(&mut host_rng(7, 2), 1000);
        assert_eq!(a, b);
        assert_ne!(a, c);
        let mut s = a.clone();
        s.sort();
        assert_eq!(s, (0..1000).collect::<Vec<u32>>());
    }

    #[test]
    fn normal_moments_on_host_mirror() {
        let n = 200_000u32;
        let (mut s1, mut s2) = (0.0, 0.0);
        for i in 0..n {
            let x = normal(1, 0, 0, i);
            s1 += x;
            s2 += x * x;
        }
        let mean = s1 / n as f64;
        let var = s2 / n as f64 - mean * mean;
        // 5 standard errors: sd(mean) = 1/sqrt(n) ≈ 0.0022, sd(var) ≈ sqrt(2/n) ≈ 0.0032.
        assert!(mean.abs() < 0.011, "mean {mean}");
        assert!((var - 1.0).abs() < 0.016, "var {var}");
    }
}
