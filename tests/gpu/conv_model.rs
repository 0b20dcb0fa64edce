//! Convolutional models end to end: one planned training step on the adapter against an f64
//! reference written in PyTorch's terms (NCHW feature maps, the checkpoint's tensors and keys,
//! `flatten` in NCHW order), every gradient against central finite differences of that
//! reference's loss. The reference reads the model only through its checkpoint, so the internal
//! layout (NHWC, weights by tap) and the checkpoint's permutations are checked with it.

use std::collections::HashMap;

use vae_wgpu::internals::ops::{AdamConfig, StepParams};
use vae_wgpu::internals::Workspace;
use vae_wgpu::model::{Activation, Arch, Code, ConvArch, Likelihood, Vae, VaeConfig};
use vae_wgpu::rng;

use crate::common::gpu;
use crate::model::{assert_tensors_close, gpu_step, step_eps, train_spec, Data};
use crate::reference;

/// The checkpoint's tensors by key, in f64.
type Tensors = HashMap<String, (Vec<usize>, Vec<f64>)>;

/// PyTorch's Conv2d on NCHW `x` [n, c, h, w] with weight [co, c, k, k]: returns y and its side.
#[allow(clippy::too_many_arguments)]
fn conv2d(
    x: &[f64],
    n: usize,
    c: usize,
    (h, w): (usize, usize),
    wt: &[f64],
    bias: &[f64],
    k: usize,
    s: usize,
    p: usize,
) -> (Vec<f64>, (usize, usize)) {
    let co = bias.len();
    let (ho, wo) = ((h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1);
    let mut y = vec![0.0; n * co * ho * wo];
    for b in 0..n {
        for o in 0..co {
            for oy in 0..ho {
                for ox in 0..wo {
                    let mut acc = bias[o];
                    for i in 0..c {
                        for ky in 0..k {
                            for kx in 0..k {
                                let (iy, ix) =
                                    ((oy * s + ky) as isize - p as isize, (ox * s + kx) as isize - p as isize);
                                if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                                    acc += x[((b * c + i) * h + iy as usize) * w + ix as usize]
                                        * wt[((o * c + i) * k + ky) * k + kx];
                                }
                            }
                        }
                    }
                    y[((b * co + o) * ho + oy) * wo + ox] = acc;
                }
            }
        }
    }
    (y, (ho, wo))
}

/// PyTorch's ConvTranspose2d on NCHW `x` [n, c, h, w] with weight [c, co, k, k]: every input
/// pixel scattered through the kernel.
#[allow(clippy::too_many_arguments)]
fn conv_transpose2d(
    x: &[f64],
    n: usize,
    c: usize,
    (h, w): (usize, usize),
    wt: &[f64],
    bias: &[f64],
    k: usize,
    s: usize,
    p: usize,
) -> (Vec<f64>, (usize, usize)) {
    let co = bias.len();
    let (ho, wo) = ((h - 1) * s + k - 2 * p, (w - 1) * s + k - 2 * p);
    let mut y = vec![0.0; n * co * ho * wo];
    for b in 0..n {
        for o in 0..co {
            for v in &mut y[(b * co + o) * ho * wo..(b * co + o + 1) * ho * wo] {
                *v = bias[o];
            }
        }
        for i in 0..c {
            for iy in 0..h {
                for ix in 0..w {
                    let xv = x[((b * c + i) * h + iy) * w + ix];
                    for o in 0..co {
                        for ky in 0..k {
                            for kx in 0..k {
                                let (oy, ox) =
                                    ((iy * s + ky) as isize - p as isize, (ix * s + kx) as isize - p as isize);
                                if oy >= 0 && ox >= 0 && (oy as usize) < ho && (ox as usize) < wo {
                                    y[((b * co + o) * ho + oy as usize) * wo + ox as usize] +=
                                        xv * wt[((i * co + o) * k + ky) * k + kx];
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    (y, (ho, wo))
}

/// nn.Linear: x [rows, in] · Wᵀ + b with W [out, in].
fn linear(x: &[f64], wt: &[f64], bias: &[f64]) -> Vec<f64> {
    let (out, inp) = (bias.len(), wt.len() / bias.len());
    x.chunks_exact(inp)
        .flat_map(|row| (0..out).map(move |o| bias[o] + (0..inp).map(|i| row[i] * wt[o * inp + i]).sum::<f64>()))
        .collect()
}

fn apply(a: Activation, v: Vec<f64>) -> Vec<f64> {
    v.into_iter().map(|x| reference::act(a, x)).collect()
}

/// What the step computes, per the reference: Σ_b mean over draws of the NLL, and the KL (or
/// the code's penalty) column.
struct Totals {
    nll: f64,
    kl: f64,
}

/// The forward pass of a convolutional model in PyTorch's terms for the batch `x` [b, C·H·W]
/// (NCHW, which for C = 1 is the row-major image), its `labels`, and ε [L, b, Z].
fn forward(cfg: &VaeConfig, t: &Tensors, x: &[f64], labels: &[u32], eps: &[f64], samples: usize) -> Totals {
    let Arch::Conv(arch) = &cfg.arch else {
        panic!("a convolutional model")
    };
    let get = |k: &str| &t.get(k).unwrap_or_else(|| panic!("checkpoint lacks {k}")).1;
    let (k, s, p) = (4, 2, 1);
    let b = x.len() / cfg.input_dim;
    let [c0, h0, w0] = arch.input;
    let vq = matches!(cfg.code, Code::Quantized { .. });
    // Encoder convolutions.
    let (mut h, mut c, mut side) = (x.to_vec(), c0, (h0, w0));
    let nconv = arch.channels.len();
    for i in 0..nconv {
        let (y, next) = conv2d(
            &h,
            b,
            c,
            side,
            get(&format!("enc_conv.{i}.weight")),
            get(&format!("enc_conv.{i}.bias")),
            k,
            s,
            p,
        );
        let act = if vq && i == nconv - 1 {
            Activation::Identity
        } else {
            cfg.activation
        };
        h = apply(act, y);
        c = arch.channels[i];
        side = next;
    }
    let feature = c * side.0 * side.1;
    let decode = |zin: &[f64], rows: usize| -> Vec<f64> {
        let mut d = zin.to_vec();
        if !vq {
            for i in 0..=cfg.hidden.len() {
                d = apply(
                    cfg.activation,
                    linear(&d, get(&format!("dec_fc.{i}.weight")), get(&format!("dec_fc.{i}.bias"))),
                );
            }
        }
        // d is [rows, C', H', W'] in NCHW order.
        let (mut c, mut side) = (arch.channels[nconv - 1], side);
        for i in 0..nconv {
            let wt = get(&format!("dec_conv.{i}.weight"));
            let bias = get(&format!("dec_conv.{i}.bias"));
            let (y, next) = conv_transpose2d(&d, rows, c, side, wt, bias, k, s, p);
            d = if i == nconv - 1 { y } else { apply(cfg.activation, y) };
            c = bias.len();
            side = next;
        }
        d
    };
    let nll_of = |out: &[f64], rows: usize| -> f64 {
        (0..rows)
            .map(|r| {
                let e = r % b;
                reference::nll_row(
                    cfg.likelihood,
                    &out[r * cfg.input_dim..(r + 1) * cfg.input_dim],
                    &x[e * cfg.input_dim..(e + 1) * cfg.input_dim],
                )
            })
            .sum::<f64>()
            / samples as f64
    };
    if let Code::Quantized { commitment, .. } = cfg.code {
        // One code per cell: the channel vector h[:, y, x] against each codebook entry.
        let book = get("codebook");
        let plane = side.0 * side.1;
        let mut zq = h.clone();
        let mut penalty = 0.0;
        for e in 0..b {
            for cell in 0..plane {
                let v: Vec<f64> = (0..c).map(|ch| h[(e * c + ch) * plane + cell]).collect();
                let (best, dist) = book
                    .chunks_exact(c)
                    .map(|entry| entry.iter().zip(&v).map(|(a, b)| (a - b) * (a - b)).sum::<f64>())
                    .enumerate()
                    .fold((0, f64::INFINITY), |m, (i, d)| if d < m.1 { (i, d) } else { m });
                for ch in 0..c {
                    zq[(e * c + ch) * plane + cell] = book[best * c + ch];
                }
                penalty += dist;
            }
        }
        let scale = cfg.input_dim as f64 / cfg.latent as f64;
        let out = decode(&zq, b);
        return Totals {
            nll: nll_of(&out, b),
            kl: scale * (1.0 + commitment as f64) * penalty,
        };
    }
    // Dense layers to the head, the one-hot after the flattened map (NCHW order).
    let mut d = if cfg.classes > 0 {
        reference::with_one_hot(&h, feature, labels, cfg.dense_input_dim())
    } else {
        h
    };
    for i in 0..cfg.hidden.len() {
        d = apply(
            cfg.activation,
            linear(&d, get(&format!("enc_fc.{i}.weight")), get(&format!("enc_fc.{i}.bias"))),
        );
    }
    let z = cfg.latent;
    let mu = linear(&d, get("mu.weight"), get("mu.bias"));
    let lv: Vec<f64> = linear(&d, get("logvar.weight"), get("logvar.bias"))
        .into_iter()
        .map(|v| v.clamp(-30.0, 20.0))
        .collect();
    let kl: f64 = (0..b * z)
        .map(|i| -0.5 * (1.0 + lv[i] - mu[i] * mu[i] - lv[i].exp()))
        .sum();
    let rows = samples * b;
    let draws: Vec<f64> = (0..rows * z)
        .map(|i| {
            let j = i % (b * z);
            mu[j] + (0.5 * lv[j]).exp() * eps[i]
        })
        .collect();
    let zin = if cfg.classes > 0 {
        let per_row: Vec<u32> = (0..rows).map(|r| labels[r % b]).collect();
        reference::with_one_hot(&draws, z, &per_row, cfg.dec_input_dim())
    } else {
        draws
    };
    let out = decode(&zin, rows);
    Totals {
        nll: nll_of(&out, rows),
        kl,
    }
}

/// A model's checkpoint tensors (PyTorch's layouts) in f64.
fn tensors(vae: &Vae) -> Tensors {
    vae.checkpoint_tensors(gpu())
        .unwrap()
        .into_iter()
        .map(|t| (t.name, (t.shape, t.data.iter().map(|&v| v as f64).collect())))
        .collect()
}

fn conv_config(activation: Activation, likelihood: Likelihood, classes: usize, code: Code) -> VaeConfig {
    let vq = matches!(code, Code::Quantized { .. });
    // Channels in fours take the vec4 paths; the VQ-VAE's 3 take the scalar ones (and make its
    // feature map 3×2×2: 4 codes of 3 values).
    VaeConfig {
        input_dim: 64,
        hidden: if vq { vec![] } else { vec![8] },
        latent: if vq { 12 } else { 4 },
        activation,
        likelihood,
        classes,
        code,
        arch: Arch::Conv(ConvArch {
            input: [1, 8, 8],
            channels: if vq { vec![4, 3] } else { vec![4, 8] },
        }),
    }
}

/// One step at lr = 0 against the reference: the metric row, and every gradient the loss has
/// (all of them for a VAE; a VQ-VAE's decoder, whose gradient is the loss's own) against
/// finite differences.
fn check(name: &str, cfg: VaeConfig, samples: usize, seed: u64) {
    let g = gpu();
    let b = 3;
    let vae = Vae::new(g, cfg.clone(), seed).unwrap();
    assert_eq!(vae.num_params(), cfg.num_params(), "{name}: parameter count");
    let data = Data::new(g, b + 2, cfg.input_dim, seed + 1);
    let ws = Workspace::new(g, &vae, &train_spec(b, samples, false, None)).unwrap();
    let sp = StepParams {
        seed: 300 + seed as u32,
        step: 5,
        batch_start: 1,
        stream: rng::STREAM_TRAIN,
        kl_beta: 1.0,
        ..Default::default()
    };
    let frozen = AdamConfig {
        lr: 0.0,
        ..Default::default()
    };
    let res = gpu_step(g, &vae, &ws, b, &data, sp, &frozen);
    let params = tensors(&vae);
    // The gradients in the checkpoint's layout: written over the parameters and read back
    // through the same permutations.
    vae.arena.write_params(g, &res.grads).unwrap();
    let grads = tensors(&vae);

    let x = data.batch_x(1, b);
    let labels = data.batch_labels(1, b);
    let eps = step_eps(&sp, samples, b, cfg.latent);
    let totals = forward(&cfg, &params, &x, &labels, &eps, samples);
    for (what, got, want) in [
        ("reconstruction", res.totals[0], totals.nll),
        ("KL", res.totals[1], totals.kl),
    ] {
        assert!(
            (got - want).abs() <= 1e-5 * want.abs() + 1e-5,
            "{name}: logged {what} {got} vs reference {want}"
        );
    }
    let vq = matches!(cfg.code, Code::Quantized { .. });
    let mut keys: Vec<&String> = params.keys().filter(|k| !vq || k.starts_with("dec_")).collect();
    keys.sort();
    let loss = |t: &Tensors| {
        let f = forward(&cfg, t, &x, &labels, &eps, samples);
        f.nll + f.kl
    };
    let h = 1e-5;
    let mut fd = Vec::new();
    for key in &keys {
        let mut t = params.clone();
        let n = params[*key].1.len();
        fd.push(
            (0..n)
                .map(|i| {
                    let keep = params[*key].1[i];
                    t.get_mut(*key).unwrap().1[i] = keep + h;
                    let up = loss(&t);
                    t.get_mut(*key).unwrap().1[i] = keep - h;
                    let down = loss(&t);
                    t.get_mut(*key).unwrap().1[i] = keep;
                    (up - down) / (2.0 * h)
                })
                .collect::<Vec<f64>>(),
        );
    }
    let got: Vec<Vec<f64>> = keys.iter().map(|k| grads[*k].1.clone()).collect();
    let names: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
    assert_tensors_close(
        &format!("{name}: GPU vs finite differences"),
        &names,
        &got,
        &fd,
        1e-4,
        1e-6,
    );
}

#[test]
fn conv_vae_step_matches_the_reference() {
    check(
        "conv VAE, tanh, Bernoulli, 2 draws",
        conv_config(Activation::Tanh, Likelihood::Bernoulli, 0, Code::Gaussian),
        2,
        41,
    );
    check(
        "conditional conv VAE, sigmoid, Gaussian",
        conv_config(
            Activation::Sigmoid,
            Likelihood::Gaussian { variance: 0.5 },
            3,
            Code::Gaussian,
        ),
        1,
        42,
    );
}

#[test]
fn conv_vq_vae_step_matches_the_reference() {
    let code = Code::Quantized {
        codes: 6,
        groups: 4,
        commitment: 0.25,
    };
    check(
        "conv VQ-VAE, tanh",
        conv_config(Activation::Tanh, Likelihood::Bernoulli, 0, code.clone()),
        1,
        43,
    );
    // 8 channels and 2048 entries: a search of 4·2048·8 values per example takes the
    // quantization by scores (vq_forward_scored, the one-hot matmul for the codebook).
    let wide = VaeConfig {
        latent: 32,
        code: Code::Quantized {
            codes: 2048,
            groups: 4,
            commitment: 0.25,
        },
        arch: Arch::Conv(ConvArch {
            input: [1, 8, 8],
            channels: vec![4, 8],
        }),
        ..conv_config(Activation::Tanh, Likelihood::Bernoulli, 0, code)
    };
    check("conv VQ-VAE by scores, tanh", wide, 1, 44);
}

/// A convolutional checkpoint whose tensors or metadata disagree is refused naming the value
/// or the tensor, and the intact file loads bit for bit.
#[test]
fn conv_checkpoints_that_disagree_with_their_metadata_are_refused() {
    let g = gpu();
    let cfg = conv_config(Activation::Relu, Likelihood::Bernoulli, 0, Code::Gaussian);
    let vae = Vae::new(g, cfg, 7).unwrap();
    let dir = std::env::temp_dir().join(format!("vae-wgpu-conv-ckpt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("model.safetensors");
    vae.save(g, &path, &[]).unwrap();
    let st = crate::common::RawCheckpoint::read(&path);
    assert_eq!(st.metadata.get("arch").map(String::as_str), Some("conv"));
    assert_eq!(st.shape("enc_conv.1.weight"), &[8, 4, 4, 4]);
    assert_eq!(st.shape("dec_conv.0.weight"), &[8, 4, 4, 4]);

    let write = |file: &str, set: &[(&str, &str)], reshape: &str| {
        let mut meta = st.metadata.clone();
        for (key, value) in set {
            meta.insert(key.to_string(), value.to_string());
        }
        let tensors: Vec<_> = st
            .tensors
            .iter()
            .map(|(n, s, v)| {
                let s = if n == reshape {
                    vec![s.iter().product()]
                } else {
                    s.clone()
                };
                (n.clone(), s, v.clone())
            })
            .collect();
        let out = dir.join(file);
        crate::common::RawCheckpoint::write(&out, &tensors, &meta);
        out
    };
    for (file, want) in [
        // The second convolution's channels disagree with its tensors.
        (
            write("channels.safetensors", &[("conv", "4,6")], ""),
            "'enc_conv.1.weight' has shape [8, 4, 4, 4], expected [6, 4, 4, 4]",
        ),
        // An image that two halvings cannot divide.
        (
            write(
                "shape.safetensors",
                &[("input_shape", "1,6,6"), ("input_dim", "36")],
                "",
            ),
            "must divide by 4; got 6×6",
        ),
        // Channels that do not match the input's width.
        (
            write("input.safetensors", &[("input_shape", "3,8,8")], ""),
            "3×8×8 has 192 values, but input_dim is 64",
        ),
        // A weight flattened.
        (
            write("reshaped.safetensors", &[], "dec_conv.1.weight"),
            "'dec_conv.1.weight' has shape [64]",
        ),
    ] {
        match Vae::load(g, &file) {
            Err(e) => assert!(e.to_string().contains(want), "{}: {e}", file.display()),
            Ok(_) => panic!("{} loaded", file.display()),
        }
    }
    let params = vae.arena.read_params(g).unwrap();
    assert_eq!(Vae::load(g, &path).unwrap().arena.read_params(g).unwrap(), params);
    std::fs::remove_dir_all(&dir).ok();
}
