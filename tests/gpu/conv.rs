//! Convolution and transposed-convolution layers against a direct f64 loop (PyTorch's
//! definitions, weights in PyTorch's layouts), their gradients against finite differences of
//! that loop, on odd sizes, batch 1, one channel and every stride and padding the models use.

use vae_wgpu::internals::nn::{ArenaLayout, Conv2d, ParamArena};
use vae_wgpu::internals::ops::{self, Activation, ConvGeometry, ConvProduct, Epilogue, MatmulStrategy};
use vae_wgpu::{Gpu, Tensor, VaeError};

use crate::common::{assert_close, gpu, rand_vec};

#[derive(Clone, Copy, Debug)]
struct Case {
    batch: usize,
    h: usize,
    w: usize,
    cin: usize,
    cout: usize,
    k: usize,
    s: usize,
    p: usize,
    transposed: bool,
}

impl Case {
    fn out_hw(&self) -> (usize, usize) {
        let side = |n: usize| {
            if self.transposed {
                (n - 1) * self.s + self.k - 2 * self.p
            } else {
                (n + 2 * self.p - self.k) / self.s + 1
            }
        };
        (side(self.h), side(self.w))
    }
    fn in_len(&self) -> usize {
        self.batch * self.h * self.w * self.cin
    }
    fn out_len(&self) -> usize {
        let (ho, wo) = self.out_hw();
        self.batch * ho * wo * self.cout
    }
    /// PyTorch's weight: Conv2d [out, in, k, k], ConvTranspose2d [in, out, k, k].
    fn torch_weight_len(&self) -> usize {
        self.cin * self.cout * self.k * self.k
    }
}

/// The layer's pre-activation output in f64, NHWC, straight from PyTorch's definitions: a
/// convolution gathers, a transposed convolution scatters each input pixel through the kernel.
fn forward_ref(c: &Case, x: &[f64], wt: &[f64], bias: &[f64]) -> Vec<f64> {
    let (ho, wo) = c.out_hw();
    let k = c.k;
    let mut y = vec![0.0f64; c.out_len()];
    for b in 0..c.batch {
        for oy in 0..ho {
            for ox in 0..wo {
                for co in 0..c.cout {
                    y[((b * ho + oy) * wo + ox) * c.cout + co] = bias[co];
                }
            }
        }
        for iy in 0..c.h {
            for ix in 0..c.w {
                for ci in 0..c.cin {
                    let xv = x[((b * c.h + iy) * c.w + ix) * c.cin + ci];
                    for ky in 0..k {
                        for kx in 0..k {
                            if c.transposed {
                                let (oy, ox) = (
                                    (iy * c.s + ky) as isize - c.p as isize,
                                    (ix * c.s + kx) as isize - c.p as isize,
                                );
                                if oy < 0 || ox < 0 || oy >= ho as isize || ox >= wo as isize {
                                    continue;
                                }
                                for co in 0..c.cout {
                                    let wv = wt[((ci * c.cout + co) * k + ky) * k + kx];
                                    y[((b * ho + oy as usize) * wo + ox as usize) * c.cout + co] += xv * wv;
                                }
                            } else {
                                // Output pixel (oy, ox) reads (iy, ix) through tap (ky, kx) when
                                // oy·s − p + ky = iy.
                                let (ny, nx) = (iy + c.p, ix + c.p);
                                if ny < ky || nx < kx || (ny - ky) % c.s != 0 || (nx - kx) % c.s != 0 {
                                    continue;
                                }
                                let (oy, ox) = ((ny - ky) / c.s, (nx - kx) / c.s);
                                if oy >= ho || ox >= wo {
                                    continue;
                                }
                                for co in 0..c.cout {
                                    let wv = wt[((co * c.cin + ci) * k + ky) * k + kx];
                                    y[((b * ho + oy) * wo + ox) * c.cout + co] += xv * wv;
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    y
}

/// The crate's stored weight from PyTorch's layout: rows (ky·k + kx)·C + c of the convolution
/// the layer is planned around (C its input channels), rounded up to 4 with zero rows.
fn stored_weight(c: &Case, wt: &[f32]) -> Vec<f32> {
    let k = c.k;
    let (conv_in, conv_out) = if c.transposed { (c.cout, c.cin) } else { (c.cin, c.cout) };
    let rows = (k * k * conv_in).div_ceil(4) * 4;
    let mut w = vec![0.0f32; rows * conv_out];
    for o in 0..conv_out {
        for i in 0..conv_in {
            for t in 0..k * k {
                // Both layouts are [conv_out, conv_in, k, k].
                w[(t * conv_in + i) * conv_out + o] = wt[(o * conv_in + i) * k * k + t];
            }
        }
    }
    w
}

/// The inverse of [`stored_weight`]: PyTorch's layout from the crate's.
fn torch_weight(c: &Case, w: &[f32]) -> Vec<f32> {
    let k = c.k;
    let (conv_in, conv_out) = if c.transposed { (c.cout, c.cin) } else { (c.cin, c.cout) };
    let mut wt = vec![0.0f32; c.torch_weight_len()];
    for o in 0..conv_out {
        for i in 0..conv_in {
            for t in 0..k * k {
                wt[(o * conv_in + i) * k * k + t] = w[(t * conv_in + i) * conv_out + o];
            }
        }
    }
    wt
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// ∂(Σ y·r)/∂v for each element of `v` by central differences; the loss is linear in each
/// argument, so a step of 0.5 is exact up to rounding.
fn finite_difference(v: &[f64], loss: impl Fn(&[f64]) -> f64) -> Vec<f64> {
    let h = 0.5;
    let mut v = v.to_vec();
    (0..v.len())
        .map(|i| {
            let keep = v[i];
            v[i] = keep + h;
            let up = loss(&v);
            v[i] = keep - h;
            let down = loss(&v);
            v[i] = keep;
            (up - down) / (2.0 * h)
        })
        .collect()
}

struct Layer {
    conv: Conv2d,
    arena: ParamArena,
    cols: Option<Tensor>,
}

fn layer(g: &Gpu, c: &Case, act: Activation, wt: &[f32], bias: &[f32]) -> Layer {
    let mut layout = ArenaLayout::default();
    // A slot before it, so the layer's slots sit at an offset inside the arena.
    layout.add("before", &[5]);
    let conv = Conv2d::new(
        &mut layout,
        "test.conv",
        c.cin,
        c.cout,
        (c.h, c.w),
        (c.k, c.s, c.p),
        c.transposed,
        act,
    );
    assert_eq!(conv.out_hw, c.out_hw(), "{c:?}");
    let mut values: Vec<Vec<f32>> = layout.slots().iter().map(|s| vec![0.0; s.len()]).collect();
    values[conv.w] = stored_weight(c, wt);
    values[conv.b] = bias.to_vec();
    let flat = vae_wgpu::internals::nn::arena::flatten(&layout, &values).unwrap();
    let arena = ParamArena::new(g, layout, &flat).unwrap();
    let cols = conv.cols(g, c.batch).unwrap();
    Layer { conv, arena, cols }
}

fn check_case(g: &Gpu, c: &Case, seed: u64) {
    let slope = vae_wgpu::internals::nn::LEAKY_SLOPE as f64;
    let xh = rand_vec(c.in_len(), seed, -1.0, 1.0);
    let wh = rand_vec(c.torch_weight_len(), seed + 1, -1.0, 1.0);
    let bh = rand_vec(c.cout, seed + 2, -1.0, 1.0);
    let rh = rand_vec(c.out_len(), seed + 3, -1.0, 1.0);
    let f = |v: &[f32]| v.iter().map(|&a| a as f64).collect::<Vec<f64>>();
    let (x64, w64, b64, r64) = (f(&xh), f(&wh), f(&bh), f(&rh));
    let pre = forward_ref(c, &x64, &w64, &b64);
    // Every product sums at most k·k·C terms of magnitude ≤ 1.
    let terms = (c.k * c.k * c.cin.max(c.cout) + 1) as f64;
    let tol = |_: usize| 2e-6 * terms;

    // Forward, with an activation fused (LeakyReLU: both branches carry information).
    let act = Activation::LeakyRelu;
    let l = layer(g, c, act, &wh, &bh);
    let x = g.upload("x", &[c.batch, c.in_len() / c.batch], &xh).unwrap();
    let y = g.tensor("y", &[c.batch, c.out_len() / c.batch]).unwrap();
    let d = l.conv.forward(g, &l.arena, &x, &y, l.cols.as_ref()).unwrap();
    g.run(&d.iter().collect::<Vec<_>>()).unwrap();
    let want: Vec<f64> = pre.iter().map(|&v| if v > 0.0 { v } else { slope * v }).collect();
    assert_close(&format!("{c:?} forward"), &g.read(&y).unwrap(), &want, tol);

    // Backward from dL/dy = r, through an input made by tanh (dx gets ⊙ (1 − x²)).
    let dy = g.upload("dy", y.shape(), &rh).unwrap();
    let dx = g.tensor("dx", x.shape()).unwrap();
    let d = l
        .conv
        .backward(g, &l.arena, &x, &dy, Some(&dx), Activation::Tanh, l.cols.as_ref())
        .unwrap();
    g.run(&d.iter().collect::<Vec<_>>()).unwrap();
    let grads = l.arena.read_grads(g).unwrap();
    let dw_fd = finite_difference(&w64, |w| dot(&forward_ref(c, &x64, w, &b64), &r64));
    let db_fd = finite_difference(&b64, |b| dot(&forward_ref(c, &x64, &w64, b), &r64));
    let dx_fd = finite_difference(&x64, |x| dot(&forward_ref(c, x, &w64, &b64), &r64));
    let dw_torch = torch_weight(c, &grads[l.conv.w]);
    let rows_scale = (c.out_len() / c.cout) as f64;
    assert_close(&format!("{c:?} weight gradient"), &dw_torch, &dw_fd, |_| {
        2e-6 * rows_scale
    });
    assert_close(&format!("{c:?} bias gradient"), &grads[l.conv.b], &db_fd, |_| {
        2e-6 * rows_scale
    });
    // The rounding rows of the stored weight get no gradient.
    let real = c.k * c.k * c.cin * c.cout;
    assert!(
        grads[l.conv.w][real..].iter().all(|&v| v == 0.0),
        "{c:?}: gradient in the weight's rounding rows"
    );
    let dx_want: Vec<f64> = dx_fd.iter().zip(&x64).map(|(d, x)| d * (1.0 - x * x)).collect();
    assert_close(&format!("{c:?} input gradient"), &g.read(&dx).unwrap(), &dx_want, tol);
}

const CASES: [Case; 10] = [
    // Odd sizes, channels that are not multiples of 4 (the scalar paths), stride 1, padding 1.
    Case {
        batch: 2,
        h: 7,
        w: 5,
        cin: 3,
        cout: 5,
        k: 3,
        s: 1,
        p: 1,
        transposed: false,
    },
    // Batch 1, one channel: the encoder's first layer on MNIST.
    Case {
        batch: 1,
        h: 8,
        w: 8,
        cin: 1,
        cout: 4,
        k: 4,
        s: 2,
        p: 1,
        transposed: false,
    },
    // Channels in fours (the vec4 paths), stride 2 without padding, a size that does not divide.
    Case {
        batch: 3,
        h: 9,
        w: 6,
        cin: 4,
        cout: 8,
        k: 3,
        s: 2,
        p: 0,
        transposed: false,
    },
    Case {
        batch: 2,
        h: 6,
        w: 6,
        cin: 8,
        cout: 4,
        k: 4,
        s: 2,
        p: 1,
        transposed: false,
    },
    Case {
        batch: 2,
        h: 5,
        w: 7,
        cin: 4,
        cout: 4,
        k: 4,
        s: 1,
        p: 0,
        transposed: false,
    },
    Case {
        batch: 1,
        h: 6,
        w: 5,
        cin: 2,
        cout: 3,
        k: 4,
        s: 2,
        p: 1,
        transposed: false,
    },
    // Transposed: the decoder's upsampling, down to one output channel.
    Case {
        batch: 2,
        h: 4,
        w: 4,
        cin: 8,
        cout: 4,
        k: 4,
        s: 2,
        p: 1,
        transposed: true,
    },
    Case {
        batch: 1,
        h: 3,
        w: 5,
        cin: 4,
        cout: 1,
        k: 4,
        s: 2,
        p: 1,
        transposed: true,
    },
    Case {
        batch: 2,
        h: 5,
        w: 4,
        cin: 3,
        cout: 5,
        k: 3,
        s: 2,
        p: 0,
        transposed: true,
    },
    Case {
        batch: 2,
        h: 4,
        w: 3,
        cin: 4,
        cout: 8,
        k: 3,
        s: 1,
        p: 1,
        transposed: true,
    },
];

#[test]
fn conv_layers_match_the_direct_loop_and_finite_differences() {
    let g = gpu();
    for (i, c) in CASES.iter().enumerate() {
        check_case(g, c, 7000 + 10 * i as u64);
    }
}

#[test]
fn channel_sums_any_channel_count() {
    let g = gpu();
    for (rows, c) in [(1usize, 1usize), (1000, 1), (37, 3), (130, 8)] {
        let xh = rand_vec(rows * c, 77 + rows as u64, -1.0, 1.0);
        let x = g.upload("x", &[rows, c], &xh).unwrap();
        let out = g.upload("out", &[c], &vec![9.0; c]).unwrap();
        g.run(&[&ops::channel_sum(g, "sum", &x, &out).unwrap()]).unwrap();
        let want: Vec<f64> = (0..c).map(|j| (0..rows).map(|r| xh[r * c + j] as f64).sum()).collect();
        assert_close(
            &format!("channel sums {rows}×{c}"),
            &g.read(&out).unwrap(),
            &want,
            |_| 1e-6 * rows as f64,
        );
    }
}

#[test]
fn conv_shape_errors_name_the_layer() {
    let g = gpu();
    let shape_error = |r: vae_wgpu::Result<ConvGeometry>, needles: &[&str]| match r {
        Err(e @ VaeError::Shape(_)) => {
            let m = e.to_string();
            assert!(needles.iter().all(|n| m.contains(n)), "{m}");
        }
        other => panic!("expected a shape error, got {other:?}"),
    };
    shape_error(
        ConvGeometry::new("enc_conv.1", 2, (3, 3), 4, 4, 8, 2, 1),
        &["enc_conv.1", "does not fit"],
    );
    shape_error(
        ConvGeometry::new("enc_conv.0", 2, (8, 8), 4, 4, 4, 2, 4),
        &["enc_conv.0", "padding 4"],
    );
    shape_error(
        ConvGeometry::new("dec_conv.0", 2, (8, 8), 0, 4, 4, 2, 1),
        &["dec_conv.0", "positive"],
    );
    // Tensors that do not match the geometry.
    let geo = ConvGeometry::new("enc_conv.0", 2, (8, 8), 1, 4, 4, 2, 1).unwrap();
    let x = g.tensor("x", &[2, 60]).unwrap();
    let cols = g.tensor("cols", &[geo.cols_rows(), geo.cols_width()]).unwrap();
    let e = ops::im2col(g, "enc_conv.0.im2col", &geo, &x, &cols)
        .err()
        .expect("a wrong input size");
    assert!(
        e.to_string().contains("enc_conv.0") && e.to_string().contains("128"),
        "{e}"
    );
    let img = g.tensor("img", &[2, 64]).unwrap();
    let short = g.tensor("cols", &[geo.cols_rows() - 1, geo.cols_width()]).unwrap();
    let e = ops::col2im(g, "enc_conv.0.col2im", &geo, &short, &img, &Epilogue::default())
        .err()
        .expect("a short patch matrix");
    assert!(e.to_string().contains("patch matrix"), "{e}");
}

/// The patch-matrix entry (p, j) of X for `g`, in f64 (0 outside the image and past k·k·C).
fn patch_f64(g: &ConvGeometry, x: &[f32], p: usize, j: usize) -> f64 {
    let (t, c) = (j / g.in_c, j % g.in_c);
    if t >= g.kernel * g.kernel {
        return 0.0;
    }
    let plane = g.out_h * g.out_w;
    let (b, oy, ox) = (p / plane, p % plane / g.out_w, p % g.out_w);
    let iy = (oy * g.stride + t / g.kernel) as isize - g.pad as isize;
    let ix = (ox * g.stride + t % g.kernel) as isize - g.pad as isize;
    if iy < 0 || ix < 0 || iy >= g.in_h as isize || ix >= g.in_w as isize {
        return 0.0;
    }
    x[((b * g.in_h + iy as usize) * g.in_w + ix as usize) * g.in_c + c] as f64
}

/// Each product of `ops::conv_matmul` in every matmul strategy the adapter runs, against the
/// products written out from the patch matrix in f64: forward patches·W, weight gradient
/// patchesᵀ·dY (with the column sums), input gradient patchesᵀ applied to dY·Wᵀ.
#[test]
fn implicit_conv_products_in_every_strategy() {
    let g = gpu();
    let geometries = [
        ConvGeometry::new("a", 2, (8, 8), 4, 8, 4, 2, 1).unwrap(),
        ConvGeometry::new("b", 1, (6, 6), 8, 4, 3, 1, 1).unwrap(),
        ConvGeometry::new("c", 3, (4, 6), 4, 4, 2, 2, 0).unwrap(),
        // One input channel (the patch units gather four taps); the input gradient needs the
        // stride to divide the sides, which 7 does not.
        ConvGeometry::new("d", 2, (7, 5), 1, 4, 4, 2, 1).unwrap(),
    ];
    for (gi, geo) in geometries.iter().enumerate() {
        let (kc, rows) = (geo.cols_width(), geo.cols_rows());
        let seed = 9100 + 10 * gi as u64;
        let xh = rand_vec(geo.in_len(), seed, -1.0, 1.0);
        let mut wh = rand_vec(kc * geo.out_c, seed + 1, -1.0, 1.0);
        // The weight's rounding rows are zero in a model.
        wh[geo.kernel * geo.kernel * geo.in_c * geo.out_c..]
            .iter_mut()
            .for_each(|v| *v = 0.0);
        let dyh = rand_vec(rows * geo.out_c, seed + 2, -1.0, 1.0);
        let cols: Vec<f64> = (0..rows * kc).map(|i| patch_f64(geo, &xh, i / kc, i % kc)).collect();
        let forward: Vec<f64> = (0..rows * geo.out_c)
            .map(|i| {
                (0..kc)
                    .map(|j| cols[i / geo.out_c * kc + j] * wh[j * geo.out_c + i % geo.out_c] as f64)
                    .sum()
            })
            .collect();
        let wgrad: Vec<f64> = (0..kc * geo.out_c)
            .map(|i| {
                (0..rows)
                    .map(|p| cols[p * kc + i / geo.out_c] * dyh[p * geo.out_c + i % geo.out_c] as f64)
                    .sum()
            })
            .collect();
        let bgrad: Vec<f64> = (0..geo.out_c)
            .map(|o| (0..rows).map(|p| dyh[p * geo.out_c + o] as f64).sum())
            .collect();
        // dX = the adjoint of X ↦ patches(X)·W at dY: scatter dY·Wᵀ back through the patches.
        let mut dgrad = vec![0.0f64; geo.in_len()];
        for p in 0..rows {
            for j in 0..geo.kernel * geo.kernel * geo.in_c {
                // The element of X that patch entry (p, j) reads.
                let (t, c) = (j / geo.in_c, j % geo.in_c);
                let plane = geo.out_h * geo.out_w;
                let (b, oy, ox) = (p / plane, p % plane / geo.out_w, p % geo.out_w);
                let iy = (oy * geo.stride + t / geo.kernel) as isize - geo.pad as isize;
                let ix = (ox * geo.stride + t % geo.kernel) as isize - geo.pad as isize;
                if iy < 0 || ix < 0 || iy >= geo.in_h as isize || ix >= geo.in_w as isize {
                    continue;
                }
                let at = ((b * geo.in_h + iy as usize) * geo.in_w + ix as usize) * geo.in_c + c;
                dgrad[at] += (0..geo.out_c)
                    .map(|o| dyh[p * geo.out_c + o] as f64 * wh[j * geo.out_c + o] as f64)
                    .sum::<f64>();
            }
        }
        let x = g.upload("x", &[geo.in_len()], &xh).unwrap();
        let w = g.upload("w", &[kc, geo.out_c], &wh).unwrap();
        let dy = g.upload("dy", &[rows, geo.out_c], &dyh).unwrap();
        let terms = (kc.max(rows)) as f64;
        for st in crate::kernels::strategies(g) {
            let what = |p: &str| format!("{p} {geo:?} {st:?}");
            let run = |product: ConvProduct, a: &Tensor, b: &Tensor, c: &Tensor, epi: &Epilogue<'_>| {
                match ops::conv_matmul(g, "conv", product, geo, a, b, c, epi, Some(st)) {
                    Ok(d) => {
                        g.run(&[&d]).unwrap();
                        true
                    }
                    // The vec4 strategies refuse channel counts they cannot read whole.
                    Err(VaeError::Shape(_)) if st != MatmulStrategy::Naive => false,
                    Err(e) => panic!("{}: {e}", what("planning")),
                }
            };
            let y = g.tensor("y", &[rows, geo.out_c]).unwrap();
            if run(ConvProduct::Forward, &x, &w, &y, &Epilogue::default()) {
                assert_close(&what("forward"), &g.read(&y).unwrap(), &forward, |_| 1e-6 * terms);
            }
            let dw = g.tensor("dw", &[kc, geo.out_c]).unwrap();
            let db = g.tensor("db", &[geo.out_c]).unwrap();
            let epi = Epilogue {
                colsum: Some(&db),
                ..Default::default()
            };
            if run(ConvProduct::WeightGrad, &x, &dy, &dw, &epi) {
                assert_close(&what("weight gradient"), &g.read(&dw).unwrap(), &wgrad, |_| {
                    1e-6 * terms
                });
                assert_close(&what("bias gradient"), &g.read(&db).unwrap(), &bgrad, |_| 1e-6 * terms);
            }
            if ConvProduct::input_grad_fits(geo) {
                let dx = g.upload("dx", &[geo.in_len()], &vec![f32::NAN; geo.in_len()]).unwrap();
                if run(ConvProduct::InputGrad, &dy, &w, &dx, &Epilogue::default()) {
                    assert_close(&what("input gradient"), &g.read(&dx).unwrap(), &dgrad, |_| 1e-6 * terms);
                }
            }
        }
    }
}
