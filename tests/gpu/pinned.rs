//! Pinned numbers: every member of the model family trained for 2 epochs on 3,000 MNIST images
//! (seed 3), evaluated on 1,100 test images (a partial last batch at every evaluation batch
//! size), must give the metrics and checkpoint tensors that
//! were recorded on this adapter configuration. Refactors of the planner must not move a bit;
//! on another adapter configuration the pins are not checked (the f64-reference tests still run
//! there) and the test says so.

use vae_wgpu::data::DatasetKind;
use vae_wgpu::data::GpuDataset;
use vae_wgpu::gpu::MatmulStrategy;
use vae_wgpu::model::Likelihood;
use vae_wgpu::model::{Code, TopLatent, Vae, VaeConfig};
use vae_wgpu::train::{Evaluator, KlSchedule, TrainConfig, Trainer};
use vae_wgpu::Gpu;

use crate::common::gpu;

/// One family member: its model and training configuration, and the evaluations it reports.
struct Member {
    name: &'static str,
    model: VaeConfig,
    train: TrainConfig,
    binarized: bool,
    eval_iw: Option<usize>,
}

fn members() -> Vec<Member> {
    let base = |name, model: VaeConfig| Member {
        name,
        model,
        train: TrainConfig {
            seed: 3,
            epochs: 2,
            ..Default::default()
        },
        binarized: false,
        eval_iw: None,
    };
    let vae = VaeConfig::default();
    let gauss = |variance| VaeConfig {
        likelihood: variance,
        ..Default::default()
    };
    let ae = |l1, contractive| VaeConfig {
        code: Code::Deterministic { l1, contractive },
        ..Default::default()
    };
    let vq = VaeConfig {
        code: Code::Quantized {
            codes: 64,
            groups: 10,
            commitment: 0.25,
        },
        ..Default::default()
    };
    let top = |t: &[(usize, usize)]| -> Vec<TopLatent> {
        t.iter()
            .map(|&(latent, hidden)| TopLatent {
                latent,
                hidden: vec![hidden],
            })
            .collect()
    };
    let mut m = vec![
        Member {
            eval_iw: Some(20),
            ..base("vae", vae.clone())
        },
        Member {
            eval_iw: Some(20),
            ..base(
                "conditional",
                VaeConfig {
                    classes: 10,
                    ..Default::default()
                },
            )
        },
        base("beta_warmup", vae.clone()),
        base("cyclical", vae.clone()),
        base("gaussian_fixed", gauss(Likelihood::Gaussian { variance: 1.0 })),
        Member {
            eval_iw: Some(5),
            ..base(
                "gaussian_global",
                gauss(Likelihood::GaussianLearned { per_pixel: false }),
            )
        },
        base("gaussian_pixel", gauss(Likelihood::GaussianLearned { per_pixel: true })),
        base("mc_samples", vae.clone()),
        Member {
            eval_iw: Some(5),
            ..base("dynamic_binarization", vae.clone())
        },
        Member {
            binarized: true,
            ..base("binarized_mnist", vae.clone())
        },
        base("sparse_ae", ae(0.01, 0.0)),
        base("contractive_ae", ae(0.0, 0.1)),
        base("denoising_ae", ae(0.0, 0.0)),
        base("denoising_vae", vae.clone()),
        base("vq", vq.clone()),
        base("vq_ema", vq),
        Member {
            eval_iw: Some(10),
            ..base(
                "hierarchical_2",
                VaeConfig {
                    code: Code::Hierarchical(top(&[(10, 200)])),
                    ..Default::default()
                },
            )
        },
        Member {
            eval_iw: Some(10),
            ..base(
                "hierarchical_3",
                VaeConfig {
                    code: Code::Hierarchical(top(&[(16, 200), (8, 100)])),
                    ..Default::default()
                },
            )
        },
        Member {
            eval_iw: Some(10),
            ..base(
                "conditional_hierarchical",
                VaeConfig {
                    classes: 10,
                    code: Code::Hierarchical(top(&[(10, 200)])),
                    ..Default::default()
                },
            )
        },
        base(
            "hidden_512_256",
            VaeConfig {
                hidden: vec![512, 256],
                ..Default::default()
            },
        ),
    ];
    for member in &mut m {
        let t = &mut member.train;
        match member.name {
            "beta_warmup" => {
                t.beta = 4.0;
                t.kl_schedule = KlSchedule::parse(Some(20), None).unwrap();
            }
            "cyclical" => t.kl_schedule = KlSchedule::parse(None, Some(2)).unwrap(),
            "mc_samples" => t.mc_samples = 3,
            "dynamic_binarization" => t.binarize = true,
            "denoising_ae" => t.denoise = 0.3,
            "denoising_vae" => t.denoise = 0.2,
            "vq_ema" => t.vq_ema = Some(0.99),
            _ => {}
        }
    }
    m
}

/// FNV-1a over a tensor's f32 bit patterns: a change in any bit of any value changes it.
fn digest(values: &[f32]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for v in values {
        for byte in v.to_bits().to_le_bytes() {
            h ^= byte as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// The data of a member: (train, test) on the device, or None when binarized MNIST is not on
/// this machine (it is not redistributed with the crate).
fn datasets(g: &Gpu, binarized: bool) -> Option<(GpuDataset, GpuDataset)> {
    let kind = if binarized {
        DatasetKind::BinarizedMnist
    } else {
        DatasetKind::Mnist
    };
    let dir = kind.default_dir();
    let (train, test) = match (kind.load_split(&dir, true), kind.load_split(&dir, false)) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) if binarized => {
            eprintln!("pinned: binarized MNIST not checked ({e})");
            return None;
        }
        (Err(e), _) | (_, Err(e)) => panic!("data/mnist is committed: {e}"),
    };
    let (n_train, n_test, d) = (3000, 1100, 784);
    let labels = |l: &[u32], n: usize| l.get(..n).map(<[u32]>::to_vec).unwrap_or_default();
    let up = |name, images: &[u8], labels: Vec<u32>, n| GpuDataset::upload(g, name, &images[..n * d], n, d, labels);
    Some((
        up("pinned_train", &train.images, labels(&train.labels, n_train), n_train).unwrap(),
        up("pinned_test", &test.images, labels(&test.labels, n_test), n_test).unwrap(),
    ))
}

/// Trains `m` and returns its record: one line per epoch with the deterministic metric columns
/// (6 decimals, as metrics.jsonl writes them), then the model metadata, then each checkpoint
/// tensor's name, shape and digest, then the digests of Adam's moments.
fn run(g: &Gpu, m: &Member) -> Option<Vec<String>> {
    let (train, test) = datasets(g, m.binarized)?;
    let vae = Vae::new(g, m.model.clone(), m.train.seed).unwrap();
    let mut trainer = Trainer::new(g, &vae, train, m.train.clone()).unwrap();
    let eval = Evaluator::new(g, test).unwrap();
    let mut lines = Vec::new();
    for epoch in 1..=m.train.epochs {
        let rep = trainer.train_epoch(|_, _| {}).unwrap();
        let t = eval.elbo(&vae, m.train.seed, m.train.binarize).unwrap();
        let mut line = format!(
            "epoch {epoch} train {:.6} {:.6} {:.6} test {:.6} {:.6} {:.6} beta {:.6} bound_on {}",
            rep.train.loss,
            rep.train.recon,
            rep.train.kl,
            t.loss,
            t.recon,
            t.kl,
            rep.beta,
            m.model.bound_on()
        );
        if epoch == m.train.epochs {
            if !m.model.top().is_empty() {
                let layers = eval.layer_kl(&vae, m.train.seed, m.train.binarize).unwrap();
                let shown: Vec<String> = layers.iter().map(|k| format!("{k:.6}")).collect();
                line.push_str(&format!(" layer_kl {}", shown.join(",")));
            }
            if let Some(k) = m.eval_iw {
                let iw = eval.iw_nll(&vae, m.train.seed, k, m.train.binarize, |_, _| {}).unwrap();
                line.push_str(&format!(" iw_nll {iw:.6} k {k}"));
            }
        }
        lines.push(line);
    }
    let meta: Vec<String> = m.model.to_metadata().iter().map(|(k, v)| format!("{k}={v}")).collect();
    lines.push(format!("metadata {}", meta.join(" ")));
    for t in vae.checkpoint_tensors(g).unwrap() {
        lines.push(format!("tensor {} {:?} {:016x}", t.name, t.shape, digest(&t.data)));
    }
    let a = &vae.arena;
    let (mv, vv) = (g.read(&a.m).unwrap(), g.read(&a.v).unwrap());
    lines.push(format!("adam {:016x} {:016x}", digest(&mv), digest(&vv)));
    Some(lines)
}

/// The adapter configuration the pins were recorded on: adapter name, subgroup size, matmul
/// strategy, texture-mirror policy, and (for a CPU adapter, whose kernels the CPU runs) the
/// CPU features that change the code lavapipe generates.
fn adapter_key(g: &Gpu) -> String {
    let r = g.report();
    let vae = Vae::new(g, VaeConfig::default(), 1).unwrap();
    let strategy = MatmulStrategy::preferred(g).unwrap();
    let mut key = format!(
        "{} | subgroup {} | {strategy:?} | mirrors {:?}",
        r.name,
        r.subgroup_min_size,
        vae.texture_mirrors()
    );
    if r.device_type == vae_wgpu::wgpu::DeviceType::Cpu {
        let cpu = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let flags = cpu.lines().find(|l| l.starts_with("flags")).unwrap_or("");
        let has = |f: &str| flags.split_whitespace().any(|x| x == f);
        let feats: Vec<&str> = ["avx2", "fma", "avx512f"].into_iter().filter(|f| has(f)).collect();
        key.push_str(&format!(" | cpu {}", feats.join(",")));
    }
    key
}

/// The adapter configuration [`PINS`] were recorded on.
const PINNED_ON: &str =
    "llvmpipe (LLVM 15.0.6, 256 bits) | subgroup 8 | Subgroup | mirrors Auto | cpu avx2,fma,avx512f";

/// Recorded records, member by member (see [`run`]).
const PINS: &[(&str, &[&str])] = &[
    (
        "vae",
        &[
            "epoch 1 train 327.554448 314.970105 12.584344 test 226.101915 218.963226 7.138689 beta 1.000000 bound_on -log p(x)",
            "epoch 2 train 217.691562 211.099017 6.592545 test 207.319144 202.219950 5.099194 beta 1.000000 bound_on -log p(x) iw_nll 199.713994 k 20",
            "metadata input_dim=784 hidden=400 latent=20 activation=relu likelihood=bernoulli classes=0 code=gaussian top=none",
            "tensor fc1.weight [400, 784] b5242f4baf00fafc",
            "tensor fc1.bias [400] 5caedccfaa4ec5e3",
            "tensor fc21.weight [20, 400] 0abf9c2c432d98a3",
            "tensor fc21.bias [20] c42a77b63c4c0df7",
            "tensor fc22.weight [20, 400] 444dba895d0722b3",
            "tensor fc22.bias [20] dff1b5e22893e1f6",
            "tensor fc3.weight [400, 20] 578febbf888fb5c9",
            "tensor fc3.bias [400] 81a69411f40d9eff",
            "tensor fc4.weight [784, 400] 5a75df3f6b5ca345",
            "tensor fc4.bias [784] c730d42b9de933d8",
            "adam 930d136532b1b3df 31665d7cc0a97ba2",
        ],
    ),
    (
        "conditional",
        &[
            "epoch 1 train 336.641080 321.438762 15.202318 test 226.975629 217.954561 9.021067 beta 1.000000 bound_on -log p(x|y)",
            "epoch 2 train 216.266667 208.792055 7.474612 test 205.089962 199.471120 5.618842 beta 1.000000 bound_on -log p(x|y) iw_nll 197.619405 k 20",
            "metadata input_dim=784 hidden=400 latent=20 activation=relu likelihood=bernoulli classes=10 code=gaussian top=none",
            "tensor fc1.weight [400, 796] 8db2e736e7f563dc",
            "tensor fc1.bias [400] 59ce2c8c617c36ae",
            "tensor fc21.weight [20, 400] dcb59fef612cde4a",
            "tensor fc21.bias [20] 168fa5d6413e5b3e",
            "tensor fc22.weight [20, 400] 704051a09f172788",
            "tensor fc22.bias [20] d05493c2159ff103",
            "tensor fc3.weight [400, 32] 1834d79cea2ab51b",
            "tensor fc3.bias [400] 4cef15953083e3a3",
            "tensor fc4.weight [784, 400] 965384fc3d23178e",
            "tensor fc4.bias [784] b4afdac61f6b2b16",
            "adam 9b5adde3bfa54694 7841442aaf8d0ea9",
        ],
    ),
    (
        "beta_warmup",
        &[
            "epoch 1 train 327.797495 319.280479 8.517017 test 229.567166 227.244094 2.323072 beta 4.000000 bound_on -log p(x)",
            "epoch 2 train 219.424764 217.427195 1.997569 test 209.412204 208.064851 1.347353 beta 4.000000 bound_on -log p(x)",
            "metadata input_dim=784 hidden=400 latent=20 activation=relu likelihood=bernoulli classes=0 code=gaussian top=none",
            "tensor fc1.weight [400, 784] 871fe78f688b5904",
            "tensor fc1.bias [400] 51e4390ed61f0160",
            "tensor fc21.weight [20, 400] 503c287556dd7e20",
            "tensor fc21.bias [20] d91adc10cb0cdee3",
            "tensor fc22.weight [20, 400] 4fa0458f7b36c2a1",
            "tensor fc22.bias [20] b286f1d984e4692c",
            "tensor fc3.weight [400, 20] aa39ea1d3967f769",
            "tensor fc3.bias [400] c500fbcd1e38b8ce",
            "tensor fc4.weight [784, 400] cc08ab5eebe2ab74",
            "tensor fc4.bias [784] d186778f1d2a657e",
            "adam 8a1aaba3aa064686 51765e2dccdb07ff",
        ],
    ),
    (
        "cyclical",
        &[
            "epoch 1 train 329.755940 314.377633 15.378306 test 229.639237 223.566183 6.073054 beta 1.000000 bound_on -log p(x)",
            "epoch 2 train 220.621885 212.121438 8.500447 test 208.581868 203.240446 5.341422 beta 1.000000 bound_on -log p(x)",
            "metadata input_dim=784 hidden=400 latent=20 activation=relu likelihood=bernoulli classes=0 code=gaussian top=none",
            "tensor fc1.weight [400, 784] cc95a662496525fa",
            "tensor fc1.bias [400] c4ae597584b00df0",
            "tensor fc21.weight [20, 400] e9027603d0ec7547",
            "tensor fc21.bias [20] 4bafd94d3844ad24",
            "tensor fc22.weight [20, 400] ea0f03c6779c9b58",
            "tensor fc22.bias [20] 4d6ef79a8477872b",
            "tensor fc3.weight [400, 20] 02481f6ba839c07c",
            "tensor fc3.bias [400] 71bbb8a2ef3df830",
            "tensor fc4.weight [784, 400] e0eb3576a7395671",
            "tensor fc4.bias [784] 3e7623025542ae61",
            "adam 90da3b644ef2ef7f 2f2f0a068bfe9500",
        ],
    ),
    (
        "gaussian_fixed",
        &[
            "epoch 1 train 758.018016 755.968302 2.049714 test 751.080988 749.503786 1.577203 beta 1.000000 bound_on -log p(x)",
            "epoch 2 train 749.628150 748.720367 0.907783 test 747.604474 746.484162 1.120312 beta 1.000000 bound_on -log p(x)",
            "metadata input_dim=784 hidden=400 latent=20 activation=relu likelihood=gaussian:1 classes=0 code=gaussian top=none",
            "tensor fc1.weight [400, 784] 3b54dea23c3b149e",
            "tensor fc1.bias [400] 31d1d383cea5b556",
            "tensor fc21.weight [20, 400] 3e8a05cf723e9521",
            "tensor fc21.bias [20] 80545f05958b063f",
            "tensor fc22.weight [20, 400] 4f8a1e32d9d2eb69",
            "tensor fc22.bias [20] 03b8bdffb57a8516",
            "tensor fc3.weight [400, 20] 3e29d79e0b5759f4",
            "tensor fc3.bias [400] c15a605cb3d1d0db",
            "tensor fc4.weight [784, 400] 10906142f2da94b7",
            "tensor fc4.bias [784] 8e08fb271a97e4b5",
            "adam 456b36470aea1479 9a48a0376cfe21fe",
        ],
    ),
    (
        "gaussian_global",
        &[
            "epoch 1 train 753.951937 751.883888 2.068049 test 742.329568 740.725888 1.603680 beta 1.000000 bound_on -log p(x)",
            "epoch 2 train 736.780071 735.818901 0.961170 test 729.991999 728.742557 1.249442 beta 1.000000 bound_on -log p(x) iw_nll 729.141445 k 5",
            "metadata input_dim=784 hidden=400 latent=20 activation=relu likelihood=gaussian:learned-global classes=0 code=gaussian top=none",
            "tensor fc1.weight [400, 784] a5707136d72ccd46",
            "tensor fc1.bias [400] 8e3eb255bdb63aed",
            "tensor fc21.weight [20, 400] 271581eeed0b462d",
            "tensor fc21.bias [20] bb73506895f664ef",
            "tensor fc22.weight [20, 400] 5c3d4a2ea893b748",
            "tensor fc22.bias [20] f891844a4abe8e48",
            "tensor fc3.weight [400, 20] 56ef2b62d0712da4",
            "tensor fc3.bias [400] 1dc09c3dbbcb37a0",
            "tensor fc4.weight [784, 400] 46b73f53fc6f4a1d",
            "tensor fc4.bias [784] 48260e8d1e99c067",
            "tensor log_c [1] e93b3ed4d9e7ede7",
            "adam 1b57494261ddec5c 80c66fac8ce8372f",
        ],
    ),
    (
        "gaussian_pixel",
        &[
            "epoch 1 train 753.958430 751.890564 2.067866 test 742.339926 740.737557 1.602369 beta 1.000000 bound_on -log p(x)",
            "epoch 2 train 736.793284 735.833682 0.959602 test 730.008561 728.757003 1.251558 beta 1.000000 bound_on -log p(x)",
            "metadata input_dim=784 hidden=400 latent=20 activation=relu likelihood=gaussian:learned-pixel classes=0 code=gaussian top=none",
            "tensor fc1.weight [400, 784] 3b83689a8168472a",
            "tensor fc1.bias [400] 98c91299fa359c9f",
            "tensor fc21.weight [20, 400] 6e3ed5d0aa6d499c",
            "tensor fc21.bias [20] 2507a6c824c2ba10",
            "tensor fc22.weight [20, 400] 9d0d3622f0fa631c",
            "tensor fc22.bias [20] 561b86c96c8da4bb",
            "tensor fc3.weight [400, 20] 8e0aaecf4969e94e",
            "tensor fc3.bias [400] b1a3807d8ad1a595",
            "tensor fc4.weight [784, 400] 0e2d71e04b6c2f45",
            "tensor fc4.bias [784] 112e4bcf94e07366",
            "tensor log_c [784] c8758e097f630cb3",
            "adam e987a49b2703b88f 01ec57410cb05579",
        ],
    ),
    (
        "mc_samples",
        &[
            "epoch 1 train 326.275447 313.515083 12.760364 test 224.860329 216.997628 7.862701 beta 1.000000 bound_on -log p(x)",
            "epoch 2 train 217.020243 210.553280 6.466964 test 207.095384 202.246424 4.848960 beta 1.000000 bound_on -log p(x)",
            "metadata input_dim=784 hidden=400 latent=20 activation=relu likelihood=bernoulli classes=0 code=gaussian top=none",
            "tensor fc1.weight [400, 784] 74a0bdaaef6c6e8c",
            "tensor fc1.bias [400] 7afa6aa45ff07961",
            "tensor fc21.weight [20, 400] 4ecbd5d999f5cd7d",
            "tensor fc21.bias [20] 6873815ccd0cae62",
            "tensor fc22.weight [20, 400] 4430fdc41717ac48",
            "tensor fc22.bias [20] b00266ca7beb4e8d",
            "tensor fc3.weight [400, 20] ae6251596461d198",
            "tensor fc3.bias [400] a6dcd1f43276ba67",
            "tensor fc4.weight [784, 400] f07819789d441c82",
            "tensor fc4.bias [784] 625fd2f747d6d543",
            "adam a9cec18f2b1cb374 93c5899040c8722e",
        ],
    ),
    (
        "dynamic_binarization",
        &[
            "epoch 1 train 327.746092 315.235671 12.510421 test 226.550427 219.834634 6.715793 beta 1.000000 bound_on -log p(x)",
            "epoch 2 train 217.926936 211.388028 6.538908 test 207.498255 202.348629 5.149626 beta 1.000000 bound_on -log p(x) iw_nll 201.675170 k 5",
            "metadata input_dim=784 hidden=400 latent=20 activation=relu likelihood=bernoulli classes=0 code=gaussian top=none",
            "tensor fc1.weight [400, 784] 7f1a636befb8c12c",
            "tensor fc1.bias [400] 6614550fa9d34a93",
            "tensor fc21.weight [20, 400] a81b0629b4185aae",
            "tensor fc21.bias [20] 24962fe781d09454",
            "tensor fc22.weight [20, 400] 31ad288714ddffd1",
            "tensor fc22.bias [20] 551133cc7184d83c",
            "tensor fc3.weight [400, 20] 741f9283fba164c4",
            "tensor fc3.bias [400] e5325de09dc8dd64",
            "tensor fc4.weight [784, 400] b8f77ec6bf2b1b11",
            "tensor fc4.bias [784] e35e606bfa320ca3",
            "adam 9a7e8c121c5e78d4 c349d2d638245273",
        ],
    ),
    (
        "binarized_mnist",
        &[
            "epoch 1 train 327.875227 315.277563 12.597664 test 260.459738 255.974519 4.485219 beta 1.000000 bound_on -log p(x)",
            "epoch 2 train 218.626783 211.966510 6.660272 test 251.376658 247.954680 3.421979 beta 1.000000 bound_on -log p(x)",
            "metadata input_dim=784 hidden=400 latent=20 activation=relu likelihood=bernoulli classes=0 code=gaussian top=none",
            "tensor fc1.weight [400, 784] bf4d176b144ba49a",
            "tensor fc1.bias [400] 1f5dcbc555f5f868",
            "tensor fc21.weight [20, 400] 4000f26748ca85d0",
            "tensor fc21.bias [20] 80b0d4d08ef25be5",
            "tensor fc22.weight [20, 400] 55a8bffa3dcb1ea8",
            "tensor fc22.bias [20] 99e3aaf0ed9d6143",
            "tensor fc3.weight [400, 20] 5796c3fa69cd6490",
            "tensor fc3.bias [400] 255c97643c315ba1",
            "tensor fc4.weight [784, 400] 71cd197209198aa2",
            "tensor fc4.bias [784] 4d4e76ad7d92333f",
            "adam ba8be548156ee22e 3cf8ac2489fa99e3",
        ],
    ),
    (
        "sparse_ae",
        &[
            "epoch 1 train 325.518096 325.082422 0.435674 test 219.160413 218.638058 0.522356 beta 1.000000 bound_on none (autoencoder)",
            "epoch 2 train 208.931873 208.435040 0.496832 test 196.189544 195.747248 0.442296 beta 1.000000 bound_on none (autoencoder)",
            "metadata input_dim=784 hidden=400 latent=20 activation=relu likelihood=bernoulli classes=0 code=deterministic:0.01 top=none",
            "tensor fc1.weight [400, 784] 4ab2608a68b906a9",
            "tensor fc1.bias [400] 783cecc2386d5a91",
            "tensor fc2.weight [20, 400] 92f73d7435db5895",
            "tensor fc2.bias [20] 012f96381fb833b3",
            "tensor fc3.weight [400, 20] 6a98cf0c10fb6b17",
            "tensor fc3.bias [400] 4ecbc93cce9bdd09",
            "tensor fc4.weight [784, 400] ce01dd508abce21e",
            "tensor fc4.bias [784] 3e555ffb8aa7182e",
            "adam eac6b08dfefd40a2 0c66252b2c4037cf",
        ],
    ),
    (
        "contractive_ae",
        &[
            "epoch 1 train 325.507420 324.881723 0.625696 test 219.273797 218.542379 0.731418 beta 1.000000 bound_on none (autoencoder)",
            "epoch 2 train 209.206011 208.449576 0.756436 test 197.006682 196.028398 0.978284 beta 1.000000 bound_on none (autoencoder)",
            "metadata input_dim=784 hidden=400 latent=20 activation=relu likelihood=bernoulli classes=0 code=deterministic:0:0.1 top=none",
            "tensor fc1.weight [400, 784] 285d60f62243e9b0",
            "tensor fc1.bias [400] 6f5da6755ec655c1",
            "tensor fc2.weight [20, 400] 867ba3fa34fad9ec",
            "tensor fc2.bias [20] b54a67ffebc9e0cf",
            "tensor fc3.weight [400, 20] e9113405e085ba56",
            "tensor fc3.bias [400] 8d15cf8fe5aa99c7",
            "tensor fc4.weight [784, 400] 7205ef21abf36786",
            "tensor fc4.bias [784] 24eb6c2dd4c6cea5",
            "adam a522c31225d61898 f27983b8125c7c68",
        ],
    ),
    (
        "denoising_ae",
        &[
            "epoch 1 train 334.843333 334.843333 0.000000 test 223.606488 223.606488 0.000000 beta 1.000000 bound_on none (autoencoder)",
            "epoch 2 train 211.760234 211.760234 0.000000 test 201.127638 201.127638 0.000000 beta 1.000000 bound_on none (autoencoder)",
            "metadata input_dim=784 hidden=400 latent=20 activation=relu likelihood=bernoulli classes=0 code=deterministic:0 top=none",
            "tensor fc1.weight [400, 784] 982c67af0f80d298",
            "tensor fc1.bias [400] 135b5d1f839df4f8",
            "tensor fc2.weight [20, 400] 72532d3d7514dbd2",
            "tensor fc2.bias [20] 937b5c1817215f5b",
            "tensor fc3.weight [400, 20] 2757ea0365a60ba4",
            "tensor fc3.bias [400] bbae8e5190c6790c",
            "tensor fc4.weight [784, 400] 32d8d752dc32c538",
            "tensor fc4.bias [784] a70309b82421092c",
            "adam 9968c2d0c610bcd5 797763120f7904a6",
        ],
    ),
    (
        "denoising_vae",
        &[
            "epoch 1 train 329.357354 318.244709 11.112645 test 226.921731 218.779737 8.141994 beta 1.000000 bound_on -log p(x)",
            "epoch 2 train 218.289136 212.274426 6.014709 test 208.837195 201.715737 7.121459 beta 1.000000 bound_on -log p(x)",
            "metadata input_dim=784 hidden=400 latent=20 activation=relu likelihood=bernoulli classes=0 code=gaussian top=none",
            "tensor fc1.weight [400, 784] 981799bb30bf4eed",
            "tensor fc1.bias [400] c5d7d86d680cc04a",
            "tensor fc21.weight [20, 400] 7c53f426fbb906af",
            "tensor fc21.bias [20] 6ca516860bffedf5",
            "tensor fc22.weight [20, 400] 7a5e15e58c82900d",
            "tensor fc22.bias [20] f415c2fb755cbca7",
            "tensor fc3.weight [400, 20] 05af3bb9dabcd48c",
            "tensor fc3.bias [400] b35987b60fd45e1d",
            "tensor fc4.weight [784, 400] 34329c1f0b361493",
            "tensor fc4.bias [784] 9802ccee98955ce3",
            "adam c44a02b0e3ffd722 52659463989cf600",
        ],
    ),
    (
        "vq",
        &[
            "epoch 1 train 448.120032 351.996733 96.123299 test 244.368459 221.898903 22.469557 beta 1.000000 bound_on none (VQ-VAE)",
            "epoch 2 train 223.906851 210.324471 13.582379 test 209.510959 199.757404 9.753554 beta 1.000000 bound_on none (VQ-VAE)",
            "metadata input_dim=784 hidden=400 latent=20 activation=relu likelihood=bernoulli classes=0 code=quantized:64:10:0.25 top=none",
            "tensor fc1.weight [400, 784] 023b40ac783fee85",
            "tensor fc1.bias [400] 5b9fe7b407adf51e",
            "tensor fc2.weight [20, 400] 57b94e6e4bb86441",
            "tensor fc2.bias [20] cc52c98fead13612",
            "tensor fc3.weight [400, 20] c881f412af4563d2",
            "tensor fc3.bias [400] 15e2fcd698038e1b",
            "tensor fc4.weight [784, 400] a73237831ec252a9",
            "tensor fc4.bias [784] 1e60e86a3a5f236d",
            "tensor codebook [64, 2] c4252748dc423ee3",
            "adam 2609b45a480485a9 472292bfb4427d3e",
        ],
    ),
    (
        "vq_ema",
        &[
            "epoch 1 train 394.780306 332.882480 61.897825 test 229.502634 214.252164 15.250470 beta 1.000000 bound_on none (VQ-VAE)",
            "epoch 2 train 218.977191 206.223929 12.753262 test 205.178265 195.175078 10.003187 beta 1.000000 bound_on none (VQ-VAE)",
            "metadata input_dim=784 hidden=400 latent=20 activation=relu likelihood=bernoulli classes=0 code=quantized:64:10:0.25 top=none",
            "tensor fc1.weight [400, 784] 69c0e82fec1ab54c",
            "tensor fc1.bias [400] 018b4b4d59ad28fa",
            "tensor fc2.weight [20, 400] 419ee11acbbb6234",
            "tensor fc2.bias [20] 9d78a780856ccd33",
            "tensor fc3.weight [400, 20] 4d7e910febb31a91",
            "tensor fc3.bias [400] 6289832a929f0fe3",
            "tensor fc4.weight [784, 400] a31ec1a57ac03c03",
            "tensor fc4.bias [784] 7fb56f19d8b983fa",
            "tensor codebook [64, 2] 9f5457e8b5a95358",
            "adam 7fa45d9a5673a36c 677567ba969c181a",
        ],
    ),
    (
        "hierarchical_2",
        &[
            "epoch 1 train 321.508762 313.845159 7.663603 test 219.492041 216.075302 3.416739 beta 1.000000 bound_on -log p(x)",
            "epoch 2 train 211.377354 208.687132 2.690222 test 202.098063 199.692024 2.406039 beta 1.000000 bound_on -log p(x) layer_kl 2.089164,0.316875 iw_nll 195.152547 k 10",
            "metadata input_dim=784 hidden=400 latent=20 activation=relu likelihood=bernoulli classes=0 code=gaussian top=10:200",
            "tensor fc1.weight [400, 784] 2731700f059a82be",
            "tensor fc1.bias [400] 71a3338b3cd0a348",
            "tensor fc21.weight [20, 400] 92dcf3f36b48dba7",
            "tensor fc21.bias [20] dbf63edc626754c5",
            "tensor fc22.weight [20, 400] 141e37470ff919b1",
            "tensor fc22.bias [20] 82a6a7f8b120dfb1",
            "tensor fc3.weight [400, 20] 0ece00fe56d1e1ca",
            "tensor fc3.bias [400] 4957c6b3ba030fed",
            "tensor fc4.weight [784, 400] d89c6486bd4c3e87",
            "tensor fc4.bias [784] 827c896354d21cb2",
            "tensor q_z2.0.weight [200, 20] 7cb3f66ed934c0c9",
            "tensor q_z2.0.bias [200] fc3f252eed604990",
            "tensor q_z2.mu.weight [10, 200] f62530d052c82020",
            "tensor q_z2.mu.bias [10] 39de825e336244d7",
            "tensor q_z2.logvar.weight [10, 200] 71eebc72cbea8769",
            "tensor q_z2.logvar.bias [10] 4427e0888df8ece5",
            "tensor p_z1.0.weight [200, 12] 0dd6546c487fb00a",
            "tensor p_z1.0.bias [200] 63506a61c3ace455",
            "tensor p_z1.mu.weight [20, 200] 7ce276e5068184ab",
            "tensor p_z1.mu.bias [20] a63dcbded454f2ee",
            "tensor p_z1.logvar.weight [20, 200] 1b206400e8699cb0",
            "tensor p_z1.logvar.bias [20] 5d27a207c80dcf32",
            "adam 95e0e5b2866067de 00f382c0537fd276",
        ],
    ),
    (
        "hierarchical_3",
        &[
            "epoch 1 train 322.151907 314.078001 8.073906 test 219.081283 215.781012 3.300271 beta 1.000000 bound_on -log p(x)",
            "epoch 2 train 211.661792 208.586383 3.075409 test 201.969111 199.224865 2.744246 beta 1.000000 bound_on -log p(x) layer_kl 2.028868,0.538227,0.177151 iw_nll 194.995186 k 10",
            "metadata input_dim=784 hidden=400 latent=20 activation=relu likelihood=bernoulli classes=0 code=gaussian top=16:200,8:100",
            "tensor fc1.weight [400, 784] 1235773998568757",
            "tensor fc1.bias [400] 60ebe7bd608b0dd0",
            "tensor fc21.weight [20, 400] bb049dceca993a6c",
            "tensor fc21.bias [20] ea3af2f74ed2e6d3",
            "tensor fc22.weight [20, 400] c8fbf47b6126b255",
            "tensor fc22.bias [20] 5f5f8dd3de9ed250",
            "tensor fc3.weight [400, 20] 63b810c1fbbc8f03",
            "tensor fc3.bias [400] 89233860921dc08f",
            "tensor fc4.weight [784, 400] 37955937968d8d31",
            "tensor fc4.bias [784] 0449346ca6a258d1",
            "tensor q_z2.0.weight [200, 20] d09137c236eca8f0",
            "tensor q_z2.0.bias [200] 4e0462d6030d8c4b",
            "tensor q_z2.mu.weight [16, 200] af16d727b83c186c",
            "tensor q_z2.mu.bias [16] be0b9818c38d86c7",
            "tensor q_z2.logvar.weight [16, 200] dc8bf12a705a89d5",
            "tensor q_z2.logvar.bias [16] 193c4e20cf8fb5a2",
            "tensor p_z1.0.weight [200, 16] f682902a9d870d1a",
            "tensor p_z1.0.bias [200] a796ed896464c79f",
            "tensor p_z1.mu.weight [20, 200] d3d8a5dc27d88000",
            "tensor p_z1.mu.bias [20] 3fb7b205c8fa67b2",
            "tensor p_z1.logvar.weight [20, 200] 7036cb459ae07a6f",
            "tensor p_z1.logvar.bias [20] 0c5eab8c74fb9dbb",
            "tensor q_z3.0.weight [100, 16] 28cf8a4b3d807753",
            "tensor q_z3.0.bias [100] a8814a48c1d606d7",
            "tensor q_z3.mu.weight [8, 100] e66a6d0c0c49c36e",
            "tensor q_z3.mu.bias [8] d0669f429bffb1e3",
            "tensor q_z3.logvar.weight [8, 100] 2a4ebb678770358c",
            "tensor q_z3.logvar.bias [8] 4e60a9d8442fb827",
            "tensor p_z2.0.weight [100, 8] 7009bb93c44ed466",
            "tensor p_z2.0.bias [100] 30d2bfad0d2af91e",
            "tensor p_z2.mu.weight [16, 100] db562b15fd68a4a7",
            "tensor p_z2.mu.bias [16] 15ab73ed9465c97a",
            "tensor p_z2.logvar.weight [16, 100] 63c5beae337f42e4",
            "tensor p_z2.logvar.bias [16] 51d4c52ee9821060",
            "adam 39f3fbeccaeb587d 56399e58859f61ff",
        ],
    ),
    (
        "conditional_hierarchical",
        &[
            "epoch 1 train 329.897063 319.838312 10.058752 test 219.669910 215.419743 4.250167 beta 1.000000 bound_on -log p(x|y)",
            "epoch 2 train 210.195269 207.046075 3.149194 test 200.221905 197.872507 2.349398 beta 1.000000 bound_on -log p(x|y) layer_kl 2.122601,0.226797 iw_nll 193.543758 k 10",
            "metadata input_dim=784 hidden=400 latent=20 activation=relu likelihood=bernoulli classes=10 code=gaussian top=10:200",
            "tensor fc1.weight [400, 796] e7115b5ede1a5a20",
            "tensor fc1.bias [400] f3f4510a82160e4d",
            "tensor fc21.weight [20, 400] 28658ea07f4eb795",
            "tensor fc21.bias [20] cd0ca95843628661",
            "tensor fc22.weight [20, 400] 47440e16b6d8f86c",
            "tensor fc22.bias [20] 43c10af2edef15a1",
            "tensor fc3.weight [400, 32] 58102012bd485352",
            "tensor fc3.bias [400] 569dca1a3f32fcc5",
            "tensor fc4.weight [784, 400] fc928996b4b3023d",
            "tensor fc4.bias [784] 831fd46628a118bb",
            "tensor q_z2.0.weight [200, 32] 440738de8d2c0603",
            "tensor q_z2.0.bias [200] 282bfb2fab9fc1d4",
            "tensor q_z2.mu.weight [10, 200] 84729137ead5337f",
            "tensor q_z2.mu.bias [10] 27994035ba2afdc9",
            "tensor q_z2.logvar.weight [10, 200] 212dae6640caad1c",
            "tensor q_z2.logvar.bias [10] 93c83c13622351a8",
            "tensor p_z1.0.weight [200, 20] 45195abf0f0d9d4e",
            "tensor p_z1.0.bias [200] 8a56fe45dd2bc70b",
            "tensor p_z1.mu.weight [20, 200] 93f92dc752f060a2",
            "tensor p_z1.mu.bias [20] ec5f845643dd4679",
            "tensor p_z1.logvar.weight [20, 200] 30d806087eefbdf4",
            "tensor p_z1.logvar.bias [20] 7076a9d173646fce",
            "adam 88a6d13de0ec6bbe 4b173f0e1688ad3f",
        ],
    ),
    (
        "hidden_512_256",
        &[
            "epoch 1 train 302.529362 298.059019 4.470343 test 206.699435 206.580815 0.118620 beta 1.000000 bound_on -log p(x)",
            "epoch 2 train 208.008929 207.763362 0.245567 test 200.799252 199.671687 1.127565 beta 1.000000 bound_on -log p(x)",
            "metadata input_dim=784 hidden=512,256 latent=20 activation=relu likelihood=bernoulli classes=0 code=gaussian top=none",
            "tensor enc0.weight [512, 784] db22f450adb7f7f4",
            "tensor enc0.bias [512] c5f52842337be529",
            "tensor enc1.weight [256, 512] e680b956e65ea4a1",
            "tensor enc1.bias [256] 561ed0abdcabeb45",
            "tensor mu.weight [20, 256] 12cd455fa48283e1",
            "tensor mu.bias [20] a73bb9147d2c3bcb",
            "tensor logvar.weight [20, 256] 6e6dd3b73a73a029",
            "tensor logvar.bias [20] 1acd5c20e07e17ad",
            "tensor dec0.weight [256, 20] 2713bb82ed86bfa7",
            "tensor dec0.bias [256] d5a1c82376ed051d",
            "tensor dec1.weight [512, 256] 48d9a86b77453588",
            "tensor dec1.bias [512] b4790ba8014764c0",
            "tensor out.weight [784, 512] e6779aa367ff6d17",
            "tensor out.bias [784] 8dec05b9a4a1a8d5",
            "adam 340533f002c32261 dafd4a27b9c2147f",
        ],
    ),
];

#[test]
fn every_family_member_gives_its_pinned_numbers() {
    let g = gpu();
    let key = adapter_key(g);
    let record = std::env::var("VAE_WGPU_RECORD_PINS").is_ok();
    let check = key == PINNED_ON;
    if !check && !record {
        eprintln!(
            "pinned numbers NOT checked: they were recorded on [{PINNED_ON}], this is [{key}] \
             (set VAE_WGPU_RECORD_PINS=1 to print this adapter's records)"
        );
        return;
    }
    let mut failures = Vec::new();
    for m in members() {
        let Some(got) = run(g, &m) else { continue };
        if record {
            println!("    (\n        \"{}\",\n        &[", m.name);
            for l in &got {
                println!("            \"{l}\",");
            }
            println!("        ],\n    ),");
            continue;
        }
        let want = PINS
            .iter()
            .find(|(n, _)| *n == m.name)
            .map(|(_, l)| l.to_vec())
            .unwrap_or_default();
        if got != want {
            let mut diff: Vec<String> = got
                .iter()
                .zip(want.iter().chain(std::iter::repeat(&"(missing)")))
                .filter(|(a, b)| a != b)
                .map(|(a, b)| format!("  got  {a}\n  want {b}"))
                .collect();
            if got.len() != want.len() {
                diff.push(format!("  {} lines, {} pinned", got.len(), want.len()));
            }
            failures.push(format!("{}:\n{}", m.name, diff.join("\n")));
        }
    }
    if record {
        println!("adapter key: {key}");
    }
    assert!(failures.is_empty(), "pinned numbers moved:\n{}", failures.join("\n"));
}
