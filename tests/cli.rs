//! The examples' command lines, run as a user runs them: the test builds the example binaries
//! (`cargo build --examples`, a no-op when `cargo test` has just built them) and runs them,
//! checking exit codes, messages and what they leave on disk. Runs that train use tiny models
//! on a few hundred MNIST images.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The directory of the example binaries, built once per test binary.
fn examples_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = Command::new(cargo);
        build.args(["build", "--examples", "--quiet"]);
        if !cfg!(debug_assertions) {
            build.arg("--release");
        }
        let out = build
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .expect("running cargo build --examples");
        assert!(
            out.status.success(),
            "cargo build --examples failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // This binary is target/<profile>/deps/cli-<hash>; the examples are beside deps/.
        let exe = std::env::current_exe().unwrap();
        exe.parent().unwrap().parent().unwrap().join("examples")
    })
}

/// Runs an example with `args` (and `env`), waiting for it.
fn run(example: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(examples_dir().join(example));
    cmd.args(args).envs(env.iter().copied());
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        cmd.env("XDG_RUNTIME_DIR", std::env::temp_dir());
    }
    cmd.output().unwrap_or_else(|e| panic!("running {example}: {e}"))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A fresh directory for one test.
fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vae-wgpu-cli-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Every file under `dir` with its bytes: what a refused command must leave unchanged.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut all = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p.clone());
                all.insert(p, Vec::new());
            } else {
                all.insert(p.clone(), std::fs::read(&p).unwrap());
            }
        }
    }
    all
}

/// A tiny model and data: a run of a few steps takes about a second.
const TINY: &[&str] = &[
    "--limit-train",
    "256",
    "--hidden",
    "16",
    "--latent",
    "2",
    "--batch-size",
    "64",
];

fn tiny(extra: &[&str]) -> Vec<String> {
    TINY.iter().chain(extra).map(|s| s.to_string()).collect()
}

fn args(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn flag_errors_name_the_flag() {
    let out = run("train_mnist", &["--epoch", "3"], &[]);
    assert_eq!(out.status.code(), Some(2));
    let t = text(&out);
    assert!(t.contains("'--epoch'") && t.contains("'--epochs'"), "{t}");
    for (flag, value) in [("--batch-size", "0"), ("--epochs", "0"), ("--mc-samples", "0")] {
        let out = run("train_mnist", &[flag, value], &[]);
        assert_eq!(out.status.code(), Some(2));
        let t = text(&out);
        assert!(t.contains(flag) && t.contains("must be at least 1"), "{t}");
        for other in ["--batch-size", "--epochs", "--mc-samples"]
            .iter()
            .filter(|f| **f != flag)
        {
            assert!(!t.contains(other), "{flag} {value}: {t}");
        }
    }
    for (bad, needle) in [
        (&["--drop-last=true"][..], "unexpected value 'true'"),
        (&["stray"], "unexpected argument 'stray'"),
        (&["--autoencoder", "--vq", "8"], "cannot be used with"),
        (&["--l1", "0.1"], "--autoencoder"),
        (&["--eval-iw", "0"], "--eval-iw"),
        (&["--eval-iw", "100000"], "at most 32768"),
        (&["--latent", "2000000000"], "--latent"),
        (&["--vq", "4000000000"], "--vq K"),
        (&["--kl-warmup", "5", "--kl-cycles", "2"], "cannot be used with"),
        (&["--epochs", "-1"], "invalid value '-1' for '--epochs <N>'"),
        (&["--hidden", "-4"], "invalid value '-4' for '--hidden"),
        (
            &["--denoise", "0.999999999"],
            "rounds to 1 in f32 (the kernels' precision); use at most 0.99999994",
        ),
        (
            &["--likelihood", "gaussian:1e-50"],
            "1e-50 is outside the range of an f32",
        ),
        (
            &["--likelihood", "gaussian:2", "--variance", "learned-global"],
            "both set the Gaussian's variance",
        ),
        (&["--denoise", "1"], "[0, 1)"),
        (&["--variance", "learned-pixel"], "--likelihood gaussian"),
        (&["--dataset", "binarized-mnist", "--conditional"], "has none"),
        (&["--conv", "32,64"], "add --arch conv"),
        (&["--arch", "cnn"], "invalid value 'cnn'"),
        (&["--arch", "conv", "--conv", "32,64,128"], "--conv: 3 convolutions"),
        (&["--arch", "conv", "--conv", "32,64,128"], "divide by 8"),
        (&["--arch", "conv", "--vq", "64", "--latent", "20"], "drop --latent"),
        (&["--arch", "conv", "--vq", "64:49"], "the :G of --vq"),
        (&["--arch", "conv", "--vq", "64", "--hidden", "256"], "drop --hidden"),
        (
            &["--arch", "conv", "--vq", "64", "--conditional"],
            "conditional convolutional VQ-VAE",
        ),
        (
            &["--arch", "conv", "--autoencoder", "--contractive", "1"],
            "--contractive with --arch",
        ),
        (&["--objective", "iwae", "--iw-k", "0"], "--iw-k"),
        (&["--objective", "iwae"], "needs --iw-k K"),
        (&["--iw-k", "5"], "add --objective iwae"),
        (&["--objective", "iwsae"], "invalid value 'iwsae'"),
        (
            &["--objective", "iwae", "--iw-k", "5", "--mc-samples", "2"],
            "--mc-samples with --objective iwae --iw-k",
        ),
        (
            &["--objective", "iwae", "--iw-k", "5", "--kl-warmup", "100"],
            "--kl-warmup/--kl-cycles with --objective iwae --iw-k",
        ),
        (&["--objective", "iwae", "--iw-k", "5", "--autoencoder"], "needs a VAE"),
        (&["--activation", "swish"], "unknown activation \"swish\""),
        (&["--lr-schedule", "burda", "--epochs", "10"], "runs 3280 epochs"),
        (
            &["--lr-schedule", "burda", "--passes", "8", "--epochs", "10"],
            "runs 13 epochs",
        ),
        (&["--lr-schedule", "burda", "--passes", "0"], "must be at least 1"),
        (&["--passes", "5"], "add --lr-schedule burda"),
        (&["--adam-eps", "0"], "--adam-eps"),
    ] {
        let out = run("train_mnist", bad, &[]);
        assert_ne!(out.status.code(), Some(0), "{bad:?}");
        assert!(text(&out).contains(needle), "{bad:?}: {}", text(&out));
    }
    let out = run("sample", &["--checkpoint", "x", "--n", "0"], &[]);
    assert!(text(&out).contains("--n") && !out.status.success(), "{}", text(&out));
    let out = run("sample", &["--checkpoint", "x", "--seed", "-3"], &[]);
    assert!(text(&out).contains("invalid value '-3' for '--seed"), "{}", text(&out));
    let out = run("train_mnist", &[], &[("VAE_WGPU_PIN_THREADS", "maybe")]);
    assert!(text(&out).contains("VAE_WGPU_PIN_THREADS=\"maybe\""), "{}", text(&out));
    let out = run("train_mnist", &[], &[("WGPU_BACKEND", "bogus")]);
    let t = text(&out);
    assert!(
        t.contains("WGPU_BACKEND") && t.contains("bogus") && !t.contains("apt-get"),
        "{t}"
    );
}

/// A run's output redirected to a file holds no progress-bar redraws: the header lines, then
/// one line per epoch.
#[test]
fn a_redirected_log_is_plain_lines() {
    let dir = scratch("log");
    let out_dir = dir.join("run");
    let a = tiny(&["--epochs", "2", "--out", out_dir.to_str().unwrap()]);
    let out = run("train_mnist", &args(&a), &[]);
    assert!(out.status.success(), "{}", text(&out));
    let log = text(&out);
    assert!(!log.contains('\r') && !log.contains('\x1b'), "{log:?}");
    let epochs: Vec<&str> = log.lines().filter(|l| l.starts_with("epoch")).collect();
    assert_eq!(epochs.len(), 2, "{log}");
    let metrics = std::fs::read_to_string(out_dir.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 2);
    std::fs::remove_dir_all(&dir).ok();
}

/// A finished run is not overwritten, a missing run is not created by --resume, a refused
/// --resume changes nothing, and a diverging run exits non-zero naming the step, leaving no
/// checkpoint of its own.
#[test]
fn run_directories_keep_what_they_hold() {
    let dir = scratch("dirs");
    let run_dir = dir.join("run");
    let p = run_dir.to_str().unwrap();
    let out = run("train_mnist", &args(&tiny(&["--epochs", "1", "--out", p])), &[]);
    assert!(out.status.success(), "{}", text(&out));
    let before = snapshot(&run_dir);
    assert!(before.contains_key(&run_dir.join("checkpoint.safetensors")));
    // The same --out again: refused, nothing touched.
    let out = run("train_mnist", &args(&tiny(&["--epochs", "1", "--out", p])), &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("already holds a run") && text(&out).contains("--overwrite"));
    assert_eq!(snapshot(&run_dir), before);
    // A resume with another learning rate: refused, nothing touched.
    let out = run(
        "train_mnist",
        &args(&tiny(&["--epochs", "2", "--resume", p, "--lr", "0.01"])),
        &[],
    );
    assert!(
        !out.status.success() && text(&out).contains("lr = 0.001 in the run, 0.01 now"),
        "{}",
        text(&out)
    );
    assert_eq!(snapshot(&run_dir), before);
    // A resume of this dense run as a convolutional one: refused, nothing touched.
    let out = run(
        "train_mnist",
        &args(&tiny(&["--epochs", "2", "--resume", p, "--arch", "conv"])),
        &[],
    );
    assert!(
        !out.status.success() && text(&out).contains("arch = mlp in the run, conv now"),
        "{}",
        text(&out)
    );
    assert_eq!(snapshot(&run_dir), before);
    // Nothing to resume where there is no directory: and none is made.
    let missing = dir.join("missing");
    let out = run(
        "train_mnist",
        &args(&tiny(&["--resume", missing.to_str().unwrap()])),
        &[],
    );
    assert!(
        text(&out).contains("nothing to resume") && !missing.exists(),
        "{}",
        text(&out)
    );
    // A diverging run stops with the step, exit 1, and saves nothing.
    let bad = dir.join("bad");
    let out = run(
        "train_mnist",
        &args(&tiny(&[
            "--epochs",
            "1",
            "--lr",
            "1e30",
            "--out",
            bad.to_str().unwrap(),
        ])),
        &[],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let t = text(&out);
    assert!(
        t.contains("diverged in epoch 1") && t.contains("at step") && t.contains("--lr"),
        "{t}"
    );
    assert!(!bad.join("checkpoint.safetensors").exists() && !bad.join("saves").exists());
    // explore and sample take a run directory for --checkpoint, and refuse a non-finite model.
    let out = run("sample", &["--checkpoint", dir.to_str().unwrap()], &[]);
    assert!(text(&out).contains("is a directory without"), "{}", text(&out));
    std::fs::remove_dir_all(&dir).ok();
}

/// --overwrite replaces a run and nothing else: a directory of the user's (named as --out, as
/// `.`, or through a symbolic link) and a run beside foreign files are refused with nothing
/// touched; a run alone is replaced.
#[cfg(unix)]
#[test]
fn overwrite_replaces_a_run_and_nothing_else() {
    let dir = scratch("overwrite");
    let mine = dir.join("mine");
    std::fs::create_dir_all(mine.join("photos")).unwrap();
    std::fs::write(mine.join("thesis.tex"), "years of work").unwrap();
    let link = dir.join("link");
    std::os::unix::fs::symlink(&mine, &link).unwrap();
    let before = snapshot(&mine);
    for (out, cwd) in [(&mine, &dir), (&link, &dir), (&PathBuf::from("."), &mine)] {
        let a = tiny(&["--epochs", "1", "--overwrite", "--out", out.to_str().unwrap()]);
        let out = Command::new(examples_dir().join("train_mnist"))
            .args(&a)
            .current_dir(cwd)
            .env("XDG_RUNTIME_DIR", std::env::temp_dir())
            .output()
            .unwrap();
        let t = text(&out);
        assert_eq!(out.status.code(), Some(1), "{t}");
        assert!(t.contains("photos, thesis.tex and no run"), "{t}");
        assert_eq!(snapshot(&mine), before);
    }
    let run_dir = dir.join("run");
    let p = run_dir.to_str().unwrap();
    let out = run("train_mnist", &args(&tiny(&["--epochs", "1", "--out", p])), &[]);
    assert!(out.status.success(), "{}", text(&out));
    std::fs::write(run_dir.join("notes.txt"), "mine").unwrap();
    let before = snapshot(&run_dir);
    let out = run(
        "train_mnist",
        &args(&tiny(&["--epochs", "1", "--overwrite", "--out", p])),
        &[],
    );
    let t = text(&out);
    assert!(t.contains("nothing else") && t.contains("notes.txt"), "{t}");
    assert_eq!(snapshot(&run_dir), before);
    std::fs::remove_file(run_dir.join("notes.txt")).unwrap();
    let out = run(
        "train_mnist",
        &args(&tiny(&["--epochs", "1", "--overwrite", "--out", p])),
        &[],
    );
    assert!(out.status.success(), "{}", text(&out));
    std::fs::remove_dir_all(&dir).ok();
}

/// --resume's refusals say what to do and name the flag; a broken manifest gives way to the
/// newest complete save; a metric line that is not one is refused, not deleted; --out may name
/// the run's directory another way.
#[test]
fn resume_refusals_say_what_to_do() {
    let dir = scratch("resume");
    let resume = |a: &[&str]| {
        // The tiny flags, a flag given here taking the place of its own.
        let mut all: Vec<&str> = TINY
            .chunks(2)
            .filter(|f| !a.contains(&f[0]))
            .flatten()
            .copied()
            .collect();
        all.extend(a);
        let out = Command::new(examples_dir().join("train_mnist"))
            .args(all)
            .current_dir(&dir)
            .env("XDG_RUNTIME_DIR", std::env::temp_dir())
            .output()
            .unwrap();
        (out.status.code(), text(&out))
    };
    // A run stopped before its first save holds only run.json: resume says --overwrite, and
    // so does a new run into it.
    std::fs::create_dir(dir.join("early")).unwrap();
    std::fs::write(dir.join("early/run.json"), "{}").unwrap();
    let (code, t) = resume(&["--resume", "early"]);
    assert!(
        code == Some(1) && t.contains("before its first save") && t.contains("--out early --overwrite"),
        "{t}"
    );
    let (code, t) = resume(&["--out", "early"]);
    assert!(code == Some(1) && t.contains("--overwrite replaces it"), "{t}");
    // A file is not a run directory.
    std::fs::write(dir.join("file"), "x").unwrap();
    let (_, t) = resume(&["--resume", "file"]);
    assert!(t.contains("is a file, not a run directory"), "{t}");
    // A run, and a resume that differs from it: the flag is named.
    let (code, t) = resume(&["--epochs", "1", "--out", "run"]);
    assert_eq!(code, Some(0), "{t}");
    let run_dir = dir.join("run");
    let (_, t) = resume(&["--epochs", "2", "--resume", "run", "--limit-train", "300"]);
    assert!(
        t.contains("--limit-train: train_examples = 256 in the run, 300 now"),
        "{t}"
    );
    // A metric line that is not one: refused, naming the line; nothing changes.
    let metrics = std::fs::read_to_string(run_dir.join("metrics.jsonl")).unwrap();
    std::fs::write(run_dir.join("metrics.jsonl"), format!("{{\"epoch\":1,\"tra\n{metrics}")).unwrap();
    let before = snapshot(&run_dir);
    let (code, t) = resume(&["--epochs", "2", "--resume", "run"]);
    assert!(
        code == Some(1) && t.contains("metrics.jsonl: line 1 is not a metric record"),
        "{t}"
    );
    assert_eq!(snapshot(&run_dir), before);
    std::fs::write(run_dir.join("metrics.jsonl"), &metrics).unwrap();
    // An empty manifest gives way to the newest complete save; --out names the run's
    // directory another way.
    std::fs::write(run_dir.join("latest.json"), "").unwrap();
    let (code, t) = resume(&["--epochs", "2", "--resume", "run/", "--out", "./run"]);
    assert_eq!(code, Some(0), "{t}");
    assert!(t.contains("using the newest complete save, saves/e0001"), "{t}");
    let lines = std::fs::read_to_string(run_dir.join("metrics.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), 2, "{lines}");
    std::fs::remove_dir_all(&dir).ok();
}

/// Rewrites the safetensors file `src` into `dst`, editing its header (metadata, tensor
/// entries) with `edit` and its data section with `data`.
fn rewrite_checkpoint(
    src: &Path,
    dst: &Path,
    edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>),
    data: impl FnOnce(&serde_json::Map<String, serde_json::Value>, &mut [u8]),
) {
    let bytes = std::fs::read(src).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let map = header.as_object_mut().unwrap();
    edit(map);
    let mut body = bytes[8 + n..].to_vec();
    data(map, &mut body);
    let mut text = header.to_string();
    while !text.len().is_multiple_of(8) {
        text.push(' ');
    }
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(&body);
    std::fs::write(dst, out).unwrap();
}

/// explore and sample read a checkpoint once (a pipe works), refuse a device that never ends,
/// a training state, metadata they cannot use (naming the key and the file), an --out that
/// would replace a checkpoint or a run's pictures (before any work, creating nothing), and
/// say when a number of the report is not finite.
#[cfg(unix)]
#[test]
fn explore_and_sample_refuse_what_they_cannot_use() {
    let dir = scratch("readers");
    let run_dir = dir.join("run");
    let a = tiny(&["--epochs", "1", "--conditional", "--out", run_dir.to_str().unwrap()]);
    let out = run("train_mnist", &args(&a), &[]);
    assert!(out.status.success(), "{}", text(&out));
    let ckpt = run_dir.join("checkpoint.safetensors");
    let c = ckpt.to_str().unwrap();
    // A pipe, read once.
    let mut child = Command::new(examples_dir().join("sample"))
        .args([
            "--checkpoint",
            "/dev/stdin",
            "--out",
            dir.join("piped.png").to_str().unwrap(),
        ])
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let bytes = std::fs::read(&ckpt).unwrap();
    let feeder = std::thread::spawn(move || std::io::Write::write_all(&mut stdin, &bytes));
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    // A device that never ends, and a training state.
    let out = run("sample", &["--checkpoint", "/dev/zero"], &[]);
    assert!(
        text(&out).contains("checkpoint /dev/zero: invalid header JSON"),
        "{}",
        text(&out)
    );
    let state = run_dir.join("saves/e0001/training_state.safetensors");
    let out = run("sample", &["--checkpoint", state.to_str().unwrap()], &[]);
    assert!(text(&out).contains("it is a training state"), "{}", text(&out));
    // --out onto the checkpoint, or any .safetensors: refused, the checkpoint unchanged.
    let before = snapshot(&run_dir);
    for o in [
        c,
        &format!("{}/./checkpoint.safetensors", run_dir.display()),
        "x.safetensors",
    ] {
        let out = run("sample", &["--checkpoint", c, "--out", o], &[]);
        assert!(text(&out).contains("the PNG would replace a model"), "{}", text(&out));
    }
    // explore --out into a run: refused, the run unchanged.
    let out = run("explore", &["--checkpoint", c, "--out", run_dir.to_str().unwrap()], &[]);
    assert!(
        text(&out).contains("--out") && text(&out).contains("holds a train_mnist run"),
        "{}",
        text(&out)
    );
    assert_eq!(snapshot(&run_dir), before);
    // Metadata that cannot be used: named with the file.
    for (key, value) in [("seed", "abc"), ("binarize", "static"), ("dataset", "cifar")] {
        let bad = dir.join(format!("{key}.safetensors"));
        rewrite_checkpoint(
            &ckpt,
            &bad,
            |h| {
                h["__metadata__"][key] = value.into();
            },
            |_, _| {},
        );
        let ex = dir.join("ex");
        let out = run(
            "explore",
            &["--checkpoint", bad.to_str().unwrap(), "--out", ex.to_str().unwrap()],
            &[],
        );
        let t = text(&out);
        assert!(
            t.contains(&format!("{}: its metadata '{key}' is \"{value}\"", bad.display())),
            "{t}"
        );
        assert!(!ex.exists());
    }
    // A refusal during evaluation leaves no --out behind: a conditional model on unlabelled data.
    let amat = dir.join("amat");
    std::fs::create_dir(&amat).unwrap();
    let line = vec!["0"; 784].join(" ") + "\n";
    for split in ["train", "test"] {
        std::fs::write(amat.join(format!("binarized_mnist_{split}.amat")), line.repeat(3)).unwrap();
    }
    let ex = dir.join("ex");
    let out = run(
        "explore",
        &[
            "--checkpoint",
            c,
            "--out",
            ex.to_str().unwrap(),
            "--dataset",
            "binarized-mnist",
            "--data-dir",
            amat.to_str().unwrap(),
        ],
        &[],
    );
    assert!(
        !out.status.success() && text(&out).contains("labelled"),
        "{}",
        text(&out)
    );
    assert!(!ex.exists());
    // Weights that overflow: the report's null is explained.
    let huge = dir.join("huge.safetensors");
    rewrite_checkpoint(
        &ckpt,
        &huge,
        |_| {},
        |h, data| {
            let [begin, end] = [0, 1].map(|i| h["fc4.bias"]["data_offsets"][i].as_u64().unwrap() as usize);
            for v in data[begin..end].chunks_exact_mut(4) {
                v.copy_from_slice(&3e38f32.to_le_bytes());
            }
        },
    );
    let out = run(
        "explore",
        &[
            "--checkpoint",
            huge.to_str().unwrap(),
            "--out",
            ex.to_str().unwrap(),
            "--eval-iw",
            "2",
        ],
        &[],
    );
    let t = text(&out);
    assert!(
        out.status.success() && t.contains("\"test_loss\":null") && t.contains("warning: test_loss"),
        "{t}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// Two runs into one directory at once: the second fails at once, naming the first's PID.
#[test]
fn a_second_run_into_a_live_directory_is_refused() {
    let dir = scratch("lock");
    let p = dir.join("run");
    // Long enough to outlive the second run's start-up on a busy machine; killed once checked.
    let long = ["--epochs", "100", "--out", p.to_str().unwrap()];
    let mut first = Command::new(examples_dir().join("train_mnist"))
        .args(long)
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the first run holds its lock (its directory and .lock exist).
    let lock = p.join(".lock");
    for _ in 0..600 {
        if std::fs::read_to_string(&lock).is_ok_and(|s| !s.trim().is_empty()) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let short = ["--limit-train", "2000", "--epochs", "1", "--out", p.to_str().unwrap()];
    let out = run("train_mnist", &short, &[]);
    let t = text(&out);
    assert!(
        !out.status.success() && t.contains(&format!("pid {}", first.id())),
        "{t}"
    );
    let still_running = first.try_wait().unwrap().is_none();
    first.kill().ok();
    first.wait().unwrap();
    assert!(still_running, "the first run ended before the second was refused");
    std::fs::remove_dir_all(&dir).ok();
}

/// SIGINT finishes the step, saves, exits 130 and prints how to resume; the resumed run ends
/// with the uninterrupted run's numbers, bit for bit.
#[cfg(target_os = "linux")]
#[test]
fn an_interrupted_run_resumes_bit_for_bit() {
    let dir = scratch("sigint");
    let (a, b) = (dir.join("a"), dir.join("b"));
    let flags = [
        "--limit-train",
        "12000",
        "--epochs",
        "2",
        "--hidden",
        "64",
        "--seed",
        "9",
    ];
    let with = |out: &Path| -> Vec<String> {
        flags
            .iter()
            .map(|s| s.to_string())
            .chain(["--out".to_string(), out.display().to_string()])
            .collect()
    };
    let out = run("train_mnist", &args(&with(&a)), &[]);
    assert!(out.status.success(), "{}", text(&out));
    let child = Command::new(examples_dir().join("train_mnist"))
        .args(with(&b))
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Interrupt once training has started (its first save has not happened yet).
    let bar = b.join("run.json");
    for _ in 0..600 {
        if bar.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    // SAFETY: kill(2) on a child of ours.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let out = child.wait_with_output().unwrap();
    let t = text(&out);
    assert_eq!(out.status.code(), Some(130), "{t}");
    assert!(t.contains("--resume"), "{t}");
    let resumed: Vec<String> = with(&b)
        .into_iter()
        .map(|s| if s == "--out" { "--resume".into() } else { s })
        .collect();
    let out = run("train_mnist", &args(&resumed), &[]);
    assert!(out.status.success(), "{}", text(&out));
    let data = |dir: &Path| -> Vec<u8> {
        // The tensors, not the header: the metadata holds the adapter and timings.
        let bytes = std::fs::read(dir.join("checkpoint.safetensors")).unwrap();
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        bytes[8 + n..].to_vec()
    };
    assert_eq!(data(&a), data(&b));
    let columns = |dir: &Path| -> Vec<String> {
        std::fs::read_to_string(dir.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| {
                let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
                let o = v.as_object_mut().unwrap();
                o.remove("samples_per_sec");
                o.remove("elapsed_s");
                v.to_string()
            })
            .collect()
    };
    assert_eq!(columns(&a), columns(&b));
    std::fs::remove_dir_all(&dir).ok();
}

/// The last epoch is saved before the importance-weighted estimate, and SIGINT stops the
/// estimate at once: exit 130, the run saved, its metric line without the estimate, no
/// pictures.
#[cfg(target_os = "linux")]
#[test]
fn the_last_epoch_is_saved_before_the_estimate_and_a_signal_stops_it() {
    let dir = scratch("iwsig");
    let run_dir = dir.join("run");
    // K = 32768 over the 10,000 test images takes many minutes.
    let a = tiny(&[
        "--epochs",
        "1",
        "--eval-iw",
        "32768",
        "--out",
        run_dir.to_str().unwrap(),
    ]);
    let mut child = Command::new(examples_dir().join("train_mnist"))
        .args(&a)
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !run_dir.join("latest.json").exists() {
        assert!(std::time::Instant::now() < deadline, "no save before the estimate");
        assert!(child.try_wait().unwrap().is_none(), "the run ended before its save");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    let sent = std::time::Instant::now();
    // SAFETY: kill(2) on a child of ours.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    while child.try_wait().unwrap().is_none() {
        if sent.elapsed() > std::time::Duration::from_secs(30) {
            child.kill().unwrap();
            panic!("SIGINT during the estimate unanswered after 30 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let t = text(&out);
    assert_eq!(out.status.code(), Some(130), "{t}");
    assert!(t.contains("interrupted during the importance-weighted estimate"), "{t}");
    let manifest = std::fs::read_to_string(run_dir.join("latest.json")).unwrap();
    assert!(manifest.contains("\"save\":\"e0001\""), "{manifest}");
    let metrics = std::fs::read_to_string(run_dir.join("metrics.jsonl")).unwrap();
    assert!(
        metrics.lines().count() == 1 && !metrics.contains("test_iw_nll"),
        "{metrics}"
    );
    assert!(!run_dir.join("reconstructions.png").exists());
    // Uninterrupted, the estimate joins the last epoch's line.
    let done = dir.join("done");
    let a = tiny(&["--epochs", "2", "--eval-iw", "2", "--out", done.to_str().unwrap()]);
    let out = run("train_mnist", &args(&a), &[]);
    assert!(out.status.success(), "{}", text(&out));
    let metrics = std::fs::read_to_string(done.join("metrics.jsonl")).unwrap();
    let lines: Vec<&str> = metrics.lines().collect();
    assert_eq!(lines.len(), 2, "{metrics}");
    assert!(
        !lines[0].contains("test_iw_nll") && lines[1].contains("\"iw_k\":2"),
        "{metrics}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// Sizes from flags or a checkpoint's metadata are refused before anything is allocated, with
/// a message naming the size.
#[test]
fn sizes_beyond_the_device_or_the_host_are_refused() {
    let dir = scratch("sizes");
    let out_dir = dir.join("run");
    let o = out_dir.to_str().unwrap();
    for (flags, needle) in [
        (vec!["--hidden", "1000000000"], "parameter arena"),
        (vec!["--hidden", "100000"], "max_storage_buffer_binding_size"),
        (vec!["--latent", "200000000"], "parameter arena"),
        (vec!["--batch-size", "100000000"], "bytes"),
        (vec!["--mc-samples", "32768"], "bytes"),
    ] {
        let mut a = flags.clone();
        a.extend(["--out", o]);
        let out = run("train_mnist", &a, &[]);
        assert_eq!(out.status.code(), Some(1), "{flags:?}: {}", text(&out));
        assert!(text(&out).contains(needle), "{flags:?}: {}", text(&out));
        // The refusal names the flag that set the size.
        assert!(
            text(&out).contains(&format!("{}/", flags[0]))
                || text(&out).contains(&format!("{}:", flags[0]))
                || text(&out).contains(&format!("{} with", flags[0])),
            "{flags:?}: {}",
            text(&out)
        );
        assert!(!out_dir.exists(), "{flags:?} wrote {}", out_dir.display());
    }
    // A checkpoint whose metadata claims a latent of 4·10⁹.
    let ckpt = dir.join("huge.safetensors");
    let header = r#"{"__metadata__":{"input_dim":"784","hidden":"400","latent":"4000000000","activation":"relu","likelihood":"bernoulli","classes":"0","code":"gaussian","top":"none"}}"#;
    let mut padded = header.to_string();
    while !padded.len().is_multiple_of(8) {
        padded.push(' ');
    }
    let mut bytes = (padded.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(padded.as_bytes());
    std::fs::write(&ckpt, bytes).unwrap();
    for example in ["sample", "explore"] {
        let mut a = vec!["--checkpoint", ckpt.to_str().unwrap()];
        if example == "explore" {
            a.extend(["--out", o]);
        }
        let out = run(example, &a, &[]);
        let t = text(&out);
        assert!(!out.status.success() && t.contains("4000000000"), "{example}: {t}");
    }
    // One whose sizes are valid but beyond the device: the file and its sizes are named.
    let wide = dir.join("wide.safetensors");
    let header = header
        .replace(r#""hidden":"400""#, r#""hidden":"100000000""#)
        .replace("4000000000", "2");
    let mut padded = header.to_string();
    while !padded.len().is_multiple_of(8) {
        padded.push(' ');
    }
    let mut bytes = (padded.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(padded.as_bytes());
    std::fs::write(&wide, bytes).unwrap();
    let out = run("sample", &["--checkpoint", wide.to_str().unwrap()], &[]);
    let t = text(&out);
    assert!(
        t.contains(&format!(
            "checkpoint {}: its metadata describes a model too large",
            wide.display()
        )) && t.contains("hidden 100000000"),
        "{t}"
    );
    // sample --n beyond the budget and the device.
    let small = dir.join("small");
    let out = run(
        "train_mnist",
        &args(&tiny(&["--epochs", "1", "--out", small.to_str().unwrap()])),
        &[],
    );
    assert!(out.status.success(), "{}", text(&out));
    let c = small.join("checkpoint.safetensors");
    let out = run(
        "sample",
        &["--checkpoint", c.to_str().unwrap(), "--n", "1000000000"],
        &[],
    );
    let t = text(&out);
    assert!(
        !out.status.success() && t.contains("decoding 1000000000 codes") && t.contains("--n:"),
        "{t}"
    );
    let out = run(
        "sample",
        &["--checkpoint", c.to_str().unwrap(), "--n", "10000"],
        &[("VAE_WGPU_HOST_BUDGET", "1000000")],
    );
    let t = text(&out);
    assert!(
        !out.status.success() && t.contains("host memory") && t.contains("budget"),
        "{t}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// Every flag the examples' own command lines define (read from their `--help`) is documented
/// in docs/cli.md.
#[test]
fn every_flag_is_documented() {
    let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/cli.md")).unwrap();
    for example in ["train_mnist", "explore", "sample"] {
        let out = run(example, &["--help"], &[]);
        assert!(out.status.success(), "{example} --help");
        let help = String::from_utf8_lossy(&out.stdout).to_string();
        let flags: Vec<&str> = help
            .lines()
            .filter_map(|l| l.trim_start().strip_prefix("--"))
            .filter_map(|rest| rest.split([' ', '=', '<']).next())
            .filter(|f| *f != "help")
            .collect();
        assert!(flags.len() >= 4, "{example}: {flags:?} from\n{help}");
        for flag in flags {
            assert!(
                doc.contains(&format!("`--{flag}")),
                "docs/cli.md lacks {example}'s --{flag}"
            );
        }
    }
}

/// GitHub's anchor of a Markdown heading: lower case, punctuation dropped, spaces to hyphens.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// Every relative link in README.md and docs/*.md names a file that exists and, with an
/// anchor, a heading of that file.
#[test]
fn every_relative_link_resolves() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut pages = vec![root.join("README.md")];
    for e in std::fs::read_dir(root.join("docs")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "md") {
            pages.push(p);
        }
    }
    let anchors = |file: &Path| -> Vec<String> {
        std::fs::read_to_string(file)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with('#'))
            .map(|l| slug(l.trim_start_matches('#')))
            .collect()
    };
    let mut checked = 0;
    for page in &pages {
        let text = std::fs::read_to_string(page).unwrap();
        let mut rest = text.as_str();
        while let Some(i) = rest.find("](") {
            rest = &rest[i + 2..];
            let Some(end) = rest.find(')') else { break };
            let target = &rest[..end];
            rest = &rest[end..];
            if target.starts_with("http://") || target.starts_with("https://") || target.starts_with("mailto:") {
                continue;
            }
            let (file, anchor) = match target.split_once('#') {
                Some((f, a)) => (f, Some(a)),
                None => (target, None),
            };
            let path = if file.is_empty() {
                page.clone()
            } else {
                page.parent().unwrap().join(file)
            };
            assert!(path.exists(), "{}: link to {target} names no file", page.display());
            if let Some(a) = anchor {
                assert!(
                    anchors(&path).iter().any(|h| h == a),
                    "{}: link to {target}: no such heading in {}",
                    page.display(),
                    path.display()
                );
            }
            checked += 1;
        }
    }
    assert!(checked > 20, "only {checked} links found");
}

/// A .npy of uint8 `data` shaped `shape`, written by hand (format 1.0).
fn npy_u8(shape: &[usize], data: &[u8]) -> Vec<u8> {
    npy_of("|u1", shape, data)
}

/// A .npy file of `descr` (NumPy's dtype string) holding `data` as they are.
fn npy_of(descr: &str, shape: &[usize], data: &[u8]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let tuple = if shape.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {tuple}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend((header.len() as u16).to_le_bytes());
    out.extend(header.as_bytes());
    out.extend(data);
    out
}

/// MNIST exported to a .npz (x_train, y_train, x_test, y_test, uint8 [N, 28, 28]) trains to the
/// built-in loader's metrics, line for line, with the same seed (also streamed, and as float32
/// b·(1/255) kept as f32); the run records the source and
/// the image shape; array flags without arrays, and arrays that cannot be read, are refused
/// naming the flag or the file, with nothing written.
#[test]
fn mnist_as_numpy_arrays_trains_as_the_built_in_loader() {
    use std::io::Write;
    let dir = scratch("npz");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/mnist");
    let train = vae_wgpu::data::load_mnist_split(&root, true).unwrap();
    let test = vae_wgpu::data::load_mnist_split(&root, false).unwrap();
    let n = 1000;
    let npz = dir.join("mnist.npz");
    // The labels as NumPy stores MNIST's: one byte each.
    let bytes = |l: &[u32]| -> Vec<u8> { l.iter().map(|&v| v as u8).collect() };
    {
        let mut w = zip::ZipWriter::new(std::fs::File::create(&npz).unwrap());
        let stored = zip::write::FileOptions::default().compression_method(zip::CompressionMethod::Stored);
        for (name, bytes) in [
            ("x_train", npy_u8(&[n, 28, 28], &train.images[..n * 784])),
            ("y_train", npy_u8(&[n], &bytes(&train.labels[..n]))),
            ("x_test", npy_u8(&[test.count, 28, 28], &test.images)),
            ("y_test", npy_u8(&[test.count], &bytes(&test.labels))),
        ] {
            w.start_file(format!("{name}.npy"), stored).unwrap();
            w.write_all(&bytes).unwrap();
        }
        w.finish().unwrap();
    }
    let flags = [
        "--epochs",
        "1",
        "--hidden",
        "32",
        "--latent",
        "4",
        "--batch-size",
        "100",
    ];
    let runs: Vec<PathBuf> = ["built-in", "arrays"].iter().map(|t| dir.join(t)).collect();
    let source = format!("npy:{}", npz.display());
    for (run_dir, extra) in runs
        .iter()
        .zip([vec!["--limit-train", "1000"], vec!["--dataset", source.as_str()]])
    {
        let mut args: Vec<&str> = flags.to_vec();
        args.extend(extra);
        args.extend(["--out", run_dir.to_str().unwrap()]);
        let out = run("train_mnist", &args, &[]);
        assert!(out.status.success(), "{}", text(&out));
    }
    let metrics = |d: &Path| -> Vec<serde_json::Value> {
        std::fs::read_to_string(d.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| {
                let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
                for timing in ["samples_per_sec", "elapsed_s"] {
                    v.as_object_mut().unwrap().remove(timing);
                }
                v
            })
            .collect()
    };
    assert_eq!(metrics(&runs[0]), metrics(&runs[1]));
    // Streamed from the host a batch at a time (training and test images), the same run
    // gives the same numbers.
    let streamed = dir.join("streamed");
    let mut args: Vec<&str> = flags.to_vec();
    args.extend([
        "--dataset",
        source.as_str(),
        "--stream",
        "--out",
        streamed.to_str().unwrap(),
    ]);
    let out = run("train_mnist", &args, &[]);
    assert!(
        text(&out).contains("streaming: the 0.8 MB of training images stay on the host")
            && text(&out).contains("streaming: the 7.8 MB of test images stay on the host"),
        "{}",
        text(&out)
    );
    assert_eq!(metrics(&streamed), metrics(&runs[1]));

    // The same images as float32 b·(1/255), kept as f32 on the device, resident and streamed:
    // the same numbers again.
    let f32_npz = dir.join("mnist_f32.npz");
    {
        let grey = |b: &[u8]| -> Vec<u8> {
            b.iter()
                .flat_map(|&v| (v as f32 * (1.0 / 255.0)).to_le_bytes())
                .collect()
        };
        let mut w = zip::ZipWriter::new(std::fs::File::create(&f32_npz).unwrap());
        let stored = zip::write::FileOptions::default().compression_method(zip::CompressionMethod::Stored);
        for (name, bytes) in [
            ("x_train", npy_of("<f4", &[n, 28, 28], &grey(&train.images[..n * 784]))),
            ("y_train", npy_u8(&[n], &bytes(&train.labels[..n]))),
            ("x_test", npy_of("<f4", &[test.count, 28, 28], &grey(&test.images))),
            ("y_test", npy_u8(&[test.count], &bytes(&test.labels))),
        ] {
            w.start_file(format!("{name}.npy"), stored).unwrap();
            w.write_all(&bytes).unwrap();
        }
        w.finish().unwrap();
    }
    let f32_source = format!("npy:{}", f32_npz.display());
    for (tag, stream) in [("f32", false), ("f32-streamed", true)] {
        let out_dir = dir.join(tag);
        let mut args: Vec<&str> = flags.to_vec();
        args.extend(["--dataset", f32_source.as_str(), "--out", out_dir.to_str().unwrap()]);
        if stream {
            args.push("--stream");
        }
        let out = run("train_mnist", &args, &[]);
        assert!(out.status.success(), "{}", text(&out));
        assert!(
            text(&out).contains("float32 kept as f32") && (!stream || text(&out).contains("31.4 MB of test images")),
            "{}",
            text(&out)
        );
        assert_eq!(metrics(&out_dir), metrics(&runs[1]), "{tag}");
    }
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(runs[1].join("run.json")).unwrap()).unwrap();
    assert_eq!(record["dataset"], serde_json::Value::String(source.clone()));
    assert_eq!(record["image_shape"], "1,28,28");
    assert_eq!(record["train_examples"], "1000");

    // Colour: 40 random RGB images of 8×12 as [N, C, H, W]; the pictures come out in colour,
    // a grid of 8 columns with 2 px padding around 8×12 cells, and `sample` reads the shape
    // from the checkpoint.
    let colour = dir.join("colour.npy");
    let pixels: Vec<u8> = (0..40 * 3 * 8 * 12).map(|i| (i * 37 % 251) as u8).collect();
    std::fs::write(&colour, npy_u8(&[40, 3, 8, 12], &pixels)).unwrap();
    let colour_run = dir.join("colour");
    let colour_source = format!("npy:{}", colour.display());
    let out = run(
        "train_mnist",
        &[
            "--dataset",
            &colour_source,
            "--epochs",
            "1",
            "--hidden",
            "16",
            "--latent",
            "2",
            "--out",
            colour_run.to_str().unwrap(),
        ],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("train 36 | test 4 | 3x8x12"), "{}", text(&out));
    let png = image::open(colour_run.join("reconstructions.png")).unwrap();
    assert_eq!(png.color(), image::ColorType::Rgb8);
    // 4 test images over their reconstructions: 8 cells in one row of 8 columns.
    assert_eq!((png.width(), png.height()), (8 * 12 + 9 * 2, 8 + 2 * 2));
    let drawn = dir.join("drawn.png");
    let out = run(
        "sample",
        &[
            "--checkpoint",
            colour_run.to_str().unwrap(),
            "--n",
            "8",
            "--out",
            drawn.to_str().unwrap(),
        ],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(image::open(&drawn).unwrap().color(), image::ColorType::Rgb8);

    // Refusals, each before the run directory is touched.
    let before = snapshot(&dir);
    let junk = dir.join("junk.npy");
    std::fs::write(&junk, b"no array here").unwrap();
    let junk_source = format!("npy:{}", junk.display());
    for (bad, needle) in [
        (vec!["--layout", "nhwc"], "--layout applies to --dataset npy"),
        (vec!["--test-split", "0.2"], "--test-split applies"),
        (
            vec!["--dataset", source.as_str(), "--test-split", "0.2"],
            "a .npz has its own test arrays",
        ),
        (vec!["--dataset", junk_source.as_str()], "not a NumPy .npy array"),
        (vec!["--dataset", "npy:"], "npy: takes FILE"),
        (vec!["--dataset", "cifar"], "npy:FILE[,LABELS]"),
        (
            vec!["--dataset", source.as_str(), "--data-dir", "x"],
            "--data-dir locates a built-in",
        ),
    ] {
        let out = run("train_mnist", &bad, &[]);
        assert!(!out.status.success(), "{bad:?}");
        assert!(text(&out).contains(needle), "{bad:?}: {}", text(&out));
    }
    std::fs::remove_file(&junk).unwrap();
    assert_eq!(snapshot(&dir), before);
    std::fs::remove_dir_all(&dir).ok();
}

/// MNIST exported by `export_images` as flat train/ and test/ folders of PNGs trains to the
/// metrics of the same images as NumPy arrays (which train as the built-in loader does); with
/// `--by-class` the folders give the labels, printed with their counts; folder flags elsewhere
/// are refused.
#[test]
fn an_exported_image_folder_trains_as_the_same_arrays() {
    use std::io::Write;
    let dir = scratch("folder");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/mnist");
    let (n_train, n_test) = (300, 200);
    let flat = dir.join("flat");
    let out = run(
        "export_images",
        &[
            "--out",
            flat.to_str().unwrap(),
            "--limit-train",
            "300",
            "--limit-test",
            "200",
        ],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(flat.join("train/00299.png").is_file() && flat.join("test/00199.png").is_file());
    let train = vae_wgpu::data::load_mnist_split(&root, true).unwrap();
    let test = vae_wgpu::data::load_mnist_split(&root, false).unwrap();
    let npz = dir.join("same.npz");
    {
        let mut w = zip::ZipWriter::new(std::fs::File::create(&npz).unwrap());
        let stored = zip::write::FileOptions::default().compression_method(zip::CompressionMethod::Stored);
        for (name, bytes) in [
            ("x_train", npy_u8(&[n_train, 28, 28], &train.images[..n_train * 784])),
            ("x_test", npy_u8(&[n_test, 28, 28], &test.images[..n_test * 784])),
        ] {
            w.start_file(format!("{name}.npy"), stored).unwrap();
            w.write_all(&bytes).unwrap();
        }
        w.finish().unwrap();
    }
    let cache = dir.join("cache");
    let flags = ["--epochs", "2", "--hidden", "16", "--latent", "2", "--batch-size", "64"];
    let mut lines = Vec::new();
    for (tag, source) in [
        ("from-folder", format!("images:{}", flat.display())),
        ("from-npz", format!("npy:{}", npz.display())),
    ] {
        let run_dir = dir.join(tag);
        let mut args: Vec<&str> = flags.to_vec();
        args.extend(["--dataset", &source, "--out", run_dir.to_str().unwrap()]);
        if source.starts_with("images:") {
            args.extend(["--cache-dir", cache.to_str().unwrap()]);
        }
        let out = run("train_mnist", &args, &[]);
        assert!(out.status.success(), "{}", text(&out));
        assert!(text(&out).contains("train 300 | test 200 | 1x28x28"), "{}", text(&out));
        let metrics: Vec<serde_json::Value> = std::fs::read_to_string(run_dir.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| {
                let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
                for timing in ["samples_per_sec", "elapsed_s"] {
                    v.as_object_mut().unwrap().remove(timing);
                }
                v
            })
            .collect();
        lines.push(metrics);
    }
    assert_eq!(lines[0], lines[1]);
    // The decoded folder is kept: a second run reads the cache, and trains the same.
    let again = dir.join("again");
    let folder_source = format!("images:{}", flat.display());
    let mut args: Vec<&str> = flags.to_vec();
    args.extend([
        "--dataset",
        &folder_source,
        "--out",
        again.to_str().unwrap(),
        "--cache-dir",
        cache.to_str().unwrap(),
    ]);
    let out = run("train_mnist", &args, &[]);
    assert!(text(&out).contains("decoded images: reused"), "{}", text(&out));
    assert_eq!(
        std::fs::read_to_string(again.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .count(),
        lines[0].len()
    );

    // Class folders: labels from the folder names, counted in the output.
    let classes = dir.join("classes");
    let out = run(
        "export_images",
        &[
            "--out",
            classes.to_str().unwrap(),
            "--limit-train",
            "300",
            "--limit-test",
            "200",
            "--by-class",
        ],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out));
    let counted: Vec<usize> = (0..10)
        .map(|c| {
            train.labels[..n_train]
                .iter()
                .chain(&test.labels[..n_test])
                .filter(|&&l| l == c)
                .count()
        })
        .collect();
    let source = format!("images:{}", classes.display());
    let run_dir = dir.join("conditional");
    let out = run(
        "train_mnist",
        &[
            "--dataset",
            &source,
            "--conditional",
            "--epochs",
            "1",
            "--hidden",
            "16",
            "--latent",
            "2",
            "--out",
            run_dir.to_str().unwrap(),
            "--cache-dir",
            "none",
        ],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out));
    let want = format!("classes: 0 {}, 1 {},", counted[0], counted[1]);
    assert!(text(&out).contains(&want), "{want} in {}", text(&out));
    assert!(text(&out).contains("| 10 classes"), "{}", text(&out));
    // explore reads the folder again as the run recorded it: its test loss is the run's last.
    let last: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(run_dir.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .last()
            .unwrap(),
    )
    .unwrap();
    let ex = dir.join("explored");
    let out = run(
        "explore",
        &[
            "--checkpoint",
            run_dir.to_str().unwrap(),
            "--out",
            ex.to_str().unwrap(),
            "--eval-iw",
            "2",
        ],
        &[("XDG_CACHE_HOME", cache.to_str().unwrap())],
    );
    assert!(out.status.success(), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_str(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .rfind(|l| l.starts_with('{'))
            .unwrap(),
    )
    .unwrap();
    let (got, want) = (
        report["test_loss"].as_f64().unwrap(),
        last["test_loss"].as_f64().unwrap(),
    );
    assert!((got - want).abs() < 1e-3, "explore {got} vs the run's {want}");
    assert!(ex.join("class_grid.png").is_file());

    for (bad, needle) in [
        (
            vec!["--image-size", "32"],
            "--image-size applies to --dataset images:DIR",
        ),
        (
            vec!["--dataset", source.as_str(), "--layout", "nhwc"],
            "--layout does not apply",
        ),
        (vec!["--dataset", "images:"], "images: takes a directory"),
        (
            vec!["--dataset", "images:/nonexistent/dir"],
            "not a directory of images",
        ),
    ] {
        let out = run("train_mnist", &bad, &[]);
        assert!(!out.status.success(), "{bad:?}");
        assert!(text(&out).contains(needle), "{bad:?}: {}", text(&out));
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// Width and height from a PNG's IHDR chunk (bytes 16..24, big-endian).
fn png_size(path: &Path) -> (u32, u32) {
    let b = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(&b[..8], b"\x89PNG\r\n\x1a\n", "{}", path.display());
    let word = |at: usize| u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
    (word(16), word(20))
}

/// The embedding example as a host program runs it: its own device, a model it trains
/// itself through the host-driven loop, the latent walk's frames, and fine-tuning on inverted
/// digits whose mean loss over the last 50 steps is below that over the first 50; then from a
/// conditional train_mnist checkpoint, and refusing an autoencoder's.
#[test]
fn the_embed_example_walks_and_fine_tunes() {
    let dir = scratch("embed");
    let out_dir = dir.join("out");
    let out = run(
        "embed",
        &[
            "--out",
            out_dir.to_str().unwrap(),
            "--pretrain-epochs",
            "1",
            "--frames",
            "6",
            "--finetune-epochs",
            "2",
        ],
        &[],
    );
    let log = text(&out);
    assert!(out.status.success(), "{log}");
    let line = log
        .lines()
        .find(|l| l.starts_with("fine-tuning: mean loss over the first 50 steps"))
        .unwrap_or_else(|| panic!("no fine-tuning summary in:\n{log}"));
    let numbers: Vec<f64> = line
        .split([' ', ','])
        .filter_map(|w| w.parse().ok())
        .filter(|&v: &f64| v != 50.0)
        .collect();
    let [first, last] = numbers[..] else {
        panic!("two losses in {line:?}")
    };
    assert!(last < first, "{line}");
    assert!(log.contains("walk: 6 frames of 8 digits"), "{log}");
    // One walk per row, one frame per column: 29-pixel cells and a 1-pixel border.
    assert_eq!(png_size(&out_dir.join("walk.png")), (6 * 29 + 1, 8 * 29 + 1));
    for name in ["inverted-before.png", "inverted-after.png"] {
        assert_eq!(png_size(&out_dir.join(name)), (16 * 29 + 1, 2 * 29 + 1), "{name}");
    }

    // From a conditional train_mnist checkpoint (its run directory): the walk and the
    // fine-tuning take their labels; an autoencoder's checkpoint, with no prior, is refused.
    // One tiny epoch of train_mnist with `flag`, into dir/`name`.
    let trained = |name: &str, flag: &str| -> PathBuf {
        let run_dir = dir.join(name);
        let out = run(
            "train_mnist",
            &args(&tiny(&["--epochs", "1", flag, "--out", run_dir.to_str().unwrap()])),
            &[],
        );
        assert!(out.status.success(), "{}", text(&out));
        run_dir
    };
    let run_dir = trained("run", "--conditional");
    let from_ckpt = dir.join("from-checkpoint");
    let out = run(
        "embed",
        &[
            "--checkpoint",
            run_dir.to_str().unwrap(),
            "--out",
            from_ckpt.to_str().unwrap(),
            "--frames",
            "4",
            "--finetune-epochs",
            "1",
        ],
        &[],
    );
    let log = text(&out);
    assert!(
        out.status.success() && log.contains("model: ") && !log.contains("pretraining"),
        "{log}"
    );
    assert_eq!(png_size(&from_ckpt.join("walk.png")), (4 * 29 + 1, 8 * 29 + 1));
    let ae_dir = trained("ae", "--autoencoder");
    let out = run(
        "embed",
        &[
            "--checkpoint",
            ae_dir.to_str().unwrap(),
            "--out",
            from_ckpt.to_str().unwrap(),
        ],
        &[],
    );
    assert!(
        !out.status.success() && text(&out).contains("a code with a prior"),
        "{}",
        text(&out)
    );
    std::fs::remove_dir_all(&dir).ok();
}
