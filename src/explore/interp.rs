//! Latent vector arithmetic: linear and spherical interpolation, class means, attribute
//! arithmetic and the Gaussian-quantile grid used to map a 2-D latent space.
//!
//! Vectors are `f32` slices as the model produces them; sums are accumulated in `f64` so long
//! reductions (class means over 60 000 rows) do not lose precision. Matrices are row-major with
//! their dimensions passed explicitly.

use crate::error::{Result, VaeError};

/// Below this `sin Ω` the great circle through `a` and `b` is numerically undefined and
/// [`slerp`] interpolates linearly instead.
const SLERP_MIN_SIN: f64 = 1e-6;

fn assert_same_len(what: &str, a: usize, b: usize) {
    assert_eq!(a, b, "{what}: vectors of different lengths ({a} and {b})");
}

/// Linear interpolation `(1 − t)·a + t·b`.
///
/// Written in this form rather than `a + t·(b − a)` so that `t = 1` returns `b` exactly.
///
/// # Panics
/// If `a` and `b` differ in length.
pub fn lerp(a: &[f32], b: &[f32], t: f32) -> Vec<f32> {
    assert_same_len("lerp", a.len(), b.len());
    let t = t as f64;
    a.iter()
        .zip(b)
        .map(|(&x, &y)| ((1.0 - t) * x as f64 + t * y as f64) as f32)
        .collect()
}

/// Spherical interpolation along the great circle from `a` to `b`:
/// `sin((1 − t)Ω)/sin Ω · a + sin(tΩ)/sin Ω · b`, with Ω the angle between them.
///
/// Preferred over [`lerp`] for Gaussian latents: in high dimension prior samples concentrate on
/// a shell of radius ≈ √dim, and the straight chord between two of them passes through the
/// low-norm interior the decoder never saw during training; the arc stays on the shell (its norm
/// is preserved exactly when `|a| = |b|`).
///
/// Falls back to [`lerp`] when either vector has zero norm (no angle is defined) or when
/// `sin Ω < 1e-6` — nearly parallel vectors, where the two weights are ratios of tiny numbers
/// and lose all precision, while the arc and the chord coincide anyway; and nearly antiparallel
/// ones, where every great circle through both is equally valid and none can be picked.
///
/// # Panics
/// If `a` and `b` differ in length.
pub fn slerp(a: &[f32], b: &[f32], t: f32) -> Vec<f32> {
    assert_same_len("slerp", a.len(), b.len());
    let (mut dot, mut na, mut nb) = (0.0f64, 0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (x as f64, y as f64);
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    let (na, nb) = (na.sqrt(), nb.sqrt());
    if na == 0.0 || nb == 0.0 || !(na.is_finite() && nb.is_finite()) {
        return lerp(a, b, t);
    }
    let omega = (dot / (na * nb)).clamp(-1.0, 1.0).acos();
    let sin_omega = omega.sin();
    if sin_omega < SLERP_MIN_SIN {
        return lerp(a, b, t);
    }
    let t = t as f64;
    // At t = 0 and t = 1 the weights are exactly (1, 0) and (0, 1), so endpoints are exact.
    let wa = ((1.0 - t) * omega).sin() / sin_omega;
    let wb = (t * omega).sin() / sin_omega;
    a.iter()
        .zip(b)
        .map(|(&x, &y)| (wa * x as f64 + wb * y as f64) as f32)
        .collect()
}

/// `steps` evenly spaced points from `a` to `b` as a row-major `[steps × a.len()]` matrix,
/// row `i` at `t = i / (steps − 1)`, so the first row is exactly `a` and the last exactly `b`.
///
/// Spherical ([`slerp`]) when `spherical`, otherwise linear ([`lerp`]). Meant for `steps ≥ 2`;
/// `steps = 1` gives just `a` and `steps = 0` an empty matrix.
///
/// # Panics
/// If `a` and `b` differ in length.
pub fn interpolation_path(a: &[f32], b: &[f32], steps: usize, spherical: bool) -> Vec<f32> {
    assert_same_len("interpolation_path", a.len(), b.len());
    let mut out = Vec::with_capacity(steps * a.len());
    for i in 0..steps {
        let t = if steps == 1 {
            0.0
        } else {
            (i as f64 / (steps - 1) as f64) as f32
        };
        let row = if spherical { slerp(a, b, t) } else { lerp(a, b, t) };
        out.extend_from_slice(&row);
    }
    out
}

/// Mean latent of each class as a row-major `[classes × dim]` matrix.
///
/// `latents` is `[labels.len() × dim]`, row `i` labelled `labels[i]`. A size mismatch, a zero
/// `dim`, a label `≥ classes` or a class without any member is a [`VaeError::Shape`] (an empty
/// class has no mean, and silently returning zeros would look like a real latent).
pub fn class_means(latents: &[f32], dim: usize, labels: &[u32], classes: usize) -> Result<Vec<f32>> {
    if dim == 0 {
        return Err(VaeError::Shape(
            "class means need latents of dimension at least 1".into(),
        ));
    }
    if labels.len().checked_mul(dim) != Some(latents.len()) {
        return Err(VaeError::Shape(format!(
            "{} latent values given for {} labels of dimension {dim}",
            latents.len(),
            labels.len()
        )));
    }
    let mut sums = vec![0.0f64; classes * dim];
    let mut counts = vec![0usize; classes];
    for (row, &label) in latents.chunks_exact(dim).zip(labels) {
        let c = label as usize;
        if c >= classes {
            return Err(VaeError::Shape(format!(
                "label {c} is out of range for {classes} classes"
            )));
        }
        counts[c] += 1;
        for (s, &v) in sums[c * dim..(c + 1) * dim].iter_mut().zip(row) {
            *s += v as f64;
        }
    }
    if let Some(empty) = counts.iter().position(|&n| n == 0) {
        return Err(VaeError::Shape(format!(
            "class {empty} has no members among {} labels, so it has no mean",
            labels.len()
        )));
    }
    Ok(sums
        .chunks_exact(dim)
        .zip(&counts)
        .flat_map(|(s, &n)| s.iter().map(move |&v| (v / n as f64) as f32))
        .collect())
}

/// Moves `z` from one class (or attribute) towards another: `z − mean_from + mean_to`.
///
/// The classic "smile vector" edit: the difference of two class means is the latent direction
/// that changes one class into the other while keeping what else `z` encodes.
///
/// # Panics
/// If the three vectors differ in length.
pub fn latent_arithmetic(z: &[f32], mean_from: &[f32], mean_to: &[f32]) -> Vec<f32> {
    assert_same_len("latent_arithmetic", z.len(), mean_from.len());
    assert_same_len("latent_arithmetic", z.len(), mean_to.len());
    z.iter()
        .zip(mean_from)
        .zip(mean_to)
        .map(|((&z, &f), &t)| (z as f64 - f as f64 + t as f64) as f32)
        .collect()
}

/// Evaluates a polynomial with coefficients in ascending order of power (Horner's rule).
fn poly(coeffs: &[f64], x: f64) -> f64 {
    coeffs.iter().rev().fold(0.0, |acc, &c| acc * x + c)
}

/// Inverse of the standard normal CDF, Φ⁻¹(p), accurate to about 1e-15 relative over (0, 1).
///
/// Wichura's algorithm AS 241 (PPND16): one rational approximation of degree 7/7 in
/// `(p − ½)²` for the central region `|p − ½| ≤ 0.425`, and two in `r = √(−ln min(p, 1 − p))`
/// for the tails (`r ≤ 5`, i.e. down to p ≈ 1e-11, and beyond), so the tails are computed from
/// the small tail probability directly and keep full relative precision down to the smallest
/// positive `f64`.
///
/// Outside the open interval: `p = 0` gives −∞ and `p = 1` gives +∞ (the limits), and any
/// other `p` outside [0, 1], or NaN, gives NaN — this is a numeric primitive, and NaN
/// propagates visibly where an error would force every caller to unwrap.
// The coefficients keep the paper's digits, so that they can be checked against it.
#[allow(clippy::excessive_precision)]
pub fn normal_quantile(p: f64) -> f64 {
    // Coefficients of Wichura (1988), Applied Statistics 37(3), 477–484, ascending powers.
    const CENTRAL_NUM: [f64; 8] = [
        3.387_132_872_796_366_608,
        1.331_416_678_917_843_774_5e2,
        1.971_590_950_306_551_442_7e3,
        1.373_169_376_550_946_112_5e4,
        4.592_195_393_154_987_145_7e4,
        6.726_577_092_700_870_085_3e4,
        3.343_057_558_358_812_810_5e4,
        2.509_080_928_730_122_672_7e3,
    ];
    const CENTRAL_DEN: [f64; 8] = [
        1.0,
        4.231_333_070_160_091_125_2e1,
        6.871_870_074_920_579_083e2,
        5.394_196_021_424_751_107_7e3,
        2.121_379_430_158_659_586_7e4,
        3.930_789_580_009_271_061e4,
        2.872_908_573_572_194_267_4e4,
        5.226_495_278_852_854_561e3,
    ];
    const NEAR_NUM: [f64; 8] = [
        1.423_437_110_749_683_577_34,
        4.630_337_846_156_545_295_9,
        5.769_497_221_460_691_405_5,
        3.647_848_324_763_204_605_04,
        1.270_458_252_452_368_382_58,
        2.417_807_251_774_506_117_7e-1,
        2.272_384_498_926_918_458_33e-2,
        7.745_450_142_783_414_076_4e-4,
    ];
    const NEAR_DEN: [f64; 8] = [
        1.0,
        2.053_191_626_637_758_821_87,
        1.676_384_830_183_803_849_4,
        6.897_673_349_851_000_045_5e-1,
        1.481_039_764_274_800_745_9e-1,
        1.519_866_656_361_645_719_66e-2,
        5.475_938_084_995_344_946e-4,
        1.050_750_071_644_416_843_24e-9,
    ];
    const FAR_NUM: [f64; 8] = [
        6.657_904_643_501_103_777_2,
        5.463_784_911_164_114_369_9,
        1.784_826_539_917_291_335_8,
        2.965_605_718_285_048_912_3e-1,
        2.653_218_952_657_612_309_3e-2,
        1.242_660_947_388_078_438_6e-3,
        2.711_555_568_743_487_578_15e-5,
        2.010_334_399_292_288_132_65e-7,
    ];
    const FAR_DEN: [f64; 8] = [
        1.0,
        5.998_322_065_558_879_376_9e-1,
        1.369_298_809_227_358_053_1e-1,
        1.487_536_129_085_061_485_25e-2,
        7.868_691_311_456_132_591e-4,
        1.846_318_317_510_054_681_8e-5,
        1.421_511_758_316_445_888_7e-7,
        2.044_263_103_389_939_785_64e-15,
    ];

    if p.is_nan() || !(0.0..=1.0).contains(&p) {
        return f64::NAN;
    }
    if p == 0.0 {
        return f64::NEG_INFINITY;
    }
    if p == 1.0 {
        return f64::INFINITY;
    }
    let q = p - 0.5;
    if q.abs() <= 0.425 {
        let r = 0.180_625 - q * q;
        return q * poly(&CENTRAL_NUM, r) / poly(&CENTRAL_DEN, r);
    }
    // Tail: work with the smaller of p and 1 − p, then restore the sign.
    let tail = if q < 0.0 { p } else { 1.0 - p };
    let r = (-tail.ln()).sqrt();
    let x = if r <= 5.0 {
        let r = r - 1.6;
        poly(&NEAR_NUM, r) / poly(&NEAR_DEN, r)
    } else {
        let r = r - 5.0;
        poly(&FAR_NUM, r) / poly(&FAR_DEN, r)
    };
    if q < 0.0 {
        -x
    } else {
        x
    }
}

/// An `n × n` grid of 2-D latent points for decoding a picture of the latent manifold.
///
/// Each axis takes the values Φ⁻¹((i + ½)/n), i = 0..n: equal steps in prior probability rather
/// than in latent units, so the grid covers the N(0, I) prior evenly and never lands on the
/// infinite quantiles 0 or 1. Point `r·n + c` (row `r`, column `c`) is
/// `[Φ⁻¹((c + ½)/n), −Φ⁻¹((r + ½)/n)]`: the first coordinate grows along a row, the second
/// decreases down the rows, so decoded images tiled in this order read like a plot with its
/// y axis pointing up. The grid is exactly symmetric about the origin. `n = 0` gives no points.
pub fn manifold_grid(n: usize) -> Vec<[f32; 2]> {
    let q: Vec<f32> = (0..n)
        .map(|i| normal_quantile((i as f64 + 0.5) / n as f64) as f32)
        .collect();
    // Φ⁻¹ is odd but (i + ½)/n and 1 − (i + ½)/n round differently; averaging the pair makes
    // the grid exactly symmetric.
    let q: Vec<f32> = (0..n).map(|i| 0.5 * (q[i] - q[n - 1 - i])).collect();
    let mut out = Vec::with_capacity(n * n);
    for r in 0..n {
        for &x in &q {
            out.push([x, -q[r]]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(v: &[f32]) -> f64 {
        v.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>().sqrt()
    }

    #[test]
    fn lerp_endpoints_and_midpoint() {
        let a = [0.1f32, -3.0, 7.25];
        let b = [2.0f32, 0.3, -1.0];
        assert_eq!(lerp(&a, &b, 0.0), a);
        assert_eq!(lerp(&a, &b, 1.0), b);
        let m = lerp(&a, &b, 0.5);
        for i in 0..3 {
            assert!((m[i] - (a[i] + b[i]) / 2.0).abs() < 1e-6);
        }
    }

    #[test]
    fn slerp_endpoints_are_exact() {
        let a = [0.3f32, -1.2, 2.5, 0.7];
        let b = [-0.4f32, 0.9, 1.1, -2.0];
        assert_eq!(slerp(&a, &b, 0.0), a);
        assert_eq!(slerp(&a, &b, 1.0), b);
    }

    #[test]
    fn slerp_preserves_norm_for_equal_norm_inputs() {
        let a = [3.0f32, 4.0, 0.0, 0.0];
        let b = [0.0f32, 0.0, -4.0, 3.0];
        for i in 0..=10 {
            let v = slerp(&a, &b, i as f32 / 10.0);
            assert!((norm(&v) - 5.0).abs() < 1e-5, "t={} norm {}", i as f32 / 10.0, norm(&v));
        }
        // Linear interpolation, by contrast, cuts through the interior.
        assert!(norm(&lerp(&a, &b, 0.5)) < 4.0);
    }

    #[test]
    fn slerp_of_orthogonal_unit_vectors_at_half() {
        let a = [1.0f32, 0.0, 0.0];
        let b = [0.0f32, 1.0, 0.0];
        let m = slerp(&a, &b, 0.5);
        let s = std::f32::consts::FRAC_1_SQRT_2;
        for (got, want) in m.iter().zip([s, s, 0.0]) {
            assert!((got - want).abs() < 1e-7, "{m:?}");
        }
    }

    #[test]
    fn slerp_falls_back_to_lerp_when_degenerate() {
        let a = [1.0f32, 2.0];
        let parallel = [2.0f32, 4.0];
        assert_eq!(slerp(&a, &parallel, 0.25), lerp(&a, &parallel, 0.25));
        let zero = [0.0f32, 0.0];
        assert_eq!(slerp(&zero, &a, 0.5), lerp(&zero, &a, 0.5));
        let opposite = [-1.0f32, -2.0];
        assert_eq!(slerp(&a, &opposite, 0.3), lerp(&a, &opposite, 0.3));
        assert!(slerp(&a, &parallel, 0.5).iter().all(|v| v.is_finite()));
    }

    #[test]
    fn interpolation_path_rows_and_endpoints() {
        let a = [1.0f32, 0.0, 2.0];
        let b = [0.0f32, 1.0, -2.0];
        for spherical in [false, true] {
            let path = interpolation_path(&a, &b, 5, spherical);
            assert_eq!(path.len(), 15);
            assert_eq!(&path[..3], &a);
            assert_eq!(&path[12..], &b);
        }
        let lin = interpolation_path(&a, &b, 5, false);
        assert_eq!(&lin[6..9], lerp(&a, &b, 0.5).as_slice());
        assert_eq!(interpolation_path(&a, &b, 1, true), a);
        assert!(interpolation_path(&a, &b, 0, true).is_empty());
    }

    #[test]
    fn class_means_on_a_tiny_example() {
        #[rustfmt::skip]
        let latents = [
            1.0f32, 2.0,
            3.0, 4.0,
            10.0, -10.0,
            -1.0, 0.0,
        ];
        let labels = [0u32, 0, 2, 1];
        let means = class_means(&latents, 2, &labels, 3).unwrap();
        assert_eq!(means, vec![2.0, 3.0, -1.0, 0.0, 10.0, -10.0]);
    }

    #[test]
    fn class_means_rejects_bad_input() {
        let latents = [0.0f32; 6];
        let cases: [(&[f32], usize, &[u32], usize); 4] = [
            (&latents, 2, &[0, 1], 2),    // 6 values for 2 rows of 2
            (&latents, 0, &[], 2),        // zero dimension
            (&latents, 2, &[0, 1, 3], 3), // label out of range
            (&latents, 2, &[0, 0, 2], 3), // class 1 empty
        ];
        for (x, dim, labels, classes) in cases {
            let err = class_means(x, dim, labels, classes).unwrap_err();
            assert!(matches!(err, VaeError::Shape(_)), "{err}");
        }
    }

    #[test]
    fn latent_arithmetic_moves_between_means() {
        let z = [1.0f32, 1.0, 1.0];
        let from = [0.5f32, 0.0, -1.0];
        let to = [0.0f32, 2.0, 1.0];
        assert_eq!(latent_arithmetic(&z, &from, &to), vec![0.5, 3.0, 3.0]);
        // Applied to the source mean itself it lands on the target mean.
        assert_eq!(latent_arithmetic(&from, &from, &to), to);
    }

    #[test]
    fn normal_quantile_known_values() {
        // References computed to 20 digits with mpmath for the exact f64 value of each p,
        // covering the central region, both tail approximations and the boundary r = 5.
        let cases = [
            (0.975, 1.959963984540054),
            (0.5, 0.0),
            (0.3, -0.524400512708041),
            (0.9, 1.2815515655446006),
            (0.925, 1.4395314709384562),
            (0.025, -1.9599639845400542),
            (0.02275013194817921, -2.0),
            (1e-5, -4.264890793922825),
            (0.99999, 4.264890793923841),
            (1e-10, -6.361340902404056),
            (1.3887943864964021e-11, -6.657904643501104),
            (1e-300, -37.0470962993612),
        ];
        for (p, want) in cases {
            let got = normal_quantile(p);
            assert!(
                (got - want).abs() <= 1e-13 * want.abs().max(1.0),
                "p={p}: got {got}, want {want}"
            );
        }
    }

    #[test]
    fn normal_quantile_symmetry_and_edges() {
        for &p in &[1e-12, 1e-6, 0.01, 0.2, 0.3, 0.45, 0.49] {
            let (lo, hi) = (normal_quantile(p), normal_quantile(1.0 - p));
            assert!(lo < 0.0);
            // 1 − p is itself rounded, so allow for d(Φ⁻¹)/dp times half an ulp of 1.
            let slope = 1.0 / (0.398_942_280_401_432_7 * (-0.5 * lo * lo).exp());
            assert!(
                (lo + hi).abs() < 1e-13 * lo.abs() + slope * 1.2e-16,
                "p={p}: {lo} vs {hi}"
            );
        }
        assert_eq!(normal_quantile(0.0), f64::NEG_INFINITY);
        assert_eq!(normal_quantile(1.0), f64::INFINITY);
        assert!(normal_quantile(-0.1).is_nan());
        assert!(normal_quantile(1.5).is_nan());
        assert!(normal_quantile(f64::NAN).is_nan());
    }

    #[test]
    fn normal_quantile_is_monotone_across_region_boundaries() {
        // The three rational approximations meet at |p − ½| = 0.425 and r = 5; a kink or jump
        // there would show up as a non-increasing step.
        let mut prev = f64::NEG_INFINITY;
        for i in 1..20_000 {
            let p = i as f64 / 20_000.0;
            let x = normal_quantile(p);
            assert!(x > prev, "not increasing at p={p}");
            prev = x;
        }
        let r5 = (-25.0f64).exp();
        assert!(normal_quantile(r5 * 0.999) < normal_quantile(r5) && normal_quantile(r5) < normal_quantile(r5 * 1.001));
    }

    #[test]
    fn manifold_grid_layout() {
        let g = manifold_grid(4);
        assert_eq!(g.len(), 16);
        let q0 = normal_quantile(0.125) as f32;
        let q1 = normal_quantile(0.375) as f32;
        assert!((g[0][0] - q0).abs() < 1e-6 && (g[0][1] + q0).abs() < 1e-6);
        // First coordinate along a row increases; second decreases down the rows.
        assert!((g[1][0] - q1).abs() < 1e-6 && g[1][1] == g[0][1]);
        assert!(g[4][0] == g[0][0] && g[4][1] < g[0][1]);
        assert_eq!(g[15], [-g[0][0], -g[0][1]]);
        // An odd grid has the origin at its centre.
        assert_eq!(manifold_grid(3)[4], [0.0, 0.0]);
        assert!(manifold_grid(0).is_empty());
    }
}
