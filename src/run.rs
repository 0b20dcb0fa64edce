//! A run directory: the files of one training run, kept so that nothing is lost.
//!
//! - One process at a time: a run holds an exclusive lock on `DIR/.lock` for its whole life
//!   (the kernel releases it when the process dies, `kill -9` included) and writes its PID into
//!   it. A second run into the same directory fails at once, naming that PID.
//! - A new run refuses a directory that already holds files (`.lock` aside) unless told to
//!   overwrite them; resuming needs the directory to exist and creates nothing in it before
//!   the caller has accepted the run's record.
//! - Every save is a pair — the model (`checkpoint.safetensors`, model-only, what PyTorch and
//!   the examples load) and the training state — written into `saves/<tag>/` under a temporary
//!   name, fsynced, and renamed into place; then the manifest `latest.json`, which names the
//!   pair, is replaced atomically; then the top-level `checkpoint.safetensors` is replaced by a
//!   hard link to the new model. After a crash at any point, the manifest names a complete pair
//!   of one epoch (the previous save or the new one). The newest `keep` saves stay, so a bad
//!   epoch can be rolled back by hand.
//! - Runs written before the manifest existed (a `checkpoint.safetensors` and a
//!   `training_state.safetensors` at the top) resume from that pair.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Result, VaeError};

/// The lock file's name.
pub const LOCK_FILE: &str = ".lock";
/// The manifest's name.
pub const MANIFEST: &str = "latest.json";
/// The model file's name, in a save and at the top of the run directory.
pub const CHECKPOINT: &str = "checkpoint.safetensors";
/// The training state's name, in a save (and at the top of runs from before saves).
pub const STATE: &str = "training_state.safetensors";
/// The directory of the saves.
pub const SAVES: &str = "saves";

/// What the manifest records: the newest complete save.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Epochs completed.
    pub epoch: u64,
    /// Batches of the next epoch trained (0: saved at an epoch's end).
    pub batch: usize,
    /// The save's directory under `saves/`.
    pub save: String,
}

/// The two files of a save.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SavedPair {
    /// The model.
    pub checkpoint: PathBuf,
    /// The training state.
    pub state: PathBuf,
    /// What the manifest says of it (None for a run from before manifests).
    pub manifest: Option<Manifest>,
}

/// A locked run directory.
pub struct RunDir {
    path: PathBuf,
    lock: File,
    /// We created `.lock` (removed again if the run is abandoned before it starts).
    created_lock: bool,
    keep: usize,
    /// Test hook: fail the file operation with this number (from 0) as a crash would stop it.
    crash_at: Option<usize>,
    ops: std::cell::Cell<usize>,
}

impl RunDir {
    /// A new run in `path`: refused if the directory holds anything besides `.lock` unless
    /// `overwrite` (which then removes it all once the lock is held). Creates the directory.
    pub fn create(path: &Path, overwrite: bool, keep: usize) -> Result<RunDir> {
        // Another live run first: its files would otherwise be reported as an old run.
        let existing = lock_existing(path)?;
        let contents = contents(path)?;
        if !contents.is_empty() && !overwrite {
            return Err(VaeError::RunExists {
                path: path.to_path_buf(),
                files: contents,
            });
        }
        fs::create_dir_all(path).map_err(|e| VaeError::io(path, e))?;
        let (lock, created_lock) = match existing {
            Some(f) => (f, false),
            None => (take_lock(path)?, true),
        };
        let run = RunDir::new(path, lock, created_lock, keep);
        run.claim()?;
        if overwrite {
            for name in contents {
                let p = path.join(&name);
                let removed = if p.is_dir() {
                    fs::remove_dir_all(&p)
                } else {
                    fs::remove_file(&p)
                };
                removed.map_err(|e| VaeError::io(&p, e))?;
            }
        }
        Ok(run)
    }

    /// The run in `path`, to resume: it must exist. Nothing is written but the lock file when
    /// the run predates it (which [`RunDir::abandon`] removes again) until the caller accepts
    /// the run with [`RunDir::claim`].
    pub fn open(path: &Path, keep: usize) -> Result<RunDir> {
        if !path.is_dir() {
            return Err(VaeError::NoRun {
                path: path.to_path_buf(),
                problem: "the directory does not exist".into(),
            });
        }
        let (lock, created) = match lock_existing(path)? {
            Some(f) => (f, false),
            None => (take_lock(path)?, true),
        };
        Ok(RunDir::new(path, lock, created, keep))
    }

    fn new(path: &Path, lock: File, created_lock: bool, keep: usize) -> RunDir {
        RunDir {
            path: path.to_path_buf(),
            lock,
            created_lock,
            keep: keep.max(1),
            crash_at: None,
            ops: std::cell::Cell::new(0),
        }
    }

    /// Writes this process's PID into the lock file, for a second run's message: the run is
    /// this process's now.
    pub fn claim(&self) -> Result<()> {
        let lock_path = self.path.join(LOCK_FILE);
        let pid = format!("{}\n", std::process::id());
        let mut lock = &self.lock;
        (|| {
            lock.set_len(0)?;
            lock.rewind()?;
            lock.write_all(pid.as_bytes())?;
            lock.sync_all()
        })()
        .map_err(|e| VaeError::io(&lock_path, e))
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Gives up a run that was refused before it started: releases the lock and removes the
    /// lock file if this process created it, so the directory is as it was.
    pub fn abandon(self) {
        if self.created_lock {
            let _ = fs::remove_file(self.path.join(LOCK_FILE));
        }
        drop(self.lock);
    }

    /// The newest complete save: the manifest's pair, or for a run from before manifests the
    /// top-level pair; None when the directory holds neither.
    pub fn latest(&self) -> Result<Option<SavedPair>> {
        let manifest_path = self.path.join(MANIFEST);
        if manifest_path.exists() {
            let text = fs::read_to_string(&manifest_path).map_err(|e| VaeError::io(&manifest_path, e))?;
            let m: Manifest = serde_json::from_str(&text).map_err(|e| VaeError::NoRun {
                path: self.path.clone(),
                problem: format!("{MANIFEST} is not a manifest: {e}"),
            })?;
            if m.save.contains(['/', '\\']) || m.save.starts_with('.') {
                return Err(VaeError::NoRun {
                    path: self.path.clone(),
                    problem: format!("{MANIFEST} names the save {:?}, which is not a directory name", m.save),
                });
            }
            let dir = self.path.join(SAVES).join(&m.save);
            return Ok(Some(SavedPair {
                checkpoint: dir.join(CHECKPOINT),
                state: dir.join(STATE),
                manifest: Some(m),
            }));
        }
        let (ckpt, state) = (self.path.join(CHECKPOINT), self.path.join(STATE));
        Ok((ckpt.exists() && state.exists()).then_some(SavedPair {
            checkpoint: ckpt,
            state,
            manifest: None,
        }))
    }

    /// Removes what an interrupted save left: temporary files, unfinished saves, and saves
    /// newer than the manifest's. Call it once the run has been accepted.
    pub fn clean_stale(&self) -> Result<()> {
        let keep = self.latest()?.and_then(|p| p.manifest).map(|m| m.save);
        for entry in read_dir(&self.path)? {
            if entry.starts_with('.') && entry.ends_with(".tmp") {
                remove(&self.path.join(&entry))?;
            }
        }
        let saves = self.path.join(SAVES);
        if saves.is_dir() {
            let names = read_dir(&saves)?;
            let newest = keep.clone().unwrap_or_default();
            for name in names {
                let unfinished = name.ends_with(".partial") || (name.starts_with('.') && name.ends_with(".tmp"));
                if unfinished || (keep.is_some() && name > newest) {
                    remove(&saves.join(&name))?;
                }
            }
        }
        Ok(())
    }

    /// Saves a pair: `write(checkpoint, state)` writes the two files (each atomically), then
    /// the save is published as described in the module docs. `epoch` counts completed epochs,
    /// `batch` the batches of the next one already trained.
    pub fn save(&self, epoch: u64, batch: usize, write: impl FnOnce(&Path, &Path) -> Result<()>) -> Result<()> {
        let saves = self.path.join(SAVES);
        let tag = save_name(epoch, batch);
        let (partial, done) = (saves.join(format!("{tag}.partial")), saves.join(&tag));
        self.op("create the save's directory")?;
        fs::create_dir_all(&saves).map_err(|e| VaeError::io(&saves, e))?;
        if partial.exists() {
            remove(&partial)?;
        }
        fs::create_dir(&partial).map_err(|e| VaeError::io(&partial, e))?;
        self.op("write the pair")?;
        write(&partial.join(CHECKPOINT), &partial.join(STATE))?;
        self.op("publish the save")?;
        if done.exists() {
            remove(&done)?;
        }
        fs::rename(&partial, &done).map_err(|e| VaeError::io(&done, e))?;
        sync_dir(&saves);
        self.op("write the manifest")?;
        let manifest = Manifest {
            epoch,
            batch,
            save: tag.clone(),
        };
        let text = serde_json::to_string(&manifest).map_err(|e| VaeError::Config(format!("manifest: {e}")))? + "\n";
        crate::io::write_atomically(&self.path.join(MANIFEST), |w| w.write_all(text.as_bytes()))?;
        self.op("link the top-level checkpoint")?;
        let top = self.path.join(CHECKPOINT);
        let tmp = self.path.join(format!(".{CHECKPOINT}.tmp"));
        let _ = fs::remove_file(&tmp);
        if fs::hard_link(done.join(CHECKPOINT), &tmp).is_err() {
            fs::copy(done.join(CHECKPOINT), &tmp).map_err(|e| VaeError::io(&tmp, e))?;
        }
        fs::rename(&tmp, &top).map_err(|e| VaeError::io(&top, e))?;
        sync_dir(&self.path);
        self.op("remove old saves")?;
        let mut names: Vec<String> = read_dir(&saves)?
            .into_iter()
            .filter(|n| !n.ends_with(".partial") && !n.starts_with('.'))
            .collect();
        names.sort();
        let excess = names.len().saturating_sub(self.keep);
        for name in names.into_iter().take(excess).filter(|n| *n != tag) {
            remove(&saves.join(name))?;
        }
        Ok(())
    }

    /// Counts a file operation of a save; with a crash planned at this one, fails as a killed
    /// process would stop (test hook).
    fn op(&self, what: &str) -> Result<()> {
        let n = self.ops.get();
        self.ops.set(n + 1);
        match self.crash_at {
            Some(at) if at == n => Err(VaeError::Config(format!("simulated crash before: {what}"))),
            _ => Ok(()),
        }
    }

    /// Test hook: the save's file operation number `at` (counting from 0 across saves) fails
    /// as if the process had been killed just before it.
    #[doc(hidden)]
    pub fn crash_before_operation(&mut self, at: usize) {
        self.crash_at = Some(at);
        self.ops.set(0);
    }
}

/// A save's directory name: `e0003` at the end of epoch 3, `e0003-b000012` 12 batches into
/// epoch 4 (sorted names are in training order).
fn save_name(epoch: u64, batch: usize) -> String {
    if batch == 0 {
        format!("e{epoch:04}")
    } else {
        format!("e{epoch:04}-b{batch:06}")
    }
}

/// The lock of an existing `.lock` in `path`, if there is one; an error if another process
/// holds it.
fn lock_existing(path: &Path) -> Result<Option<File>> {
    let lock_path = path.join(LOCK_FILE);
    match OpenOptions::new().read(true).write(true).open(&lock_path) {
        Ok(f) => try_lock(path, f).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(VaeError::io(&lock_path, e)),
    }
}

/// Creates `.lock` in `path` and locks it.
fn take_lock(path: &Path) -> Result<File> {
    let lock_path = path.join(LOCK_FILE);
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .map_err(|e| VaeError::io(&lock_path, e))?;
    try_lock(path, f)
}

fn try_lock(path: &Path, mut f: File) -> Result<File> {
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(fs::TryLockError::WouldBlock) => {
            let mut text = String::new();
            let _ = f.read_to_string(&mut text);
            Err(VaeError::RunLocked {
                path: path.to_path_buf(),
                pid: text.trim().parse().ok(),
            })
        }
        Err(fs::TryLockError::Error(e)) => Err(VaeError::io(path.join(LOCK_FILE), e)),
    }
}

/// The entries of `path` that count as a run's contents (all but `.lock`); empty if the
/// directory does not exist.
fn contents(path: &Path) -> Result<Vec<String>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    if !path.is_dir() {
        return Err(VaeError::io(
            path,
            std::io::Error::new(std::io::ErrorKind::AlreadyExists, "it exists and is not a directory"),
        ));
    }
    Ok(read_dir(path)?.into_iter().filter(|n| n != LOCK_FILE).collect())
}

fn read_dir(path: &Path) -> Result<Vec<String>> {
    let mut names: Vec<String> = fs::read_dir(path)
        .map_err(|e| VaeError::io(path, e))?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    names.sort();
    Ok(names)
}

fn remove(p: &Path) -> Result<()> {
    let r = if p.is_dir() {
        fs::remove_dir_all(p)
    } else {
        fs::remove_file(p)
    };
    r.map_err(|e| VaeError::io(p, e))
}

/// Makes renames in `dir` durable where the platform can (a failure is not an error: the
/// files themselves are already synced).
fn sync_dir(dir: &Path) {
    #[cfg(unix)]
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    #[cfg(not(unix))]
    let _ = dir;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::test_util::unique_dir;

    /// Writes a pair whose files say which epoch they belong to.
    fn pair(epoch: u64) -> impl FnOnce(&Path, &Path) -> Result<()> {
        move |ckpt, state| {
            fs::write(ckpt, format!("model of epoch {epoch}")).map_err(|e| VaeError::io(ckpt, e))?;
            fs::write(state, format!("state of epoch {epoch}")).map_err(|e| VaeError::io(state, e))
        }
    }

    fn read(p: &Path) -> String {
        fs::read_to_string(p).unwrap()
    }

    #[test]
    fn a_crash_at_any_operation_of_a_save_leaves_one_consistent_pair() {
        // A save counts 6 operations; the 7th case crashes in nothing.
        for at in 0..=6 {
            let dir = unique_dir("run-crash").join("run");
            let mut run = RunDir::create(&dir, false, 2).unwrap();
            run.save(1, 0, pair(1)).unwrap();
            run.crash_before_operation(at);
            let crashed = run.save(2, 0, pair(2)).is_err();
            assert_eq!(crashed, at < 6, "operation {at}");
            drop(run); // the process is gone: the kernel releases its lock
            let again = RunDir::open(&dir, 2).unwrap();
            let latest = again.latest().unwrap().unwrap();
            let m = latest.manifest.clone().unwrap();
            let model = read(&latest.checkpoint);
            assert_eq!(model, format!("model of epoch {}", m.epoch), "operation {at}");
            assert_eq!(
                read(&latest.state),
                format!("state of epoch {}", m.epoch),
                "operation {at}"
            );
            // The published manifest moves to epoch 2 only once the pair is complete.
            assert_eq!(m.epoch, if at >= 4 { 2 } else { 1 }, "operation {at}");
            // The top-level model is a whole file of one of the two epochs.
            let top = read(&dir.join(CHECKPOINT));
            assert!(top == "model of epoch 1" || top == "model of epoch 2", "{top}");
            again.clean_stale().unwrap();
            let saves = read_dir(&dir.join(SAVES)).unwrap();
            assert!(saves.iter().all(|n| !n.ends_with(".partial")), "{saves:?}");
            assert!(saves.contains(&m.save), "{saves:?}");
            assert!(read_dir(&dir).unwrap().iter().all(|n| !n.ends_with(".tmp")));
            // And the resumed run saves on.
            again.save(2, 0, pair(2)).unwrap();
            let latest = again.latest().unwrap().unwrap();
            assert_eq!(read(&latest.checkpoint), "model of epoch 2");
        }
    }

    #[test]
    fn saves_are_kept_newest_first_and_mid_epoch_saves_sort_between() {
        let dir = unique_dir("run-keep").join("run");
        let run = RunDir::create(&dir, false, 2).unwrap();
        run.save(1, 0, pair(1)).unwrap();
        run.save(1, 12, pair(1)).unwrap();
        run.save(2, 0, pair(2)).unwrap();
        assert_eq!(read_dir(&dir.join(SAVES)).unwrap(), vec!["e0001-b000012", "e0002"]);
        assert_eq!(run.latest().unwrap().unwrap().manifest.unwrap().save, "e0002");
    }

    #[test]
    fn directories_are_refused_or_locked_with_clear_errors() {
        let base = unique_dir("run-dirs");
        let dir = base.join("run");
        let run = RunDir::create(&dir, false, 2).unwrap();
        run.save(1, 0, pair(1)).unwrap();
        // A second run into a live run's directory: refused at once, naming the holder.
        match RunDir::create(&dir, true, 2) {
            Err(VaeError::RunLocked { pid, .. }) => assert_eq!(pid, Some(std::process::id())),
            other => panic!("expected RunLocked, got {:?}", other.err()),
        }
        assert!(matches!(RunDir::open(&dir, 2), Err(VaeError::RunLocked { .. })));
        drop(run);
        // A finished run is not replaced silently; with overwrite it is emptied.
        match RunDir::create(&dir, false, 2) {
            Err(e @ VaeError::RunExists { .. }) => {
                assert!(
                    e.to_string().contains("latest.json") && e.to_string().contains("saves"),
                    "{e}"
                )
            }
            other => panic!("expected RunExists, got {:?}", other.err()),
        }
        let fresh = RunDir::create(&dir, true, 2).unwrap();
        assert_eq!(read_dir(&dir).unwrap(), vec![LOCK_FILE]);
        assert!(fresh.latest().unwrap().is_none());
        drop(fresh);
        // Resuming a missing directory creates nothing; a refused resume leaves no lock file.
        let missing = base.join("missing");
        assert!(matches!(RunDir::open(&missing, 2), Err(VaeError::NoRun { .. })));
        assert!(!missing.exists());
        let old = base.join("old");
        fs::create_dir_all(&old).unwrap();
        fs::write(old.join(CHECKPOINT), "m").unwrap();
        fs::write(old.join(STATE), "s").unwrap();
        let legacy = RunDir::open(&old, 2).unwrap();
        let pair = legacy.latest().unwrap().unwrap();
        assert_eq!((pair.checkpoint, pair.manifest), (old.join(CHECKPOINT), None));
        legacy.abandon();
        assert_eq!(read_dir(&old).unwrap(), vec![CHECKPOINT, STATE]);
        // A path that is a file is not a run directory.
        let file = base.join("file");
        fs::write(&file, "x").unwrap();
        assert!(RunDir::create(&file, false, 2).is_err());
    }
}
