//! End-to-end: training on real MNIST lowers the loss, is reproducible, keeps its step
//! structure, and checkpoints read back with an independent reader.

use vae_wgpu::data::DatasetKind;
use vae_wgpu::data::GpuDataset;
use vae_wgpu::explore::hierarchy_figure;
use vae_wgpu::infer::{prior_latents, prior_samples};
use vae_wgpu::model::{Arch, Code, ConvArch, TextureMirrors, TopLatent, Vae, VaeConfig};
use vae_wgpu::train::{Evaluator, KlSchedule, TrainConfig, Trainer};
use vae_wgpu::{rng, Gpu, VaeError};

use crate::common::{gpu, RawCheckpoint};
use crate::reference;

fn mnist_subset(g: &Gpu, n: usize) -> GpuDataset {
    let set = DatasetKind::Mnist
        .load_split(&DatasetKind::Mnist.default_dir(), true)
        .expect("data/mnist is committed");
    GpuDataset::upload(g, "train", &set.images[..n * 784], n, 784, set.labels[..n].to_vec()).unwrap()
}

fn small_config() -> VaeConfig {
    VaeConfig {
        hidden: vec![64],
        latent: 8,
        ..Default::default()
    }
}

fn train_epochs(g: &Gpu, epochs: usize, seed: u64) -> (Vec<f64>, Vec<f32>) {
    let vae = Vae::new(g, small_config(), seed).unwrap();
    let cfg = TrainConfig {
        batch_size: 64,
        seed,
        ..Default::default()
    };
    // 300 images: 4 full batches and a partial one of 44.
    let mut tr = Trainer::new(g, &vae, mnist_subset(g, 300), cfg).unwrap();
    let losses = (0..epochs)
        .map(|_| tr.train_epoch(|_, _| {}).unwrap().train.loss)
        .collect();
    (losses, g.read(&vae.arena.params).unwrap())
}

#[test]
fn training_lowers_the_loss_and_is_reproducible() {
    let g = gpu();
    let (a, pa) = train_epochs(g, 6, 3);
    // From ~545 nats (random decoder) the loss must fall well below; 6 epochs of 300 images
    // reach about 200.
    assert!(a[0] > a[5] + 100.0, "loss did not fall: {a:?}");
    assert!(
        a.windows(2).all(|w| w[1] < w[0]),
        "loss not monotone over early epochs: {a:?}"
    );
    let (b, pb) = train_epochs(g, 6, 3);
    assert_eq!(a, b, "same seed, same adapter: metrics must be identical");
    assert!(pa == pb, "same seed, same adapter: parameters must be bit-identical");
    let (c, _) = train_epochs(g, 1, 4);
    assert_ne!(a[0], c[0], "another seed gives other numbers");
}

#[test]
fn a_step_is_one_submit_and_no_readback() {
    // A private device so that other tests' traffic does not move the counters.
    let g = Gpu::new(vae_wgpu::GpuOptions::from_env().expect("the environment's GPU settings"))
        .expect("GPU tests need an adapter");
    let vae = Vae::new(&g, VaeConfig::default(), 1).unwrap();
    let mut tr = Trainer::new(&g, &vae, mnist_subset(&g, 256), TrainConfig::default()).unwrap();
    // 784-400-20-400-784: gather, 2+1 encoder/reparam, 2 decoder, loss, 2+2 decoder backward,
    // reparam backward, 2+1 encoder backward, metrics, adam.
    let per_step = 17;
    assert_eq!(tr.dispatches_per_step() as u64, per_step);
    // With texture mirrors (the subgroup matmul's default): copies of the input, the two
    // hidden activations, the output gradient and the two hidden gradients, and of the two
    // large weights after Adam; each copy run splits the pass, so 7 passes, all in one submit.
    let (copies, passes) = if vae.texture_mirrors() == TextureMirrors::None {
        (0, 1)
    } else {
        assert_eq!(vae.mirrored_weights(), 2);
        (8, 7)
    };
    assert_eq!(tr.mirror_copies_per_step() as u64, copies);
    let t0 = g.traffic();
    let mem0 = g.memory.stats();
    let steps = tr.steps_per_epoch();
    let mut submits_seen = Vec::new();
    tr.train_epoch(|_, _| submits_seen.push(g.traffic())).unwrap();
    // During the epoch: one submit and no readback per step.
    for (i, t) in submits_seen.iter().enumerate() {
        assert_eq!(t.submits - t0.submits, i as u64 + 1);
        assert_eq!(t.readbacks, t0.readbacks);
        assert_eq!(t.dispatches - t0.dispatches, per_step * (i as u64 + 1));
        assert_eq!(t.copies - t0.copies, copies * (i as u64 + 1));
        assert_eq!(t.passes - t0.passes, passes * (i as u64 + 1));
    }
    assert_eq!(submits_seen.len(), steps);
    // The metrics at the end are one readback; the epoch allocated no new device memory
    // beyond the pooled readback staging buffer.
    let t1 = g.traffic();
    assert_eq!(t1.readbacks - t0.readbacks, 1);
    let allocs_after_first = g.memory.stats().allocations;
    tr.train_epoch(|_, _| {}).unwrap();
    assert_eq!(
        g.memory.stats().allocations,
        allocs_after_first,
        "a second epoch allocated"
    );
    assert!(allocs_after_first <= mem0.allocations + 1);
}

#[test]
fn checkpoint_has_the_reference_keys_and_rejects_other_configs() {
    let g = gpu();
    let vae = Vae::new(g, VaeConfig::default(), 5).unwrap();
    let dir = std::env::temp_dir().join(format!("vae-wgpu-ckpt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("model.safetensors");
    vae.save(g, &path, &[("epoch".into(), "1".into())]).unwrap();
    // Read by hand, independently of the library's reader.
    let st = RawCheckpoint::read(&path);
    let names = st.names();
    let want = [
        "fc1.bias",
        "fc1.weight",
        "fc21.bias",
        "fc21.weight",
        "fc22.bias",
        "fc22.weight",
        "fc3.bias",
        "fc3.weight",
        "fc4.bias",
        "fc4.weight",
    ];
    assert_eq!(names, want);
    let shapes = [
        ("fc1.weight", vec![400, 784]),
        ("fc1.bias", vec![400]),
        ("fc21.weight", vec![20, 400]),
        ("fc22.weight", vec![20, 400]),
        ("fc22.bias", vec![20]),
        ("fc3.weight", vec![400, 20]),
        ("fc4.weight", vec![784, 400]),
        ("fc4.bias", vec![784]),
    ];
    for (name, shape) in shapes {
        assert_eq!(st.shape(name), &shape[..], "{name}");
    }
    // fc21 is the μ half of the head, [out, in]: element (o, i) = W_head[i, o].
    let params = vae.arena.read_params(g).unwrap();
    let head_w = &params[vae.layer("encoder.head").unwrap().w];
    let v = st.values("fc22.weight");
    assert_eq!(v[3 * 400 + 7], head_w[7 * 40 + 20 + 3]);
    let meta = &st.metadata;
    assert_eq!(meta.get("latent").map(String::as_str), Some("20"));
    assert_eq!(meta.get("hidden").map(String::as_str), Some("400"));
    // Round trip, and a model of another configuration refuses the file.
    let back = Vae::load(g, &path).unwrap();
    assert_eq!(back.arena.read_params(g).unwrap(), params);
    let other = Vae::new(
        g,
        VaeConfig {
            latent: 10,
            ..Default::default()
        },
        5,
    )
    .unwrap();
    match other.load_weights(g, &path) {
        Err(e @ VaeError::Checkpoint { .. }) => assert!(e.to_string().contains("latent: 20"), "{e}"),
        other => panic!("expected a checkpoint error, got {:?}", other.err()),
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// A model with two hidden layers, a condition and a learned per-pixel variance: every tensor
/// the independent reader finds is the arena's weight transposed to [out, in] (the head split
/// into mu and logvar, the padding columns of the conditional inputs kept), the bias, or
/// log_c. A file with a tensor missing or of another shape is refused with its name.
#[test]
fn multi_layer_checkpoint_layout_and_refused_files() {
    let g = gpu();
    let cfg = VaeConfig {
        input_dim: 16,
        hidden: vec![8, 4],
        latent: 2,
        likelihood: vae_wgpu::model::Likelihood::GaussianLearned { per_pixel: true },
        classes: 3,
        ..Default::default()
    };
    let vae = Vae::new(g, cfg, 11).unwrap();
    let dir = std::env::temp_dir().join(format!("vae-wgpu-ckpt2-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("model.safetensors");
    vae.save(g, &path, &[]).unwrap();
    let st = RawCheckpoint::read(&path);
    let params = vae.arena.read_params(g).unwrap();
    // (name, layer, output columns of its weight)
    let z = 2;
    let layer = |name: &str| vae.layer(name).unwrap();
    let layers = [
        ("enc0", layer("encoder.0"), 0..8),
        ("enc1", layer("encoder.1"), 0..4),
        ("mu", layer("encoder.head"), 0..z),
        ("logvar", layer("encoder.head"), z..2 * z),
        ("dec0", layer("decoder.0"), 0..4),
        ("dec1", layer("decoder.1"), 0..8),
        ("out", layer("decoder.out"), 0..16),
    ];
    // Conditional inputs: 16 + 3 → 20 and 2 + 3 → 8 columns.
    assert_eq!(
        (layer("encoder.0").in_features, layer("decoder.0").in_features),
        (20, 8)
    );
    for (name, l, cols) in &layers {
        let w = format!("{name}.weight");
        assert_eq!(st.shape(&w), &[cols.len(), l.in_features], "{name}");
        let got = st.values(&w);
        for (o, c) in cols.clone().enumerate() {
            for i in 0..l.in_features {
                assert_eq!(
                    got[o * l.in_features + i],
                    params[l.w][i * l.out_features + c],
                    "{name}[{o}, {i}]"
                );
            }
        }
        assert_eq!(
            st.values(&format!("{name}.bias")),
            &params[l.b][cols.clone()],
            "{name}.bias"
        );
    }
    assert_eq!(st.shape("log_c"), &[16]);
    assert_eq!(
        st.values("log_c"),
        params[vae.arena.layout.find("decoder.log_c").unwrap()]
    );
    assert_eq!(st.names().len(), 2 * layers.len() + 1);

    // Rewrite the file with one tensor dropped, renamed or reshaped.
    let write = |file: &str, skip: &str, rename: &str, reshape: &str| -> std::path::PathBuf {
        let tensors: Vec<(String, Vec<usize>, Vec<f32>)> = st
            .tensors
            .iter()
            .filter(|(n, _, _)| n != skip)
            .map(|(n, shape, v)| {
                let n = if n == rename { "dec1.b".to_string() } else { n.clone() };
                let shape = if n == reshape {
                    vec![shape.iter().product()]
                } else {
                    shape.clone()
                };
                (n, shape, v.clone())
            })
            .collect();
        let out = dir.join(file);
        RawCheckpoint::write(&out, &tensors, &st.metadata);
        out
    };
    for (file, want) in [
        (
            write("dropped.safetensors", "dec1.bias", "", ""),
            "14 tensors, expected 15",
        ),
        (
            write("renamed.safetensors", "", "dec1.bias", ""),
            "missing tensor 'dec1.bias'",
        ),
        (
            write("reshaped.safetensors", "", "", "enc1.weight"),
            "'enc1.weight' has shape [32]",
        ),
    ] {
        match vae.load_weights(g, &file) {
            Err(e @ VaeError::Checkpoint { .. }) => assert!(e.to_string().contains(want), "{e}"),
            other => panic!("{want}: expected a checkpoint error, got {:?}", other.err()),
        }
    }
    // The intact file loads into a fresh model bit for bit.
    assert_eq!(Vae::load(g, &path).unwrap().arena.read_params(g).unwrap(), params);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn evaluation_counts_every_test_example() {
    let g = gpu();
    let vae = Vae::new(g, small_config(), 2).unwrap();
    // 1037 examples: two full evaluation batches and a partial one.
    let ev = Evaluator::new(g, mnist_subset(g, 1037)).unwrap();
    let s = ev.elbo(&vae, 1, false).unwrap();
    assert_eq!(s.examples, 1037);
    // An untrained Bernoulli decoder gives about 784·log 2 ≈ 543 nats of reconstruction.
    assert!(s.recon > 400.0 && s.recon < 700.0 && s.kl >= 0.0, "{s:?}");
    // K = 1 is a single-draw bound: close to the ELBO (which uses the closed-form KL); more
    // draws tighten it (lower −log p estimate), up to Monte Carlo noise.
    let iw1 = ev.iw_nll(&vae, 1, 1, false, |_, _| {}).unwrap();
    assert!((iw1 - s.loss).abs() < 0.02 * s.loss, "IW(K=1) {iw1} vs ELBO {}", s.loss);
    let iw10 = ev.iw_nll(&vae, 1, 10, false, |_, _| {}).unwrap();
    assert!(iw10 <= iw1 + 0.5, "IW(K=10) {iw10} above IW(K=1) {iw1}");
}

/// Reading operands through texture mirrors changes where they come from, not the arithmetic:
/// three epochs with every weight and activation mirrored give bit-identical parameters and
/// metrics to three epochs without, which also shows every mirror is refreshed after each
/// write (the last batch of 200 is partial, so prefix views of the mirrors are read too).
#[test]
fn texture_mirrors_do_not_change_the_numbers() {
    let g = gpu();
    let run = |policy: TextureMirrors| {
        let mut vae = Vae::new(g, small_config(), 5).unwrap();
        vae.set_texture_mirrors(g, policy).unwrap();
        let cfg = TrainConfig {
            batch_size: 64,
            seed: 5,
            ..Default::default()
        };
        let mut tr = Trainer::new(g, &vae, mnist_subset(g, 200), cfg).unwrap();
        let mut losses: Vec<f64> = (0..3).map(|_| tr.train_epoch(|_, _| {}).unwrap().train.loss).collect();
        // Evaluation plans (a partial last batch of 75, and K = 3 importance samples) read
        // their workspaces' mirrors too.
        let ev = Evaluator::new(g, mnist_subset(g, 75)).unwrap();
        losses.push(ev.elbo(&vae, 1, false).unwrap().loss);
        losses.push(ev.iw_nll(&vae, 1, 3, false, |_, _| {}).unwrap());
        (
            losses,
            g.read(&vae.arena.params).unwrap(),
            vae.mirrored_weights(),
            tr.mirror_copies_per_step(),
        )
    };
    let (la, pa, na, ca) = run(TextureMirrors::None);
    let (lb, pb, nb, cb) = run(TextureMirrors::All);
    assert_eq!((na, ca), (0, 0));
    assert_eq!(na, 0);
    if nb == 0 {
        eprintln!("the adapter does not use the subgroup matmul: no mirrors to compare");
        return;
    }
    assert_eq!(nb, 4, "every weight of 784-64-8-64-784 is mirrored");
    assert_eq!(
        cb,
        6 + 4,
        "x, the hidden activations and gradients, d_out; the 4 weights"
    );
    assert_eq!(la, lb);
    assert!(pa == pb, "parameters differ with texture mirrors");

    // A hierarchical VAE's second-layer weights (z₂ padded from 6 to 8 columns) mirrored too.
    let top = |policy: TextureMirrors| {
        let cfg = VaeConfig {
            code: Code::Hierarchical(vec![TopLatent {
                latent: 6,
                hidden: vec![16],
            }]),
            ..small_config()
        };
        let mut vae = Vae::new(g, cfg, 5).unwrap();
        vae.set_texture_mirrors(g, policy).unwrap();
        let tc = TrainConfig {
            batch_size: 64,
            seed: 5,
            mc_samples: 2,
            ..Default::default()
        };
        let mut tr = Trainer::new(g, &vae, mnist_subset(g, 100), tc).unwrap();
        let mut losses: Vec<f64> = (0..2).map(|_| tr.train_epoch(|_, _| {}).unwrap().train.loss).collect();
        losses.push(
            Evaluator::new(g, mnist_subset(g, 50))
                .unwrap()
                .iw_nll(&vae, 1, 3, false, |_, _| {})
                .unwrap(),
        );
        (losses, g.read(&vae.arena.params).unwrap(), vae.mirrored_weights())
    };
    let (la, pa, _) = top(TextureMirrors::None);
    let (lb, pb, nb) = top(TextureMirrors::All);
    assert_eq!(nb, 8, "the 4 weights of 784-64-8-64-784 and the 4 of the second layer");
    assert_eq!(la, lb);
    assert!(pa == pb, "hierarchical: parameters differ with texture mirrors");

    // A convolutional VAE: its four convolutions' weights are mirrored by default, and read
    // as B by the forward and input-gradient products.
    let conv = |policy: TextureMirrors| {
        let cfg = VaeConfig {
            hidden: vec![16],
            latent: 4,
            arch: Arch::Conv(ConvArch {
                input: [1, 28, 28],
                channels: vec![4, 8],
            }),
            ..small_config()
        };
        let mut vae = Vae::new(g, cfg, 5).unwrap();
        vae.set_texture_mirrors(g, policy).unwrap();
        let tc = TrainConfig {
            batch_size: 64,
            seed: 5,
            ..Default::default()
        };
        let mut tr = Trainer::new(g, &vae, mnist_subset(g, 100), tc).unwrap();
        let mut losses: Vec<f64> = (0..2).map(|_| tr.train_epoch(|_, _| {}).unwrap().train.loss).collect();
        losses.push(
            Evaluator::new(g, mnist_subset(g, 50))
                .unwrap()
                .elbo(&vae, 1, false)
                .unwrap()
                .loss,
        );
        (losses, g.read(&vae.arena.params).unwrap(), vae.mirrored_weights())
    };
    let (la, pa, na) = conv(TextureMirrors::None);
    let (lb, pb, nb) = conv(TextureMirrors::Auto);
    assert_eq!((na, nb), (0, 4), "the convolutions' weights (the dense ones are small)");
    assert_eq!(la, lb);
    assert!(pa == pb, "convolutional: parameters differ with texture mirrors");
}

/// Embedding: a host application creates its own device, hands it to vae-wgpu, and records
/// training steps into its own command encoders among its own commands. The parameters come
/// out bit-identical to the library's own loop on its own device (with the default texture
/// mirrors, so the step's passes and copies are recorded into the host's encoder).
#[test]
fn a_host_device_and_encoder_train_as_the_library_does() {
    use vae_wgpu::wgpu;
    // The driver reads its settings once per process: let the library start it first, as the
    // other tests in this binary may (a host would start it its own way).
    let _ = gpu();
    let instance = wgpu::Instance::default();
    let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions::default()))
        .expect("GPU tests need an adapter");
    let (features, limits) = vae_wgpu::gpu::device_requirements(&adapter);
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some("host"),
        required_features: features,
        required_limits: limits,
        ..Default::default()
    }))
    .unwrap();
    let host_buf = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("host's own"),
        size: 256,
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let hosted = Gpu::from_device(
        &adapter.get_info(),
        device,
        queue,
        vae_wgpu::GpuOptions::from_env().unwrap(),
    )
    .unwrap();
    let steps = 5;
    let cfg = TrainConfig {
        batch_size: 64,
        seed: 9,
        ..Default::default()
    };
    let vae = Vae::new(&hosted, small_config(), 9).unwrap();
    let mut tr = Trainer::new(&hosted, &vae, mnist_subset(&hosted, 300), cfg.clone()).unwrap();
    for i in 0..steps {
        let mut enc = hosted.ctx.device.create_command_encoder(&Default::default());
        enc.clear_buffer(&host_buf, 0, None);
        tr.record_step(&mut enc, i).unwrap();
        enc.clear_buffer(&host_buf, 0, None);
        hosted.ctx.queue.submit([enc.finish()]);
    }
    hosted.ctx.wait().unwrap();
    let got = hosted.read(&vae.arena.params).unwrap();
    let mut enc = hosted.ctx.device.create_command_encoder(&Default::default());
    assert!(
        tr.record_step(&mut enc, steps).is_err(),
        "a batch past the epoch must be refused"
    );

    let own = Gpu::new(vae_wgpu::GpuOptions::from_env().expect("the environment's GPU settings")).unwrap();
    let vae2 = Vae::new(&own, small_config(), 9).unwrap();
    let mut tr2 = Trainer::new(&own, &vae2, mnist_subset(&own, 300), cfg).unwrap();
    // One epoch of the library's own loop (5 batches of 300 examples, the last partial): the
    // host's steps, recorded before any epoch, used the same first-epoch order.
    assert_eq!(tr2.steps_per_epoch(), steps);
    tr2.train_epoch(|_, _| {}).unwrap();
    let want = own.read(&vae2.arena.params).unwrap();
    assert_eq!(vae.texture_mirrors(), vae2.texture_mirrors());
    assert!(
        got == want,
        "parameters differ between the host's encoder and the library's loop"
    );
    // And the steps did something.
    let init = Vae::new(&own, small_config(), 9).unwrap();
    assert!(own.read(&init.arena.params).unwrap() != want);
}

/// An autoencoder (sparse, denoising) trains through the same plan: the step keeps its
/// structure (one more dispatch for the masking noise), the loss falls, the checkpoint names
/// the code `fc2` and round-trips, and what an autoencoder cannot do is refused by name.
#[test]
fn autoencoder_trains_checkpoints_and_refuses_vae_options() {
    // A private device so that other tests' traffic does not move the counters.
    let g = Gpu::new(vae_wgpu::GpuOptions::from_env().expect("the environment's GPU settings"))
        .expect("GPU tests need an adapter");
    let cfg = VaeConfig {
        hidden: vec![64],
        latent: 8,
        code: Code::Deterministic {
            l1: 0.01,
            contractive: 0.0,
        },
        ..Default::default()
    };
    let vae = Vae::new(&g, cfg.clone(), 3).unwrap();
    let tc = TrainConfig {
        batch_size: 64,
        denoise: 0.25,
        ..Default::default()
    };
    let mut tr = Trainer::new(&g, &vae, mnist_subset(&g, 300), tc.clone()).unwrap();
    // The VAE's 17 (the code's forward and backward stand where reparameterize+KL stood),
    // plus the masking noise.
    assert_eq!(tr.dispatches_per_step(), 18);
    let t0 = g.traffic();
    let losses: Vec<f64> = (0..4).map(|_| tr.train_epoch(|_, _| {}).unwrap().train.loss).collect();
    let t1 = g.traffic();
    assert_eq!(t1.submits - t0.submits, 4 * 5, "one submit per step");
    assert_eq!(t1.readbacks - t0.readbacks, 4, "one readback per epoch");
    // From ~545 nats per image the reconstruction NLL (plus the small penalty) must fall.
    assert!(losses[0] > losses[3] + 100.0, "loss did not fall: {losses:?}");

    // Evaluation encodes clean inputs and reports the reconstruction NLL and the penalty.
    let eval = Evaluator::new(&g, mnist_subset(&g, 100)).unwrap();
    let stats = eval.elbo(&vae, 1, false).unwrap();
    assert!(stats.recon > 0.0 && stats.kl > 0.0 && (stats.loss - stats.recon - stats.kl).abs() < 1e-9);
    let e = eval.iw_nll(&vae, 1, 5, false, |_, _| {}).unwrap_err().to_string();
    assert!(e.contains("needs a VAE"), "{e}");

    // Checkpoint: the code layer is fc2 [Z, h]; a VAE of the same sizes refuses the file.
    let dir = std::env::temp_dir().join(format!("vae-wgpu-ae-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("ae.safetensors");
    vae.save(&g, &path, &[]).unwrap();
    let st = RawCheckpoint::read(&path);
    let names = st.names();
    let want = [
        "fc1.bias",
        "fc1.weight",
        "fc2.bias",
        "fc2.weight",
        "fc3.bias",
        "fc3.weight",
        "fc4.bias",
        "fc4.weight",
    ];
    assert_eq!(names, want);
    assert_eq!(st.shape("fc2.weight"), &[8, 64]);
    let back = Vae::load(&g, &path).unwrap();
    assert_eq!(back.config, cfg);
    assert_eq!(back.arena.read_params(&g).unwrap(), vae.arena.read_params(&g).unwrap());
    let as_vae = Vae::new(
        &g,
        VaeConfig {
            code: Code::Gaussian,
            ..cfg.clone()
        },
        3,
    )
    .unwrap();
    match as_vae.load_weights(&g, &path) {
        Err(e @ VaeError::Checkpoint { .. }) => assert!(e.to_string().contains("Deterministic"), "{e}"),
        other => panic!("expected a checkpoint error, got {:?}", other.err()),
    }
    std::fs::remove_dir_all(&dir).ok();

    // A contractive autoencoder adds 7 dispatches (the mask, S, G1, G2, the elementwise step and
    // the two gradient products): 24, the ceiling. One epoch trains and its penalty is
    // reported beside the reconstruction (its values are checked in model.rs).
    let cae_cfg = VaeConfig {
        code: Code::Deterministic {
            l1: 0.0,
            contractive: 0.1,
        },
        ..cfg.clone()
    };
    let cae = Vae::new(&g, cae_cfg, 3).unwrap();
    let mut ctr = Trainer::new(&g, &cae, mnist_subset(&g, 300), TrainConfig::default()).unwrap();
    assert_eq!(ctr.dispatches_per_step(), 24);
    let rep = ctr.train_epoch(|_, _| {}).unwrap();
    assert!(rep.train.kl > 0.0 && rep.train.recon > 0.0, "{rep:?}");

    // No sampling, β or KL schedule for a deterministic code; masking probabilities in [0, 1).
    // Each refusal names the fields at fault (the code's too, where the combination is).
    let refused = [
        (
            TrainConfig {
                mc_samples: 2,
                ..tc.clone()
            },
            &["TrainConfig::mc_samples", "VaeConfig::code"][..],
        ),
        (
            TrainConfig {
                beta: 2.0,
                ..tc.clone()
            },
            &["TrainConfig::beta", "VaeConfig::code"],
        ),
        (
            TrainConfig {
                kl_schedule: KlSchedule::Warmup { steps: 10 },
                ..tc.clone()
            },
            &["TrainConfig::kl_schedule", "VaeConfig::code"],
        ),
        (
            TrainConfig {
                denoise: 1.0,
                ..tc.clone()
            },
            &["TrainConfig::denoise"],
        ),
        (
            TrainConfig {
                denoise: -0.1,
                ..tc.clone()
            },
            &["TrainConfig::denoise"],
        ),
        // Codebook moving averages need a codebook.
        (
            TrainConfig {
                vq_ema: Some(0.99),
                ..tc.clone()
            },
            &["TrainConfig::vq_ema", "VaeConfig::code"],
        ),
    ];
    for (bad, fields) in refused {
        let what = format!("{bad:?}");
        match Trainer::new(&g, &vae, mnist_subset(&g, 64), bad) {
            Err(VaeError::Setting { fields: f, .. }) => assert_eq!(f, fields, "{what}"),
            other => panic!("{what}: expected a Setting error, got {:?}", other.err()),
        }
    }
}

/// A run stopped after an epoch and resumed from its checkpoint and training state continues
/// exactly: the parameters after three epochs are bit-identical to an uninterrupted run's,
/// with a KL warm-up (β depends on the global step) and weights large enough for texture
/// mirrors (which loading must refresh). Without the state, or with another seed, it is not.
#[test]
fn resuming_from_saved_state_matches_an_uninterrupted_run() {
    let g = gpu();
    let cfg = VaeConfig {
        hidden: vec![128],
        latent: 8,
        ..Default::default()
    };
    let tc = TrainConfig {
        batch_size: 64,
        seed: 7,
        kl_schedule: KlSchedule::Warmup { steps: 7 },
        epochs: 3,
        ..Default::default()
    };
    let run = resumed_run(g, &cfg, &tc, "vae");
    let resume = |load: bool, seed: u64| -> Vec<f32> {
        let vae = Vae::load(g, &run.ckpt).unwrap();
        assert!(vae.mirrored_weights() > 0 || vae.texture_mirrors() == TextureMirrors::None);
        let mut tr = Trainer::new(g, &vae, mnist_subset(g, 300), TrainConfig { seed, ..tc.clone() }).unwrap();
        if load {
            tr.load_state(&vae, &run.state).unwrap();
        }
        (0..2).for_each(|_| {
            tr.train_epoch(|_, _| {}).unwrap();
        });
        g.read(&vae.arena.params).unwrap()
    };
    // Fresh moments, step and epoch do not continue the run.
    assert!(resume(false, 7) != run.want, "the state made no difference");
    // Another seed would draw another order and noise: refused by name.
    let vae = Vae::load(g, &run.ckpt).unwrap();
    let mut other = Trainer::new(g, &vae, mnist_subset(g, 300), TrainConfig { seed: 8, ..tc.clone() }).unwrap();
    match other.load_state(&vae, &run.state) {
        Err(e @ VaeError::Checkpoint { .. }) => assert!(e.to_string().contains("seed 7"), "{e}"),
        r => panic!("expected a checkpoint error, got {:?}", r.err()),
    }
    // The model checkpoint is not a training state.
    match other.load_state(&vae, &run.ckpt) {
        Err(e @ VaeError::Checkpoint { .. }) => assert!(e.to_string().contains("format"), "{e}"),
        r => panic!("expected a checkpoint error, got {:?}", r.err()),
    }
    std::fs::remove_dir_all(&run.dir).ok();
}

/// Resume is exact for a denoising VQ-VAE whose codebook is trained by moving averages too:
/// the codebook is in the checkpoint, its running counts and sums in the training state, and
/// the masking noise is keyed by the restored step. A trainer without the moving averages
/// refuses that state by name.
#[test]
fn resuming_a_denoising_vq_vae_matches_an_uninterrupted_run() {
    let g = gpu();
    let cfg = VaeConfig {
        hidden: vec![64],
        latent: 8,
        code: Code::Quantized {
            codes: 16,
            groups: 4,
            commitment: 0.25,
        },
        ..Default::default()
    };
    let tc = TrainConfig {
        batch_size: 64,
        seed: 9,
        denoise: 0.3,
        epochs: 3,
        vq_ema: Some(0.9),
        ..Default::default()
    };
    let run = resumed_run(g, &cfg, &tc, "vq");
    let vae = Vae::load(g, &run.ckpt).unwrap();
    // Without the moving averages, or with another decay, the state is refused by name.
    for other in [None, Some(0.5)] {
        let mut tr = Trainer::new(
            g,
            &vae,
            mnist_subset(g, 300),
            TrainConfig {
                vq_ema: other,
                ..tc.clone()
            },
        )
        .unwrap();
        match tr.load_state(&vae, &run.state) {
            Err(e @ VaeError::Checkpoint { .. }) => assert!(e.to_string().contains("decay is 0.9"), "{e}"),
            r => panic!("expected a checkpoint error, got {:?}", r.err()),
        }
    }
    std::fs::remove_dir_all(&run.dir).ok();
}

/// The files of a run resumed by [`resumed_run`] and the uninterrupted run's final parameters.
struct ResumedRun {
    dir: std::path::PathBuf,
    ckpt: std::path::PathBuf,
    state: std::path::PathBuf,
    want: Vec<f32>,
}

/// Trains three epochs straight, then one epoch, saves the checkpoint and training state,
/// loads both into a fresh model and trainer and trains two more: asserts that the resumed
/// epochs' losses and the final parameters are bit-identical to the straight run's.
fn resumed_run(g: &Gpu, cfg: &VaeConfig, tc: &TrainConfig, tag: &str) -> ResumedRun {
    let vae = Vae::new(g, cfg.clone(), 7).unwrap();
    let mut tr = Trainer::new(g, &vae, mnist_subset(g, 300), tc.clone()).unwrap();
    let straight: Vec<f64> = (0..3).map(|_| tr.train_epoch(|_, _| {}).unwrap().train.loss).collect();
    let want = g.read(&vae.arena.params).unwrap();

    let dir = std::env::temp_dir().join(format!("vae-wgpu-resume-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (ckpt, state) = (
        dir.join("checkpoint.safetensors"),
        dir.join("training_state.safetensors"),
    );
    {
        let vae = Vae::new(g, cfg.clone(), 7).unwrap();
        let mut tr = Trainer::new(g, &vae, mnist_subset(g, 300), tc.clone()).unwrap();
        let first = tr.train_epoch(|_, _| {}).unwrap().train.loss;
        assert_eq!(first, straight[0]);
        vae.save(g, &ckpt, &[]).unwrap();
        tr.save_state(&vae, &state).unwrap();
    }
    let vae = Vae::load(g, &ckpt).unwrap();
    let mut tr = Trainer::new(g, &vae, mnist_subset(g, 300), tc.clone()).unwrap();
    tr.load_state(&vae, &state).unwrap();
    assert_eq!((tr.epoch, tr.step), (1, 5));
    let losses: Vec<f64> = (0..2).map(|_| tr.train_epoch(|_, _| {}).unwrap().train.loss).collect();
    assert_eq!(losses, straight[1..], "{tag}: the resumed epochs' losses");
    let got = g.read(&vae.arena.params).unwrap();
    assert!(
        got == want,
        "{tag}: resumed parameters differ from the uninterrupted run's"
    );
    ResumedRun { dir, ckpt, state, want }
}

/// A VQ-VAE trains through the same plan (18 dispatches: quantization forward, and the
/// straight-through and codebook gradients backward), its loss falls, several codebook entries
/// end up in use, and its checkpoint carries the codebook and round-trips.
#[test]
fn vq_vae_trains_and_checkpoints_its_codebook() {
    let g = gpu();
    let cfg = VaeConfig {
        hidden: vec![64],
        latent: 8,
        code: Code::Quantized {
            codes: 16,
            groups: 4,
            commitment: 0.25,
        },
        ..Default::default()
    };
    let vae = Vae::new(g, cfg.clone(), 3).unwrap();
    // A VQ-VAE starts slower than an autoencoder (its decoder first sees a few codebook
    // entries): 40 steps at lr 3e-3 take the reconstruction from ~530 to ~220 nats.
    let tc = TrainConfig {
        batch_size: 64,
        adam: vae_wgpu::train::AdamConfig {
            lr: 3e-3,
            ..Default::default()
        },
        ..Default::default()
    };
    // Moving averages: a decay in (0, 1) and no weight decay, which would shrink the codebook.
    for bad in [
        TrainConfig {
            vq_ema: Some(1.0),
            ..tc.clone()
        },
        TrainConfig {
            vq_ema: Some(0.99),
            adam: vae_wgpu::train::AdamConfig {
                weight_decay: 0.01,
                ..Default::default()
            },
            ..tc.clone()
        },
    ] {
        match Trainer::new(g, &vae, mnist_subset(g, 64), bad) {
            Err(e @ VaeError::Setting { .. }) => {
                assert!(
                    e.to_string().contains("decay") && e.to_string().contains("TrainConfig::vq_ema"),
                    "{e}"
                )
            }
            r => panic!("expected a Setting error, got {:?}", r.err()),
        }
    }
    let mut tr = Trainer::new(g, &vae, mnist_subset(g, 300), tc).unwrap();
    assert_eq!(tr.dispatches_per_step(), 18);
    let reports: Vec<_> = (0..8).map(|_| tr.train_epoch(|_, _| {}).unwrap().train).collect();
    let (first, last) = (reports[0], reports[7]);
    assert!(
        last.recon < first.recon - 150.0 && last.loss < first.loss - 150.0,
        "loss did not fall: {first:?} -> {last:?}"
    );
    let eval = Evaluator::new(g, mnist_subset(g, 100)).unwrap();
    let stats = eval.elbo(&vae, 1, false).unwrap();
    assert!(stats.recon > 0.0 && stats.kl > 0.0, "{stats:?}");
    assert!(
        eval.iw_nll(&vae, 1, 5, false, |_, _| {}).is_err(),
        "no importance-weighted bound without a prior"
    );

    // The codes the evaluation encoded: each of the 4 vectors of 2 values nearest to one entry.
    let params = vae.arena.read_params(g).unwrap();
    let book = &params[vae.arena.layout.find("codebook").unwrap()];
    let means = eval.encode_means(&vae, 1).unwrap();
    let chosen: Vec<usize> = means
        .chunks_exact(2)
        .map(|v| {
            let dist = |k: usize| (v[0] - book[2 * k]).powi(2) + (v[1] - book[2 * k + 1]).powi(2);
            (0..16).fold(0, |best, k| if dist(k) < dist(best) { k } else { best })
        })
        .collect();
    let mut used = chosen.clone();
    used.sort();
    used.dedup();
    assert!(used.len() >= 3, "only codebook entries {used:?} in use");
    // code_usage counts the device's choices: the same histogram, and its perplexity.
    let mut counts = vec![0u64; 16];
    for &k in &chosen {
        counts[k] += 1;
    }
    let usage = eval.code_usage(&vae, 1).unwrap();
    assert_eq!((usage.used, &usage.counts), (used.len(), &counts));
    let n = chosen.len() as f64;
    let entropy: f64 = counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| -(c as f64 / n) * (c as f64 / n).ln())
        .sum();
    assert!((usage.perplexity - entropy.exp()).abs() < 1e-9, "{usage:?}");
    assert!(matches!(
        eval.code_usage(&Vae::new(g, small_config(), 1).unwrap(), 1),
        Err(VaeError::Setting { fields, .. }) if fields == ["VaeConfig::code"]
    ));

    // Switching this gradient-trained model to moving averages clears the codebook's gradient
    // and Adam moments (else Adam's momentum would go on moving it), and only those.
    let slot = vae.arena.layout.find("codebook").unwrap();
    let range = {
        let s = &vae.arena.layout.slots()[slot];
        s.offset..s.offset + s.len()
    };
    let (m_before, v_before) = (g.read(&vae.arena.m).unwrap(), g.read(&vae.arena.v).unwrap());
    assert!(
        m_before[range.clone()].iter().any(|&x| x != 0.0),
        "the gradient run left no momentum"
    );
    let ema = TrainConfig {
        batch_size: 64,
        vq_ema: Some(0.99),
        ..Default::default()
    };
    let _ema_trainer = Trainer::new(g, &vae, mnist_subset(g, 64), ema).unwrap();
    let (m, v) = (g.read(&vae.arena.m).unwrap(), g.read(&vae.arena.v).unwrap());
    assert!(vae.arena.read_grads(g).unwrap()[slot].iter().all(|&x| x == 0.0));
    for (i, (&a, &b)) in m.iter().zip(&m_before).enumerate() {
        let want = if range.contains(&i) { 0.0 } else { b };
        assert!(
            a == want && v[i] == if range.contains(&i) { 0.0 } else { v_before[i] },
            "moment {i}"
        );
    }

    let dir = std::env::temp_dir().join(format!("vae-wgpu-vq-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("vq.safetensors");
    vae.save(g, &path, &[]).unwrap();
    let st = RawCheckpoint::read(&path);
    assert_eq!(st.shape("codebook"), &[16, 2]);
    assert_eq!(st.values("codebook"), &book[..]);
    let back = Vae::load(g, &path).unwrap();
    assert_eq!(back.config, cfg);
    assert_eq!(back.arena.read_params(g).unwrap(), params);
    std::fs::remove_dir_all(&dir).ok();
}

/// A hierarchical VAE trains through the same trainer: 32 dispatches a step (the flat VAE's
/// 17 with z₁'s sample in place of the reparameterization, plus q(z₂|z₁)'s and p(z₁|z₂)'s
/// networks forward and backward, z₂'s reparameterization both ways and the lower KL term),
/// its −ELBO falls, both KL terms are reported, it trains with two draws per example too, its
/// checkpoint carries the second layer's tensors in PyTorch's [out, in] layout and
/// round-trips, and `prior_latents` draws z₁ from p(z₁|z₂) as an f64 replay of that network
/// computes it.
#[test]
fn hierarchical_vae_trains_checkpoints_and_samples() {
    let g = gpu();
    let cfg = VaeConfig {
        hidden: vec![64],
        latent: 8,
        code: Code::Hierarchical(vec![TopLatent {
            latent: 4,
            hidden: vec![16],
        }]),
        ..Default::default()
    };
    let vae = Vae::new(g, cfg.clone(), 5).unwrap();
    assert_eq!(vae.num_params(), cfg.num_params());
    let tc = TrainConfig {
        batch_size: 64,
        ..Default::default()
    };
    let mut tr = Trainer::new(g, &vae, mnist_subset(g, 300), tc.clone()).unwrap();
    assert_eq!(tr.dispatches_per_step(), 32);
    let reports: Vec<_> = (0..6).map(|_| tr.train_epoch(|_, _| {}).unwrap().train).collect();
    let (first, last) = (reports[0], reports[5]);
    assert!(
        last.loss < first.loss - 100.0,
        "loss did not fall: {first:?} -> {last:?}"
    );
    let eval = Evaluator::new(g, mnist_subset(g, 100)).unwrap();
    let stats = eval.elbo(&vae, 1, false).unwrap();
    assert!(
        stats.kl > 0.0 && (stats.loss - stats.recon - stats.kl).abs() < 1e-6 * stats.loss,
        "{stats:?}"
    );
    // Its importance-weighted bound (checked against the reference in family.rs) tightens
    // the one-draw −ELBO of the trained model.
    let iw = eval.iw_nll(&vae, 1, 50, false, |_, _| {}).unwrap();
    assert!(iw < stats.loss, "IW bound {iw} vs -ELBO {}", stats.loss);
    // Two draws per example train through the same plan (gradients checked in model.rs).
    // Past 2^15 draws z₁'s sample index would reach z₂'s keys: refused.
    let too_many = TrainConfig {
        mc_samples: vae_wgpu::train::MAX_SAMPLES + 1,
        ..tc.clone()
    };
    assert!(matches!(
        Trainer::new(g, &vae, mnist_subset(g, 64), too_many),
        Err(VaeError::Setting { fields, .. }) if fields == ["TrainConfig::mc_samples"]
    ));
    let two = TrainConfig { mc_samples: 2, ..tc };
    let mut tr2 = Trainer::new(g, &vae, mnist_subset(g, 64), two).unwrap();
    assert_eq!(tr2.dispatches_per_step(), 32);
    let rep = tr2.train_epoch(|_, _| {}).unwrap().train;
    assert!(rep.loss.is_finite() && rep.kl > 0.0, "{rep:?}");

    let dir = std::env::temp_dir().join(format!("vae-wgpu-hier-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("hier.safetensors");
    vae.save(g, &path, &[]).unwrap();
    let params = vae.arena.read_params(g).unwrap();
    let st = RawCheckpoint::read(&path);
    let slot = |name: &str| vae.arena.layout.slots().iter().position(|s| s.name == name).unwrap();
    // p(z₁|z₂)'s head [16, 2·8] is stored as μ and log σ² halves, each [8, 16].
    let head_w = &params[slot("top.prior.head.weight")];
    let logvar = st.values("p_z1.logvar.weight");
    assert_eq!(st.shape("p_z1.logvar.weight"), &[8, 16]);
    for o in 0..8 {
        for i in 0..16 {
            assert_eq!(
                logvar[o * 16 + i],
                head_w[i * 16 + 8 + o],
                "p_z1.logvar.weight[{o}, {i}]"
            );
        }
    }
    for key in ["q_z2.0", "q_z2.mu", "q_z2.logvar", "p_z1.0", "p_z1.mu"] {
        assert!(st.names().contains(&format!("{key}.weight")), "{key} missing");
    }
    let back = Vae::load(g, &path).unwrap();
    assert_eq!(back.config, cfg);
    assert_eq!(back.arena.read_params(g).unwrap(), params);
    std::fs::remove_dir_all(&dir).ok();

    // Samples: z₂ as prior_samples draws it, then the network and z₁ = μₚ + σₚ·ε in f64.
    let (n, t) = (5, 0.8f32);
    let z1 = prior_latents(g, &vae, 11, n, t, None).unwrap();
    let z2: Vec<f64> = prior_samples(11, n, 4, t).iter().map(|&v| v as f64).collect();
    let want = replay_prior(&vae, &params, 0, &z2, n, 11, t, 1, 0);
    for (i, (&a, &b)) in z1.iter().zip(&want).enumerate() {
        assert!((a as f64 - b).abs() < 1e-4 * (1.0 + b.abs()), "z1[{i}]: {a} want {b}");
    }
}

/// Upper networks of two hidden layers each (`--top 4:16x8`): one checkpoint tensor per hidden
/// layer, in order, a load that gives the same parameters, and prior draws through both layers.
#[test]
fn deep_upper_networks_checkpoint_and_sample() {
    let g = gpu();
    let cfg = VaeConfig {
        input_dim: 16,
        hidden: vec![12],
        latent: 4,
        activation: vae_wgpu::model::Activation::Tanh,
        code: Code::Hierarchical(vec![TopLatent {
            latent: 4,
            hidden: vec![16, 8],
        }]),
        ..Default::default()
    };
    let vae = Vae::new(g, cfg.clone(), 23).unwrap();
    let dir = std::env::temp_dir().join(format!("vae-wgpu-deep-top-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("deep.safetensors");
    vae.save(g, &path, &[]).unwrap();
    let st = RawCheckpoint::read(&path);
    // q(z₂|z₁): 4 → 16 → 8 → [μ | log σ²]; p(z₁|z₂) the same widths.
    for (key, shape) in [
        ("q_z2.0", [16, 4]),
        ("q_z2.1", [8, 16]),
        ("q_z2.mu", [4, 8]),
        ("p_z1.0", [16, 4]),
        ("p_z1.1", [8, 16]),
        ("p_z1.logvar", [4, 8]),
    ] {
        assert_eq!(st.shape(&format!("{key}.weight")), &shape, "{key}");
    }
    let params = vae.arena.read_params(g).unwrap();
    let back = Vae::load(g, &path).unwrap();
    assert_eq!(back.config, cfg);
    assert_eq!(back.arena.read_params(g).unwrap(), params);
    std::fs::remove_dir_all(&dir).ok();
    // z₁ from z₂ through p(z₁|z₂)'s two hidden layers, replayed in f64.
    let slot = |name: &str| -> Vec<f64> {
        params[vae.arena.layout.find(&format!("top.prior.{name}")).unwrap()]
            .iter()
            .map(|&v| v as f64)
            .collect()
    };
    let (n, t) = (3, 1.0f32);
    let z1 = prior_latents(g, &vae, 5, n, t, None).unwrap();
    let mut h: Vec<f64> = prior_samples(5, n, 4, t).iter().map(|&v| v as f64).collect();
    // p's layers follow q's two hidden layers and head in the reference's list.
    let tl = reference::top_layers(&cfg);
    for (j, part) in ["0", "1", "head"].iter().enumerate() {
        h = reference::dense_forward(
            &tl[3 + j],
            &h,
            n,
            &slot(&format!("{part}.weight")),
            &slot(&format!("{part}.bias")),
        )
        .1;
    }
    let word = rng::stream_word(rng::STREAM_SAMPLE, 1);
    assert_eq!(z1.len(), n * 4);
    for (k, &got) in z1.iter().enumerate() {
        let (e, j) = (k / 4, k % 4);
        let eps = rng::normal(rng::device_seed(5), 0, word, k as u32);
        let want = h[e * 8 + j] + (0.5 * h[e * 8 + 4 + j]).exp() * eps;
        assert!(
            (got as f64 - want).abs() < 1e-4 * (1.0 + want.abs()),
            "z1[{k}]: {got} want {want}"
        );
    }
}

/// Upper layer `i`'s conditional prior replayed in f64 from the model's parameters: the rows
/// `z_in` [n, width] (z_{i+2} with its padding or one-hot) through p(z_{i+1}|z_{i+2})'s network,
/// then z_{i+1} = μₚ + σₚ·ε with ε keyed (seed, 0, sample word `word`, `first` + k), scaled by
/// `t`. n·Z_{i+1} values.
#[allow(clippy::too_many_arguments)]
fn replay_prior(
    vae: &Vae,
    params: &[Vec<f32>],
    i: usize,
    z_in: &[f64],
    n: usize,
    seed: u64,
    t: f32,
    word: u32,
    first: usize,
) -> Vec<f64> {
    let tl = reference::top_layers(&vae.config);
    let prefix = if i == 0 {
        "top".to_string()
    } else {
        format!("top.z{}", i + 2)
    };
    let slot = |name: &str| vae.arena.layout.slots().iter().position(|s| s.name == name).unwrap();
    let w = |part: &str| {
        params[slot(&format!("{prefix}.{part}"))]
            .iter()
            .map(|&v| v as f64)
            .collect::<Vec<f64>>()
    };
    // p(z_i|z_{i+1})'s layers follow q's hidden layers and head.
    let prior = reference::top_start(&vae.config, i) + vae.config.top()[i].hidden.len() + 1;
    assert_eq!(vae.config.top()[i].hidden.len(), 1, "the replay runs one hidden layer");
    let h = reference::dense_forward(&tl[prior], z_in, n, &w("prior.0.weight"), &w("prior.0.bias")).1;
    let pp = reference::dense_forward(&tl[prior + 1], &h, n, &w("prior.head.weight"), &w("prior.head.bias")).1;
    let zd = tl[prior + 1].outputs / 2;
    let word = rng::stream_word(rng::STREAM_SAMPLE, word);
    (0..n * zd)
        .map(|k| {
            let (e, j) = (k / zd, k % zd);
            let eps = rng::normal(rng::device_seed(seed), 0, word, (first + k) as u32) * t as f64;
            pp[e * 2 * zd + j] + (0.5 * pp[e * 2 * zd + zd + j]).exp() * eps
        })
        .collect()
}

/// Trains a hierarchical VAE of `cfg` (seed 5) for 6 epochs of 300 MNIST images and checks
/// what every such model must do: its parameter count, `dispatches` a step, a falling −ELBO
/// with a positive KL, an importance-weighted bound below the −ELBO, and a checkpoint that
/// loads back to the same configuration and parameters. Returns the model, its parameters
/// and the checkpoint's tensor shapes by name.
fn train_and_round_trip_hierarchy(
    g: &Gpu,
    cfg: &VaeConfig,
    dispatches: usize,
) -> (Vae, Vec<Vec<f32>>, impl Fn(&str) -> Vec<usize>) {
    let vae = Vae::new(g, cfg.clone(), 5).unwrap();
    assert_eq!(vae.num_params(), cfg.num_params());
    let tc = TrainConfig {
        batch_size: 64,
        ..Default::default()
    };
    let mut tr = Trainer::new(g, &vae, mnist_subset(g, 300), tc).unwrap();
    assert_eq!(tr.dispatches_per_step(), dispatches);
    let reports: Vec<_> = (0..6).map(|_| tr.train_epoch(|_, _| {}).unwrap().train).collect();
    assert!(
        reports[5].loss < reports[0].loss - 100.0 && reports[5].kl > 0.0,
        "loss did not fall: {:?} -> {:?}",
        reports[0],
        reports[5]
    );
    let eval = Evaluator::new(g, mnist_subset(g, 100)).unwrap();
    let stats = eval.elbo(&vae, 1, false).unwrap();
    let iw = eval.iw_nll(&vae, 1, 50, false, |_, _| {}).unwrap();
    assert!(iw < stats.loss, "IW bound {iw} vs -ELBO {}", stats.loss);

    let dir = std::env::temp_dir().join(format!("vae-wgpu-hier-rt-{}-{}", std::process::id(), cfg.top().len()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("model.safetensors");
    vae.save(g, &path, &[]).unwrap();
    let st = RawCheckpoint::read(&path);
    let shapes: std::collections::HashMap<String, Vec<usize>> = st
        .tensors
        .iter()
        .map(|(name, shape, _)| (name.clone(), shape.clone()))
        .collect();
    let back = Vae::load(g, &path).unwrap();
    assert_eq!(&back.config, cfg);
    let params = vae.arena.read_params(g).unwrap();
    assert_eq!(back.arena.read_params(g).unwrap(), params);
    std::fs::remove_dir_all(&dir).ok();
    (vae, params, move |name: &str| {
        shapes.get(name).cloned().unwrap_or_else(|| panic!("{name} missing"))
    })
}

/// A conditional hierarchical VAE: q(z₂|z₁, y) and p(z₁|z₂, y) read the one-hot after z₁ and
/// z₂. It takes 34 dispatches a step (two class conditionings: x and z₁, then z₂), trains, its
/// checkpoint keeps the one-hot and padding columns of both networks' first layers and
/// round-trips, and `prior_latents` with labels draws z₁ from p(z₁|z₂, y) as an f64 replay of
/// that network computes it; labels are required for it and refused for an unconditional one.
#[test]
fn conditional_hierarchical_vae_trains_and_samples_by_class() {
    let g = gpu();
    let cfg = VaeConfig {
        hidden: vec![64],
        latent: 8,
        classes: 10,
        code: Code::Hierarchical(vec![TopLatent {
            latent: 4,
            hidden: vec![16],
        }]),
        ..Default::default()
    };
    // [z₁ | one-hot] is 18 wide, padded to 20; [z₂ | one-hot] 14, padded to 16.
    assert_eq!((cfg.dec_input_dim(), cfg.top_input_dim(0)), (20, 16));
    let (vae, params, shapes) = train_and_round_trip_hierarchy(g, &cfg, 34);
    assert_eq!(
        (shapes("q_z2.0.weight"), shapes("p_z1.0.weight")),
        (vec![16, 20], vec![16, 16])
    );

    // Samples for classes 3, 7, 7, 0: z₂ as prior_samples draws it, the one-hot after it.
    let labels = [3u32, 7, 7, 0];
    let (n, t) = (labels.len(), 0.8f32);
    let z1 = prior_latents(g, &vae, 11, n, t, Some(&labels)).unwrap();
    let z2: Vec<f64> = prior_samples(11, n, 4, t).iter().map(|&v| v as f64).collect();
    let z2_in = reference::with_one_hot(&z2, 4, &labels, 16);
    let want = replay_prior(&vae, &params, 0, &z2_in, n, 11, t, 1, 0);
    for (i, (&a, &b)) in z1.iter().zip(&want).enumerate() {
        assert!((a as f64 - b).abs() < 1e-4 * (1.0 + b.abs()), "z1[{i}]: {a} want {b}");
    }
    // The same z₂ and noise under another label give another z₁ (the prior reads the label).
    let other = prior_latents(g, &vae, 11, n, t, Some(&[4, 7, 2, 1])).unwrap();
    assert!(other[..8] != z1[..8] && other[8..16] == z1[8..16]);
    assert!(matches!(
        prior_latents(g, &vae, 11, n, t, None),
        Err(vae_wgpu::VaeError::Config(_))
    ));
    let flat = Vae::new(g, VaeConfig { classes: 0, ..cfg }, 5).unwrap();
    assert!(matches!(
        prior_latents(g, &flat, 11, n, t, Some(&labels)),
        Err(vae_wgpu::VaeError::Config(_))
    ));
}

/// A three-layer hierarchical VAE (z₃ above z₂ above z₁, `--top 6:16,2:8`): 47 dispatches a step
/// (15 per upper layer: its two networks both ways, its draw both ways and the KL term of the
/// layer below), its −ELBO falls, its checkpoint adds q_z3 and p_z2 and round-trips, and
/// `prior_latents` draws ancestrally, z₃ from N(0, I), z₂ from p(z₂|z₃) (sample word 2) and z₁
/// from p(z₁|z₂) (word 1), as an f64 replay of both networks computes it; z₂ and z₃ are padded
/// (6 to 8 and 2 to 4 columns), so the replay pads them too. The hierarchy figure's cell (1, 2)
/// is the decoding of that replay's draw for its own top row and noise index.
#[test]
fn three_layer_vae_trains_and_samples_ancestrally() {
    let g = gpu();
    let top = vec![
        TopLatent {
            latent: 6,
            hidden: vec![16],
        },
        TopLatent {
            latent: 2,
            hidden: vec![8],
        },
    ];
    let cfg = VaeConfig {
        hidden: vec![64],
        latent: 8,
        code: crate::common::hier(&top),
        ..Default::default()
    };
    let (vae, params, shapes) = train_and_round_trip_hierarchy(g, &cfg, 17 + 2 * 15);
    // q(z₃|z₂) reads z₂'s 8-wide rows; p(z₂|z₃) reads z₃'s 4 and gives μ and log σ² of z₂.
    assert_eq!(shapes("q_z3.0.weight"), [8, 8]);
    assert_eq!(shapes("q_z3.mu.weight"), [2, 8]);
    assert_eq!(shapes("p_z2.0.weight"), [8, 4]);
    assert_eq!(shapes("p_z2.logvar.weight"), [6, 8]);

    // Ancestral samples, replayed in f64: rows of `z` [n, latent] through layer i's prior.
    let (seed, t) = (11u64, 0.8f32);
    let down = |i: usize, z: &[f64], n: usize, word: u32, first: usize| {
        let padded = reference::zero_padded(z, top[i].latent, cfg.top_input_dim(i));
        replay_prior(&vae, &params, i, &padded, n, seed, t, word, first)
    };
    let n = 4;
    let z1 = prior_latents(g, &vae, seed, n, t, None).unwrap();
    let z3: Vec<f64> = prior_samples(seed, n, 2, t).iter().map(|&v| v as f64).collect();
    let want = down(0, &down(1, &z3, n, 2, 0), n, 1, 0);
    for (i, (&a, &b)) in z1.iter().zip(&want).enumerate() {
        assert!((a as f64 - b).abs() < 1e-4 * (1.0 + b.abs()), "z1[{i}]: {a} want {b}");
    }
    // The hierarchy figure, 3 rows of 4: cell (1, 2) holds row 1's top draw and noise index 6.
    let fig = hierarchy_figure(g, &vae, seed, 3, 4, t).unwrap();
    let z3_row1: Vec<f64> = prior_samples(seed, 3, 2, t)[2..4].iter().map(|&v| v as f64).collect();
    let cell = 4 + 2;
    let z1_cell = down(0, &down(1, &z3_row1, 1, 2, cell * 6), 1, 1, cell * 8);
    let z1_cell: Vec<f32> = z1_cell.iter().map(|&v| v as f32).collect();
    let direct = vae_wgpu::infer::decode(g, &vae, &z1_cell).unwrap();
    let px = 784;
    let got = &fig.images[cell * px..(cell + 1) * px];
    let worst = got
        .iter()
        .zip(&direct)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(worst < 1e-3, "hierarchy cell (1, 2) differs from its replay by {worst}");
}

/// `Evaluator::layer_kl` splits the evaluation KL by stochastic layer: after an epoch of
/// training, for a one-layer VAE it is the −ELBO's KL and for a three-layer one its values add
/// up to it (the same draws), the top layer's closed-form KL non-negative (each layer against
/// the f64 reference in family.rs). An autoencoder is refused.
#[test]
fn layer_kl_splits_the_evaluation_kl() {
    let g = gpu();
    let eval = Evaluator::new(g, mnist_subset(g, 150)).unwrap();
    for top in [
        vec![],
        vec![
            TopLatent {
                latent: 6,
                hidden: vec![16],
            },
            TopLatent {
                latent: 2,
                hidden: vec![8],
            },
        ],
    ] {
        let cfg = VaeConfig {
            code: crate::common::hier(&top),
            ..small_config()
        };
        let vae = Vae::new(g, cfg, 3).unwrap();
        let mut tr = Trainer::new(g, &vae, mnist_subset(g, 128), TrainConfig::default()).unwrap();
        tr.train_epoch(|_, _| {}).unwrap();
        let stats = eval.elbo(&vae, 7, false).unwrap();
        let layers = eval.layer_kl(&vae, 7, false).unwrap();
        assert_eq!(layers.len(), top.len() + 1);
        let sum: f64 = layers.iter().sum();
        assert!(
            (sum - stats.kl).abs() <= 1e-5 * stats.kl.abs() + 1e-5,
            "{} layers: {layers:?} add up to {sum}, the -ELBO's KL is {}",
            top.len() + 1,
            stats.kl
        );
        assert!(*layers.last().unwrap() >= 0.0, "{layers:?}");
    }
    let ae = Vae::new(
        g,
        VaeConfig {
            code: Code::Deterministic {
                l1: 0.0,
                contractive: 0.0,
            },
            ..small_config()
        },
        3,
    )
    .unwrap();
    assert!(
        matches!(eval.layer_kl(&ae, 7, false), Err(VaeError::Setting { fields, .. }) if fields == ["VaeConfig::code"])
    );
}

/// A conditional three-layer hierarchical VAE with two draws per example resumes exactly from
/// its checkpoint and training state (every upper layer's networks and Adam moments included).
#[test]
fn deep_conditional_hierarchy_resumes_exactly() {
    let g = gpu();
    let cfg = VaeConfig {
        hidden: vec![64],
        latent: 8,
        classes: 10,
        code: Code::Hierarchical(vec![
            TopLatent {
                latent: 6,
                hidden: vec![16],
            },
            TopLatent {
                latent: 2,
                hidden: vec![8],
            },
        ]),
        ..Default::default()
    };
    let tc = TrainConfig {
        batch_size: 64,
        seed: 3,
        mc_samples: 2,
        ..Default::default()
    };
    let run = resumed_run(g, &cfg, &tc, "deep-hier");
    std::fs::remove_dir_all(&run.dir).ok();
}

/// A streamed dataset (the examples on the host, a window of one batch on the device, filled
/// before each step) trains to the resident dataset's numbers bit for bit: two epochs of a
/// conditional model with dynamic binarization and a partial last batch, then two host-driven
/// steps of the next epoch through `record_step`; the streamed device buffers hold one batch.
#[test]
fn a_streamed_dataset_trains_as_the_resident_one() {
    let g = gpu();
    let set = DatasetKind::Mnist
        .load_split(&DatasetKind::Mnist.default_dir(), true)
        .expect("data/mnist is committed");
    let n = 300;
    let (images, labels) = (set.images[..n * 784].to_vec(), set.labels[..n].to_vec());
    let cfg = VaeConfig {
        classes: 10,
        ..small_config()
    };
    let train = TrainConfig {
        batch_size: 64,
        binarize: true,
        seed: 5,
        ..Default::default()
    };
    let mut results = Vec::new();
    for streamed in [false, true] {
        let data = if streamed {
            GpuDataset::streamed(g, "train", images.clone(), n, 784, labels.clone(), 64).unwrap()
        } else {
            GpuDataset::upload(g, "train", &images, n, 784, labels.clone()).unwrap()
        };
        assert_eq!(data.is_streamed(), streamed);
        if streamed {
            // 64 examples of 784 bytes and 64 labels, not 300.
            assert_eq!(data.device_bytes(), (64 * 784 + 64 * 4) as u64);
        }
        let vae = Vae::new(g, cfg.clone(), 9).unwrap();
        let mut tr = Trainer::new(g, &vae, data, train.clone()).unwrap();
        let stats: Vec<_> = (0..2).map(|_| tr.train_epoch(|_, _| {}).unwrap().train).collect();
        for i in 0..2 {
            let mut enc = g.ctx.device.create_command_encoder(&Default::default());
            tr.record_step(&mut enc, i).unwrap();
            g.submit(enc.finish());
        }
        g.ctx.wait().unwrap();
        assert_eq!(tr.stream_seconds() > 0.0, streamed);
        results.push((stats, vae.arena.read_params(g).unwrap()));
    }
    assert_eq!(results[0].0, results[1].0, "metrics");
    assert!(
        results[0].1 == results[1].1,
        "parameters after two epochs and two steps"
    );
}

/// A streamed evaluation set (the examples on the host, a window on the device filled before
/// each batch) evaluates as the resident one, bit for bit: −ELBO with binarization, the
/// importance-weighted bound (K = 10), per-layer KL, posterior means and chosen
/// reconstructions of a conditional hierarchical model, over 1,100 examples in windows of 500,
/// the evaluation batch (a partial last batch); more examples chosen than the window holds
/// are refused.
#[test]
fn a_streamed_test_set_evaluates_as_the_resident_one() {
    let g = gpu();
    let set = DatasetKind::Mnist
        .load_split(&DatasetKind::Mnist.default_dir(), false)
        .expect("data/mnist is committed");
    let n = 1100;
    let (images, labels) = (set.images[..n * 784].to_vec(), set.labels[..n].to_vec());
    let cfg = VaeConfig {
        classes: 10,
        code: Code::Hierarchical(vec![TopLatent {
            latent: 4,
            hidden: vec![16],
        }]),
        ..small_config()
    };
    let vae = Vae::new(g, cfg, 12).unwrap();
    let resident = Evaluator::new(
        g,
        GpuDataset::upload(g, "test", &images, n, 784, labels.clone()).unwrap(),
    )
    .unwrap();
    let streamed = Evaluator::new(
        g,
        GpuDataset::streamed(g, "test", images.clone(), n, 784, labels, 500).unwrap(),
    )
    .unwrap();
    assert!(streamed.data().is_streamed() && streamed.data().window() == 500);
    let chosen = [1099, 3, 517, 3];
    let run = |e: &Evaluator| {
        (
            e.elbo(&vae, 4, true).unwrap(),
            e.iw_nll(&vae, 4, 10, false, |_, _| {}).unwrap(),
            e.layer_kl(&vae, 4, false).unwrap(),
            e.encode_means(&vae, 4).unwrap(),
            e.reconstruct_examples(&vae, 4, &chosen).unwrap(),
        )
    };
    let (a, b) = (run(&resident), run(&streamed));
    assert_eq!(a.0, b.0, "elbo");
    assert_eq!(a.1, b.1, "importance-weighted bound");
    assert_eq!(a.2, b.2, "per-layer KL");
    assert!(a.3 == b.3, "posterior means");
    assert!(a.4 == b.4, "reconstructions");
    let many: Vec<usize> = (0..501).collect();
    let err = streamed.reconstruct_examples(&vae, 4, &many).err();
    assert!(
        matches!(&err, Some(VaeError::Config(m)) if m.contains("window of 500")),
        "{err:?}"
    );
}

/// A loop the host drives — `begin_epoch`, `record_step` into its own encoders, `end_epoch` —
/// trains as `train_epoch` does, bit for bit: two epochs with dynamic binarization and a
/// partial last batch give the same reports and parameters, and the report comes from one
/// readback at the end.
#[test]
fn a_host_driven_epoch_equals_train_epoch() {
    let g = gpu();
    let train = TrainConfig {
        batch_size: 64,
        binarize: true,
        seed: 11,
        ..Default::default()
    };
    let mut results = Vec::new();
    for host_driven in [false, true] {
        let vae = Vae::new(g, small_config(), 4).unwrap();
        let mut tr = Trainer::new(g, &vae, mnist_subset(g, 300), train.clone()).unwrap();
        let mut reports = Vec::new();
        for _ in 0..2 {
            let report = if host_driven {
                tr.begin_epoch().unwrap();
                for i in 0..tr.steps_per_epoch() {
                    let mut enc = g.ctx.device.create_command_encoder(&Default::default());
                    tr.record_step(&mut enc, i).unwrap();
                    g.submit(enc.finish());
                }
                tr.end_epoch().unwrap()
            } else {
                tr.train_epoch(|_, _| {}).unwrap()
            };
            reports.push((report.train, report.steps));
        }
        assert_eq!(tr.epoch, 2);
        results.push((reports, vae.arena.read_params(g).unwrap()));
    }
    assert_eq!(results[0].0, results[1].0, "reports");
    assert!(results[0].1 == results[1].1, "parameters");
}

/// A model loaded for inference holds its parameters alone: a quarter of the trainable
/// arena's bytes (the gradients and both Adam moments are placeholders), the same decodings
/// and test loss bit for bit, and a typed refusal of training.
#[test]
fn a_weights_only_model_infers_as_the_trainable_one() {
    let g = gpu();
    let vae = Vae::new(g, small_config(), 6).unwrap();
    let dir = std::env::temp_dir().join(format!("vae-wgpu-weights-only-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("model.safetensors");
    vae.save(g, &path, &[]).unwrap();
    let full = Vae::load(g, &path).unwrap();
    let lean = Vae::load_weights_only(g, &path).unwrap();
    assert!(full.arena.is_trainable() && !lean.arena.is_trainable());
    let (p_full, g_full, adam_full) = full.arena.device_bytes();
    let (p_lean, g_lean, adam_lean) = lean.arena.device_bytes();
    assert_eq!((p_lean, g_full, adam_full), (p_full, p_full, 2 * p_full));
    assert!(g_lean <= 16 && adam_lean <= 32, "{g_lean} {adam_lean}");
    let z: Vec<f32> = (0..5 * 8).map(|i| (i as f32 * 0.37).sin()).collect();
    assert_eq!(
        vae_wgpu::infer::decode_conditional(g, &full, &z, None).unwrap(),
        vae_wgpu::infer::decode_conditional(g, &lean, &z, None).unwrap()
    );
    let eval = Evaluator::new(g, mnist_subset(g, 200)).unwrap();
    assert_eq!(eval.elbo(&full, 3, false).unwrap(), eval.elbo(&lean, 3, false).unwrap());
    let refused = Trainer::new(g, &lean, mnist_subset(g, 100), TrainConfig::default());
    assert!(
        matches!(&refused, Err(VaeError::Config(m)) if m.contains("weights only")),
        "{:?}",
        refused.err()
    );
    assert!(lean.arena.read_grads(g).is_err());
    std::fs::remove_dir_all(&dir).ok();
}

/// A host's device shared politely: with a storage binding limit too small for the model, the
/// host gets the typed error naming the limit, what was needed and what it granted; on a
/// device created without subgroups the crate runs its fallback matmul and trains to the
/// library's own numbers within the kernels' tolerance.
#[test]
fn a_host_device_with_small_limits_or_no_subgroups() {
    use vae_wgpu::wgpu;
    let _ = gpu();
    let instance = wgpu::Instance::default();
    let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions::default()))
        .expect("GPU tests need an adapter");
    let device_with = |features: wgpu::Features, limits: wgpu::Limits| {
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("host"),
            required_features: features,
            required_limits: limits,
            ..Default::default()
        }))
        .unwrap();
        Gpu::from_device(&adapter.get_info(), device, queue, vae_wgpu::GpuOptions::default()).unwrap()
    };
    let (features, limits) = vae_wgpu::gpu::device_requirements(&adapter);
    let small = wgpu::Limits {
        max_storage_buffer_binding_size: 1 << 20,
        ..limits.clone()
    };
    let tight = device_with(features, small);
    match Vae::new(&tight, VaeConfig::default(), 1) {
        Err(VaeError::BufferTooLarge {
            limit_name,
            limit,
            bytes,
            ..
        }) => {
            assert_eq!((limit_name, limit), ("max_storage_buffer_binding_size", 1 << 20));
            assert!(bytes > 1 << 20, "{bytes}");
        }
        other => panic!("expected the binding limit, got {:?}", other.err()),
    }
    // No subgroups: the fallback matmul, the same training within f32 tolerance.
    let plain = device_with(features - wgpu::Features::SUBGROUP, limits);
    use vae_wgpu::gpu::MatmulStrategy;
    assert_ne!(MatmulStrategy::preferred(&plain).unwrap(), MatmulStrategy::Subgroup);
    let cfg = TrainConfig {
        batch_size: 64,
        seed: 2,
        ..Default::default()
    };
    let mut losses = Vec::new();
    for g in [gpu(), &plain] {
        let vae = Vae::new(g, small_config(), 2).unwrap();
        let mut tr = Trainer::new(g, &vae, mnist_subset(g, 300), cfg.clone()).unwrap();
        losses.push(tr.train_epoch(|_, _| {}).unwrap().train.loss);
    }
    assert!(
        (losses[0] - losses[1]).abs() <= 1e-4 * losses[0].abs(),
        "subgroups {} against the fallback {}",
        losses[0],
        losses[1]
    );
}
