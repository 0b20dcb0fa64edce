//! A run directory: the files of one training run, kept so that nothing is lost.
//!
//! - One process at a time: a run holds an exclusive lock on `DIR/.lock` for its whole life
//!   (the kernel releases it when the process dies, `kill -9` included) and writes its PID into
//!   it. A second run into the same directory fails at once, naming that PID.
//! - A new run refuses a directory that already holds files (`.lock` aside) unless told to
//!   overwrite the run in it, and overwriting removes only what a run writes: a directory that
//!   holds anything else, or no run at all, is refused before anything is touched. Resuming
//!   needs the directory to exist and creates nothing in it before the caller has accepted the
//!   run's record.
//! - Every save is a pair — the model (`checkpoint.safetensors`, model-only, what PyTorch and
//!   the examples load) and the training state — written into `saves/<tag>/` under a temporary
//!   name, fsynced, and renamed into place; then the manifest `latest.json`, which names the
//!   pair, is replaced atomically; then the top-level `checkpoint.safetensors` is replaced by a
//!   hard link to the new model. After a crash at any point, the manifest names a complete pair
//!   of one epoch (the previous save or the new one). The newest `keep` saves stay, so a bad
//!   epoch can be rolled back by hand.
//! - Runs written before the manifest existed (a `checkpoint.safetensors` and a
//!   `training_state.safetensors` at the top) resume from that pair. A manifest that cannot be
//!   read, or names a save that is gone, gives way to the newest complete save in `saves/`.

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
/// The run's record of its settings, written by the program that trains.
pub const RUN_RECORD: &str = "run.json";
/// The run's metric lines, one per completed epoch, written by the program that trains.
pub const METRICS: &str = "metrics.jsonl";
/// The pictures a run draws after its last epoch.
pub const PICTURES: [&str; 2] = ["reconstructions.png", "samples.png"];

/// Every file a run writes at the top of its directory (besides [`SAVES`]), each also under
/// the temporary name `.<name>.tmp` of an atomic write. [`RunDir::create`] with `overwrite`
/// removes these and nothing else.
pub const RUN_FILES: [&str; 8] = [
    LOCK_FILE,
    RUN_RECORD,
    METRICS,
    MANIFEST,
    CHECKPOINT,
    STATE,
    PICTURES[0],
    PICTURES[1],
];

/// How many entries a refusal names before it counts the rest.
const NAMED_ENTRIES: usize = 5;

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
    /// What the manifest says of it (None for a run from before manifests); for a save found
    /// by looking through `saves/`, what its name says.
    pub manifest: Option<Manifest>,
    /// Why the manifest was not followed, when the pair is instead the newest complete save
    /// in `saves/` (an unreadable manifest, or one naming a save that is missing or
    /// incomplete).
    pub recovered: Option<String>,
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
    /// A new run in `path`: refused if the directory holds anything besides `.lock`, unless
    /// `overwrite` and the directory holds a run and nothing else: then once the lock is held
    /// the run's files ([`RUN_FILES`], their temporary siblings and the saves) are removed.
    /// A directory holding anything a run does not write, or holding no run at all, is
    /// refused before anything is touched. Symbolic links inside are never followed. Creates
    /// the directory.
    pub fn create(path: &Path, overwrite: bool, keep: usize) -> Result<RunDir> {
        // Another live run first: its files would otherwise be reported as an old run.
        let existing = lock_existing(path)?;
        let contents = contents(path)?;
        if !contents.is_empty() {
            let is_run = contents
                .iter()
                .any(|n| [RUN_RECORD, MANIFEST, SAVES].contains(&n.as_str()));
            if !is_run {
                return Err(VaeError::format(
                    path,
                    format!(
                        "it holds {} and no run (no {RUN_RECORD}, {MANIFEST} or {SAVES}/): a new run needs an \
                         empty or new directory{}; move them away, or choose another directory for the run",
                        name_some(&contents),
                        if overwrite {
                            ", and --overwrite replaces only a run"
                        } else {
                            ""
                        }
                    ),
                ));
            }
            if !overwrite {
                return Err(VaeError::RunExists {
                    path: path.to_path_buf(),
                    files: contents,
                });
            }
            let foreign = foreign_entries(path)?;
            if !foreign.is_empty() {
                return Err(VaeError::format(
                    path,
                    format!(
                        "--overwrite replaces a run and nothing else, and this directory holds what no run \
                         writes: {}; move them away, or choose another directory for the run",
                        name_some(&foreign)
                    ),
                ));
            }
        }
        fs::create_dir_all(path).map_err(|e| VaeError::io(path, e))?;
        let (lock, created_lock) = match existing {
            Some(f) => (f, false),
            None => (take_lock(path)?, true),
        };
        let run = RunDir::new(path, lock, created_lock, keep);
        run.claim()?;
        if overwrite {
            remove_run(path)?;
        }
        Ok(run)
    }

    /// The run in `path`, to resume: it must exist. Nothing is written but the lock file when
    /// the run predates it (which [`RunDir::abandon`] removes again) until the caller accepts
    /// the run with [`RunDir::claim`].
    pub fn open(path: &Path, keep: usize) -> Result<RunDir> {
        match fs::metadata(path) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(VaeError::NoRun {
                    path: path.to_path_buf(),
                    problem: "it is a file, not a run directory".into(),
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(VaeError::NoRun {
                    path: path.to_path_buf(),
                    problem: "the directory does not exist".into(),
                })
            }
            Err(e) => return Err(VaeError::io(path, e)),
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
    /// top-level pair; None when the directory holds neither. A manifest that cannot be read,
    /// or that names a save `saves/` does not hold complete, gives way to the newest complete
    /// save there (saying why in [`SavedPair::recovered`]); with none, the error names the
    /// manifest and what is wrong with it.
    pub fn latest(&self) -> Result<Option<SavedPair>> {
        let manifest_path = self.path.join(MANIFEST);
        if fs::symlink_metadata(&manifest_path).is_ok() {
            let problem = match read_manifest(&manifest_path) {
                Ok(m) if !is_save_name(&m.save) => {
                    format!("{MANIFEST} names the save {:?}, which is not a save's name", m.save)
                }
                Ok(m) => match self.complete_save(&m.save) {
                    Some(mut pair) => {
                        pair.manifest = Some(m);
                        return Ok(Some(pair));
                    }
                    None => format!(
                        "{MANIFEST} names the save {}, which {SAVES}/ does not hold complete",
                        m.save
                    ),
                },
                Err(problem) => format!("{MANIFEST} is not a manifest: {problem}"),
            };
            return match self.newest_complete_save()? {
                Some(mut pair) => {
                    let tag = pair.manifest.as_ref().map_or(String::new(), |m| m.save.clone());
                    pair.recovered = Some(format!("{problem}; using the newest complete save, {SAVES}/{tag}"));
                    Ok(Some(pair))
                }
                None => Err(VaeError::NoRun {
                    path: self.path.clone(),
                    problem: format!(
                        "{problem}, and {SAVES}/ holds no complete save to use instead; start the run again \
                         with --overwrite"
                    ),
                }),
            };
        }
        let (ckpt, state) = (self.path.join(CHECKPOINT), self.path.join(STATE));
        Ok((ckpt.exists() && state.exists()).then_some(SavedPair {
            checkpoint: ckpt,
            state,
            manifest: None,
            recovered: None,
        }))
    }

    /// The save `saves/<tag>` if it is a directory holding both files.
    fn complete_save(&self, tag: &str) -> Option<SavedPair> {
        let dir = self.path.join(SAVES).join(tag);
        let is_file = |p: &Path| fs::symlink_metadata(p).is_ok_and(|m| m.is_file());
        let real_dir = fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir());
        (real_dir && is_file(&dir.join(CHECKPOINT)) && is_file(&dir.join(STATE))).then(|| SavedPair {
            checkpoint: dir.join(CHECKPOINT),
            state: dir.join(STATE),
            manifest: parse_save_name(tag),
            recovered: None,
        })
    }

    /// The newest complete save in `saves/`, by name (names sort in training order).
    fn newest_complete_save(&self) -> Result<Option<SavedPair>> {
        let saves = self.path.join(SAVES);
        if !fs::symlink_metadata(&saves).is_ok_and(|m| m.is_dir()) {
            return Ok(None);
        }
        let mut names = read_dir(&saves)?;
        names.retain(|n| is_save_name(n));
        Ok(names.iter().rev().find_map(|n| self.complete_save(n)))
    }

    /// Removes what an interrupted save left: temporary files, unfinished saves, and saves
    /// newer than the manifest's. Call it once the run has been accepted.
    pub fn clean_stale(&self) -> Result<()> {
        let keep = self.latest()?.and_then(|p| p.manifest).map(|m| m.save);
        for entry in read_dir(&self.path)? {
            if RUN_FILES.iter().any(|f| entry == temp_name(f)) {
                remove(&self.path.join(&entry))?;
            }
        }
        let saves = self.path.join(SAVES);
        if saves.is_dir() {
            let names = read_dir(&saves)?;
            let newest = keep.clone().unwrap_or_default();
            for name in names.into_iter().filter(|n| is_save_name(n)) {
                let unfinished = name.ends_with(".partial");
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
            .filter(|n| is_save_name(n) && !n.ends_with(".partial"))
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

/// Whether `name` is a save's directory name, finished or not: `e0003`, `e0003-b000012`, each
/// possibly with `.partial`.
fn is_save_name(name: &str) -> bool {
    parse_save_name(name.strip_suffix(".partial").unwrap_or(name)).is_some()
}

/// The epoch and batch a finished save's name gives, as a manifest would record them.
fn parse_save_name(name: &str) -> Option<Manifest> {
    let digits = |s: &str, n: usize| s.len() >= n && s.bytes().all(|b| b.is_ascii_digit());
    let rest = name.strip_prefix('e')?;
    let (e, b) = match rest.split_once("-b") {
        Some((e, b)) => (e, Some(b)),
        None => (rest, None),
    };
    if !digits(e, 4) || !b.is_none_or(|b| digits(b, 6)) {
        return None;
    }
    Some(Manifest {
        epoch: e.parse().ok()?,
        batch: b.map_or(Some(0), |b| b.parse().ok())?,
        save: name.to_string(),
    })
}

/// The temporary sibling of an atomic write of `name`.
fn temp_name(name: &str) -> String {
    format!(".{name}.tmp")
}

/// Reads the manifest (a few dozen bytes; a file of more than 64 KiB is not one).
fn read_manifest(path: &Path) -> std::result::Result<Manifest, String> {
    const LIMIT: u64 = 64 << 10;
    let mut text = Vec::new();
    File::open(path)
        .and_then(|f| f.take(LIMIT + 1).read_to_end(&mut text))
        .map_err(|e| e.to_string())?;
    if text.len() as u64 > LIMIT {
        return Err(format!("it is larger than {LIMIT} bytes"));
    }
    serde_json::from_slice(&text).map_err(|e| e.to_string())
}

/// What in `path` a run does not write, as paths relative to it (`saves/...` inside the
/// saves): a name a run does not use, or one it uses for another kind of file (a symbolic
/// link is never one of a run's files).
fn foreign_entries(path: &Path) -> Result<Vec<String>> {
    let kind = |p: &Path| {
        fs::symlink_metadata(p)
            .map(|m| m.file_type())
            .map_err(|e| VaeError::io(p, e))
    };
    let mut foreign = Vec::new();
    for name in read_dir(path)? {
        let p = path.join(&name);
        let t = kind(&p)?;
        let run_file = RUN_FILES
            .iter()
            .any(|f| name == *f || (*f != LOCK_FILE && name == temp_name(f)));
        if run_file && t.is_file() {
            continue;
        }
        if name != SAVES || !t.is_dir() {
            foreign.push(name);
            continue;
        }
        for save in read_dir(&p)? {
            let sp = p.join(&save);
            if !is_save_name(&save) || !kind(&sp)?.is_dir() {
                foreign.push(format!("{SAVES}/{save}"));
                continue;
            }
            for file in read_dir(&sp)? {
                let ok = [CHECKPOINT, STATE].iter().any(|f| file == *f || file == temp_name(f));
                if !ok || !kind(&sp.join(&file))?.is_file() {
                    foreign.push(format!("{SAVES}/{save}/{file}"));
                }
            }
        }
    }
    Ok(foreign)
}

/// Removes the run's files from `path`: those of [`RUN_FILES`] but the lock, their temporary
/// siblings, and the saves with their files, each only as the kind of file a run writes, so
/// that nothing else (and nothing a symbolic link points to) is ever removed.
fn remove_run(path: &Path) -> Result<()> {
    let is = |p: &Path, dir: bool| fs::symlink_metadata(p).is_ok_and(|m| if dir { m.is_dir() } else { m.is_file() });
    let remove_file = |p: &Path| fs::remove_file(p).map_err(|e| VaeError::io(p, e));
    let remove_dir = |p: &Path| fs::remove_dir(p).map_err(|e| VaeError::io(p, e));
    for name in RUN_FILES.iter().filter(|f| **f != LOCK_FILE) {
        for n in [name.to_string(), temp_name(name)] {
            let p = path.join(n);
            if is(&p, false) {
                remove_file(&p)?;
            }
        }
    }
    let saves = path.join(SAVES);
    if is(&saves, true) {
        for save in read_dir(&saves)?.into_iter().filter(|n| is_save_name(n)) {
            let sp = saves.join(save);
            if !is(&sp, true) {
                continue;
            }
            for f in [CHECKPOINT, STATE] {
                for n in [f.to_string(), temp_name(f)] {
                    let p = sp.join(n);
                    if is(&p, false) {
                        remove_file(&p)?;
                    }
                }
            }
            remove_dir(&sp)?;
        }
        remove_dir(&saves)?;
    }
    Ok(())
}

/// `names` for a message: the first few, and how many more.
fn name_some(names: &[String]) -> String {
    let shown = names.iter().take(NAMED_ENTRIES).cloned().collect::<Vec<_>>().join(", ");
    match names.len().saturating_sub(NAMED_ENTRIES) {
        0 => shown,
        more => format!("{shown} and {more} more"),
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

/// Removes a file, or a directory with its contents; a symbolic link is removed itself, never
/// followed.
fn remove(p: &Path) -> Result<()> {
    let r = if fs::symlink_metadata(p).is_ok_and(|m| m.is_dir()) {
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

    /// Every entry under `dir`, with a file's bytes or a link's target.
    fn tree(dir: &Path) -> Vec<(PathBuf, String)> {
        let mut all = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for name in read_dir(&d).unwrap() {
                let p = d.join(name);
                let m = fs::symlink_metadata(&p).unwrap();
                let what = if m.is_symlink() {
                    format!("-> {}", fs::read_link(&p).unwrap().display())
                } else if m.is_dir() {
                    stack.push(p.clone());
                    "dir".to_string()
                } else {
                    read(&p)
                };
                all.push((p, what));
            }
        }
        all.sort();
        all
    }

    /// --overwrite replaces a run and nothing else: a directory holding anything a run does
    /// not write (at the top, in saves/ or in a save), or holding no run at all, is refused
    /// before anything in it changes, naming a few of the entries; links are never followed.
    #[cfg(unix)]
    #[test]
    fn overwrite_removes_a_run_and_nothing_else() {
        let base = unique_dir("run-overwrite");
        let run_in = |dir: &Path| {
            let run = RunDir::create(dir, false, 2).unwrap();
            fs::write(dir.join(RUN_RECORD), "{}").unwrap();
            fs::write(dir.join(METRICS), "").unwrap();
            run.save(1, 0, pair(1)).unwrap();
            run.save(1, 5, pair(1)).unwrap();
            fs::write(dir.join(PICTURES[0]), "png").unwrap();
            fs::write(dir.join(temp_name(PICTURES[1])), "half a png").unwrap();
            fs::create_dir(dir.join(SAVES).join("e0002.partial")).unwrap();
            fs::write(dir.join(SAVES).join("e0002.partial").join(temp_name(CHECKPOINT)), "x").unwrap();
        };
        // A run and only a run: replaced.
        let dir = base.join("run");
        run_in(&dir);
        drop(RunDir::create(&dir, true, 2).unwrap());
        assert_eq!(read_dir(&dir).unwrap(), vec![LOCK_FILE]);
        // A run beside foreign files: refused, nothing touched, the foreign entries named.
        let outside = base.join("outside");
        fs::create_dir_all(&outside).unwrap();
        fs::write(outside.join("precious"), "keep me").unwrap();
        type Add = fn(&Path, &Path);
        let cases: [(&str, Add); 6] = [
            ("notes.txt", |d, _| fs::write(d.join("notes.txt"), "mine").unwrap()),
            ("data", |d, _| fs::create_dir(d.join("data")).unwrap()),
            ("saves/mine", |d, _| fs::write(d.join(SAVES).join("mine"), "x").unwrap()),
            ("saves/e0001/extra", |d, _| {
                fs::write(d.join(SAVES).join("e0001-b000005").join("extra"), "x").unwrap()
            }),
            (PICTURES[1], |d, o| {
                std::os::unix::fs::symlink(o.join("precious"), d.join(PICTURES[1])).unwrap()
            }),
            ("saves/e0003", |d, o| {
                std::os::unix::fs::symlink(o, d.join(SAVES).join("e0003")).unwrap()
            }),
        ];
        for (i, (needle, add)) in cases.into_iter().enumerate() {
            let dir = base.join(format!("mixed{i}"));
            run_in(&dir);
            add(&dir, &outside);
            let before = tree(&dir);
            let e = RunDir::create(&dir, true, 2).err().expect(needle);
            let msg = e.to_string();
            let needle = needle.replace("e0001/", "e0001-b000005/");
            assert!(
                matches!(e, VaeError::Format { .. }) && msg.contains(&needle) && msg.contains("nothing else"),
                "{msg}"
            );
            assert_eq!(tree(&dir), before, "{needle}");
        }
        assert_eq!(read(&outside.join("precious")), "keep me");
        // A directory that holds no run: refused with or without --overwrite, through a
        // link to it too.
        let mine = base.join("mine");
        fs::create_dir_all(mine.join("sub")).unwrap();
        fs::write(mine.join("a.txt"), "a").unwrap();
        fs::write(mine.join(PICTURES[1]), "the user's own samples").unwrap();
        let link = base.join("link");
        std::os::unix::fs::symlink(&mine, &link).unwrap();
        let before = tree(&mine);
        for (dir, overwrite) in [(&mine, true), (&mine, false), (&link, true)] {
            let e = RunDir::create(dir, overwrite, 2).err().unwrap();
            assert!(matches!(e, VaeError::Format { .. }), "{e}");
            assert!(e.to_string().contains("a.txt, samples.png, sub"), "{e}");
            assert_eq!(tree(&mine), before);
        }
        fs::remove_file(mine.join("a.txt")).unwrap();
        fs::remove_dir(mine.join("sub")).unwrap();
        let e = RunDir::create(&mine, true, 2).err().unwrap().to_string();
        assert!(
            e.contains("holds samples.png and no run") && e.contains("--overwrite replaces only a run"),
            "{e}"
        );
        assert_eq!(read(&mine.join(PICTURES[1])), "the user's own samples");
        // Many foreign entries: a few named, the rest counted.
        let many = base.join("many");
        run_in(&many);
        for i in 0..9 {
            fs::write(many.join(format!("f{i}")), "").unwrap();
        }
        let e = RunDir::create(&many, true, 2).err().unwrap().to_string();
        assert!(e.contains("f0, f1, f2, f3, f4 and 4 more"), "{e}");
    }

    /// A manifest that cannot be read, or names a save that is gone or incomplete, gives way to
    /// the newest complete save, saying why; with no complete save the error names the
    /// manifest and what to do. A file is not a run directory.
    #[test]
    fn a_broken_manifest_falls_back_to_the_newest_complete_save() {
        let base = unique_dir("run-manifest");
        let dir = base.join("run");
        let run = RunDir::create(&dir, false, 3).unwrap();
        run.save(1, 0, pair(1)).unwrap();
        run.save(2, 0, pair(2)).unwrap();
        drop(run);
        let saves = dir.join(SAVES);
        for (manifest, needle) in [
            ("", "is not a manifest"),
            ("{\"epoch\":", "is not a manifest"),
            (r#"{"epoch":9,"batch":0,"save":"e0009"}"#, "names the save e0009"),
            (r#"{"epoch":2,"batch":0,"save":"../../x"}"#, "not a save's name"),
        ] {
            fs::write(dir.join(MANIFEST), manifest).unwrap();
            let again = RunDir::open(&dir, 2).unwrap();
            let latest = again.latest().unwrap().unwrap();
            let why = latest.recovered.clone().unwrap();
            assert!(why.contains(needle) && why.contains("saves/e0002"), "{why}");
            assert_eq!(latest.manifest.unwrap().epoch, 2);
            assert_eq!(read(&latest.checkpoint), "model of epoch 2");
        }
        // The newest save incomplete: the one before it.
        fs::remove_file(saves.join("e0002").join(STATE)).unwrap();
        let again = RunDir::open(&dir, 2).unwrap();
        let latest = again.latest().unwrap().unwrap();
        assert_eq!(read(&latest.checkpoint), "model of epoch 1");
        assert!(latest.recovered.is_some());
        // No complete save at all.
        fs::remove_dir_all(&saves).unwrap();
        let e = again.latest().unwrap_err().to_string();
        assert!(e.contains(MANIFEST) && e.contains("--overwrite"), "{e}");
        drop(again);
        // A regular file.
        let file = base.join("file");
        fs::write(&file, "x").unwrap();
        let e = RunDir::open(&file, 2).err().unwrap().to_string();
        assert!(e.contains("is a file, not a run directory"), "{e}");
    }
}
