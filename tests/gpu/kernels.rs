//! Every kernel against an f64 CPU reference, over shapes that include 1, odd sizes and
//! non-multiples of the tile sizes, for every matmul strategy the adapter can run.

use vae_wgpu::internals::ops::{
    self, Activation, Epilogue, Likelihood, MatmulStrategy, Segment, StepBuffer, StepParams,
};
use vae_wgpu::{rng, Gpu};

use crate::common::{assert_close, gpu, rand_vec};

fn act_f64(act: Activation, x: f64, slope: f64) -> f64 {
    match act {
        Activation::Identity => x,
        Activation::Relu => x.max(0.0),
        Activation::LeakyRelu => {
            if x > 0.0 {
                x
            } else {
                slope * x
            }
        }
        Activation::Tanh => x.tanh(),
        Activation::Sigmoid => 1.0 / (1.0 + (-x).exp()),
    }
}

fn dact_f64(act: Activation, y: f64, slope: f64) -> f64 {
    match act {
        Activation::Identity => 1.0,
        Activation::Relu => {
            if y > 0.0 {
                1.0
            } else {
                0.0
            }
        }
        Activation::LeakyRelu => {
            if y > 0.0 {
                1.0
            } else {
                slope
            }
        }
        Activation::Tanh => 1.0 - y * y,
        Activation::Sigmoid => y * (1.0 - y),
    }
}

struct MatCase {
    m: usize,
    n: usize,
    k: usize,
    ta: bool,
    tb: bool,
    bias: bool,
    act: Activation,
    dact: Option<Activation>,
    accumulate: bool,
    colsum: bool,
    /// A and B read through texture mirrors (subgroup strategy). A mirrored operand is a
    /// prefix view of a larger mirrored tensor, as a partial batch's rows are.
    mirror_a: bool,
    mirror_b: bool,
}

impl MatCase {
    fn plain(m: usize, n: usize, k: usize, ta: bool, tb: bool) -> Self {
        MatCase {
            m,
            n,
            k,
            ta,
            tb,
            bias: false,
            act: Activation::Identity,
            dact: None,
            accumulate: false,
            colsum: false,
            mirror_a: false,
            mirror_b: false,
        }
    }
}

/// Runs one matmul case on the GPU and compares with f64. Returns false if the strategy does
/// not take the shape (the op must then say so with a Shape error).
fn run_matmul(g: &Gpu, st: MatmulStrategy, c: &MatCase, seed: u64) -> bool {
    let (m, n, k) = (c.m, c.n, c.k);
    let slope = 0.1f32;
    let a_host = rand_vec(m * k, seed, -1.0, 1.0);
    let b_host = rand_vec(k * n, seed + 1, -1.0, 1.0);
    let bias_host = rand_vec(n, seed + 2, -1.0, 1.0);
    // The activation output the backward multiplies by act'(y): in the activation's range.
    let aux_host: Vec<f32> = rand_vec(m * n, seed + 3, -1.0, 1.0)
        .iter()
        .map(|&v| act_f64(c.dact.unwrap_or(Activation::Identity), v as f64 * 3.0, slope as f64) as f32)
        .collect();
    let c0_host = rand_vec(m * n, seed + 4, -1.0, 1.0);
    let cs0_host = rand_vec(n, seed + 5, -1.0, 1.0);
    let a_shape = if c.ta { [k, m] } else { [m, k] };
    let b_shape = if c.tb { [n, k] } else { [k, n] };
    // A mirrored operand lives in a tensor with 3 more rows of junk, and is its prefix view.
    let operand = |name: &str, shape: [usize; 2], host: &[f32], mirror: bool| {
        if !mirror {
            return Some(g.upload(name, &shape, host).unwrap());
        }
        let mut padded = host.to_vec();
        padded.extend(rand_vec(3 * shape[1], seed + 9, -9.0, 9.0));
        let big = g.upload(name, &[shape[0] + 3, shape[1]], &padded).unwrap();
        let big = ops::mirrored(g, name, big, true).ok()?;
        g.run(&[&ops::refresh_mirror(name, &big).unwrap()]).unwrap();
        Some(big.reshape_prefix(&shape))
    };
    // Mirrors need whole texels; the strategy would refuse such shapes anyway.
    let (Some(a), Some(b)) = (
        operand("a", a_shape, &a_host, c.mirror_a),
        operand("b", b_shape, &b_host, c.mirror_b),
    ) else {
        return false;
    };
    let bias = g.upload("bias", &[n], &bias_host).unwrap();
    let aux = g.upload("aux", &[m, n], &aux_host).unwrap();
    let out = g.upload("c", &[m, n], &c0_host).unwrap();
    let cs = g.upload("colsum", &[n], &cs0_host).unwrap();
    let epi = Epilogue {
        bias: c.bias.then_some(&bias),
        act: c.act,
        dact: c.dact.map(|d| (d, &aux)),
        accumulate: c.accumulate,
        colsum: c.colsum.then_some(&cs),
        leaky_slope: slope,
    };
    let planned = ops::matmul(g, "test", &a, c.ta, &b, c.tb, &out, &epi, Some(st));
    if let Ok(d) = &planned {
        match (c.mirror_a, c.mirror_b) {
            (false, false) => assert!(!d.label.contains("texture"), "{}: no mirror was given", d.label),
            (true, false) => assert!(
                d.label.contains("A texture"),
                "{}: the A mirror alone should be used",
                d.label
            ),
            (false, true) => assert!(
                d.label.contains("B texture") && !d.label.contains("A and"),
                "{}: the B mirror alone should be used",
                d.label
            ),
            (true, true) => assert!(
                d.label.contains("A and B textures"),
                "{}: the mirrors were not used",
                d.label
            ),
        }
    }
    let d = match planned {
        Ok(d) => d,
        Err(vae_wgpu::VaeError::Shape(_)) if st != MatmulStrategy::Naive => return false,
        Err(e) => panic!("{st:?} {m}×{n}×{k}: {e}"),
    };
    g.run(&[&d]).unwrap();
    let got = g.read(&out).unwrap();
    let a_at = |i: usize, kk: usize| if c.ta { a_host[kk * m + i] } else { a_host[i * k + kk] } as f64;
    let b_at = |kk: usize, j: usize| if c.tb { b_host[j * k + kk] } else { b_host[kk * n + j] } as f64;
    let mut want = vec![0.0f64; m * n];
    let mut scale = vec![0.0f64; m * n];
    for i in 0..m {
        for j in 0..n {
            let (mut s, mut sa) = (0.0, 0.0);
            for kk in 0..k {
                s += a_at(i, kk) * b_at(kk, j);
                sa += (a_at(i, kk) * b_at(kk, j)).abs();
            }
            if c.bias {
                s += bias_host[j] as f64;
                sa += (bias_host[j] as f64).abs();
            }
            s = act_f64(c.act, s, slope as f64);
            if let Some(da) = c.dact {
                s *= dact_f64(da, aux_host[i * n + j] as f64, slope as f64);
            }
            if c.accumulate {
                s += c0_host[i * n + j] as f64;
                sa += 1.0;
            }
            want[i * n + j] = s;
            scale[i * n + j] = sa;
        }
    }
    // f32 accumulation over K terms: a relative error of 1e-5 of Σ|a·b| bounds the rounding
    // with room (K ≤ 1024 here); 1e-6 absolute covers tiny sums.
    let what = format!(
        "{st:?} {m}×{n}×{k} ta={} tb={} act={:?} dact={:?} mirrors A {} B {}",
        c.ta, c.tb, c.act, c.dact, c.mirror_a, c.mirror_b
    );
    assert_close(&what, &got, &want, |i| 1e-5 * scale[i] + 1e-6);
    if c.colsum {
        let got = g.read(&cs).unwrap();
        let want: Vec<f64> = (0..n)
            .map(|j| (0..k).map(|kk| b_at(kk, j)).sum::<f64>() + if c.accumulate { cs0_host[j] as f64 } else { 0.0 })
            .collect();
        assert_close(&format!("{what} colsum"), &got, &want, |_| 1e-5 * (k as f64 + 1.0));
    }
    true
}

pub(crate) fn strategies(g: &Gpu) -> Vec<MatmulStrategy> {
    let mut v = vec![MatmulStrategy::Naive, MatmulStrategy::Tiled];
    if MatmulStrategy::Subgroup.check_supported(g).is_ok() {
        v.push(MatmulStrategy::Subgroup);
    } else {
        eprintln!("subgroup strategy unsupported on this adapter; testing naive and tiled");
    }
    v
}

const SHAPES: [(usize, usize, usize); 10] = [
    (1, 1, 1),
    (7, 13, 5),
    (1, 4, 4),
    (36, 8, 12),
    // K % 4 != 0 with Aᵀ: the subgroup strategy's last k step must zero the rows past K.
    (40, 12, 30),
    (33, 68, 20),
    (129, 784, 400),
    (128, 20, 400),
    (128, 400, 784),
    (784, 400, 128),
];

#[test]
fn matmul_all_strategies_transposes_and_shapes() {
    let g = gpu();
    for st in strategies(g) {
        let mut ran = 0;
        for (i, &(m, n, k)) in SHAPES.iter().enumerate() {
            for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                if run_matmul(g, st, &MatCase::plain(m, n, k, ta, tb), 10 * i as u64) {
                    ran += 1;
                }
            }
        }
        // Naive takes every shape; the vec4 strategies exactly the aligned ones.
        let expected = SHAPES
            .iter()
            .flat_map(|&(m, n, k)| {
                [(false, false), (true, false), (false, true), (true, true)]
                    .map(|(ta, tb)| st == MatmulStrategy::Naive || MatmulStrategy::vec4_shape_ok(m, n, k, ta, tb))
            })
            .filter(|&ok| ok)
            .count();
        assert_eq!(ran, expected, "{st:?} ran {ran} of the {expected} cases it takes");
    }
}

/// The subgroup strategy with A, B or both read from texture mirrors: every shape and
/// transpose it takes, and the forward, input-gradient and weight-gradient epilogues.
#[test]
fn matmul_subgroup_with_texture_mirrors() {
    let g = gpu();
    if MatmulStrategy::Subgroup.check_supported(g).is_err() {
        eprintln!("subgroup strategy unsupported on this adapter; no texture-mirror cases");
        return;
    }
    let st = MatmulStrategy::Subgroup;
    let both = [(true, false), (false, true), (true, true)];
    let mut ran = 0;
    for (i, &(m, n, k)) in SHAPES.iter().enumerate() {
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            for (j, &(mirror_a, mirror_b)) in both.iter().enumerate() {
                // A alone and B alone on the small shapes; both on every shape.
                if m * n * k > 100_000 && !(mirror_a && mirror_b) {
                    continue;
                }
                let case = MatCase {
                    mirror_a,
                    mirror_b,
                    ..MatCase::plain(m, n, k, ta, tb)
                };
                if run_matmul(g, st, &case, 500 + 10 * i as u64 + j as u64) {
                    ran += 1;
                }
            }
        }
    }
    assert!(ran >= 30, "ran only {ran} mirror cases");
    for (i, act) in [Activation::Relu, Activation::Tanh].into_iter().enumerate() {
        let fwd = MatCase {
            bias: true,
            act,
            mirror_a: true,
            mirror_b: true,
            ..MatCase::plain(37, 20, 24, false, false)
        };
        assert!(run_matmul(g, st, &fwd, 600 + i as u64));
        let bwd = MatCase {
            dact: Some(act),
            mirror_a: true,
            mirror_b: true,
            ..MatCase::plain(37, 24, 20, false, true)
        };
        assert!(run_matmul(g, st, &bwd, 700 + i as u64));
        let wgrad = MatCase {
            colsum: true,
            accumulate: i == 1,
            mirror_a: true,
            mirror_b: true,
            ..MatCase::plain(24, 20, 36, true, false)
        };
        assert!(run_matmul(g, st, &wgrad, 800 + i as u64));
    }
}

/// A mirror is checked against its tensor: wrong size or a tensor that is not whole texels.
#[test]
fn texture_mirror_rejects_mismatches() {
    let g = gpu();
    let t = g.tensor("t", &[6, 5]).unwrap();
    assert!(matches!(
        ops::mirror_texture(g, "odd", &t),
        Err(vae_wgpu::VaeError::Shape(_))
    ));
    if MatmulStrategy::Subgroup.check_supported(g).is_err() {
        return;
    }
    // A small mirror attached to a larger tensor is refused when planned.
    let small = g.tensor("small", &[4, 4]).unwrap();
    let tex = ops::mirror_texture(g, "small", &small).unwrap();
    let big = g.tensor("big", &[4 * 300, 4]).unwrap().with_mirror(Some(tex));
    let b = g.tensor("b", &[4, 4]).unwrap();
    let c = g.tensor("c", &[1200, 4]).unwrap();
    let e = ops::matmul(
        g,
        "m",
        &big,
        false,
        &b,
        false,
        &c,
        &Epilogue::default(),
        Some(MatmulStrategy::Subgroup),
    );
    assert!(
        matches!(e, Err(vae_wgpu::VaeError::Shape(ref m)) if m.contains("mirror")),
        "{:?}",
        e.err()
    );
}

#[test]
fn matmul_epilogues_every_strategy() {
    let g = gpu();
    let acts = [
        Activation::Identity,
        Activation::Relu,
        Activation::LeakyRelu,
        Activation::Tanh,
        Activation::Sigmoid,
    ];
    for st in strategies(g) {
        for (i, &act) in acts.iter().enumerate() {
            // Forward: bias + activation, odd row count, N not a multiple of the 64-wide tile.
            let fwd = MatCase {
                bias: true,
                act,
                ..MatCase::plain(37, 20, 24, false, false)
            };
            assert!(run_matmul(g, st, &fwd, 100 + i as u64));
            // Backward into activations: dY·Wᵀ ⊙ act'(y).
            let bwd = MatCase {
                dact: Some(act),
                ..MatCase::plain(37, 24, 20, false, true)
            };
            assert!(run_matmul(g, st, &bwd, 200 + i as u64));
        }
        // Weight gradient with the fused bias gradient, overwrite and accumulate.
        for accumulate in [false, true] {
            let wg = MatCase {
                colsum: true,
                accumulate,
                ..MatCase::plain(24, 20, 37, true, false)
            };
            assert!(run_matmul(g, st, &wg, 300 + accumulate as u64));
        }
    }
}

#[test]
fn matmul_rejects_bad_shapes() {
    let g = gpu();
    let a = g.tensor("a", &[4, 8]).unwrap();
    let b = g.tensor("b", &[7, 4]).unwrap();
    let c = g.tensor("c", &[4, 4]).unwrap();
    let err = ops::matmul(g, "bad", &a, false, &b, false, &c, &Epilogue::default(), None)
        .err()
        .unwrap();
    assert!(matches!(err, vae_wgpu::VaeError::Shape(_)), "{err}");
    assert!(err.to_string().contains("op(A) is 4×8 but op(B) is 7×4"), "{err}");
    let b = g.tensor("b", &[8, 4]).unwrap();
    let wrong_c = g.tensor("c", &[4, 5]).unwrap();
    let err = ops::matmul(g, "bad", &a, false, &b, false, &wrong_c, &Epilogue::default(), None)
        .err()
        .unwrap();
    assert!(err.to_string().contains("C must be [4, 4]"), "{err}");
    let bias = g.tensor("bias", &[3]).unwrap();
    let epi = Epilogue {
        bias: Some(&bias),
        ..Default::default()
    };
    let err = ops::matmul(g, "bad", &a, false, &b, false, &c, &epi, None)
        .err()
        .unwrap();
    assert!(err.to_string().contains("bias must have 4 elements"), "{err}");
    // A vec4 strategy on a shape it cannot take is a Shape error naming the fallback.
    let a = g.tensor("a", &[3, 5]).unwrap();
    let b = g.tensor("b", &[5, 4]).unwrap();
    let c = g.tensor("c", &[3, 4]).unwrap();
    let err = ops::matmul(
        g,
        "odd",
        &a,
        false,
        &b,
        false,
        &c,
        &Epilogue::default(),
        Some(MatmulStrategy::Tiled),
    )
    .err()
    .unwrap();
    assert!(err.to_string().contains("naive"), "{err}");
}

/// Past 65535 workgroups a 1-D launch is folded into a 2-D grid and the kernel unfolds it
/// (`gid.x + gid.y·65535·64`); every element, those in the second row of workgroups
/// included, must be computed, and the padding invocations must write nothing past the tensor.
/// (Checked to fail with the row stride 65536·64 or without the row term.)
#[test]
fn elementwise_grid_folds_past_65535_workgroups() {
    let g = gpu();
    // 65535·64 vec4s plus 1000: 16 more workgroups, in the grid's second row.
    let len4 = 65535 * 64 + 1000;
    let n = 4 * len4;
    let xh: Vec<f32> = (0..n).map(|i| ((i * 7919) % 2001) as f32 - 1000.0).collect();
    let x = g.upload("x", &[n], &xh).unwrap();
    // One vec4 more than the launch covers, filled beforehand: it must stay untouched.
    let y_all = g.upload("y", &[n + 4], &vec![7.0f32; n + 4]).unwrap();
    let y = y_all.reshape_prefix(&[n]);
    let slope = 0.25f32;
    let d = ops::activation_forward(g, "act", Activation::LeakyRelu, slope, &x, &y).unwrap();
    assert_eq!(d.workgroups, [65535, 2, 1], "the grid is folded");
    g.run(&[&d]).unwrap();
    let yh = g.read(&y_all).unwrap();
    let wrong = (0..n)
        .filter(|&i| yh[i] != if xh[i] > 0.0 { xh[i] } else { xh[i] * slope })
        .collect::<Vec<_>>();
    assert!(
        wrong.is_empty(),
        "{} wrong elements, first at {} of {n} (x {}, y {})",
        wrong.len(),
        wrong[0],
        xh[wrong[0]],
        yh[wrong[0]]
    );
    assert_eq!(&yh[n..], &[7.0; 4], "the launch wrote past its tensor");
}

#[test]
fn activation_forward_backward() {
    let g = gpu();
    let slope = 0.2f32;
    for (i, act) in [
        Activation::Identity,
        Activation::Relu,
        Activation::LeakyRelu,
        Activation::Tanh,
        Activation::Sigmoid,
    ]
    .into_iter()
    .enumerate()
    {
        let n = 4 * 37;
        // Include large magnitudes: tanh and sigmoid must not overflow.
        let mut xh = rand_vec(n, 500 + i as u64, -6.0, 6.0);
        xh[0] = 95.0;
        xh[1] = -95.0;
        let x = g.upload("x", &[n], &xh).unwrap();
        let y = g.tensor("y", &[n]).unwrap();
        let d = ops::activation_forward(g, "act", act, slope, &x, &y).unwrap();
        g.run(&[&d]).unwrap();
        let yh = g.read(&y).unwrap();
        let want: Vec<f64> = xh.iter().map(|&v| act_f64(act, v as f64, slope as f64)).collect();
        assert_close(&format!("{act:?} forward"), &yh, &want, |i| {
            2e-6 * (1.0 + want[i].abs())
        });
        let dyh = rand_vec(n, 600 + i as u64, -1.0, 1.0);
        let dy = g.upload("dy", &[n], &dyh).unwrap();
        let dx = g.tensor("dx", &[n]).unwrap();
        let d = ops::activation_backward(g, "act_bwd", act, slope, &y, &dy, &dx).unwrap();
        g.run(&[&d]).unwrap();
        let want: Vec<f64> = (0..n)
            .map(|j| dyh[j] as f64 * dact_f64(act, yh[j] as f64, slope as f64))
            .collect();
        assert_close(&format!("{act:?} backward"), &g.read(&dx).unwrap(), &want, |_| 1e-6);
    }
}

#[test]
fn colsum_and_segment_sums() {
    let g = gpu();
    for &(m, n) in &[(1, 4), (129, 20), (128, 784)] {
        let xh = rand_vec(m * n, 700 + m as u64, -1.0, 1.0);
        let x = g.upload("x", &[m, n], &xh).unwrap();
        let init = rand_vec(n, 701, -1.0, 1.0);
        for accumulate in [false, true] {
            let out = g.upload("out", &[n], &init).unwrap();
            let d = ops::colsum(g, "colsum", &x, &out, accumulate).unwrap();
            g.run(&[&d]).unwrap();
            let want: Vec<f64> = (0..n)
                .map(|j| {
                    (0..m).map(|i| xh[i * n + j] as f64).sum::<f64>() + if accumulate { init[j] as f64 } else { 0.0 }
                })
                .collect();
            // m f32 additions of values <= 1.
            assert_close(&format!("colsum {m}×{n}"), &g.read(&out).unwrap(), &want, |_| {
                1e-6 * (m as f64 + 1.0)
            });
        }
    }
    // Segment sums: each step writes its own row of the log; the host adds rows in f64.
    let len = 1000;
    let xh = rand_vec(len, 800, 0.0, 100.0);
    let x = g.upload("x", &[len], &xh).unwrap();
    let rows = 3;
    let log = g.upload("log", &[rows, 2], &[0.0; 6]).unwrap();
    let step = StepBuffer::new(g).unwrap();
    let segs = [
        Segment {
            offset: 0,
            len: 999,
            slot: 0,
            scale: 1.0,
        },
        Segment {
            offset: 999,
            len: 1,
            slot: 1,
            scale: 0.5,
        },
    ];
    let d = ops::sum_segments(g, "sums", &step, &x, &log, &segs).unwrap();
    for row in 0..rows {
        step.write(
            g,
            &StepParams {
                log_row: row as u32,
                ..Default::default()
            },
        );
        g.run(&[&d]).unwrap();
    }
    let rows_got = g.read(&log).unwrap();
    let s0: f64 = xh[..999].iter().map(|&v| v as f64).sum::<f64>();
    let s1 = xh[999] as f64 * 0.5;
    for row in 0..rows {
        // 999 f32 additions of values < 100 in a fixed tree: 1e-6 relative.
        assert!(
            (rows_got[2 * row] as f64 - s0).abs() < 1e-6 * s0,
            "row {row}: {} want {s0}",
            rows_got[2 * row]
        );
        assert_eq!(rows_got[2 * row + 1] as f64, s1);
    }
    let totals = ops::read_log_totals(g, &log, rows).unwrap();
    assert!((totals[0] - 3.0 * s0).abs() < 3e-6 * s0 && (totals[1] - 3.0 * s1).abs() < 1e-9);
    // Segments aimed at one slot add up there (a hierarchical VAE's two KL terms), and a slot
    // no segment names keeps its value.
    let log3 = g.upload("log3", &[1, 3], &[7.0, 8.0, 9.0]).unwrap();
    let seg = |offset, len, slot, scale| Segment {
        offset,
        len,
        slot,
        scale,
    };
    let three = [seg(0, 300, 2, 1.0), seg(300, 10, 0, 1.0), seg(500, 200, 2, 0.25)];
    let d = ops::sum_segments(g, "slot-sums", &step, &x, &log3, &three).unwrap();
    step.write(g, &StepParams::default());
    g.run(&[&d]).unwrap();
    let got = g.read(&log3).unwrap();
    let sum = |r: std::ops::Range<usize>| xh[r].iter().map(|&v| v as f64).sum::<f64>();
    let want = [sum(300..310), 8.0, sum(0..300) + 0.25 * sum(500..700)];
    for (k, (&a, &b)) in got.iter().zip(&want).enumerate() {
        assert!((a as f64 - b).abs() <= 1e-6 * b, "slot {k}: {a} want {b}");
    }
    // The most segments one dispatch takes (a deep hierarchy's KL terms), alternating slots;
    // one more is refused.
    let many: Vec<Segment> = (0..ops::MAX_SEGMENTS)
        .map(|i| seg(90 * i, 50 + i, i % 2, 1.0))
        .collect();
    let log2 = g.upload("log2", &[1, 2], &[0.0, 0.0]).unwrap();
    let d = ops::sum_segments(g, "many", &step, &x, &log2, &many).unwrap();
    g.run(&[&d]).unwrap();
    let got = g.read(&log2).unwrap();
    for (slot, &a) in got.iter().enumerate() {
        let want: f64 = many
            .iter()
            .filter(|m| m.slot == slot)
            .map(|m| sum(m.offset..m.offset + m.len))
            .sum();
        let a = a as f64;
        assert!((a - want).abs() <= 1e-6 * want, "slot {slot}: {a} want {want}");
    }
    let too_many: Vec<Segment> = (0..=ops::MAX_SEGMENTS).map(|i| seg(i, 1, 0, 1.0)).collect();
    assert!(ops::sum_segments(g, "too-many", &step, &x, &log2, &too_many).is_err());
    assert!(ops::sum_segments(
        g,
        "bad",
        &step,
        &x,
        &log,
        &[Segment {
            offset: 990,
            len: 20,
            slot: 0,
            scale: 1.0
        }]
    )
    .is_err());
}

#[test]
fn reparam_kl_forward_and_backward() {
    let g = gpu();
    let step = StepBuffer::new(g).unwrap();
    let sp = StepParams {
        seed: 42,
        step: 7,
        stream: rng::STREAM_TRAIN,
        kl_beta: 0.7,
        ..Default::default()
    };
    step.write(g, &sp);
    // (B, Z, L, row width of z: wider than Z for a conditional decoder's input)
    for &(b, zd, l, zw) in &[
        (1usize, 1usize, 1usize, 1usize),
        (7, 5, 1, 8),
        (129, 20, 3, 20),
        (9, 2, 2, 12),
    ] {
        let mut enc_h = rand_vec(b * 2 * zd, 900 + b as u64, -2.0, 2.0);
        if b * zd > 2 {
            enc_h[zd] = -45.0; // log-variance below the clamp: zero gradient there
            enc_h[zd + 1] = 31.0; // above the clamp
        }
        let enc = g.upload("enc", &[b, 2 * zd], &enc_h).unwrap();
        // Columns past Z hold a sentinel the forward pass must not touch.
        let z = g.upload("z", &[l * b, zw], &vec![7.5; l * b * zw]).unwrap();
        let kl = g.tensor("kl", &[b * zd]).unwrap();
        let lr = g.tensor("log_ratio", &[l * b * zd]).unwrap();
        let fwd = ops::reparam_kl_forward(g, "reparam", &step, &enc, l, &z, &kl, Some(&lr)).unwrap();
        let dz_h = rand_vec(l * b * zw, 901, -1.0, 1.0);
        let dz = g.upload("dz", &[l * b, zw], &dz_h).unwrap();
        let denc = g.tensor("denc", &[b, 2 * zd]).unwrap();
        let bwd = ops::reparam_kl_backward(g, "reparam_bwd", &step, &enc, l, &dz, &denc).unwrap();
        g.run(&[&fwd, &bwd]).unwrap();
        let (zg, klg, dg) = (g.read(&z).unwrap(), g.read(&kl).unwrap(), g.read(&denc).unwrap());
        let lrg = g.read(&lr).unwrap();
        let mut lr_want = vec![0.0; l * b * zd];
        let mut z_want = vec![7.5; l * b * zw];
        let mut kl_want = vec![0.0; b * zd];
        let mut d_want = vec![0.0; b * 2 * zd];
        let beta = sp.kl_beta as f64;
        for bi in 0..b {
            for j in 0..zd {
                let mu = enc_h[bi * 2 * zd + j] as f64;
                let raw = enc_h[bi * 2 * zd + zd + j] as f64;
                let lv = raw.clamp(ops::LOGVAR_MIN as f64, ops::LOGVAR_MAX as f64);
                let sigma = (0.5 * lv).exp();
                let (mut gs, mut ge) = (0.0, 0.0);
                for s in 0..l {
                    let eps = rng::normal(
                        sp.seed,
                        sp.step,
                        rng::stream_word(sp.stream, s as u32),
                        (bi * zd + j) as u32,
                    );
                    let zv = mu + sigma * eps;
                    z_want[(s * b + bi) * zw + j] = zv;
                    // log N(z; 0, 1) − log N(z; μ, σ²), written out in full.
                    let log_p = -0.5 * zv * zv - 0.5 * std::f64::consts::TAU.ln();
                    let log_q = -0.5 * ((zv - mu) / sigma).powi(2) - sigma.ln() - 0.5 * std::f64::consts::TAU.ln();
                    lr_want[(s * b + bi) * zd + j] = log_p - log_q;
                    let gz = dz_h[(s * b + bi) * zw + j] as f64;
                    gs += gz;
                    ge += gz * eps;
                }
                kl_want[bi * zd + j] = 0.5 * (sigma * sigma + mu * mu - 1.0 - lv);
                d_want[bi * 2 * zd + j] = gs + beta * mu;
                let inside = raw >= ops::LOGVAR_MIN as f64 && raw <= ops::LOGVAR_MAX as f64;
                d_want[bi * 2 * zd + zd + j] = if inside {
                    0.5 * ge * sigma + 0.5 * beta * (sigma * sigma - 1.0)
                } else {
                    0.0
                };
            }
        }
        // exp/log/cos in f32 on the device: relative 1e-5 of the magnitudes involved.
        assert_close(&format!("z {b}×{zd}×{l}"), &zg, &z_want, |i| {
            1e-5 * (1.0 + z_want[i].abs())
        });
        assert_close(&format!("kl {b}×{zd}"), &klg, &kl_want, |i| {
            1e-5 * (1.0 + kl_want[i].abs())
        });
        assert_close(&format!("log ratio {b}×{zd}×{l}"), &lrg, &lr_want, |i| {
            1e-5 * (1.0 + lr_want[i].abs())
        });
        assert_close(&format!("denc {b}×{zd}×{l}"), &dg, &d_want, |i| {
            1e-5 * (1.0 + d_want[i].abs())
        });
    }
}

fn softplus(l: f64) -> f64 {
    l.max(0.0) + (-l.abs()).exp().ln_1p()
}

#[test]
fn losses_and_gradients() {
    let g = gpu();
    for &(r, b, d) in &[(1usize, 1usize, 4usize), (7, 7, 12), (6, 3, 8), (129, 129, 784)] {
        let mut out_h = rand_vec(r * d, 1000 + r as u64, -8.0, 8.0);
        out_h[0] = 120.0; // extreme logits: the stable forms must stay finite and exact
        if out_h.len() > 1 {
            out_h[1] = -120.0;
        }
        let x_h = rand_vec(b * d, 1001, 0.0, 1.0);
        let out = g.upload("out", &[r, d], &out_h).unwrap();
        let x = g.upload("x", &[b, d], &x_h).unwrap();
        let nll = g.tensor("nll", &[r]).unwrap();
        let grad = g.tensor("grad", &[r, d]).unwrap();
        let scale = 1.0 / (r / b) as f32;
        for lik in [Likelihood::Bernoulli, Likelihood::Gaussian { variance: 0.3 }] {
            let dsp = ops::loss(g, "loss", lik, &out, &x, scale, &nll, &grad, None).unwrap();
            g.run(&[&dsp]).unwrap();
            let mut nll_want = vec![0.0; r];
            let mut g_want = vec![0.0; r * d];
            let mut mag = vec![0.0; r];
            for ri in 0..r {
                for j in 0..d {
                    let o = out_h[ri * d + j] as f64;
                    let t = x_h[(ri % b) * d + j] as f64;
                    let (v, gv) = match lik {
                        Likelihood::Bernoulli => (softplus(o) - t * o, 1.0 / (1.0 + (-o).exp()) - t),
                        Likelihood::Gaussian { variance } => {
                            let c = variance as f64;
                            (
                                (o - t).powi(2) / (2.0 * c) + 0.5 * (std::f64::consts::TAU * c).ln(),
                                (o - t) / c,
                            )
                        }
                        Likelihood::GaussianLearned { .. } => unreachable!("not in this test's list"),
                    };
                    nll_want[ri] += v;
                    mag[ri] += v.abs();
                    g_want[ri * d + j] = scale as f64 * gv;
                }
            }
            // Row sums of D f32 terms: 1e-6 relative to Σ|terms|.
            assert_close(
                &format!("{lik:?} nll {r}×{d}"),
                &g.read(&nll).unwrap(),
                &nll_want,
                |i| 2e-6 * mag[i] + 1e-5,
            );
            assert_close(
                &format!("{lik:?} grad {r}×{d}"),
                &g.read(&grad).unwrap(),
                &g_want,
                |i| 1e-6 * (1.0 + g_want[i].abs()),
            );
        }
    }
}

/// The learned-variance loss (shared and per-pixel log c, one value below the floor and one
/// above the ceiling), read from target rows wider than D, and the reduction of its per-element
/// log-c gradient terms into the parameter's gradient.
#[test]
fn learned_variance_loss_and_log_c_gradient() {
    let g = gpu();
    // A small case, and one at MNIST's width whose shared-log-c sum (25,088 vec4s) takes many
    // passes of the reduction's 64-lane strided loop.
    for (r, b, d, xw) in [(6usize, 3usize, 8usize, 12usize), (128, 64, 784, 784)] {
        learned_variance_case(g, r, b, d, xw);
    }
}

fn learned_variance_case(g: &Gpu, r: usize, b: usize, d: usize, xw: usize) {
    let out_h = rand_vec(r * d, 1300, -0.5, 1.5);
    let x_h = rand_vec(b * xw, 1301, 0.0, 1.0);
    let out = g.upload("out", &[r, d], &out_h).unwrap();
    let x = g.upload("x", &[b, xw], &x_h).unwrap();
    let nll = g.tensor("nll", &[r]).unwrap();
    let grad = g.tensor("grad", &[r, d]).unwrap();
    let dlc = g.tensor("dlc", &[r, d]).unwrap();
    let scale = 0.5f32;
    for per_pixel in [false, true] {
        let mut lc_h = if per_pixel {
            rand_vec(d, 1302, -2.0, 1.0)
        } else {
            vec![-0.7]
        };
        if per_pixel {
            lc_h[2] = ops::LOG_C_MIN - 0.5;
            lc_h[5] = ops::LOG_C_MAX + 0.5;
        }
        // Arena-like: the parameter's slot is padded to a vec4, as log_c_grad writes one.
        let n = lc_h.len();
        let mut padded = lc_h.clone();
        padded.resize(n.div_ceil(4) * 4, 0.0);
        let lc_buf = g.upload("log_c", &[padded.len()], &padded).unwrap();
        let lc = lc_buf.reshape_prefix(&[n]);
        let dlc_sum_buf = g.upload("dlc_sum", &[padded.len()], &vec![9.0; padded.len()]).unwrap();
        let dlc_sum = dlc_sum_buf.reshape_prefix(&[n]);
        let lik = Likelihood::GaussianLearned { per_pixel };
        let learned = ops::LearnedLogC { log_c: &lc, dlc: &dlc };
        let dl = ops::loss(g, "loss", lik, &out, &x, scale, &nll, &grad, Some(&learned)).unwrap();
        let dr = ops::log_c_grad(g, "log_c.grad", per_pixel, &dlc, &dlc_sum).unwrap();
        g.run(&[&dl, &dr]).unwrap();
        let (mut nll_want, mut g_want) = (vec![0.0f64; r], vec![0.0f64; r * d]);
        let mut lc_grad_want = vec![0.0f64; n];
        let mut lc_grad_abs = vec![0.0f64; n];
        for ri in 0..r {
            for j in 0..d {
                let raw = lc_h[if per_pixel { j } else { 0 }] as f64;
                let lcv = raw.clamp(ops::LOG_C_MIN as f64, ops::LOG_C_MAX as f64);
                let c = lcv.exp();
                let (o, t) = (out_h[ri * d + j] as f64, x_h[(ri % b) * xw + j] as f64);
                nll_want[ri] += 0.5 * ((std::f64::consts::TAU * c).ln() + (o - t).powi(2) / c);
                g_want[ri * d + j] = scale as f64 * (o - t) / c;
                if raw == lcv {
                    let term = scale as f64 * 0.5 * (1.0 - (o - t).powi(2) / c);
                    lc_grad_want[if per_pixel { j } else { 0 }] += term;
                    lc_grad_abs[if per_pixel { j } else { 0 }] += term.abs();
                }
            }
        }
        assert_close(
            &format!("learned({per_pixel}) nll"),
            &g.read(&nll).unwrap(),
            &nll_want,
            |i| 2e-6 * (1.0 + nll_want[i].abs()),
        );
        assert_close(
            &format!("learned({per_pixel}) grad"),
            &g.read(&grad).unwrap(),
            &g_want,
            |i| 2e-6 * (1.0 + g_want[i].abs()),
        );
        let got = g.read(&dlc_sum_buf).unwrap();
        // f32 sums of up to 101k terms: relative to the sum of their magnitudes.
        assert_close(
            &format!("learned({per_pixel}) dlog c, {r}×{d}"),
            &got[..n],
            &lc_grad_want,
            |i| 1e-5 * (1.0 + lc_grad_abs[i]),
        );
        if per_pixel {
            assert_eq!((got[2], got[5]), (0.0, 0.0), "clamped log c gets no gradient");
        } else {
            assert_eq!(&got[1..4], &[0.0, 0.0, 0.0], "the rest of the vec4 is zero padding");
        }
    }
    // A learned variance without its parameter is a configuration error.
    let lik = Likelihood::GaussianLearned { per_pixel: true };
    assert!(ops::loss(g, "loss", lik, &out, &x, 1.0, &nll, &grad, None).is_err());
}

#[test]
fn adam_and_adamw_match_pytorch_formula() {
    let g = gpu();
    let n = 4 * 1031;
    for decoupled in [false, true] {
        let cfg = ops::AdamConfig {
            lr: 1e-2,
            weight_decay: 0.05,
            decoupled,
            ..Default::default()
        };
        let p0 = rand_vec(n, 1100, -1.0, 1.0);
        let params = g.upload("p", &[n], &p0).unwrap();
        let grads = g.tensor("g", &[n]).unwrap();
        let m = g.upload("m", &[n], &vec![0.0; n]).unwrap();
        let v = g.upload("v", &[n], &vec![0.0; n]).unwrap();
        let step = StepBuffer::new(g).unwrap();
        let health = g.tensor("health", &[4]).unwrap();
        g.write_words(&health, &[ops::HEALTHY; 4]).unwrap();
        let d = ops::adam(g, "adam", &cfg, &step, &params, &grads, &m, &v, &health).unwrap();
        let (mut p, mut mm, mut vv) = (
            p0.iter().map(|&x| x as f64).collect::<Vec<_>>(),
            vec![0.0f64; n],
            vec![0.0f64; n],
        );
        for t in 1..=5u64 {
            let gh = rand_vec(n, 1200 + t, -1.0, 1.0);
            g.write(&grads, &gh).unwrap();
            let mut sp = StepParams::default();
            cfg.step_fields(t, &mut sp);
            step.write(g, &sp);
            g.run(&[&d]).unwrap();
            let (b1, b2, lr, wd, eps) = (
                cfg.beta1 as f64,
                cfg.beta2 as f64,
                cfg.lr as f64,
                cfg.weight_decay as f64,
                cfg.eps as f64,
            );
            for i in 0..n {
                let mut gi = gh[i] as f64;
                if decoupled {
                    p[i] -= lr * wd * p[i];
                } else {
                    gi += wd * p[i];
                }
                mm[i] = b1 * mm[i] + (1.0 - b1) * gi;
                vv[i] = b2 * vv[i] + (1.0 - b2) * gi * gi;
                let denom = vv[i].sqrt() / (1.0 - b2.powi(t as i32)).sqrt() + eps;
                p[i] -= lr / (1.0 - b1.powi(t as i32)) * mm[i] / denom;
            }
        }
        // Each step moves a parameter by about lr; f32 rounding of the update is ~1e-7 each.
        assert_close(
            &format!("adam decoupled={decoupled}"),
            &g.read(&params).unwrap(),
            &p,
            |_| 2e-6,
        );
        assert_close("adam m", &g.read(&m).unwrap(), &mm, |_| 1e-6);
        assert_close("adam v", &g.read(&v).unwrap(), &vv, |_| 1e-6);
        assert_eq!(
            g.read_words(&health).unwrap()[0],
            ops::HEALTHY,
            "finite steps flag nothing"
        );
    }
    // The divergence guard: the first step whose update leaves a parameter NaN or infinite is
    // recorded (steps 11 and 13 here; 11 stays), an update that stays finite records nothing.
    let cfg = ops::AdamConfig::default();
    let (params, grads) = (g.upload("p", &[8], &[0.5; 8]).unwrap(), g.tensor("g", &[8]).unwrap());
    let (m, v) = (
        g.upload("m", &[8], &[0.0; 8]).unwrap(),
        g.upload("v", &[8], &[0.0; 8]).unwrap(),
    );
    let health = g.tensor("health", &[4]).unwrap();
    g.write_words(&health, &[ops::HEALTHY; 4]).unwrap();
    let step = StepBuffer::new(g).unwrap();
    let d = ops::adam(g, "adam-guard", &cfg, &step, &params, &grads, &m, &v, &health).unwrap();
    for (t, bad) in [
        (10u32, None),
        (13, Some(f32::INFINITY)),
        (11, Some(f32::NAN)),
        (12, None),
    ] {
        let mut gh = vec![0.1f32; 8];
        if let Some(x) = bad {
            gh[5] = x;
        }
        g.write(&grads, &gh).unwrap();
        let mut sp = StepParams {
            step: t,
            ..Default::default()
        };
        cfg.step_fields(t as u64 + 1, &mut sp);
        step.write(g, &sp);
        g.run(&[&d]).unwrap();
        if t == 10 {
            assert_eq!(g.read_words(&health).unwrap()[0], ops::HEALTHY);
        }
    }
    assert_eq!(g.read_words(&health).unwrap()[0], 11, "the first non-finite step");
    // A finite gradient that carries a parameter past f32's range is caught too.
    let big = ops::AdamConfig {
        lr: 3e38,
        ..Default::default()
    };
    g.write_words(&health, &[ops::HEALTHY; 4]).unwrap();
    g.write(&params, &[-3e38; 8]).unwrap();
    g.write(&grads, &[1.0; 8]).unwrap();
    g.write(&m, &[0.0; 8]).unwrap();
    g.write(&v, &[0.0; 8]).unwrap();
    let d = ops::adam(g, "adam-overflow", &big, &step, &params, &grads, &m, &v, &health).unwrap();
    let mut sp = StepParams {
        step: 42,
        ..Default::default()
    };
    big.step_fields(43, &mut sp);
    step.write(g, &sp);
    g.run(&[&d]).unwrap();
    assert!(g.read(&params).unwrap().iter().all(|&x| x == f32::NEG_INFINITY));
    assert_eq!(g.read_words(&health).unwrap()[0], 42);
    // Moments that decay below f32's smallest normal (a parameter whose gradient stopped) are
    // stored as 0, so that no later step computes on subnormals; normal ones are kept, and
    // their parameters still move as the formula says.
    let cfg = ops::AdamConfig::default();
    let tiny = f32::MIN_POSITIVE;
    let m0 = [1.05 * tiny, 1.2 * tiny, -1.05 * tiny, 0.5, 1e-30, 0.0, 0.0, 0.0];
    let v0 = [1.0, 1.0, 1.0, 1.0, 1e-30, 1.0, 0.99 * tiny / cfg.beta2, 0.0];
    let (params, grads) = (g.upload("p", &[8], &[0.25; 8]).unwrap(), g.tensor("g", &[8]).unwrap());
    let (m, v) = (g.upload("m", &[8], &m0).unwrap(), g.upload("v", &[8], &v0).unwrap());
    let step = StepBuffer::new(g).unwrap();
    let mut sp = StepParams::default();
    cfg.step_fields(3, &mut sp);
    step.write(g, &sp);
    let health = g.tensor("health", &[4]).unwrap();
    g.run(&[&ops::adam(g, "adam-ftz", &cfg, &step, &params, &grads, &m, &v, &health).unwrap()])
        .unwrap();
    let (mg, vg) = (g.read(&m).unwrap(), g.read(&v).unwrap());
    // β1·m: 0.945·MIN_POSITIVE and its negative are subnormal → 0; 1.08·MIN_POSITIVE stays.
    assert_eq!(mg[0], 0.0, "{mg:?}");
    assert_eq!(mg[2], 0.0, "{mg:?}");
    assert!(mg[1].is_normal() && mg[3] == 0.45 && mg[4] == 0.9 * 1e-30, "{mg:?}");
    assert!(mg.iter().chain(&vg).all(|x| !x.is_subnormal()), "{mg:?} {vg:?}");
    assert_eq!(vg[6], 0.0, "{vg:?}");
    assert!(vg[5] > 0.99 && vg[5] == cfg.beta2, "{vg:?}");
}

#[test]
fn gather_and_dynamic_binarization() {
    let g = gpu();
    let (count, d) = (37usize, 12usize);
    let bytes: Vec<u8> = (0..count * d).map(|i| (i * 37 % 256) as u8).collect();
    let words: Vec<u32> = bytes
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let data = g.upload_words("data", &words).unwrap();
    let perm_h: Vec<u32> = (0..count as u32).rev().collect();
    let perm = g.upload_words("perm", &perm_h).unwrap();
    let rows = 5;
    let x = g.tensor("x", &[rows, d]).unwrap();
    let step = StepBuffer::new(g).unwrap();
    // The last batch runs past the permutation's end: those rows are zero.
    for (start, binarize) in [(0u32, false), (34, false), (3, true)] {
        let sp = StepParams {
            seed: 5,
            step: 11,
            batch_start: start,
            ..Default::default()
        };
        step.write(g, &sp);
        let dsp = ops::gather(g, "gather", &step, &data, count, d, &perm, &x, binarize).unwrap();
        g.run(&[&dsp]).unwrap();
        let got = g.read(&x).unwrap();
        let mut want = vec![0.0f64; rows * d];
        for r in 0..rows {
            let pos = start as usize + r;
            if pos >= count {
                continue;
            }
            let ex = perm_h[pos] as usize;
            for j in 0..d {
                let p = bytes[ex * d + j] as f64 / 255.0;
                want[r * d + j] = if binarize {
                    let u = rng::uniform(
                        sp.seed,
                        sp.step,
                        rng::stream_word(rng::STREAM_BINARIZE, 0),
                        (r * d + j) as u32,
                    );
                    if u < p {
                        1.0
                    } else {
                        0.0
                    }
                } else {
                    p
                };
            }
        }
        assert_close(
            &format!("gather start={start} binarize={binarize}"),
            &got,
            &want,
            |_| 1e-7,
        );
    }
}

/// Class conditioning: the one-hot label after the pixels of each batch row and after the
/// code of each of the L·B decoder rows, zero padding after the classes (labels 3 and 4 of a
/// three-class model, which name padding columns, give all zeros), zero for rows past the
/// permutation's end, and the pixels and codes left alone.
#[test]
fn condition_writes_one_hot_labels() {
    let g = gpu();
    let count = 11usize;
    let labels_h: Vec<u32> = (0..count as u32).map(|i| (i * 7 + 2) % 5).collect();
    let classes = 3;
    let labels = g.upload_words("labels", &labels_h).unwrap();
    let perm_h: Vec<u32> = (0..count as u32).map(|i| (i * 4) % count as u32).collect();
    let perm = g.upload_words("perm", &perm_h).unwrap();
    let (b, l, d, xw, zd, zw) = (4usize, 2usize, 8usize, 12usize, 2usize, 8usize);
    let x = g.upload("x", &[b, xw], &vec![0.25; b * xw]).unwrap();
    let z = g.upload("z", &[l * b, zw], &vec![-0.5; l * b * zw]).unwrap();
    let step = StepBuffer::new(g).unwrap();
    let dsp = ops::condition(g, "condition", &step, &labels, classes, &perm, &x, d, &z, zd).unwrap();
    for start in [0u32, 9] {
        step.write(
            g,
            &StepParams {
                batch_start: start,
                ..Default::default()
            },
        );
        g.run(&[&dsp]).unwrap();
        let (xg, zg) = (g.read(&x).unwrap(), g.read(&z).unwrap());
        let label = |row: usize| {
            let pos = start as usize + row;
            (pos < count)
                .then(|| labels_h[perm_h[pos] as usize] as usize)
                .filter(|&l| l < classes)
        };
        for row in 0..b {
            for c in 0..xw {
                let want = if c < d {
                    0.25
                } else if label(row) == Some(c - d) {
                    1.0
                } else {
                    0.0
                };
                assert_eq!(xg[row * xw + c], want, "x row {row} col {c} (start {start})");
            }
        }
        for row in 0..l * b {
            for c in 0..zw {
                let want = if c < zd {
                    -0.5
                } else if label(row % b) == Some(c - zd) {
                    1.0
                } else {
                    0.0
                };
                assert_eq!(zg[row * zw + c], want, "z row {row} col {c} (start {start})");
            }
        }
    }
}

/// A tensor longer than the largest texture gets no mirror (it is read from its buffer), so a
/// large batch still trains; smaller ones get one.
#[test]
fn texture_mirror_is_skipped_past_the_texture_limit() {
    let g = gpu();
    let rows = g.ctx.device.limits().max_texture_dimension_2d as usize;
    let fits = ops::mirrored(g, "fits", g.tensor("fits", &[rows * ops::TEX_W * 4]).unwrap(), true).unwrap();
    assert!(fits.mirror().is_some());
    drop(fits);
    let long = ops::mirrored(g, "long", g.tensor("long", &[rows * ops::TEX_W * 4 + 4]).unwrap(), true).unwrap();
    assert!(long.mirror().is_none());
}
