//! Trains a VAE on MNIST (or Fashion-MNIST, or binarized MNIST) on the GPU and writes pictures,
//! metrics and a checkpoint. `cargo run --release --example train_mnist -- --help` lists the
//! flags.

mod common;

use std::io::Write;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Parser;
use common::data::{dataset, fraction, image_size, npz_names, Data, DataSpec};
use common::Signals;
use vae_wgpu::data::{ArrayLayout, GpuDataset, NpzNames, Pixels, IMAGE_SIDE, NUM_CLASSES};
use vae_wgpu::gpu::MatmulStrategy;
use vae_wgpu::infer::{decode_conditional, prior_latents};
use vae_wgpu::io::read_safetensors;
use vae_wgpu::model::{
    likelihood_name, parse_hidden, parse_likelihood, parse_top, parse_variance, Activation, Code, Likelihood,
    Objective, TopLatent,
};
use vae_wgpu::model::{Arch, ConvArch, Vae, VaeConfig};
use vae_wgpu::run::RunDir;
use vae_wgpu::train::{
    settings_json, EpochOutcome, EpochRecord, Evaluator, KlSchedule, LrSchedule, TrainConfig, Trainer,
};
use vae_wgpu::{Gpu, GpuOptions, Result, VaeError};

const AFTER_HELP: &str = "Writes to --out: metrics.jsonl (one JSON line per epoch, with the \
epoch's last beta), run.json (configuration, adapter, matmul strategy), reconstructions.png, \
samples.png (for a conditional model: one row per class), checkpoint.safetensors (the newest \
model), saves/ (each save's model and training state, for --resume) and latest.json (which save \
is the newest). Ctrl-C or SIGTERM saves and exits; --resume DIR continues bit for bit. \
docs/cli.md describes every flag and output.";

/// Train a VAE (or an autoencoder) on MNIST on the GPU.
#[derive(Parser, Debug)]
#[command(name = "train_mnist", after_help = AFTER_HELP, allow_negative_numbers = true)]
struct Cli {
    /// Epochs to train (in all, counting a resumed run's)
    #[arg(long, value_name = "N", default_value_t = 10, value_parser = common::positive)]
    epochs: usize,
    /// Examples per step
    #[arg(long, value_name = "N", default_value_t = 128, value_parser = common::positive)]
    batch_size: usize,
    /// Latent dimensions (even for a VAE) [default: 20]
    #[arg(long, value_name = "N", value_parser = common::positive)]
    latent: Option<usize>,
    /// Dense layers' widths (empty: none): the encoder's, which the decoder mirrors; with
    /// --arch conv, those between the feature map and the latent [default: 400, or 256 with
    /// --arch conv]
    #[arg(long, value_name = "N[,N...]", value_parser = hidden)]
    hidden: Option<Hidden>,
    /// Encoder and decoder: mlp (dense layers on the pixels) or conv (convolutions 4x4, stride
    /// 2, padding 1, each halving the image, then dense layers; transposed convolutions back)
    #[arg(long, value_name = "A", default_value = "mlp", value_parser = ["mlp", "conv"])]
    arch: String,
    /// With --arch conv: the convolutions' output channels [default: 32,64]
    #[arg(long, value_name = "C[,C...]", value_parser = hidden)]
    conv: Option<Hidden>,
    /// Hidden layers' activation: relu, leaky-relu, tanh, sigmoid, or identity (alias linear)
    #[arg(long, value_name = "A", default_value = "relu", value_parser = activation)]
    activation: Activation,
    /// Adam learning rate
    #[arg(long, value_name = "F", default_value_t = 1e-3, value_parser = common::positive_f32)]
    lr: f32,
    /// Adam's epsilon (the IWAE paper's protocol uses 1e-4)
    #[arg(long, value_name = "F", default_value_t = 1e-8, value_parser = common::positive_f32)]
    adam_eps: f32,
    /// Learning-rate schedule: constant, or burda (Burda et al. 2016: stage i = 0..7 runs
    /// 3^i passes at lr * 10^(-i/7); --epochs must equal its length)
    #[arg(long, value_name = "S", default_value = "constant", value_parser = ["constant", "burda"])]
    lr_schedule: String,
    /// With --lr-schedule burda: compress it to N nominal passes, stage i running
    /// max(1, round(3^i * N / 3280)) epochs [default: 3280, the paper's]
    #[arg(long, value_name = "N", value_parser = common::positive)]
    passes: Option<usize>,
    /// The decoder's output bias at the start: default (as the other layers) or mean (the
    /// logit of each pixel's training mean, clipped to [0.001, 0.999]; a Gaussian decoder: the
    /// mean)
    #[arg(long, value_name = "I", default_value = "default", value_parser = ["default", "mean"])]
    output_bias: String,
    /// Seed for the initial weights, the example order and the device's draws
    #[arg(long, value_name = "N", default_value_t = 1)]
    seed: u64,
    /// Decoder likelihood: bernoulli, gaussian (fixed variance 1) or gaussian:C (variance C)
    #[arg(long, value_name = "L", default_value = "bernoulli", value_parser = likelihood)]
    likelihood: Lik,
    /// A Gaussian decoder's variance: fixed:C, learned-global or learned-pixel (a learned
    /// log-variance is floored at -6, sigma >= 0.05)
    #[arg(long, value_name = "V", value_parser = variance)]
    variance: Option<Likelihood>,
    /// Weight of the KL term in training (beta-VAE for F > 1); the reported -ELBO always uses 1
    #[arg(long, value_name = "F", default_value_t = 1.0, value_parser = common::non_negative)]
    beta: f32,
    /// KL annealing: beta(t) = beta * min(1, t/N) over global steps t
    #[arg(long, value_name = "N", conflicts_with = "kl_cycles")]
    kl_warmup: Option<u64>,
    /// Cyclical annealing: M cycles over the run, beta rising over the first half of each
    #[arg(long, value_name = "M", value_parser = cycles)]
    kl_cycles: Option<u32>,
    /// Monte Carlo samples of z per example in training (at most 32768)
    #[arg(long, value_name = "L", default_value_t = 1, value_parser = common::samples)]
    mc_samples: usize,
    /// The bound training maximizes: elbo, or iwae (the importance-weighted bound over
    /// --iw-k draws, Burda et al. 2016)
    #[arg(long, value_name = "O", default_value = "elbo", value_parser = ["elbo", "iwae"])]
    objective: String,
    /// With --objective iwae: importance samples K per example (at most 32768)
    #[arg(long, value_name = "K", value_parser = common::samples)]
    iw_k: Option<usize>,
    /// Conditional VAE: the one-hot label feeds encoder and decoder; the bound is then on
    /// -log p(x|y)
    #[arg(long)]
    conditional: bool,
    /// A deterministic code instead of a Gaussian posterior (no KL, no prior, no bound)
    #[arg(long, conflicts_with_all = ["vq", "top", "eval_iw", "mc_samples", "beta", "kl_warmup", "kl_cycles"])]
    autoencoder: bool,
    /// With --autoencoder: L1 penalty F * sum |z| on the code (a sparse autoencoder)
    #[arg(long, value_name = "F", requires = "autoencoder", value_parser = common::non_negative)]
    l1: Option<f32>,
    /// With --autoencoder: contractive penalty F * ||dz/dx||_F^2 (one relu hidden layer)
    #[arg(long, value_name = "F", requires = "autoencoder", value_parser = common::non_negative)]
    contractive: Option<f32>,
    /// VQ-VAE: the code is G vectors (default G = latent), each replaced by its nearest of K
    /// codebook entries
    #[arg(
        long,
        value_name = "K[:G]",
        value_parser = vq,
        conflicts_with_all = ["top", "eval_iw", "mc_samples", "beta", "kl_warmup", "kl_cycles"]
    )]
    vq: Option<Vq>,
    /// With --vq: weight of the commitment term
    #[arg(long, value_name = "B", requires = "vq", value_parser = common::non_negative)]
    commitment: Option<f32>,
    /// With --vq: train the codebook by moving averages with decay G (e.g. 0.99) instead of by
    /// its gradient
    #[arg(long, value_name = "G", requires = "vq", value_parser = decay)]
    vq_ema: Option<f32>,
    /// Hierarchical VAE: stochastic layers above z, each Z:H (latent size, hidden width of its
    /// q and p networks; Z:HxH for two hidden layers, the IWAE paper's), up to 8
    #[arg(long, value_name = "Z2:H2[,Z3:H3...]", value_parser = top)]
    top: Option<Top>,
    /// Denoising: zero each input pixel with probability P in training (0 <= P < 1)
    #[arg(long, value_name = "P", default_value_t = 0.0, value_parser = probability)]
    denoise: f32,
    /// The dataset: mnist, fashion-mnist, binarized-mnist; images:DIR (PNG and JPEG files, flat
    /// or in class folders, optionally under train/ and test/); or npy:FILE[,LABELS] (NumPy
    /// arrays: a .npy of images [N,H,W], [N,H,W,C] or [N,C,H,W], uint8 or float32 in [0, 1],
    /// with an optional .npy of integer labels; or a .npz with x_train, y_train, x_test, y_test)
    #[arg(long, value_name = "D", default_value = "mnist", value_parser = dataset)]
    dataset: DataSpec,
    /// With --dataset images:DIR: the images' size, S or HxW [default: the images' own, when
    /// they all agree]
    #[arg(long, value_name = "S|HxW", value_parser = image_size)]
    image_size: Option<(usize, usize)>,
    /// With --dataset images:DIR: how other sizes reach --image-size: crop (scale to cover, centre
    /// crop), fit (scale to fit, on black) or stretch; bilinear filter
    #[arg(long, value_name = "M", default_value = "crop", value_parser = ["crop", "fit", "stretch"])]
    resize: String,
    /// With --dataset images:DIR: 1 (grey, Rec. 601 luma) or 3 (RGB) [default: 1 when every
    /// image is grey, else 3]
    #[arg(long, value_name = "C", value_parser = ["1", "3"])]
    channels: Option<String>,
    /// With --dataset images:DIR: refuse a file that is not a readable PNG or JPEG instead of
    /// skipping it with a warning
    #[arg(long)]
    strict: bool,
    /// Keep the training and test images on the host and upload each batch before its step or
    /// evaluation (automatic for a set beyond the device's largest storage binding); the
    /// numbers do not change
    #[arg(long)]
    stream: bool,
    /// With --dataset images:DIR: where decoded images are kept between runs, or none
    /// [default: $XDG_CACHE_HOME/vae-wgpu, else ~/.cache/vae-wgpu]
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// With --dataset npy: where a 4-D array's channels are, nhwc or nchw (needed only when
    /// both ends of its shape could be channels)
    #[arg(long, value_name = "L", value_parser = ["nhwc", "nchw"])]
    layout: Option<String>,
    /// With --dataset npy:FILE.npy or images:DIR without train/ and test/: the fraction of the
    /// images held out as the test set, chosen by a fixed key (the same whatever --seed)
    /// [default: 0.1]
    #[arg(long, value_name = "F", value_parser = fraction)]
    test_split: Option<f64>,
    /// With --dataset npy:FILE.npz: the arrays' names, in the order x_train,y_train,x_test,y_test
    #[arg(long, value_name = "XTR,YTR,XTE,YTE", value_parser = npz_names)]
    npz_names: Option<NpzNames>,
    /// Directory with the dataset's files (default: the dataset's own)
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Train on the first N training images
    #[arg(long, value_name = "N", value_parser = common::positive)]
    limit_train: Option<usize>,
    /// Drop the last partial batch of each epoch
    #[arg(long)]
    drop_last: bool,
    /// Binarization of the training pixels: dynamic (resampled each step) or none
    #[arg(long, value_name = "MODE", default_value = "none", value_parser = ["dynamic", "none"])]
    binarize: String,
    /// Output directory (default runs/<unix time>)
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Continue the run in DIR up to --epochs in all; pass the run's own flags
    #[arg(long, value_name = "DIR", conflicts_with = "overwrite")]
    resume: Option<PathBuf>,
    /// Replace the run already in --out (without it, a directory holding files is refused)
    #[arg(long)]
    overwrite: bool,
    /// How many of the newest saves (epoch ends and interruptions) to keep in DIR/saves
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = common::positive)]
    keep: usize,
    /// Also save every N steps inside an epoch (for long epochs)
    #[arg(long, value_name = "N", value_parser = common::positive)]
    save_every: Option<usize>,
    /// After the last epoch, estimate the test -log p(x) with K importance samples
    #[arg(long, value_name = "K", value_parser = common::samples)]
    eval_iw: Option<usize>,
}

/// Hidden widths.
#[derive(Clone, Debug)]
struct Hidden(Vec<usize>);
/// Upper stochastic layers.
#[derive(Clone, Debug)]
struct Top(Vec<TopLatent>);
/// A codebook of K entries for G vectors (None: one vector per latent value).
#[derive(Clone, Copy, Debug)]
struct Vq {
    codes: usize,
    groups: Option<usize>,
}

fn hidden(s: &str) -> std::result::Result<Hidden, String> {
    parse_hidden(s).map(Hidden).map_err(|e| common::explain(&e))
}
fn top(s: &str) -> std::result::Result<Top, String> {
    parse_top(s).map(Top).map_err(|e| common::explain(&e))
}
/// A likelihood, and whether it names a Gaussian's variance (`gaussian:C`, `gaussian:learned-*`).
#[derive(Clone, Copy, Debug)]
struct Lik {
    value: Likelihood,
    names_variance: bool,
}

fn likelihood(s: &str) -> std::result::Result<Lik, String> {
    Ok(Lik {
        value: parse_likelihood(s).map_err(|e| common::explain(&e))?,
        names_variance: s.contains(':'),
    })
}
fn variance(s: &str) -> std::result::Result<Likelihood, String> {
    parse_variance(s).map_err(|e| common::explain(&e))
}
fn activation(s: &str) -> std::result::Result<Activation, String> {
    Activation::parse(s).map_err(|e| common::explain(&e))
}
fn cycles(s: &str) -> std::result::Result<u32, String> {
    match s.parse::<u32>() {
        Ok(0) => Err("must be at least 1 (omit it for a constant KL weight)".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("{s:?} is not a whole number")),
    }
}
fn probability(s: &str) -> std::result::Result<f32, String> {
    // Inside [0, 1) but 1 in f32, the kernels' precision: say so rather than "not in [0, 1)".
    if s.parse::<f64>().is_ok_and(|p| (0.0..1.0).contains(&p)) && s.parse::<f32>() == Ok(1.0) {
        return Err(format!(
            "{s:?} rounds to 1 in f32 (the kernels' precision); use at most {}",
            1.0f32.next_down()
        ));
    }
    s.parse::<f32>()
        .ok()
        .filter(|v| (0.0..1.0).contains(v))
        .ok_or_else(|| format!("{s:?} is not a probability in [0, 1)"))
}
fn decay(s: &str) -> std::result::Result<f32, String> {
    s.parse::<f32>()
        .ok()
        .filter(|v| *v > 0.0 && *v < 1.0)
        .ok_or_else(|| format!("{s:?} is not a decay in (0, 1)"))
}
fn vq(s: &str) -> std::result::Result<Vq, String> {
    let (k, g) = match s.split_once(':') {
        Some((k, g)) => (k, Some(g)),
        None => (s, None),
    };
    Ok(Vq {
        codes: common::positive(k)?,
        groups: g.map(common::positive).transpose()?,
    })
}

/// What a run needs, from the command line.
struct Args {
    epochs: usize,
    train: TrainConfig,
    model: VaeConfig,
    dataset: DataSpec,
    /// Array data, read while the flags were checked (its shape decides the model).
    arrays: Option<Data>,
    layout: Option<String>,
    test_split: Option<f64>,
    data_dir: Option<PathBuf>,
    limit_train: Option<usize>,
    out: Option<PathBuf>,
    eval_iw: Option<usize>,
    /// The source splits off its own test set (a .npy, or a folder without train/ and test/).
    splits_itself: bool,
    /// An image folder's preprocessing (size, resize mode, channels), "none" otherwise.
    preprocessing: String,
    /// Start the output bias at the training data's pixel means.
    output_bias_mean: bool,
    /// Stream the training images whatever their size.
    stream: bool,
    resume: Option<PathBuf>,
    overwrite: bool,
    keep: usize,
    save_every: Option<usize>,
}

impl Cli {
    /// The run's configuration, checked by the library before anything is written.
    fn into_args(self) -> Result<Args> {
        let layout = self.layout.as_deref().map(ArrayLayout::parse).transpose()?;
        let arrays = match &self.dataset {
            DataSpec::Builtin(_) => {
                let array_flags = [
                    (self.layout.is_some(), "--layout"),
                    (self.test_split.is_some(), "--test-split"),
                    (self.npz_names.is_some(), "--npz-names"),
                ];
                if let Some((_, flag)) = array_flags.iter().find(|(set, _)| *set) {
                    return Err(VaeError::Config(format!(
                        "{flag} applies to --dataset npy:FILE (NumPy arrays)"
                    )));
                }
                None
            }
            DataSpec::Folder(dir) => {
                let misplaced = [
                    (self.layout.is_some(), "--layout"),
                    (self.npz_names.is_some(), "--npz-names"),
                    (self.data_dir.is_some(), "--data-dir"),
                ];
                if let Some((_, flag)) = misplaced.iter().find(|(set, _)| *set) {
                    return Err(VaeError::Config(format!(
                        "{flag} does not apply to --dataset images:DIR"
                    )));
                }
                let opts = vae_wgpu::data::FolderOptions {
                    size: self.image_size,
                    resize: vae_wgpu::data::ResizeMode::parse(&self.resize)?,
                    channels: self.channels.as_deref().map(|c| if c == "1" { 1 } else { 3 }),
                    strict: self.strict,
                    test_split: self.test_split.unwrap_or(0.1),
                };
                let cache = match &self.cache_dir {
                    Some(d) if d.as_os_str() == "none" => None,
                    Some(d) => Some(d.clone()),
                    None => vae_wgpu::data::default_cache_dir(),
                };
                Some(Data::folder(dir, &opts, cache.as_deref())?)
            }
            spec => {
                if self.data_dir.is_some() {
                    return Err(VaeError::Config(
                        "--data-dir locates a built-in dataset; npy:FILE names its files itself".into(),
                    ));
                }
                Some(Data::arrays(
                    spec,
                    layout,
                    self.test_split,
                    &self.npz_names.clone().unwrap_or_default(),
                )?)
            }
        };
        if !matches!(self.dataset, DataSpec::Folder(_)) {
            let folder_flags = [
                (self.image_size.is_some(), "--image-size"),
                (self.resize != "crop", "--resize"),
                (self.channels.is_some(), "--channels"),
                (self.strict, "--strict"),
                (self.cache_dir.is_some(), "--cache-dir"),
            ];
            if let Some((_, flag)) = folder_flags.iter().find(|(set, _)| *set) {
                return Err(VaeError::Config(format!("{flag} applies to --dataset images:DIR")));
            }
        }
        let shape = arrays.as_ref().map_or([1, IMAGE_SIDE, IMAGE_SIDE], |a| a.shape);
        let classes = match (&arrays, &self.dataset) {
            (Some(a), _) => a.classes,
            (None, DataSpec::Builtin(k)) if k.has_labels() => NUM_CLASSES,
            _ => 0,
        };
        let conv = match (self.arch.as_str(), self.conv) {
            ("conv", channels) => Some(ConvArch {
                input: shape,
                channels: channels.map_or(vec![32, 64], |c| c.0),
            }),
            (_, Some(_)) => {
                return Err(VaeError::Config(
                    "--conv lists a convolutional model's channels; add --arch conv".into(),
                ))
            }
            _ => None,
        };
        let conv_vq = conv.as_ref().filter(|_| self.vq.is_some());
        let (latent, hidden) = match conv_vq {
            // The code of a convolutional VQ-VAE is the encoder's feature map, one vector per cell.
            Some(c) => {
                if self.latent.is_some() || self.vq.is_some_and(|v| v.groups.is_some()) {
                    return Err(VaeError::Config(
                        "with --arch conv --vq the code is the feature map (one vector of its channels per \
                         cell): drop --latent and the :G of --vq"
                            .into(),
                    ));
                }
                if self.hidden.is_some() {
                    return Err(VaeError::Config(
                        "with --arch conv --vq there are no dense layers: drop --hidden".into(),
                    ));
                }
                (c.feature_len(), Vec::new())
            }
            None => (
                self.latent.unwrap_or(20),
                self.hidden
                    .map_or_else(|| if conv.is_some() { vec![256] } else { vec![400] }, |h| h.0),
            ),
        };
        let mut model = VaeConfig {
            input_dim: shape.iter().product(),
            hidden,
            latent,
            activation: self.activation,
            likelihood: self.likelihood.value,
            classes: if self.conditional { classes } else { 0 },
            arch: conv.clone().map_or(Arch::Mlp, Arch::Conv),
            ..Default::default()
        };
        if let Some(v) = self.variance {
            if matches!(model.likelihood, Likelihood::Bernoulli) {
                return Err(VaeError::Config(
                    "--variance applies to a Gaussian decoder; add --likelihood gaussian".into(),
                ));
            }
            if self.likelihood.names_variance {
                return Err(VaeError::Config(format!(
                    "--likelihood {} and --variance both set the Gaussian's variance; give --likelihood \
                     gaussian with --variance, or --likelihood gaussian:C alone",
                    likelihood_name(model.likelihood)
                )));
            }
            model.likelihood = v;
        }
        if self.conditional && !(2..=1024).contains(&classes) {
            return Err(VaeError::Config(format!(
                "--conditional needs class labels (2 to 1024 classes), and {} has {}",
                self.dataset.name(),
                match classes {
                    0 => "none".to_string(),
                    n => format!("{n}"),
                }
            )));
        }
        model.code = match (self.autoencoder, self.vq, self.top) {
            (true, _, _) => Code::Deterministic {
                l1: self.l1.unwrap_or(0.0),
                contractive: self.contractive.unwrap_or(0.0),
            },
            (_, Some(vq), _) => Code::Quantized {
                codes: vq.codes,
                groups: vq
                    .groups
                    .unwrap_or(conv_vq.map_or(latent, |c| c.feature_len() / c.channels[c.channels.len() - 1])),
                commitment: self.commitment.unwrap_or(0.25),
            },
            (_, _, Some(top)) => Code::Hierarchical(top.0),
            _ => Code::Gaussian,
        };
        let objective = match (self.objective.as_str(), self.iw_k) {
            ("iwae", Some(k)) => Objective::Iwae { k },
            ("iwae", None) => {
                return Err(VaeError::Config(
                    "--objective iwae needs --iw-k K, the importance samples per example (the IWAE paper \
                     uses 1, 5 and 50)"
                        .into(),
                ))
            }
            (_, Some(_)) => {
                return Err(VaeError::Config(
                    "--iw-k sets the importance-weighted bound's samples; add --objective iwae (the ELBO's \
                     samples are --mc-samples)"
                        .into(),
                ))
            }
            _ => Objective::Elbo,
        };
        let lr_schedule = match (self.lr_schedule.as_str(), self.passes) {
            ("burda", passes) => LrSchedule::Burda {
                passes: passes.unwrap_or(LrSchedule::BURDA_PASSES),
            },
            (_, Some(_)) => {
                return Err(VaeError::Config(
                    "--passes compresses the burda learning-rate schedule; add --lr-schedule burda".into(),
                ))
            }
            _ => LrSchedule::Constant,
        };
        let train = TrainConfig {
            batch_size: self.batch_size,
            adam: vae_wgpu::train::AdamConfig {
                lr: self.lr,
                eps: self.adam_eps,
                ..Default::default()
            },
            seed: self.seed,
            drop_last: self.drop_last,
            binarize: self.binarize == "dynamic",
            mc_samples: self.mc_samples,
            objective,
            denoise: self.denoise,
            beta: self.beta,
            kl_schedule: KlSchedule::parse(self.kl_warmup, self.kl_cycles)?,
            lr_schedule,
            epochs: self.epochs,
            vq_ema: self.vq_ema,
        };
        if let (Some(r), Some(o)) = (&self.resume, &self.out) {
            let same = match (std::fs::canonicalize(r), std::fs::canonicalize(o)) {
                (Ok(a), Ok(b)) => a == b,
                _ => r.components().eq(o.components()),
            };
            if !same {
                return Err(VaeError::Config(
                    "--resume DIR writes into DIR; drop --out or make it the same directory".into(),
                ));
            }
        }
        model.validate()?;
        train.validate(&model)?;
        Ok(Args {
            epochs: self.epochs,
            train,
            model,
            splits_itself: match &self.dataset {
                DataSpec::Arrays { .. } => !self.dataset.is_npz(),
                DataSpec::Folder(dir) => !(dir.join("train").is_dir() && dir.join("test").is_dir()),
                DataSpec::Builtin(_) => false,
            },
            preprocessing: match (&self.dataset, &arrays) {
                (DataSpec::Folder(_), Some(a)) => format!(
                    "{}x{} {} {} channels{}",
                    a.shape[1],
                    a.shape[2],
                    self.resize,
                    a.shape[0],
                    if self.strict { " strict" } else { "" }
                ),
                (DataSpec::Arrays { .. }, _) => match &self.npz_names {
                    Some(n) => format!("npz-names {},{},{},{}", n.x_train, n.y_train, n.x_test, n.y_test),
                    None => "none".to_string(),
                },
                _ => "none".to_string(),
            },
            dataset: self.dataset,
            arrays,
            layout: self.layout,
            test_split: self.test_split,
            data_dir: self.data_dir,
            limit_train: self.limit_train,
            out: self.out,
            eval_iw: self.eval_iw,
            output_bias_mean: self.output_bias == "mean",
            stream: self.stream,
            resume: self.resume,
            overwrite: self.overwrite,
            keep: self.keep,
            save_every: self.save_every,
        })
    }
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

fn append_line(path: &Path, line: &str) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| VaeError::io(path, e))?;
    // One write, so that a crash leaves the line whole or cut short, never interleaved.
    f.write_all(format!("{line}\n").as_bytes())
        .map_err(|e| VaeError::io(path, e))
}

/// Trains, evaluates and writes the run's files.
fn run(mut args: Args) -> Result<i32> {
    let gpu = Gpu::new(GpuOptions::from_env()?)?;
    let r = gpu.report();
    println!(
        "adapter: {} | backend {:?} | driver {}",
        r.name,
        r.backend,
        r.driver.trim()
    );
    let data = match (&args.dataset, args.arrays.take()) {
        (_, Some(data)) => data,
        (DataSpec::Builtin(kind), None) => {
            Data::builtin(*kind, &args.data_dir.clone().unwrap_or_else(|| kind.default_dir()))?
        }
        (_, None) => return Err(VaeError::Config("the dataset was not read".into())),
    };
    let (train, test, shape) = (&data.train, &data.test, data.shape);
    let d: usize = shape.iter().product();
    if train.count == 0 || test.count == 0 {
        return Err(VaeError::Config(format!(
            "{} in {} holds {} training and {} test images; both sets need at least one",
            args.dataset.name(),
            data.from,
            train.count,
            test.count
        )));
    }
    let n_train = args.limit_train.map_or(train.count, |n| n.min(train.count));
    // Training images beyond one storage binding (or asked to) stay on the host, streamed a
    // batch at a time; the numbers are the same either way.
    // Bytes a value: 1, or 4 for float32 arrays kept as f32.
    let (vb_train, vb_test) = (train.images.value_bytes(), test.images.value_bytes());
    let streamed = args.stream
        || gpu
            .check_buffer("the training images", (n_train * d * vb_train) as u128)
            .is_err();
    let test_streamed = args.stream
        || gpu
            .check_buffer("the test images", (test.count * d * vb_test) as u128)
            .is_err();
    let on_device = vb_test
        * d
        * if test_streamed {
            vae_wgpu::train::EVAL_BATCH.min(test.count)
        } else {
            test.count
        }
        + vb_train
            * d
            * if streamed {
                args.train.batch_size.min(n_train)
            } else {
                n_train
            };
    let [c, h, w] = shape;
    let notes: String = data.notes.iter().map(|n| format!(" | {n}")).collect();
    println!(
        "dataset: {} from {} | train {} | test {} | {c}x{h}x{w}{} | {:.1} MB on the device{notes}",
        args.dataset.name(),
        data.from,
        n_train,
        test.count,
        match data.classes {
            0 => String::new(),
            k => format!(" | {k} classes"),
        },
        on_device as f64 / 1e6
    );
    let train_labels = train.labels.get(..n_train).map(<[u32]>::to_vec).unwrap_or_default();
    let train_images = train.images.prefix(n_train * d);
    let train_gpu = if streamed {
        GpuDataset::streamed_pixels(
            &gpu,
            "train",
            train_images,
            n_train,
            d,
            train_labels,
            args.train.batch_size,
        )?
    } else {
        GpuDataset::upload_pixels(&gpu, "train", &train_images, n_train, d, train_labels)?
    };
    if streamed {
        println!(
            "streaming: the {:.1} MB of training images stay on the host; the device holds a batch ({:.2} MB)",
            (n_train * d * vb_train) as f64 / 1e6,
            train_gpu.device_bytes() as f64 / 1e6
        );
    }
    let test_gpu = test.eval_set(&gpu, "test", d, test_streamed)?;
    if test_streamed {
        println!(
            "streaming: the {:.1} MB of test images stay on the host; the device holds an evaluation batch ({:.2} MB)",
            (test.count * d * vb_test) as f64 / 1e6,
            test_gpu.device_bytes() as f64 / 1e6
        );
    }
    let data_meta = [
        ("image_shape".to_string(), format!("{c},{h},{w}")),
        (
            "test_split".to_string(),
            args.test_split
                .or(args.splits_itself.then_some(0.1))
                .map_or("none".to_string(), |f| f.to_string()),
        ),
        (
            "layout".to_string(),
            args.layout.clone().unwrap_or_else(|| "none".to_string()),
        ),
        ("preprocessing".to_string(), args.preprocessing.clone()),
    ];

    let vae =
        Vae::new(&gpu, args.model.clone(), args.train.seed).map_err(common::sized_by(common::MODEL_SIZE_FLAGS))?;
    if args.output_bias_mean {
        // Sums of the stored values, then one division (bytes: by 255 too).
        let column_sum = |p: usize| -> f64 {
            let rows = (0..n_train).map(|i| i * d + p);
            match &train.images {
                Pixels::U8(v) => rows.map(|i| v[i] as f64).sum(),
                Pixels::F32(v) => rows.map(|i| v[i] as f64).sum(),
            }
        };
        let scale = if matches!(train.images, Pixels::U8(_)) {
            255.0
        } else {
            1.0
        };
        let mean: Vec<f32> = (0..d)
            .map(|p| (column_sum(p) / (scale * n_train as f64)) as f32)
            .collect();
        vae.init_output_bias(&gpu, &mean)
            .map_err(|e| VaeError::Config(format!("--output-bias mean: {}", common::explain(&e))))?;
    }
    let np = vae.num_params();
    let m = &args.model;
    // The convolutions, as the encoder and the decoder run them, around the dense layers.
    let (conv_down, conv_up) = match m.conv() {
        Some(c) => {
            let [ch, h, w] = c.input;
            let [fc, fh, fw] = c.feature_map().unwrap_or_default();
            (
                format!(" -> conv {:?} -> {fc}x{fh}x{fw}", c.channels),
                format!(" -> {fc}x{fh}x{fw} -> conv^T -> {ch}x{h}x{w}"),
            )
        }
        None => (String::new(), String::new()),
    };
    println!(
        "model: {}{conv_down} -> {:?} -> {} {} -> {:?}{conv_up} -> {} | {:?} | {} parameters, {:.2} MB",
        m.input_dim,
        m.hidden,
        m.latent,
        match &m.code {
            Code::Gaussian | Code::Hierarchical(_) => "(mu, log var)".to_string(),
            &Code::Deterministic { l1, contractive } => {
                format!("(deterministic code, L1 {l1}, contractive {contractive})")
            }
            &Code::Quantized {
                codes,
                groups,
                commitment,
            } => format!("({groups} vectors quantized to {codes} codebook entries, commitment {commitment})"),
        },
        m.hidden.iter().rev().collect::<Vec<_>>(),
        m.input_dim,
        m.likelihood,
        np,
        np as f64 * 4.0 / 1e6
    );
    let out_dir = args.resume.clone().or(args.out.clone()).unwrap_or_else(fresh_run_dir);
    let metrics = out_dir.join("metrics.jsonl");
    let train_cfg = TrainConfig {
        epochs: args.epochs,
        ..args.train.clone()
    };
    let mut trainer = Trainer::new(&gpu, &vae, train_gpu, train_cfg).map_err(common::sized_by(
        "--batch-size/--mc-samples with --latent/--hidden/--vq/--top/--conv (the training step's sizes)",
    ))?;
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
        ("dataset".to_string(), args.dataset.name()),
        ("train_examples".to_string(), n_train.to_string()),
        data_meta[0].clone(),
        data_meta[1].clone(),
        data_meta[2].clone(),
        data_meta[3].clone(),
        ("epochs".to_string(), args.epochs.to_string()),
        ("batch_size".to_string(), args.train.batch_size.to_string()),
        ("lr".to_string(), args.train.adam.lr.to_string()),
        ("seed".to_string(), args.train.seed.to_string()),
        ("beta".to_string(), args.train.beta.to_string()),
        ("kl_schedule".to_string(), args.train.kl_schedule.to_string()),
        ("lr_schedule".to_string(), args.train.lr_schedule.to_string()),
        (
            "output_bias".to_string(),
            if args.output_bias_mean { "mean" } else { "default" }.to_string(),
        ),
        ("mc_samples".to_string(), args.train.mc_samples.to_string()),
        ("objective".to_string(), args.train.objective.name().to_string()),
        (
            "iw_k".to_string(),
            match args.train.objective {
                Objective::Iwae { k } => k.to_string(),
                Objective::Elbo => "none".to_string(),
            },
        ),
        ("adam_eps".to_string(), args.train.adam.eps.to_string()),
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
        ("bound".to_string(), args.model.bound_on().to_string()),
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
    let bound = args.model.bound_on();
    let (loss_name, kl_name) = if args.model.is_vae() {
        ("-ELBO", "KL")
    } else {
        ("loss", "penalty")
    };
    // Under the importance-weighted bound the training columns are that bound and its gap
    // to the mean NLL; the test columns stay the ELBO, comparable across objectives.
    let (train_name, train_rest) = match args.train.objective {
        Objective::Iwae { k } => (format!("-IWAE(K={k})"), "gap"),
        Objective::Elbo => (loss_name.to_string(), kl_name),
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
    // Everything is checked: only now does the run touch its directory.
    let run_dir = match &args.resume {
        Some(dir) => {
            let run_dir = RunDir::open(dir, args.keep)?;
            if let Err(e) = resume_run(&gpu, &vae, &mut trainer, &args, &run_meta, &run_dir, &metrics) {
                run_dir.abandon();
                return Err(e);
            }
            run_dir.claim()?;
            println!(
                "resumed {} after epoch {}{} (step {})",
                out_dir.display(),
                trainer.epoch,
                if trainer.batch > 0 {
                    format!(" and {} batches", trainer.batch)
                } else {
                    String::new()
                },
                trainer.step
            );
            run_dir
        }
        None => RunDir::create(&out_dir, args.overwrite, args.keep)?,
    };
    run_dir.clean_stale()?;
    let stop = Signals::install()?;
    let run_path = out_dir.join("run.json");
    std::fs::write(&run_path, settings_json(&run_meta)? + "\n").map_err(|e| VaeError::io(&run_path, e))?;
    let run_start = Instant::now();
    let save = |trainer: &Trainer<'_>| -> Result<()> {
        let mut meta = ckpt_meta.clone();
        meta.push(("epoch".to_string(), trainer.epoch.to_string()));
        meta.push(("batch".to_string(), trainer.batch.to_string()));
        meta.push(("step".to_string(), trainer.step.to_string()));
        run_dir.save(trainer.epoch, trainer.batch, |ckpt, state| {
            vae.save(&gpu, ckpt, &meta)?;
            trainer.save_state(&vae, state)
        })
    };
    let mut stream_before = 0.0;
    while (trainer.epoch as usize) < args.epochs {
        let epoch = trainer.epoch as usize + 1;
        let bar = common::progress_bar(trainer.steps_per_epoch() as u64, format!("epoch {epoch:>3}"));
        let since = trainer.batch;
        let outcome = trainer.train_epoch_until(
            |batch| stop.raised() || args.save_every.is_some_and(|n| (batch - since) % n == 0),
            |done, _| bar.set_position(done as u64),
        )?;
        bar.finish_and_clear();
        let rep = match outcome {
            EpochOutcome::Stopped { batch } => {
                save(&trainer)?;
                if let Some(code) = stop.exit_code() {
                    println!(
                        "interrupted in epoch {epoch} after batch {batch} (step {}); saved. Continue with the \
                         same flags and --resume {}",
                        trainer.step,
                        out_dir.display()
                    );
                    return Ok(code);
                }
                continue;
            }
            EpochOutcome::Done(rep) => rep,
        };
        let test_stats = evaluator.elbo(&vae, args.train.seed, args.train.binarize)?;
        let elapsed = run_start.elapsed().as_secs_f64();
        let mut record = EpochRecord {
            epoch: epoch as u64,
            train_loss: rep.train.loss,
            train_recon: rep.train.recon,
            train_kl: rep.train.kl,
            train_bound: match args.train.objective {
                Objective::Iwae { k } => Some(format!("iwae:{k}")),
                Objective::Elbo => None,
            },
            test_loss: test_stats.loss,
            test_recon: test_stats.recon,
            test_kl: test_stats.kl,
            beta: rep.beta as f64,
            bound_on: bound.to_string(),
            samples_per_sec: rep.samples_per_sec,
            elapsed_s: elapsed,
            test_layer_kl: None,
            test_iw_nll: None,
            iw_k: None,
        };
        println!(
            "epoch {epoch:>3} | beta {:.3} | train {train_name} {:.2} (recon {:.2} + {train_rest} {:.2}) | test {loss_name} {:.2} {bound_note} | {:.0} samples/s | {:.1}s",
            rep.beta, rep.train.loss, rep.train.recon, rep.train.kl, test_stats.loss, rep.samples_per_sec, elapsed
        );
        if streamed {
            let host = trainer.stream_seconds();
            println!(
                "streaming: {:.2} ms per step on the host, gathering and uploading the batches",
                1e3 * (host - stream_before) / rep.steps.max(1) as f64
            );
            stream_before = host;
        }
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
            record.test_layer_kl = Some(layers);
        }
        // A staged learning rate gets the importance-weighted estimate at each stage's end (the
        // IWAE paper's protocol); the last epoch's comes after its save, below.
        if let (Some(k), true) = (
            args.eval_iw,
            epoch < args.epochs && args.train.lr_schedule.ends_stage(epoch),
        ) {
            if let Some(iw) = estimate_iw(&evaluator, &vae, &args, k, &stop)? {
                println!("test {bound} (importance weighted, K = {k}) at the stage's end: {iw:.2}");
                record.test_iw_nll = Some(iw);
                record.iw_k = Some(k);
            }
        }
        // The line before the save: a crash between them leaves a line of an epoch the
        // manifest does not hold, which the resume drops and trains again.
        append_line(&metrics, &record.to_line()?)?;
        save(&trainer)?;
        if epoch < args.epochs {
            if let Some(code) = stop.exit_code() {
                println!(
                    "interrupted after epoch {epoch} (step {}); saved. Continue with the same flags and --resume {}",
                    trainer.step,
                    out_dir.display()
                );
                return Ok(code);
            }
            continue;
        }
        // The last epoch is saved: what follows adds to it, and a signal stops it without loss.
        if let Some(code) = stop.exit_code() {
            println!("interrupted after the last epoch; the run is saved, its pictures are not drawn");
            return Ok(code);
        }
        if let Some(k) = args.eval_iw {
            let Some(iw) = estimate_iw(&evaluator, &vae, &args, k, &stop)? else {
                println!(
                    "interrupted during the importance-weighted estimate after the last epoch; the run is saved, \
                     its pictures are not drawn (explore --checkpoint {} --eval-iw {k} estimates it)",
                    out_dir.display()
                );
                return Ok(stop.exit_code().unwrap_or(130));
            };
            println!("test {bound} (importance weighted, K = {k}): {iw:.2}");
            record.test_iw_nll = Some(iw);
            record.iw_k = Some(k);
            replace_last_line(&metrics, &record.to_line()?)?;
        }
    }
    // A signal from here on stops what is left undone; the run is saved.
    let interrupted = |undone: &str| {
        stop.exit_code().inspect(|_| {
            println!("interrupted after the last epoch; the run is saved, {undone}");
        })
    };
    if let Some(code) = interrupted("its pictures are not drawn") {
        return Ok(code);
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
    common::write_grid(&out_dir.join("reconstructions.png"), &pairs, 2 * n, shape, 8, 2)?;
    if !args.model.is_vae() {
        // An autoencoder has no prior to sample from.
        println!(
            "wrote {}/{{metrics.jsonl, run.json, checkpoint.safetensors, reconstructions.png}}",
            out_dir.display()
        );
        return Ok(finished(&stop));
    }
    if let Some(code) = interrupted("samples.png is not drawn") {
        return Ok(code);
    }
    // Samples from the prior; a conditional model draws one row of 8 per class (the first 16).
    let (n, labels) = if args.model.classes > 0 {
        let l: Vec<u32> = (0..8 * args.model.classes.min(16)).map(|i| (i / 8) as u32).collect();
        (l.len(), Some(l))
    } else {
        (64, None)
    };
    let z = prior_latents(&gpu, &vae, args.train.seed, n, 1.0, labels.as_deref())?;
    let samples = decode_conditional(&gpu, &vae, &z, labels.as_deref())?;
    common::write_grid(&out_dir.join("samples.png"), &samples, n, shape, 8, 2)?;
    println!(
        "wrote {}/{{metrics.jsonl, run.json, checkpoint.safetensors, reconstructions.png, samples.png}}",
        out_dir.display()
    );
    Ok(finished(&stop))
}

/// The importance-weighted estimate of the test −log p(x) with `k` samples, with a progress
/// bar; None when a signal stopped it.
fn estimate_iw(evaluator: &Evaluator<'_>, vae: &Vae, args: &Args, k: usize, stop: &Signals) -> Result<Option<f64>> {
    let bar = common::progress_bar(0, format!("IWAE K={k}"));
    let iw = evaluator
        .iw_nll_until(vae, args.train.seed, k, args.train.binarize, |done, total| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
            if stop.raised() {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .map_err(common::sized_by("--eval-iw"))?;
    bar.finish_and_clear();
    Ok(iw)
}

/// The exit code of a run that wrote everything: 0, or that of a signal that came as it
/// finished (honoured, though nothing was left to stop).
fn finished(stop: &Signals) -> i32 {
    stop.exit_code().map_or(0, |code| {
        println!("interrupted as the run finished; everything is written");
        code
    })
}

/// Replaces the last line of `path` (the last epoch's metric line) with `line`.
fn replace_last_line(path: &Path, line: &str) -> Result<()> {
    let text = std::fs::read_to_string(path).map_err(|e| VaeError::io(path, e))?;
    let body = text.trim_end_matches('\n');
    let head = body.rfind('\n').map_or("", |i| &body[..=i]);
    write_replacing(path, format!("{head}{line}\n").as_bytes())
}

/// Loads the newest save of the run in `--resume DIR` after checking that this invocation's
/// settings are the run's own (every recorded key that decides the numbers), and drops metric
/// lines of epochs the save does not hold (a run stopped between the line and the save).
/// Nothing on disk changes unless the run is accepted.
#[allow(clippy::too_many_arguments)]
fn resume_run(
    gpu: &Gpu,
    vae: &Vae,
    trainer: &mut Trainer<'_>,
    args: &Args,
    run_meta: &[(String, String)],
    run_dir: &RunDir,
    metrics: &Path,
) -> Result<()> {
    let pair = run_dir.latest()?.ok_or_else(|| VaeError::NoRun {
        path: run_dir.path().to_path_buf(),
        problem: format!(
            "it holds no saved model and training state (the run stopped before its first save); start it \
             again in that directory with --out {} --overwrite",
            run_dir.path().display()
        ),
    })?;
    if let Some(why) = &pair.recovered {
        eprintln!("note: {}: {why}", run_dir.path().display());
    }
    let (ckpt_path, state_path) = (&pair.checkpoint, &pair.state);
    let (_, recorded) = read_safetensors(ckpt_path)?;
    let get = |k: &str| recorded.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
    // Adapter, driver and the like may change between machines; these decide the numbers.
    let decisive = [
        "dataset",
        "train_examples",
        "image_shape",
        "test_split",
        "preprocessing",
        "layout",
        "batch_size",
        "lr",
        "seed",
        "beta",
        "kl_schedule",
        "lr_schedule",
        "output_bias",
        "mc_samples",
        "objective",
        "iw_k",
        "adam_eps",
        "drop_last",
        "denoise",
        "vq_ema",
        "binarize",
    ];
    // The configurations compared key by key over both files' keys: a key one of them lacks
    // has its default meaning (no `arch` is a dense model).
    let theirs = VaeConfig::from_metadata(&recorded).map_err(|e| VaeError::Checkpoint {
        path: ckpt_path.clone(),
        problem: e.to_string(),
    })?;
    let (mine_cfg, theirs_cfg) = (args.model.to_metadata(), theirs.to_metadata());
    let lookup = |m: &[(String, String)], k: &str| {
        m.iter().find(|(key, _)| key == k).map_or_else(
            || {
                if k == "arch" {
                    "mlp".to_string()
                } else {
                    "none".to_string()
                }
            },
            |(_, v)| v.clone(),
        )
    };
    let mut differ: Vec<String> = Vec::new();
    for (k, _) in mine_cfg.iter().chain(&theirs_cfg) {
        let (r, v) = (lookup(&theirs_cfg, k), lookup(&mine_cfg, k));
        let line = format!("{}: {k} = {r} in the run, {v} now", resume_flag(k));
        if r != v && !differ.contains(&line) {
            differ.push(line);
        }
    }
    differ.extend(
        run_meta
            .iter()
            .filter(|(k, _)| decisive.contains(&k.as_str()))
            .filter_map(|(k, v)| match get(k).or_else(|| recorded_default(k)) {
                Some(r) if r != v => Some(format!("{}: {k} = {r} in the run, {v} now", resume_flag(k))),
                _ => None,
            }),
    );
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
    let batch = get("batch").unwrap_or("0");
    if get("epoch") != Some(trainer.epoch.to_string().as_str()) || batch != trainer.batch.to_string() {
        return Err(VaeError::Checkpoint {
            path: state_path.clone(),
            problem: format!(
                "it is from epoch {} (batch {}) but the checkpoint from epoch {} (batch {batch}); the run \
                 stopped while saving",
                trainer.epoch,
                trainer.batch,
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
    // Keep the metric lines of the epochs the checkpoint holds. A line that is not a metric
    // record is refused (it is not ours to delete), unless it is the last one and cut short,
    // as a crash while it was written leaves it: that epoch was never saved.
    let text = match std::fs::read_to_string(metrics) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(VaeError::io(metrics, e)),
    };
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let mut kept = String::new();
    for (i, raw) in lines.iter().enumerate() {
        let line = raw.trim_end_matches(['\n', '\r']);
        match EpochRecord::from_line(line) {
            Ok(r) if r.epoch <= trainer.epoch => kept.push_str(&format!("{line}\n")),
            Ok(_) => {}
            Err(_) if line.trim().is_empty() => {}
            Err(_) if i + 1 == lines.len() && !raw.ends_with('\n') => {
                eprintln!(
                    "note: {}: its last line was cut short (the run stopped while writing it); dropped",
                    metrics.display()
                );
            }
            Err(e) => {
                return Err(VaeError::format(
                    metrics,
                    format!(
                        "line {} is not a metric record ({e}); repair or remove that line, then resume again",
                        i + 1
                    ),
                ))
            }
        }
    }
    write_replacing(metrics, kept.as_bytes())
}

/// What a run recorded before a key existed meant: the setting's only value then.
fn recorded_default(key: &str) -> Option<&'static str> {
    match key {
        "objective" => Some("elbo"),
        "iw_k" => Some("none"),
        "adam_eps" => Some("0.00000001"),
        "lr_schedule" => Some("constant"),
        "image_shape" => Some("1,28,28"),
        "test_split" => Some("none"),
        "layout" => Some("none"),
        "preprocessing" => Some("none"),
        "output_bias" => Some("default"),
        _ => None,
    }
}

/// The flag that sets a key of the run's record, for --resume's refusals.
fn resume_flag(key: &str) -> &'static str {
    match key {
        "dataset" => "--dataset",
        "image_shape" => "--dataset",
        "test_split" => "--test-split",
        "layout" => "--layout",
        "preprocessing" => "--image-size/--resize/--channels/--strict",
        "train_examples" => "--limit-train",
        "batch_size" => "--batch-size",
        "lr" => "--lr",
        "seed" => "--seed",
        "beta" => "--beta",
        "kl_schedule" => "--kl-warmup/--kl-cycles",
        "mc_samples" => "--mc-samples",
        "objective" => "--objective",
        "iw_k" => "--iw-k",
        "adam_eps" => "--adam-eps",
        "lr_schedule" => "--lr-schedule/--passes",
        "output_bias" => "--output-bias",
        "drop_last" => "--drop-last",
        "denoise" => "--denoise",
        "vq_ema" => "--vq-ema",
        "binarize" => "--binarize",
        "hidden" => "--hidden",
        "activation" => "--activation",
        "latent" => "--latent",
        "likelihood" => "--likelihood/--variance",
        "classes" => "--conditional",
        "code" => "--autoencoder/--l1/--contractive/--vq/--commitment",
        "top" => "--top",
        "arch" => "--arch",
        "conv" => "--conv",
        "input_dim" => "--dataset",
        _ => "the model",
    }
}

/// Replaces `path` with `bytes` atomically: written to `.<name>.tmp` beside it, synced and
/// renamed over it (a temporary name the run directory knows as its own).
fn write_replacing(path: &Path, bytes: &[u8]) -> Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })()
    .map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        VaeError::io(path, e)
    })
}

fn main() {
    let args = match Cli::parse().into_args() {
        Ok(a) => a,
        Err(e) => common::fail(&e, 2),
    };
    match run(args) {
        Ok(code) => std::process::exit(code),
        Err(e) => common::fail(&e, 1),
    }
}
