//! Matmul GFLOP/s per strategy at the VAE's shapes: `cargo bench --bench kernels`.
//! Each figure is the median of 5 repeats of 20 back-to-back dispatches (4 at 1024³) in one pass
//! and one submit, timed by wall clock around the synchronised submit after a warm-up. The
//! subgroup strategy is measured reading buffers and reading both operands through texture
//! mirrors (as the training step does by default).

use std::time::Instant;

use clap::Parser;
use vae_wgpu::internals::ops::{self, Epilogue, MatmulStrategy};
use vae_wgpu::Gpu;

/// Matmul GFLOP/s per strategy at the VAE's shapes.
#[derive(Parser, Debug)]
#[command(name = "kernels")]
struct Cli {
    /// Keep only the strategies and shapes whose names contain one of these words
    /// (`subgroup enc`); none: everything
    words: Vec<String>,
    /// Passed by `cargo bench`; ignored
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cli = Cli::parse();
    let gpu = Gpu::new(vae_wgpu::GpuOptions::from_env()?)?;
    println!("adapter: {}", gpu.report());
    if let Some(w) = &gpu.report().lp_native_vector_width {
        println!("LP_NATIVE_VECTOR_WIDTH={w}");
    }
    // (label, M, N, K, A transposed, B transposed)
    let shapes = [
        ("enc 128x784 . 784x400", 128, 400, 784, false, false),
        ("dec 128x400 . 400x784", 128, 784, 400, false, false),
        ("wgrad (128x784)T . 128x400", 784, 400, 128, true, false),
        ("dgrad 128x784 . (400x784)T", 128, 400, 784, false, true),
        ("square 1024^3", 1024, 1024, 1024, false, false),
    ];
    let mut strategies = vec![MatmulStrategy::Tiled, MatmulStrategy::Subgroup];
    if MatmulStrategy::Subgroup.check_supported(&gpu).is_err() {
        strategies.pop();
    }
    // `cargo bench --bench kernels -- subgroup enc` keeps only the strategies and shapes whose
    // names contain one of the words (for kernel work; no words = everything).
    let words = cli.words;
    let wanted = |name: &str| words.is_empty() || words.iter().any(|w| name.to_lowercase().contains(&w.to_lowercase()));
    let any_strategy = strategies.iter().any(|s| wanted(&format!("{s:?}")));
    strategies.retain(|s| !any_strategy || wanted(&format!("{s:?}")));
    let any_shape = shapes.iter().any(|s| wanted(s.0));
    println!("{:<30} {:>14} {:>10} {:>12}", "shape", "strategy", "ms", "GFLOP/s");
    for &(label, m, n, k, ta, tb) in &shapes {
        if any_shape && !wanted(label) {
            continue;
        }
        let a = gpu.upload("a", &if ta { [k, m] } else { [m, k] }, &vec![0.01; m * k])?;
        let b = gpu.upload("b", &if tb { [n, k] } else { [k, n] }, &vec![0.02; k * n])?;
        let c = gpu.tensor("c", &[m, n])?;
        let mut variants = Vec::new();
        for &st in &strategies {
            variants.push((st, format!("{st:?}"), a.clone(), b.clone()));
            if st == MatmulStrategy::Subgroup {
                let (am, bm) = (
                    ops::mirrored(&gpu, "a", a.clone(), true)?,
                    ops::mirrored(&gpu, "b", b.clone(), true)?,
                );
                let copies: Vec<_> = [&am, &bm]
                    .iter()
                    .filter_map(|t| ops::refresh_mirror("fill", t))
                    .collect();
                gpu.run(&copies.iter().collect::<Vec<_>>())?;
                variants.push((st, "Subgroup+tex".to_string(), am, bm));
            }
        }
        for (st, name, a, b) in &variants {
            let st = *st;
            let d = ops::matmul(&gpu, label, a, ta, b, tb, &c, &Epilogue::default(), Some(st))?;
            let reps = if m * n * k > 100_000_000 { 4 } else { 20 };
            let list: Vec<_> = (0..reps).map(|_| &d).collect();
            gpu.run(&list)?;
            let mut times: Vec<f64> = (0..5)
                .map(|_| {
                    let t0 = Instant::now();
                    gpu.run(&list).map(|_| t0.elapsed().as_secs_f64() / reps as f64)
                })
                .collect::<Result<_, _>>()?;
            times.sort_by(f64::total_cmp);
            let t = times[2];
            println!(
                "{:<30} {:>14} {:>10.3} {:>12.1}",
                label,
                name,
                t * 1e3,
                d.flops / t / 1e9
            );
        }
    }
    Ok(())
}
