//! Pinning lavapipe's compute worker threads to distinct CPUs (Linux).
//!
//! lavapipe runs a dispatch's workgroups on a pool of worker threads, one per CPU, woken for
//! every dispatch. Measured on the 2-vCPU machines this crate is developed on, the Linux
//! scheduler often wakes both workers on the same CPU and does not separate them before the
//! dispatch ends (a few ms), so a dispatch then runs at one core's speed: the same matmul took
//! 1.4–2.0 ms or 2.5–4.0 ms from one run to the next. With each worker pinned to its own CPU
//! every run is at the fast end (docs/performance.md).
//!
//! The threads pinned are those the driver starts while [`super::GpuContext::new`] creates the
//! instance and device and leaves unnamed, so that they carry the name of the thread creating
//! the context: the compute workers and the queue thread (which sleeps while they run). The
//! driver's named threads, such as `llvmpipe-0` for rasterisation, are left alone. They are
//! spread round-robin, in creation order, over the CPUs the creating thread may run on. Only
//! our own instance is touched: [`super::GpuContext::from_device`] never pins a host's
//! threads. `VAE_WGPU_PIN_THREADS=0` turns it off.

/// Thread ids of this process, ascending (empty where /proc is unavailable).
pub fn thread_ids() -> Vec<u32> {
    let mut ids: Vec<u32> = std::fs::read_dir("/proc/self/task")
        .map(|dir| dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect())
        .unwrap_or_default();
    ids.sort_unstable();
    ids
}

fn thread_name(tid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/self/task/{tid}/comm"))
        .ok()
        .map(|s| s.trim_end().to_string())
}

/// Pins the threads started since `before` (a [`thread_ids`] snapshot) that carry the calling
/// thread's name, which a new thread inherits until it names itself, one CPU each from those
/// the calling thread may use, round-robin in id order. Returns the ids pinned; threads that
/// ended meanwhile, or a platform without affinity control, are not pinned. Needs two CPUs or
/// more.
pub fn pin_new_threads(before: &[u32]) -> Vec<u32> {
    let Ok(own) = std::fs::read_to_string("/proc/thread-self/comm") else {
        return Vec::new();
    };
    let own = own.trim_end();
    let unnamed: Vec<u32> = thread_ids()
        .into_iter()
        .filter(|t| before.binary_search(t).is_err())
        .filter(|&t| thread_name(t).as_deref() == Some(own))
        .collect();
    let cpus = allowed_cpus();
    if cpus.len() < 2 {
        return Vec::new();
    }
    unnamed
        .iter()
        .zip(cpus.iter().cycle())
        .filter(|&(&tid, &cpu)| pin(tid, cpu))
        .map(|(&tid, _)| tid)
        .collect()
}

/// The CPUs the calling thread may run on (empty where that is unknown).
#[cfg(target_os = "linux")]
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity writes at most its size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    }
}

#[cfg(target_os = "linux")]
fn pin(tid: u32, cpu: usize) -> bool {
    // SAFETY: as above; a tid that has exited makes the call fail, which we report.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(tid as libc::pid_t, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

/// The CPUs the calling thread may run on (empty where that is unknown).
#[cfg(not(target_os = "linux"))]
pub fn allowed_cpus() -> Vec<usize> {
    Vec::new()
}

#[cfg(not(target_os = "linux"))]
fn pin(_tid: u32, _cpu: usize) -> bool {
    false
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    fn cpus_of(tid: u32) -> String {
        let status = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).unwrap();
        let line = status.lines().find(|l| l.starts_with("Cpus_allowed_list:")).unwrap();
        line["Cpus_allowed_list:".len()..].trim().to_string()
    }

    /// Threads started after the snapshot that inherit the caller's name get one CPU each,
    /// round-robin; a thread that names itself, like the driver's rasteriser threads, is left.
    #[test]
    fn new_unnamed_threads_are_spread_over_the_cpus() {
        let cpus = allowed_cpus();
        if cpus.len() < 2 {
            eprintln!("one CPU: nothing to spread");
            return;
        }
        let before = thread_ids();
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let stop_rx = std::sync::Arc::new(std::sync::Mutex::new(stop_rx));
        let (id_tx, id_rx) = std::sync::mpsc::channel::<u32>();
        let mut handles = Vec::new();
        for i in 0..3 {
            let rx = stop_rx.clone();
            let tx = id_tx.clone();
            let body = move || {
                let tid = std::fs::read_link("/proc/thread-self")
                    .ok()
                    .and_then(|p| p.file_name()?.to_str()?.parse().ok())
                    .unwrap_or(0);
                tx.send(tid).unwrap();
                let _ = rx.lock().unwrap().recv();
            };
            // Threads 0 and 1 keep the inherited name; thread 2 names itself.
            handles.push(if i == 2 {
                std::thread::Builder::new()
                    .name("named-helper".into())
                    .spawn(body)
                    .unwrap()
            } else {
                // Rust names a thread only when asked, so these inherit the test thread's name.
                std::thread::spawn(body)
            });
        }
        let ids: Vec<u32> = (0..3).map(|_| id_rx.recv().unwrap()).collect();
        let pinned = pin_new_threads(&before);
        let inherited: Vec<u32> = ids
            .iter()
            .copied()
            .filter(|&t| thread_name(t).as_deref() != Some("named-helper"))
            .collect();
        let named: Vec<u32> = ids.iter().copied().filter(|t| !inherited.contains(t)).collect();
        for t in &inherited {
            assert!(pinned.contains(t), "thread {t} inherited the name but was not pinned");
        }
        assert!(!pinned.contains(&named[0]), "a named thread was pinned");
        let mut sorted = inherited.clone();
        sorted.sort_unstable();
        let a = cpus_of(sorted[0]);
        let b = cpus_of(sorted[1]);
        assert!(
            a.parse::<usize>().is_ok() && b.parse::<usize>().is_ok(),
            "one CPU each: {a}, {b}"
        );
        assert_ne!(a, b, "consecutive threads share a CPU");
        let own = std::process::id(); // the main thread is never pinned
        assert_eq!(
            cpus_of(named[0]),
            cpus_of(own),
            "the named thread kept the process's CPUs"
        );
        for _ in 0..3 {
            let _ = stop_tx.send(());
        }
        for h in handles {
            h.join().unwrap();
        }
    }
}
