//! A host program that uses vae-wgpu as its GPU backend. It owns the wgpu device, the queue
//! and every buffer it reads or writes; the crate records its kernels into the host's command
//! encoders. `cargo run --release --example embed [-- --checkpoint FILE] [--out DIR]`.
//!
//! 1. The host creates its device and hands it to the crate (`Gpu::from_device`).
//! 2. The model comes from a `train_mnist` checkpoint or, without one, from a few hundred
//!    steps of training that the host drives itself (`begin_epoch`, `record_step`,
//!    `end_epoch`). The MNIST bytes sit in the host's own buffer.
//! 3. A walk through latent space (slerp between prior draws) is decoded frame by frame into
//!    the host's frame buffer (`Inference::record_decode`), one readback per frame, and
//!    written as a PNG strip with one walk per row.
//! 4. The model is fine-tuned on data unlike its training set: inverted digits that the host
//!    makes and uploads as f32 values. The loss is printed every 50 steps, one readback each.
//!    The inverted test digits' reconstructions are written before and after.

mod common;

use std::path::PathBuf;

use clap::Parser;

use vae_wgpu::data::{DatasetKind, GpuDataset, PixelFormat};
use vae_wgpu::explore::slerp;
use vae_wgpu::infer::{prior_latents, Inference};
use vae_wgpu::model::{Vae, VaeConfig};
use vae_wgpu::train::{TrainConfig, Trainer};
use vae_wgpu::wgpu;
use vae_wgpu::{Gpu, GpuOptions, Result, VaeError};

/// A host application embedding vae-wgpu: its own device and buffers, a latent walk decoded
/// on the GPU, and fine-tuning on data it makes itself.
#[derive(Parser, Debug)]
#[command(name = "embed")]
struct Args {
    /// A train_mnist checkpoint (or run directory) to start from; without one, the host
    /// trains a model first
    #[arg(long, value_name = "FILE|DIR")]
    checkpoint: Option<PathBuf>,
    /// Directory for the PNGs (created if missing)
    #[arg(long, value_name = "DIR", default_value = "embed-out")]
    out: PathBuf,
    /// Without --checkpoint: epochs of 100 steps (batch 128) on 12,800 MNIST digits
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = common::positive)]
    pretrain_epochs: usize,
    /// Frames of the latent walk
    #[arg(long, value_name = "N", default_value_t = 48, value_parser = common::positive)]
    frames: usize,
    /// Epochs of 50 fine-tuning steps (batch 128) on 6,400 inverted digits
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = common::positive)]
    finetune_epochs: usize,
    /// Seed of the training orders, the prior draws and the reconstructions
    #[arg(long, value_name = "N", default_value_t = 1)]
    seed: u64,
}

/// Walks decoded side by side in every frame.
const WALKS: usize = 8;
/// Prior draws each walk passes through (it returns to the first).
const KEYFRAMES: usize = 4;
/// Examples per step.
const BATCH: usize = 128;
/// Fine-tuning steps per printed loss.
const REPORT_EVERY: usize = 50;
/// Inverted test digits reconstructed before and after fine-tuning.
const SHOWN: usize = 16;

fn run(args: Args) -> Result<()> {
    std::fs::create_dir_all(&args.out).map_err(|e| VaeError::io(&args.out, e))?;
    let (device, queue, gpu) = host_device()?;
    let r = gpu.report();
    println!("the host's device: {} | backend {:?}", r.name, r.backend);
    let vae = model(&gpu, &args)?;
    let cfg = vae.config.clone();
    if cfg.input_dim != 784 || !cfg.is_vae() || !matches!(cfg.classes, 0 | 10) {
        return Err(VaeError::Config(format!(
            "embed walks a VAE's prior over MNIST digits and fine-tunes on them: it needs 784 values \
             per image, a code with a prior and no classes or MNIST's 10; the checkpoint has {}, code \
             {} and {} classes",
            cfg.input_dim,
            vae_wgpu::model::code_name(&cfg.code),
            cfg.classes
        )));
    }
    let mut inference = Inference::new(&gpu, &vae)?;
    walk(&device, &queue, &gpu, &mut inference, &args)?;
    drop(inference);
    fine_tune(&device, &gpu, &vae, &args)
}

/// The host's device: its own instance, adapter and device with the adapter's limits and,
/// where the adapter has them, subgroups. The crate gets clones of the handles and asks for
/// nothing beyond what was granted.
fn host_device() -> Result<(wgpu::Device, wgpu::Queue, Gpu)> {
    let instance = wgpu::Instance::default();
    let adapter =
        pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions::default())).map_err(|e| {
            VaeError::NoAdapter {
                tried: format!("the default adapter ({e})"),
            }
        })?;
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some("host"),
        required_features: adapter.features() & wgpu::Features::SUBGROUP,
        required_limits: adapter.limits(),
        ..Default::default()
    }))
    .map_err(|e| VaeError::DeviceRequest(e.to_string()))?;
    let gpu = Gpu::from_device(
        &adapter.get_info(),
        device.clone(),
        queue.clone(),
        GpuOptions::default(),
    )?;
    Ok((device, queue, gpu))
}

/// The checkpoint's model, or one the host trains: MNIST's bytes in a host buffer (four pixels
/// per u32 word), its labels beside them, a host-driven loop.
fn model(gpu: &Gpu, args: &Args) -> Result<Vae> {
    if let Some(path) = &args.checkpoint {
        let path = common::checkpoint_file(path)?;
        let vae = Vae::load(gpu, &path)?;
        println!("model: {} ({} parameters)", path.display(), vae.num_params());
        return Ok(vae);
    }
    let (bytes, labels) = mnist(true, 12_800)?;
    let vae = Vae::new(gpu, VaeConfig::default(), args.seed)?;
    let words = host_storage(gpu, "mnist", bytemuck::cast_slice(&bytes), false);
    let data = device_dataset(gpu, &words, PixelFormat::U8, &labels, &vae.config)?;
    let config = TrainConfig {
        batch_size: BATCH,
        seed: args.seed,
        ..Default::default()
    };
    let mut trainer = Trainer::new(gpu, &vae, data, config)?;
    for epoch in 1..=args.pretrain_epochs {
        let report = host_driven_epoch(gpu, &mut trainer)?;
        println!(
            "pretraining: steps {:>4} loss {:.2} ({:.0} samples/s)",
            epoch * report.steps,
            report.train.loss,
            report.samples_per_sec
        );
    }
    Ok(vae)
}

/// One epoch driven by the host: the order written, each step recorded into the host's own
/// encoder and submitted, one readback at the end.
fn host_driven_epoch(gpu: &Gpu, trainer: &mut Trainer) -> Result<vae_wgpu::train::EpochReport> {
    trainer.begin_epoch()?;
    for i in 0..trainer.steps_per_epoch() {
        let mut encoder = gpu.ctx.device.create_command_encoder(&Default::default());
        // A host would record its own passes around the step here.
        trainer.record_step(&mut encoder, i)?;
        gpu.ctx.queue.submit([encoder.finish()]);
    }
    trainer.end_epoch()
}

/// The latent walk: each frame's codes written into the host's code buffer, decoded into its
/// frame buffer, copied into its staging buffer and read back once.
fn walk(device: &wgpu::Device, queue: &wgpu::Queue, gpu: &Gpu, inference: &mut Inference, args: &Args) -> Result<()> {
    let cfg = inference.vae().config.clone();
    let (zd, d) = (cfg.latent, cfg.input_dim);
    // A conditional model walks walk w's class w mod classes.
    let labels: Vec<u32> = (0..WALKS).map(|w| (w % cfg.classes.max(1)) as u32).collect();
    let conditional = cfg.classes > 0;
    let keys: Vec<Vec<f32>> = (0..KEYFRAMES)
        .map(|k| {
            let seed = args.seed.wrapping_mul(1000).wrapping_add(k as u64);
            prior_latents(
                gpu,
                inference.vae(),
                seed,
                WALKS,
                1.0,
                conditional.then_some(&labels[..]),
            )
        })
        .collect::<Result<_>>()?;

    let z_buf = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("host codes"),
        size: padded(WALKS * zd),
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let frame_buf = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("host frame"),
        size: padded(WALKS * d),
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    });
    let staging = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("host staging"),
        size: padded(WALKS * d),
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let label_buf = host_storage(gpu, "walk labels", bytemuck::cast_slice(&labels), false);
    let z = gpu.wrap_buffer("codes", &z_buf, 0, &[WALKS, zd])?;
    let frame = gpu.wrap_buffer("frame", &frame_buf, 0, &[WALKS, d])?;
    let label_t = gpu.wrap_buffer("labels", &label_buf, 0, &[WALKS])?;
    let label_t = conditional.then_some(&label_t);

    let mut frames = Vec::with_capacity(args.frames);
    let started = std::time::Instant::now();
    for f in 0..args.frames {
        let t = f as f32 * KEYFRAMES as f32 / args.frames as f32;
        let (k, frac) = (t.floor() as usize, t.fract());
        let mut codes = Vec::with_capacity(WALKS * zd);
        for w in 0..WALKS {
            let a = &keys[k][w * zd..(w + 1) * zd];
            let b = &keys[(k + 1) % KEYFRAMES][w * zd..(w + 1) * zd];
            codes.extend(slerp(a, b, frac));
        }
        queue.write_buffer(&z_buf, 0, bytemuck::cast_slice(&codes));
        let mut encoder = device.create_command_encoder(&Default::default());
        inference.record_decode(&mut encoder, &z, label_t, &frame)?;
        let bytes = (4 * WALKS * d) as u64;
        encoder.copy_buffer_to_buffer(&frame_buf, 0, &staging, 0, bytes);
        queue.submit([encoder.finish()]);
        frames.push(read_staging(device, &staging, bytes)?);
    }
    let seconds = started.elapsed().as_secs_f64();
    // One walk per row: walk w's image in every frame, in time order.
    let images: Vec<f32> = (0..WALKS)
        .flat_map(|w| frames.iter().flat_map(move |f| &f[w * d..(w + 1) * d]))
        .copied()
        .collect();
    let path = args.out.join("walk.png");
    vae_wgpu::io::write_grid_png(&path, &images, WALKS * args.frames, 28, 28, args.frames, 1)?;
    println!(
        "walk: {} frames of {WALKS} digits decoded into the host's buffer, one readback each \
         ({:.1} ms per frame) -> {}",
        args.frames,
        1000.0 * seconds / args.frames as f64,
        path.display()
    );
    Ok(())
}

/// Fine-tuning on inverted digits (1 − x) that the host makes and uploads as f32 values: the
/// loss printed every 50 steps, and the inverted test digits' reconstructions before and after.
fn fine_tune(device: &wgpu::Device, gpu: &Gpu, vae: &Vae, args: &Args) -> Result<()> {
    let (bytes, labels) = mnist(true, REPORT_EVERY * BATCH)?;
    let inverted: Vec<f32> = bytes.iter().map(|&b| 1.0 - b as f32 / 255.0).collect();
    let buf = host_storage(gpu, "inverted", bytemuck::cast_slice(&inverted), false);
    let data = device_dataset(gpu, &buf, PixelFormat::F32, &labels, &vae.config)?;

    let (test_bytes, test_labels) = mnist(false, SHOWN)?;
    let shown: Vec<f32> = test_bytes.iter().map(|&b| 1.0 - b as f32 / 255.0).collect();
    let d = vae.config.input_dim;
    let x_buf = host_storage(gpu, "shown", bytemuck::cast_slice(&shown), false);
    let l_buf = host_storage(gpu, "shown labels", bytemuck::cast_slice(&test_labels), false);
    let out_buf = host_storage(gpu, "reconstructions", &vec![0; 4 * SHOWN * d], true);
    let x = gpu.wrap_buffer("inverted digits", &x_buf, 0, &[SHOWN, d])?;
    let l = gpu.wrap_buffer("labels", &l_buf, 0, &[SHOWN])?;
    let l = (vae.config.classes > 0).then_some(&l);
    let out = gpu.wrap_buffer("reconstructions", &out_buf, 0, &[SHOWN, d])?;
    let reconstruct = |name: &str| -> Result<()> {
        let mut inference = Inference::new(gpu, vae)?;
        let mut encoder = device.create_command_encoder(&Default::default());
        inference.record_reconstruct(&mut encoder, &x, l, args.seed, &out)?;
        gpu.ctx.queue.submit([encoder.finish()]);
        let mut images = shown.clone();
        images.extend(gpu.read(&out)?);
        let path = args.out.join(name);
        vae_wgpu::io::write_grid_png(&path, &images, 2 * SHOWN, 28, 28, SHOWN, 1)?;
        println!(
            "inverted test digits (top) and their reconstructions -> {}",
            path.display()
        );
        Ok(())
    };
    reconstruct("inverted-before.png")?;

    let config = TrainConfig {
        batch_size: BATCH,
        seed: args.seed.wrapping_add(1),
        ..Default::default()
    };
    let mut trainer = Trainer::new(gpu, vae, data, config)?;
    let mut losses = Vec::new();
    for epoch in 1..=args.finetune_epochs {
        let report = host_driven_epoch(gpu, &mut trainer)?;
        println!(
            "fine-tuning on inverted digits: steps {:>4} mean loss over the last {} steps {:.2}",
            epoch * report.steps,
            report.steps,
            report.train.loss
        );
        losses.push(report.train.loss);
    }
    if let (Some(first), Some(last)) = (losses.first(), losses.last()) {
        println!("fine-tuning: mean loss over the first {REPORT_EVERY} steps {first:.2}, over the last {REPORT_EVERY} steps {last:.2}");
    }
    reconstruct("inverted-after.png")
}

/// The first `n` images (bytes) and labels of MNIST's training or test split.
fn mnist(train: bool, n: usize) -> Result<(Vec<u8>, Vec<u32>)> {
    let set = DatasetKind::Mnist.load_split(&DatasetKind::Mnist.default_dir(), train)?;
    let n = n.min(set.count);
    Ok((set.images[..n * 784].to_vec(), set.labels[..n].to_vec()))
}

/// A dataset over the host's pixel buffer and, for a conditional model, a labels buffer the
/// host makes beside it.
fn device_dataset(
    gpu: &Gpu,
    pixels: &wgpu::Buffer,
    format: PixelFormat,
    labels: &[u32],
    cfg: &VaeConfig,
) -> Result<GpuDataset> {
    let n = labels.len();
    let words = match format {
        PixelFormat::U8 => n * 784 / 4,
        PixelFormat::F32 => n * 784,
    };
    let pixels = gpu.wrap_buffer("pixels", pixels, 0, &[words])?;
    let labels = if cfg.classes > 0 {
        let buf = host_storage(gpu, "labels", bytemuck::cast_slice(labels), false);
        Some(gpu.wrap_buffer("labels", &buf, 0, &[n])?)
    } else {
        None
    };
    GpuDataset::from_device(pixels, format, n, 784, labels)
}

/// A host storage buffer holding `bytes`, written at creation; `readable` adds COPY_SRC.
fn host_storage(gpu: &Gpu, label: &str, bytes: &[u8], readable: bool) -> wgpu::Buffer {
    let mut usage = wgpu::BufferUsages::STORAGE;
    if readable {
        usage |= wgpu::BufferUsages::COPY_SRC;
    }
    let buf = gpu.ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size: padded(bytes.len().div_ceil(4)),
        usage,
        mapped_at_creation: true,
    });
    buf.slice(..bytes.len() as u64)
        .get_mapped_range_mut()
        .expect("a buffer mapped at creation")
        .copy_from_slice(bytes);
    buf.unmap();
    buf
}

/// Bytes of `n` f32 values, rounded up to whole 16-byte vectors.
fn padded(n: usize) -> u64 {
    (4 * n.max(4)).div_ceil(16) as u64 * 16
}

/// Maps the host's staging buffer and reads `bytes` of f32 values (the host's own readback).
fn read_staging(device: &wgpu::Device, staging: &wgpu::Buffer, bytes: u64) -> Result<Vec<f32>> {
    let slice = staging.slice(..bytes);
    let (tx, rx) = std::sync::mpsc::channel();
    slice.map_async(wgpu::MapMode::Read, move |r| {
        let _ = tx.send(r);
    });
    device
        .poll(wgpu::PollType::wait_indefinitely())
        .map_err(|e| VaeError::Gpu(format!("waiting for the frame: {e}")))?;
    rx.recv()
        .map_err(|e| VaeError::Readback(e.to_string()))?
        .map_err(|e| VaeError::Readback(e.to_string()))?;
    let values = {
        let view = slice
            .get_mapped_range()
            .map_err(|e| VaeError::Readback(e.to_string()))?;
        bytemuck::cast_slice::<u8, f32>(&view).to_vec()
    };
    staging.unmap();
    Ok(values)
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        common::fail(&e, 1);
    }
}
