//! Checkpoints and images.

pub mod png;
pub mod safetensors;

pub use self::png::{grid_size, write_colour_grid_png, write_grid_png, write_rgb_png, GRID_PAD_VALUE};
pub use self::safetensors::{read_safetensors, write_safetensors, NamedTensor};

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::error::{Result, VaeError};

/// The temporary sibling `.<name>.tmp` that [`write_atomically`] writes before renaming.
///
/// It lives in the target's directory so the final `rename` never crosses file systems.
pub(crate) fn temp_path_for(path: &Path) -> Result<PathBuf> {
    let name = path.file_name().ok_or_else(|| {
        VaeError::io(
            path,
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "the output path does not name a file"),
        )
    })?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(".tmp");
    Ok(path.with_file_name(tmp_name))
}

/// Writes a file so that readers see either the old contents or the complete new ones, never a
/// torn file: a crash mid-training must not destroy the last good checkpoint.
///
/// `fill` writes the contents into a buffered temp file; it is then flushed, synced and renamed
/// over `path`. On failure the temp file is removed (best effort) and the target is untouched.
pub(crate) fn write_atomically<F>(path: &Path, fill: F) -> Result<()>
where
    F: FnOnce(&mut BufWriter<File>) -> std::io::Result<()>,
{
    let tmp = temp_path_for(path)?;
    let written = (|| -> std::io::Result<()> {
        let file = File::create(&tmp)?;
        let mut writer = BufWriter::new(file);
        fill(&mut writer)?;
        writer.flush()?;
        let file = writer.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        // Name the file the caller asked for, not our temporary sibling, and say when the
        // reason is a missing directory (we do not create directories behind the caller).
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
        if let Some(dir) = dir.filter(|d| e.kind() == std::io::ErrorKind::NotFound && !d.is_dir()) {
            let msg = format!("the directory {} does not exist; create it first", dir.display());
            return Err(VaeError::io(path, std::io::Error::new(e.kind(), msg)));
        }
        return Err(VaeError::io(path, e));
    }
    if let Err(e) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(VaeError::io(path, e));
    }
    // Make the rename itself durable. Not every platform or file system can sync a directory,
    // and the data is already safe in the file, so a failure here is not an error.
    #[cfg(unix)]
    if let Some(dir) = path.parent() {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod test_util {
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A fresh, empty directory under the system temp dir, unique per process and call.
    pub fn unique_dir(tag: &str) -> PathBuf {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!("vae-wgpu-io-test-{tag}-{}-{n}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Names of all entries in `dir`, sorted.
    pub fn dir_entries(dir: &std::path::Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_path_is_hidden_sibling() {
        let tmp = temp_path_for(Path::new("/a/b/model.safetensors")).unwrap();
        assert_eq!(tmp, Path::new("/a/b/.model.safetensors.tmp"));
        let tmp = temp_path_for(Path::new("x.png")).unwrap();
        assert_eq!(tmp, Path::new(".x.png.tmp"));
        assert!(temp_path_for(Path::new("/")).is_err());
    }

    #[test]
    fn failed_fill_leaves_target_and_no_temp() {
        let dir = test_util::unique_dir("atomic-fail");
        let target = dir.join("out.bin");
        fs::write(&target, b"old").unwrap();
        let err = write_atomically(&target, |w| {
            w.write_all(b"partial")?;
            Err(std::io::Error::other("boom"))
        })
        .unwrap_err();
        match &err {
            VaeError::Io { path, .. } => assert_eq!(path, &target),
            other => panic!("expected an Io error, got {other}"),
        }
        assert_eq!(fs::read(&target).unwrap(), b"old");
        assert_eq!(test_util::dir_entries(&dir), vec!["out.bin".to_string()]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_directory_is_named_in_the_error() {
        let dir = test_util::unique_dir("atomic-missing");
        let target = dir.join("absent").join("out.png");
        let err = write_atomically(&target, |w| w.write_all(b"x")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with(&target.display().to_string()), "{msg}");
        assert!(
            msg.contains(&format!(
                "the directory {} does not exist",
                dir.join("absent").display()
            )),
            "{msg}"
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
