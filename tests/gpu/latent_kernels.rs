//! Kernel-level tests of the latent codes' kernels, which the model tests cover only end to end.
//! Each runs one wrapper on the adapter and compares with an f64 reference written here from
//! the kernel's definition (the objective's terms and their derivatives), not from its code:
//! - `code.wgsl` through `src/ops/code.rs`: the deterministic code and its L1 penalty (forward
//!   and backward), the contractive penalty's elementwise step (also checked against the
//!   penalty c·Σ_b ‖∂z/∂x‖²_F and its weight gradients computed from W1, W2 and the masks), VQ
//!   quantization (nearest entry per group, z, penalty terms, indices), its backward (the
//!   straight-through input gradient with the commitment term, the codebook gradient) and the
//!   codebook's moving-average update over two steps;
//! - `reparam_kl.wgsl`'s `hier_kl` (a hierarchical VAE's lower KL term, its gradients with the
//!   clamp's zero, and the log-ratio) and `sample_backward` (z₁'s gradient summing the decoder's,
//!   the upper encoder's and the KL term's, and the entropy's weight), with ε rebuilt on the
//!   host from `src/rng.rs` under a non-zero sample base;
//! - `gather.wgsl`'s `corrupt` (masking noise), its draws rebuilt from the shader's keying.
//!
//! Sizes are odd and not multiples of the 64-lane workgroup, batch 1 included, several groups
//! and samples; z rows are wider than the code where a kernel takes a stride, the columns past
//! the code checked untouched (outputs) or shown to be ignored (inputs). Tolerances: 1e-5 of
//! the magnitude of the terms that make up a value, plus 1e-6 absolute ([`tol`]); copies,
//! indices and masks exactly.

use vae_wgpu::internals::ops::{self, StepBuffer, StepParams};
use vae_wgpu::rng;

use crate::common::{assert_close, gpu, rand_vec};

/// What outputs are filled with beforehand: a value no kernel computes here.
const SENTINEL: f32 = 7.25;

/// The tolerance of a value computed in f32 from terms whose magnitudes add up to `mag`.
fn tol(mag: f64) -> f64 {
    1e-5 * mag + 1e-6
}

fn ln_2pi() -> f64 {
    std::f64::consts::TAU.ln()
}

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// ε of sample `s`, example `b`, element `j` of a Z-wide code, as the reparameterization draws
/// it: key (seed, step, stream·2¹⁶ + base + s, b·Z + j).
fn eps(sp: &StepParams, base: u32, s: usize, b: usize, zd: usize, j: usize) -> f64 {
    rng::normal(
        sp.seed,
        sp.step,
        rng::stream_word(sp.stream, base + s as u32),
        (b * zd + j) as u32,
    )
}

fn clamp_lv(raw: f32) -> f64 {
    (raw as f64).clamp(ops::LOGVAR_MIN as f64, ops::LOGVAR_MAX as f64)
}

fn inside_clamp(raw: f32) -> bool {
    (ops::LOGVAR_MIN..=ops::LOGVAR_MAX).contains(&raw)
}

// ---------------------------------------------------------------------------------------------
// The deterministic code

/// z = enc in the first Z columns of wider rows (the rest untouched), the L1 penalty's terms
/// l1·|enc|, and its backward dz + l1·∂|enc|/∂enc with the subgradient 0 at 0; dz's columns
/// past Z (a conditional decoder's label) are ignored.
#[test]
fn code_forward_backward_with_l1() {
    let g = gpu();
    let l1 = 0.37f32;
    for (case, &(b, zd, zs)) in [(1usize, 5usize, 5usize), (7, 13, 16)].iter().enumerate() {
        let seed = 2000 + 10 * case as u64;
        let mut enc_h = rand_vec(b * zd, seed, -2.0, 2.0);
        enc_h[1] = 0.0;
        enc_h[b * zd - 2] = 0.0;
        assert!(enc_h.iter().any(|&v| v > 0.0) && enc_h.iter().any(|&v| v < 0.0));
        let enc = g.upload("enc", &[b, zd], &enc_h).unwrap();
        let z = g.upload("z", &[b, zs], &vec![SENTINEL; b * zs]).unwrap();
        let pen = g.upload("pen", &[b * zd], &vec![SENTINEL; b * zd]).unwrap();
        g.run(&[&ops::code_forward(g, "code", &enc, l1, &z, &pen).unwrap()])
            .unwrap();
        let zg = g.read(&z).unwrap();
        for r in 0..b {
            for c in 0..zs {
                let want = if c < zd { enc_h[r * zd + c] } else { SENTINEL };
                assert_eq!(zg[r * zs + c].to_bits(), want.to_bits(), "B={b} z[{r}, {c}]");
            }
        }
        let pen_want: Vec<f64> = enc_h.iter().map(|&v| l1 as f64 * (v as f64).abs()).collect();
        assert_close(&format!("code B={b} penalty"), &g.read(&pen).unwrap(), &pen_want, |i| {
            tol(pen_want[i])
        });

        let dz_h = rand_vec(b * zs, seed + 1, -1.0, 1.0);
        let dz = g.upload("dz", &[b, zs], &dz_h).unwrap();
        let denc = g.upload("denc", &[b, zd], &vec![SENTINEL; b * zd]).unwrap();
        g.run(&[&ops::code_backward(g, "code.bwd", &enc, l1, &dz, &denc).unwrap()])
            .unwrap();
        let d_abs = |v: f64| {
            if v > 0.0 {
                1.0
            } else if v < 0.0 {
                -1.0
            } else {
                0.0
            }
        };
        let want: Vec<f64> = (0..b * zd)
            .map(|i| dz_h[(i / zd) * zs + i % zd] as f64 + l1 as f64 * d_abs(enc_h[i] as f64))
            .collect();
        assert_close(&format!("code B={b} backward"), &g.read(&denc).unwrap(), &want, |i| {
            tol(dz_h[(i / zd) * zs + i % zd].abs() as f64 + l1 as f64)
        });
    }
}

// ---------------------------------------------------------------------------------------------
// The contractive penalty

/// The elementwise step from S, G1, G2 built from an encoder's W1 [D, H], W2 [H, Z] and
/// per-example act′ masks m_b: terms = c·S·G1·G2, A1 = 2c·S·G2, A2 = 2c·S·G1 elementwise, and
/// by the penalty's definition Σ terms = c·Σ_b ‖W2ᵀ·diag(m_b)·W1ᵀ‖²_F, W1·A1 = ∂P/∂W1 and
/// A2·W2 = ∂P/∂W2 (computed here from the per-example Jacobians).
#[test]
fn contractive_terms_and_gradient_factors() {
    let g = gpu();
    let c = 0.03f32;
    for (case, &(bn, dn, hn, zn)) in [(1usize, 3usize, 1usize, 2usize), (4, 6, 13, 5)].iter().enumerate() {
        let seed = 2100 + 10 * case as u64;
        let w1 = f64s(&rand_vec(dn * hn, seed, -1.0, 1.0)); // [D, H]
        let w2 = f64s(&rand_vec(hn * zn, seed + 1, -1.0, 1.0)); // [H, Z]
                                                                // LeakyReLU's act′: 1 or the slope 0.1.
        let m: Vec<f64> = rand_vec(bn * hn, seed + 2, 0.0, 1.0)
            .iter()
            .map(|&u| if u < 0.6 { 1.0 } else { 0.1 })
            .collect();
        let hh = hn * hn;
        let (mut s, mut g1, mut g2) = (vec![0.0f64; hh], vec![0.0f64; hh], vec![0.0f64; hh]);
        for h in 0..hn {
            for k in 0..hn {
                s[h * hn + k] = (0..bn).map(|b| m[b * hn + h] * m[b * hn + k]).sum();
                g1[h * hn + k] = (0..dn).map(|p| w1[p * hn + h] * w1[p * hn + k]).sum();
                g2[h * hn + k] = (0..zn).map(|z| w2[h * zn + z] * w2[k * zn + z]).sum();
            }
        }
        let as_f32 = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
        let (s32, g132, g232) = (as_f32(&s), as_f32(&g1), as_f32(&g2));
        let st = g.upload("S", &[hn, hn], &s32).unwrap();
        let g1t = g.upload("G1", &[hn, hn], &g132).unwrap();
        let g2t = g.upload("G2", &[hn, hn], &g232).unwrap();
        let terms = g.upload("terms", &[hh], &vec![SENTINEL; hh]).unwrap();
        let a1 = g.upload("A1", &[hn, hn], &vec![SENTINEL; hh]).unwrap();
        let a2 = g.upload("A2", &[hn, hn], &vec![SENTINEL; hh]).unwrap();
        let d = ops::contractive(g, "contractive", c, &st, &g1t, &g2t, &terms, &a1, &a2).unwrap();
        g.run(&[&d]).unwrap();
        let (tg, a1g, a2g) = (g.read(&terms).unwrap(), g.read(&a1).unwrap(), g.read(&a2).unwrap());

        // Elementwise, on the values the kernel was given.
        let (s, g1, g2) = (f64s(&s32), f64s(&g132), f64s(&g232));
        let c = c as f64;
        let t_want: Vec<f64> = (0..hh).map(|i| c * s[i] * g1[i] * g2[i]).collect();
        let a1_want: Vec<f64> = (0..hh).map(|i| 2.0 * c * s[i] * g2[i]).collect();
        let a2_want: Vec<f64> = (0..hh).map(|i| 2.0 * c * s[i] * g1[i]).collect();
        let what = format!("contractive H={hn}");
        assert_close(&format!("{what} terms"), &tg, &t_want, |i| tol(t_want[i].abs()));
        assert_close(&format!("{what} A1"), &a1g, &a1_want, |i| tol(a1_want[i].abs()));
        assert_close(&format!("{what} A2"), &a2g, &a2_want, |i| tol(a2_want[i].abs()));

        // The penalty and its gradients by definition, from the per-example Jacobians
        // J_b[z, p] = Σ_h W2[h, z]·m_b[h]·W1[p, h].
        let jac: Vec<Vec<f64>> = (0..bn)
            .map(|b| {
                (0..zn * dn)
                    .map(|zp| {
                        let (z, p) = (zp / dn, zp % dn);
                        (0..hn).map(|h| w2[h * zn + z] * m[b * hn + h] * w1[p * hn + h]).sum()
                    })
                    .collect()
            })
            .collect();
        let penalty: f64 = c * jac.iter().flatten().map(|v| v * v).sum::<f64>();
        let got: f64 = tg.iter().map(|&v| v as f64).sum();
        let mag: f64 = t_want.iter().map(|v| v.abs()).sum();
        assert!(
            (got - penalty).abs() <= tol(mag),
            "{what}: Σ terms {got} but c·Σ‖J‖² = {penalty}"
        );
        // ∂P/∂W1[p, h] = 2c·Σ_b Σ_z J_b[z, p]·W2[h, z]·m_b[h], against (W1·A1)[p, h].
        let (mut dw1, mut w1a1, mut w1a1_mag) = (vec![0.0; dn * hn], vec![0.0; dn * hn], vec![0.0; dn * hn]);
        for p in 0..dn {
            for h in 0..hn {
                dw1[p * hn + h] = 2.0
                    * c
                    * (0..bn)
                        .map(|b| {
                            (0..zn)
                                .map(|z| jac[b][z * dn + p] * w2[h * zn + z] * m[b * hn + h])
                                .sum::<f64>()
                        })
                        .sum::<f64>();
                for k in 0..hn {
                    w1a1[p * hn + h] += w1[p * hn + k] * a1g[k * hn + h] as f64;
                    w1a1_mag[p * hn + h] += (w1[p * hn + k] * a1g[k * hn + h] as f64).abs();
                }
            }
        }
        let w1a1: Vec<f32> = w1a1.iter().map(|&v| v as f32).collect();
        assert_close(&format!("{what} W1·A1 = ∂P/∂W1"), &w1a1, &dw1, |i| tol(w1a1_mag[i]));
        // ∂P/∂W2[h, z] = 2c·Σ_b Σ_p J_b[z, p]·m_b[h]·W1[p, h], against (A2·W2)[h, z].
        let (mut dw2, mut a2w2, mut a2w2_mag) = (vec![0.0; hn * zn], vec![0.0; hn * zn], vec![0.0; hn * zn]);
        for h in 0..hn {
            for z in 0..zn {
                dw2[h * zn + z] = 2.0
                    * c
                    * (0..bn)
                        .map(|b| {
                            (0..dn)
                                .map(|p| jac[b][z * dn + p] * m[b * hn + h] * w1[p * hn + h])
                                .sum::<f64>()
                        })
                        .sum::<f64>();
                for k in 0..hn {
                    a2w2[h * zn + z] += a2g[h * hn + k] as f64 * w2[k * zn + z];
                    a2w2_mag[h * zn + z] += (a2g[h * hn + k] as f64 * w2[k * zn + z]).abs();
                }
            }
        }
        let a2w2: Vec<f32> = a2w2.iter().map(|&v| v as f32).collect();
        assert_close(&format!("{what} A2·W2 = ∂P/∂W2"), &a2w2, &dw2, |i| tol(a2w2_mag[i]));
    }
}

// ---------------------------------------------------------------------------------------------
// VQ-VAE

/// A quantization case: B examples of G groups of d values, K codebook entries, z rows Z' wide.
struct Vq {
    b: usize,
    groups: usize,
    d: usize,
    codes: usize,
    zs: usize,
}

impl Vq {
    fn zd(&self) -> usize {
        self.groups * self.d
    }
}

const VQ_CASES: [Vq; 2] = [
    Vq {
        b: 1,
        groups: 2,
        d: 5,
        codes: 4,
        zs: 10,
    },
    Vq {
        b: 5,
        groups: 3,
        d: 3,
        codes: 7,
        zs: 11,
    },
];

/// Per (b, g): the entry nearest z_e[b, g] (squared distance) and the gap to the second nearest.
fn nearest(q: &Vq, enc: &[f32], book: &[f32]) -> Vec<(usize, f64)> {
    (0..q.b * q.groups)
        .map(|a| {
            let (b, g) = (a / q.groups, a % q.groups);
            let mut dist: Vec<(f64, usize)> = (0..q.codes)
                .map(|k| {
                    let d2 = (0..q.d)
                        .map(|c| (enc[b * q.zd() + g * q.d + c] as f64 - book[k * q.d + c] as f64).powi(2))
                        .sum();
                    (d2, k)
                })
                .collect();
            dist.sort_by(|x, y| x.0.total_cmp(&y.0));
            (
                dist[0].1,
                if q.codes > 1 {
                    dist[1].0 - dist[0].0
                } else {
                    f64::INFINITY
                },
            )
        })
        .collect()
}

/// Quantization: each group's nearest entry (no near-ties: the gap to the second is checked),
/// its index, z = e_k in the first Z columns (the rest untouched), and the terms of
/// s·(‖sg(z_e) − e‖² + β‖z_e − sg(e)‖²) per value.
#[test]
fn vq_forward_nearest_entries_and_terms() {
    let g = gpu();
    let (beta, scale) = (0.25f32, 3.5f32);
    for (case, q) in VQ_CASES.iter().enumerate() {
        let seed = 2200 + 10 * case as u64;
        let zd = q.zd();
        let book_h = rand_vec(q.codes * q.d, seed, -1.0, 1.0);
        let enc_h = rand_vec(q.b * zd, seed + 1, -1.2, 1.2);
        let near = nearest(q, &enc_h, &book_h);
        assert!(near.iter().all(|n| n.1 > 1e-3), "near-tie: {near:?}");
        let mut chosen: Vec<usize> = near.iter().map(|n| n.0).collect();
        chosen.sort();
        chosen.dedup();
        assert!(chosen.len() >= 2, "every group chose entry {chosen:?}");
        let enc = g.upload("enc", &[q.b, zd], &enc_h).unwrap();
        let book = g.upload("codebook", &[q.codes, q.d], &book_h).unwrap();
        let z = g.upload("z", &[q.b, q.zs], &vec![SENTINEL; q.b * q.zs]).unwrap();
        let pen = g.upload("pen", &[q.b * zd], &vec![SENTINEL; q.b * zd]).unwrap();
        let idx = g
            .upload("idx", &[q.b * q.groups], &vec![SENTINEL; q.b * q.groups])
            .unwrap();
        let d = ops::vq_forward(g, "vq", &enc, &book, q.groups, beta, scale, &z, &pen, &idx).unwrap();
        g.run(&[&d]).unwrap();
        let what = format!("vq B={} G={} d={} K={}", q.b, q.groups, q.d, q.codes);
        let idx_want: Vec<f32> = near.iter().map(|n| n.0 as f32).collect();
        assert_eq!(g.read(&idx).unwrap(), idx_want, "{what}: indices");
        let zg = g.read(&z).unwrap();
        let mut pen_want = vec![0.0f64; q.b * zd];
        for b in 0..q.b {
            for j in 0..q.zs {
                let want = if j < zd {
                    book_h[near[b * q.groups + j / q.d].0 * q.d + j % q.d]
                } else {
                    SENTINEL
                };
                assert_eq!(zg[b * q.zs + j].to_bits(), want.to_bits(), "{what}: z[{b}, {j}]");
            }
            for j in 0..zd {
                let e = book_h[near[b * q.groups + j / q.d].0 * q.d + j % q.d] as f64;
                let diff = enc_h[b * zd + j] as f64 - e;
                // The codebook term and the commitment term have one value at sg's.
                pen_want[b * zd + j] = scale as f64 * (diff * diff + beta as f64 * diff * diff);
            }
        }
        assert_close(&format!("{what} terms"), &g.read(&pen).unwrap(), &pen_want, |i| {
            tol(pen_want[i])
        });
    }
}

/// The backward from given assignments (not the nearest: the kernel must follow the indices):
/// dz_e = dz (straight through; dz's columns past Z ignored) + s·β·∂‖z_e − e‖²/∂z_e, and the
/// codebook's gradient s·Σ over the entry's assignments of ∂‖z_e − e‖²/∂e, zero for an entry
/// nobody chose. Without a codebook gradient the wrapper plans the input gradient alone.
#[test]
fn vq_backward_straight_through_and_codebook_gradient() {
    let g = gpu();
    let (beta, scale) = (0.25f32, 3.5f32);
    for (case, q) in VQ_CASES.iter().enumerate() {
        let seed = 2300 + 10 * case as u64;
        let zd = q.zd();
        let n = q.b * q.groups;
        let book_h = rand_vec(q.codes * q.d, seed, -1.0, 1.0);
        let enc_h = rand_vec(q.b * zd, seed + 1, -1.2, 1.2);
        let dz_h = rand_vec(q.b * q.zs, seed + 2, -1.0, 1.0);
        // Entry K−1 is never chosen, the others by two or three groups (B=1: both on entry 0).
        let idx_h: Vec<usize> = (0..n)
            .map(|a| if q.b == 1 { 0 } else { (a * 5 + 1) % (q.codes - 1) })
            .collect();
        let enc = g.upload("enc", &[q.b, zd], &enc_h).unwrap();
        let book = g.upload("codebook", &[q.codes, q.d], &book_h).unwrap();
        let idx_f: Vec<f32> = idx_h.iter().map(|&k| k as f32).collect();
        let idx = g.upload("idx", &[n], &idx_f).unwrap();
        let dz = g.upload("dz", &[q.b, q.zs], &dz_h).unwrap();
        let denc = g.upload("denc", &[q.b, zd], &vec![SENTINEL; q.b * zd]).unwrap();
        let dbook = g
            .upload("dcodebook", &[q.codes, q.d], &vec![SENTINEL; q.codes * q.d])
            .unwrap();
        let (s, beta64) = (scale as f64, beta as f64);

        let mut denc_want = vec![0.0f64; q.b * zd];
        let mut denc_mag = vec![0.0f64; q.b * zd];
        let mut book_want = vec![0.0f64; q.codes * q.d];
        let mut book_mag = vec![0.0f64; q.codes * q.d];
        for b in 0..q.b {
            for j in 0..zd {
                let a = b * q.groups + j / q.d;
                let e = book_h[idx_h[a] * q.d + j % q.d] as f64;
                let ze = enc_h[b * zd + j] as f64;
                let commit = s * beta64 * 2.0 * (ze - e);
                denc_want[b * zd + j] = dz_h[b * q.zs + j] as f64 + commit;
                denc_mag[b * zd + j] = dz_h[b * q.zs + j].abs() as f64 + commit.abs();
                let book_term = s * 2.0 * (e - ze);
                book_want[idx_h[a] * q.d + j % q.d] += book_term;
                book_mag[idx_h[a] * q.d + j % q.d] += book_term.abs();
            }
        }
        let what = format!("vq backward B={} G={} d={} K={}", q.b, q.groups, q.d, q.codes);
        let ds = ops::vq_backward(
            g,
            "vq.bwd",
            &enc,
            &book,
            q.groups,
            beta,
            scale,
            &idx,
            &dz,
            &denc,
            Some(&dbook),
        )
        .unwrap();
        assert_eq!(ds.len(), 2);
        g.run(&ds.iter().collect::<Vec<_>>()).unwrap();
        assert_close(&format!("{what} dz_e"), &g.read(&denc).unwrap(), &denc_want, |i| {
            tol(denc_mag[i])
        });
        let bg = g.read(&dbook).unwrap();
        assert_close(&format!("{what} codebook"), &bg, &book_want, |i| tol(book_mag[i]));
        assert!(bg[(q.codes - 1) * q.d..].iter().all(|&v| v == 0.0), "{what}: {bg:?}");

        let denc2 = g.upload("denc2", &[q.b, zd], &vec![SENTINEL; q.b * zd]).unwrap();
        let ds = ops::vq_backward(g, "vq.bwd", &enc, &book, q.groups, beta, scale, &idx, &dz, &denc2, None).unwrap();
        assert_eq!(ds.len(), 1);
        g.run(&[&ds[0]]).unwrap();
        assert_close(
            &format!("{what} dz_e alone"),
            &g.read(&denc2).unwrap(),
            &denc_want,
            |i| tol(denc_mag[i]),
        );
    }
}

/// Two steps of the codebook's moving averages from different assignments and codes:
/// N ← γN + (1 − γ)·n_k, M ← γM + (1 − γ)·Σ_{assigned} z_e, e = M/N; an entry with N = 0 that
/// nobody chooses keeps its value bit for bit, one with N > 0 that nobody chooses keeps M/N.
#[test]
fn vq_ema_moving_averages_over_two_steps() {
    let g = gpu();
    let decay = 0.8f32;
    let gam = decay as f64;
    for (case, q) in VQ_CASES.iter().enumerate() {
        let seed = 2400 + 10 * case as u64;
        let (zd, n, kd) = (q.zd(), q.b * q.groups, q.codes * q.d);
        let book_h = rand_vec(kd, seed, -1.0, 1.0);
        // Entry 0 starts with no count and is never chosen; the others start with some history.
        let mut n_h = rand_vec(kd, seed + 1, 0.5, 2.0);
        let mut m_h = rand_vec(kd, seed + 2, -1.0, 1.0);
        for c in 0..q.d {
            n_h[c] = 0.0;
            m_h[c] = 0.0;
        }
        let book = g.upload("codebook", &[q.codes, q.d], &book_h).unwrap();
        let ema_n = g.upload("ema_n", &[q.codes, q.d], &n_h).unwrap();
        let ema_m = g.upload("ema_m", &[q.codes, q.d], &m_h).unwrap();
        let enc = g.tensor("enc", &[q.b, zd]).unwrap();
        let idx = g.tensor("idx", &[n]).unwrap();
        let d = ops::vq_ema(g, "vq.ema", &enc, &book, q.groups, &idx, decay, &ema_n, &ema_m).unwrap();
        let (mut nn, mut mm, mut book_want) = (f64s(&n_h), f64s(&m_h), f64s(&book_h));
        let mut m_mag: Vec<f64> = mm.iter().map(|v| v.abs()).collect();
        for step in 0..2u64 {
            let enc_h = rand_vec(q.b * zd, seed + 3 + step, -1.2, 1.2);
            // Entries 1.. only; step 1 skips entry 1 as well (B=1: chooses only entry 2).
            let idx_h: Vec<usize> = (0..n)
                .map(|a| {
                    if q.b == 1 {
                        1 + step as usize + a % (2 - step as usize)
                    } else {
                        1 + step as usize + (a * 7 + step as usize) % (q.codes - 1 - step as usize)
                    }
                })
                .collect();
            g.write(&enc, &enc_h).unwrap();
            g.write(&idx, &idx_h.iter().map(|&k| k as f32).collect::<Vec<_>>())
                .unwrap();
            g.run(&[&d]).unwrap();
            for k in 0..q.codes {
                for c in 0..q.d {
                    let chose: Vec<f64> = (0..n)
                        .filter(|&a| idx_h[a] == k)
                        .map(|a| enc_h[(a / q.groups) * zd + (a % q.groups) * q.d + c] as f64)
                        .collect();
                    let i = k * q.d + c;
                    nn[i] = gam * nn[i] + (1.0 - gam) * chose.len() as f64;
                    mm[i] = gam * mm[i] + (1.0 - gam) * chose.iter().sum::<f64>();
                    m_mag[i] = gam * m_mag[i] + (1.0 - gam) * chose.iter().map(|v| v.abs()).sum::<f64>();
                    if nn[i] > 1e-20 {
                        book_want[i] = mm[i] / nn[i];
                    }
                }
            }
            let what = format!("vq_ema B={} G={} K={} step {step}", q.b, q.groups, q.codes);
            assert_close(&format!("{what} N"), &g.read(&ema_n).unwrap(), &nn, |i| tol(nn[i]));
            assert_close(&format!("{what} M"), &g.read(&ema_m).unwrap(), &mm, |i| tol(m_mag[i]));
            let bg = g.read(&book).unwrap();
            assert_close(&format!("{what} codebook"), &bg, &book_want, |i| {
                tol(book_want[i].abs() + if nn[i] > 0.0 { m_mag[i] / nn[i] } else { 0.0 })
            });
            assert_eq!(&bg[..q.d], &book_h[..q.d], "{what}: the unchosen entry moved");
        }
    }
}

/// Cases of the quantization by scores: vectors and codebooks in whole vec4s; B·G not a
/// multiple of 4 (the one-hot matmul's last k step).
const VQ_SCORED_CASES: [Vq; 2] = [
    Vq {
        b: 3,
        groups: 3,
        d: 8,
        codes: 12,
        zs: 26,
    },
    Vq {
        b: 2,
        groups: 5,
        d: 4,
        codes: 8,
        zs: 20,
    },
];

/// The scored quantization picks the nearest entries as the loop does (no near-ties), with
/// the same z and terms, and writes per vector 2s(e − z_e) (gradient) or [z_e | 1 | 0 0 0]
/// (moving averages).
#[test]
fn vq_scored_forward_matches_the_nearest_entries() {
    let g = gpu();
    let (beta, scale) = (0.25f32, 3.5f32);
    for (case, q) in VQ_SCORED_CASES.iter().enumerate() {
        for ema in [false, true] {
            let seed = 2500 + 10 * case as u64;
            let (zd, n) = (q.zd(), q.b * q.groups);
            let book_h = rand_vec(q.codes * q.d, seed, -1.0, 1.0);
            let enc_h = rand_vec(q.b * zd, seed + 1, -1.2, 1.2);
            let near = nearest(q, &enc_h, &book_h);
            assert!(near.iter().all(|x| x.1 > 1e-3), "near-tie: {near:?}");
            let enc = g.upload("enc", &[q.b, zd], &enc_h).unwrap();
            let book = g.upload("codebook", &[q.codes, q.d], &book_h).unwrap();
            let z = g.upload("z", &[q.b, q.zs], &vec![SENTINEL; q.b * q.zs]).unwrap();
            let pen = g.upload("pen", &[q.b * zd], &vec![SENTINEL; q.b * zd]).unwrap();
            let idx = g.upload("idx", &[n], &vec![SENTINEL; n]).unwrap();
            let width = q.d + if ema { 4 } else { 0 };
            let half = g.tensor("half", &[q.codes]).unwrap();
            let scores = g.tensor("scores", &[n, q.codes]).unwrap();
            let rows = g.upload("rows", &[n, width], &vec![SENTINEL; n * width]).unwrap();
            let scratch = ops::VqScratch {
                half_norms: &half,
                scores: &scores,
                rows: &rows,
                ema,
            };
            let ds =
                ops::vq_forward_scored(g, "vq", &enc, &book, q.groups, beta, scale, &z, &pen, &idx, &scratch).unwrap();
            g.run(&ds.iter().collect::<Vec<_>>()).unwrap();
            let what = format!("scored vq B={} G={} d={} K={} ema {ema}", q.b, q.groups, q.d, q.codes);
            let idx_want: Vec<f32> = near.iter().map(|x| x.0 as f32).collect();
            assert_eq!(g.read(&idx).unwrap(), idx_want, "{what}: indices");
            let (zg, rg) = (g.read(&z).unwrap(), g.read(&rows).unwrap());
            let mut pen_want = vec![0.0f64; q.b * zd];
            let mut rows_want = vec![0.0f64; n * width];
            for b in 0..q.b {
                for j in 0..q.zs {
                    let want = if j < zd {
                        book_h[near[b * q.groups + j / q.d].0 * q.d + j % q.d]
                    } else {
                        SENTINEL
                    };
                    assert_eq!(zg[b * q.zs + j].to_bits(), want.to_bits(), "{what}: z[{b}, {j}]");
                }
                for j in 0..zd {
                    let a = b * q.groups + j / q.d;
                    let e = book_h[near[a].0 * q.d + j % q.d] as f64;
                    let ze = enc_h[b * zd + j] as f64;
                    pen_want[b * zd + j] = scale as f64 * (1.0 + beta as f64) * (ze - e) * (ze - e);
                    rows_want[a * width + j % q.d] = if ema { ze } else { 2.0 * scale as f64 * (e - ze) };
                }
            }
            if ema {
                for a in 0..n {
                    rows_want[a * width + q.d] = 1.0;
                }
            }
            assert_close(&format!("{what} terms"), &g.read(&pen).unwrap(), &pen_want, |i| {
                tol(pen_want[i])
            });
            assert_close(&format!("{what} rows"), &rg, &rows_want, |i| tol(rows_want[i]));
        }
    }
}

/// The codebook's gradient and the moving averages by the one-hot matmul, from given
/// assignments (an entry nobody chooses: zero gradient, and with no count its value kept).
#[test]
fn vq_scored_codebook_gradient_and_moving_averages() {
    let g = gpu();
    let (scale, decay) = (3.5f64, 0.8f32);
    for (case, q) in VQ_SCORED_CASES.iter().enumerate() {
        let seed = 2600 + 10 * case as u64;
        let (zd, n) = (q.zd(), q.b * q.groups);
        let book_h = rand_vec(q.codes * q.d, seed, -1.0, 1.0);
        let enc_h = rand_vec(q.b * zd, seed + 1, -1.2, 1.2);
        // Entry K−1 is never chosen.
        let idx_h: Vec<usize> = (0..n).map(|a| (a * 5 + 1) % (q.codes - 1)).collect();
        let idx = g
            .upload("idx", &[n], &idx_h.iter().map(|&k| k as f32).collect::<Vec<_>>())
            .unwrap();
        let ze = |a: usize, c: usize| enc_h[(a / q.groups) * zd + (a % q.groups) * q.d + c] as f64;
        let e = |k: usize, c: usize| book_h[k * q.d + c] as f64;
        let what = format!("scored vq B={} G={} d={} K={}", q.b, q.groups, q.d, q.codes);

        // Gradient: rows 2s(e − z_e), summed by entry.
        let rows_h: Vec<f32> = (0..n * q.d)
            .map(|i| (2.0 * scale * (e(idx_h[i / q.d], i % q.d) - ze(i / q.d, i % q.d))) as f32)
            .collect();
        let rows = g.upload("rows", &[n, q.d], &rows_h).unwrap();
        let dbook = g
            .upload("dbook", &[q.codes, q.d], &vec![SENTINEL; q.codes * q.d])
            .unwrap();
        g.run(&[&ops::vq_codebook_grad_scored(g, "vq.codebook", &idx, &rows, &dbook).unwrap()])
            .unwrap();
        let mut want = vec![0.0f64; q.codes * q.d];
        let mut mag = vec![0.0f64; q.codes * q.d];
        for a in 0..n {
            for c in 0..q.d {
                want[idx_h[a] * q.d + c] += rows_h[a * q.d + c] as f64;
                mag[idx_h[a] * q.d + c] += (rows_h[a * q.d + c] as f64).abs();
            }
        }
        let bg = g.read(&dbook).unwrap();
        assert_close(&format!("{what} codebook gradient"), &bg, &want, |i| tol(mag[i]));
        assert!(bg[(q.codes - 1) * q.d..].iter().all(|&v| v == 0.0), "{what}: {bg:?}");

        // Moving averages: rows [z_e | 1 | 0 0 0]; entry K−1 starts with no count.
        let w = q.d + 4;
        let zx: Vec<f32> = (0..n * w)
            .map(|i| match i % w {
                c if c < q.d => ze(i / w, c) as f32,
                c if c == q.d => 1.0,
                _ => 0.0,
            })
            .collect();
        let rows = g.upload("rows_ema", &[n, w], &zx).unwrap();
        let mut n_h = rand_vec(q.codes * q.d, seed + 2, 0.5, 2.0);
        let m_h = rand_vec(q.codes * q.d, seed + 3, -1.0, 1.0);
        n_h[(q.codes - 1) * q.d..].iter_mut().for_each(|v| *v = 0.0);
        let book = g.upload("codebook", &[q.codes, q.d], &book_h).unwrap();
        let ema_n = g.upload("ema_n", &[q.codes, q.d], &n_h).unwrap();
        let ema_m = g.upload("ema_m", &[q.codes, q.d], &m_h).unwrap();
        let sums = g.tensor("sums", &[q.codes, w]).unwrap();
        let ds = ops::vq_ema_scored(g, "vq.ema", &idx, &rows, &sums, &book, decay, &ema_n, &ema_m).unwrap();
        g.run(&ds.iter().collect::<Vec<_>>()).unwrap();
        let gam = decay as f64;
        let (mut nn, mut mm, mut bw) = (f64s(&n_h), f64s(&m_h), f64s(&book_h));
        for k in 0..q.codes {
            for c in 0..q.d {
                let chose: Vec<f64> = (0..n).filter(|&a| idx_h[a] == k).map(|a| ze(a, c)).collect();
                let i = k * q.d + c;
                nn[i] = gam * nn[i] + (1.0 - gam) * chose.len() as f64;
                mm[i] = gam * mm[i] + (1.0 - gam) * chose.iter().sum::<f64>();
                if nn[i] > 1e-20 {
                    bw[i] = mm[i] / nn[i];
                }
            }
        }
        assert_close(&format!("{what} N"), &g.read(&ema_n).unwrap(), &nn, |i| tol(nn[i]));
        assert_close(&format!("{what} M"), &g.read(&ema_m).unwrap(), &mm, |_| tol(4.0));
        let bg = g.read(&book).unwrap();
        assert_close(&format!("{what} codebook"), &bg, &bw, |i| {
            tol(bw[i].abs() + 4.0 / nn[i].max(0.1))
        });
        assert_eq!(
            &bg[(q.codes - 1) * q.d..],
            &book_h[(q.codes - 1) * q.d..],
            "{what}: the unchosen entry moved"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Hierarchical VAE: z₁'s KL term against the conditional prior, and its sample backward

/// A z₁ case: B examples, Z values, L samples, rows of z Z' wide, ε's sample base, KL weight.
struct Hier {
    b: usize,
    zd: usize,
    l: usize,
    zs: usize,
    base: u32,
    kl_scale: f32,
}

fn hier_cases() -> [Hier; 2] {
    [
        Hier {
            b: 1,
            zd: 5,
            l: 3,
            zs: 5,
            base: 0,
            kl_scale: 1.0 / 3.0,
        },
        Hier {
            b: 3,
            zd: 7,
            l: 2,
            zs: 9,
            base: ops::top_sample_base(1),
            kl_scale: 0.5,
        },
    ]
}

/// q(z₁|x)'s rows [μ | log σ²] with one log-variance below the clamp and one above.
fn hier_enc(h: &Hier, seed: u64) -> Vec<f32> {
    let mut enc = Vec::with_capacity(h.b * 2 * h.zd);
    for b in 0..h.b {
        enc.extend(rand_vec(h.zd, seed + 2 * b as u64, -1.0, 1.0));
        enc.extend(rand_vec(h.zd, seed + 2 * b as u64 + 1, -1.5, 1.0));
    }
    enc[h.zd + 1] = ops::LOGVAR_MIN - 1.0;
    let last = (h.b - 1) * 2 * h.zd + 2 * h.zd - 1;
    enc[last] = ops::LOGVAR_MAX + 0.5;
    enc
}

/// hier_kl on its definition: per draw r = s·B + b of z₁, t = E_q[log q(z₁|x)] − log p(z₁|z₂)
/// with the entropy in closed form, its gradients weighted by β·kl_scale (dz₁ and [dμₚ | d lvₚ],
/// the latter 0 where lvₚ was clamped, tried on both sides), and with LOG_RATIO
/// log p(z₁|z₂) − log q(z₁|x) at z₁ = μ + σε (ε keyed under a non-zero sample base and the
/// evaluation stream in one case); z's columns past Z are ignored.
#[test]
fn hier_kl_terms_gradients_and_log_ratio() {
    let g = gpu();
    let step = StepBuffer::new(g).unwrap();
    let sp = StepParams {
        seed: 424_242,
        step: 77,
        stream: rng::STREAM_EVAL,
        kl_beta: 0.7,
        ..Default::default()
    };
    step.write(g, &sp);
    for (case, h) in hier_cases().iter().enumerate() {
        let seed = 2500 + 20 * case as u64;
        let (b, zd, l, zs) = (h.b, h.zd, h.l, h.zs);
        let rows = l * b;
        let enc_h = hier_enc(h, seed);
        let mut prior_h = Vec::with_capacity(rows * 2 * zd);
        for r in 0..rows {
            prior_h.extend(rand_vec(zd, seed + 10 + 2 * r as u64, -1.0, 1.0));
            prior_h.extend(rand_vec(zd, seed + 11 + 2 * r as u64, -1.5, 1.0));
        }
        prior_h[zd + 2] = ops::LOGVAR_MAX + 0.5;
        prior_h[(rows - 1) * 2 * zd + zd + zd / 2] = ops::LOGVAR_MIN - 0.5;
        // z₁ = μ + σε as the draw wrote it; the label columns past Z hold junk.
        let mut z_h = rand_vec(rows * zs, seed + 5, -50.0, 50.0);
        for r in 0..rows {
            let (s, e) = (r / b, r % b);
            for j in 0..zd {
                let mu = enc_h[e * 2 * zd + j] as f64;
                let sigma = (0.5 * clamp_lv(enc_h[e * 2 * zd + zd + j])).exp();
                z_h[r * zs + j] = (mu + sigma * eps(&sp, h.base, s, e, zd, j)) as f32;
            }
        }

        let wb = sp.kl_beta as f64 * h.kl_scale as f64;
        let n = rows * zd;
        let (mut kl_want, mut kl_mag) = (vec![0.0; n], vec![0.0; n]);
        let (mut dz_want, mut dprior_want) = (vec![0.0; n], vec![0.0; rows * 2 * zd]);
        let (mut lr_want, mut lr_mag) = (vec![0.0; n], vec![0.0; n]);
        for r in 0..rows {
            let (s, e) = (r / b, r % b);
            for j in 0..zd {
                let lv = clamp_lv(enc_h[e * 2 * zd + zd + j]);
                let z = z_h[r * zs + j] as f64;
                let mu_p = prior_h[r * 2 * zd + j] as f64;
                let raw_p = prior_h[r * 2 * zd + zd + j];
                let lv_p = clamp_lv(raw_p);
                let var_p = lv_p.exp();
                let entropy_neg = -0.5 * (ln_2pi() + 1.0 + lv); // E_q[log q(z₁|x)]
                let log_p = -0.5 * (ln_2pi() + lv_p + (z - mu_p).powi(2) / var_p);
                let i = r * zd + j;
                kl_want[i] = entropy_neg - log_p;
                kl_mag[i] = 0.5 * (1.0 + lv.abs() + lv_p.abs() + (z - mu_p).powi(2) / var_p);
                // ∂t/∂z₁, ∂t/∂μₚ, ∂t/∂lvₚ.
                dz_want[i] = wb * (z - mu_p) / var_p;
                dprior_want[r * 2 * zd + j] = -wb * (z - mu_p) / var_p;
                dprior_want[r * 2 * zd + zd + j] = if inside_clamp(raw_p) {
                    wb * 0.5 * (1.0 - (z - mu_p).powi(2) / var_p)
                } else {
                    0.0
                };
                let ep = eps(&sp, h.base, s, e, zd, j);
                let log_q = -0.5 * (ln_2pi() + lv + ep * ep);
                lr_want[i] = log_p - log_q;
                lr_mag[i] = kl_mag[i] + 0.5 * ep * ep;
            }
        }

        let enc = g.upload("enc", &[b, 2 * zd], &enc_h).unwrap();
        let z = g.upload("z", &[rows, zs], &z_h).unwrap();
        let prior = g.upload("prior", &[rows, 2 * zd], &prior_h).unwrap();
        for with_ratio in [false, true] {
            let kl = g.upload("kl", &[n], &vec![SENTINEL; n]).unwrap();
            let dz_kl = g.upload("dz_kl", &[n], &vec![SENTINEL; n]).unwrap();
            let dprior = g
                .upload("dprior", &[rows, 2 * zd], &vec![SENTINEL; rows * 2 * zd])
                .unwrap();
            let lr = g.upload("log_ratio", &[n], &vec![SENTINEL; n]).unwrap();
            let d = ops::hier_kl(
                g,
                "hier_kl",
                &step,
                &enc,
                l,
                &z,
                &prior,
                &kl,
                &dprior,
                &dz_kl,
                with_ratio.then_some(&lr),
                h.base,
                h.kl_scale,
                None,
            )
            .unwrap();
            g.run(&[&d]).unwrap();
            let what = format!("hier_kl B={b} Z={zd} L={l} base={} log_ratio={with_ratio}", h.base);
            assert_close(&format!("{what} terms"), &g.read(&kl).unwrap(), &kl_want, |i| {
                tol(kl_mag[i])
            });
            assert_close(&format!("{what} dz_kl"), &g.read(&dz_kl).unwrap(), &dz_want, |i| {
                tol(dz_want[i].abs())
            });
            let dpg = g.read(&dprior).unwrap();
            assert_close(&format!("{what} dprior"), &dpg, &dprior_want, |i| {
                tol(dprior_want[i].abs() + wb * kl_mag[(i / (2 * zd)) * zd + i % zd])
            });
            assert_eq!(dpg[zd + 2], 0.0, "{what}: the clamped lvₚ got a gradient");
            let lrg = g.read(&lr).unwrap();
            if with_ratio {
                assert_close(&format!("{what} log ratio"), &lrg, &lr_want, |i| tol(lr_mag[i]));
            } else {
                assert!(lrg.iter().all(|&v| v == SENTINEL), "{what}: log_ratio written");
            }
        }
    }
}

/// sample_backward on its definition: z₁ = μ + σε for each draw, so dμ = Σ_s g and
/// dlv = Σ_s g·½σε with g = dz + dz_up + dz_kl (dz's and dz_up's columns past Z ignored), plus
/// β·entropy_scale·∂(−½(1 + lv))/∂lv from the entropy; 0 on lv where the clamp was active.
#[test]
fn sample_backward_sums_the_three_gradients() {
    let g = gpu();
    let step = StepBuffer::new(g).unwrap();
    let sp = StepParams {
        seed: 31_337,
        step: 5,
        stream: rng::STREAM_TRAIN,
        kl_beta: 0.6,
        ..Default::default()
    };
    step.write(g, &sp);
    for (case, h) in hier_cases().iter().enumerate() {
        let seed = 2600 + 20 * case as u64;
        let (b, zd, l, zs) = (h.b, h.zd, h.l, h.zs);
        let rows = l * b;
        // z₁'s entropy weight is 1; a layer above's would be 1/L: both tried.
        let entropy_scale = if case == 0 { 1.0 } else { h.kl_scale };
        let enc_h = hier_enc(h, seed);
        let dz_h = rand_vec(rows * zs, seed + 1, -1.0, 1.0);
        let up_h = rand_vec(rows * zs, seed + 2, -1.0, 1.0);
        let kl_h = rand_vec(rows * zd, seed + 3, -1.0, 1.0);
        let (mut want, mut mag) = (vec![0.0f64; b * 2 * zd], vec![0.0f64; b * 2 * zd]);
        let wb = sp.kl_beta as f64 * entropy_scale as f64;
        for e in 0..b {
            for j in 0..zd {
                let raw = enc_h[e * 2 * zd + zd + j];
                let sigma = (0.5 * clamp_lv(raw)).exp();
                let (mut dmu, mut dlv, mut m_mu, mut m_lv) = (0.0, 0.0, 0.0, 0.0);
                for s in 0..l {
                    let r = s * b + e;
                    let parts = [dz_h[r * zs + j], up_h[r * zs + j], kl_h[r * zd + j]].map(|v| v as f64);
                    let gsum: f64 = parts.iter().sum();
                    let gabs: f64 = parts.iter().map(|v| v.abs()).sum();
                    let dz_dlv = 0.5 * sigma * eps(&sp, h.base, s, e, zd, j); // ∂z₁/∂lv
                    dmu += gsum; // ∂z₁/∂μ = 1
                    dlv += gsum * dz_dlv;
                    m_mu += gabs;
                    m_lv += gabs * dz_dlv.abs();
                }
                want[e * 2 * zd + j] = dmu;
                mag[e * 2 * zd + j] = m_mu;
                // The entropy term of t: −½(1 + lv), weighted β·entropy_scale.
                want[e * 2 * zd + zd + j] = if inside_clamp(raw) { dlv + wb * -0.5 } else { 0.0 };
                mag[e * 2 * zd + zd + j] = m_lv + 0.5 * wb;
            }
        }
        let enc = g.upload("enc", &[b, 2 * zd], &enc_h).unwrap();
        let dz = g.upload("dz", &[rows, zs], &dz_h).unwrap();
        let dz_up = g.upload("dz_up", &[rows, zs], &up_h).unwrap();
        let dz_kl = g.upload("dz_kl", &[rows * zd], &kl_h).unwrap();
        let denc = g.upload("denc", &[b, 2 * zd], &vec![SENTINEL; b * 2 * zd]).unwrap();
        let d = ops::sample_backward(
            g,
            "z1.bwd",
            &step,
            &enc,
            l,
            &dz,
            &dz_up,
            &dz_kl,
            &denc,
            h.base,
            entropy_scale,
            None,
        )
        .unwrap();
        g.run(&[&d]).unwrap();
        let got = g.read(&denc).unwrap();
        let what = format!("sample_backward B={b} Z={zd} L={l} base={}", h.base);
        assert_close(&what, &got, &want, |i| tol(mag[i]));
        assert_eq!(got[zd + 1], 0.0, "{what}: the clamped lv got a gradient");
    }
}

// ---------------------------------------------------------------------------------------------
// Masking noise

/// corrupt: pixel d of row b is zeroed where the draw keyed (seed, step, stream 4·2¹⁶, b·D + d)
/// falls below the probability (whatever the step's own stream), kept otherwise; the columns
/// past D (a label) are copied; probability 0 copies everything. Draws within 1e-6 of the
/// probability would be ambiguous between f32 and f64 and are ruled out.
#[test]
fn corrupt_masks_pixels_by_keyed_draws() {
    let g = gpu();
    let step = StepBuffer::new(g).unwrap();
    for (case, &(b, dim, width, drop)) in [(1usize, 8usize, 8usize, 0.3f32), (5, 12, 20, 0.45), (3, 4, 8, 0.0)]
        .iter()
        .enumerate()
    {
        let sp = StepParams {
            seed: 900 + case as u32,
            step: 13 + case as u32,
            stream: rng::STREAM_EVAL,
            ..Default::default()
        };
        step.write(g, &sp);
        let clean_h = rand_vec(b * width, 2700 + case as u64, 0.1, 1.0);
        let clean = g.upload("clean", &[b, width], &clean_h).unwrap();
        let noisy = g.upload("noisy", &[b, width], &vec![SENTINEL; b * width]).unwrap();
        g.run(&[&ops::corrupt(g, "corrupt", &step, &clean, dim, drop, &noisy).unwrap()])
            .unwrap();
        let got = g.read(&noisy).unwrap();
        let mut dropped = 0;
        for r in 0..b {
            for c in 0..width {
                let v = clean_h[r * width + c];
                let want = if c < dim {
                    let u = rng::uniform(
                        sp.seed,
                        sp.step,
                        rng::stream_word(rng::STREAM_CORRUPT, 0),
                        (r * dim + c) as u32,
                    );
                    assert!((u - drop as f64).abs() > 1e-6, "draw {u} too close to {drop}");
                    if u < drop as f64 {
                        dropped += 1;
                        0.0
                    } else {
                        v
                    }
                } else {
                    v
                };
                assert_eq!(got[r * width + c], want, "B={b} D={dim} p={drop}: [{r}, {c}]");
            }
        }
        if drop > 0.0 {
            assert!(dropped > 0 && dropped < b * dim, "{dropped} of {} dropped", b * dim);
        }
    }
}
