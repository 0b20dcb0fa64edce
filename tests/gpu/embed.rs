//! Embedding: inference recorded into a host's encoder over the host's own buffers, and
//! training from datasets already on the device, against the host-vector API (bit for bit)
//! and an f64 decoder.

use vae_wgpu::data::{DatasetKind, GpuDataset, PixelFormat};
use vae_wgpu::infer::{decode_conditional, prior_latents, Inference};
use vae_wgpu::model::{Arch, Code, ConvArch, Likelihood, TopLatent, Vae, VaeConfig};
use vae_wgpu::train::{Evaluator, TrainConfig, Trainer};
use vae_wgpu::{wgpu, Gpu, Tensor, VaeError};

use crate::common::{assert_close, gpu};
use crate::reference;

/// The first `n` MNIST test images (bytes) and labels.
fn mnist(n: usize) -> (Vec<u8>, Vec<u32>) {
    let set = DatasetKind::Mnist
        .load_split(&DatasetKind::Mnist.default_dir(), false)
        .expect("data/mnist is committed");
    (set.images[..n * 784].to_vec(), set.labels[..n].to_vec())
}

/// A host's buffer of `usage` holding `bytes` from byte `offset` on (written at creation, so
/// it needs no COPY_DST), with room for at least 16 bytes after them.
fn host_buffer(g: &Gpu, offset: u64, bytes: &[u8], usage: wgpu::BufferUsages) -> wgpu::Buffer {
    let size = (offset + bytes.len().max(16) as u64).div_ceil(16) * 16;
    let buf = g.ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("host"),
        size,
        usage,
        mapped_at_creation: true,
    });
    {
        let range = offset..offset + bytes.len() as u64;
        let mut view = buf.slice(range).get_mapped_range_mut().unwrap();
        view.copy_from_slice(bytes);
    }
    buf.unmap();
    buf
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn u32_bytes(v: &[u32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Byte b as the f32 b·(1/255) the byte gather computes.
fn grey(bytes: &[u8]) -> Vec<f32> {
    bytes.iter().map(|&b| b as f32 * (1.0 / 255.0)).collect()
}

/// The decoder's pixel means in f64 from the model's parameters: the MLP's decoder layers on
/// [z | one-hot | zero padding], then the sigmoid (Bernoulli) or the clamp to [0, 1].
fn reference_decode(g: &Gpu, vae: &Vae, z: &[f32], labels: &[u32]) -> Vec<f64> {
    let cfg = &vae.config;
    let params: Vec<Vec<f64>> = vae
        .arena
        .read_params(g)
        .unwrap()
        .iter()
        .map(|t| t.iter().map(|&x| x as f64).collect())
        .collect();
    let layers = reference::layers(cfg);
    let first = cfg.hidden.len() + 1;
    let n = z.len() / cfg.latent;
    let z: Vec<f64> = z.iter().map(|&v| v as f64).collect();
    let mut h = if cfg.classes > 0 {
        reference::with_one_hot(&z, cfg.latent, labels, cfg.dec_input_dim())
    } else {
        reference::zero_padded(&z, cfg.latent, cfg.dec_input_dim())
    };
    for (k, layer) in layers.iter().enumerate().skip(first) {
        h = reference::dense_forward(layer, &h, n, &params[2 * k], &params[2 * k + 1]).1;
    }
    match cfg.likelihood {
        Likelihood::Bernoulli => h.iter().map(|&l| reference::sigmoid(l)).collect(),
        _ => h.iter().map(|&m| m.clamp(0.0, 1.0)).collect(),
    }
}

fn models() -> Vec<VaeConfig> {
    vec![
        // Z = 6: the code columns are copied one by one, not as vec4s.
        VaeConfig {
            hidden: vec![32],
            latent: 6,
            ..Default::default()
        },
        VaeConfig {
            hidden: vec![32],
            latent: 4,
            classes: 10,
            likelihood: Likelihood::Gaussian { variance: 0.1 },
            ..Default::default()
        },
        // Convolutions, conditional: the one-hot joins at the dense layers.
        VaeConfig {
            arch: Arch::Conv(ConvArch {
                input: [1, 28, 28],
                channels: vec![4, 8],
            }),
            hidden: vec![16],
            latent: 4,
            classes: 10,
            ..Default::default()
        },
    ]
}

/// Encode, reconstruct, decode (of the encoder's own output, on the device) and prior draws
/// recorded into one host encoder over host buffers — the images' buffer without COPY_SRC
/// and at an offset — equal the host API bit for bit (the evaluator's posterior means and
/// reconstructions of the same images as bytes, `decode_conditional` of the read-back means),
/// the dense decoder agrees with an f64 decoder, the prior draws with the host's f64 draws
/// (decoded in f64, or by the crate for the convolutional model), and a second recording
/// builds no plan.
#[test]
fn device_buffer_inference_equals_the_host_api() {
    let g = gpu();
    let n = 7;
    let (bytes, labels) = mnist(n);
    let align = g.ctx.device.limits().min_storage_buffer_offset_alignment as u64;
    let storage = wgpu::BufferUsages::STORAGE;
    let readable = storage | wgpu::BufferUsages::COPY_SRC;
    for (m, cfg) in models().into_iter().enumerate() {
        let vae = Vae::new(g, cfg.clone(), 30 + m as u64).unwrap();
        let conditional = cfg.classes > 0;
        let (d, zd) = (cfg.input_dim, cfg.latent);
        let x_buf = host_buffer(g, align, &f32_bytes(&grey(&bytes)), storage);
        let l_buf = host_buffer(g, 0, &u32_bytes(&labels), storage);
        let outputs: Vec<wgpu::Buffer> = (0..4)
            .map(|_| host_buffer(g, 0, &vec![0; 4 * n * d], readable))
            .collect();
        let x = g.wrap_buffer("x", &x_buf, align, &[n, d]).unwrap();
        let l = g.wrap_buffer("labels", &l_buf, 0, &[n]).unwrap();
        let l = conditional.then_some(&l);
        let means = g.wrap_buffer("means", &outputs[0], 0, &[n, zd]).unwrap();
        let recon = g.wrap_buffer("recon", &outputs[1], 0, &[n, d]).unwrap();
        let decoded = g.wrap_buffer("decoded", &outputs[2], 0, &[n, d]).unwrap();
        let sampled = g.wrap_buffer("sampled", &outputs[3], 0, &[n, d]).unwrap();
        let mut inf = Inference::new(g, &vae).unwrap();
        let record = |inf: &mut Inference| {
            let mut enc = g.ctx.device.create_command_encoder(&Default::default());
            inf.record_encode(&mut enc, &x, l, &means).unwrap();
            inf.record_reconstruct(&mut enc, &x, l, 5, &recon).unwrap();
            inf.record_decode(&mut enc, &means, l, &decoded).unwrap();
            inf.record_sample_prior(&mut enc, 9, 0.8, l, &sampled).unwrap();
            g.submit(enc.finish());
        };
        record(&mut inf);
        let read = |t: &Tensor| g.read(t).unwrap();
        let (got_means, got_recon, got_decoded, got_sampled) =
            (read(&means), read(&recon), read(&decoded), read(&sampled));

        let eval = Evaluator::new(g, GpuDataset::upload(g, "x", &bytes, n, d, labels.clone()).unwrap()).unwrap();
        assert!(got_means == eval.encode_means(&vae, 0).unwrap(), "model {m}: means");
        let chosen: Vec<usize> = (0..n).collect();
        assert!(
            got_recon == eval.reconstruct_examples(&vae, 5, &chosen).unwrap().1,
            "model {m}: reconstructions"
        );
        let host_labels = conditional.then_some(&labels[..]);
        assert!(
            got_decoded == decode_conditional(g, &vae, &got_means, host_labels).unwrap(),
            "model {m}: decodings"
        );
        let z = prior_latents(g, &vae, 9, n, 0.8, host_labels).unwrap();
        if vae.config.conv().is_none() {
            let want = reference_decode(g, &vae, &got_means, &labels);
            assert_close(&format!("model {m}: decoder"), &got_decoded, &want, |_| 1e-5);
            let want = reference_decode(g, &vae, &z, &labels);
            assert_close(&format!("model {m}: prior draws"), &got_sampled, &want, |_| 1e-4);
        } else {
            // The convolutional decoder against the host's f64 draws decoded by the crate.
            let want: Vec<f64> = decode_conditional(g, &vae, &z, host_labels)
                .unwrap()
                .iter()
                .map(|&v| v as f64)
                .collect();
            assert_close(&format!("model {m}: prior draws"), &got_sampled, &want, |_| 1e-4);
        }

        let (plans, built) = (inf.plans_cached(), inf.plans_built());
        record(&mut inf);
        assert_eq!(
            (inf.plans_cached(), inf.plans_built()),
            (plans, built),
            "model {m}: plans"
        );
        assert!(read(&recon) == got_recon && read(&sampled) == got_sampled);
        // The host-vector methods are the same plans.
        let xs = grey(&bytes);
        let ls = conditional.then_some(&labels[..]);
        assert!(inf.encode(&xs, ls).unwrap() == got_means);
        assert!(inf.reconstruct(&xs, ls, 5).unwrap() == got_recon);
        assert!(inf.sample_prior(n, 9, 0.8, ls).unwrap() == got_sampled);
    }
}

/// A conditional hierarchy's prior draws on the device (z₂ from N(0, I), z₁ from
/// p(z₁|z₂, y) on the device) decode to the host's f64 draws' images.
#[test]
fn device_prior_draws_of_a_conditional_hierarchy() {
    let g = gpu();
    let cfg = VaeConfig {
        hidden: vec![32],
        latent: 4,
        classes: 10,
        code: Code::Hierarchical(vec![TopLatent {
            latent: 2,
            hidden: vec![8],
        }]),
        ..Default::default()
    };
    let vae = Vae::new(g, cfg, 12).unwrap();
    let labels = [3u32, 1, 4, 1, 5];
    let mut inf = Inference::new(g, &vae).unwrap();
    let got = inf.sample_prior(5, 21, 1.3, Some(&labels)).unwrap();
    let z = prior_latents(g, &vae, 21, 5, 1.3, Some(&labels)).unwrap();
    assert_close(
        "hierarchy's prior draws",
        &got,
        &reference_decode(g, &vae, &z, &labels),
        |_| 1e-4,
    );
    assert!(inf.sample_prior(5, 21, 1.3, None).is_err());

    // Three stochastic layers, unconditional: the layer between draws into its own rows.
    let cfg = VaeConfig {
        hidden: vec![32],
        latent: 4,
        code: Code::Hierarchical(vec![
            TopLatent {
                latent: 6,
                hidden: vec![8],
            },
            TopLatent {
                latent: 2,
                hidden: vec![8, 8],
            },
        ]),
        ..Default::default()
    };
    let vae = Vae::new(g, cfg, 13).unwrap();
    let got = Inference::new(g, &vae).unwrap().sample_prior(6, 4, 0.7, None).unwrap();
    let z = prior_latents(g, &vae, 4, 6, 0.7, None).unwrap();
    assert_close(
        "three layers' prior draws",
        &got,
        &reference_decode(g, &vae, &z, &[]),
        |_| 1e-4,
    );
}

/// Host buffers that cannot serve, and calls that do not fit the model, are typed errors
/// naming what is wrong.
#[test]
fn host_buffers_and_shapes_are_checked() {
    let g = gpu();
    let vae = Vae::new(g, models()[0].clone(), 1).unwrap();
    let d = vae.config.input_dim;
    let no_storage = host_buffer(g, 0, &vec![0; 4 * d], wgpu::BufferUsages::COPY_SRC);
    let err = g.wrap_buffer("x", &no_storage, 0, &[1, d]).err();
    assert!(
        matches!(&err, Some(VaeError::HostBuffer { problem, .. }) if problem.contains("STORAGE")),
        "{err:?}"
    );
    let buf = host_buffer(g, 0, &vec![0; 4 * 2 * d], wgpu::BufferUsages::STORAGE);
    let err = g.wrap_buffer("x", &buf, 4, &[1, d]).err();
    assert!(
        matches!(&err, Some(VaeError::HostBuffer { problem, .. }) if problem.contains("min_storage_buffer_offset_alignment")),
        "{err:?}"
    );
    let err = g.wrap_buffer("x", &buf, 0, &[3, d]).err();
    assert!(
        matches!(&err, Some(VaeError::HostBuffer { what, problem }) if what.contains("x [3, 784]") && problem.contains("needs 9408")),
        "{err:?}"
    );
    let x = g.wrap_buffer("x", &buf, 0, &[2, d]).unwrap();
    let wrong = g.wrap_buffer("means", &buf, 0, &[2, 4]).unwrap();
    let mut inf = Inference::new(g, &vae).unwrap();
    let mut enc = g.ctx.device.create_command_encoder(&Default::default());
    let err = inf.record_encode(&mut enc, &x, None, &wrong).err();
    assert!(
        matches!(&err, Some(VaeError::Shape(m)) if m.contains("means must be [2, 6]")),
        "{err:?}"
    );
    let err = inf.record_encode(&mut enc, &x, Some(&x), &wrong).err();
    assert!(
        matches!(&err, Some(VaeError::Config(m)) if m.contains("not conditional")),
        "{err:?}"
    );
    let ae = Vae::new(
        g,
        VaeConfig {
            code: Code::Deterministic {
                l1: 0.0,
                contractive: 0.0,
            },
            ..models()[0].clone()
        },
        1,
    )
    .unwrap();
    let err = Inference::new(g, &ae).unwrap().sample_prior(2, 0, 1.0, None).err();
    assert!(
        matches!(&err, Some(VaeError::Config(m)) if m.contains("no prior")),
        "{err:?}"
    );
    let vq = VaeConfig {
        code: Code::Quantized {
            codes: 8,
            groups: 1,
            commitment: 0.25,
        },
        ..models()[0].clone()
    };
    let vq = Vae::new(g, vq, 1).unwrap();
    let err = Inference::new(g, &vq).unwrap().sample_prior(2, 0, 1.0, None).err();
    assert!(
        matches!(&err, Some(VaeError::Config(m)) if m.contains("no prior")),
        "{err:?}"
    );

    // A conditional model's labels must be [n].
    let cvae = Vae::new(g, models()[1].clone(), 1).unwrap();
    let means = g.wrap_buffer("means", &buf, 0, &[2, 4]).unwrap();
    let short = g.wrap_buffer("labels", &buf, 0, &[1]).unwrap();
    let err = Inference::new(g, &cvae)
        .unwrap()
        .record_encode(&mut enc, &x, Some(&short), &means)
        .err();
    assert!(
        matches!(&err, Some(VaeError::Shape(m)) if m.contains("labels must be [2]")),
        "{err:?}"
    );

    // A buffer of another device is refused when it is wrapped.
    let instance = wgpu::Instance::default();
    let adapter = pollster::block_on(instance.request_adapter(&Default::default())).unwrap();
    let (other, _queue) = pollster::block_on(adapter.request_device(&Default::default())).unwrap();
    let foreign = other.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: 4 * d as u64,
        usage: wgpu::BufferUsages::STORAGE,
        mapped_at_creation: false,
    });
    let err = g.wrap_buffer("x", &foreign, 0, &[1, d]).err();
    assert!(
        matches!(&err, Some(VaeError::HostBuffer { problem, .. }) if problem.contains("another wgpu::Device")),
        "{err:?}"
    );
}

/// Plans are cached by buffer and offset: two views of one buffer at different offsets are
/// two plans, each writing its own rows; past the cache's size the least recently recorded
/// plans leave it, and a plan recorded all along stays (recording it builds nothing).
#[test]
fn plans_are_cached_by_buffer_and_offset_and_evicted_least_recent_first() {
    let g = gpu();
    let vae = Vae::new(g, models()[0].clone(), 2).unwrap();
    let (d, zd) = (vae.config.input_dim, vae.config.latent);
    let align = g.ctx.device.limits().min_storage_buffer_offset_alignment as usize;
    let z: Vec<f32> = (0..2 * zd).map(|i| (i as f32 * 0.9).sin()).collect();
    let codes = host_buffer(g, 0, &f32_bytes(&z), wgpu::BufferUsages::STORAGE);
    let span = (4 * d).div_ceil(align) * align;
    let out = host_buffer(
        g,
        0,
        &vec![0; 2 * span],
        wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
    );
    let z_t = g.wrap_buffer("z", &codes, 0, &[1, zd]).unwrap();
    let views: Vec<Tensor> = (0..2)
        .map(|i| g.wrap_buffer("images", &out, (i * span) as u64, &[1, d]).unwrap())
        .collect();
    let mut inf = Inference::new(g, &vae).unwrap();
    let mut enc = g.ctx.device.create_command_encoder(&Default::default());
    for v in &views {
        inf.record_decode(&mut enc, &z_t, None, v).unwrap();
    }
    g.submit(enc.finish());
    assert_eq!(inf.plans_cached(), 2);
    let want = decode_conditional(g, &vae, &z[..zd], None).unwrap();
    for v in &views {
        assert!(g.read(v).unwrap() == want);
    }

    let x = g.upload("x", &[1, d], &grey(&mnist(1).0)).unwrap();
    let max = vae_wgpu::infer::MAX_CACHED_PLANS as u64;
    for seed in 0..max + 10 {
        let mut enc = g.ctx.device.create_command_encoder(&Default::default());
        inf.record_reconstruct(&mut enc, &x, None, seed, &views[1]).unwrap();
        let built = inf.plans_built();
        inf.record_decode(&mut enc, &z_t, None, &views[0]).unwrap();
        g.submit(enc.finish());
        assert_eq!(
            inf.plans_built(),
            built,
            "the decode plan left the cache at seed {seed}"
        );
    }
    assert_eq!(inf.plans_cached() as u64, max);
    // The second view's decode plan was the least recently recorded: it was rebuilt.
    let built = inf.plans_built();
    let mut enc = g.ctx.device.create_command_encoder(&Default::default());
    inf.record_decode(&mut enc, &z_t, None, &views[1]).unwrap();
    assert_eq!(inf.plans_built(), built + 1);
}

/// Training from a dataset the host already holds on the device — bytes four per word, or
/// f32 grey levels b·(1/255), with u32 labels — driven by the host (`begin_epoch`,
/// `record_step`, `end_epoch`) equals `train_epoch` on the uploaded bytes bit for bit: a
/// conditional model on grey levels and with dynamic binarization, a partial last batch, two
/// epochs.
#[test]
fn host_driven_training_from_device_datasets_equals_train_epoch() {
    let g = gpu();
    let n = 150;
    let (bytes, labels) = mnist(n);
    let cfg = VaeConfig {
        hidden: vec![32],
        latent: 4,
        classes: 10,
        ..Default::default()
    };
    let storage = wgpu::BufferUsages::STORAGE;
    let mut results = Vec::new();
    for (source, binarize) in ["upload", "u8", "f32"].iter().flat_map(|&s| [(s, false), (s, true)]) {
        let train = TrainConfig {
            batch_size: 64,
            binarize,
            seed: 3,
            ..Default::default()
        };
        let data = match source {
            "upload" => GpuDataset::upload(g, "train", &bytes, n, 784, labels.clone()).unwrap(),
            _ => {
                let (pixels, format, len) = if source == "u8" {
                    (bytes.clone(), PixelFormat::U8, n * 784 / 4)
                } else {
                    (f32_bytes(&grey(&bytes)), PixelFormat::F32, n * 784)
                };
                let p = host_buffer(g, 0, &pixels, storage);
                let l = host_buffer(g, 0, &u32_bytes(&labels), storage);
                let p = g.wrap_buffer("pixels", &p, 0, &[len]).unwrap();
                let l = g.wrap_buffer("labels", &l, 0, &[n]).unwrap();
                GpuDataset::from_device(p, format, n, 784, Some(l)).unwrap()
            }
        };
        let vae = Vae::new(g, cfg.clone(), 8).unwrap();
        let mut tr = Trainer::new(g, &vae, data, train.clone()).unwrap();
        let mut reports = Vec::new();
        for _ in 0..2 {
            let report = if source == "upload" {
                tr.train_epoch(|_, _| {}).unwrap()
            } else {
                tr.begin_epoch().unwrap();
                for i in 0..tr.steps_per_epoch() {
                    let mut enc = g.ctx.device.create_command_encoder(&Default::default());
                    tr.record_step(&mut enc, i).unwrap();
                    g.submit(enc.finish());
                }
                tr.end_epoch().unwrap()
            };
            reports.push((report.train, report.steps));
        }
        results.push((source, binarize, reports, vae.arena.read_params(g).unwrap()));
    }
    for (source, binarize, reports, params) in &results[2..] {
        let want = &results[*binarize as usize];
        assert_eq!(reports, &want.2, "{source}, binarize {binarize}: reports");
        assert!(params == &want.3, "{source}, binarize {binarize}: parameters");
    }
    let wrong = g
        .wrap_buffer("pixels", &host_buffer(g, 0, &[0; 64], storage), 0, &[16])
        .unwrap();
    let err = GpuDataset::from_device(wrong, PixelFormat::F32, 2, 784, None).err();
    assert!(
        matches!(&err, Some(VaeError::Shape(m)) if m.contains("needs 1568 words")),
        "{err:?}"
    );
}

/// Labels beyond 256 classes reach the one-hot columns they name: a 300-class conditional
/// model decodes labels 299 and 256 as an f64 decoder with those one-hots does (a byte label
/// would have become 43 and 0), trains on a dataset whose labels run to 299, and encodes the
/// same image differently under labels 299 and 43.
#[test]
fn labels_beyond_256_classes() {
    let g = gpu();
    let cfg = VaeConfig {
        hidden: vec![16],
        latent: 4,
        classes: 300,
        ..Default::default()
    };
    let vae = Vae::new(g, cfg, 5).unwrap();
    let labels = [299u32, 256, 43, 0];
    let z: Vec<f32> = (0..16).map(|i| (i as f32 * 0.7).cos()).collect();
    let got = decode_conditional(g, &vae, &z, Some(&labels)).unwrap();
    assert_close("decodings", &got, &reference_decode(g, &vae, &z, &labels), |_| 1e-5);
    assert!(got[..784] != got[2 * 784..3 * 784], "labels 299 and 43 decode alike");

    let (bytes, _) = mnist(64);
    let wide: Vec<u32> = (0..64).map(|i| 250 + i % 50).collect();
    let data = GpuDataset::upload(g, "train", &bytes, 64, 784, wide).unwrap();
    let config = TrainConfig {
        batch_size: 32,
        ..Default::default()
    };
    let report = Trainer::new(g, &vae, data, config.clone())
        .unwrap()
        .train_epoch(|_, _| {})
        .unwrap();
    assert!(report.train.loss.is_finite());
    let beyond: Vec<u32> = (0..64).map(|i| 270 + i).collect();
    let data = GpuDataset::upload(g, "train", &bytes, 64, 784, beyond).unwrap();
    let err = Trainer::new(g, &vae, data, config).err();
    assert!(
        matches!(&err, Some(VaeError::Config(m)) if m.contains("label 300") && m.contains("300 classes")),
        "{:?}",
        err.map(|e| e.to_string())
    );
    let mut inf = Inference::new(g, &vae).unwrap();
    let x = grey(&bytes[..784]);
    assert!(inf.encode(&x, Some(&[299])).unwrap() != inf.encode(&x, Some(&[43])).unwrap());
}
