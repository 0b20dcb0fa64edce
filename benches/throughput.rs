//! GPU throughput of vae-wgpu: `cargo bench --bench throughput [-- --json FILE] [--quick]
//! [--set KEY=VALUE ...]`.
//!
//! `--set` changes the model from the default, with the keys and values of a checkpoint's
//! metadata (`hidden=400,200`, `latent=10`, `top=10:200`, `code=quantized:512:10:0.25`, …).
//!
//! Prints the adapter and its settings, then: pipeline compilation time; training samples/s
//! at several batch sizes; inference samples/s (encode, decode, reconstruct), also through
//! `Inference` on device buffers against its host-vector methods; the GPU time of
//! every dispatch of one training step at batch 128 from timestamp queries written inside the
//! pass (wall clock around a synchronised submit where the adapter lacks them), with GFLOP/s
//! or GB/s; dispatches, passes, submits and readbacks per step; resident device bytes against
//! the sum of what the model needs; the step with texture mirrors on and off, interleaved in
//! one process; matmul GFLOP/s per strategy. Each figure is the median (and min–max) of
//! repeats after a warm-up: 7 (3 with `--quick`), at most 5 for training and matmul. The host CPU and the share of CPU time the hypervisor took
//! ("steal") during each section are printed too: on a shared machine they explain most of
//! the run-to-run differences.

use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
use serde_json::{json, Map};
use vae_wgpu::data::DatasetKind;
use vae_wgpu::data::GpuDataset;
use vae_wgpu::gpu::Dispatch;
use vae_wgpu::internals::ops::{self, Epilogue, MatmulStrategy};
use vae_wgpu::internals::{plan_decode, plan_encode, plan_reconstruct, Inputs, Workspace, WorkspaceSpec};
use vae_wgpu::model::{TextureMirrors, Vae, VaeConfig};
use vae_wgpu::train::{rounded, TrainConfig, Trainer};
use vae_wgpu::Gpu;

type AnyResult<T> = Result<T, Box<dyn std::error::Error>>;

/// GPU throughput of vae-wgpu: training, inference, per-dispatch times and matmul rates.
#[derive(Parser, Debug)]
#[command(name = "throughput")]
struct Cli {
    /// Also write every figure to FILE as JSON
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// 3 repeats per figure instead of 7
    #[arg(long)]
    quick: bool,
    /// Change the model from the default: a checkpoint metadata key and its value
    /// (hidden=400,200, latent=10, top=10:200, code=quantized:512:10:0.25, ...); repeatable
    #[arg(long, value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Passed by `cargo bench`; ignored
    #[arg(long, hide = true)]
    bench: bool,
}

struct Stat {
    median: f64,
    min: f64,
    max: f64,
}

fn stat(mut v: Vec<f64>) -> Stat {
    v.sort_by(f64::total_cmp);
    Stat {
        median: v[v.len() / 2],
        min: v[0],
        max: v[v.len() - 1],
    }
}

/// CPU time the hypervisor gave to other guests ("steal", from /proc/stat), as a share of all
/// CPU time since `start`. On a shared virtual machine it slows every figure here; None where
/// /proc/stat is not available.
struct StealMeter {
    start: Option<(u64, u64)>,
}

impl StealMeter {
    fn read() -> Option<(u64, u64)> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let fields: Vec<u64> = stat
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .map(|f| f.parse().ok())
            .collect::<Option<_>>()?;
        Some((fields.iter().sum(), *fields.get(7)?))
    }
    fn start() -> Self {
        StealMeter { start: Self::read() }
    }
    fn percent(&self) -> Option<f64> {
        let ((t0, s0), (t1, s1)) = (self.start?, Self::read()?);
        (t1 > t0).then(|| 100.0 * (s1 - s0) as f64 / (t1 - t0) as f64)
    }
    fn describe(&self) -> String {
        match self.percent() {
            Some(p) => format!("host steal {p:.0} %"),
            None => "host steal unknown".to_string(),
        }
    }
}

/// f32 multiplies and adds per second of one host core, from a short loop the compiler vectorises
/// (baseline SIMD, so a fraction of the core's peak; only its changes matter). On a CPU adapter
/// the host is the device, and on a shared virtual machine its speed changes by up to 2× over
/// minutes without any steal showing (another guest on the same physical cores); measured
/// after each section, it tells which figures were taken on a slow host.
fn host_core_gflops() -> f64 {
    let x: Vec<f32> = (0..4096).map(|i| 1.0 + i as f32 * 1e-6).collect();
    let mut acc = [0f32; 32];
    let t = Instant::now();
    let mut passes = 0u64;
    while t.elapsed().as_secs_f64() < 0.05 {
        for _ in 0..64 {
            for chunk in std::hint::black_box(&x).chunks_exact(32) {
                for (a, v) in acc.iter_mut().zip(chunk) {
                    *a = *a * 0.999_9 + *v;
                }
            }
        }
        passes += 64;
    }
    std::hint::black_box(acc);
    2.0 * (passes * x.len() as u64) as f64 / t.elapsed().as_secs_f64() / 1e9
}

/// The host CPU's model name and logical core count (Linux), or "unknown".
fn host_cpu() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = info
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|m| m.trim().replace('"', "'"));
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    match model {
        Some(m) => format!("{m}, {cores} logical cores"),
        None => "unknown".to_string(),
    }
}

/// Each convolution of `arch` at batch 128, each of its three products as the step runs them
/// (implicit matmuls, the preferred strategy) beside the plain matmul on the same GEMM shape
/// (M×N×K, random operands in memory). A convolution's rate counts 2 × its multiply-adds
/// without the taps on padding; the matmul's 2·M·N·K. The decoder's transposed convolutions
/// run the same three products of the same geometries (forward and input gradient swapped).
fn conv_products(gpu: &Gpu, arch: &vae_wgpu::model::ConvArch, repeats: usize) -> AnyResult<Vec<serde_json::Value>> {
    use vae_wgpu::internals::ops::{ConvGeometry, ConvProduct};
    println!("\nconvolution products at batch 128 beside the matmul on the same GEMM shape (median of {repeats}, 5 launches per submit):");
    println!(
        "  {:<22} {:<13} {:>18} {:>9} {:>9} {:>9} {:>9}",
        "convolution", "product", "GEMM M x N x K", "conv ms", "GFLOP/s", "GEMM ms", "GFLOP/s"
    );
    let mut rows = Vec::new();
    let mut c_in = arch.input[0];
    for (i, (&c_out, side)) in arch.channels.iter().zip(arch.sides()).enumerate() {
        let name = format!("{}x{}x{} -> {c_out}", side.0, side.1, c_in);
        let g = ConvGeometry::new(&name, 128, side, c_in, c_out, 4, 2, 1)?;
        c_in = c_out;
        let (kc, pixels) = (g.cols_width(), g.cols_rows());
        let x = gpu.upload("x", &[g.in_len()], &vec![0.01; g.in_len()])?;
        let w = gpu.upload("w", &[kc, g.out_c], &vec![0.02; kc * g.out_c])?;
        let y = gpu.upload("y", &[pixels, g.out_c], &vec![0.03; pixels * g.out_c])?;
        let dw = gpu.tensor("dw", &[kc, g.out_c])?;
        let dx = gpu.tensor("dx", &[g.in_len()])?;
        let taps = (g.kernel / g.stride).pow(2);
        let products = [
            (ConvProduct::Forward, &x, &w, &y, (pixels, g.out_c, kc, false, false)),
            (ConvProduct::WeightGrad, &x, &y, &dw, (kc, g.out_c, pixels, true, false)),
            (
                ConvProduct::InputGrad,
                &y,
                &w,
                &dx,
                (g.in_len() / g.in_c, g.in_c, taps * g.out_c, false, true),
            ),
        ];
        for (product, a, b, c, (m, n, k, ta, tb)) in products {
            if product == ConvProduct::InputGrad && !(g.in_c % 4 == 0 && ConvProduct::input_grad_fits(&g)) {
                continue;
            }
            let d = ops::conv_matmul(gpu, &name, product, &g, a, b, c, &Epilogue::default(), None)?;
            let time = |d: &Dispatch| -> AnyResult<Stat> {
                let list: Vec<&Dispatch> = (0..5).map(|_| d).collect();
                time_runs(repeats, || {
                    let t = Instant::now();
                    gpu.run(&list)?;
                    Ok(t.elapsed().as_secs_f64() / 5.0)
                })
            };
            let conv = time(&d)?;
            let ga = gpu.upload("ga", &if ta { [k, m] } else { [m, k] }, &vec![0.01; m * k])?;
            let gb = gpu.upload("gb", &if tb { [n, k] } else { [k, n] }, &vec![0.02; k * n])?;
            let gc = gpu.tensor("gc", &[m, n])?;
            let mm = ops::matmul(gpu, "gemm", &ga, ta, &gb, tb, &gc, &Epilogue::default(), None)?;
            let gemm = time(&mm)?;
            let (cr, gr) = (d.flops / conv.median / 1e9, mm.flops / gemm.median / 1e9);
            println!(
                "  {name:<22} {:<13} {:>18} {:>9.3} {cr:>9.1} {:>9.3} {gr:>9.1}",
                format!("{product:?}"),
                format!(
                    "{m}x{n}x{k}{}",
                    if ta {
                        " (At)"
                    } else if tb {
                        " (Bt)"
                    } else {
                        ""
                    }
                ),
                conv.median * 1e3,
                gemm.median * 1e3,
            );
            rows.push(json!({
                "layer": i, "convolution": name, "product": format!("{product:?}"),
                "gemm": [m, n, k], "conv_ms": rounded(conv.median * 1e3, 3), "conv_gflops": rounded(cr, 2),
                "gemm_ms": rounded(gemm.median * 1e3, 3), "gemm_gflops": rounded(gr, 2),
            }));
        }
    }
    Ok(rows)
}

fn time_runs(repeats: usize, mut f: impl FnMut() -> AnyResult<f64>) -> AnyResult<Stat> {
    f()?; // warm-up
    Ok(stat((0..repeats).map(|_| f()).collect::<AnyResult<Vec<f64>>>()?))
}

/// How per-dispatch GPU time is measured on this adapter, best first.
#[derive(Clone, Copy, PartialEq)]
enum Timing {
    /// Timestamps between dispatches inside one pass (the step as it really runs).
    InsidePass,
    /// One pass per dispatch with timestamps at its start and end (adds per-pass overhead).
    PerPass,
    /// Wall clock around a synchronised submit per dispatch (adds submit and wait overhead).
    WallClock,
}

fn timing_for(gpu: &Gpu) -> Timing {
    let f = gpu.ctx.device.features();
    if gpu.report().timestamps_inside_passes {
        Timing::InsidePass
    } else if f.contains(wgpu::Features::TIMESTAMP_QUERY) {
        Timing::PerPass
    } else {
        Timing::WallClock
    }
}

/// GPU seconds of each dispatch of `plan`, by the best [`Timing`] the adapter offers (None: wall
/// clock only).
fn profile_dispatches(gpu: &Gpu, plan: &[&Dispatch]) -> AnyResult<Option<Vec<f64>>> {
    let timing = timing_for(gpu);
    if timing == Timing::WallClock {
        return Ok(None);
    }
    let dev = &gpu.ctx.device;
    // Inside a pass: a stamp before each kernel and one at the end of each pass (and an empty
    // pass after trailing copies); a run of mirror copies between passes is timed from the
    // previous pass's end to the next pass's first stamp. Per pass: two stamps per dispatch.
    // An upper bound on the queries; `used` counts those written.
    let n = 2 * plan.len() as u32 + 2;
    let mut used = 0u32;
    let qs = dev.create_query_set(&wgpu::QuerySetDescriptor {
        label: Some("profile"),
        ty: wgpu::QueryType::Timestamp,
        count: n,
    });
    let resolve = dev.create_buffer(&wgpu::BufferDescriptor {
        label: Some("resolve"),
        size: 8 * n as u64,
        usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    });
    let read = dev.create_buffer(&wgpu::BufferDescriptor {
        label: Some("read"),
        size: 8 * n as u64,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut enc = dev.create_command_encoder(&Default::default());
    // (query index at the item's start, query index at its end) per item, inside-pass timing.
    let mut marks: Vec<(u32, u32)> = vec![(0, 0); plan.len()];
    if timing == Timing::InsidePass {
        let mut q = 0u32;
        let mut i = 0;
        let mut pending_copies: Vec<usize> = Vec::new();
        let mut copies_from = 0u32;
        while i < plan.len() || !pending_copies.is_empty() {
            let run = plan[i..].iter().take_while(|d| !d.is_copy()).count();
            let mut pass = enc.begin_compute_pass(&Default::default());
            for &c in &pending_copies {
                marks[c] = (copies_from, q);
            }
            pending_copies.clear();
            for d in &plan[i..i + run] {
                pass.write_timestamp(&qs, q);
                d.record(&mut pass);
                q += 1;
            }
            pass.write_timestamp(&qs, q);
            for (j, m) in marks[i..i + run].iter_mut().enumerate() {
                *m = (q - run as u32 + j as u32, q - run as u32 + j as u32 + 1);
            }
            copies_from = q;
            q += 1;
            drop(pass);
            used = q;
            i += run;
            while i < plan.len() && plan[i].is_copy() {
                plan[i].record_copy(&mut enc);
                pending_copies.push(i);
                i += 1;
            }
        }
    } else {
        for (i, d) in plan.iter().enumerate() {
            if d.is_copy() {
                d.record_copy(&mut enc);
                continue;
            }
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(&d.label),
                timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                    query_set: &qs,
                    beginning_of_pass_write_index: Some(used),
                    end_of_pass_write_index: Some(used + 1),
                }),
            });
            d.record(&mut pass);
            marks[i] = (used, used + 1);
            used += 2;
        }
    }
    enc.resolve_query_set(&qs, 0..used, &resolve, 0);
    enc.copy_buffer_to_buffer(&resolve, 0, &read, 0, 8 * used as u64);
    gpu.ctx.queue.submit([enc.finish()]);
    read.slice(..).map_async(wgpu::MapMode::Read, |_| {});
    gpu.ctx.wait()?;
    let ticks: Vec<u64> = bytemuck::cast_slice(&read.slice(..).get_mapped_range()?).to_vec();
    let period = gpu.ctx.queue.get_timestamp_period() as f64 * 1e-9;
    let span = |from: u32, to: u32| ticks[to as usize].saturating_sub(ticks[from as usize]) as f64 * period;
    let spans: Vec<f64> = if timing == Timing::InsidePass {
        // A run of copies shares its span evenly.
        let mut spans: Vec<f64> = marks.iter().map(|&(a, b)| span(a, b)).collect();
        for (i, d) in plan.iter().enumerate() {
            if d.is_copy() {
                let share = marks.iter().filter(|&&m| m == marks[i]).count();
                spans[i] /= share as f64;
            }
        }
        spans
    } else {
        // Copies are not timed per pass; they show as zero.
        (0..plan.len())
            .map(|i| {
                if plan[i].is_copy() {
                    0.0
                } else {
                    span(marks[i].0, marks[i].1)
                }
            })
            .collect()
    };
    Ok(Some(spans))
}

fn main() -> AnyResult<()> {
    let cli = Cli::parse();
    let quick = cli.quick;
    let mut model = VaeConfig::default().to_metadata();
    // Keys a dense model's metadata lacks: `--set arch=conv` benches the reference
    // convolutional model (channels 32,64 on 1×28×28, dense width 256 unless set).
    let conv_keys = ["arch", "conv", "input_shape"];
    for set in &cli.set {
        let (key, value) = set
            .split_once('=')
            .ok_or_else(|| format!("--set takes KEY=VALUE (a checkpoint metadata key), got {set:?}"))?;
        match model.iter_mut().find(|(k, _)| k == key) {
            Some(entry) => entry.1 = value.to_string(),
            None if conv_keys.contains(&key) => model.push((key.to_string(), value.to_string())),
            None => {
                let mut keys: Vec<&str> = model.iter().map(|(k, _)| k.as_str()).collect();
                keys.extend(conv_keys);
                return Err(format!("--set: unknown key {key:?}; the keys are {}", keys.join(", ")).into());
            }
        }
    }
    if model.iter().any(|(k, v)| k == "arch" && v == "conv") {
        let given = |key: &str| cli.set.iter().any(|s| s.split_once('=').is_some_and(|(k, _)| k == key));
        for (key, value) in [("conv", "32,64"), ("input_shape", "1,28,28")] {
            if !given(key) {
                model.push((key.to_string(), value.to_string()));
            }
        }
        if !given("hidden") {
            model
                .iter_mut()
                .filter(|(k, _)| k == "hidden")
                .for_each(|(_, v)| *v = "256".into());
        }
    }
    let model_cfg = VaeConfig::from_metadata(&model)?;
    let model_name: Vec<String> = model.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let repeats = if quick { 3 } else { 7 };
    // The training and matmul sections take longer per run, so they stop at 5.
    let long_repeats = repeats.min(5);
    let mut json = Map::new();

    let whole_run = StealMeter::start();
    let mut steal = Map::new();
    let mut core_speed = Map::new();
    let mut note_steal = |section: &str, m: &StealMeter| {
        let speed = host_core_gflops();
        println!(
            "  ({}; one host core now at {speed:.1} GFLOP/s in a reference loop)",
            m.describe()
        );
        if let Some(p) = m.percent() {
            steal.insert(section.to_string(), json!(rounded(p, 1)));
        }
        core_speed.insert(section.to_string(), json!(rounded(speed, 2)));
    };
    let t0 = Instant::now();
    let gpu = Gpu::new(vae_wgpu::GpuOptions::from_env()?)?;
    let device_s = t0.elapsed().as_secs_f64();
    let r = gpu.report().clone();
    let strategy = MatmulStrategy::preferred(&gpu)?;
    println!(
        "adapter: {} | {:?} {:?} | driver {}",
        r.name,
        r.backend,
        r.device_type,
        r.driver.trim()
    );
    println!(
        "settings: subgroup {}..{} | LP_NATIVE_VECTOR_WIDTH={} | matmul strategy {:?} | timestamps in passes: {} | worker threads pinned: {}",
        r.subgroup_min_size,
        r.subgroup_max_size,
        r.lp_native_vector_width.as_deref().unwrap_or("unset"),
        strategy,
        r.timestamps_inside_passes,
        r.pinned_worker_threads.len()
    );
    // On a CPU adapter the host CPU is the device: name it.
    let cpu = host_cpu();
    println!("host CPU: {cpu}");
    json.insert("adapter".into(), json!(r.name));
    json.insert("host_cpu".into(), json!(cpu));
    json.insert("matmul_strategy".into(), json!(format!("{strategy:?}")));
    json.insert("subgroup_size".into(), json!(r.subgroup_min_size));
    json.insert("pinned_worker_threads".into(), json!(r.pinned_worker_threads.len()));

    let set = DatasetKind::Mnist.load_split(&DatasetKind::Mnist.default_dir(), true)?;
    let upload = |g: &Gpu| GpuDataset::upload(g, "train", &set.images, set.count, 784, set.labels.clone());

    // Start-up: device creation, then every pipeline a training run needs.
    let t1 = Instant::now();
    println!("model: {}", model_name.join(" "));
    json.insert("model".into(), json!(model_name.join(" ")));
    let mut vae = Vae::new(&gpu, model_cfg.clone(), 1)?;
    let mut trainer = Trainer::new(&gpu, &vae, upload(&gpu)?, TrainConfig::default())?;
    let plan_s = t1.elapsed().as_secs_f64();
    let (compile, pipelines) = gpu.kernels.compile_stats();
    println!(
        "\nstart-up: device {:.3}s | model + dataset upload + plans {:.3}s, of which {} pipelines compiled in {:.3}s",
        device_s,
        plan_s,
        pipelines,
        compile.as_secs_f64()
    );
    json.insert("pipeline_compile_s".into(), json!(rounded(compile.as_secs_f64(), 4)));
    json.insert("pipelines".into(), json!(pipelines));

    // Step structure.
    let before = gpu.traffic();
    let steps = 8;
    trainer.train_steps(steps)?;
    let after = gpu.traffic();
    let per = |a: u64, b: u64| (a - b) as f64 / steps as f64;
    println!(
        "per training step: {} dispatches in {} compute passes, {} copies into texture mirrors ({:?}) | {} submits | {} host readbacks",
        per(after.dispatches, before.dispatches),
        per(after.passes, before.passes),
        per(after.copies, before.copies),
        vae.texture_mirrors(),
        per(after.submits, before.submits),
        per(after.readbacks, before.readbacks)
    );
    json.insert(
        "dispatches_per_step".into(),
        json!(per(after.dispatches, before.dispatches)),
    );
    json.insert("passes_per_step".into(), json!(per(after.passes, before.passes)));
    json.insert("mirror_copies_per_step".into(), json!(per(after.copies, before.copies)));
    json.insert("texture_mirrors".into(), json!(format!("{:?}", vae.texture_mirrors())));
    json.insert("submits_per_step".into(), json!(per(after.submits, before.submits)));
    json.insert(
        "readbacks_per_step".into(),
        json!(per(after.readbacks, before.readbacks)),
    );

    // Resident memory against what the model needs.
    let live = gpu.memory.stats().live_bytes;
    let arena = 4 * 4 * vae.arena.layout.len() as u64;
    let data =
        trainer.data().words.buffer().bytes() + trainer.data().labels_gpu.as_ref().map_or(0, |l| l.buffer().bytes());
    let ws = trainer.workspace_bytes();
    let need = arena + data + ws;
    // Texture mirrors are copies, so they count as overhead, not as need.
    let mirrors = trainer.workspace_mirror_bytes() + vae.arena.mirror_bytes();
    println!(
        "device memory: {:.2} MB resident, of which texture mirrors {:.2} MB | params+grads+Adam m,v {:.2} MB + dataset (bytes and labels) {:.2} MB + activations and their gradients {:.2} MB = {:.2} MB | ratio {:.3}",
        live as f64 / 1e6,
        mirrors as f64 / 1e6,
        arena as f64 / 1e6,
        data as f64 / 1e6,
        ws as f64 / 1e6,
        need as f64 / 1e6,
        live as f64 / need as f64
    );
    json.insert("resident_bytes".into(), json!(live));
    json.insert("needed_bytes".into(), json!(need));
    json.insert("mirror_bytes".into(), json!(mirrors));

    // Per-dispatch GPU time at batch 128 (the 8 steps above were the warm-up).
    let meter = StealMeter::start();
    let plan: Vec<&Dispatch> = trainer.full_plan().iter().collect();
    println!(
        "\none training step, batch 128 ({} dispatches; median of {repeats} after a warm-up):",
        plan.len()
    );
    let mut per_dispatch: Vec<Vec<f64>> = vec![Vec::new(); plan.len()];
    let timed_by = match timing_for(&gpu) {
        Timing::InsidePass => "timestamps inside the pass",
        Timing::PerPass => "timestamps around one pass per dispatch",
        Timing::WallClock => "wall clock around a synchronised submit per dispatch",
    };
    for rep in 0..=repeats {
        let times = match profile_dispatches(&gpu, &plan)? {
            Some(t) => t,
            None => plan
                .iter()
                .map(|d| {
                    let t = Instant::now();
                    gpu.run(&[*d]).map(|_| t.elapsed().as_secs_f64())
                })
                .collect::<Result<Vec<_>, _>>()?,
        };
        if rep > 0 {
            for (acc, t) in per_dispatch.iter_mut().zip(times) {
                acc.push(t);
            }
        }
    }
    println!("{:<36} {:>9} {:>17} {:>12}", "dispatch", "ms", "min-max", "rate");
    let mut sum = 0.0;
    let mut rows = Vec::new();
    for (d, t) in plan.iter().zip(per_dispatch) {
        let s = stat(t);
        sum += s.median;
        let rate = if d.flops > 0.0 && d.label.contains('[') {
            format!("{:.1} GFLOP/s", d.flops / s.median / 1e9)
        } else {
            format!("{:.2} GB/s", d.bytes / s.median / 1e9)
        };
        println!(
            "{:<36} {:>9.3} {:>8.3}-{:<8.3} {:>12}",
            d.label,
            s.median * 1e3,
            s.min * 1e3,
            s.max * 1e3,
            rate
        );
        rows.push(json!({"dispatch": d.label, "ms": rounded(s.median * 1e3, 4)}));
    }
    let step_wall = time_runs(repeats, || {
        let t = Instant::now();
        trainer.train_steps(10)?;
        Ok(t.elapsed().as_secs_f64() / 10.0)
    })?;
    println!(
        "{:<36} {:>9.3}   (a whole step by wall clock, 10 steps back to back: {:.3} ms)",
        "sum of dispatches",
        sum * 1e3,
        step_wall.median * 1e3
    );
    json.insert("step_dispatches".into(), json!(rows));
    json.insert("step_sum_ms".into(), json!(rounded(sum * 1e3, 4)));
    json.insert("step_wall_ms".into(), json!(rounded(step_wall.median * 1e3, 4)));
    note_steal("profile", &meter);
    drop(trainer);

    // Training throughput by batch size.
    println!("\ntraining throughput (the model above; median of {long_repeats} runs after a warm-up):");
    let meter = StealMeter::start();
    let mut tput = Vec::new();
    for &b in &[32usize, 128, 512, 2048] {
        let mut tr = Trainer::new(
            &gpu,
            &vae,
            upload(&gpu)?,
            TrainConfig {
                batch_size: b,
                ..Default::default()
            },
        )?;
        let steps = (8192 / b).clamp(4, 64);
        let s = time_runs(long_repeats, || {
            let t = Instant::now();
            tr.train_steps(steps)?;
            Ok((steps * b) as f64 / t.elapsed().as_secs_f64())
        })?;
        println!(
            "  batch {b:>5}: {:>9.0} samples/s (min {:.0}, max {:.0})",
            s.median, s.min, s.max
        );
        tput.push(json!({"batch": b, "samples_per_sec": rounded(s.median, 1)}));
    }
    json.insert("train_samples_per_sec".into(), json!(tput));
    note_steal("train", &meter);

    // Texture mirrors on and off, interleaved: on a shared host the load changes from minute to
    // minute, so only alternating runs in one process compare the two fairly.
    println!(
        "\ntexture mirrors on against off, batch 128, {} interleaved rounds of 16 steps after a warm-up:",
        2 * repeats
    );
    let meter = StealMeter::start();
    let mut pair = Vec::new();
    for policy in [TextureMirrors::None, TextureMirrors::Auto] {
        let mut v = Vae::new(&gpu, model_cfg.clone(), 1)?;
        v.set_texture_mirrors(&gpu, policy)?;
        let tr = Trainer::new(&gpu, &v, upload(&gpu)?, TrainConfig::default())?;
        pair.push((v, tr, Vec::new()));
    }
    for round in 0..(2 * repeats + 1) {
        for (_, tr, times) in pair.iter_mut() {
            let t = Instant::now();
            tr.train_steps(16)?;
            if round > 0 {
                times.push(t.elapsed().as_secs_f64() / 16.0);
            }
        }
    }
    let mut ab = Map::new();
    for (v, _, times) in pair {
        let s = stat(times);
        println!(
            "  {:<5} {:>8.2} ms per step, min {:.2} ms ({:.0} samples/s at the median, {:.0} at the min)",
            format!("{:?}", v.texture_mirrors()),
            s.median * 1e3,
            s.min * 1e3,
            128.0 / s.median,
            128.0 / s.min
        );
        ab.insert(
            format!("{:?}", v.texture_mirrors()),
            json!({"median_ms": rounded(s.median * 1e3, 3), "min_ms": rounded(s.min * 1e3, 3)}),
        );
    }
    json.insert("mirrors_ab_step".into(), json!(ab));
    note_steal("mirrors_ab", &meter);

    // Inference throughput at batch 1024.
    println!("\ninference throughput (batch 1024; median of {repeats} after a warm-up):");
    let meter = StealMeter::start();
    let b = 1024;
    // Shaped by the benched model (`--set`), a conditional model's labels from the data.
    let images = GpuDataset::upload(
        &gpu,
        "inference",
        &set.images[..b * 784],
        b,
        784,
        set.labels[..b].to_vec(),
    )?;
    let order = gpu.upload_words("inference_order", &(0..b as u32).collect::<Vec<_>>())?;
    let batches = images.batches(&order);
    let inputs = Inputs {
        source: &batches,
        binarize: false,
        denoise: 0.0,
    };
    let step = ops::StepBuffer::new(&gpu)?;
    let mut inf = Map::new();
    // Inference plans with and without texture mirrors: the weights' mirrors are filled once,
    // the activations' are refreshed by each plan (the input's too, as for a new batch).
    for policy in [TextureMirrors::None, TextureMirrors::Auto] {
        vae.set_texture_mirrors(&gpu, policy)?;
        let on = vae.texture_mirrors() != TextureMirrors::None;
        let ws = Workspace::new(&gpu, &vae, &WorkspaceSpec::eval(b, 1))?;
        let tag = if !on {
            String::new()
        } else {
            format!(
                " (texture mirrors: {} weights and the activations)",
                vae.mirrored_weights()
            )
        };
        // Encode gathers the batch from the resident bytes; reconstruct adds the latent (z₁'s
        // draw, an autoencoder's code, a VQ-VAE's quantization) and the decoder.
        let encode = plan_encode(&gpu, &vae, &ws, b, &inputs, &step)?.0;
        let decode = plan_decode(&gpu, &vae, &ws, b, &step)?;
        let recon = plan_reconstruct(&gpu, &vae, &ws, b, &inputs, &step)?;
        let runs = vec![
            ("encode", encode.iter().collect::<Vec<_>>()),
            ("decode", decode.iter().collect()),
            ("reconstruct", recon.iter().collect()),
        ];
        for (name, list) in runs {
            let s = time_runs(repeats, || {
                let t = Instant::now();
                gpu.run(&list)?;
                Ok(b as f64 / t.elapsed().as_secs_f64())
            })?;
            println!(
                "  {name:<12} {:>9.0} samples/s (min {:.0}, max {:.0}){tag}",
                s.median, s.min, s.max
            );
            let key = if !on {
                name.to_string()
            } else {
                format!("{name}_mirrored")
            };
            inf.insert(key, json!(rounded(s.median, 1)));
        }
    }
    json.insert("inference_samples_per_sec".into(), json!(inf));
    note_steal("inference", &meter);

    // The same three through `Inference`: on device buffers (recorded into an encoder, one
    // submit, a wait and no readback) against its host-vector methods (an upload and one
    // readback each), at batch 1024.
    println!("\ninference on device buffers vs host vectors (batch 1024; median of {repeats} after a warm-up):");
    let meter = StealMeter::start();
    let cfg = vae.config.clone();
    let x_host: Vec<f32> = set.images[..b * 784].iter().map(|&p| p as f32 / 255.0).collect();
    let labels_host = (cfg.classes > 0).then_some(&set.labels[..b]);
    let x = gpu.upload("bench.x", &[b, cfg.input_dim], &x_host)?;
    let labels = labels_host.map(|l| gpu.upload_words("bench.labels", l)).transpose()?;
    let means = gpu.tensor("bench.means", &[b, cfg.latent])?;
    let images_out = gpu.tensor("bench.images", &[b, cfg.input_dim])?;
    let mut inference = vae_wgpu::Inference::new(&gpu, &vae)?;
    let z_host = inference.encode(&x_host, labels_host)?;
    let mut paths = Map::new();
    for name in ["encode", "decode", "reconstruct"] {
        let device = time_runs(repeats, || {
            let t = Instant::now();
            let mut enc = gpu.ctx.device.create_command_encoder(&Default::default());
            match name {
                "encode" => inference.record_encode(&mut enc, &x, labels.as_ref(), &means)?,
                "decode" => inference.record_decode(&mut enc, &means, labels.as_ref(), &images_out)?,
                _ => inference.record_reconstruct(&mut enc, &x, labels.as_ref(), 1, &images_out)?,
            }
            gpu.submit(enc.finish());
            gpu.ctx.wait()?;
            Ok(b as f64 / t.elapsed().as_secs_f64())
        })?;
        let host = time_runs(repeats, || {
            let t = Instant::now();
            match name {
                "encode" => inference.encode(&x_host, labels_host)?,
                "decode" => inference.decode(&z_host, labels_host)?,
                _ => inference.reconstruct(&x_host, labels_host, 1)?,
            };
            Ok(b as f64 / t.elapsed().as_secs_f64())
        })?;
        println!(
            "  {name:<12} device buffers {:>9.0} samples/s (min {:.0}) | host vectors {:>9.0} (min {:.0}): {:.2} ms per call for the upload and readback",
            device.median,
            device.min,
            host.median,
            host.min,
            1e3 * b as f64 * (1.0 / host.median - 1.0 / device.median)
        );
        paths.insert(
            name.into(),
            json!({"device_buffers": rounded(device.median, 1), "host_vectors": rounded(host.median, 1)}),
        );
    }
    json.insert("inference_paths_samples_per_sec".into(), json!(paths));
    note_steal("inference_paths", &meter);

    // Matmul at the default model's shapes (whatever --set benches) and 1024³, per strategy.
    println!("\nmatmul (median of {long_repeats} submits after a warm-up; 10 launches per submit, 2 at 1024³):");
    let meter = StealMeter::start();
    let shapes = [
        ("128x784 . 784x400", 128, 400, 784, false, false),
        ("128x400 . 400x784", 128, 784, 400, false, false),
        ("(128x784)T . 128x400", 784, 400, 128, true, false),
        ("128x400 . (784x400)T", 128, 784, 400, false, true),
        ("1024^3", 1024, 1024, 1024, false, false),
    ];
    let mut mm = Vec::new();
    for &(label, m, n, k, ta, tb) in &shapes {
        let a = gpu.upload("a", &if ta { [k, m] } else { [m, k] }, &vec![0.01; m * k])?;
        let bb = gpu.upload("b", &if tb { [n, k] } else { [k, n] }, &vec![0.02; k * n])?;
        let c = gpu.tensor("c", &[m, n])?;
        let mut variants = Vec::new();
        for st in [MatmulStrategy::Subgroup, MatmulStrategy::Tiled] {
            if st.check_supported(&gpu).is_err() {
                continue;
            }
            variants.push((st, format!("{st:?}"), a.clone(), bb.clone()));
            if st == MatmulStrategy::Subgroup {
                // Both operands through texture mirrors, as in the training step.
                let am = ops::mirrored(&gpu, "a", a.clone(), true)?;
                let bm = ops::mirrored(&gpu, "b", bb.clone(), true)?;
                let fill: Vec<Dispatch> = [&am, &bm]
                    .iter()
                    .filter_map(|t| ops::refresh_mirror("fill", t))
                    .collect();
                gpu.run(&fill.iter().collect::<Vec<_>>())?;
                variants.push((st, "Subgroup+tex".to_string(), am, bm));
            }
        }
        for (st, name, a, bb) in &variants {
            let d = ops::matmul(&gpu, label, a, ta, bb, tb, &c, &Epilogue::default(), Some(*st))?;
            let reps = if m * n * k > 100_000_000 { 2 } else { 10 };
            let list: Vec<&Dispatch> = (0..reps).map(|_| &d).collect();
            let s = time_runs(long_repeats, || {
                let t = Instant::now();
                gpu.run(&list)?;
                Ok(t.elapsed().as_secs_f64() / reps as f64)
            })?;
            println!(
                "  {label:<22} {name:<13} {:>8.3} ms {:>7.1} GFLOP/s",
                s.median * 1e3,
                d.flops / s.median / 1e9
            );
            mm.push(json!({"shape": label, "strategy": name, "gflops": rounded(d.flops / s.median / 1e9, 2)}));
        }
    }
    json.insert("matmul".into(), json!(mm));
    note_steal("matmul", &meter);
    if let Some(arch) = model_cfg.conv() {
        let meter = StealMeter::start();
        json.insert("conv_products".into(), json!(conv_products(&gpu, arch, long_repeats)?));
        note_steal("conv_products", &meter);
    }
    note_steal("whole_run", &whole_run);
    json.insert("host_steal_percent".into(), json!(steal));
    json.insert("host_core_gflops".into(), json!(core_speed));
    println!("\nper-dispatch times by {timed_by}; throughput by wall clock around synchronised submits.");
    println!("host steal: CPU time the hypervisor gave other guests; every figure above is slowed by it.");

    if let Some(path) = cli.json {
        std::fs::write(&path, serde_json::to_string(&json)? + "\n")?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
