//! Times each dispatch of one training step (wall clock around a synchronised submit of 10
//! back-to-back launches): `cargo run --release --example profile_step`.
use std::time::Instant;
use vae_wgpu::data::DatasetKind;
use vae_wgpu::model::{GpuDataset, Vae, VaeConfig};
use vae_wgpu::train::{TrainConfig, Trainer};
use vae_wgpu::Gpu;

fn main() -> vae_wgpu::Result<()> {
    let gpu = Gpu::new()?;
    let set = DatasetKind::Mnist.load_split(&DatasetKind::Mnist.default_dir(), false)?;
    let data = GpuDataset::upload(&gpu, "d", &set.images, set.count, 784, set.labels.clone())?;
    let vae = Vae::new(&gpu, VaeConfig::default(), 1)?;
    let tr = Trainer::new(&gpu, &vae, data, TrainConfig::default())?;
    let mut total = 0.0;
    for d in tr.full_plan() {
        gpu.run(&[d])?;
        let reps = 10;
        let t0 = Instant::now();
        gpu.run(&vec![d; reps])?;
        let t = t0.elapsed().as_secs_f64() / reps as f64;
        total += t;
        let rate = if d.flops > 0.0 {
            format!("{:.1} GFLOP/s", d.flops / t / 1e9)
        } else {
            format!("{:.2} GB/s", d.bytes / t / 1e9)
        };
        println!("{:<40} {:>8.3} ms  {}", d.label, t * 1e3, rate);
    }
    println!("sum {:.2} ms", total * 1e3);
    Ok(())
}
