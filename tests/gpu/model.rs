//! Model-level tests: whole planned training steps on the adapter against the f64 reference in
//! `reference.rs` — the gradient of every parameter, the metric log row and one Adam update —
//! and a partial-batch plan against a workspace built for exactly that batch.

use vae_wgpu::data::GpuDataset;
use vae_wgpu::internals::ops::{self, Activation, AdamConfig, Likelihood, StepBuffer, StepParams};
use vae_wgpu::internals::{plan_step, Inputs, Workspace, WorkspaceSpec, METRIC_SLOTS};
use vae_wgpu::model::{code_name, Code, TextureMirrors, TopLatent, Vae, VaeConfig};
use vae_wgpu::train::{TrainConfig, Trainer};
use vae_wgpu::{rng, Dispatch, Gpu, Tensor};

use crate::common::{gpu, rand_vec, to_f64};
use crate::reference::{self, AdamState, Batch};

/// A byte dataset on the device, its host copy and an example order.
pub(crate) struct Data {
    /// The masking probability the steps' source asks for (0: no denoising).
    denoise: f32,
    bytes: Vec<u8>,
    labels: Vec<u32>,
    dim: usize,
    perm: Vec<u32>,
    set: GpuDataset,
    perm_t: Tensor,
}

impl Data {
    /// `count` examples of `dim` varied bytes (0 and 255 included), in a shuffled order.
    pub(crate) fn new(g: &Gpu, count: usize, dim: usize, seed: u64) -> Self {
        let mut bytes: Vec<u8> = rand_vec(count * dim, seed, 0.0, 256.0)
            .iter()
            .map(|&v| v.min(255.0) as u8)
            .collect();
        bytes[0] = 0;
        bytes[1] = 255;
        let perm = rng::permutation(&mut rng::host_rng(seed, 1), count);
        // Three classes, not in the order of the examples.
        let labels: Vec<u32> = (0..count).map(|i| ((i * 7 + 1) % 3) as u32).collect();
        let set = GpuDataset::upload(g, "train", &bytes, count, dim, labels.clone()).unwrap();
        let perm_t = g.upload_words("perm", &perm).unwrap();
        Data {
            denoise: 0.0,
            bytes,
            labels,
            dim,
            perm,
            set,
            perm_t,
        }
    }

    /// The batch the gather builds: row b is example perm[start + b] as bytes / 255.
    pub(crate) fn batch_x(&self, start: usize, b: usize) -> Vec<f64> {
        let d = self.dim;
        (0..b)
            .flat_map(|row| {
                let ex = self.perm[start + row] as usize;
                self.bytes[ex * d..(ex + 1) * d].iter().map(|&v| v as f64 / 255.0)
            })
            .collect()
    }

    /// The labels of the batch's rows.
    pub(crate) fn batch_labels(&self, start: usize, b: usize) -> Vec<u32> {
        (0..b).map(|row| self.labels[self.perm[start + row] as usize]).collect()
    }

    /// Plans `b` examples' step through the inputs block this data feeds.
    #[allow(clippy::too_many_arguments)]
    fn plan(
        &self,
        g: &Gpu,
        vae: &Vae,
        ws: &Workspace,
        b: usize,
        step: &StepBuffer,
        log: &Tensor,
        adam: Option<&AdamConfig>,
    ) -> Vec<Dispatch> {
        let batches = self.set.batches(&self.perm_t);
        let inputs = Inputs {
            source: &batches,
            binarize: false,
            denoise: self.denoise,
        };
        plan_step(g, vae, ws, b, &inputs, step, log, adam).unwrap()
    }
}

/// A training workspace of `b` examples and `l` draws each.
pub(crate) fn train_spec(b: usize, l: usize, denoise: bool, vq_ema: Option<f32>) -> WorkspaceSpec {
    WorkspaceSpec {
        train: true,
        denoise,
        vq_ema,
        ..WorkspaceSpec::eval(b, l)
    }
}

/// The ε the reparameterization kernel draws for a step, [L, B, Z] (see reparam_kl.wgsl).
pub(crate) fn step_eps(sp: &StepParams, samples: usize, b: usize, z: usize) -> Vec<f64> {
    let mut eps = Vec::with_capacity(samples * b * z);
    for s in 0..samples {
        for e in 0..b {
            for j in 0..z {
                let stream = rng::stream_word(sp.stream, s as u32);
                eps.push(rng::normal(sp.seed, sp.step, stream, (e * z + j) as u32));
            }
        }
    }
    eps
}

/// What one step on the device did.
pub(crate) struct StepResult {
    pub params_before: Vec<Vec<f32>>,
    pub grads: Vec<Vec<f32>>,
    pub params_after: Vec<Vec<f32>>,
    /// [Σ_b mean_s NLL, Σ_b KL] from the step's row of the metric log.
    pub totals: Vec<f64>,
}

/// Plans and runs one training step for `b` examples with the optimizer `adam`, as the trainer
/// does: one plan, the step uniform written, one submit.
pub(crate) fn gpu_step(
    g: &Gpu,
    vae: &Vae,
    ws: &Workspace,
    b: usize,
    data: &Data,
    sp: StepParams,
    adam: &AdamConfig,
) -> StepResult {
    let params_before = vae.arena.read_params(g).unwrap();
    let step = StepBuffer::new(g).unwrap();
    let log = g.tensor("log", &[1, METRIC_SLOTS]).unwrap();
    let plan = data.plan(g, vae, ws, b, &step, &log, Some(adam));
    let mut sp = StepParams { log_row: 0, ..sp };
    adam.step_fields(sp.step as u64 + 1, &mut sp);
    step.write(g, &sp);
    let refs: Vec<&Dispatch> = plan.iter().collect();
    g.run(&refs).unwrap();
    StepResult {
        params_before,
        grads: vae.arena.read_grads(g).unwrap(),
        params_after: vae.arena.read_params(g).unwrap(),
        totals: ops::read_log_totals(g, &log, 1).unwrap(),
    }
}

/// Per tensor: every |got − want| ≤ rel·max|want| + abs; reports the worst element.
pub(crate) fn assert_tensors_close(
    what: &str,
    names: &[String],
    got: &[Vec<f64>],
    want: &[Vec<f64>],
    rel: f64,
    abs: f64,
) {
    assert_eq!(got.len(), want.len(), "{what}: tensor count");
    for ((name, g), w) in names.iter().zip(got).zip(want) {
        assert_eq!(g.len(), w.len(), "{what} {name}: length");
        let tol = rel * w.iter().fold(0.0f64, |m, v| m.max(v.abs())) + abs;
        let (i, err) = g
            .iter()
            .zip(w)
            .map(|(a, b)| (a - b).abs())
            .enumerate()
            .fold((0, 0.0f64), |best, (i, e)| if e > best.1 { (i, e) } else { best });
        assert!(
            g.iter().all(|v| v.is_finite()) && err <= tol,
            "{what} {name}[{i}]: got {} want {} (error {err:.3e}, tolerance {tol:.3e})",
            g[i],
            w[i]
        );
    }
}

/// The model's parameter slots must be the ones the reference reads.
pub(crate) fn slot_names(vae: &Vae) -> Vec<String> {
    let got: Vec<(String, Vec<usize>)> = vae
        .arena
        .layout
        .slots()
        .iter()
        .map(|s| (s.name.clone(), s.shape.clone()))
        .collect();
    assert_eq!(got, reference::param_slots(&vae.config), "arena layout vs reference");
    got.into_iter().map(|(n, _)| n).collect()
}

/// One gradient check: a VAE, a batch and a step's ε, GPU gradients against the reference.
struct Case {
    name: &'static str,
    cfg: VaeConfig,
    /// Weights and activations read through texture mirrors in the matmuls (else none).
    mirrors: bool,
    batch: usize,
    samples: usize,
    beta: f32,
    seed: u64,
    /// Probability of the masking noise on the encoder's input (0: none).
    denoise: f32,
}

fn small(hidden: Vec<usize>, latent: usize, activation: Activation, likelihood: Likelihood) -> VaeConfig {
    VaeConfig {
        input_dim: 8,
        hidden,
        latent,
        activation,
        likelihood,
        classes: 0,
        ..Default::default()
    }
}

fn conditional(mut cfg: VaeConfig) -> VaeConfig {
    cfg.classes = 3;
    cfg
}

/// Runs one step with lr = 0 (the gradients are written, the parameters stay) and checks:
/// the reference's analytic gradients against its finite differences, the GPU gradients
/// against the reference, and the metric row against the reference's loss terms.
fn check_gradients(case: &Case) {
    let g = gpu();
    let (b, l, zd) = (case.batch, case.samples, case.cfg.latent);
    let mut vae = Vae::new(g, case.cfg.clone(), case.seed).unwrap();
    let policy = if case.mirrors {
        TextureMirrors::All
    } else {
        TextureMirrors::None
    };
    vae.set_texture_mirrors(g, policy).unwrap();
    let names = slot_names(&vae);
    let start = 3;
    let mut data = Data::new(g, b + 4, case.cfg.input_dim, case.seed + 1);
    data.denoise = case.denoise;
    let ws = Workspace::new(g, &vae, &train_spec(b, l, case.denoise > 0.0, None)).unwrap();
    let sp = StepParams {
        seed: 1000 + case.seed as u32,
        step: 17,
        batch_start: start as u32,
        stream: rng::STREAM_TRAIN,
        kl_beta: case.beta,
        ..Default::default()
    };
    let frozen = AdamConfig {
        lr: 0.0,
        ..Default::default()
    };
    let res = gpu_step(g, &vae, &ws, b, &data, sp, &frozen);
    assert_eq!(
        res.params_after, res.params_before,
        "{}: lr 0 must leave the parameters",
        case.name
    );

    let params = to_f64(&res.params_before);
    let x = data.batch_x(start, b);
    let eps = step_eps(&sp, l, b, zd);
    let labels = data.batch_labels(start, b);
    // Masking noise: pixel e of the batch is zeroed where its draw falls below the probability.
    let x_noisy: Vec<f64> = x
        .iter()
        .enumerate()
        .map(|(e, &v)| {
            let u = rng::uniform(sp.seed, sp.step, rng::stream_word(rng::STREAM_CORRUPT, 0), e as u32);
            if u < case.denoise as f64 {
                0.0
            } else {
                v
            }
        })
        .collect();
    if case.denoise > 0.0 {
        let dropped = x_noisy.iter().zip(&x).filter(|(n, c)| n != c).count();
        assert!(dropped > 0, "{}: the noise dropped no pixel", case.name);
    }
    let batch = Batch {
        x: &x,
        x_in: (case.denoise > 0.0).then_some(&x_noisy[..]),
        batch: b,
        eps: &eps,
        samples: l,
        beta: case.beta as f64,
        labels: (case.cfg.classes > 0).then_some(&labels[..]),
    };
    let fwd = reference::forward(&case.cfg, &params, &batch);
    // Preconditions of the comparison: log-variances far inside the clamp, and no ReLU
    // pre-activation within reach of a finite-difference step (h·max|input| ≈ 1e-5) or of f32
    // rounding, either of which would compare different branches.
    if case.cfg.is_vae() {
        for e in 0..b {
            for j in 0..zd {
                let raw = fwd.enc[e * 2 * zd + zd + j];
                assert!(raw.abs() < 10.0, "{}: log-variance {raw} too near the clamp", case.name);
            }
        }
    } else if let Code::Quantized { groups, .. } = case.cfg.code {
        // f32 and f64 must pick the same entries: no near-tie between the nearest two.
        let book = &params[params.len() - 1];
        let d = zd / groups;
        for (v, ze) in fwd.enc.chunks_exact(d).enumerate() {
            let mut dist: Vec<f64> = book
                .chunks_exact(d)
                .map(|e| e.iter().zip(ze).map(|(a, b)| (a - b) * (a - b)).sum())
                .collect();
            dist.sort_by(f64::total_cmp);
            assert!(dist[1] - dist[0] > 1e-4, "{}: vector {v} is near a tie", case.name);
        }
        let mut used = fwd.vq_index.clone();
        used.sort();
        used.dedup();
        assert!(used.len() >= 2, "{}: every vector took entry {:?}", case.name, used);
    } else {
        // The L1 penalty has its kink at 0.
        let near = fwd.enc.iter().fold(f64::INFINITY, |a, v| a.min(v.abs()));
        assert!(near > 1e-4, "{}: a code is {near:.1e} from 0", case.name);
    }
    let margin = reference::kink_margin(&case.cfg, &fwd);
    assert!(
        margin > 1e-4,
        "{}: a pre-activation is {margin:.1e} from the kink",
        case.name
    );

    let (losses, want) = reference::gradients(&case.cfg, &params, &batch);
    // The FD check validates the reference: central differences with h = 1e-5 in f64 have
    // truncation error O(h²·L''') ≈ 1e-10 and rounding ≈ 1e-16·|loss|/h ≈ 1e-10 (|loss| ≲ 100),
    // far below 1e-6 of each tensor's largest gradient.
    let fd = reference::finite_differences(&case.cfg, &params, &batch, 1e-5);
    let what = format!("{}: reference analytic vs finite differences", case.name);
    if matches!(case.cfg.code, Code::Quantized { .. }) {
        // The straight-through estimator (encoder) and the codebook's own loss (codebook) are
        // not the loss's derivative by design; the decoder's gradients are, and the reference
        // defines the rest (the GPU is compared with it below).
        let keep: Vec<usize> = (0..names.len()).filter(|&i| names[i].starts_with("decoder.")).collect();
        let pick = |v: &[Vec<f64>]| keep.iter().map(|&i| v[i].clone()).collect::<Vec<_>>();
        let dec_names: Vec<String> = keep.iter().map(|&i| names[i].clone()).collect();
        assert_tensors_close(&what, &dec_names, &pick(&want), &pick(&fd), 1e-6, 1e-12);
    } else {
        assert_tensors_close(&what, &names, &want, &fd, 1e-6, 1e-12);
    }

    // The GPU check validates the kernels: f32 sums of at most a few dozen terms per element
    // (batch 5, widths ≤ 12) plus f32 exp/log in the loss and ε carry relative errors ~1e-6;
    // 1e-4 of each tensor's largest gradient leaves margin while any wrong term (a missing
    // 1/L, β, sample or row) is far larger.
    let what = format!("{}: GPU vs reference gradients", case.name);
    assert_tensors_close(&what, &names, &to_f64(&res.grads), &want, 1e-4, 1e-7);

    // Metric row: Σ_b mean_s NLL and Σ_b KL, f32 sums of O(10) terms: relative 1e-5.
    let (nll, kl): (f64, f64) = (losses.nll.iter().sum(), losses.kl.iter().sum());
    assert!(
        (res.totals[0] - nll).abs() <= 1e-5 * nll.abs() + 1e-6,
        "{}: logged reconstruction {} vs reference {nll}",
        case.name,
        res.totals[0]
    );
    assert!(
        (res.totals[1] - kl).abs() <= 1e-5 * kl.abs() + 1e-6,
        "{}: logged KL {} vs reference {kl}",
        case.name,
        res.totals[1]
    );
}

#[test]
fn gradients_match_f64_reference() {
    check_gradients(&Case {
        name: "bernoulli relu [12] Z=4 B=5 L=1 β=1",
        cfg: small(vec![12], 4, Activation::Relu, Likelihood::Bernoulli),
        mirrors: false,
        batch: 5,
        samples: 1,
        beta: 1.0,
        seed: 1,
        denoise: 0.0,
    });
}

#[test]
fn gradients_match_f64_reference_variants() {
    let cases = [
        Case {
            name: "gaussian(0.5) relu [12] Z=4",
            cfg: small(vec![12], 4, Activation::Relu, Likelihood::Gaussian { variance: 0.5 }),
            mirrors: false,
            batch: 5,
            samples: 1,
            beta: 1.0,
            seed: 2,
            denoise: 0.0,
        },
        Case {
            name: "bernoulli relu [12] Z=2 L=3 β=0.5",
            cfg: small(vec![12], 2, Activation::Relu, Likelihood::Bernoulli),
            mirrors: false,
            batch: 5,
            samples: 3,
            beta: 0.5,
            seed: 3,
            denoise: 0.0,
        },
        Case {
            name: "bernoulli tanh [12, 8] Z=4 L=2",
            cfg: small(vec![12, 8], 4, Activation::Tanh, Likelihood::Bernoulli),
            mirrors: false,
            batch: 5,
            samples: 2,
            beta: 1.0,
            seed: 4,
            denoise: 0.0,
        },
        Case {
            name: "bernoulli leaky_relu [12] Z=4",
            cfg: small(vec![12], 4, Activation::LeakyRelu, Likelihood::Bernoulli),
            mirrors: false,
            batch: 5,
            samples: 1,
            beta: 1.0,
            seed: 5,
            denoise: 0.0,
        },
        Case {
            name: "gaussian(2) sigmoid [8] Z=2 β=0.25",
            cfg: small(vec![8], 2, Activation::Sigmoid, Likelihood::Gaussian { variance: 2.0 }),
            mirrors: false,
            batch: 3,
            samples: 1,
            beta: 0.25,
            seed: 6,
            denoise: 0.0,
        },
        Case {
            name: "bernoulli no hidden layer Z=2 L=2",
            cfg: small(vec![], 2, Activation::Relu, Likelihood::Bernoulli),
            mirrors: false,
            batch: 5,
            samples: 2,
            beta: 1.0,
            seed: 7,
            denoise: 0.0,
        },
    ];
    for case in &cases {
        check_gradients(case);
    }
}

/// Issue-5 objectives on the device: learned variances, class conditioning, β = 0.
#[test]
fn gradients_match_f64_reference_family() {
    let global = Likelihood::GaussianLearned { per_pixel: false };
    let pixel = Likelihood::GaussianLearned { per_pixel: true };
    let cases = [
        Case {
            name: "gaussian learned-global tanh [12] Z=4 L=2",
            cfg: small(vec![12], 4, Activation::Tanh, global),
            mirrors: false,
            batch: 5,
            samples: 2,
            beta: 1.0,
            seed: 8,
            denoise: 0.0,
        },
        Case {
            name: "gaussian learned-pixel relu [12] Z=4 β=0.5",
            cfg: small(vec![12], 4, Activation::Relu, pixel),
            mirrors: false,
            batch: 5,
            samples: 1,
            beta: 0.5,
            seed: 9,
            denoise: 0.0,
        },
        Case {
            name: "conditional bernoulli relu [12] Z=4 L=2",
            cfg: conditional(small(vec![12], 4, Activation::Relu, Likelihood::Bernoulli)),
            mirrors: false,
            batch: 5,
            samples: 2,
            beta: 1.0,
            seed: 10,
            denoise: 0.0,
        },
        Case {
            name: "conditional learned-pixel tanh [8, 12] Z=2 L=3 β=2",
            cfg: conditional(small(vec![8, 12], 2, Activation::Tanh, pixel)),
            mirrors: false,
            batch: 4,
            samples: 3,
            beta: 2.0,
            seed: 11,
            denoise: 0.0,
        },
        Case {
            name: "bernoulli relu [12] Z=4 β=0 (pure reconstruction)",
            cfg: small(vec![12], 4, Activation::Relu, Likelihood::Bernoulli),
            mirrors: false,
            batch: 5,
            samples: 1,
            beta: 0.0,
            seed: 12,
            denoise: 0.0,
        },
        Case {
            name: "conditional learned-pixel relu [12] Z=4 L=2, weights and activations read through texture mirrors",
            cfg: conditional(small(vec![12], 4, Activation::Relu, pixel)),
            mirrors: true,
            batch: 5,
            samples: 2,
            beta: 1.0,
            seed: 13,
            denoise: 0.0,
        },
    ];
    for case in &cases {
        check_gradients(case);
    }
}

/// Autoencoders (a deterministic code, with and without the L1 penalty) and denoising (masking
/// noise on the encoder's input, the clean batch as the target), for autoencoders and a VAE.
#[test]
fn gradients_match_f64_reference_autoencoders_and_denoising() {
    let ae = |l1: f32, latent: usize, likelihood: Likelihood| VaeConfig {
        code: Code::Deterministic { l1, contractive: 0.0 },
        ..small(vec![12], latent, Activation::Relu, likelihood)
    };
    let cases = [
        Case {
            name: "autoencoder bernoulli relu [12] Z=3 (odd: no μ/σ pairs)",
            cfg: ae(0.0, 3, Likelihood::Bernoulli),
            mirrors: false,
            batch: 5,
            samples: 1,
            beta: 1.0,
            seed: 21,
            denoise: 0.0,
        },
        Case {
            name: "sparse autoencoder l1=0.5 gaussian:0.5 relu [12] Z=4, through texture mirrors",
            cfg: ae(0.5, 4, Likelihood::Gaussian { variance: 0.5 }),
            mirrors: true,
            batch: 5,
            samples: 1,
            beta: 1.0,
            seed: 22,
            denoise: 0.0,
        },
        Case {
            name: "denoising conditional sparse autoencoder l1=0.1 mask 0.3",
            cfg: conditional(ae(0.1, 4, Likelihood::Bernoulli)),
            mirrors: false,
            batch: 5,
            samples: 1,
            beta: 1.0,
            seed: 23,
            denoise: 0.3,
        },
        Case {
            name: "contractive sparse autoencoder c=0.05 l1=0.1 relu [12] Z=4",
            cfg: VaeConfig {
                code: Code::Deterministic {
                    l1: 0.1,
                    contractive: 0.05,
                },
                ..small(vec![12], 4, Activation::Relu, Likelihood::Bernoulli)
            },
            mirrors: false,
            batch: 5,
            samples: 1,
            beta: 1.0,
            seed: 25,
            denoise: 0.0,
        },
        Case {
            name: "conditional denoising contractive autoencoder c=0.2 leakyrelu [12] Z=3, through mirrors",
            cfg: conditional(VaeConfig {
                code: Code::Deterministic {
                    l1: 0.0,
                    contractive: 0.2,
                },
                ..small(
                    vec![12],
                    3,
                    Activation::LeakyRelu,
                    Likelihood::Gaussian { variance: 0.5 },
                )
            }),
            mirrors: true,
            batch: 5,
            samples: 1,
            beta: 1.0,
            seed: 26,
            denoise: 0.2,
        },
        Case {
            name: "VQ-VAE K=6 G=2 β=0.25 relu [12] Z=4",
            cfg: VaeConfig {
                code: Code::Quantized {
                    codes: 6,
                    groups: 2,
                    commitment: 0.25,
                },
                ..small(vec![12], 4, Activation::Relu, Likelihood::Bernoulli)
            },
            mirrors: false,
            batch: 5,
            samples: 1,
            beta: 1.0,
            seed: 27,
            denoise: 0.0,
        },
        Case {
            name: "conditional VQ-VAE K=5 G=3 β=1 (one value per vector), through mirrors",
            cfg: conditional(VaeConfig {
                code: Code::Quantized {
                    codes: 5,
                    groups: 3,
                    commitment: 1.0,
                },
                ..small(vec![12], 3, Activation::Relu, Likelihood::Gaussian { variance: 0.5 })
            }),
            mirrors: true,
            batch: 5,
            samples: 1,
            beta: 1.0,
            seed: 28,
            denoise: 0.0,
        },
        Case {
            name: "denoising VAE mask 0.25 L=2 β=0.5, through texture mirrors",
            cfg: small(vec![12], 4, Activation::Relu, Likelihood::Bernoulli),
            mirrors: true,
            batch: 5,
            samples: 2,
            beta: 0.5,
            seed: 24,
            denoise: 0.25,
        },
    ];
    for case in &cases {
        check_gradients(case);
    }
}

#[test]
fn one_step_matches_reference_step() {
    let g = gpu();
    let cfg = VaeConfig {
        input_dim: 32,
        hidden: vec![16],
        latent: 4,
        activation: Activation::Relu,
        likelihood: Likelihood::Bernoulli,
        classes: 0,
        ..Default::default()
    };
    let (b, l) = (10, 1);
    let vae = Vae::new(g, cfg.clone(), 11).unwrap();
    let names = slot_names(&vae);
    let data = Data::new(g, 24, cfg.input_dim, 12);
    let ws = Workspace::new(g, &vae, &train_spec(b, l, false, None)).unwrap();
    let start = 7;
    let sp = StepParams {
        seed: 99,
        step: 0,
        batch_start: start as u32,
        stream: rng::STREAM_TRAIN,
        kl_beta: 1.0,
        ..Default::default()
    };
    let adam = AdamConfig {
        lr: 1e-3,
        ..Default::default()
    };
    let res = gpu_step(g, &vae, &ws, b, &data, sp, &adam);

    let mut params = to_f64(&res.params_before);
    let x = data.batch_x(start, b);
    let eps = step_eps(&sp, l, b, cfg.latent);
    let batch = Batch {
        x: &x,
        x_in: None,
        batch: b,
        eps: &eps,
        samples: l,
        beta: 1.0,
        labels: None,
    };
    let fwd = reference::forward(&cfg, &params, &batch);
    assert!(
        reference::kink_margin(&cfg, &fwd) > 1e-5,
        "a pre-activation sits on the ReLU kink"
    );
    let (losses, grads) = reference::gradients(&cfg, &params, &batch);

    // Loss terms from the metric row (f32 sums of ≤ 320 terms: relative 1e-5).
    let nll: f64 = losses.nll.iter().sum();
    let kl: f64 = losses.kl.iter().sum();
    assert!(
        (res.totals[0] - nll).abs() <= 1e-5 * nll,
        "recon {} vs {nll}",
        res.totals[0]
    );
    assert!(
        (res.totals[1] - kl).abs() <= 1e-5 * kl + 1e-6,
        "kl {} vs {kl}",
        res.totals[1]
    );
    // The gradients the update used (written before the optimizer ran in the same submit).
    assert_tensors_close("one step: gradients", &names, &to_f64(&res.grads), &grads, 1e-4, 1e-7);

    // Adam's first step moves each parameter by lr·g/(|g| + eps), ≈ lr in magnitude. An f32
    // gradient error δ shifts that by lr·eps·δ/(|g| + eps)², negligible unless |g| ≲ 1e-6,
    // so the parameters must agree to the f32 rounding of values ~0.2 plus the f32 arithmetic
    // of the update: 1e-6 absolute (0.1% of the step; a wrong bias correction or lr would move
    // them by ~1e-3).
    let mut state = AdamState::zeros(&params);
    reference::adam_step(&adam, 1, &mut params, &grads, &mut state);
    assert_tensors_close(
        "one step: parameters",
        &names,
        &to_f64(&res.params_after),
        &params,
        0.0,
        1e-6,
    );
    // And the step moved them.
    let moved = res
        .params_after
        .iter()
        .flatten()
        .zip(res.params_before.iter().flatten())
        .filter(|(a, b)| a != b)
        .count();
    assert!(moved > vae.num_params() / 2, "only {moved} parameters moved");
}

/// A plan for fewer rows than its workspace (the last partial batch) views prefixes of every
/// buffer, for each kind of code: the VAE's, the contractive sparse autoencoder's (whose S = MᵀM
/// must sum only the live rows' masks) and the VQ-VAE's (its index slots).
#[test]
fn partial_batch_plan_views_prefix() {
    let base = VaeConfig {
        input_dim: 8,
        hidden: vec![12],
        latent: 2,
        activation: Activation::Relu,
        likelihood: Likelihood::Bernoulli,
        classes: 0,
        ..Default::default()
    };
    partial_batch_case(base.clone(), 2);
    let cae = Code::Deterministic {
        l1: 0.1,
        contractive: 0.3,
    };
    partial_batch_case(
        VaeConfig {
            code: cae,
            ..base.clone()
        },
        1,
    );
    let vq = Code::Quantized {
        codes: 5,
        groups: 2,
        commitment: 0.25,
    };
    partial_batch_case(
        VaeConfig {
            latent: 4,
            code: vq,
            ..base
        },
        1,
    );
}

fn partial_batch_case(cfg: VaeConfig, l: usize) {
    let g = gpu();
    // Models without a prior have no β: their terms enter with weight 1.
    let beta = if cfg.is_vae() { 0.75 } else { 1.0 };
    let vae = Vae::new(g, cfg.clone(), 21).unwrap();
    let names = slot_names(&vae);
    let data = Data::new(g, 12, cfg.input_dim, 22);
    let frozen = AdamConfig {
        lr: 0.0,
        ..Default::default()
    };
    let sp = |start: u32, step: u32| StepParams {
        seed: 5,
        step,
        batch_start: start,
        stream: rng::STREAM_TRAIN,
        kl_beta: beta,
        ..Default::default()
    };
    // A full batch first, so every row of the large workspace holds another batch's values.
    let ws8 = Workspace::new(g, &vae, &train_spec(8, l, false, None)).unwrap();
    gpu_step(g, &vae, &ws8, 8, &data, sp(0, 3), &frozen);
    let part = gpu_step(g, &vae, &ws8, 3, &data, sp(9, 4), &frozen);
    let ws3 = Workspace::new(g, &vae, &train_spec(3, l, false, None)).unwrap();
    let exact = gpu_step(g, &vae, &ws3, 3, &data, sp(9, 4), &frozen);

    // Same shapes, same kernels, same inputs: the results should agree to the last bit; allow
    // 1e-6 relative in case a strategy choice differs, far below any stale-row contribution.
    let what = &format!(
        "{}: batch-3 plan in a batch-8 workspace vs a batch-3 workspace",
        code_name(&cfg.code)
    );
    assert_tensors_close(what, &names, &to_f64(&part.grads), &to_f64(&exact.grads), 1e-6, 0.0);
    for k in 0..2 {
        let (a, e) = (part.totals[k], exact.totals[k]);
        assert!((a - e).abs() <= 1e-6 * e.abs(), "{what}: metric {k}: {a} vs {e}");
    }
    // And both are the reference's gradient of those three examples (not of eight).
    let params = to_f64(&part.params_before);
    let x = data.batch_x(9, 3);
    let eps = step_eps(&sp(9, 4), l, 3, cfg.latent);
    let batch = Batch {
        x: &x,
        x_in: None,
        batch: 3,
        eps: &eps,
        samples: l,
        beta: beta as f64,
        labels: None,
    };
    let (_, want) = reference::gradients(&cfg, &params, &batch);
    assert_tensors_close(
        &format!("{}: partial batch vs reference", code_name(&cfg.code)),
        &names,
        &to_f64(&part.grads),
        &want,
        1e-4,
        1e-7,
    );
}

/// The trainer's own loop, with the options no other test runs end to end (dynamic
/// binarization, two Monte Carlo samples, `drop_last`, AdamW's decoupled weight decay and a
/// β ≠ 1), against the reference replaying the same two epochs on the host: each epoch's
/// order, the binarized batches, ε, the gradients and AdamW. Checks the parameters after
/// every epoch, the last step's gradients and the epochs' reported −ELBO.
#[test]
fn trainer_epochs_match_the_reference_with_every_option() {
    let g = gpu();
    let cfg = VaeConfig {
        input_dim: 16,
        hidden: vec![12],
        latent: 4,
        activation: Activation::Relu,
        likelihood: Likelihood::Bernoulli,
        classes: 0,
        ..Default::default()
    };
    let (count, b, l) = (10, 4, 2);
    let vae = Vae::new(g, cfg.clone(), 31).unwrap();
    let names = slot_names(&vae);
    let data = Data::new(g, count, cfg.input_dim, 32);
    let adam = AdamConfig {
        lr: 1e-2,
        weight_decay: 0.1,
        decoupled: true,
        ..Default::default()
    };
    let tc = TrainConfig {
        batch_size: b,
        adam,
        seed: 33,
        drop_last: true,
        binarize: true,
        mc_samples: l,
        beta: 0.5,
        epochs: 2,
        ..Default::default()
    };
    let set = GpuDataset::upload(g, "train", &data.bytes, count, cfg.input_dim, vec![]).unwrap();
    let mut trainer = Trainer::new(g, &vae, set, tc.clone()).unwrap();
    assert_eq!(trainer.steps_per_epoch(), 2, "10 examples, batch 4, drop_last");

    let mut params = to_f64(&vae.arena.read_params(g).unwrap());
    let mut state = AdamState::zeros(&params);
    let seed = rng::device_seed(tc.seed);
    let d = cfg.input_dim;
    let mut step = 0u32;
    let mut last_grads = Vec::new();
    for epoch in 0..2u64 {
        let report = trainer.train_epoch(|_, _| {}).unwrap();
        // The order the trainer documents: a host permutation tagged 1 + epoch.
        let order = rng::permutation(&mut rng::host_rng(tc.seed, 1 + epoch), count);
        let mut elbo_sum = 0.0;
        for i in 0..2 {
            // Row r is example order[4i + r]; pixel e of the batch is 1 where the step's
            // uniform draw falls below its grey level (gather.wgsl).
            let x: Vec<f64> = (0..b * d)
                .map(|e| {
                    let grey = data.bytes[order[i * b + e / d] as usize * d + e % d] as f64 / 255.0;
                    let u = rng::uniform(seed, step, rng::stream_word(rng::STREAM_BINARIZE, 0), e as u32);
                    if u < grey {
                        1.0
                    } else {
                        0.0
                    }
                })
                .collect();
            let sp = StepParams {
                seed,
                step,
                stream: rng::STREAM_TRAIN,
                ..Default::default()
            };
            let eps = step_eps(&sp, l, b, cfg.latent);
            let batch = Batch {
                x: &x,
                x_in: None,
                batch: b,
                eps: &eps,
                samples: l,
                beta: 0.5,
                labels: None,
            };
            let fwd = reference::forward(&cfg, &params, &batch);
            assert!(
                reference::kink_margin(&cfg, &fwd) > 1e-5,
                "step {step}: a pre-activation sits on the ReLU kink"
            );
            let (losses, grads) = reference::gradients(&cfg, &params, &batch);
            elbo_sum += losses.nll.iter().sum::<f64>() + losses.kl.iter().sum::<f64>();
            step += 1;
            reference::adam_step(&adam, step as u64, &mut params, &grads, &mut state);
            last_grads = grads;
        }
        assert_eq!((report.steps, report.train.examples), (2, 8), "epoch {epoch}");
        // The reported bound is the β = 1 −ELBO of the binarized batches, per example.
        let want = elbo_sum / 8.0;
        assert!(
            (report.train.loss - want).abs() <= 1e-5 * want,
            "epoch {epoch}: −ELBO {} vs reference {want}",
            report.train.loss
        );
        // Adam moves each parameter by about lr per step; an f32 gradient error δ (relative
        // 1e-4) moves it by about lr·δ, so 2e-5 after four steps is far below a wrong decay
        // (lr·wd·p ≈ 1e-4 per step) or a wrong batch (≈ lr).
        let what = format!("after epoch {epoch}");
        assert_tensors_close(
            &what,
            &names,
            &to_f64(&vae.arena.read_params(g).unwrap()),
            &params,
            0.0,
            2e-5,
        );
    }
    // The arena holds the last step's gradients, taken at parameters the reference tracks.
    assert_tensors_close(
        "last step: gradients",
        &names,
        &to_f64(&vae.arena.read_grads(g).unwrap()),
        &last_grads,
        1e-3,
        1e-6,
    );
}

/// The ε upper layer `level` of a hierarchical VAE (z_{level+2}) draws for a step, [rows, Z]:
/// sample index `TOP_SAMPLE_BASE` + level in the key, so never one of z₁'s draws or another
/// layer's.
pub(crate) fn top_eps(sp: &StepParams, rows: usize, latent: usize, level: u32) -> Vec<f64> {
    let stream = rng::stream_word(sp.stream, 32768 + level); // 2^15 + level, written out
    (0..rows * latent)
        .map(|i| rng::normal(sp.seed, sp.step, stream, i as u32))
        .collect()
}

/// A hierarchical VAE (two to four stochastic layers, see `TopLatent`): one training step's gradient
/// of every parameter against central finite differences of the f64 reference objective
/// recon + β·kl written from the model's definition (`reference::hier_losses`), and the metric
/// row against its terms. The step runs for 5 examples in a workspace for 8 that a full step
/// filled first, so the upper KL terms' place in the per-example buffer is checked too; the
/// third case draws L = 2 samples of (z₁, z₂) per example, the fourth is conditional on 3
/// classes (the one-hot in every network's input, z₂'s rows included); the last three stack
/// z₃ (and z₄) above z₂, where a middle layer's draw, KL term and gradients meet, and the
/// last has the most layers a model may have.
#[test]
fn hierarchical_vae_gradients_match_finite_differences() {
    let two = vec![TopLatent {
        latent: 2,
        hidden: vec![8],
    }];
    let three = vec![
        TopLatent {
            latent: 4,
            hidden: vec![8],
        },
        TopLatent {
            latent: 2,
            hidden: vec![4],
        },
    ];
    let four = vec![
        TopLatent {
            latent: 4,
            hidden: vec![8],
        },
        TopLatent {
            latent: 2,
            hidden: vec![4],
        },
        TopLatent {
            latent: 2,
            hidden: vec![4],
        },
    ];
    let cases = [
        (Activation::Tanh, Likelihood::Bernoulli, 1, 0, two.clone()),
        (
            Activation::Relu,
            Likelihood::Gaussian { variance: 0.5 },
            1,
            0,
            two.clone(),
        ),
        (Activation::Tanh, Likelihood::Bernoulli, 2, 0, two.clone()),
        (Activation::Tanh, Likelihood::Bernoulli, 2, 3, two),
        (Activation::Tanh, Likelihood::Bernoulli, 1, 0, three.clone()),
        (Activation::Tanh, Likelihood::Gaussian { variance: 0.5 }, 2, 3, three),
        (Activation::Tanh, Likelihood::Bernoulli, 2, 0, four),
        // Upper networks of two hidden layers each (the IWAE paper's), under a conditional model.
        (
            Activation::Tanh,
            Likelihood::Bernoulli,
            2,
            3,
            vec![
                TopLatent {
                    latent: 4,
                    hidden: vec![8, 12],
                },
                TopLatent {
                    latent: 2,
                    hidden: vec![4, 8],
                },
            ],
        ),
        // The most layers (MAX_TOP_LAYERS above z₁): ten metric segments, eight RNG bases.
        (
            Activation::Tanh,
            Likelihood::Bernoulli,
            1,
            0,
            vec![
                TopLatent {
                    latent: 2,
                    hidden: vec![4]
                };
                vae_wgpu::model::MAX_TOP_LAYERS
            ],
        ),
    ];
    for (activation, likelihood, l, classes, top) in cases {
        let g = gpu();
        let cfg = VaeConfig {
            input_dim: 8,
            hidden: vec![12],
            latent: 4,
            activation,
            likelihood,
            code: crate::common::hier(&top),
            classes,
            arch: Default::default(),
        };
        let what = format!(
            "hierarchical {activation:?} {likelihood:?} L = {l}, {classes} classes, {} layers",
            top.len() + 1
        );
        let vae = Vae::new(g, cfg.clone(), 31).unwrap();
        let names = slot_names(&vae);
        let data = Data::new(g, 16, cfg.input_dim, 32);
        let frozen = AdamConfig {
            lr: 0.0,
            ..Default::default()
        };
        let beta = 0.75;
        let sp = |start: u32, step: u32| StepParams {
            seed: 9,
            step,
            batch_start: start,
            stream: rng::STREAM_TRAIN,
            kl_beta: beta,
            ..Default::default()
        };
        let ws = Workspace::new(g, &vae, &train_spec(8, l, false, None)).unwrap();
        gpu_step(g, &vae, &ws, 8, &data, sp(8, 2), &frozen);
        let b = 5;
        let res = gpu_step(g, &vae, &ws, b, &data, sp(3, 6), &frozen);

        let params = to_f64(&res.params_before);
        let x = data.batch_x(3, b);
        let labels = data.batch_labels(3, b);
        let y = (classes > 0).then_some(&labels[..]);
        let eps1 = step_eps(&sp(3, 6), l, b, cfg.latent);
        let eps_up: Vec<Vec<f64>> = (0..top.len())
            .map(|i| top_eps(&sp(3, 6), l * b, top[i].latent, i as u32))
            .collect();
        let (recon, kl) = reference::hier_losses(&cfg, &params, &x, y, b, l, &eps1, &eps_up);
        for (k, want) in [recon, kl].into_iter().enumerate() {
            let got = res.totals[k];
            assert!(
                (got - want).abs() <= 1e-5 * want.abs() + 1e-4,
                "{what}: metric {k}: {got} vs {want}"
            );
        }
        // Central differences of recon + β·kl, each parameter in turn.
        let objective = |p: &[Vec<f64>]| {
            let (r, k) = reference::hier_losses(&cfg, p, &x, y, b, l, &eps1, &eps_up);
            r + beta as f64 * k
        };
        let h = 1e-6;
        let mut p = params.clone();
        let mut want: Vec<Vec<f64>> = params.iter().map(|v| vec![0.0; v.len()]).collect();
        for slot in 0..p.len() {
            for i in 0..p[slot].len() {
                let v = p[slot][i];
                p[slot][i] = v + h;
                let up = objective(&p);
                p[slot][i] = v - h;
                let down = objective(&p);
                p[slot][i] = v;
                want[slot][i] = (up - down) / (2.0 * h);
            }
        }
        assert_tensors_close(&what, &names, &to_f64(&res.grads), &want, 2e-4, 1e-6);
    }
}

/// A VQ-VAE whose codebook is trained by exponential moving averages: two steps against an
/// f64 replay of the update from the step's own z_e and assignments (which must be the nearest
/// entries of the codebook before it), the codebook's gradient left at 0 (so Adam leaves it),
/// and every other gradient equal to the gradient-trained model's.
#[test]
fn vq_codebook_moving_averages_match_the_reference() {
    let g = gpu();
    let cfg = VaeConfig {
        input_dim: 8,
        hidden: vec![12],
        latent: 4,
        code: Code::Quantized {
            codes: 5,
            groups: 2,
            commitment: 0.25,
        },
        ..Default::default()
    };
    let vae = Vae::new(g, cfg.clone(), 41).unwrap();
    let names = slot_names(&vae);
    let book_slot = vae.arena.layout.find("codebook").unwrap();
    let data = Data::new(g, 16, cfg.input_dim, 42);
    let frozen = AdamConfig {
        lr: 0.0,
        ..Default::default()
    };
    let sp = |start: u32, step: u32| StepParams {
        seed: 3,
        step,
        batch_start: start,
        stream: rng::STREAM_TRAIN,
        kl_beta: 1.0,
        ..Default::default()
    };
    let decay = 0.8;
    let b = 8;
    let ws = Workspace::new(g, &vae, &train_spec(b, 1, false, Some(decay))).unwrap();
    // The gradient-trained twin, given the same parameters before each step.
    let twin = Vae::new(g, cfg.clone(), 41).unwrap();
    let plain = Workspace::new(g, &twin, &train_spec(b, 1, false, None)).unwrap();
    let (mut big_n, mut big_m) = (vec![0.0f64; 10], vec![0.0f64; 10]);
    for (step, start) in [(0u32, 0u32), (1, 8)] {
        twin.arena.write_params(g, &vae.arena.read_params(g).unwrap()).unwrap();
        let reference_step = gpu_step(g, &twin, &plain, b, &data, sp(start, step), &frozen);
        let res = gpu_step(g, &vae, &ws, b, &data, sp(start, step), &frozen);
        let enc = g.read(&ws.enc).unwrap();
        let idx = g.read(ws.latent_output("vq.index").unwrap()).unwrap();
        let before = &res.params_before[book_slot];
        // Assignments: the nearest entry of the codebook before the update, first on ties.
        for (a, &k) in idx.iter().enumerate() {
            let v = &enc[2 * a..2 * a + 2];
            let dist = |k: usize| {
                (0..2)
                    .map(|c| (v[c] as f64 - before[2 * k + c] as f64).powi(2))
                    .sum::<f64>()
            };
            let best = (0..5).fold(0, |best, k| if dist(k) < dist(best) { k } else { best });
            assert_eq!(k as usize, best, "step {step}: vector {a}");
        }
        // The update, in f64.
        let mut want = [0.0f64; 10];
        for i in 0..10 {
            let (k, c) = (i / 2, i % 2);
            let chosen: Vec<usize> = (0..idx.len()).filter(|&a| idx[a] as usize == k).collect();
            let s: f64 = chosen.iter().map(|&a| enc[2 * a + c] as f64).sum();
            big_n[i] = decay as f64 * big_n[i] + (1.0 - decay as f64) * chosen.len() as f64;
            big_m[i] = decay as f64 * big_m[i] + (1.0 - decay as f64) * s;
            want[i] = if big_n[i] > 1e-20 {
                big_m[i] / big_n[i]
            } else {
                before[i] as f64
            };
        }
        let got = &res.params_after[book_slot];
        for i in 0..10 {
            assert!(
                (got[i] as f64 - want[i]).abs() <= 1e-5 * (1.0 + want[i].abs()),
                "step {step}: codebook[{i}] = {} want {}",
                got[i],
                want[i]
            );
        }
        assert!(
            res.grads[book_slot].iter().all(|&v| v == 0.0),
            "the codebook got a gradient"
        );
        assert!(
            want.iter().zip(before).any(|(w, b)| (w - *b as f64).abs() > 1e-3),
            "step {step}: nothing moved"
        );
        for (slot, name) in names.iter().enumerate().filter(|(s, _)| *s != book_slot) {
            assert_eq!(res.grads[slot], reference_step.grads[slot], "step {step}: {name}");
        }
    }
}
