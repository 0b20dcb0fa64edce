//! Pictures and figures of a trained model's latent space, from a checkpoint:
//! `cargo run --release --example explore -- --checkpoint FILE --out DIR [--data-dir DIR]
//! [--eval-iw K]`. `--help` lists what it writes.

mod common;

use std::path::PathBuf;

use clap::Parser;
use common::data::Data;
use serde::Serialize;
use vae_wgpu::data::DatasetKind;
use vae_wgpu::explore::{
    arithmetic_figure, class_figure, hierarchy_figure, interpolation_figure, manifold_figure, write_scatter_png,
    Figure, LinearProbe,
};
use vae_wgpu::io::read_safetensors;
use vae_wgpu::model::{Code, Vae};
use vae_wgpu::train::{rounded, Evaluator};
use vae_wgpu::{run, Gpu, Result, VaeError};

const AFTER_HELP: &str = "Writes (28x28 cells, 2 px padding):
  reconstructions.png  8 chosen test images over their reconstructions
  interpolation.png    4 pairs of test images, each a linear then a spherical row of 10 steps
  arithmetic.png       10 test images (one per class), each: its decoding, then
                       z - mean(its class) + mean(c) for c = 0..9   [labelled data]
  class_grid.png       one row per class, the same 10 prior draws     [conditional VAEs]
  hierarchy.png        8 rows of one top-layer draw each, 8 draws of the layers below per
                       row                                              [hierarchical VAEs]
  latent_scatter.png   test-set latent means coloured by label        [2-D latents]
  manifold.png         20x20 decodings over the prior's quantiles     [2-D latent VAEs, one layer]
and prints one JSON line: test_loss (the -ELBO, a bound on -log p(x), or on -log p(x|y) for a
conditional model: see bound_on), test_iw_nll (K importance samples), probe_accuracy (a
logistic-regression probe on the latent means, trained on the training set, test accuracy;
null for conditional models, whose latent is meant to carry no label, and unlabelled data).
For an autoencoder the latent means are its codes, test_loss is the reconstruction NLL plus its
penalties (L1, contractive), and test_iw_nll is null (there is no prior); for a VQ-VAE they are
its unquantized codes and test_loss adds the codebook and commitment terms. A hierarchical
VAE (--top) is probed and pictured through its lower latent z (its means of q(z|x)); its
test_iw_nll draws chains (z, z2, ...). layer_kl splits the test KL by stochastic layer, z
first (one value for a one-layer VAE; null for autoencoders): a layer near 0 is unused.
codes_used and code_perplexity (VQ-VAEs; null otherwise): how many codebook entries the test
set's code vectors choose, and exp of the entropy of their frequencies.";

/// Latent-space pictures and figures of a trained VAE, from its checkpoint.
#[derive(Parser, Debug)]
#[command(name = "explore", after_help = AFTER_HELP, allow_negative_numbers = true)]
struct Args {
    /// A checkpoint written by train_mnist, or its run directory
    #[arg(long, value_name = "FILE|DIR")]
    checkpoint: PathBuf,
    /// Where the pictures go (created)
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// The dataset to evaluate on: mnist, fashion-mnist or binarized-mnist (default: the one
    /// the checkpoint was trained on, a folder of images or NumPy arrays included, read again as
    /// its run recorded)
    #[arg(long, value_name = "D", value_parser = dataset)]
    dataset: Option<DatasetKind>,
    /// The dataset's directory (default: the dataset's own place)
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Importance samples for test_iw_nll (at most 32768)
    #[arg(long = "eval-iw", value_name = "K", default_value_t = 100, value_parser = common::samples)]
    iw_k: usize,
    /// Evaluation seed (default: the checkpoint's training seed, so test_loss repeats
    /// train_mnist's last figure; 1 if the checkpoint has none)
    #[arg(long, value_name = "N")]
    seed: Option<u64>,
}

fn dataset(s: &str) -> std::result::Result<DatasetKind, String> {
    DatasetKind::parse(s).map_err(|e| common::explain(&e))
}

/// The line explore prints: its numbers, rounded as shown (null where they do not apply).
#[derive(Serialize)]
struct Report {
    test_loss: Option<f64>,
    test_iw_nll: Option<f64>,
    iw_k: usize,
    layer_kl: Option<Vec<Option<f64>>>,
    codes_used: Option<usize>,
    code_perplexity: Option<f64>,
    probe_accuracy: Option<f64>,
    bound_on: &'static str,
    dataset: String,
    data_dir: String,
    latent: usize,
    seed: u64,
}

/// The first test example of each class (or the first examples, unlabelled).
fn one_per_class(labels: &[u32], classes: usize, fallback: usize) -> Vec<usize> {
    if labels.is_empty() {
        return (0..fallback).collect();
    }
    (0..classes)
        .filter_map(|c| labels.iter().position(|&l| l as usize == c))
        .collect()
}

/// Loads the checkpoint, evaluates it, draws the pictures and prints the report.
fn run(args: Args) -> Result<()> {
    let checkpoint = common::checkpoint_file(&args.checkpoint)?;
    check_out(&args.out)?;
    // The checkpoint is read once (a pipe reads only once).
    let (tensors, meta) = read_safetensors(&checkpoint)?;
    let get = |k: &str| meta.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
    let bad_meta = |key: &str, problem: String| VaeError::Checkpoint {
        path: checkpoint.clone(),
        problem: format!("its metadata '{key}' is {:?}: {problem}", get(key).unwrap_or_default()),
    };
    // The recorded source unless --dataset names a built-in one.
    let recorded = get("dataset").unwrap_or("mnist");
    if args.dataset.is_none() && common::data::dataset(recorded).is_err() {
        return Err(bad_meta(
            "dataset",
            format!(
                "not a dataset this program knows ({}, images:DIR, npy:FILE); pass --dataset",
                DatasetKind::NAMES.join(", ")
            ),
        ));
    }
    let dataset_name = args.dataset.map_or(recorded.to_string(), |d| d.name().to_string());
    let binarize = match get("binarize") {
        None | Some("none") => false,
        Some("dynamic") => true,
        Some(_) => return Err(bad_meta("binarize", "expected dynamic or none".into())),
    };
    let seed = match (args.seed, get("seed")) {
        (Some(s), _) => s,
        (None, None) => 1,
        (None, Some(s)) => s
            .parse()
            .map_err(|_| bad_meta("seed", "not a whole number; pass --seed".into()))?,
    };
    let gpu = Gpu::new(vae_wgpu::GpuOptions::from_env()?)?;
    let vae = Vae::from_checkpoint_as(&gpu, &checkpoint, &tensors, &meta, false)?;
    drop(tensors);
    let cfg = vae.config.clone();
    let shape = common::image_shape(&meta, &cfg)?;
    let data = match args.dataset {
        Some(kind) => Data::builtin(kind, &args.data_dir.clone().unwrap_or_else(|| kind.default_dir()))?,
        None => Data::recorded(&meta, args.data_dir.as_deref())?,
    };
    if data.shape != shape {
        return Err(VaeError::Config(format!(
            "the model makes {:?} images (C, H, W), the data holds {:?}",
            shape, data.shape
        )));
    }
    let classes = data.classes;
    let dir = data.from.clone();
    let (train, test) = (&data.train, &data.test);
    let d = cfg.input_dim;
    let test_gpu = test.eval_set(&gpu, "test", d, false)?;
    let train_gpu = train.eval_set(&gpu, "train", d, false)?;
    let test_eval = Evaluator::new(&gpu, test_gpu)?;
    let train_eval = Evaluator::new(&gpu, train_gpu)?;

    // Numbers: the bound, its importance-weighted tightening, and the probe.
    let stats = test_eval.elbo(&vae, seed, binarize)?;
    // An autoencoder has no prior, so no importance-weighted bound.
    let (iw, layer_kl) = if cfg.is_vae() {
        (
            Some({
                let bar = common::progress_bar(0, format!("IWAE K={}", args.iw_k));
                let iw = test_eval
                    .iw_nll(&vae, seed, args.iw_k, binarize, |done, total| {
                        bar.set_length(total as u64);
                        bar.set_position(done as u64)
                    })
                    .map_err(common::sized_by("--eval-iw"))?;
                bar.finish_and_clear();
                iw
            }),
            Some(test_eval.layer_kl(&vae, seed, binarize)?),
        )
    } else {
        (None, None)
    };
    let test_means = test_eval.encode_means(&vae, seed)?;
    let usage = match cfg.code {
        Code::Quantized { .. } => Some(test_eval.code_usage(&vae, seed)?),
        _ => None,
    };
    let labelled = !test.labels.is_empty();
    let probe_accuracy = if cfg.classes == 0 && labelled {
        let train_means = train_eval.encode_means(&vae, seed)?;
        let bar = common::progress_bar(200, "probe");
        let probe =
            LinearProbe::fit_with_progress(&train_means, cfg.latent, &train.labels, classes, 1e-4, 200, |i, _| {
                bar.set_position(i as u64)
            })?;
        bar.finish_and_clear();
        Some(probe.accuracy(&test_means, &test.labels))
    } else {
        None
    };

    // Pictures: the directory is made once everything has been evaluated.
    std::fs::create_dir_all(&args.out).map_err(|e| VaeError::io(&args.out, e))?;
    let mut wrote = Vec::new();
    let chosen = one_per_class(&test.labels, classes, 8);
    let shown = &chosen[..chosen.len().min(8)];
    let (x, xr) = test_eval.reconstruct_examples(&vae, seed, shown)?;
    let mut pairs_img = x.clone();
    pairs_img.extend_from_slice(&xr);
    let recon_path = args.out.join("reconstructions.png");
    common::write_grid(&recon_path, &pairs_img, 2 * shown.len(), shape, shown.len(), 2)?;
    wrote.push("reconstructions.png");

    let pairs: Vec<(usize, usize)> = (0..4)
        .map(|i| (chosen[2 * i % chosen.len()], chosen[(2 * i + 1) % chosen.len()]))
        .collect();
    let fig = interpolation_figure(&gpu, &vae, &test_means, &test.labels, &pairs, 10)?;
    fig.write(&args.out.join("interpolation.png"), shape)?;
    wrote.push("interpolation.png");

    if labelled {
        let fig = arithmetic_figure(&gpu, &vae, &test_means, &test.labels, classes, &chosen)?;
        fig.write(&args.out.join("arithmetic.png"), shape)?;
        wrote.push("arithmetic.png");
    } else {
        eprintln!(
            "note: {} has no labels: no arithmetic.png (class means need labels)",
            dataset_name
        );
    }
    if !cfg.top().is_empty() {
        hierarchy_figure(&gpu, &vae, seed, 8, 8, 1.0)?.write(&args.out.join("hierarchy.png"), shape)?;
        wrote.push("hierarchy.png");
    }
    if cfg.classes > 0 && cfg.is_vae() {
        let fig: Figure = class_figure(&gpu, &vae, seed, 10, 1.0)?;
        fig.write(&args.out.join("class_grid.png"), shape)?;
        wrote.push("class_grid.png");
    }
    if cfg.latent == 2 {
        let points: Vec<[f32; 2]> = test_means.chunks_exact(2).map(|p| [p[0], p[1]]).collect();
        let labels = if labelled {
            test.labels.clone()
        } else {
            vec![0; points.len()]
        };
        write_scatter_png(&args.out.join("latent_scatter.png"), &points, &labels, 600)?;
        wrote.push("latent_scatter.png");
        // The quantiles of N(0, I) map z's prior only without a second stochastic layer.
        if cfg.is_vae() && cfg.top().is_empty() {
            manifold_figure(&gpu, &vae, 20, 0)?.write(&args.out.join("manifold.png"), shape)?;
            wrote.push("manifold.png");
        }
    }
    eprintln!("wrote {} to {}", wrote.join(", "), args.out.display());

    let report = Report {
        test_loss: rounded(stats.loss, 4),
        test_iw_nll: iw.and_then(|v| rounded(v, 4)),
        iw_k: args.iw_k,
        layer_kl: layer_kl.as_ref().map(|v| v.iter().map(|&k| rounded(k, 4)).collect()),
        codes_used: usage.as_ref().map(|u| u.used),
        code_perplexity: usage.as_ref().and_then(|u| rounded(u.perplexity, 2)),
        probe_accuracy: probe_accuracy.and_then(|a| rounded(a, 4)),
        bound_on: cfg.bound_on(),
        dataset: dataset_name.clone(),
        data_dir: dir,
        latent: cfg.latent,
        seed,
    };
    println!(
        "{}",
        serde_json::to_string(&report).map_err(|e| VaeError::Config(format!("writing the report: {e}")))?
    );
    // null means "does not apply"; a number that does apply but is not finite is said so.
    let mut not_finite: Vec<String> = [("test_loss", Some(stats.loss)), ("test_iw_nll", iw)]
        .into_iter()
        .filter(|(_, v)| v.is_some_and(|v| !v.is_finite()))
        .map(|(k, v)| format!("{k} ({})", v.unwrap_or_default()))
        .collect();
    if let Some(layers) = &layer_kl {
        not_finite.extend(
            layers
                .iter()
                .enumerate()
                .filter(|(_, k)| !k.is_finite())
                .map(|(i, k)| format!("layer_kl[{i}] ({k})")),
        );
    }
    if !not_finite.is_empty() {
        eprintln!(
            "warning: {} not finite: the model's numbers overflow on this data; the report shows {} as null",
            if not_finite.len() == 1 {
                format!("{} is", not_finite[0])
            } else {
                format!("{} are", not_finite.join(", "))
            },
            if not_finite.len() == 1 { "it" } else { "them" }
        );
    }
    Ok(())
}

/// Refuses an --out explore cannot use before any work: a file, or a train_mnist run
/// directory (explore's reconstructions.png would replace the run's own).
fn check_out(out: &std::path::Path) -> Result<()> {
    if out.exists() && !out.is_dir() {
        return Err(VaeError::Config(format!(
            "--out {} is a file; explore writes its pictures into a directory",
            out.display()
        )));
    }
    let run_files: Vec<&str> = [run::RUN_RECORD, run::MANIFEST, run::SAVES]
        .into_iter()
        .filter(|f| out.join(f).exists())
        .collect();
    if !run_files.is_empty() {
        return Err(VaeError::Config(format!(
            "--out {} holds a train_mnist run ({}), whose reconstructions.png explore's would replace; give \
             explore a directory of its own, e.g. --out {}",
            out.display(),
            run_files.join(", "),
            out.join("explore").display()
        )));
    }
    Ok(())
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        common::fail(&e, 1);
    }
}
