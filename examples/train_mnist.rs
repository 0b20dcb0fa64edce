//! Trains a VAE on MNIST (or Fashion-MNIST) on the GPU and writes pictures, metrics and a
//! checkpoint. `cargo run --release --example train_mnist -- --help` lists the flags.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use vae_wgpu::data::GpuDataset;
use vae_wgpu::data::NUM_CLASSES;
use vae_wgpu::data::{DatasetKind, MnistSet, IMAGE_SIDE};
use vae_wgpu::gpu::MatmulStrategy;
use vae_wgpu::infer::{decode_conditional, prior_latents};
use vae_wgpu::io::{read_safetensors, write_grid_png};
use vae_wgpu::model::Likelihood;
use vae_wgpu::model::{parse_hidden, parse_likelihood, parse_top, parse_variance, Code, TopLatent, Vae, VaeConfig};
use vae_wgpu::train::{Evaluator, KlSchedule, TrainConfig, Trainer};
use vae_wgpu::{Gpu, Result, VaeError};

const HELP: &str = "train_mnist: train a VAE (or an autoencoder) on MNIST on the GPU

USAGE: cargo run --release --example train_mnist -- [FLAGS]

  --epochs N              epochs (default 10)
  --batch-size N          examples per step (default 128)
  --latent N              latent dimensions (default 20; even for a VAE)
  --hidden N[,N...]       encoder hidden widths, decoder mirrors them (default 400)
  --lr F                  Adam learning rate (default 1e-3)
  --seed N                seed for init, shuffles and the device RNG (default 1)
  --likelihood L          bernoulli | gaussian (fixed variance 1.0) | gaussian:C (variance C)
  --variance V            Gaussian decoder variance: fixed:C (C the variance, default fixed:1),
                          learned-global (one learned log c) or learned-pixel (one per pixel);
                          a learned log c is floored at -6 (sigma >= 0.05)
  --beta F                weight of the KL term in training (default 1; beta-VAE for F > 1);
                          the reported -ELBO always uses beta = 1
  --kl-warmup N           KL annealing: beta(t) = beta * min(1, t / N) over global steps t
  --kl-cycles M           cyclical annealing: M cycles over the run, beta rising linearly over
                          the first half of each and held over the second
  --mc-samples L          Monte Carlo samples of z per example in training (default 1, at
                          most 32768)
  --conditional           conditional VAE: the one-hot label feeds encoder and decoder; the
                          bound reported is then on -log p(x|y)
  --autoencoder           a deterministic code instead of a Gaussian posterior (no KL, no
                          prior: no samples.png, no --eval-iw, --mc-samples 1, no beta)
  --l1 F                  with --autoencoder: L1 penalty F * sum |z| on the code (sparse
                          autoencoder; default 0), reported in the *_kl columns
  --contractive F         with --autoencoder: contractive penalty F * ||dz/dx||_F^2 (one hidden
                          layer, relu or leakyrelu; default 0), reported in the *_kl columns
  --vq K[:G]              VQ-VAE: the code is G vectors (default G = latent, one value each),
                          each replaced by its nearest of K learned codebook entries; the
                          decoder's gradient passes straight through (no prior: as
                          --autoencoder, no samples.png and no --eval-iw)
  --commitment B          with --vq: weight of the commitment term (default 0.25)
  --vq-ema G              with --vq: train the codebook by exponential moving averages of the
                          vectors assigned to each entry (decay G, e.g. 0.99) instead of by
                          its gradient (the codebook term then only reported)
  --top Z2:H2[,Z3:H3...]  hierarchical VAE: a second stochastic layer z2 (Z2 dimensions) above
                          z, with q(z2|z) and the learned prior p(z|z2) each one hidden layer
                          of H2 units; more layers z3, ... stack the same way above z2, up to 8
                          layers above z (z2..z9; with --conditional every such network also
                          takes the label)
  --denoise P             denoising: zero each input pixel with probability P in training
                          (0 <= P < 1); the target stays the clean image
  --dataset D             mnist | fashion-mnist | binarized-mnist (default mnist); binarized
                          MNIST is read from binarized_mnist_{train,test}.amat[.gz]
  --data-dir DIR          directory with the dataset's files (default: the dataset's own)
  --limit-train N         train on the first N training images
  --drop-last             drop the last partial batch of each epoch
  --binarize dynamic      resample binary pixels with probability = grey level each step
  --out DIR               output directory (default runs/<unix time>)
  --resume DIR            continue the run in DIR (its checkpoint and training state) up to
                          --epochs in all; pass the run's own flags (they are checked
                          against its record), its outputs are updated in place
  --eval-iw K             after the last epoch, estimate test -log p(x) with K importance samples
                          (at most 32768)
  --help                  this text

Writes to --out: metrics.jsonl (one line per epoch, with the epoch's last beta), run.json
(configuration, adapter, matmul strategy), reconstructions.png, samples.png (for a
conditional model: one row per class), checkpoint.safetensors and training_state.safetensors
(Adam's moments and the step, for --resume).";

struct Args {
    epochs: usize,
    train: TrainConfig,
    model: VaeConfig,
    dataset: DatasetKind,
    data_dir: Option<PathBuf>,
    limit_train: Option<usize>,
    out: Option<PathBuf>,
    eval_iw: Option<usize>,
    variance: Option<Likelihood>,
    kl_warmup: Option<u64>,
    kl_cycles: Option<u32>,
    autoencoder: bool,
    l1: Option<f32>,
    contractive: Option<f32>,
    vq: Option<(usize, Option<usize>)>,
    commitment: Option<f32>,
    resume: Option<PathBuf>,
    top: Vec<TopLatent>,
}

fn parse_args() -> Result<Option<Args>> {
    let mut a = Args {
        epochs: 10,
        train: TrainConfig::default(),
        model: VaeConfig::default(),
        dataset: DatasetKind::Mnist,
        data_dir: None,
        limit_train: None,
        out: None,
        eval_iw: None,
        variance: None,
        kl_warmup: None,
        kl_cycles: None,
        autoencoder: false,
        l1: None,
        contractive: None,
        vq: None,
        commitment: None,
        resume: None,
        top: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--help" || flag == "-h" {
            println!("{HELP}");
            return Ok(None);
        }
        if flag == "--drop-last" {
            a.train.drop_last = true;
            continue;
        }
        if flag == "--conditional" {
            a.model.classes = NUM_CLASSES;
            continue;
        }
        if flag == "--autoencoder" {
            a.autoencoder = true;
            continue;
        }
        let value = it
            .next()
            .ok_or_else(|| VaeError::Config(format!("{flag} needs a value (see --help)")))?;
        let num = |v: &str| -> Result<usize> {
            v.parse()
                .map_err(|_| VaeError::Config(format!("{flag} takes a whole number, got {v:?}")))
        };
        match flag.as_str() {
            "--epochs" => a.epochs = num(&value)?,
            "--batch-size" => a.train.batch_size = num(&value)?,
            "--latent" => a.model.latent = num(&value)?,
            "--hidden" => a.model.hidden = parse_hidden(&value)?,
            "--lr" => {
                a.train.adam.lr = value
                    .parse()
                    .ok()
                    .filter(|v: &f32| *v > 0.0 && v.is_finite())
                    .ok_or_else(|| VaeError::Config(format!("--lr takes a positive number, got {value:?}")))?
            }
            "--seed" => a.train.seed = num(&value)? as u64,
            "--beta" => {
                a.train.beta = value
                    .parse()
                    .ok()
                    .filter(|v: &f32| *v >= 0.0 && v.is_finite())
                    .ok_or_else(|| VaeError::Config(format!("--beta takes a number >= 0, got {value:?}")))?
            }
            "--kl-warmup" => a.kl_warmup = Some(num(&value)? as u64),
            "--kl-cycles" => a.kl_cycles = Some(num(&value)? as u32),
            "--mc-samples" => a.train.mc_samples = num(&value)?,
            "--l1" => {
                a.l1 = Some(
                    value
                        .parse()
                        .ok()
                        .filter(|v: &f32| *v >= 0.0 && v.is_finite())
                        .ok_or_else(|| VaeError::Config(format!("--l1 takes a number >= 0, got {value:?}")))?,
                )
            }
            "--vq" => {
                let (k, g) = match value.split_once(':') {
                    Some((k, g)) => (num(k)?, Some(num(g)?)),
                    None => (num(&value)?, None),
                };
                a.vq = Some((k, g));
            }
            "--commitment" => {
                a.commitment = Some(
                    value
                        .parse()
                        .ok()
                        .filter(|v: &f32| *v >= 0.0 && v.is_finite())
                        .ok_or_else(|| VaeError::Config(format!("--commitment takes a number >= 0, got {value:?}")))?,
                )
            }
            "--contractive" => {
                a.contractive = Some(
                    value
                        .parse()
                        .ok()
                        .filter(|v: &f32| *v >= 0.0 && v.is_finite())
                        .ok_or_else(|| VaeError::Config(format!("--contractive takes a number >= 0, got {value:?}")))?,
                )
            }
            "--denoise" => {
                a.train.denoise = value
                    .parse()
                    .ok()
                    .filter(|v: &f32| (0.0..1.0).contains(v))
                    .ok_or_else(|| {
                        VaeError::Config(format!("--denoise takes a probability in [0, 1), got {value:?}"))
                    })?
            }
            "--variance" => a.variance = Some(parse_variance(&value)?),
            "--likelihood" => a.model.likelihood = parse_likelihood(&value)?,
            "--dataset" => a.dataset = DatasetKind::parse(&value)?,
            "--data-dir" => a.data_dir = Some(PathBuf::from(value)),
            "--limit-train" => a.limit_train = Some(num(&value)?),
            "--out" => a.out = Some(PathBuf::from(value)),
            "--resume" => a.resume = Some(PathBuf::from(value)),
            "--eval-iw" => a.eval_iw = Some(num(&value)?),
            "--top" => a.top = parse_top(&value)?,
            "--vq-ema" => {
                a.train.vq_ema = Some(
                    value
                        .parse()
                        .ok()
                        .filter(|v: &f32| *v > 0.0 && *v < 1.0)
                        .ok_or_else(|| VaeError::Config(format!("--vq-ema takes a decay in (0, 1), got {value:?}")))?,
                )
            }
            "--binarize" => match value.as_str() {
                "dynamic" => a.train.binarize = true,
                "none" => a.train.binarize = false,
                _ => {
                    return Err(VaeError::Config(format!(
                        "--binarize takes dynamic or none, got {value:?}"
                    )))
                }
            },
            _ => return Err(VaeError::Config(format!("unknown flag {flag} (see --help)"))),
        }
    }
    if a.epochs == 0 || a.train.batch_size == 0 || a.train.mc_samples == 0 {
        return Err(VaeError::Config(
            "--epochs, --batch-size and --mc-samples must be at least 1".into(),
        ));
    }
    if let Some(v) = a.variance {
        if matches!(a.model.likelihood, Likelihood::Bernoulli) {
            return Err(VaeError::Config(
                "--variance applies to a Gaussian decoder; add --likelihood gaussian".into(),
            ));
        }
        a.model.likelihood = v;
    }
    if a.model.classes > 0 && !a.dataset.has_labels() {
        return Err(VaeError::Config(format!(
            "--conditional needs class labels, and {} has none",
            a.dataset.name()
        )));
    }
    a.train.kl_schedule = KlSchedule::parse(a.kl_warmup, a.kl_cycles)?;
    if a.autoencoder && a.vq.is_some() {
        return Err(VaeError::Config(
            "--autoencoder and --vq are two different codes; pick one".into(),
        ));
    }
    if a.train.vq_ema.is_some() && a.vq.is_none() {
        return Err(VaeError::Config(
            "--vq-ema trains a VQ-VAE's codebook; add --vq K".into(),
        ));
    }
    if a.commitment.is_some() && a.vq.is_none() {
        return Err(VaeError::Config(
            "--commitment weighs a VQ-VAE's commitment term; add --vq K".into(),
        ));
    }
    if a.autoencoder || a.vq.is_some() {
        let vae_only = [
            (a.eval_iw.is_some(), "--eval-iw"),
            (a.train.mc_samples != 1, "--mc-samples"),
            (a.train.beta != 1.0, "--beta"),
            (a.train.kl_schedule != KlSchedule::Constant, "--kl-warmup/--kl-cycles"),
        ];
        if let Some((_, flag)) = vae_only.iter().find(|(set, _)| *set) {
            return Err(VaeError::Config(format!(
                "{flag} applies to a VAE; an autoencoder or a VQ-VAE has a deterministic code and no KL term"
            )));
        }
        a.model.code = match a.vq {
            Some((codes, groups)) => Code::Quantized {
                codes,
                groups: groups.unwrap_or(a.model.latent),
                commitment: a.commitment.unwrap_or(0.25),
            },
            None => Code::Deterministic {
                l1: a.l1.unwrap_or(0.0),
                contractive: a.contractive.unwrap_or(0.0),
            },
        };
        if a.vq.is_some() && (a.l1.is_some() || a.contractive.is_some()) {
            return Err(VaeError::Config(
                "--l1 and --contractive apply to --autoencoder, not --vq".into(),
            ));
        }
    } else if a.l1.is_some() || a.contractive.is_some() {
        return Err(VaeError::Config(
            "--l1 and --contractive penalise an autoencoder's code; add --autoencoder".into(),
        ));
    }
    if !a.top.is_empty() {
        if a.autoencoder || a.vq.is_some() {
            return Err(VaeError::Config(
                "--autoencoder/--vq is not available with --top: the hierarchical VAE has Gaussian codes and a prior"
                    .into(),
            ));
        }
        a.model.code = Code::Hierarchical(a.top.clone());
    }
    if let (Some(r), Some(o)) = (&a.resume, &a.out) {
        if r != o {
            return Err(VaeError::Config(
                "--resume DIR writes into DIR; drop --out or make it the same directory".into(),
            ));
        }
    }
    a.model.validate()?;
    Ok(Some(a))
}

fn fresh_run_dir() -> PathBuf {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut dir = PathBuf::from(format!("runs/{secs}"));
    let mut i = 1;
    while dir.exists() {
        dir = PathBuf::from(format!("runs/{secs}-{i}"));
        i += 1;
    }
    dir
}

fn progress_bar(epoch: usize, done: usize, total: usize, t0: Instant) {
    // Throttled to ~50 redraws per epoch; counts submitted steps, never waits for the GPU.
    if done != total && !done.is_multiple_of((total / 50).max(1)) {
        return;
    }
    let width = 30;
    let filled = done * width / total.max(1);
    let bar: String = "#".repeat(filled) + &".".repeat(width - filled);
    eprint!(
        "\repoch {epoch:>3} [{bar}] {done}/{total} steps {:.1}s",
        t0.elapsed().as_secs_f64()
    );
    if done == total {
        eprint!("\r{}\r", " ".repeat(60));
    }
    let _ = std::io::stderr().flush();
}

fn append_line(path: &Path, line: &str) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| VaeError::io(path, e))?;
    writeln!(f, "{line}").map_err(|e| VaeError::io(path, e))
}

/// A JSON string literal.
fn json_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn json_num(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.6}")
    } else {
        "null".into()
    }
}

fn run(args: Args) -> Result<()> {
    let gpu = Gpu::new(vae_wgpu::GpuOptions::from_env()?)?;
    let r = gpu.report();
    println!(
        "adapter: {} | backend {:?} | driver {}",
        r.name,
        r.backend,
        r.driver.trim()
    );
    let dir = args.data_dir.clone().unwrap_or_else(|| args.dataset.default_dir());
    let train: MnistSet = args.dataset.load_split(&dir, true)?;
    let test: MnistSet = args.dataset.load_split(&dir, false)?;
    let d = IMAGE_SIDE * IMAGE_SIDE;
    let n_train = args.limit_train.map_or(train.count, |n| n.min(train.count));
    if n_train == 0 {
        return Err(VaeError::Config("--limit-train must be at least 1".into()));
    }
    println!(
        "dataset: {} from {} | train {} | test {}",
        args.dataset.name(),
        dir.display(),
        n_train,
        test.count
    );
    let train_gpu = GpuDataset::upload(
        &gpu,
        "train",
        &train.images[..n_train * d],
        n_train,
        d,
        train.labels.get(..n_train).map(<[u8]>::to_vec).unwrap_or_default(),
    )?;
    let test_gpu = GpuDataset::upload(&gpu, "test", &test.images, test.count, d, test.labels.clone())?;

    let vae = Vae::new(&gpu, args.model.clone(), args.train.seed)?;
    let np = vae.num_params();
    println!(
        "model: {} -> {:?} -> {} {} -> {:?} -> {} | {:?} | {} parameters, {:.2} MB",
        args.model.input_dim,
        args.model.hidden,
        args.model.latent,
        match args.model.code {
            Code::Gaussian | Code::Hierarchical(_) => "(mu, log var)".to_string(),
            Code::Deterministic { l1, contractive } => {
                format!("(deterministic code, L1 {l1}, contractive {contractive})")
            }
            Code::Quantized {
                codes,
                groups,
                commitment,
            } => format!("({groups} vectors quantized to {codes} codebook entries, commitment {commitment})"),
        },
        args.model.hidden.iter().rev().collect::<Vec<_>>(),
        args.model.input_dim,
        args.model.likelihood,
        np,
        np as f64 * 4.0 / 1e6
    );
    let out_dir = args.resume.clone().or(args.out.clone()).unwrap_or_else(fresh_run_dir);
    std::fs::create_dir_all(&out_dir).map_err(|e| VaeError::io(&out_dir, e))?;
    let metrics = out_dir.join("metrics.jsonl");
    if metrics.exists() && args.resume.is_none() {
        std::fs::remove_file(&metrics).map_err(|e| VaeError::io(&metrics, e))?;
    }
    let (ckpt_path, state_path) = (
        out_dir.join("checkpoint.safetensors"),
        out_dir.join("training_state.safetensors"),
    );
    let train_cfg = TrainConfig {
        epochs: args.epochs,
        ..args.train.clone()
    };
    let mut trainer = Trainer::new(&gpu, &vae, train_gpu, train_cfg)?;
    let evaluator = Evaluator::new(&gpu, test_gpu)?;
    let (compile, pipelines) = gpu.kernels.compile_stats();
    println!(
        "training: batch {} | {} steps/epoch | {} dispatches + {} texture-mirror copies, 1 submit per step | {} pipelines compiled in {:.2}s | output {}",
        args.train.batch_size.min(n_train),
        trainer.steps_per_epoch(),
        trainer.dispatches_per_step(),
        trainer.mirror_copies_per_step(),
        pipelines,
        compile.as_secs_f64(),
        out_dir.display()
    );
    // What the numbers depend on, for reproducing them: configuration, adapter and the matmul
    // strategy chosen for it (VAE_WGPU_MATMUL overrides the rule).
    let strategy = MatmulStrategy::preferred(&gpu)?;
    let mut run_meta: Vec<(String, String)> = args.model.to_metadata();
    run_meta.extend([
        ("dataset".to_string(), args.dataset.name().to_string()),
        ("train_examples".to_string(), n_train.to_string()),
        ("epochs".to_string(), args.epochs.to_string()),
        ("batch_size".to_string(), args.train.batch_size.to_string()),
        ("lr".to_string(), args.train.adam.lr.to_string()),
        ("seed".to_string(), args.train.seed.to_string()),
        ("beta".to_string(), args.train.beta.to_string()),
        ("kl_schedule".to_string(), args.train.kl_schedule.to_string()),
        ("mc_samples".to_string(), args.train.mc_samples.to_string()),
        ("drop_last".to_string(), args.train.drop_last.to_string()),
        ("denoise".to_string(), args.train.denoise.to_string()),
        (
            "vq_ema".to_string(),
            args.train.vq_ema.map_or("none".to_string(), |g| g.to_string()),
        ),
        (
            "binarize".to_string(),
            if args.train.binarize { "dynamic" } else { "none" }.to_string(),
        ),
        ("bound".to_string(), bound_name(&args.model).to_string()),
        ("adapter".to_string(), r.name.clone()),
        ("driver".to_string(), r.driver.trim().to_string()),
        (
            "subgroup_size".to_string(),
            format!("{}..{}", r.subgroup_min_size, r.subgroup_max_size),
        ),
        (
            "lp_native_vector_width".to_string(),
            r.lp_native_vector_width.clone().unwrap_or_else(|| "unset".into()),
        ),
        ("matmul_strategy".to_string(), format!("{strategy:?}").to_lowercase()),
        (
            "pinned_worker_threads".to_string(),
            r.pinned_worker_threads.len().to_string(),
        ),
        (
            "texture_mirrors".to_string(),
            format!("{:?}", vae.texture_mirrors()).to_lowercase(),
        ),
    ]);
    let run_json = format!(
        "{{{}}}\n",
        run_meta
            .iter()
            .map(|(k, v)| format!("{}:{}", json_str(k), json_str(v)))
            .collect::<Vec<_>>()
            .join(",")
    );
    let run_path = out_dir.join("run.json");
    std::fs::write(&run_path, run_json).map_err(|e| VaeError::io(&run_path, e))?;
    let bound = bound_name(&args.model);
    let (loss_name, kl_name) = if args.model.is_vae() {
        ("-ELBO", "KL")
    } else {
        ("loss", "penalty")
    };
    let bound_note = if args.model.is_vae() {
        format!("(bound on {bound})")
    } else {
        format!(
            "({})",
            bound.trim_start_matches("none ").trim_matches(['(', ')']).to_string() + ": no bound"
        )
    };
    // The checkpoint stores the configuration itself; it gets the rest of the run's metadata.
    let config_keys = args.model.to_metadata();
    let ckpt_meta: Vec<(String, String)> = run_meta
        .iter()
        .filter(|(k, _)| !config_keys.iter().any(|(ck, _)| ck == k))
        .cloned()
        .collect();
    if args.resume.is_some() {
        resume_run(
            &gpu,
            &vae,
            &mut trainer,
            &args,
            &run_meta,
            &ckpt_path,
            &state_path,
            &metrics,
        )?;
        println!(
            "resumed {} after epoch {} (step {})",
            out_dir.display(),
            trainer.epoch,
            trainer.step
        );
    }
    let run_start = Instant::now();
    for epoch in (trainer.epoch as usize + 1)..=args.epochs {
        let t0 = Instant::now();
        let rep = trainer.train_epoch(|done, total| progress_bar(epoch, done, total, t0))?;
        let test_stats = evaluator.elbo(&vae, args.train.seed, args.train.binarize)?;
        let elapsed = run_start.elapsed().as_secs_f64();
        let mut line = format!(
            "{{\"epoch\":{epoch},\"train_loss\":{},\"train_recon\":{},\"train_kl\":{},\"test_loss\":{},\"test_recon\":{},\"test_kl\":{},\"beta\":{},\"bound_on\":{},\"samples_per_sec\":{},\"elapsed_s\":{}",
            json_num(rep.train.loss),
            json_num(rep.train.recon),
            json_num(rep.train.kl),
            json_num(test_stats.loss),
            json_num(test_stats.recon),
            json_num(test_stats.kl),
            json_num(rep.beta as f64),
            json_str(bound),
            json_num(rep.samples_per_sec),
            json_num(elapsed)
        );
        println!(
            "epoch {epoch:>3} | beta {:.3} | train {loss_name} {:.2} (recon {:.2} + {kl_name} {:.2}) | test {loss_name} {:.2} {bound_note} | {:.0} samples/s | {:.1}s",
            rep.beta, rep.train.loss, rep.train.recon, rep.train.kl, test_stats.loss, rep.samples_per_sec, elapsed
        );
        // A hierarchical VAE's last epoch also splits the test KL by layer (a layer near 0 is
        // unused), with the evaluation's own draws.
        if epoch == args.epochs && !args.model.top().is_empty() {
            let layers = evaluator.layer_kl(&vae, args.train.seed, args.train.binarize)?;
            let shown: Vec<String> = layers
                .iter()
                .enumerate()
                .map(|(i, k)| format!("z{} {k:.2}", i + 1))
                .collect();
            println!("test KL per layer: {}", shown.join(", "));
            let values: Vec<String> = layers.iter().map(|&k| json_num(k)).collect();
            line.push_str(&format!(",\"test_layer_kl\":[{}]", values.join(",")));
        }
        if epoch == args.epochs {
            if let Some(k) = args.eval_iw {
                let iw = evaluator.iw_nll(&vae, args.train.seed, k, args.train.binarize)?;
                println!("test {bound} (importance weighted, K = {k}): {iw:.2}");
                line.push_str(&format!(",\"test_iw_nll\":{},\"iw_k\":{k}", json_num(iw)));
            }
        }
        line.push('}');
        append_line(&metrics, &line)?;
        let mut meta = ckpt_meta.clone();
        meta.push(("epoch".to_string(), epoch.to_string()));
        meta.push(("step".to_string(), trainer.step.to_string()));
        vae.save(&gpu, &ckpt_path, &meta)?;
        trainer.save_state(&vae, &state_path)?;
    }
    // Pictures: 16 test images over their reconstructions, and 64 samples from the prior.
    let (x, xr) = evaluator.reconstruct(&vae, args.train.seed, 16)?;
    let n = x.len() / d;
    let mut pairs = Vec::with_capacity(2 * n * d);
    for row in 0..n.div_ceil(8) {
        let range = row * 8 * d..((row + 1) * 8).min(n) * d;
        pairs.extend_from_slice(&x[range.clone()]);
        pairs.extend_from_slice(&xr[range]);
    }
    write_grid_png(
        &out_dir.join("reconstructions.png"),
        &pairs,
        2 * n,
        IMAGE_SIDE,
        IMAGE_SIDE,
        8,
        2,
    )?;
    if !args.model.is_vae() {
        // An autoencoder has no prior to sample from.
        println!(
            "wrote {}/{{metrics.jsonl, run.json, checkpoint.safetensors, reconstructions.png}}",
            out_dir.display()
        );
        return Ok(());
    }
    // Samples from the prior; a conditional model draws one row of 8 per class.
    let (n, labels) = if args.model.classes > 0 {
        let l: Vec<u8> = (0..8 * args.model.classes).map(|i| (i / 8) as u8).collect();
        (l.len(), Some(l))
    } else {
        (64, None)
    };
    let z = prior_latents(&gpu, &vae, args.train.seed, n, 1.0, labels.as_deref())?;
    let samples = decode_conditional(&gpu, &vae, &z, labels.as_deref())?;
    write_grid_png(&out_dir.join("samples.png"), &samples, n, IMAGE_SIDE, IMAGE_SIDE, 8, 2)?;
    println!(
        "wrote {}/{{metrics.jsonl, run.json, checkpoint.safetensors, reconstructions.png, samples.png}}",
        out_dir.display()
    );
    Ok(())
}

/// Loads the run in `--resume DIR` after checking that this invocation's settings are the
/// run's own (every recorded key that decides the numbers), and drops metric lines of epochs
/// the checkpoint does not contain (a run stopped between the two writes).
#[allow(clippy::too_many_arguments)]
fn resume_run(
    gpu: &Gpu,
    vae: &Vae,
    trainer: &mut Trainer<'_>,
    args: &Args,
    run_meta: &[(String, String)],
    ckpt_path: &Path,
    state_path: &Path,
    metrics: &Path,
) -> Result<()> {
    let (_, recorded) = read_safetensors(ckpt_path)?;
    let get = |k: &str| recorded.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
    // Adapter, driver and the like may change between machines; these decide the numbers.
    let decisive = [
        "dataset",
        "train_examples",
        "batch_size",
        "lr",
        "seed",
        "beta",
        "kl_schedule",
        "mc_samples",
        "drop_last",
        "denoise",
        "vq_ema",
        "binarize",
    ];
    let config_keys: Vec<String> = args.model.to_metadata().into_iter().map(|(k, _)| k).collect();
    let differ: Vec<String> = run_meta
        .iter()
        .filter(|(k, _)| decisive.contains(&k.as_str()) || config_keys.contains(k))
        .filter_map(|(k, v)| match get(k) {
            Some(r) if r != v => Some(format!("{k} = {r} in the run, {v} now")),
            _ => None,
        })
        .collect();
    if !differ.is_empty() {
        return Err(VaeError::Config(format!(
            "--resume: pass the run's own flags; {}",
            differ.join("; ")
        )));
    }
    if matches!(args.train.kl_schedule, KlSchedule::Cyclical { .. })
        && get("epochs").is_some_and(|e| e != args.epochs.to_string())
    {
        return Err(VaeError::Config(
            "--resume: cyclical annealing spreads its cycles over the run's epochs; keep --epochs".into(),
        ));
    }
    vae.load_weights(gpu, ckpt_path)?;
    trainer.load_state(vae, state_path)?;
    if get("epoch") != Some(trainer.epoch.to_string().as_str()) {
        return Err(VaeError::Checkpoint {
            path: state_path.into(),
            problem: format!(
                "it is from epoch {} but the checkpoint from epoch {}; the run stopped while saving",
                trainer.epoch,
                get("epoch").unwrap_or("?")
            ),
        });
    }
    if trainer.epoch as usize >= args.epochs {
        return Err(VaeError::Config(format!(
            "--resume: the run has trained {} epochs already; pass --epochs with a larger total",
            trainer.epoch
        )));
    }
    // Keep the metric lines of the epochs the checkpoint holds.
    let text = std::fs::read_to_string(metrics).unwrap_or_default();
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| {
            l.strip_prefix("{\"epoch\":")
                .and_then(|r| r.split(',').next())
                .and_then(|n| n.parse::<u64>().ok())
                .is_some_and(|n| n <= trainer.epoch)
        })
        .collect();
    let body: String = kept.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(metrics, body).map_err(|e| VaeError::io(metrics, e))
}

/// What the reported loss is a bound on: −log p(x), −log p(x|y), or nothing (an autoencoder's
/// loss is its reconstruction NLL plus the code's penalty).
fn bound_name(model: &VaeConfig) -> &'static str {
    match (model.is_vae(), model.classes > 0) {
        (false, _) if matches!(model.code, Code::Quantized { .. }) => "none (VQ-VAE)",
        (false, _) => "none (autoencoder)",
        (true, true) => "-log p(x|y)",
        (true, false) => "-log p(x)",
    }
}

fn main() {
    let code = match parse_args() {
        Ok(None) => 0,
        Ok(Some(args)) => match run(args) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("error: {e}");
                1
            }
        },
        Err(e) => {
            eprintln!("error: {e}");
            2
        }
    };
    std::process::exit(code);
}
