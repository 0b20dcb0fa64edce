//! Runtime behaviour: memory accounting, typed errors for bad requests.

use vae_wgpu::gpu::Dispatch;
use vae_wgpu::internals::ops::{self, Epilogue};
use vae_wgpu::{Gpu, VaeError};

use crate::common::{gpu, rand_vec};

#[test]
fn repeated_work_allocates_nothing_new() {
    // A private device, so other tests' allocations do not move the counters.
    let g = Gpu::new(vae_wgpu::GpuOptions::from_env().expect("the environment's GPU settings"))
        .expect("GPU tests need an adapter");
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
    let cpus = vae_wgpu::internals::affinity::allowed_cpus();
    if !g.report().name.contains("llvmpipe") || cpus.len() < 2 || !cfg!(target_os = "linux") {
        eprintln!("not lavapipe on two or more Linux CPUs: nothing is pinned");
        return;
    }
    if !g.options().pin_threads {
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

/// Every op refuses operands that do not fit, before any pipeline or bind group is made, with
/// a Shape error that names the dispatch and what was wrong (the matmul's refusals are in
/// kernels.rs). One case per check.
#[test]
fn ops_refuse_mismatched_shapes_with_typed_errors() {
    let g = gpu();
    let t = |shape: &[usize]| g.tensor("t", shape).unwrap();
    let step = ops::StepBuffer::new(g).unwrap();
    let adam = ops::AdamConfig::default();
    let relu = ops::Activation::Relu;
    let bern = ops::Likelihood::Bernoulli;
    let seg = |offset, len, slot| ops::Segment {
        offset,
        len,
        slot,
        scale: 1.0,
    };
    let (x8, words, sq) = (t(&[2, 8]), t(&[4]), t(&[4, 4]));
    let perm = g.upload_words("perm", &[0, 1]).unwrap();
    let cases: Vec<(&str, Result<Dispatch, VaeError>, &str)> = vec![
        (
            "act-len",
            ops::activation_forward(g, "act-len", relu, 0.0, &t(&[8]), &t(&[12])),
            "differ",
        ),
        (
            "act-odd",
            ops::activation_forward(g, "act-odd", relu, 0.0, &t(&[6]), &t(&[6])),
            "multiple of 4",
        ),
        (
            "act-bwd",
            ops::activation_backward(g, "act-bwd", relu, 0.0, &t(&[8]), &t(&[8]), &t(&[4])),
            "differ",
        ),
        (
            "adam",
            ops::adam(
                g,
                "adam",
                &adam,
                &step,
                &t(&[8]),
                &t(&[8]),
                &t(&[8]),
                &t(&[4]),
                &t(&[4]),
            ),
            "8, 8, 8, 4",
        ),
        (
            "adam-odd",
            ops::adam(
                g,
                "adam-odd",
                &adam,
                &step,
                &t(&[6]),
                &t(&[6]),
                &t(&[6]),
                &t(&[6]),
                &t(&[4]),
            ),
            "divisible by 4",
        ),
        (
            "gather-1d",
            ops::gather(g, "gather-1d", &step, &words, 2, 8, &perm, &t(&[16]), false),
            "[B, D]",
        ),
        (
            "gather-data",
            ops::gather(g, "gather-data", &step, &t(&[3]), 2, 8, &perm, &x8, false),
            "got 3 words",
        ),
        (
            "gather-narrow",
            ops::gather(g, "gather-narrow", &step, &words, 2, 8, &perm, &t(&[2, 4]), false),
            "width 4",
        ),
        (
            "condition-rows",
            ops::condition(g, "condition-rows", &step, &perm, 4, &perm, &x8, 4, &t(&[3, 8]), 4),
            "multiple",
        ),
        (
            "loss-1d",
            ops::loss(g, "loss-1d", bern, &t(&[8]), &x8, 1.0, &t(&[2]), &t(&[8]), None),
            "2-D",
        ),
        (
            "loss-nll",
            ops::loss(g, "loss-nll", bern, &x8, &x8, 1.0, &t(&[3]), &x8, None),
            "got [3]",
        ),
        (
            "loss-rows",
            ops::loss(g, "loss-rows", bern, &t(&[3, 8]), &x8, 1.0, &t(&[3]), &t(&[3, 8]), None),
            "multiple",
        ),
        (
            "loss-grad",
            ops::loss(g, "loss-grad", bern, &x8, &x8, 1.0, &t(&[2]), &t(&[8, 2]), None),
            "got [8, 2]",
        ),
        (
            "loss-log-c",
            ops::loss(
                g,
                "loss-log-c",
                ops::Likelihood::GaussianLearned { per_pixel: true },
                &x8,
                &x8,
                1.0,
                &t(&[2]),
                &x8,
                Some(&ops::LearnedLogC {
                    log_c: &t(&[4]),
                    dlc: &t(&[16]),
                }),
            ),
            "needs 8 values (got 4)",
        ),
        (
            "log-c-grad",
            ops::log_c_grad(g, "log-c-grad", false, &t(&[16]), &t(&[2])),
            "one gradient",
        ),
        ("colsum", ops::colsum(g, "colsum", &x8, &t(&[4]), false), "output of 8"),
        (
            "colsum-1d",
            ops::colsum(g, "colsum-1d", &t(&[8]), &t(&[8]), false),
            "2-D",
        ),
        (
            "segments-none",
            ops::sum_segments(g, "segments-none", &step, &t(&[8]), &t(&[1, 2]), &[]),
            "got 0",
        ),
        (
            "segments-out",
            ops::sum_segments(g, "segments-out", &step, &t(&[8]), &t(&[1, 2]), &[seg(4, 8, 0)]),
            "outside",
        ),
        (
            "segments-slot",
            ops::sum_segments(g, "segments-slot", &step, &t(&[8]), &t(&[1, 2]), &[seg(0, 8, 2)]),
            "2 slots",
        ),
        (
            "reparam-z",
            ops::reparam_kl_forward(g, "reparam-z", &step, &x8, 2, &t(&[2, 4]), &t(&[8]), None),
            "[4, 4+]",
        ),
        (
            "reparam-kl",
            ops::reparam_kl_forward(g, "reparam-kl", &step, &x8, 1, &t(&[2, 4]), &t(&[6]), None),
            "B·Z = 8",
        ),
        (
            "reparam-ratio",
            ops::reparam_kl_forward(g, "reparam-ratio", &step, &x8, 1, &t(&[2, 4]), &t(&[8]), Some(&t(&[4]))),
            "L·B·Z = 8",
        ),
        (
            "reparam-bwd",
            ops::reparam_kl_backward(g, "reparam-bwd", &step, &x8, 1, &t(&[2, 4]), &t(&[2, 4])),
            "gradient must be [2, 8]",
        ),
        (
            "code-z",
            ops::code_forward(g, "code-z", &x8, 0.1, &t(&[2, 4]), &t(&[16])),
            "Z' ≥ Z",
        ),
        (
            "code-pen",
            ops::code_forward(g, "code-pen", &x8, 0.1, &x8, &t(&[8])),
            "B·Z = 16",
        ),
        (
            "code-bwd",
            ops::code_backward(g, "code-bwd", &x8, 0.1, &x8, &t(&[2, 4])),
            "gradient must be [2, 8]",
        ),
        (
            "contractive-square",
            ops::contractive(g, "contractive-square", 0.1, &x8, &x8, &x8, &x8, &t(&[16]), &x8),
            "one square shape",
        ),
        (
            "contractive-terms",
            ops::contractive(g, "contractive-terms", 0.1, &sq, &sq, &sq, &sq, &t(&[8]), &sq),
            "terms 16 values",
        ),
        (
            "vq-codebook",
            ops::vq_forward(
                g,
                "vq-codebook",
                &x8,
                &t(&[5, 3]),
                2,
                0.25,
                1.0,
                &x8,
                &t(&[16]),
                &t(&[4]),
            ),
            "codebook [K, Z/2]",
        ),
        (
            "vq-groups",
            ops::vq_forward(g, "vq-groups", &x8, &t(&[5, 8]), 3, 0.25, 1.0, &x8, &t(&[16]), &t(&[6])),
            "in 3 groups",
        ),
        (
            "vq-index",
            ops::vq_forward(g, "vq-index", &x8, &t(&[5, 4]), 2, 0.25, 1.0, &x8, &t(&[16]), &t(&[2])),
            "B·G = 4 indices",
        ),
        (
            "vq-pen",
            ops::vq_forward(g, "vq-pen", &x8, &t(&[5, 4]), 2, 0.25, 1.0, &x8, &t(&[8]), &t(&[4])),
            "B·Z = 16",
        ),
        (
            "vq-bwd",
            ops::vq_backward(
                g,
                "vq-bwd",
                &x8,
                &t(&[5, 4]),
                2,
                0.25,
                1.0,
                &t(&[4]),
                &x8,
                &x8,
                Some(&t(&[4, 4])),
            )
            .map(|mut d| d.remove(0)),
            "got [2, 8] and [4, 4]",
        ),
        (
            "vq-ema",
            ops::vq_ema(
                g,
                "vq-ema",
                &x8,
                &t(&[5, 4]),
                2,
                &t(&[4]),
                0.99,
                &t(&[5, 4]),
                &t(&[4, 5]),
            ),
            "must be shaped as the codebook",
        ),
        (
            "vq-ema-decay",
            ops::vq_ema(
                g,
                "vq-ema-decay",
                &x8,
                &t(&[5, 4]),
                2,
                &t(&[4]),
                1.0,
                &t(&[5, 4]),
                &t(&[5, 4]),
            ),
            "decay in [0, 1)",
        ),
    ];
    for (label, result, fragment) in cases {
        match result {
            Err(VaeError::Shape(m)) => {
                assert!(m.starts_with(label), "{label}: message does not name the dispatch: {m}");
                assert!(m.contains(fragment), "{label}: message lacks {fragment:?}: {m}");
            }
            Err(other) => panic!("{label}: expected a Shape error, got {other}"),
            Ok(_) => panic!("{label}: accepted"),
        }
    }
    // Reading more rows than the metric log holds is refused too.
    match ops::read_log_totals(g, &t(&[2, 2]), 3) {
        Err(VaeError::Shape(m)) => assert!(m.contains("holds 2 rows, asked for 3"), "{m}"),
        other => panic!("read_log_totals: expected a Shape error, got {:?}", other.err()),
    }
}
