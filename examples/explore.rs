//! Pictures and figures of a trained model's latent space, from a checkpoint:
//! `cargo run --release --example explore -- --checkpoint FILE --out DIR [--data-dir DIR]
//! [--eval-iw K]`. `--help` lists what it writes.

use std::path::PathBuf;

use vae_wgpu::data::GpuDataset;
use vae_wgpu::data::{DatasetKind, IMAGE_SIDE, NUM_CLASSES};
use vae_wgpu::explore::{
    arithmetic_figure, class_figure, hierarchy_figure, interpolation_figure, manifold_figure, write_scatter_png,
    Figure, LinearProbe,
};
use vae_wgpu::io::{read_safetensors, write_grid_png};
use vae_wgpu::model::{Code, Vae};
use vae_wgpu::train::Evaluator;
use vae_wgpu::{Gpu, Result, VaeError};

const HELP: &str = "explore: latent-space pictures and figures of a trained VAE

USAGE: cargo run --release --example explore -- --checkpoint FILE --out DIR [FLAGS]

  --checkpoint FILE   a checkpoint written by train_mnist
  --out DIR           where the pictures go (created)
  --data-dir DIR      the dataset's directory (default: the dataset the checkpoint names, in
                      its default place)
  --eval-iw K         importance samples for test_iw_nll (default 100, at most 32768)
  --seed N            evaluation seed (default: the checkpoint's training seed, so test_loss
                      repeats train_mnist's last figure; 1 if the checkpoint has none)

Writes (28x28 cells, 2 px padding):
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

struct Args {
    checkpoint: PathBuf,
    out: PathBuf,
    data_dir: Option<PathBuf>,
    iw_k: usize,
    /// None: the seed the checkpoint was trained with.
    seed: Option<u64>,
}

fn parse_args() -> Result<Option<Args>> {
    let (mut checkpoint, mut out, mut data_dir, mut iw_k, mut seed) = (None, None, None, 100usize, None);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--help" || flag == "-h" {
            println!("{HELP}");
            return Ok(None);
        }
        let v = it
            .next()
            .ok_or_else(|| VaeError::Config(format!("{flag} needs a value (see --help)")))?;
        let num = |v: &str| -> Result<usize> {
            v.parse()
                .map_err(|_| VaeError::Config(format!("{flag} takes a whole number, got {v:?}")))
        };
        match flag.as_str() {
            "--checkpoint" => checkpoint = Some(PathBuf::from(&v)),
            "--out" => out = Some(PathBuf::from(&v)),
            "--data-dir" => data_dir = Some(PathBuf::from(&v)),
            "--eval-iw" => iw_k = num(&v)?,
            "--seed" => seed = Some(num(&v)? as u64),
            _ => return Err(VaeError::Config(format!("unknown flag {flag} (see --help)"))),
        }
    }
    let checkpoint = checkpoint.ok_or_else(|| VaeError::Config("--checkpoint FILE is required".into()))?;
    let out = out.ok_or_else(|| VaeError::Config("--out DIR is required".into()))?;
    if iw_k == 0 {
        return Err(VaeError::Config("--eval-iw needs K >= 1".into()));
    }
    Ok(Some(Args {
        checkpoint,
        out,
        data_dir,
        iw_k,
        seed,
    }))
}

/// The first test example of each class (or the first examples, unlabelled).
fn one_per_class(labels: &[u8], classes: usize, fallback: usize) -> Vec<usize> {
    if labels.is_empty() {
        return (0..fallback).collect();
    }
    (0..classes)
        .filter_map(|c| labels.iter().position(|&l| l as usize == c))
        .collect()
}

fn run(args: Args) -> Result<()> {
    let (_, meta) = read_safetensors(&args.checkpoint)?;
    let get = |k: &str| meta.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
    let dataset = DatasetKind::parse(get("dataset").unwrap_or("mnist"))?;
    let binarize = get("binarize") == Some("dynamic");
    let seed = args
        .seed
        .or_else(|| get("seed").and_then(|s| s.parse().ok()))
        .unwrap_or(1);
    let gpu = Gpu::new(vae_wgpu::GpuOptions::from_env()?)?;
    let vae = Vae::load(&gpu, &args.checkpoint)?;
    let cfg = vae.config.clone();
    if cfg.input_dim != IMAGE_SIDE * IMAGE_SIDE {
        return Err(VaeError::Config(format!(
            "the model makes {} pixels, not 28×28 images",
            cfg.input_dim
        )));
    }
    let dir = args.data_dir.clone().unwrap_or_else(|| dataset.default_dir());
    let train = dataset.load_split(&dir, true)?;
    let test = dataset.load_split(&dir, false)?;
    let d = cfg.input_dim;
    let test_gpu = GpuDataset::upload(&gpu, "test", &test.images, test.count, d, test.labels.clone())?;
    let train_gpu = GpuDataset::upload(&gpu, "train", &train.images, train.count, d, train.labels.clone())?;
    let test_eval = Evaluator::new(&gpu, test_gpu)?;
    let train_eval = Evaluator::new(&gpu, train_gpu)?;
    std::fs::create_dir_all(&args.out).map_err(|e| VaeError::io(&args.out, e))?;

    // Numbers: the bound, its importance-weighted tightening, and the probe.
    let stats = test_eval.elbo(&vae, seed, binarize)?;
    // An autoencoder has no prior, so no importance-weighted bound.
    let (iw, layer_kl) = if cfg.is_vae() {
        (
            Some(test_eval.iw_nll(&vae, seed, args.iw_k, binarize)?),
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
        let probe = LinearProbe::fit(&train_means, cfg.latent, &train.labels, NUM_CLASSES, 1e-4, 200)?;
        Some(probe.accuracy(&test_means, &test.labels))
    } else {
        None
    };

    // Pictures.
    let mut wrote = Vec::new();
    let side = IMAGE_SIDE;
    let chosen = one_per_class(&test.labels, NUM_CLASSES, 8);
    let shown = &chosen[..chosen.len().min(8)];
    let (x, xr) = test_eval.reconstruct_examples(&vae, seed, shown)?;
    let mut pairs_img = x.clone();
    pairs_img.extend_from_slice(&xr);
    let recon_path = args.out.join("reconstructions.png");
    write_grid_png(&recon_path, &pairs_img, 2 * shown.len(), side, side, shown.len(), 2)?;
    wrote.push("reconstructions.png");

    let pairs: Vec<(usize, usize)> = (0..4)
        .map(|i| (chosen[2 * i % chosen.len()], chosen[(2 * i + 1) % chosen.len()]))
        .collect();
    let fig = interpolation_figure(&gpu, &vae, &test_means, &test.labels, &pairs, 10)?;
    fig.write(&args.out.join("interpolation.png"), side)?;
    wrote.push("interpolation.png");

    if labelled {
        let fig = arithmetic_figure(&gpu, &vae, &test_means, &test.labels, NUM_CLASSES, &chosen)?;
        fig.write(&args.out.join("arithmetic.png"), side)?;
        wrote.push("arithmetic.png");
    } else {
        eprintln!(
            "note: {} has no labels: no arithmetic.png (class means need labels)",
            dataset.name()
        );
    }
    if !cfg.top().is_empty() {
        hierarchy_figure(&gpu, &vae, seed, 8, 8, 1.0)?.write(&args.out.join("hierarchy.png"), side)?;
        wrote.push("hierarchy.png");
    }
    if cfg.classes > 0 && cfg.is_vae() {
        let fig: Figure = class_figure(&gpu, &vae, seed, 10, 1.0)?;
        fig.write(&args.out.join("class_grid.png"), side)?;
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
            manifold_figure(&gpu, &vae, 20, 0)?.write(&args.out.join("manifold.png"), side)?;
            wrote.push("manifold.png");
        }
    }
    eprintln!("wrote {} to {}", wrote.join(", "), args.out.display());

    let bound = match (cfg.is_vae(), cfg.classes > 0) {
        (false, _) if matches!(cfg.code, Code::Quantized { .. }) => "none (VQ-VAE)",
        (false, _) => "none (autoencoder)",
        (true, true) => "-log p(x|y)",
        (true, false) => "-log p(x)",
    };
    let probe = probe_accuracy.map_or("null".to_string(), |a| format!("{a:.4}"));
    let iw = iw.map_or("null".to_string(), |v| format!("{v:.4}"));
    let layer_kl = layer_kl.map_or("null".to_string(), |v| {
        format!(
            "[{}]",
            v.iter().map(|k| format!("{k:.4}")).collect::<Vec<_>>().join(",")
        )
    });
    let (used, perplexity) = usage.map_or(("null".to_string(), "null".to_string()), |u| {
        (u.used.to_string(), format!("{:.2}", u.perplexity))
    });
    println!(
        "{{\"test_loss\":{:.4},\"test_iw_nll\":{iw},\"iw_k\":{},\"layer_kl\":{layer_kl},\"codes_used\":{used},\"code_perplexity\":{perplexity},\"probe_accuracy\":{probe},\"bound_on\":\"{bound}\",\"dataset\":\"{}\",\"latent\":{},\"seed\":{seed}}}",
        stats.loss,
        args.iw_k,
        dataset.name(),
        cfg.latent
    );
    Ok(())
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
