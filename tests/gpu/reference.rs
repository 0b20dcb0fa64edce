//! An f64 CPU reference of the whole VAE, for checking the GPU training step end to end.
//!
//! It shares nothing with the crate's kernels: only the parameter layout (one weight [in, out]
//! row-major and one bias [out] per dense layer, in forward order, then a learned log-variance
//! if any) and the configuration types (including the padded input widths of a conditional
//! model) are read. Everything else — forward pass, reparameterization, KL, likelihoods, analytic
//! backprop, Adam — is written out here in f64, and the analytic gradients are themselves
//! checked against central finite differences of the reference loss.

use vae_wgpu::model::{Activation, Likelihood};
use vae_wgpu::model::{Code, VaeConfig};
use vae_wgpu::train::AdamConfig;

/// Negative slope of LeakyReLU layers.
pub const LEAKY_SLOPE: f64 = 0.01;
/// Lower end of the log-variance clamp.
pub const LOGVAR_MIN: f64 = -30.0;
/// Upper end of the log-variance clamp.
pub const LOGVAR_MAX: f64 = 20.0;
/// Bounds of a learned decoder log-variance.
pub const LOG_C_MIN: f64 = -6.0;
/// Upper bound of a learned decoder log-variance.
pub const LOG_C_MAX: f64 = 6.0;

/// The shape and activation of one dense layer y = act(x·W + b).
#[derive(Clone, Debug, PartialEq)]
pub struct Dense {
    pub name: String,
    pub inputs: usize,
    pub outputs: usize,
    pub act: Activation,
}

/// The dense layers of a configuration in forward order: `encoder.i`, `encoder.head` (2Z wide:
/// μ then log σ²), `decoder.i`, `decoder.out`. Layer k owns parameter slots 2k (weight) and
/// 2k + 1 (bias).
pub fn layers(cfg: &VaeConfig) -> Vec<Dense> {
    let dense = |name: String, inputs: usize, outputs: usize, act: Activation| Dense {
        name,
        inputs,
        outputs,
        act,
    };
    let mut out = Vec::new();
    let mut width = cfg.enc_input_dim();
    for (i, &h) in cfg.hidden.iter().enumerate() {
        out.push(dense(format!("encoder.{i}"), width, h, cfg.activation));
        width = h;
    }
    // A VAE's head writes [μ | log σ²]; an autoencoder's, the code itself.
    let head = match cfg.code {
        Code::Gaussian | Code::Hierarchical(_) => 2 * cfg.latent,
        Code::Deterministic { .. } | Code::Quantized { .. } => cfg.latent,
    };
    out.push(dense("encoder.head".into(), width, head, Activation::Identity));
    let mut width = cfg.dec_input_dim();
    for (i, &h) in cfg.hidden.iter().rev().enumerate() {
        out.push(dense(format!("decoder.{i}"), width, h, cfg.activation));
        width = h;
    }
    out.push(dense("decoder.out".into(), width, cfg.input_dim, Activation::Identity));
    out
}

/// Values of a learned log-variance: one per pixel or one shared; None for other likelihoods.
pub fn log_c_len(cfg: &VaeConfig) -> Option<usize> {
    match cfg.likelihood {
        Likelihood::GaussianLearned { per_pixel: true } => Some(cfg.input_dim),
        Likelihood::GaussianLearned { per_pixel: false } => Some(1),
        _ => None,
    }
}

/// The parameter slots this reference reads, as (name, shape) in arena order.
pub fn param_slots(cfg: &VaeConfig) -> Vec<(String, Vec<usize>)> {
    let mut v: Vec<(String, Vec<usize>)> = layers(cfg)
        .iter()
        .flat_map(|l| {
            [
                (format!("{}.weight", l.name), vec![l.inputs, l.outputs]),
                (format!("{}.bias", l.name), vec![l.outputs]),
            ]
        })
        .collect();
    if let Some(n) = log_c_len(cfg) {
        v.push(("decoder.log_c".into(), vec![n]));
    }
    if let Code::Quantized { codes, groups, .. } = cfg.code {
        v.push(("codebook".into(), vec![codes, cfg.latent / groups]));
    }
    for l in top_layers(cfg) {
        v.push((format!("{}.weight", l.name), vec![l.inputs, l.outputs]));
        v.push((format!("{}.bias", l.name), vec![l.outputs]));
    }
    v
}

/// A hierarchical VAE's upper-layer networks, after every other slot, per upper layer from z₂
/// up: q(z_k|z_{k−1})'s hidden layers and head [μ_k | log σ_k²], then p(z_{k−1}|z_k)'s hidden
/// layers and head [μₚ | log σₚ²] (upper layer i's start at [`top_start`]).
pub fn top_layers(cfg: &VaeConfig) -> Vec<Dense> {
    let dense = |name: String, inputs: usize, outputs: usize, act: Activation| Dense {
        name,
        inputs,
        outputs,
        act,
    };
    let mut out = Vec::new();
    for (i, t) in cfg.top().iter().enumerate() {
        // The rows below (z₁'s as the decoder reads them, or the upper layer below's) and this
        // layer's, each with a conditional model's one-hot, zero-padded to a multiple of 4.
        let width = |latent: usize| (latent + cfg.classes).div_ceil(4) * 4;
        let (below, below_in) = if i == 0 {
            (cfg.latent, cfg.dec_input_dim())
        } else {
            (cfg.top()[i - 1].latent, width(cfg.top()[i - 1].latent))
        };
        // The arena's slot names: top.* for z₂, top.z3.* and so on above.
        let name = |part: &str| match i {
            0 => format!("top.{part}"),
            _ => format!("top.z{}.{part}", i + 2),
        };
        for (net, input, out_width) in [("up", below_in, 2 * t.latent), ("prior", width(t.latent), 2 * below)] {
            let mut w = input;
            for (j, &h) in t.hidden.iter().enumerate() {
                out.push(dense(name(&format!("{net}.{j}")), w, h, cfg.activation));
                w = h;
            }
            out.push(dense(name(&format!("{net}.head")), w, out_width, Activation::Identity));
        }
    }
    out
}

/// The index in [`top_layers`] where upper layer `i`'s networks start.
pub fn top_start(cfg: &VaeConfig, i: usize) -> usize {
    cfg.top()[..i].iter().map(|t| 2 * (t.hidden.len() + 1)).sum()
}

/// One stochastic layer of [`HierForward`], [K·B, Z_k] each: its posterior's mean and clamped
/// log-variance per draw row, its draws, and (below the top) its conditional prior's.
pub struct HierLayer {
    /// q's mean.
    pub mu: Vec<f64>,
    /// q's clamped log-variance.
    pub lv: Vec<f64>,
    /// The draws.
    pub z: Vec<f64>,
    /// p(z_k|z_{k+1})'s mean (empty for the top layer, whose prior is N(0, I)).
    pub mu_p: Vec<f64>,
    /// p(z_k|z_{k+1})'s clamped log-variance.
    pub lv_p: Vec<f64>,
}

/// A hierarchical VAE's forward pass for `b` examples `x` [B, D] and K draws, in f64: `eps1`
/// [K, B, Z] draws z₁ = μ₁ + σ₁ε (row s·B + e), `eps_up[i]` [K·B, Z_{i+2}] draws upper layer i
/// for each row below. A conditional model takes the examples' `labels` [B]: every network's
/// input gets the one-hot.
pub struct HierForward {
    /// Rows of each draw: K·B.
    pub rows: usize,
    /// The stochastic layers from z₁ up.
    pub layers: Vec<HierLayer>,
    /// The decoder's output for each draw, [K·B, D].
    pub out: Vec<f64>,
}

/// Runs [`HierForward`]: the encoder, z₁, the decoder, each q(z_k|z_{k−1}) and z_k, and each
/// p(z_{k−1}|z_k), written from the model's definition (dense layers in arena order after
/// every other slot).
#[allow(clippy::too_many_arguments)]
pub fn hier_forward(
    cfg: &VaeConfig,
    params: &[Vec<f64>],
    x: &[f64],
    labels: Option<&[u32]>,
    b: usize,
    k: usize,
    eps1: &[f64],
    eps_up: &[Vec<f64>],
) -> HierForward {
    let ls = layers(cfg);
    let tl = top_layers(cfg);
    let m = cfg.hidden.len();
    let zd = cfg.latent;
    assert!(
        !cfg.top().is_empty() && eps_up.len() == cfg.top().len(),
        "a hierarchical configuration and its noise"
    );
    let top_slot = 2 * ls.len() + usize::from(log_c_len(cfg).is_some());
    let p = |slot: usize| (&params[slot][..], &params[slot + 1][..]);
    let rows = k * b;
    // A Gaussian head [rows_in, 2W] drawn with `eps` [rows, W], row r from head row r % rows_in.
    let gaussian = |head: &[f64], width: usize, eps: &[f64]| {
        let rows_in = head.len() / (2 * width);
        let mut layer = HierLayer {
            mu: vec![],
            lv: vec![],
            z: vec![],
            mu_p: vec![],
            lv_p: vec![],
        };
        for r in 0..rows {
            for j in 0..width {
                let e = r % rows_in;
                let (l, sigma, _) = log_variance(head[e * 2 * width + width + j]);
                let u = head[e * 2 * width + j];
                layer.mu.push(u);
                layer.lv.push(l);
                layer.z.push(u + sigma * eps[r * width + j]);
            }
        }
        layer
    };
    // [v | one-hot(y) | 0…] for a conditional model, v zero-padded to `width` otherwise.
    let labelled = |v: &[f64], dim: usize, width: usize| match labels {
        Some(y) => with_one_hot(v, dim, y, width),
        None => zero_padded(v, dim, width),
    };
    assert_eq!(
        labels.is_some(),
        cfg.classes > 0,
        "labels exactly for a conditional model"
    );
    let mut h = labelled(x, cfg.input_dim, cfg.enc_input_dim());
    for (j, layer) in ls.iter().enumerate().take(m + 1) {
        let (w, bias) = p(2 * j);
        h = dense_forward(layer, &h, b, w, bias).1;
    }
    let mut levels = vec![gaussian(&h, zd, eps1)];
    let z1_in = labelled(&levels[0].z, zd, cfg.dec_input_dim());
    let mut out = z1_in.clone();
    for (j, layer) in ls.iter().enumerate().skip(m + 1) {
        let (w, bias) = p(2 * j);
        out = dense_forward(layer, &out, rows, w, bias).1;
    }
    // A chain of dense layers [first, first + count) of `tl` on `x`.
    let chain = |first: usize, count: usize, x: &[f64]| {
        let mut h = x.to_vec();
        for (j, layer) in tl.iter().enumerate().skip(first).take(count) {
            let (w, bias) = p(top_slot + 2 * j);
            h = dense_forward(layer, &h, rows, w, bias).1;
        }
        h
    };
    // Up the layers: q(z_{i+2}|z_{i+1}) from the rows below, and the draws.
    let mut below_in = z1_in;
    for (i, t) in cfg.top().iter().enumerate() {
        let (start, m) = (top_start(cfg, i), t.hidden.len());
        let q = chain(start, m + 1, &below_in);
        let layer = gaussian(&q, t.latent, &eps_up[i]);
        below_in = labelled(&layer.z, t.latent, tl[start + m + 1].inputs);
        levels.push(layer);
    }
    // Each conditional prior p(z_{i+1}|z_{i+2}) at the drawn z_{i+2}.
    for (i, t) in cfg.top().iter().enumerate() {
        let (start, m) = (top_start(cfg, i), t.hidden.len());
        let prior = start + m + 1;
        let z_in = labelled(&levels[i + 1].z, t.latent, tl[prior].inputs);
        let pp = chain(prior, m + 1, &z_in);
        let below = tl[prior + m].outputs / 2;
        for r in 0..rows {
            for j in 0..below {
                levels[i].mu_p.push(pp[r * 2 * below + j]);
                levels[i].lv_p.push(log_variance(pp[r * 2 * below + below + j]).0);
            }
        }
    }
    HierForward {
        rows,
        layers: levels,
        out,
    }
}

/// A hierarchical VAE's loss terms for one batch `x` [B, D] with K draws (noise as in
/// [`hier_forward`]), each averaged over the draws: recon = −Σ log p(x|z₁); kl = Σ over the
/// layers below the top of [E_q log q(z_k|·) − log p(z_k|z_{k+1})], with q's entropy in closed
/// form and the conditional prior at the drawn values, plus the top layer's
/// KL(q ‖ N(0, I)) in closed form. The trained objective is recon + β·kl; its gradient is
/// checked by finite differences.
#[allow(clippy::too_many_arguments)]
pub fn hier_losses(
    cfg: &VaeConfig,
    params: &[Vec<f64>],
    x: &[f64],
    labels: Option<&[u32]>,
    b: usize,
    k: usize,
    eps1: &[f64],
    eps_up: &[Vec<f64>],
) -> (f64, f64) {
    let f = hier_forward(cfg, params, x, labels, b, k, eps1, eps_up);
    let d = cfg.input_dim;
    let recon: f64 = (0..f.rows)
        .map(|r| {
            let e = r % b;
            nll_row(cfg.likelihood, &f.out[r * d..(r + 1) * d], &x[e * d..(e + 1) * d])
        })
        .sum();
    let top = f.layers.last().expect("layers");
    let mut kl: f64 = (0..top.mu.len())
        .map(|i| 0.5 * (top.lv[i].exp() + top.mu[i] * top.mu[i] - 1.0 - top.lv[i]))
        .sum();
    // −H[q(z_k|·)] − log N(z_k; μₚ, σₚ²), 2π cancelling.
    for layer in &f.layers[..f.layers.len() - 1] {
        kl += (0..layer.z.len())
            .map(|i| {
                let entropy = 0.5 * (1.0 + layer.lv[i]);
                let dz = layer.z[i] - layer.mu_p[i];
                -entropy + 0.5 * (layer.lv_p[i] + dz * dz * (-layer.lv_p[i]).exp())
            })
            .sum::<f64>();
    }
    (recon / k as f64, kl / k as f64)
}

/// The weight of a VQ-VAE's codebook and commitment terms: D/Z, so that they stand to the
/// pixel-summed reconstruction as the VQ-VAE paper's per-value means stand to its per-pixel mean.
fn vq_weight(cfg: &VaeConfig) -> f64 {
    cfg.input_dim as f64 / cfg.latent as f64
}

/// The slot of a VQ-VAE's codebook in `params` (after the layers and any log c).
fn codebook_slot(cfg: &VaeConfig) -> usize {
    2 * layers(cfg).len() + usize::from(log_c_len(cfg).is_some())
}

/// Rows of `v` ([rows, width]) followed by the one-hot of each row's label and zeros, to
/// `padded` columns: a conditional model's layer input.
pub fn with_one_hot(v: &[f64], width: usize, labels: &[u32], padded: usize) -> Vec<f64> {
    let rows = v.len() / width;
    let mut out = vec![0.0; rows * padded];
    for r in 0..rows {
        out[r * padded..r * padded + width].copy_from_slice(&v[r * width..(r + 1) * width]);
        out[r * padded + width + labels[r % labels.len()] as usize] = 1.0;
    }
    out
}

/// Rows of `v` ([rows, width]) followed by zeros to `padded` columns.
pub fn zero_padded(v: &[f64], width: usize, padded: usize) -> Vec<f64> {
    v.chunks_exact(width)
        .flat_map(|r| r.iter().copied().chain(std::iter::repeat_n(0.0, padded - width)))
        .collect()
}

/// The activation function.
pub fn act(a: Activation, x: f64) -> f64 {
    match a {
        Activation::Identity => x,
        Activation::Relu => x.max(0.0),
        Activation::LeakyRelu => {
            if x > 0.0 {
                x
            } else {
                LEAKY_SLOPE * x
            }
        }
        Activation::Tanh => x.tanh(),
        Activation::Sigmoid => sigmoid(x),
    }
}

/// The derivative of the activation at the pre-activation `x`.
pub fn act_grad(a: Activation, x: f64) -> f64 {
    match a {
        Activation::Identity => 1.0,
        Activation::Relu => {
            if x > 0.0 {
                1.0
            } else {
                0.0
            }
        }
        Activation::LeakyRelu => {
            if x > 0.0 {
                1.0
            } else {
                LEAKY_SLOPE
            }
        }
        Activation::Tanh => 1.0 - x.tanh().powi(2),
        Activation::Sigmoid => sigmoid(x) * (1.0 - sigmoid(x)),
    }
}

/// The logistic function, without overflow for large |x|.
pub fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let t = x.exp();
        t / (1.0 + t)
    }
}

/// log(1 + eˣ), without overflow for large x.
pub fn softplus(x: f64) -> f64 {
    x.max(0.0) + (-x.abs()).exp().ln_1p()
}

/// Dense forward for `rows` rows of x [rows, in]: returns (pre-activation, activation), both
/// [rows, out]. `w` is [in, out] row-major.
pub fn dense_forward(layer: &Dense, x: &[f64], rows: usize, w: &[f64], b: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let (n_in, n_out) = (layer.inputs, layer.outputs);
    assert_eq!(x.len(), rows * n_in, "{}: input size", layer.name);
    assert_eq!(
        (w.len(), b.len()),
        (n_in * n_out, n_out),
        "{}: parameter sizes",
        layer.name
    );
    let mut pre = vec![0.0; rows * n_out];
    for r in 0..rows {
        for o in 0..n_out {
            let mut s = b[o];
            for i in 0..n_in {
                s += x[r * n_in + i] * w[i * n_out + o];
            }
            pre[r * n_out + o] = s;
        }
    }
    let y = pre.iter().map(|&p| act(layer.act, p)).collect();
    (pre, y)
}

/// Dense backward from the gradient w.r.t. the pre-activation `dpre` [rows, out]: returns
/// (dW [in, out], db [out], dx [rows, in]), dx w.r.t. the layer's input as it was fed in
/// (before multiplying by the derivative of whatever activation produced it).
pub fn dense_backward(
    layer: &Dense,
    x: &[f64],
    rows: usize,
    w: &[f64],
    dpre: &[f64],
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (n_in, n_out) = (layer.inputs, layer.outputs);
    let mut dw = vec![0.0; n_in * n_out];
    let mut db = vec![0.0; n_out];
    let mut dx = vec![0.0; rows * n_in];
    for r in 0..rows {
        for o in 0..n_out {
            let g = dpre[r * n_out + o];
            db[o] += g;
            for i in 0..n_in {
                dw[i * n_out + o] += x[r * n_in + i] * g;
                dx[r * n_in + i] += g * w[i * n_out + o];
            }
        }
    }
    (dw, db, dx)
}

/// The clamped learned log c of pixel `d`, and whether the clamp was inactive.
fn log_c_at(log_c: &[f64], d: usize) -> (f64, bool) {
    let raw = if log_c.len() == 1 { log_c[0] } else { log_c[d] };
    (raw.clamp(LOG_C_MIN, LOG_C_MAX), (LOG_C_MIN..=LOG_C_MAX).contains(&raw))
}

/// The reconstruction NLL of one row: Bernoulli with logits `out`, or Gaussian with means
/// `out` and fixed variance c, or with the learned `log_c` (one per pixel or one shared).
pub fn nll_row(lik: Likelihood, out: &[f64], x: &[f64]) -> f64 {
    nll_row_learned(lik, out, x, &[])
}

/// [`nll_row`] with the learned log-variance values.
pub fn nll_row_learned(lik: Likelihood, out: &[f64], x: &[f64], log_c: &[f64]) -> f64 {
    match lik {
        Likelihood::GaussianLearned { .. } => out
            .iter()
            .zip(x)
            .enumerate()
            .map(|(d, (&m, &t))| {
                let (lc, _) = log_c_at(log_c, d);
                0.5 * (std::f64::consts::TAU.ln() + lc + (t - m).powi(2) * (-lc).exp())
            })
            .sum(),
        Likelihood::Bernoulli => out.iter().zip(x).map(|(&l, &t)| softplus(l) - t * l).sum(),
        Likelihood::Gaussian { variance } => {
            let c = variance as f64;
            let half_log = 0.5 * (std::f64::consts::TAU * c).ln();
            out.iter()
                .zip(x)
                .map(|(&m, &t)| (t - m).powi(2) / (2.0 * c) + half_log)
                .sum()
        }
    }
}

/// ∂NLL/∂out for one output element (pixel `d`).
pub fn nll_grad(lik: Likelihood, out: f64, x: f64, log_c: &[f64], d: usize) -> f64 {
    match lik {
        Likelihood::Bernoulli => sigmoid(out) - x,
        Likelihood::Gaussian { variance } => (out - x) / variance as f64,
        Likelihood::GaussianLearned { .. } => (out - x) * (-log_c_at(log_c, d).0).exp(),
    }
}

/// One batch and its noise: x [B, D] in [0, 1], ε [L, B, Z] (row s·B + b is sample s of
/// example b, as the GPU stacks z), the KL weight β, (conditional models) the labels [B], and
/// (denoising) the encoder's corrupted input [B, D] in place of x.
pub struct Batch<'a> {
    pub x: &'a [f64],
    pub x_in: Option<&'a [f64]>,
    pub batch: usize,
    pub eps: &'a [f64],
    pub samples: usize,
    pub beta: f64,
    pub labels: Option<&'a [u32]>,
}

/// Every intermediate of the forward pass, kept for backprop.
pub struct Forward {
    /// Encoder hidden layers: pre-activations and activations, [B, h] each.
    pub enc_pre: Vec<Vec<f64>>,
    pub enc_act: Vec<Vec<f64>>,
    /// The head's output [B, 2Z]: μ then the raw (unclamped) log σ² (autoencoder: the code [B, Z]).
    pub enc: Vec<f64>,
    /// z [L·B, Z].
    pub z: Vec<f64>,
    /// The decoder's input [L·B, Z']: z, or z with the one-hot label (conditional).
    pub dec_in: Vec<f64>,
    /// The encoder's input [B, D']: x, or x with the one-hot label (conditional).
    pub enc_in: Vec<f64>,
    /// Decoder hidden layers, [L·B, h] each.
    pub dec_pre: Vec<Vec<f64>>,
    pub dec_act: Vec<Vec<f64>>,
    /// Decoder output [L·B, D]: logits or means.
    pub out: Vec<f64>,
    /// NLL per row [L·B].
    pub nll: Vec<f64>,
    /// KL(q(z|x) ‖ N(0, I)) per example [B] (autoencoder: l1·Σ_j |z_j|).
    pub kl: Vec<f64>,
    /// A VQ-VAE's codebook entry for each of the B·G code vectors.
    pub vq_index: Vec<usize>,
}

/// The per-example terms and the loss the GPU differentiates.
#[derive(Clone, Debug)]
pub struct Losses {
    /// NLL per example, averaged over the L samples [B].
    pub nll: Vec<f64>,
    /// KL per example [B].
    pub kl: Vec<f64>,
    /// Σ_b [ (1/L) Σ_s NLL(b, s) + β·KL(b) ].
    pub loss: f64,
}

/// The clamped log-variance, σ and whether the clamp was inactive, from a raw head output.
fn log_variance(raw: f64) -> (f64, f64, bool) {
    let lv = raw.clamp(LOGVAR_MIN, LOGVAR_MAX);
    (lv, (0.5 * lv).exp(), (LOGVAR_MIN..=LOGVAR_MAX).contains(&raw))
}

/// The forward pass: encoder, reparameterization z = μ + σ·ε, closed-form KL, decoder, NLL.
pub fn forward(cfg: &VaeConfig, params: &[Vec<f64>], batch: &Batch<'_>) -> Forward {
    let ls = layers(cfg);
    let extra = usize::from(log_c_len(cfg).is_some());
    let vq = usize::from(matches!(cfg.code, Code::Quantized { .. }));
    assert_eq!(
        params.len(),
        2 * ls.len() + extra + vq,
        "one weight and one bias per layer, then log c"
    );
    let (b, l, zd, d) = (batch.batch, batch.samples, cfg.latent, cfg.input_dim);
    let m = cfg.hidden.len();
    assert_eq!(batch.x.len(), b * d, "x is [B, D]");
    assert_eq!(batch.eps.len(), l * b * zd, "ε is [L, B, Z]");
    let log_c: &[f64] = if extra == 1 { &params[2 * ls.len()] } else { &[] };
    let x_in = batch.x_in.unwrap_or(batch.x);
    assert_eq!(x_in.len(), b * d, "the encoder's input is [B, D]");
    let enc_in = match (cfg.classes, batch.labels) {
        (0, _) => x_in.to_vec(),
        (_, Some(y)) => with_one_hot(x_in, d, y, cfg.enc_input_dim()),
        (_, None) => panic!("a conditional model needs labels"),
    };
    let (mut enc_pre, mut enc_act) = (Vec::new(), Vec::new());
    let mut h = enc_in.clone();
    for (k, layer) in ls.iter().enumerate().take(m) {
        let (pre, y) = dense_forward(layer, &h, b, &params[2 * k], &params[2 * k + 1]);
        enc_pre.push(pre);
        enc_act.push(y.clone());
        h = y;
    }
    let (enc, _) = dense_forward(&ls[m], &h, b, &params[2 * m], &params[2 * m + 1]);

    let mut z = vec![0.0; l * b * zd];
    let mut kl = vec![0.0; b];
    if let Code::Deterministic { contractive, .. } = cfg.code {
        if contractive > 0.0 {
            for (e, j) in contractive_jacobians(cfg, params, &enc_pre).iter().enumerate() {
                kl[e] += contractive as f64 * j.iter().map(|v| v * v).sum::<f64>();
            }
        }
    }
    if let Code::Deterministic { l1, .. } = cfg.code {
        // The code is the head's output; its penalty stands where the KL stands.
        assert_eq!(l, 1, "an autoencoder takes one sample");
        assert_eq!(
            batch.beta, 1.0,
            "an autoencoder has no β: its penalty enters with weight 1"
        );
        z.copy_from_slice(&enc);
        for e in 0..b {
            kl[e] += l1 as f64 * enc[e * zd..(e + 1) * zd].iter().map(|v| v.abs()).sum::<f64>();
        }
    }
    // VQ-VAE: each group of d = Z/G values becomes its nearest codebook entry (the first on
    // ties), and (D/Z)(1 + β)‖z_e − e‖² stands where the KL stands.
    let mut vq_index = Vec::new();
    if let Code::Quantized { groups, commitment, .. } = cfg.code {
        assert_eq!((l, batch.beta), (1, 1.0), "a VQ-VAE takes one sample and no β");
        let book = &params[codebook_slot(cfg)];
        let d = zd / groups;
        for e in 0..b {
            for g in 0..groups {
                let ze = &enc[e * zd + g * d..e * zd + (g + 1) * d];
                let dist = |k: usize| {
                    ze.iter()
                        .zip(&book[k * d..(k + 1) * d])
                        .map(|(a, c)| (a - c) * (a - c))
                        .sum::<f64>()
                };
                let k = (0..book.len() / d).fold(0, |best, k| if dist(k) < dist(best) { k } else { best });
                vq_index.push(k);
                z[e * zd + g * d..e * zd + (g + 1) * d].copy_from_slice(&book[k * d..(k + 1) * d]);
                kl[e] += vq_weight(cfg) * (1.0 + commitment as f64) * dist(k);
            }
        }
    }
    for e in 0..b {
        if !cfg.is_vae() {
            break;
        }
        for j in 0..zd {
            let mu = enc[e * 2 * zd + j];
            let (lv, sigma, _) = log_variance(enc[e * 2 * zd + zd + j]);
            for s in 0..l {
                let i = (s * b + e) * zd + j;
                z[i] = mu + sigma * batch.eps[i];
            }
            kl[e] += 0.5 * (sigma * sigma + mu * mu - 1.0 - lv);
        }
    }

    let r = l * b;
    let dec_in = match batch.labels {
        Some(y) if cfg.classes > 0 => with_one_hot(&z, zd, y, cfg.dec_input_dim()),
        _ => z.clone(),
    };
    let (mut dec_pre, mut dec_act) = (Vec::new(), Vec::new());
    let mut h = dec_in.clone();
    for k in m + 1..=2 * m {
        let (pre, y) = dense_forward(&ls[k], &h, r, &params[2 * k], &params[2 * k + 1]);
        dec_pre.push(pre);
        dec_act.push(y.clone());
        h = y;
    }
    let k_out = 2 * m + 1;
    let (out, _) = dense_forward(&ls[k_out], &h, r, &params[2 * k_out], &params[2 * k_out + 1]);
    let nll = (0..r)
        .map(|row| {
            let e = row % b;
            nll_row_learned(
                cfg.likelihood,
                &out[row * d..(row + 1) * d],
                &batch.x[e * d..(e + 1) * d],
                log_c,
            )
        })
        .collect();
    Forward {
        enc_pre,
        enc_act,
        enc,
        z,
        dec_in,
        enc_in,
        dec_pre,
        dec_act,
        out,
        nll,
        kl,
        vq_index,
    }
}

/// The per-example NLL (mean over samples), KL, and the batch-summed loss of a forward pass.
pub fn losses(fwd: &Forward, batch: &Batch<'_>) -> Losses {
    let (b, l) = (batch.batch, batch.samples);
    let nll: Vec<f64> = (0..b)
        .map(|e| (0..l).map(|s| fwd.nll[s * b + e]).sum::<f64>() / l as f64)
        .collect();
    let loss = nll.iter().zip(&fwd.kl).map(|(n, k)| n + batch.beta * k).sum();
    Losses {
        nll,
        kl: fwd.kl.clone(),
        loss,
    }
}

/// The loss alone (for finite differences).
pub fn loss(cfg: &VaeConfig, params: &[Vec<f64>], batch: &Batch<'_>) -> f64 {
    losses(&forward(cfg, params, batch), batch).loss
}

/// The loss and its analytic gradient w.r.t. every parameter (same slot layout as `params`).
/// The log-variance gets zero gradient where the clamp is active.
pub fn gradients(cfg: &VaeConfig, params: &[Vec<f64>], batch: &Batch<'_>) -> (Losses, Vec<Vec<f64>>) {
    let fwd = forward(cfg, params, batch);
    let ls = layers(cfg);
    let (b, l, zd, d) = (batch.batch, batch.samples, cfg.latent, cfg.input_dim);
    let (m, r) = (cfg.hidden.len(), l * b);
    let mut grads: Vec<Vec<f64>> = params.iter().map(|p| vec![0.0; p.len()]).collect();
    let log_c: Vec<f64> = if log_c_len(cfg).is_some() {
        params[2 * ls.len()].clone()
    } else {
        Vec::new()
    };

    // ∂loss/∂out: each of the L draws of an example carries weight 1/L.
    let mut dpre: Vec<f64> = (0..r * d)
        .map(|i| {
            let (row, col) = (i / d, i % d);
            nll_grad(cfg.likelihood, fwd.out[i], batch.x[(row % b) * d + col], &log_c, col) / l as f64
        })
        .collect();
    // ∂loss/∂log c: ½(1 − (x − μ)²/c) per element, zero where the clamp is active.
    if !log_c.is_empty() {
        let g = &mut grads[2 * ls.len()];
        for i in 0..r * d {
            let (row, col) = (i / d, i % d);
            let (lc, inside) = log_c_at(&log_c, col);
            if inside {
                let diff = fwd.out[i] - batch.x[(row % b) * d + col];
                g[if log_c.len() == 1 { 0 } else { col }] += 0.5 * (1.0 - diff * diff * (-lc).exp()) / l as f64;
            }
        }
    }

    // Decoder, output layer first; the first decoder layer's input is z (with the label).
    let mut dz = Vec::new();
    let zw = cfg.dec_input_dim();
    for k in (m + 1..=2 * m + 1).rev() {
        let input = if k == m + 1 {
            &fwd.dec_in
        } else {
            &fwd.dec_act[k - m - 2]
        };
        let (dw, db, dx) = dense_backward(&ls[k], input, r, &params[2 * k], &dpre);
        grads[2 * k] = dw;
        grads[2 * k + 1] = db;
        if k == m + 1 {
            // Only the code's columns lead back to the encoder.
            dz = dx.chunks_exact(zw).flat_map(|row| row[..zd].to_vec()).collect();
        } else {
            let (prev_pre, prev_act) = (&fwd.dec_pre[k - m - 2], ls[k - 1].act);
            dpre = dx
                .iter()
                .zip(prev_pre)
                .map(|(g, &p)| g * act_grad(prev_act, p))
                .collect();
        }
    }

    // Reparameterization and KL: z = μ + σ·ε with σ = exp(lv/2), KL = ½ Σ (σ² + μ² − 1 − lv).
    // An autoencoder: z is the code, and its penalty l1·Σ|z| adds l1·sign(z) (0 at 0).
    let mut denc = vec![0.0; b * 2 * zd];
    // VQ-VAE: the decoder's gradient passes straight through to z_e, plus the commitment's
    // 2β(z_e − e); the codebook learns from ‖sg(z_e) − e‖² alone: 2(e − z_e) per assignment.
    if let Code::Quantized { groups, commitment, .. } = cfg.code {
        let slot = codebook_slot(cfg);
        let d = zd / groups;
        let book = &params[slot];
        let mut dbook = vec![0.0; book.len()];
        denc = dz.clone();
        for e in 0..b {
            for g in 0..groups {
                let k = fwd.vq_index[e * groups + g];
                for c in 0..d {
                    let diff = fwd.enc[e * zd + g * d + c] - book[k * d + c];
                    denc[e * zd + g * d + c] += 2.0 * vq_weight(cfg) * commitment as f64 * diff;
                    dbook[k * d + c] -= 2.0 * vq_weight(cfg) * diff;
                }
            }
        }
        grads[slot] = dbook;
    }
    if let Code::Deterministic { l1, .. } = cfg.code {
        denc = dz
            .iter()
            .zip(&fwd.enc)
            .map(|(g, &v)| g + l1 as f64 * if v == 0.0 { 0.0 } else { v.signum() })
            .collect();
    }
    for e in 0..b {
        if !cfg.is_vae() {
            break;
        }
        for j in 0..zd {
            let mu = fwd.enc[e * 2 * zd + j];
            let (_, sigma, inside) = log_variance(fwd.enc[e * 2 * zd + zd + j]);
            let (mut dz_sum, mut dz_eps) = (0.0, 0.0);
            for s in 0..l {
                let i = (s * b + e) * zd + j;
                dz_sum += dz[i];
                dz_eps += dz[i] * batch.eps[i];
            }
            denc[e * 2 * zd + j] = dz_sum + batch.beta * mu;
            denc[e * 2 * zd + zd + j] = if inside {
                0.5 * sigma * dz_eps + 0.5 * batch.beta * (sigma * sigma - 1.0)
            } else {
                0.0
            };
        }
    }

    // The contractive penalty c·Σ_b ‖J_b‖², J_b[j, i] = Σ_h W2[h, j]·m_bh·W1[i, h], directly:
    // ∂/∂W1[i, h] = 2c Σ_b Σ_j J_b[j, i]·W2[h, j]·m_bh, ∂/∂W2[h, j] = 2c Σ_b Σ_i J_b[j, i]·m_bh·W1[i, h]
    // (the mask m = act′ is piecewise constant). Added after the layers' own gradients below.
    let mut contractive_grads = None;
    if let Code::Deterministic { contractive, .. } = cfg.code {
        if contractive > 0.0 {
            let (din, h) = (cfg.input_dim, ls[0].outputs);
            let (w1, w2) = (&params[0], &params[2]);
            let c = contractive as f64;
            let (mut g1, mut g2) = (vec![0.0; din * h], vec![0.0; h * zd]);
            for (e, jac) in contractive_jacobians(cfg, params, &fwd.enc_pre).iter().enumerate() {
                for hh in 0..h {
                    let m = act_grad(ls[0].act, fwd.enc_pre[0][e * h + hh]);
                    for j in 0..zd {
                        for i in 0..din {
                            let jv = jac[j * din + i];
                            g1[i * h + hh] += 2.0 * c * jv * w2[hh * zd + j] * m;
                            g2[hh * zd + j] += 2.0 * c * jv * m * w1[i * h + hh];
                        }
                    }
                }
            }
            contractive_grads = Some((g1, g2));
        }
    }

    // Encoder, head first; the first layer's input is x.
    let mut dpre = denc;
    for k in (0..=m).rev() {
        let input = if k == 0 {
            &fwd.enc_in[..]
        } else {
            &fwd.enc_act[k - 1][..]
        };
        let (dw, db, dx) = dense_backward(&ls[k], input, b, &params[2 * k], &dpre);
        grads[2 * k] = dw;
        grads[2 * k + 1] = db;
        if k > 0 {
            let (prev_pre, prev_act) = (&fwd.enc_pre[k - 1], ls[k - 1].act);
            dpre = dx
                .iter()
                .zip(prev_pre)
                .map(|(g, &p)| g * act_grad(prev_act, p))
                .collect();
        }
    }
    if let Some((g1, g2)) = contractive_grads {
        grads[0].iter_mut().zip(g1).for_each(|(g, v)| *g += v);
        grads[2].iter_mut().zip(g2).for_each(|(g, v)| *g += v);
    }
    (losses(&fwd, batch), grads)
}

/// Each example's Jacobian ∂z/∂x [Z, D] of a one-hidden-layer autoencoder's code with respect
/// to its pixels (a conditional model's one-hot is not x): J[j, i] = Σ_h W2[h, j]·act′(pre_h)·W1[i, h].
fn contractive_jacobians(cfg: &VaeConfig, params: &[Vec<f64>], enc_pre: &[Vec<f64>]) -> Vec<Vec<f64>> {
    let ls = layers(cfg);
    assert_eq!(cfg.hidden.len(), 1, "the contractive penalty is for one hidden layer");
    let (din, h, zd) = (cfg.input_dim, ls[0].outputs, cfg.latent);
    let (w1, w2) = (&params[0], &params[2]);
    let b = enc_pre[0].len() / h;
    (0..b)
        .map(|e| {
            let mut jac = vec![0.0; zd * din];
            for hh in 0..h {
                let m = act_grad(ls[0].act, enc_pre[0][e * h + hh]);
                for j in 0..zd {
                    for i in 0..din {
                        jac[j * din + i] += w2[hh * zd + j] * m * w1[i * h + hh];
                    }
                }
            }
            jac
        })
        .collect()
}

/// Central finite differences (L(p + h) − L(p − h)) / 2h of the reference loss w.r.t. every
/// parameter: validates [`gradients`].
pub fn finite_differences(cfg: &VaeConfig, params: &[Vec<f64>], batch: &Batch<'_>, h: f64) -> Vec<Vec<f64>> {
    let mut p = params.to_vec();
    let mut out: Vec<Vec<f64>> = params.iter().map(|v| vec![0.0; v.len()]).collect();
    for slot in 0..params.len() {
        for i in 0..params[slot].len() {
            let orig = params[slot][i];
            p[slot][i] = orig + h;
            let up = loss(cfg, &p, batch);
            p[slot][i] = orig - h;
            let down = loss(cfg, &p, batch);
            p[slot][i] = orig;
            out[slot][i] = (up - down) / (2.0 * h);
        }
    }
    out
}

/// The smallest |pre-activation| over hidden layers whose activation has a kink at 0 (ReLU,
/// LeakyReLU); infinity otherwise. Finite differences and an f32-vs-f64 comparison are only
/// meaningful when no pre-activation sits on the kink.
pub fn kink_margin(cfg: &VaeConfig, fwd: &Forward) -> f64 {
    if !matches!(cfg.activation, Activation::Relu | Activation::LeakyRelu) {
        return f64::INFINITY;
    }
    fwd.enc_pre
        .iter()
        .chain(&fwd.dec_pre)
        .flatten()
        .fold(f64::INFINITY, |a, &p| a.min(p.abs()))
}

/// Adam's state for every parameter slot.
#[derive(Clone, Debug)]
pub struct AdamState {
    pub m: Vec<Vec<f64>>,
    pub v: Vec<Vec<f64>>,
}

impl AdamState {
    /// Zero moments shaped like `params`.
    pub fn zeros(params: &[Vec<f64>]) -> Self {
        let z: Vec<Vec<f64>> = params.iter().map(|p| vec![0.0; p.len()]).collect();
        AdamState { m: z.clone(), v: z }
    }
}

/// One Adam / AdamW step t (1-based) in f64, PyTorch's formula:
/// g += wd·p (Adam) or p −= lr·wd·p (AdamW); m = β1·m + (1−β1)·g; v = β2·v + (1−β2)·g²;
/// p −= (lr / (1−β1^t)) · m / (√v / √(1−β2^t) + eps). Hyper-parameters are taken at their f32
/// values, as the device sees them.
pub fn adam_step(cfg: &AdamConfig, t: u64, params: &mut [Vec<f64>], grads: &[Vec<f64>], state: &mut AdamState) {
    let (lr, b1, b2) = (cfg.lr as f64, cfg.beta1 as f64, cfg.beta2 as f64);
    let (eps, wd) = (cfg.eps as f64, cfg.weight_decay as f64);
    let bc1 = 1.0 - b1.powf(t as f64);
    let bc2 = 1.0 - b2.powf(t as f64);
    for (slot, p) in params.iter_mut().enumerate() {
        for i in 0..p.len() {
            let mut g = grads[slot][i];
            if cfg.decoupled {
                p[i] -= lr * wd * p[i];
            } else {
                g += wd * p[i];
            }
            let m = b1 * state.m[slot][i] + (1.0 - b1) * g;
            let v = b2 * state.v[slot][i] + (1.0 - b2) * g * g;
            state.m[slot][i] = m;
            state.v[slot][i] = v;
            p[i] -= (lr / bc1) * m / (v.sqrt() / bc2.sqrt() + eps);
        }
    }
}

/// A hierarchical VAE's log importance weights for `b` examples `x` [B, D] and K draws (see
/// [`hier_forward`]): weight (s, e) = log p(x|z₁) + Σ_k log N(z_k; μₚ, σₚ²) below the top +
/// log N(z_top; 0, I) − Σ_k log N(z_k; μ_k, σ_k²) over every layer, each density written out in
/// full. Returned [K·B], row s·B + e.
#[allow(clippy::too_many_arguments)]
pub fn hier_log_weights(
    cfg: &VaeConfig,
    params: &[Vec<f64>],
    x: &[f64],
    labels: Option<&[u32]>,
    b: usize,
    k: usize,
    eps1: &[f64],
    eps_up: &[Vec<f64>],
) -> Vec<f64> {
    let f = hier_forward(cfg, params, x, labels, b, k, eps1, eps_up);
    let d = cfg.input_dim;
    let log_normal = |v: f64, mu: f64, lv: f64| -0.5 * (std::f64::consts::TAU.ln() + lv + (v - mu).powi(2) / lv.exp());
    let n = f.layers.len();
    (0..f.rows)
        .map(|r| {
            let e = r % b;
            let mut w = -nll_row(cfg.likelihood, &f.out[r * d..(r + 1) * d], &x[e * d..(e + 1) * d]);
            for (level, layer) in f.layers.iter().enumerate() {
                let width = layer.z.len() / f.rows;
                for i in r * width..(r + 1) * width {
                    let prior = if level + 1 == n {
                        log_normal(layer.z[i], 0.0, 0.0)
                    } else {
                        log_normal(layer.z[i], layer.mu_p[i], layer.lv_p[i])
                    };
                    w += prior - log_normal(layer.z[i], layer.mu[i], layer.lv[i]);
                }
            }
            w
        })
        .collect()
}

#[cfg(test)]
mod tests {
    //! The reference checked against itself: analytic gradients against finite differences for
    //! every activation, both likelihoods, several samples and an active clamp; the likelihoods
    //! and Adam against hand-computed values.

    use super::*;
    use crate::common::rand_vec;

    fn rand_f64(n: usize, seed: u64, lo: f32, hi: f32) -> Vec<f64> {
        rand_vec(n, seed, lo, hi).iter().map(|&v| v as f64).collect()
    }

    fn params_for(cfg: &VaeConfig, seed: u64) -> Vec<Vec<f64>> {
        param_slots(cfg)
            .iter()
            .enumerate()
            .map(|(i, (_, shape))| {
                let n: usize = shape.iter().product();
                rand_vec(n, seed + i as u64, -0.6, 0.6)
                    .iter()
                    .map(|&v| v as f64)
                    .collect()
            })
            .collect()
    }

    /// Largest |a − b| relative to max |b| of the tensor, over all tensors.
    fn worst_relative(a: &[Vec<f64>], b: &[Vec<f64>]) -> f64 {
        a.iter()
            .zip(b)
            .map(|(x, y)| {
                let scale = y.iter().fold(1e-12f64, |s, v| s.max(v.abs()));
                x.iter().zip(y).fold(0.0f64, |w, (p, q)| w.max((p - q).abs() / scale))
            })
            .fold(0.0, f64::max)
    }

    #[test]
    fn reference_gradients_match_finite_differences() {
        let cases = [
            (Activation::Relu, Likelihood::Bernoulli, vec![8], 1, 1.0),
            (
                Activation::LeakyRelu,
                Likelihood::Gaussian { variance: 0.5 },
                vec![8],
                2,
                0.5,
            ),
            (Activation::Tanh, Likelihood::Bernoulli, vec![8, 4], 3, 1.0),
            (
                Activation::Sigmoid,
                Likelihood::Gaussian { variance: 2.0 },
                vec![4],
                1,
                0.3,
            ),
            (Activation::Identity, Likelihood::Bernoulli, vec![], 2, 1.0),
        ];
        for (n, (act, lik, hidden, samples, beta)) in cases.into_iter().enumerate() {
            let cfg = VaeConfig {
                input_dim: 4,
                hidden,
                latent: 2,
                activation: act,
                likelihood: lik,
                classes: 0,
                ..Default::default()
            };
            let b = 3;
            let x = rand_f64(b * 4, 50 + n as u64, 0.0, 1.0);
            let eps = rand_f64(samples * b * 2, 60 + n as u64, -2.0, 2.0);
            let batch = Batch {
                x: &x,
                x_in: None,
                batch: b,
                eps: &eps,
                samples,
                beta,
                labels: None,
            };
            let mut params = params_for(&cfg, 100 * n as u64);
            if n == 0 {
                // Push the first log-variance column far below the clamp: its gradient is zero.
                params[2 * cfg.hidden.len() + 1][cfg.latent] = -80.0;
            }
            let fwd = forward(&cfg, &params, &batch);
            // Finite differences move a pre-activation by at most h·max|input| ≈ 1e-5.
            assert!(
                kink_margin(&cfg, &fwd) > 1e-4,
                "case {n}: a pre-activation sits on the kink"
            );
            let (_, g) = gradients(&cfg, &params, &batch);
            let fd = finite_differences(&cfg, &params, &batch, 1e-5);
            // Central differences: truncation O(h²) ≈ 1e-10, rounding ≈ 1e-16·|loss|/h ≈ 1e-10.
            let w = worst_relative(&g, &fd);
            assert!(w < 1e-6, "case {n} ({act:?}, {lik:?}): worst relative error {w:.3e}");
            if n == 0 {
                let head_b = &g[2 * cfg.hidden.len() + 1];
                assert_eq!(head_b[cfg.latent], 0.0, "clamped log-variance must get zero gradient");
            }
        }
    }

    /// The issue-5 objectives: a learned variance (shared and per pixel, one value below its
    /// floor), class conditioning, β = 0 and several samples, each against finite differences.
    #[test]
    fn reference_variant_gradients_match_finite_differences() {
        let global = Likelihood::GaussianLearned { per_pixel: false };
        let pixel = Likelihood::GaussianLearned { per_pixel: true };
        // (likelihood, hidden, classes, samples, beta)
        let cases = [
            (global, vec![8], 0, 2, 1.0),
            (pixel, vec![4], 0, 1, 0.5),
            (Likelihood::Bernoulli, vec![8], 3, 2, 1.0),
            (pixel, vec![6, 4], 3, 3, 2.0),
            (Likelihood::Bernoulli, vec![8], 0, 1, 0.0),
        ];
        for (n, (lik, hidden, classes, samples, beta)) in cases.into_iter().enumerate() {
            let cfg = VaeConfig {
                input_dim: 4,
                hidden,
                latent: 2,
                activation: Activation::Tanh,
                likelihood: lik,
                classes,
                ..Default::default()
            };
            let b = 3;
            let x = rand_f64(b * 4, 70 + n as u64, 0.0, 1.0);
            let eps = rand_f64(samples * b * 2, 80 + n as u64, -2.0, 2.0);
            let labels = [2u32, 0, 1];
            let batch = Batch {
                x: &x,
                x_in: None,
                batch: b,
                eps: &eps,
                samples,
                beta,
                labels: (classes > 0).then_some(&labels[..]),
            };
            let mut params = params_for(&cfg, 200 + 10 * n as u64);
            let last = params.len() - 1;
            if lik == pixel {
                params[last][1] = LOG_C_MIN - 1.0;
            }
            let (_, g) = gradients(&cfg, &params, &batch);
            let fd = finite_differences(&cfg, &params, &batch, 1e-5);
            let w = worst_relative(&g, &fd);
            assert!(
                w < 1e-6,
                "case {n} ({lik:?}, classes {classes}): worst relative error {w:.3e}"
            );
            if lik == pixel {
                assert_eq!(g[last][1], 0.0, "log c below its floor must get zero gradient");
                assert_ne!(g[last][0], 0.0);
            }
        }
        // β = 0: the encoder's gradient comes from the reconstruction alone, so it is the same
        // for any KL weight only when β = 0 removes the KL term — check it against β = 1.
        let cfg = VaeConfig {
            input_dim: 4,
            hidden: vec![4],
            latent: 2,
            activation: Activation::Tanh,
            likelihood: Likelihood::Bernoulli,
            classes: 0,
            ..Default::default()
        };
        let x = [0.1, 0.9, 0.4, 0.6];
        let eps = [0.3, -0.5];
        let params = params_for(&cfg, 7);
        let run = |beta: f64| {
            let batch = Batch {
                x: &x,
                x_in: None,
                batch: 1,
                eps: &eps,
                samples: 1,
                beta,
                labels: None,
            };
            gradients(&cfg, &params, &batch)
        };
        let (l0, g0) = run(0.0);
        let (l1, g1) = run(1.0);
        assert!(
            (l0.loss - l0.nll[0]).abs() < 1e-15,
            "β = 0 leaves the reconstruction alone"
        );
        assert!((l1.loss - l1.nll[0] - l1.kl[0]).abs() < 1e-12);
        // Slots: encoder.0 (0, 1), head (2, 3), decoder (4..). The decoder's gradients do not
        // see β; the head's do.
        assert_eq!(g0[4..], g1[4..]);
        assert_ne!(g0[3], g1[3]);
    }

    #[test]
    fn reference_likelihoods_and_kl_closed_forms() {
        // Logit 0 is probability ½ whatever the target: NLL = D·ln 2.
        let nll = nll_row(Likelihood::Bernoulli, &[0.0; 4], &[0.0, 1.0, 0.3, 0.7]);
        assert!((nll - 4.0 * 2f64.ln()).abs() < 1e-15, "{nll}");
        // A perfect Gaussian reconstruction leaves only the normalizer.
        let c = 0.5f32;
        let nll = nll_row(Likelihood::Gaussian { variance: c }, &[0.2, 0.4], &[0.2, 0.4]);
        let want = (std::f64::consts::TAU * c as f64).ln();
        assert!((nll - want).abs() < 1e-15, "{nll} vs {want}");
        // μ = 0, log σ² = 0 is the prior itself: zero KL.
        let cfg = VaeConfig {
            input_dim: 4,
            hidden: vec![],
            latent: 2,
            activation: Activation::Relu,
            likelihood: Likelihood::Bernoulli,
            classes: 0,
            ..Default::default()
        };
        let mut params = params_for(&cfg, 3);
        params[0].iter_mut().for_each(|v| *v = 0.0);
        params[1].iter_mut().for_each(|v| *v = 0.0);
        let x = [0.5; 4];
        let eps = [0.1, -0.2];
        let batch = Batch {
            x: &x,
            x_in: None,
            batch: 1,
            eps: &eps,
            samples: 1,
            beta: 1.0,
            labels: None,
        };
        let fwd = forward(&cfg, &params, &batch);
        assert_eq!(fwd.kl, vec![0.0]);
        assert_eq!(fwd.z, vec![0.1, -0.2]);
    }

    #[test]
    fn reference_adam_steps() {
        let cfg = AdamConfig {
            lr: 0.01,
            ..Default::default()
        };
        let mut p = vec![vec![1.0, -2.0, 0.5]];
        let g = vec![vec![0.3, -4.0, 0.0]];
        let mut st = AdamState::zeros(&p);
        adam_step(&cfg, 1, &mut p, &g, &mut st);
        // First step: m̂ = g and √v̂ = |g|, so each parameter moves by lr·g/(|g| + eps).
        let eps = cfg.eps as f64;
        let lr = cfg.lr as f64;
        let want = [1.0 - lr * 0.3 / (0.3 + eps), -2.0 + lr * 4.0 / (4.0 + eps), 0.5];
        for (a, b) in p[0].iter().zip(want) {
            assert!((a - b).abs() < 1e-15, "{a} vs {b}");
        }
        // Second step with the same gradient: the bias-corrected moments are again g and |g|.
        adam_step(&cfg, 2, &mut p, &g, &mut st);
        let want2 = [want[0] - lr * 0.3 / (0.3 + eps), want[1] + lr * 4.0 / (4.0 + eps), 0.5];
        for (a, b) in p[0].iter().zip(want2) {
            assert!((a - b).abs() < 1e-12, "{a} vs {b}");
        }
        // AdamW with a zero gradient only decays.
        let w = AdamConfig {
            lr: 0.1,
            weight_decay: 0.5,
            decoupled: true,
            ..Default::default()
        };
        let mut p = vec![vec![2.0]];
        let mut st = AdamState::zeros(&p);
        adam_step(&w, 1, &mut p, &[vec![0.0]], &mut st);
        let want = 2.0 - (w.lr as f64) * (w.weight_decay as f64) * 2.0;
        assert!((p[0][0] - want).abs() < 1e-15, "{} vs {want}", p[0][0]);
    }
}
