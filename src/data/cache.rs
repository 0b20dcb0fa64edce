//! A decoded image folder kept on disk, so that thousands of JPEGs are decoded once, not every
//! run. The cache file is named by a key over the folder's files (relative paths, sizes,
//! modification times) and the preprocessing options; any change to either gives another key,
//! so a stale file is never read (a file of another key is left for the user to delete). A file
//! that cannot be read as a cache (cut short, corrupt, another format) is rebuilt.
//!
//! Format: the bytes `VAEWFC01`, a u64 (little-endian) header length, a JSON header (key,
//! shape, counts, classes, skipped files, whether there are labels), then the training images,
//! the training labels (u32 LE each, when labelled), the test images and the test labels.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::data::arrays::ImageArrays;
use crate::data::folder::{read_image_folder, FolderData, FolderOptions};
use crate::data::set::Pixels;
use crate::error::{Result, VaeError};

const MAGIC: &[u8; 8] = b"VAEWFC01";

/// What happened to the cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CacheUse {
    /// The folder was read from this file.
    Reused(PathBuf),
    /// The folder was decoded and written to this file.
    Written(PathBuf),
}

#[derive(Serialize, Deserialize, PartialEq, Debug)]
struct Header {
    key: String,
    shape: [usize; 3],
    train: usize,
    test: usize,
    labelled: bool,
    classes: Vec<String>,
    skipped: Vec<(String, String)>,
}

/// The default cache directory: `$XDG_CACHE_HOME/vae-wgpu`, else `$HOME/.cache/vae-wgpu`.
pub fn default_cache_dir() -> Option<PathBuf> {
    std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .map(|d| d.join("vae-wgpu"))
}

/// FNV-1a, 64 bits: stable across builds and platforms, unlike the standard hasher.
fn fnv(bytes: &[u8], mut h: u64) -> u64 {
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The key of `dir` read with `opts`: every file below it (relative path, size, modification
/// time), sorted, and the options.
pub fn folder_key(dir: &Path, opts: &FolderOptions) -> Result<String> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).map_err(|e| VaeError::io(&d, e))? {
            let p = e.map_err(|e| VaeError::io(&d, e))?.path();
            let meta = std::fs::metadata(&p).map_err(|e| VaeError::io(&p, e))?;
            if meta.is_dir() {
                stack.push(p);
            } else {
                let modified = meta
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_nanos());
                let rel = p.strip_prefix(dir).unwrap_or(&p).to_string_lossy().into_owned();
                files.push(format!("{rel}\u{0}{}\u{0}{modified}", meta.len()));
            }
        }
    }
    files.sort();
    let mut h = fnv(b"vae-wgpu image folder cache 1", 0xcbf2_9ce4_8422_2325);
    h = fnv(format!("{opts:?}").as_bytes(), h);
    for f in &files {
        h = fnv(f.as_bytes(), h);
        h = fnv(b"\n", h);
    }
    Ok(format!("{h:016x}"))
}

fn write_cache(path: &Path, key: &str, data: &FolderData) -> Result<()> {
    let header = Header {
        key: key.to_string(),
        shape: data.train.shape,
        train: data.train.count,
        test: data.test.count,
        labelled: data.train.labels.is_some(),
        classes: data.classes.clone(),
        skipped: data
            .skipped
            .iter()
            .map(|(p, why)| (p.display().to_string(), why.clone()))
            .collect(),
    };
    let json = serde_json::to_vec(&header).map_err(|e| VaeError::Config(format!("writing a cache header: {e}")))?;
    let mut bytes = Vec::with_capacity(16 + json.len() + data.train.images.len() + data.test.images.len());
    bytes.extend(MAGIC);
    bytes.extend((json.len() as u64).to_le_bytes());
    bytes.extend(&json);
    for set in [&data.train, &data.test] {
        // A folder decodes to bytes; nothing else is cached.
        let Pixels::U8(images) = &set.images else {
            return Err(VaeError::Config("the image-folder cache holds bytes only".into()));
        };
        bytes.extend(images);
        if let Some(l) = &set.labels {
            bytes.extend(l.iter().flat_map(|v| v.to_le_bytes()));
        }
    }
    crate::io::write_atomically(path, |w| std::io::Write::write_all(w, &bytes))
}

fn read_cache(path: &Path, key: &str) -> std::result::Result<FolderData, String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    if bytes.len() < 16 || &bytes[..8] != MAGIC {
        return Err("not a cache file".into());
    }
    let n = u64::from_le_bytes(bytes[8..16].try_into().map_err(|_| "short header")?) as usize;
    let json = bytes.get(16..16usize.saturating_add(n)).ok_or("cut short")?;
    let h: Header = serde_json::from_slice(json).map_err(|e| e.to_string())?;
    if h.key != key {
        return Err("another key".into());
    }
    let d: usize = h.shape.iter().product();
    let mut at = 16 + n;
    let mut take = |len: usize| -> std::result::Result<&[u8], String> {
        let s = bytes
            .get(at..at.checked_add(len).ok_or("size overflow")?)
            .ok_or("cut short")?;
        at += len;
        Ok(s)
    };
    let mut set = |count: usize| -> std::result::Result<ImageArrays, String> {
        let images = take(count.checked_mul(d).ok_or("size overflow")?)?.to_vec();
        let labels = if h.labelled {
            let raw = take(count.checked_mul(4).ok_or("size overflow")?)?;
            Some(
                raw.chunks_exact(4)
                    .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            )
        } else {
            None
        };
        Ok(ImageArrays {
            images: Pixels::U8(images),
            shape: h.shape,
            count,
            labels,
            notes: Vec::new(),
        })
    };
    let train = set(h.train)?;
    let test = set(h.test)?;
    if at != bytes.len() {
        return Err("trailing bytes".into());
    }
    Ok(FolderData {
        train,
        test,
        classes: h.classes.clone(),
        skipped: h.skipped.iter().map(|(p, w)| (PathBuf::from(p), w.clone())).collect(),
    })
}

/// [`read_image_folder`] through the cache in `cache_dir`: the file of this folder's key when
/// it is there and whole, else the folder decoded and the file written. `warn` also gets a
/// note when a cache file is rebuilt.
pub fn read_image_folder_cached(
    dir: &Path,
    opts: &FolderOptions,
    cache_dir: &Path,
    progress: impl FnMut(usize, usize),
    mut warn: impl FnMut(&str),
) -> Result<(FolderData, CacheUse)> {
    if !dir.is_dir() {
        return Err(VaeError::format(dir, "not a directory of images"));
    }
    let key = folder_key(dir, opts)?;
    let path = cache_dir.join(format!("folder-{key}.bin"));
    if path.exists() {
        match read_cache(&path, &key) {
            Ok(data) => return Ok((data, CacheUse::Reused(path))),
            Err(why) => warn(&format!("rebuilding the cache {} ({why})", path.display())),
        }
    }
    let data = read_image_folder(dir, opts, progress, &mut warn)?;
    std::fs::create_dir_all(cache_dir).map_err(|e| VaeError::io(cache_dir, e))?;
    write_cache(&path, &key, &data)?;
    Ok((data, CacheUse::Written(path)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::GrayImage;

    #[test]
    fn a_folder_is_decoded_once_and_again_when_it_changes() {
        let root = std::env::temp_dir().join(format!("vae-wgpu-cache-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let (dir, cache) = (root.join("images"), root.join("cache"));
        for (class, v) in [("a", 10u8), ("b", 200)] {
            std::fs::create_dir_all(dir.join(class)).unwrap();
            for i in 0..3u8 {
                GrayImage::from_pixel(2, 2, image::Luma([v + i]))
                    .save(dir.join(class).join(format!("{i}.png")))
                    .unwrap();
            }
        }
        let opts = FolderOptions {
            test_split: 0.3,
            ..Default::default()
        };
        let quiet = |_: usize, _: usize| {};
        let (first, used) = read_image_folder_cached(&dir, &opts, &cache, quiet, |_: &str| {}).unwrap();
        let CacheUse::Written(file) = used else {
            panic!("{used:?}")
        };
        let (again, used) = read_image_folder_cached(&dir, &opts, &cache, quiet, |_: &str| {}).unwrap();
        assert_eq!(used, CacheUse::Reused(file.clone()));
        assert_eq!(
            (again.train, again.test, again.classes),
            (first.train.clone(), first.test.clone(), first.classes.clone())
        );
        // Other options: another key.
        let grey3 = FolderOptions {
            channels: Some(3),
            ..opts.clone()
        };
        let (_, used) = read_image_folder_cached(&dir, &grey3, &cache, quiet, |_: &str| {}).unwrap();
        assert!(matches!(used, CacheUse::Written(ref p) if *p != file), "{used:?}");
        // A changed file: another key, and the new pixels.
        GrayImage::from_pixel(2, 2, image::Luma([77]))
            .save(dir.join("a/0.png"))
            .unwrap();
        // A clock of coarse mtimes could give the same second and size: move the time on.
        let later = std::time::SystemTime::now() + std::time::Duration::from_secs(60);
        std::fs::File::options()
            .write(true)
            .open(dir.join("a/0.png"))
            .unwrap()
            .set_modified(later)
            .unwrap();
        let (changed, used) = read_image_folder_cached(&dir, &opts, &cache, quiet, |_: &str| {}).unwrap();
        assert!(matches!(used, CacheUse::Written(_)), "{used:?}");
        assert!(
            changed.train.images.as_u8().unwrap().contains(&77) || changed.test.images.as_u8().unwrap().contains(&77)
        );
        // A cache file cut short is rebuilt, with a note.
        let CacheUse::Written(latest) = used else {
            unreachable!()
        };
        let bytes = std::fs::read(&latest).unwrap();
        std::fs::write(&latest, &bytes[..bytes.len() - 3]).unwrap();
        let mut notes = Vec::new();
        let (rebuilt, used) =
            read_image_folder_cached(&dir, &opts, &cache, quiet, |m: &str| notes.push(m.to_string())).unwrap();
        assert_eq!(used, CacheUse::Written(latest));
        assert!(
            notes
                .iter()
                .any(|n| n.contains("rebuilding") && n.contains("cut short")),
            "{notes:?}"
        );
        assert_eq!(rebuilt.train, changed.train);
        std::fs::remove_dir_all(&root).ok();
    }
}
