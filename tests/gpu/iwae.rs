//! The importance-weighted bound as a training objective: one step's gradient of every
//! parameter against central finite differences of an f64 reference of the bound, written from
//! its definition (each density in full), for K = 1, 2 and 5 draws, one and several stochastic
//! layers, conditional, learned-variance and texture-mirrored models; its kernels on log-weights
//! far outside f32's exponent range; and its refusals.

use vae_wgpu::internals::ops::{self, Activation, AdamConfig, Likelihood, StepParams};
use vae_wgpu::internals::{Workspace, WorkspaceSpec};
use vae_wgpu::model::{Code, Objective, TextureMirrors, TopLatent, Vae, VaeConfig};
use vae_wgpu::train::TrainConfig;
use vae_wgpu::{rng, VaeError};

use crate::common::{assert_close, gpu, rand_vec, to_f64};
use crate::model::{assert_tensors_close, gpu_step, slot_names, step_eps, top_eps, train_spec, Data};
use crate::reference::{self, Batch};

/// log N(v; μ, e^lv), written out.
fn log_normal(v: f64, mu: f64, lv: f64) -> f64 {
    -0.5 * (std::f64::consts::TAU.ln() + lv + (v - mu).powi(2) / lv.exp())
}

/// Σ over the b examples of −log (1/K) Σ_s exp(log_w[s·b + e]).
fn neg_bound(log_w: &[f64], b: usize, k: usize) -> f64 {
    (0..b)
        .map(|e| {
            let w: Vec<f64> = (0..k).map(|s| log_w[s * b + e]).collect();
            let m = w.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            -(m + w.iter().map(|v| (v - m).exp()).sum::<f64>().ln() - (k as f64).ln())
        })
        .collect::<Vec<_>>()
        .iter()
        .sum()
}

/// One-layer VAE: log p(x|z) + log N(z; 0, I) − log N(z; μ, σ²) per draw, [K·B]. At K = 1 the
/// bound is the ELBO with the KL sampled at the drawn z (same ε), which the crate's ELBO
/// objective replaces by its closed form.
fn gaussian_log_weights(cfg: &VaeConfig, params: &[Vec<f64>], batch: &Batch<'_>) -> Vec<f64> {
    let f = reference::forward(cfg, params, batch);
    let (b, zd) = (batch.batch, cfg.latent);
    (0..batch.samples * b)
        .map(|r| {
            let e = r % b;
            let mut w = -f.nll[r];
            for j in 0..zd {
                let mu = f.enc[e * 2 * zd + j];
                let lv = f.enc[e * 2 * zd + zd + j].clamp(reference::LOGVAR_MIN, reference::LOGVAR_MAX);
                let z = f.z[r * zd + j];
                w += log_normal(z, 0.0, 0.0) - log_normal(z, mu, lv);
            }
            w
        })
        .collect()
}

struct Case {
    what: &'static str,
    cfg: VaeConfig,
    k: usize,
    mirrors: bool,
}

fn small(activation: Activation, likelihood: Likelihood, classes: usize, top: &[TopLatent]) -> VaeConfig {
    VaeConfig {
        input_dim: 8,
        hidden: vec![12],
        latent: 4,
        activation,
        likelihood,
        classes,
        code: crate::common::hier(top),
        arch: Default::default(),
    }
}

/// One step (lr 0) for 5 examples in a workspace for 8 that a full step filled first: the
/// gradients against finite differences of the f64 bound, the metric row against its NLL and
/// bound.
fn check(case: &Case) {
    let g = gpu();
    let (cfg, k) = (&case.cfg, case.k);
    let mut vae = Vae::new(g, cfg.clone(), 41).unwrap();
    if case.mirrors {
        vae.set_texture_mirrors(g, TextureMirrors::All).unwrap();
    }
    let names = slot_names(&vae);
    let data = Data::new(g, 16, cfg.input_dim, 42);
    let spec = WorkspaceSpec {
        iw: true,
        ..train_spec(8, k, false, None)
    };
    let ws = Workspace::new(g, &vae, &spec).unwrap();
    let frozen = AdamConfig {
        lr: 0.0,
        ..Default::default()
    };
    let sp = |start: u32, step: u32| StepParams {
        seed: 13,
        step,
        batch_start: start,
        stream: rng::STREAM_TRAIN,
        kl_beta: 1.0,
        ..Default::default()
    };
    gpu_step(g, &vae, &ws, 8, &data, sp(8, 2), &frozen);
    let b = 5;
    let res = gpu_step(g, &vae, &ws, b, &data, sp(3, 6), &frozen);

    let params = to_f64(&res.params_before);
    let x = data.batch_x(3, b);
    let labels = data.batch_labels(3, b);
    let y = (cfg.classes > 0).then_some(&labels[..]);
    let eps = step_eps(&sp(3, 6), k, b, cfg.latent);
    let top = cfg.top().to_vec();
    let eps_up: Vec<Vec<f64>> = (0..top.len())
        .map(|i| top_eps(&sp(3, 6), k * b, top[i].latent, i as u32))
        .collect();
    let log_weights = |p: &[Vec<f64>]| -> Vec<f64> {
        if top.is_empty() {
            let batch = Batch {
                x: &x,
                x_in: None,
                batch: b,
                eps: &eps,
                samples: k,
                beta: 1.0,
                labels: y,
            };
            gaussian_log_weights(cfg, p, &batch)
        } else {
            reference::hier_log_weights(cfg, p, &x, y, b, k, &eps, &eps_up)
        }
    };
    let lw = log_weights(&params);
    // The draws must not all carry the same weight, or a weighting error would not show.
    let spread =
        lw.iter().cloned().fold(f64::NEG_INFINITY, f64::max) - lw.iter().cloned().fold(f64::INFINITY, f64::min);
    assert!(spread > 0.1, "{}: log-weights spread only {spread}", case.what);

    // The metric row: the mean NLL over the draws, and the gap that makes the sum −bound.
    let want_loss = neg_bound(&lw, b, k);
    let got_loss = res.totals[0] + res.totals[1];
    assert!(
        (got_loss - want_loss).abs() <= 1e-5 * want_loss.abs() + 1e-4,
        "{}: logged -bound {got_loss} vs reference {want_loss}",
        case.what
    );

    let h = 1e-6;
    let mut p = params.clone();
    let mut want: Vec<Vec<f64>> = params.iter().map(|v| vec![0.0; v.len()]).collect();
    for slot in 0..p.len() {
        for i in 0..p[slot].len() {
            let v = p[slot][i];
            p[slot][i] = v + h;
            let up = neg_bound(&log_weights(&p), b, k);
            p[slot][i] = v - h;
            let down = neg_bound(&log_weights(&p), b, k);
            p[slot][i] = v;
            want[slot][i] = (up - down) / (2.0 * h);
        }
    }
    // f32 gradients (sums of a few dozen terms, exp/log in the loss and the weights) against
    // f64 central differences with h = 1e-6 (truncation and rounding ~1e-9): 2e-4 of each
    // tensor's largest gradient, as the hierarchical ELBO test. A draw weighted 1/K instead of
    // w̃ moves gradients by tens of percent.
    assert_tensors_close(case.what, &names, &to_f64(&res.grads), &want, 2e-4, 1e-6);
}

#[test]
fn iwae_gradients_match_finite_differences_of_the_bound() {
    let two = [TopLatent {
        latent: 2,
        hidden: vec![8],
    }];
    let three = [
        TopLatent {
            latent: 4,
            hidden: vec![8],
        },
        TopLatent {
            latent: 2,
            hidden: vec![4],
        },
    ];
    let deep = [TopLatent {
        latent: 2,
        hidden: vec![8, 8],
    }];
    let cases = [
        Case {
            what: "K = 1 (the ELBO with the sampled KL), tanh, Bernoulli",
            cfg: small(Activation::Tanh, Likelihood::Bernoulli, 0, &[]),
            k: 1,
            mirrors: false,
        },
        Case {
            what: "K = 2, sigmoid, Gaussian variance 0.5",
            cfg: small(Activation::Sigmoid, Likelihood::Gaussian { variance: 0.5 }, 0, &[]),
            k: 2,
            mirrors: false,
        },
        Case {
            what: "K = 5, tanh, Bernoulli, conditional, texture mirrors",
            cfg: small(Activation::Tanh, Likelihood::Bernoulli, 3, &[]),
            k: 5,
            mirrors: true,
        },
        Case {
            what: "K = 5, tanh, learned per-pixel variance",
            cfg: small(
                Activation::Tanh,
                Likelihood::GaussianLearned { per_pixel: true },
                0,
                &[],
            ),
            k: 5,
            mirrors: false,
        },
        Case {
            what: "K = 2, two stochastic layers",
            cfg: small(Activation::Tanh, Likelihood::Bernoulli, 0, &two),
            k: 2,
            mirrors: false,
        },
        Case {
            what: "K = 3, three stochastic layers, conditional",
            cfg: small(Activation::Tanh, Likelihood::Bernoulli, 3, &three),
            k: 3,
            mirrors: false,
        },
        Case {
            what: "K = 5, two stochastic layers whose networks have two hidden layers (the IWAE paper's)",
            cfg: small(Activation::Tanh, Likelihood::Bernoulli, 0, &deep),
            k: 5,
            mirrors: false,
        },
    ];
    for case in &cases {
        check(case);
    }
}

/// The weights of log-weights hundreds of nats apart (exp of each overflows or underflows f32)
/// against f64, and the gap against −bound − mean NLL.
#[test]
fn iw_kernels_stay_finite_far_outside_the_exponent_range() {
    let g = gpu();
    let (b, k, w) = (7, 5, 3);
    let r = b * k;
    let nll: Vec<f32> = rand_vec(r, 3, 50.0, 900.0);
    let ratio: Vec<f32> = rand_vec(r * w, 4, -80.0, 80.0);
    let nll_t = g.upload("nll", &[r], &nll).unwrap();
    let ratio_t = g.upload("ratio", &[r * w], &ratio).unwrap();
    let lw = g.tensor("lw", &[r]).unwrap();
    let weights = g.tensor("weights", &[r]).unwrap();
    let gap = g.tensor("gap", &[b]).unwrap();
    let d1 = ops::iw_log_weights(g, "lw", b, k, &nll_t, &ratio_t, &lw, false).unwrap();
    let d2 = ops::iw_log_weights(g, "lw+", b, k, &nll_t, &ratio_t, &lw, true).unwrap();
    let d3 = ops::iw_normalize(g, "normalize", b, k, &nll_t, &lw, &weights, &gap).unwrap();
    g.run(&[&d1, &d2, &d3]).unwrap();
    // Two passes over the same ratio: log w = −nll + 2 Σ ratio.
    let want_lw: Vec<f64> = (0..r)
        .map(|i| -(nll[i] as f64) + 2.0 * ratio[i * w..(i + 1) * w].iter().map(|&v| v as f64).sum::<f64>())
        .collect();
    assert_close("log-weights", &g.read(&lw).unwrap(), &want_lw, |i| {
        1e-5 * want_lw[i].abs() + 1e-4
    });
    let mut want_w = vec![0.0; r];
    let mut want_gap = vec![0.0; b];
    for e in 0..b {
        let m = (0..k).map(|s| want_lw[s * b + e]).fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = (0..k).map(|s| (want_lw[s * b + e] - m).exp()).sum();
        for s in 0..k {
            want_w[s * b + e] = (want_lw[s * b + e] - m).exp() / sum;
        }
        let mean_nll = (0..k).map(|s| nll[s * b + e] as f64).sum::<f64>() / k as f64;
        want_gap[e] = -(m + sum.ln() - (k as f64).ln()) - mean_nll;
    }
    let got_w = g.read(&weights).unwrap();
    assert!(got_w.iter().all(|v| v.is_finite()), "{got_w:?}");
    // The weights' exponents carry the log-weights' f32 rounding (~1e-4 absolute at |lw| ~ 1e3).
    assert_close("normalized weights", &got_w, &want_w, |_| 1e-3);
    assert_close("gap", &g.read(&gap).unwrap(), &want_gap, |i| {
        1e-5 * want_gap[i].abs() + 2e-3
    });
    // Each example's weights sum to 1.
    for e in 0..b {
        let s: f32 = (0..k).map(|s| got_w[s * b + e]).sum();
        assert!((s - 1.0).abs() < 1e-5, "example {e}: weights sum to {s}");
    }
}

/// The importance-weighted objective's refusals, each naming the fields at fault.
#[test]
fn iwae_objective_refusals_name_the_setting() {
    let vae_cfg = VaeConfig::default();
    let iw = |k| TrainConfig {
        objective: Objective::Iwae { k },
        ..Default::default()
    };
    let fields = |r: vae_wgpu::Result<()>| match r {
        Err(VaeError::Setting { fields, .. }) => fields,
        other => panic!("expected a setting error, got {other:?}"),
    };
    assert_eq!(fields(iw(0).validate(&vae_cfg)), ["TrainConfig::objective"]);
    assert_eq!(fields(iw(40_000).validate(&vae_cfg)), ["TrainConfig::objective"]);
    let ae = VaeConfig {
        code: Code::Deterministic {
            l1: 0.0,
            contractive: 0.0,
        },
        ..Default::default()
    };
    assert_eq!(
        fields(iw(5).validate(&ae)),
        ["TrainConfig::objective", "VaeConfig::code"]
    );
    let with = |f: fn(&mut TrainConfig)| {
        let mut c = iw(5);
        f(&mut c);
        fields(c.validate(&vae_cfg))
    };
    assert_eq!(
        with(|c| c.mc_samples = 2),
        ["TrainConfig::mc_samples", "TrainConfig::objective"]
    );
    assert_eq!(with(|c| c.beta = 0.5), ["TrainConfig::beta", "TrainConfig::objective"]);
    assert_eq!(
        with(|c| c.kl_schedule = vae_wgpu::train::KlSchedule::Warmup { steps: 10 }),
        ["TrainConfig::kl_schedule", "TrainConfig::objective"]
    );
    assert!(iw(5).validate(&vae_cfg).is_ok());
    assert_eq!(iw(5).draws(), 5);
}
