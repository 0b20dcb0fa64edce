//! Runtime behaviour: memory accounting, typed errors for bad requests.

use vae_wgpu::gpu::Dispatch;
use vae_wgpu::ops::{self, Epilogue};
use vae_wgpu::{Gpu, VaeError};

use crate::common::{gpu, rand_vec};

#[test]
fn repeated_work_allocates_nothing_new() {
    // A private device, so other tests' allocations do not move the counters.
    let g = Gpu::new().expect("GPU tests need an adapter");
    let x = g.upload("x", &[128, 784], &vec![0.5; 128 * 784]).unwrap();
    let w = g.upload("w", &[784, 400], &vec![0.01; 784 * 400]).unwrap();
    let h = g.tensor("h", &[128, 400]).unwrap();
    let d = ops::matmul(&g, "fc", &x, false, &w, false, &h, &Epilogue::default(), None).unwrap();
    g.run(&[&d]).unwrap();
    let _ = g.read(&h).unwrap(); // the readback staging buffer comes from the pool
    let before = g.memory.stats();
    for _ in 0..5 {
        g.run(&[&d]).unwrap();
        let _ = g.read(&h).unwrap();
    }
    let after = g.memory.stats();
    assert_eq!(before.allocations, after.allocations, "repeated work created buffers");
    assert_eq!(before.live_bytes, after.live_bytes);
    assert!(after.peak_bytes >= after.live_bytes && after.live_bytes >= 4 * (128 * 784 + 784 * 400 + 128 * 400));
    // Dropping a tensor returns its bytes (the dispatch holds the tensor's buffer through its
    // bind group, but our ledger counts the handle).
    drop(h);
    assert_eq!(g.memory.stats().live_bytes, after.live_bytes - 4 * 128 * 400);
}

#[test]
fn oversize_buffers_are_typed_errors() {
    let g = gpu();
    let max_binding = g.report().max_storage_buffer_binding_size;
    let elems = (max_binding / 4 + 1) as usize;
    match g.tensor("huge", &[elems]) {
        Err(VaeError::BufferTooLarge { limit_name, bytes, .. }) => {
            assert_eq!(limit_name, "max_storage_buffer_binding_size");
            assert!(bytes > max_binding);
        }
        other => panic!("expected BufferTooLarge, got {:?}", other.map(|t| t.shape().to_vec())),
    }
    let too_big = g.report().max_buffer_size / 4 + 1;
    match g.tensor("huger", &[too_big as usize]) {
        Err(e @ VaeError::BufferTooLarge { .. }) => assert!(e.to_string().contains("huger")),
        other => panic!("expected BufferTooLarge, got {:?}", other.map(|t| t.shape().to_vec())),
    }
}

#[test]
fn writes_and_ops_check_lengths() {
    let g = gpu();
    let t = g.tensor("t", &[8]).unwrap();
    assert!(matches!(g.write(&t, &[1.0; 7]), Err(VaeError::Shape(_))));
    let a = g.tensor("a", &[8]).unwrap();
    let b = g.tensor("b", &[12]).unwrap();
    let e = ops::activation_forward(g, "act", ops::Activation::Relu, 0.0, &a, &b)
        .err()
        .unwrap();
    assert!(e.to_string().contains("differ"), "{e}");
    let out = g.tensor("out", &[3, 8]).unwrap();
    let x = g.tensor("x", &[2, 8]).unwrap();
    let nll = g.tensor("nll", &[3]).unwrap();
    let grad = g.tensor("grad", &[3, 8]).unwrap();
    let e = ops::loss(g, "loss", ops::Likelihood::Bernoulli, &out, &x, 1.0, &nll, &grad, None)
        .err()
        .unwrap();
    assert!(matches!(e, VaeError::Shape(_)), "{e}");
    let x = g.tensor("x", &[3, 8]).unwrap();
    let e = ops::loss(
        g,
        "loss",
        ops::Likelihood::Gaussian { variance: -1.0 },
        &out,
        &x,
        1.0,
        &nll,
        &grad,
        None,
    )
    .err()
    .unwrap();
    assert!(matches!(e, VaeError::Config(_)), "{e}");
}

/// The library leaves lavapipe's width to `LP_NATIVE_VECTOR_WIDTH` (the driver's default, 256
/// bits on x86-64 with AVX, when unset); the width shows in the subgroup size, and the report
/// records the setting.
#[test]
fn lavapipe_runs_at_the_recorded_width() {
    let g = gpu();
    if !g.report().name.contains("llvmpipe") {
        eprintln!("not lavapipe ({}): the width setting does not apply", g.report().name);
        return;
    }
    let recorded = g.report().lp_native_vector_width.clone();
    let width: u32 = recorded.as_deref().unwrap_or("256").parse().unwrap();
    assert_eq!(g.report().subgroup_min_size, width / 32, "lanes = width / 32 bits");
}

/// CPU time (user + system, clock ticks) of one of this process's threads.
fn thread_ticks(tid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap().split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// On lavapipe with two or more CPUs, `Gpu::new` pins the driver's worker threads one per
/// CPU, and those threads are the ones that run the kernels.
#[test]
fn lavapipe_workers_are_pinned_one_per_cpu_and_run_the_kernels() {
    let g = gpu();
    let cpus = vae_wgpu::gpu::affinity::allowed_cpus();
    if !g.report().name.contains("llvmpipe") || cpus.len() < 2 || !cfg!(target_os = "linux") {
        eprintln!("not lavapipe on two or more Linux CPUs: nothing is pinned");
        return;
    }
    if !vae_wgpu::gpu::affinity::pinning_enabled() {
        assert!(
            g.report().pinned_worker_threads.is_empty(),
            "VAE_WGPU_PIN_THREADS=0 must disable it"
        );
        return;
    }
    let pinned = g.report().pinned_worker_threads.clone();
    // lavapipe starts a worker per CPU (up to its own cap), plus a queue thread.
    assert!(pinned.len() >= 2, "pinned {pinned:?} on CPUs {cpus:?}");
    let mut used = std::collections::BTreeSet::new();
    for &t in &pinned {
        let status = std::fs::read_to_string(format!("/proc/self/task/{t}/status")).unwrap();
        let list = status.lines().find(|l| l.starts_with("Cpus_allowed_list:")).unwrap();
        let cpu: usize = list["Cpus_allowed_list:".len()..]
            .trim()
            .parse()
            .expect("one CPU per worker");
        used.insert(cpu);
    }
    assert_eq!(
        used.len(),
        pinned.len().min(cpus.len()),
        "round-robin: no CPU doubled up while another is free"
    );
    // A matmul of ~0.3 GFLOP keeps the workers busy for several scheduler ticks.
    let a = g.upload("a", &[512, 512], &rand_vec(512 * 512, 1, -1.0, 1.0)).unwrap();
    let c = g.tensor("c", &[512, 512]).unwrap();
    let d = ops::matmul(g, "mm", &a, false, &a, false, &c, &Epilogue::default(), None).unwrap();
    let before: u64 = pinned.iter().map(|&t| thread_ticks(t)).sum();
    let list: Vec<&Dispatch> = (0..20).map(|_| &d).collect();
    g.run(&list).unwrap();
    let after: u64 = pinned.iter().map(|&t| thread_ticks(t)).sum();
    assert!(
        after > before,
        "the pinned threads did not run the kernels ({before} → {after} ticks)"
    );
}
