//! Reader for IDX files, the container format MNIST and Fashion-MNIST are distributed in.
//!
//! Only the unsigned-byte variants are supported (images `[n, rows, cols]`, labels `[n]`),
//! which is all those datasets use. Files may be gzip-compressed or raw.

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use flate2::read::MultiGzDecoder;

use crate::error::{Result, VaeError};

/// Magic number of an unsigned-byte IDX file with three dimensions, the layout of image files.
pub const IDX_MAGIC_IMAGES: u32 = 0x0000_0803;
/// Magic number of an unsigned-byte IDX file with one dimension, the layout of label files.
pub const IDX_MAGIC_LABELS: u32 = 0x0000_0801;

/// First two bytes of every gzip stream; raw IDX files start with two zero bytes instead.
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Images decoded from an IDX file, kept as bytes so callers choose their own normalisation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxImages {
    /// Number of images.
    pub count: usize,
    /// Height of each image in pixels.
    pub rows: usize,
    /// Width of each image in pixels.
    pub cols: usize,
    /// `count * rows * cols` pixels, image after image, each image row-major.
    pub pixels: Vec<u8>,
}

/// Reads an image file (magic 0x00000803), compressed or not.
///
/// A missing `x` falls back to `x.gz` and a missing `x.gz` to `x`, so callers can name a
/// file without knowing how it was shipped.
pub fn read_idx_images(path: &Path) -> Result<IdxImages> {
    let (path, mut bytes, gz) = read_decompressed(path)?;
    let (dims, header_len) = parse_header(&path, &bytes, 3, gz)?;
    bytes.drain(..header_len);
    Ok(IdxImages {
        count: dims[0],
        rows: dims[1],
        cols: dims[2],
        pixels: bytes,
    })
}

/// Reads a label file (magic 0x00000801), compressed or not, with the same fallback as
/// [`read_idx_images`].
pub fn read_idx_labels(path: &Path) -> Result<Vec<u8>> {
    let (path, mut bytes, gz) = read_decompressed(path)?;
    let (_, header_len) = parse_header(&path, &bytes, 1, gz)?;
    bytes.drain(..header_len);
    Ok(bytes)
}

/// Finds the file the readers would open for `path`: `path` itself, else its `.gz` twin
/// (or, for a `.gz` path, the uncompressed twin).
///
/// Fails with [`VaeError::Io`] of kind `NotFound` naming `path` when neither exists, so
/// callers can check for a dataset before reading it.
pub fn resolve_idx_path(path: &Path) -> Result<PathBuf> {
    match fs::metadata(path) {
        Ok(_) => return Ok(path.to_path_buf()),
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(VaeError::io(path, e)),
        Err(_) => {}
    }
    let twin = gz_twin(path);
    if let Some(twin) = &twin {
        match fs::metadata(twin) {
            Ok(_) => return Ok(twin.clone()),
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(VaeError::io(twin, e)),
            Err(_) => {}
        }
    }
    let msg = match twin {
        Some(twin) => format!("file not found (also looked for {})", twin.display()),
        None => "file not found".to_string(),
    };
    Err(VaeError::io(path, io::Error::new(io::ErrorKind::NotFound, msg)))
}

/// `x.gz` for `x`, and `x` for `x.gz`.
fn gz_twin(path: &Path) -> Option<PathBuf> {
    path.file_name()?;
    if path.extension().is_some_and(|e| e == "gz") {
        Some(path.with_extension(""))
    } else {
        let mut s = path.as_os_str().to_owned();
        s.push(".gz");
        Some(PathBuf::from(s))
    }
}

/// Returns the resolved path, the (decompressed) contents and whether they were gzipped.
fn read_decompressed(path: &Path) -> Result<(PathBuf, Vec<u8>, bool)> {
    let path = resolve_idx_path(path)?;
    let raw = fs::read(&path).map_err(|e| VaeError::io(&path, e))?;
    if !raw.starts_with(&GZIP_MAGIC) {
        return Ok((path, raw, false));
    }
    // The gzip trailer stores the uncompressed size modulo 2^32: a good capacity hint for
    // MNIST-sized files, capped so a corrupt trailer cannot force a huge allocation.
    let hint = raw
        .len()
        .checked_sub(4)
        .map(|at| u32::from_le_bytes([raw[at], raw[at + 1], raw[at + 2], raw[at + 3]]))
        .map_or(0, |n| (n as usize).min(1 << 30));
    let mut out = Vec::with_capacity(hint);
    MultiGzDecoder::new(raw.as_slice())
        .read_to_end(&mut out)
        .map_err(|e| VaeError::format(&path, format!("gzip data is corrupt or truncated: {e}")))?;
    Ok((path, out, true))
}

/// Validates magic number, dimension sizes and data length; returns the dimensions and the
/// header length. `gz` only changes the wording of byte counts.
fn parse_header(path: &Path, bytes: &[u8], ndims: usize, gz: bool) -> Result<(Vec<usize>, usize)> {
    let decompressed = if gz { " after decompression" } else { "" };
    let kind = if ndims == 3 { "image" } else { "label" };
    if bytes.len() < 4 {
        return Err(VaeError::format(
            path,
            format!(
                "truncated header: expected at least 4 bytes for the magic number, found {}{}",
                bytes.len(),
                decompressed
            ),
        ));
    }
    let magic = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    let expected = 0x0800 | ndims as u32;
    if magic != expected {
        if bytes[..3] == [0, 0, 0x08] {
            return Err(VaeError::format(
                path,
                format!(
                    "wrong number of dimensions for an IDX {kind} file: expected {ndims}, found {} \
                     (magic number 0x{magic:08x}, expected 0x{expected:08x})",
                    bytes[3]
                ),
            ));
        }
        return Err(VaeError::format(
            path,
            format!(
                "bad magic number 0x{magic:08x}, expected 0x{expected:08x} (an unsigned-byte IDX \
                 {kind} file with {ndims} dimension{})",
                if ndims == 1 { "" } else { "s" }
            ),
        ));
    }
    let header_len = 4 + 4 * ndims;
    if bytes.len() < header_len {
        return Err(VaeError::format(
            path,
            format!(
                "truncated header: expected {header_len} bytes, found {}{decompressed}",
                bytes.len()
            ),
        ));
    }
    let dims: Vec<usize> = bytes[4..header_len]
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    let shape = dims.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("x");
    let need = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| VaeError::format(path, format!("dimensions {shape} are too large to address")))?;
    let present = bytes.len() - header_len;
    if present < need {
        return Err(VaeError::format(
            path,
            format!(
                "truncated data: dimensions {shape} need {need} bytes after the {header_len}-byte \
                 header, found {present}{decompressed}"
            ),
        ));
    }
    if present > need {
        return Err(VaeError::format(
            path,
            format!(
                "trailing data: dimensions {shape} need {need} bytes after the {header_len}-byte \
                 header, found {present}{decompressed}"
            ),
        ));
    }
    Ok((dims, header_len))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use flate2::write::GzEncoder;
    use flate2::Compression;
    use std::io::Write;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A scratch directory removed on drop; unique per process and call.
    pub(crate) struct TempDir(pub PathBuf);

    impl TempDir {
        pub(crate) fn new(tag: &str) -> Self {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let dir = std::env::temp_dir().join(format!("vae-wgpu-test-{}-{}-{}", tag, std::process::id(), n));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }

        pub(crate) fn join(&self, name: &str) -> PathBuf {
            self.0.join(name)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// Serialises an unsigned-byte IDX file with the given dimensions and data.
    pub(crate) fn idx_bytes(dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut out = vec![0, 0, 0x08, dims.len() as u8];
        for d in dims {
            out.extend_from_slice(&d.to_be_bytes());
        }
        out.extend_from_slice(data);
        out
    }

    pub(crate) fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut enc = GzEncoder::new(Vec::new(), Compression::default());
        enc.write_all(bytes).unwrap();
        enc.finish().unwrap()
    }

    fn sample_images() -> (Vec<u8>, Vec<u8>) {
        // 2 images of 3x4, each pixel distinct.
        let pixels: Vec<u8> = (0..24u8).map(|i| i * 10).collect();
        (idx_bytes(&[2, 3, 4], &pixels), pixels)
    }

    fn expect_format(r: Result<impl std::fmt::Debug>, file: &str, needles: &[&str]) {
        match r {
            Err(e @ VaeError::Format { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains(file), "message {msg:?} lacks file name {file:?}");
                for n in needles {
                    assert!(msg.contains(n), "message {msg:?} lacks {n:?}");
                }
            }
            other => panic!("expected VaeError::Format, got {other:?}"),
        }
    }

    #[test]
    fn reads_raw_images() {
        let dir = TempDir::new("idx-raw");
        let (file, pixels) = sample_images();
        let path = dir.join("imgs-idx3-ubyte");
        fs::write(&path, file).unwrap();
        let img = read_idx_images(&path).unwrap();
        assert_eq!((img.count, img.rows, img.cols), (2, 3, 4));
        assert_eq!(img.pixels, pixels);
    }

    #[test]
    fn reads_gzipped_images_and_labels() {
        let dir = TempDir::new("idx-gz");
        let (file, pixels) = sample_images();
        let path = dir.join("imgs-idx3-ubyte.gz");
        fs::write(&path, gzip(&file)).unwrap();
        let img = read_idx_images(&path).unwrap();
        assert_eq!((img.count, img.rows, img.cols), (2, 3, 4));
        assert_eq!(img.pixels, pixels);

        let lpath = dir.join("labels-idx1-ubyte.gz");
        fs::write(&lpath, gzip(&idx_bytes(&[5], &[3, 1, 4, 1, 5]))).unwrap();
        assert_eq!(read_idx_labels(&lpath).unwrap(), vec![3, 1, 4, 1, 5]);
    }

    #[test]
    fn reads_raw_labels_and_empty_files() {
        let dir = TempDir::new("idx-labels");
        let path = dir.join("labels-idx1-ubyte");
        fs::write(&path, idx_bytes(&[3], &[9, 0, 7])).unwrap();
        assert_eq!(read_idx_labels(&path).unwrap(), vec![9, 0, 7]);
        fs::write(&path, idx_bytes(&[0], &[])).unwrap();
        assert_eq!(read_idx_labels(&path).unwrap(), Vec::<u8>::new());
    }

    #[test]
    fn gzip_detected_by_content_not_name() {
        let dir = TempDir::new("idx-sniff");
        // Compressed data under a raw name, raw data under a .gz name.
        let a = dir.join("a-idx1-ubyte");
        fs::write(&a, gzip(&idx_bytes(&[2], &[1, 2]))).unwrap();
        assert_eq!(read_idx_labels(&a).unwrap(), vec![1, 2]);
        let b = dir.join("b-idx1-ubyte.gz");
        fs::write(&b, idx_bytes(&[2], &[3, 4])).unwrap();
        assert_eq!(read_idx_labels(&b).unwrap(), vec![3, 4]);
    }

    #[test]
    fn falls_back_between_raw_and_gz_names() {
        let dir = TempDir::new("idx-twin");
        fs::write(dir.join("l-idx1-ubyte.gz"), gzip(&idx_bytes(&[1], &[6]))).unwrap();
        fs::write(dir.join("m-idx1-ubyte"), idx_bytes(&[1], &[8])).unwrap();
        // Raw name asked, only .gz present.
        let raw_name = dir.join("l-idx1-ubyte");
        assert_eq!(read_idx_labels(&raw_name).unwrap(), vec![6]);
        assert_eq!(resolve_idx_path(&raw_name).unwrap(), dir.join("l-idx1-ubyte.gz"));
        // .gz name asked, only raw present.
        assert_eq!(read_idx_labels(&dir.join("m-idx1-ubyte.gz")).unwrap(), vec![8]);
        // Both present: the name asked for wins.
        fs::write(dir.join("l-idx1-ubyte"), idx_bytes(&[1], &[7])).unwrap();
        assert_eq!(read_idx_labels(&raw_name).unwrap(), vec![7]);
    }

    #[test]
    fn missing_file_is_io_error_naming_both_candidates() {
        let dir = TempDir::new("idx-missing");
        let path = dir.join("nothing-idx3-ubyte");
        match read_idx_images(&path) {
            Err(e @ VaeError::Io { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains("nothing-idx3-ubyte"), "{msg}");
                assert!(msg.contains("nothing-idx3-ubyte.gz"), "{msg}");
                assert!(msg.contains("not found"), "{msg}");
                if let VaeError::Io { path: p, source } = &e {
                    assert_eq!(p, &path);
                    assert_eq!(source.kind(), io::ErrorKind::NotFound);
                }
            }
            other => panic!("expected VaeError::Io, got {other:?}"),
        }
    }

    #[test]
    fn bad_magic_says_found_and_expected() {
        let dir = TempDir::new("idx-magic");
        let path = dir.join("junk.bin");
        fs::write(&path, b"PK\x03\x04 not an idx file at all").unwrap();
        expect_format(
            read_idx_images(&path),
            "junk.bin",
            &["bad magic number", "0x504b0304", "0x00000803"],
        );
        // A label file handed to the label reader's sibling is caught by its magic too.
        let lbl = dir.join("lbl-idx1-ubyte");
        fs::write(&lbl, idx_bytes(&[1], &[1])).unwrap();
        expect_format(
            read_idx_images(&lbl),
            "lbl-idx1-ubyte",
            &["wrong number of dimensions", "expected 3, found 1"],
        );
        // Signed-byte element type (0x09) is a bad magic, not a dimension problem.
        let signed = dir.join("signed-idx1-ubyte");
        fs::write(&signed, [0, 0, 0x09, 1, 0, 0, 0, 0]).unwrap();
        expect_format(
            read_idx_labels(&signed),
            "signed-idx1-ubyte",
            &["bad magic number", "0x00000901", "0x00000801"],
        );
    }

    #[test]
    fn wrong_dimension_count() {
        let dir = TempDir::new("idx-dims");
        let path = dir.join("four-d-idx4-ubyte");
        fs::write(&path, idx_bytes(&[1, 1, 2, 2], &[0; 4])).unwrap();
        expect_format(
            read_idx_images(&path),
            "four-d-idx4-ubyte",
            &["wrong number of dimensions", "expected 3, found 4", "0x00000804"],
        );
        let lpath = dir.join("two-d-idx2-ubyte.gz");
        fs::write(&lpath, gzip(&idx_bytes(&[2, 1], &[0; 2]))).unwrap();
        expect_format(
            read_idx_labels(&lpath),
            "two-d-idx2-ubyte.gz",
            &["wrong number of dimensions", "expected 1, found 2"],
        );
    }

    #[test]
    fn truncated_data_reports_expected_and_present() {
        let dir = TempDir::new("idx-trunc");
        let (mut file, _) = sample_images();
        file.truncate(file.len() - 5); // 24 data bytes -> 19
        let path = dir.join("short-idx3-ubyte");
        fs::write(&path, &file).unwrap();
        expect_format(
            read_idx_images(&path),
            "short-idx3-ubyte",
            &["truncated data", "2x3x4", "need 24 bytes", "found 19"],
        );
        let gz = dir.join("short-idx3-ubyte.gz");
        fs::write(&gz, gzip(&file)).unwrap();
        expect_format(
            read_idx_images(&gz),
            "short-idx3-ubyte.gz",
            &["truncated data", "need 24 bytes", "found 19 after decompression"],
        );
        let lpath = dir.join("short-idx1-ubyte");
        fs::write(&lpath, idx_bytes(&[10], &[1; 7])).unwrap();
        expect_format(
            read_idx_labels(&lpath),
            "short-idx1-ubyte",
            &["truncated data", "need 10 bytes", "found 7"],
        );
    }

    #[test]
    fn truncated_header_and_trailing_bytes() {
        let dir = TempDir::new("idx-header");
        let path = dir.join("hdr-idx3-ubyte");
        fs::write(&path, [0, 0, 8, 3, 0, 0, 0, 2, 0, 0]).unwrap();
        expect_format(
            read_idx_images(&path),
            "hdr-idx3-ubyte",
            &["truncated header", "expected 16 bytes", "found 10"],
        );
        fs::write(&path, [0, 0]).unwrap();
        expect_format(
            read_idx_images(&path),
            "hdr-idx3-ubyte",
            &["truncated header", "found 2"],
        );
        let lpath = dir.join("long-idx1-ubyte");
        fs::write(&lpath, idx_bytes(&[2], &[1, 2, 3])).unwrap();
        expect_format(
            read_idx_labels(&lpath),
            "long-idx1-ubyte",
            &["trailing data", "need 2 bytes", "found 3"],
        );
    }

    #[test]
    fn corrupt_gzip_is_format_error() {
        let dir = TempDir::new("idx-badgz");
        let full = gzip(&idx_bytes(&[100], &[5; 100]));
        let path = dir.join("cut-idx1-ubyte.gz");
        fs::write(&path, &full[..full.len() / 2]).unwrap();
        expect_format(read_idx_labels(&path), "cut-idx1-ubyte.gz", &["gzip data is corrupt"]);
    }
}
