//! The model family and latent tools end to end: the importance-weighted bound against the
//! Monte Carlo ELBO and as K grows, the KL schedule as the trainer applies it, a conditional
//! and a learned-variance model training, and the pictures the explore tools write.

use vae_wgpu::data::DatasetKind;
use vae_wgpu::data::GpuDataset;
use vae_wgpu::explore::{
    arithmetic_figure, class_figure, hierarchy_figure, interpolation_figure, manifold_figure, FIGURE_PAD,
};
use vae_wgpu::infer::prior_latents;
use vae_wgpu::io::grid_size;
use vae_wgpu::model::{Activation, Likelihood};
use vae_wgpu::model::{Code, TopLatent, Vae, VaeConfig};
use vae_wgpu::rng;
use vae_wgpu::train::{Evaluator, KlSchedule, TrainConfig, Trainer};

use crate::common::{assert_close, gpu, rand_vec, to_f64};
use crate::reference::{self, Batch};

fn mnist(n: usize, train: bool) -> (Vec<u8>, Vec<u32>) {
    let set = DatasetKind::Mnist
        .load_split(&DatasetKind::Mnist.default_dir(), train)
        .expect("data/mnist is committed");
    (set.images[..n * 784].to_vec(), set.labels[..n].to_vec())
}

/// −log (1/K) Σ_k exp(w_k) of K log weights, stably (the largest factored out).
fn neg_log_mean_exp(w: &[f64]) -> f64 {
    let m = w.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let lse = m + w.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
    -(lse - (w.len() as f64).ln())
}

/// The importance-weighted estimate −log (1/K) Σ_s p(x|z_s) p(z_s) / q(z_s|x), averaged over
/// the data, recomputed in f64 with the evaluator's noise: ε for sample s of the example in
/// row e of its batch is keyed (seed, 0, stream_word(EVAL, s), e·Z + j), and batches hold
/// max(1, 5000 / K) examples.
fn iw_reference(cfg: &VaeConfig, params: &[Vec<f64>], bytes: &[u8], n: usize, seed: u64, k: usize) -> f64 {
    let (d, zd) = (cfg.input_dim, cfg.latent);
    let b = (5000 / k).clamp(1, n);
    let half_log_2pi = 0.5 * std::f64::consts::TAU.ln();
    let mut total = 0.0;
    for start in (0..n).step_by(b) {
        let rows = b.min(n - start);
        let x: Vec<f64> = bytes[start * d..(start + rows) * d]
            .iter()
            .map(|&v| v as f64 / 255.0)
            .collect();
        let eps: Vec<f64> = (0..k)
            .flat_map(|s| {
                (0..rows * zd).map(move |i| {
                    rng::normal(
                        rng::device_seed(seed),
                        0,
                        rng::stream_word(rng::STREAM_EVAL, s as u32),
                        i as u32,
                    )
                })
            })
            .collect();
        let batch = Batch {
            x: &x,
            x_in: None,
            batch: rows,
            eps: &eps,
            samples: k,
            beta: 1.0,
            labels: None,
        };
        let fwd = reference::forward(cfg, params, &batch);
        for e in 0..rows {
            // log p(x|z_s) + log p(z_s) − log q(z_s|x) for each sample.
            let w: Vec<f64> = (0..k)
                .map(|s| {
                    let r = s * rows + e;
                    let (mut log_p, mut log_q) = (0.0, 0.0);
                    for j in 0..zd {
                        let mu = fwd.enc[e * 2 * zd + j];
                        let lv = fwd.enc[e * 2 * zd + zd + j];
                        let z = fwd.z[r * zd + j];
                        log_p += -0.5 * z * z - half_log_2pi;
                        log_q += -0.5 * (z - mu).powi(2) / lv.exp() - 0.5 * lv - half_log_2pi;
                    }
                    -fwd.nll[r] + log_p - log_q
                })
                .collect();
            total += neg_log_mean_exp(&w);
        }
    }
    total / n as f64
}

/// The importance-weighted bound against the f64 reference on a small random model and varied
/// data: K = 1 (the single-draw Monte Carlo ELBO), K = 3 (one batch of all 7 examples) and
/// K = 1000 (batches of 5, so the last batch is partial). A dropped −ln K would move K = 1000
/// by 6.9 nats; examples and samples swapped, or the partial batch mis-indexed, by far more
/// than the tolerance.
#[test]
fn iw_bound_matches_the_reference_for_one_and_many_samples() {
    let g = gpu();
    let cfg = VaeConfig {
        input_dim: 16,
        hidden: vec![12],
        latent: 4,
        activation: Activation::Tanh,
        likelihood: Likelihood::Bernoulli,
        classes: 0,
        ..Default::default()
    };
    let n = 7;
    let bytes: Vec<u8> = rand_vec(n * 16, 31, 0.0, 256.0)
        .iter()
        .map(|&v| v.min(255.0) as u8)
        .collect();
    let vae = Vae::new(g, cfg.clone(), 5).unwrap();
    let eval = Evaluator::new(g, GpuDataset::upload(g, "test", &bytes, n, 16, vec![]).unwrap()).unwrap();
    let params = to_f64(&vae.arena.read_params(g).unwrap());
    let seed = 9u64;
    assert!(
        eval.iw_nll(&vae, seed, 0, false, |_, _| {}).is_err(),
        "K = 0 must be refused"
    );
    // Past 2^15 draws the sample index would reach z₂'s keys (and the stream's bits).
    assert!(eval
        .iw_nll(&vae, seed, vae_wgpu::train::MAX_SAMPLES + 1, false, |_, _| {})
        .is_err());
    for k in [1usize, 3, 1000] {
        let got = eval.iw_nll(&vae, seed, k, false, |_, _| {}).unwrap();
        let want = iw_reference(&cfg, &params, &bytes, n, seed, k);
        // f32 NLL sums over 16 pixels and f32 exp/log in the kernels: relative 1e-5.
        assert!(
            (got - want).abs() <= 1e-5 * want.abs() + 1e-5,
            "K = {k}: IW estimate {got} vs f64 reference {want}"
        );
    }
}

/// On a trained model the importance-weighted bound tightens with K: −log p̂(x) with K = 1,
/// 10 and 100 over 200 test images must not rise by more than 0.05 nats (Monte Carlo noise of
/// the averages; the expected improvement from 1 to 100 samples is several nats), and K = 100
/// must sit below the −ELBO.
#[test]
fn iw_bound_does_not_loosen_as_k_grows() {
    let g = gpu();
    let (images, labels) = mnist(1000, true);
    let cfg = VaeConfig {
        hidden: vec![64],
        latent: 8,
        ..Default::default()
    };
    let vae = Vae::new(g, cfg, 2).unwrap();
    let train = GpuDataset::upload(g, "train", &images, 1000, 784, labels).unwrap();
    let mut tr = Trainer::new(
        g,
        &vae,
        train,
        TrainConfig {
            batch_size: 100,
            ..Default::default()
        },
    )
    .unwrap();
    for _ in 0..3 {
        tr.train_epoch(|_, _| {}).unwrap();
    }
    let (test, test_labels) = mnist(200, false);
    let eval = Evaluator::new(g, GpuDataset::upload(g, "test", &test, 200, 784, test_labels).unwrap()).unwrap();
    let iw: Vec<f64> = [1, 10, 100]
        .iter()
        .map(|&k| eval.iw_nll(&vae, 3, k, false, |_, _| {}).unwrap())
        .collect();
    let elbo = eval.elbo(&vae, 3, false).unwrap().loss;
    assert!(
        iw[1] <= iw[0] + 0.05 && iw[2] <= iw[1] + 0.05,
        "IW bound loosened with K: {iw:?}"
    );
    assert!(
        iw[2] < elbo - 0.5,
        "K = 100 ({}) should be well below the -ELBO ({elbo})",
        iw[2]
    );
}

/// The trainer feeds the schedule's β to every step (checked on the GPU's parameters) and
/// reports the last one of the epoch.
#[test]
fn trainer_applies_the_kl_schedule() {
    let g = gpu();
    let (images, labels) = mnist(256, true);
    let cfg = VaeConfig {
        hidden: vec![32],
        latent: 4,
        ..Default::default()
    };
    let vae = Vae::new(g, cfg.clone(), 1).unwrap();
    let data = GpuDataset::upload(g, "train", &images, 256, 784, labels).unwrap();
    let tc = TrainConfig {
        batch_size: 64,
        beta: 2.0,
        kl_schedule: KlSchedule::Warmup { steps: 6 },
        ..Default::default()
    };
    let mut tr = Trainer::new(g, &vae, data, tc).unwrap();
    let want = [0.0, 2.0 / 6.0, 4.0 / 6.0, 1.0, 4.0 / 3.0, 5.0 / 3.0, 2.0, 2.0];
    for (t, w) in want.iter().enumerate() {
        assert!(
            (tr.beta_at(t as u64) - w).abs() < 1e-6,
            "step {t}: {} vs {w}",
            tr.beta_at(t as u64)
        );
    }
    let rep = tr.train_epoch(|_, _| {}).unwrap();
    assert!(
        (rep.beta - 1.0).abs() < 1e-6,
        "β at the epoch's last step (t = 3) is 1, got {}",
        rep.beta
    );
    // The GPU gets the schedule's β, not the configured one: one step (an epoch of one batch)
    // under the warm-up (β = 0 at t = 0) gives bit-identical parameters to a constant β = 0,
    // and different ones from a constant β = 2.
    let one_step = |beta: f32, kl_schedule: KlSchedule| -> Vec<Vec<f32>> {
        let vae = Vae::new(g, cfg.clone(), 1).unwrap();
        let data = GpuDataset::upload(g, "train", &images[..64 * 784], 64, 784, vec![]).unwrap();
        let tc = TrainConfig {
            batch_size: 64,
            beta,
            kl_schedule,
            ..Default::default()
        };
        let mut tr = Trainer::new(g, &vae, data, tc).unwrap();
        tr.train_epoch(|_, _| {}).unwrap();
        vae.arena.read_params(g).unwrap()
    };
    let warm = one_step(2.0, KlSchedule::Warmup { steps: 6 });
    assert!(
        warm == one_step(0.0, KlSchedule::Constant),
        "warm-up step 0 did not train with β = 0"
    );
    assert!(
        warm != one_step(2.0, KlSchedule::Constant),
        "β = 2 changed nothing: the test is blind"
    );
    // More cycles than steps in the run (5 epochs of 2 steps) cannot be spread over it.
    let data = GpuDataset::upload(g, "train", &images, 256, 784, vec![]).unwrap();
    let bad = TrainConfig {
        kl_schedule: KlSchedule::Cyclical { cycles: 50 },
        epochs: 5,
        ..Default::default()
    };
    let vae = Vae::new(g, VaeConfig::default(), 1).unwrap();
    assert!(Trainer::new(g, &vae, data, bad).is_err());
}

/// A conditional model and a learned per-pixel variance both train (the loss falls), and a
/// conditional model refuses an unlabelled dataset with an error that says why.
#[test]
fn conditional_and_learned_variance_models_train() {
    let g = gpu();
    let (images, labels) = mnist(300, true);
    for cfg in [
        VaeConfig {
            hidden: vec![64],
            latent: 8,
            classes: 10,
            ..Default::default()
        },
        VaeConfig {
            hidden: vec![64],
            latent: 8,
            likelihood: Likelihood::GaussianLearned { per_pixel: true },
            ..Default::default()
        },
    ] {
        let vae = Vae::new(g, cfg.clone(), 4).unwrap();
        let data = GpuDataset::upload(g, "train", &images, 300, 784, labels.clone()).unwrap();
        let tc = TrainConfig {
            batch_size: 64,
            ..Default::default()
        };
        let mut tr = Trainer::new(g, &vae, data, tc).unwrap();
        let losses: Vec<f64> = (0..4).map(|_| tr.train_epoch(|_, _| {}).unwrap().train.loss).collect();
        assert!(losses[3] < losses[0] - 20.0, "{cfg:?}: loss did not fall: {losses:?}");
    }
    let vae = Vae::new(
        g,
        VaeConfig {
            classes: 10,
            ..Default::default()
        },
        1,
    )
    .unwrap();
    let data = GpuDataset::upload(g, "train", &images, 300, 784, vec![]).unwrap();
    let e = Trainer::new(g, &vae, data, TrainConfig::default())
        .err()
        .expect("no labels");
    assert!(e.to_string().contains("labelled"), "{e}");
}

/// Pictures: each figure has the documented grid, the written PNG has the size `grid_size`
/// gives, and the images are not constant.
#[test]
fn figures_have_documented_sizes_and_content() {
    let g = gpu();
    let side = 4;
    let cfg = VaeConfig {
        input_dim: side * side,
        hidden: vec![8],
        latent: 2,
        classes: 3,
        ..Default::default()
    };
    let vae = Vae::new(g, cfg, 6).unwrap();
    let means: Vec<f32> = rand_vec(6 * 2, 40, -1.5, 1.5);
    let labels = [0u32, 1, 2, 0, 1, 2];
    let dir = std::env::temp_dir().join(format!("vae-wgpu-figures-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let figures = [
        (
            "interpolation",
            interpolation_figure(g, &vae, &means, &labels, &[(0, 1), (2, 5)], 7).unwrap(),
            4 * 7,
            7,
        ),
        (
            "arithmetic",
            arithmetic_figure(g, &vae, &means, &labels, 3, &[0, 1, 2]).unwrap(),
            3 * 4,
            4,
        ),
        ("class_grid", class_figure(g, &vae, 1, 5, 1.0).unwrap(), 3 * 5, 5),
        ("manifold", manifold_figure(g, &vae, 6, 1).unwrap(), 36, 6),
    ];
    for (name, fig, count, cols) in figures {
        assert_eq!(
            (fig.count, fig.cols, fig.images.len()),
            (count, cols, count * side * side),
            "{name}"
        );
        let path = dir.join(format!("{name}.png"));
        fig.write(&path, [1, side, side]).unwrap();
        let img = image::open(&path).unwrap().to_luma8();
        let (w, h) = grid_size(count, side, side, cols, FIGURE_PAD);
        assert_eq!((img.width() as usize, img.height() as usize), (w, h), "{name} PNG size");
        // Inside the cells, not the padding: decoded images of a random model vary.
        let (lo, hi) = fig
            .images
            .iter()
            .fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
        assert!(hi - lo > 0.01, "{name}: constant images ({lo}..{hi})");
        let px: Vec<u8> = img.into_raw();
        assert!(px.iter().any(|&p| p != px[0]), "{name}: constant PNG");
    }
    // Interpolation rows start and end at the pair's own codes.
    let fig = interpolation_figure(g, &vae, &means, &labels, &[(0, 1)], 3).unwrap();
    let direct = vae_wgpu::infer::decode_conditional(g, &vae, &means[..4], Some(&[0, 0])).unwrap();
    let n = side * side;
    assert_eq!(&fig.images[..n], &direct[..n]);
    assert_eq!(&fig.images[2 * n..3 * n], &direct[n..2 * n]);

    // A hierarchical VAE's rows of z₁ draws per z₂ draw: its first cell is the first of
    // prior_latents' samples (the same z₂ and ε keys), and only such a model has one.
    assert!(matches!(
        hierarchy_figure(g, &vae, 1, 2, 2, 1.0),
        Err(vae_wgpu::VaeError::Config(_))
    ));
    let hier = Vae::new(
        g,
        VaeConfig {
            input_dim: side * side,
            hidden: vec![8],
            latent: 4,
            code: Code::Hierarchical(vec![TopLatent {
                latent: 2,
                hidden: vec![8],
            }]),
            ..Default::default()
        },
        7,
    )
    .unwrap();
    let fig = hierarchy_figure(g, &hier, 3, 3, 4, 0.9).unwrap();
    assert_eq!((fig.count, fig.cols, fig.images.len()), (12, 4, 12 * n));
    let first = prior_latents(g, &hier, 3, 1, 0.9, None).unwrap();
    let direct = vae_wgpu::infer::decode(g, &hier, &first).unwrap();
    assert_eq!(&fig.images[..n], &direct[..]);
    // Cells of a row differ (z₁'s own noise), and so do rows.
    assert!(fig.images[..n] != fig.images[n..2 * n] && fig.images[..n] != fig.images[4 * n..5 * n]);
    // Conditional on 3 classes: row r has class r mod 3 in p(z₁|z₂, y) and the decoder, and
    // the class grid's row c decodes prior_latents' draws for label c.
    let chier = Vae::new(
        g,
        VaeConfig {
            classes: 3,
            ..hier.config.clone()
        },
        7,
    )
    .unwrap();
    let fig = hierarchy_figure(g, &chier, 3, 3, 4, 0.9).unwrap();
    let first = prior_latents(g, &chier, 3, 1, 0.9, Some(&[0])).unwrap();
    let direct = vae_wgpu::infer::decode_conditional(g, &chier, &first, Some(&[0])).unwrap();
    assert_eq!(&fig.images[..n], &direct[..]);
    let grid = class_figure(g, &chier, 5, 2, 1.0).unwrap();
    let z = prior_latents(g, &chier, 5, 2, 1.0, Some(&[2, 2])).unwrap();
    let direct = vae_wgpu::infer::decode_conditional(g, &chier, &z, Some(&[2, 2])).unwrap();
    assert_eq!(&grid.images[4 * n..6 * n], &direct[..]);
    std::fs::remove_dir_all(&dir).ok();
}

/// The step structure of each objective: the default 17 dispatches, one more for the class
/// conditioning, one more for a learned variance's gradient reduction.
#[test]
fn dispatch_counts_per_objective() {
    let g = gpu();
    let (images, labels) = mnist(128, true);
    let learned = Likelihood::GaussianLearned { per_pixel: true };
    for (classes, likelihood, want) in [
        (0, Likelihood::Bernoulli, 17),
        (10, Likelihood::Bernoulli, 18),
        (0, learned, 18),
        (10, learned, 19),
    ] {
        let cfg = VaeConfig {
            classes,
            likelihood,
            ..Default::default()
        };
        let vae = Vae::new(g, cfg, 1).unwrap();
        let data = GpuDataset::upload(g, "train", &images, 128, 784, labels.clone()).unwrap();
        let tr = Trainer::new(g, &vae, data, TrainConfig::default()).unwrap();
        assert_eq!(tr.dispatches_per_step(), want, "classes {classes}, {likelihood:?}");
    }
}

/// `decode_conditional` and `decode` against the f64 decoder (sigmoid of the logits for
/// Bernoulli, the mean clamped to [0, 1] for Gaussian), and `encode_means` against the f64
/// encoder's μ, on small random models with a condition and without.
#[test]
fn decode_and_encode_means_match_the_reference() {
    let g = gpu();
    let n = 7;
    for (classes, likelihood) in [
        (3usize, Likelihood::Bernoulli),
        (0, Likelihood::Gaussian { variance: 0.5 }),
    ] {
        let cfg = VaeConfig {
            input_dim: 16,
            hidden: vec![12],
            latent: 2,
            activation: Activation::Tanh,
            likelihood,
            classes,
            ..Default::default()
        };
        let vae = Vae::new(g, cfg.clone(), 21).unwrap();
        let params = to_f64(&vae.arena.read_params(g).unwrap());
        let ls = reference::layers(&cfg);
        let m = cfg.hidden.len();
        let labels: Vec<u32> = (0..n).map(|i| (i % 3) as u32).collect();

        // Decoding: codes spread over ±3 so the Gaussian means leave [0, 1] and get clamped.
        let z = rand_vec(n * cfg.latent, 77, -3.0, 3.0);
        let got = if classes > 0 {
            vae_wgpu::infer::decode_conditional(g, &vae, &z, Some(&labels)).unwrap()
        } else {
            vae_wgpu::infer::decode(g, &vae, &z).unwrap()
        };
        let z64: Vec<f64> = z.iter().map(|&v| v as f64).collect();
        let mut h = if classes > 0 {
            reference::with_one_hot(&z64, cfg.latent, &labels, cfg.dec_input_dim())
        } else {
            z64
        };
        for k in m + 1..ls.len() {
            h = reference::dense_forward(&ls[k], &h, n, &params[2 * k], &params[2 * k + 1]).1;
        }
        let want: Vec<f64> = h
            .iter()
            .map(|&o| match likelihood {
                Likelihood::Bernoulli => reference::sigmoid(o),
                _ => o.clamp(0.0, 1.0),
            })
            .collect();
        assert_close(&format!("decode ({likelihood:?})"), &got, &want, |_| 2e-6);
        if likelihood != Likelihood::Bernoulli {
            assert!(
                want.iter().any(|&v| v == 0.0 || v == 1.0),
                "no mean was clamped: the test is blind"
            );
        }

        // Posterior means of a dataset.
        let bytes: Vec<u8> = rand_vec(n * 16, 78, 0.0, 256.0)
            .iter()
            .map(|&v| v.min(255.0) as u8)
            .collect();
        let data_labels = if classes > 0 { labels.clone() } else { vec![] };
        let eval = Evaluator::new(g, GpuDataset::upload(g, "data", &bytes, n, 16, data_labels).unwrap()).unwrap();
        let got = eval.encode_means(&vae, 1).unwrap();
        let x: Vec<f64> = bytes.iter().map(|&v| v as f64 / 255.0).collect();
        let mut h = if classes > 0 {
            reference::with_one_hot(&x, 16, &labels, cfg.enc_input_dim())
        } else {
            x
        };
        for k in 0..=m {
            h = reference::dense_forward(&ls[k], &h, n, &params[2 * k], &params[2 * k + 1]).1;
        }
        let mu: Vec<f64> = h
            .chunks_exact(2 * cfg.latent)
            .flat_map(|r| r[..cfg.latent].to_vec())
            .collect();
        assert_close(&format!("encode_means ({likelihood:?})"), &got, &mu, |i| {
            2e-6 * (1.0 + mu[i].abs())
        });
    }
}

/// A small tanh/Bernoulli hierarchical VAE on 16 pixels with z₁ of 4, the `top` layers and
/// `classes`, for the evaluation reference tests.
fn small_hierarchy(top: &[TopLatent], classes: usize) -> VaeConfig {
    VaeConfig {
        input_dim: 16,
        hidden: vec![12],
        latent: 4,
        activation: Activation::Tanh,
        likelihood: Likelihood::Bernoulli,
        code: crate::common::hier(top),
        classes,
        arch: Default::default(),
    }
}

/// The evaluator's noise for `rows` examples and `k` draws, written out from the key layout:
/// z₁'s ε [K, rows, Z] keyed by sample s of the evaluation stream, upper layer i's
/// [K·rows, Z_i] by sample field 2^15 + i.
fn eval_noise(seed: u64, k: usize, rows: usize, latent: usize, top: &[TopLatent]) -> (Vec<f64>, Vec<Vec<f64>>) {
    let draw = |word: u32, i: usize| rng::normal(rng::device_seed(seed), 0, word, i as u32);
    let eps1 = (0..k)
        .flat_map(|s| (0..rows * latent).map(move |i| draw(rng::stream_word(rng::STREAM_EVAL, s as u32), i)))
        .collect();
    let eps_up = top
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let word = rng::stream_word(rng::STREAM_EVAL, 32768 + i as u32);
            (0..k * rows * t.latent).map(|j| draw(word, j)).collect()
        })
        .collect();
    (eps1, eps_up)
}

/// A hierarchical VAE's importance-weighted bound against the f64 reference's log weights
/// (`reference::hier_log_weights`, every density written out) with the evaluator's noise: z₁'s
/// ε as for a one-layer model, z₂'s keyed by sample word 2^15 and its draw's row
/// s·B + e. K = 1, 4 and 1,000 (the last in batches of 5, the final one partial); the K = 1
/// estimate is a one-draw Monte Carlo −ELBO with both layers' log-ratios sampled. Unconditional
/// and conditional on 3 classes (the bound on −log p(x|y), every network given the label).
#[test]
fn hierarchical_iw_bound_matches_the_reference() {
    let g = gpu();
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
    for (classes, top) in [
        (
            0usize,
            vec![TopLatent {
                latent: 2,
                hidden: vec![8],
            }],
        ),
        (
            3,
            vec![TopLatent {
                latent: 2,
                hidden: vec![8],
            }],
        ),
        (0, three.clone()),
        (3, three),
        // Four layers: two middle layers' log-ratios (z₂'s and z₃'s), the second with base 2^15 + 1.
        (
            0,
            vec![
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
            ],
        ),
    ] {
        let cfg = small_hierarchy(&top, classes);
        let n = 7;
        let bytes: Vec<u8> = rand_vec(n * 16, 33, 0.0, 256.0)
            .iter()
            .map(|&v| v.min(255.0) as u8)
            .collect();
        let labels: Vec<u32> = if classes > 0 {
            (0..n).map(|i| (i % classes) as u32).collect()
        } else {
            vec![]
        };
        let vae = Vae::new(g, cfg.clone(), 6).unwrap();
        let eval = Evaluator::new(g, GpuDataset::upload(g, "test", &bytes, n, 16, labels.clone()).unwrap()).unwrap();
        let params = to_f64(&vae.arena.read_params(g).unwrap());
        let seed = 4u64;
        for k in [1usize, 4, 1000] {
            let got = eval.iw_nll(&vae, seed, k, false, |_, _| {}).unwrap();
            let b = (5000 / k).clamp(1, n);
            let mut total = 0.0;
            for start in (0..n).step_by(b) {
                let rows = b.min(n - start);
                let x: Vec<f64> = bytes[start * 16..(start + rows) * 16]
                    .iter()
                    .map(|&v| v as f64 / 255.0)
                    .collect();
                let (eps1, eps_up) = eval_noise(seed, k, rows, 4, &top);
                let y = (classes > 0).then(|| &labels[start..start + rows]);
                let w = reference::hier_log_weights(&cfg, &params, &x, y, rows, k, &eps1, &eps_up);
                for e in 0..rows {
                    let ws: Vec<f64> = (0..k).map(|s| w[s * rows + e]).collect();
                    total += neg_log_mean_exp(&ws);
                }
            }
            let want = total / n as f64;
            assert!(
                (got - want).abs() <= 1e-5 * want.abs() + 1e-5,
                "{classes} classes, {} layers, K = {k}: IW estimate {got} vs f64 reference {want}",
                top.len() + 1
            );
        }
    }
}

/// `Evaluator::layer_kl` per layer against the f64 reference with the evaluator's one draw
/// (z₁'s ε keyed by sample 0 of the evaluation stream, each upper layer's by its base): a
/// three-layer VAE's z₁ and z₂ ladder terms E_q[log q] − log p(z_k|z_{k+1}) at the draws and
/// z₃'s closed-form KL, each summed over its dimensions and averaged over the 7 examples.
#[test]
fn layer_kl_matches_the_reference() {
    let g = gpu();
    let top = vec![
        TopLatent {
            latent: 4,
            hidden: vec![8],
        },
        TopLatent {
            latent: 2,
            hidden: vec![4],
        },
    ];
    let cfg = small_hierarchy(&top, 0);
    let n = 7;
    let bytes: Vec<u8> = rand_vec(n * 16, 35, 0.0, 256.0)
        .iter()
        .map(|&v| v.min(255.0) as u8)
        .collect();
    let vae = Vae::new(g, cfg.clone(), 8).unwrap();
    let eval = Evaluator::new(g, GpuDataset::upload(g, "test", &bytes, n, 16, vec![]).unwrap()).unwrap();
    let params = to_f64(&vae.arena.read_params(g).unwrap());
    let seed = 5u64;
    let got = eval.layer_kl(&vae, seed, false).unwrap();
    let x: Vec<f64> = bytes.iter().map(|&v| v as f64 / 255.0).collect();
    let (eps1, eps_up) = eval_noise(seed, 1, n, 4, &top);
    let f = reference::hier_forward(&cfg, &params, &x, None, n, 1, &eps1, &eps_up);
    let last = f.layers.len() - 1;
    let want: Vec<f64> = f
        .layers
        .iter()
        .enumerate()
        .map(|(k, l)| {
            let terms: f64 = (0..l.z.len())
                .map(|i| {
                    if k == last {
                        0.5 * (l.lv[i].exp() + l.mu[i] * l.mu[i] - 1.0 - l.lv[i])
                    } else {
                        let dz = l.z[i] - l.mu_p[i];
                        -0.5 * (1.0 + l.lv[i]) + 0.5 * (l.lv_p[i] + dz * dz * (-l.lv_p[i]).exp())
                    }
                })
                .sum();
            terms / n as f64
        })
        .collect();
    assert_eq!(got.len(), 3);
    for (k, (a, b)) in got.iter().zip(&want).enumerate() {
        assert!(
            (a - b).abs() <= 1e-5 * b.abs() + 1e-5,
            "layer {}: {a} vs f64 {b}",
            k + 1
        );
    }
}
