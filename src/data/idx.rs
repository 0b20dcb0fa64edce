//! Reader for IDX files, the container format MNIST and Fashion-MNIST are distributed in.
//!
//! Only the unsigned-byte variants are supported (images `[n, rows, cols]`, labels `[n]`),
//! which is all those datasets use. Files may be gzip-compressed or raw. The header is read
//! first, and a file (or a gzip stream, once decompressed) is read only as far as it allows;
//! a header announcing more than 2 GiB of data is refused. So a corrupt or hostile file, or a
//! device or pipe that never ends, cannot make the readers hold more memory than a small
//! multiple of what it really contains.

use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use flate2::bufread::MultiGzDecoder;

use crate::error::{Result, VaeError};

/// Magic number of an unsigned-byte IDX file with three dimensions, the layout of image files.
pub const IDX_MAGIC_IMAGES: u32 = 0x0000_0803;
/// Magic number of an unsigned-byte IDX file with one dimension, the layout of label files.
pub const IDX_MAGIC_LABELS: u32 = 0x0000_0801;

/// First two bytes of every gzip stream; raw IDX files start with two zero bytes instead.
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// The most data an IDX file may announce: 2 GiB, over forty times MNIST's training images, far
/// beyond any MNIST-like dataset, and a bound on what a corrupt or hostile header can make the
/// readers decompress and allocate.
pub(crate) const MAX_IDX_DATA_BYTES: usize = 1 << 31;

/// Memory reserved up front for decompressed data is at most this multiple of the compressed
/// size (MNIST's files compress about 2-5x); larger outputs grow as they are decompressed, so a
/// header's claim alone never allocates more.
const MAX_PREALLOC_RATIO: usize = 8;

/// Memory reserved up front for the data of a stream of unknown length (a pipe, a device);
/// more grows as it arrives, so what a stream holds, not what its header claims, sets the
/// memory it costs.
const STREAM_PREALLOC: usize = 1 << 20;

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
/// file without knowing how it was shipped. The file is read as a stream, only as far as its
/// header allows: a device, pipe or FIFO that goes on past the data the header announces
/// (or never ends) is refused after one byte too many.
pub fn read_idx_images(path: &Path) -> Result<IdxImages> {
    let (path, file, size) = open_resolved(path)?;
    images(read_idx(BufReader::new(file), size, &path, 3)?)
}

/// Reads a label file (magic 0x00000801), compressed or not, with the same fallback and
/// bounds as [`read_idx_images`].
pub fn read_idx_labels(path: &Path) -> Result<Vec<u8>> {
    let (path, file, size) = open_resolved(path)?;
    Ok(read_idx(BufReader::new(file), size, &path, 1)?.1)
}

/// Parses the contents of an IDX image file (raw or gzipped) as [`read_idx_images`] does;
/// `path` only names the file in errors. Takes the bytes owned or borrowed.
#[cfg(test)]
pub(crate) fn parse_idx_images<'a>(bytes: impl Into<std::borrow::Cow<'a, [u8]>>, path: &Path) -> Result<IdxImages> {
    let bytes = bytes.into();
    images(read_idx(&bytes[..], Some(bytes.len() as u64), path, 3)?)
}

/// Parses the contents of an IDX label file (raw or gzipped) as [`read_idx_labels`] does.
#[cfg(test)]
pub(crate) fn parse_idx_labels<'a>(bytes: impl Into<std::borrow::Cow<'a, [u8]>>, path: &Path) -> Result<Vec<u8>> {
    let bytes = bytes.into();
    Ok(read_idx(&bytes[..], Some(bytes.len() as u64), path, 1)?.1)
}

fn images((dims, pixels): (Vec<usize>, Vec<u8>)) -> Result<IdxImages> {
    Ok(IdxImages {
        count: dims[0],
        rows: dims[1],
        cols: dims[2],
        pixels,
    })
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

/// Opens the file the readers read for `path`, with its size when it is a regular file (a
/// device, pipe or FIFO has none: it is read only as far as its header allows).
fn open_resolved(path: &Path) -> Result<(PathBuf, File, Option<u64>)> {
    let path = resolve_idx_path(path)?;
    let file = File::open(&path).map_err(|e| VaeError::io(&path, e))?;
    let size = file.metadata().ok().filter(|m| m.is_file()).map(|m| m.len());
    Ok((path, file, size))
}

/// The dimensions and the data of an IDX file with `ndims` dimensions, raw or gzipped, read
/// from `reader` no further than the header allows. `size` is the input's length when it is
/// known (a regular file, a slice): then a raw file's data length is checked before any of it
/// is read; a stream of unknown length is read up to one byte past the data the header
/// announces, so an endless one is refused after that byte.
fn read_idx<R: BufRead>(mut reader: R, size: Option<u64>, path: &Path, ndims: usize) -> Result<(Vec<usize>, Vec<u8>)> {
    // The first two bytes tell gzip from raw; a stream may deliver them one at a time.
    let mut magic = Vec::with_capacity(2);
    (&mut reader)
        .take(2)
        .read_to_end(&mut magic)
        .map_err(|e| VaeError::io(path, e))?;
    let reader = (&magic[..]).chain(reader);
    if magic == GZIP_MAGIC {
        return decompress(path, reader, size, ndims);
    }
    read_raw(path, reader, size, ndims)
}

/// A raw IDX file: the header, then exactly the data it announces.
fn read_raw(path: &Path, mut reader: impl Read, size: Option<u64>, ndims: usize) -> Result<(Vec<usize>, Vec<u8>)> {
    let io_err = |e| VaeError::io(path, e);
    let header_len = 4 + 4 * ndims;
    let mut head = Vec::with_capacity(header_len);
    (&mut reader)
        .take(header_len as u64)
        .read_to_end(&mut head)
        .map_err(io_err)?;
    let header = parse_header(path, &head, ndims, false)?;
    let limit = match size {
        // A file's length is known: refuse a wrong one before reading, then read what it
        // claims (one byte more shows a file that grew meanwhile).
        Some(size) => {
            let present = usize::try_from(size.saturating_sub(header_len as u64)).unwrap_or(usize::MAX);
            check_data_len(path, &header, present, Counted::Exactly)?;
            header.need
        }
        None => header.need.min(STREAM_PREALLOC),
    };
    let mut data = Vec::with_capacity(limit);
    // `need + 1` cannot overflow: `need` is at most MAX_IDX_DATA_BYTES.
    (&mut reader)
        .take(header.need as u64 + 1)
        .read_to_end(&mut data)
        .map_err(io_err)?;
    let counted = if data.len() > header.need {
        Counted::AtLeast
    } else {
        Counted::Exactly
    };
    check_data_len(path, &header, data.len(), counted)?;
    Ok((header.dims, data))
}

/// Decompresses a gzipped IDX file, never producing more than its header's dimensions allow:
/// the header is decompressed first and checked, then at most one byte more than the data it
/// announces, so a stream that expands beyond that (a decompression bomb) is refused after
/// `need + 1` bytes. Memory is reserved up front only for what the compressed size can
/// plausibly hold, never for what the header or the gzip trailer claim.
fn decompress(path: &Path, raw: impl BufRead, size: Option<u64>, ndims: usize) -> Result<(Vec<usize>, Vec<u8>)> {
    let corrupt = |e: io::Error| VaeError::format(path, format!("gzip data is corrupt or truncated: {e}"));
    let mut decoder = MultiGzDecoder::new(raw);
    let header_len = 4 + 4 * ndims;
    let mut head = Vec::with_capacity(header_len);
    (&mut decoder)
        .take(header_len as u64)
        .read_to_end(&mut head)
        .map_err(corrupt)?;
    let header = parse_header(path, &head, ndims, true)?;
    let plausible = size.map_or(STREAM_PREALLOC, |s| {
        usize::try_from(s)
            .unwrap_or(usize::MAX)
            .saturating_mul(MAX_PREALLOC_RATIO)
    });
    let mut data = Vec::with_capacity(header.need.min(plausible));
    // `need + 1` cannot overflow: `need` is at most MAX_IDX_DATA_BYTES.
    (&mut decoder)
        .take(header.need as u64 + 1)
        .read_to_end(&mut data)
        .map_err(corrupt)?;
    check_data_len(path, &header, data.len(), Counted::Decompressed)?;
    Ok((header.dims, data))
}

/// A validated IDX header.
struct Header {
    /// The dimensions, outermost first.
    dims: Vec<usize>,
    /// Bytes of the header (magic and dimensions).
    len: usize,
    /// Bytes of data the dimensions announce.
    need: usize,
}

/// Validates magic number and dimension sizes in `bytes` (the header and possibly more).
/// `gz` only changes the wording of byte counts.
fn parse_header(path: &Path, bytes: &[u8], ndims: usize, gz: bool) -> Result<Header> {
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
    let need = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| VaeError::format(path, format!("dimensions {} are too large to address", shape(&dims))))?;
    if need > MAX_IDX_DATA_BYTES {
        return Err(VaeError::format(
            path,
            format!(
                "dimensions {} need {need} bytes of data, more than the {MAX_IDX_DATA_BYTES} bytes this reader \
                 accepts (corrupt header?)",
                shape(&dims)
            ),
        ));
    }
    Ok(Header {
        dims,
        len: header_len,
        need,
    })
}

/// How a count of data bytes was taken, for messages.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Counted {
    /// The exact number of bytes the file holds after its header.
    Exactly,
    /// Read with a limit of `need + 1` bytes: more than `need` means "at least one too many".
    AtLeast,
    /// Decompressed with a limit of `need + 1` bytes.
    Decompressed,
}

/// Checks that `present` bytes of data follow the header, exactly as many as it announces.
fn check_data_len(path: &Path, header: &Header, present: usize, counted: Counted) -> Result<()> {
    let decompressed = if counted == Counted::Decompressed {
        " after decompression"
    } else {
        ""
    };
    let (need, header_len, shape) = (header.need, header.len, shape(&header.dims));
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
        let found = if counted == Counted::Exactly {
            present.to_string()
        } else {
            format!("more{decompressed}")
        };
        return Err(VaeError::format(
            path,
            format!(
                "trailing data: dimensions {shape} need {need} bytes after the {header_len}-byte \
                 header, found {found}"
            ),
        ));
    }
    Ok(())
}

/// Dimensions as `AxBxC`, for messages.
fn shape(dims: &[usize]) -> String {
    dims.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("x")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::fuzz::peak_alloc;
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

    /// Fuzzing found: the gzip trailer's size field sized the output buffer (capped at 1 GiB),
    /// so a 30-byte file whose trailer claimed 4 GiB allocated 1 GiB before failing.
    #[test]
    fn gzip_trailer_size_is_not_trusted() {
        let path = Path::new("isize-idx1-ubyte.gz");
        let mut gz = gzip(&idx_bytes(&[2], &[1, 2]));
        let n = gz.len();
        gz[n - 4..].copy_from_slice(&u32::MAX.to_le_bytes());
        let (r, peak) = peak_alloc(|| parse_idx_labels(gz.as_slice(), path));
        expect_format(r, "isize-idx1-ubyte.gz", &["gzip data is corrupt"]);
        assert!(peak < 256 << 10, "allocated {peak} bytes");
        // An intact file still reads, borrowed or owned.
        let gz = gzip(&idx_bytes(&[2], &[1, 2]));
        assert_eq!(parse_idx_labels(gz.as_slice(), path).unwrap(), vec![1, 2]);
        assert_eq!(parse_idx_labels(gz, path).unwrap(), vec![1, 2]);
    }

    /// Fuzzing found: a gzipped file was decompressed whole before its header was checked, so
    /// a small file expanding far beyond what its header announces (a decompression bomb) was
    /// held in memory in full (1 MiB of zeros behind a one-image header: 1.1 MB allocated; a
    /// 16 MiB bomb, 16 MiB). Now the header is checked first and at most one byte more than it
    /// announces is decompressed.
    #[test]
    fn decompression_stops_where_the_header_says() {
        let bomb = |dims: &[u32]| {
            let mut plain = idx_bytes(dims, &[]);
            plain.resize(plain.len() + (16 << 20), 0);
            gzip(&plain)
        };
        let path = Path::new("bomb-idx3-ubyte.gz");
        let gz = bomb(&[1, 28, 28]);
        let (r, peak) = peak_alloc(|| parse_idx_images(gz.as_slice(), path));
        expect_format(
            r,
            "bomb-idx3-ubyte.gz",
            &[
                "trailing data",
                "1x28x28 need 784 bytes",
                "found more after decompression",
            ],
        );
        assert!(peak < 256 << 10, "allocated {peak} bytes");
        // A label header in an image file: refused after its first 16 bytes.
        let gz = bomb(&[1 << 24]);
        let (r, peak) = peak_alloc(|| parse_idx_images(gz.as_slice(), path));
        expect_format(
            r,
            "bomb-idx3-ubyte.gz",
            &["wrong number of dimensions", "expected 3, found 1"],
        );
        assert!(peak < 256 << 10, "allocated {peak} bytes");
        // Four billion images announced: refused from the header alone.
        let gz = bomb(&[4_000_000_000, 28, 28]);
        let (r, peak) = peak_alloc(|| parse_idx_images(gz.as_slice(), path));
        expect_format(
            r,
            "bomb-idx3-ubyte.gz",
            &[
                "4000000000x28x28 need 3136000000000 bytes",
                "more than the 2147483648 bytes",
            ],
        );
        assert!(peak < 256 << 10, "allocated {peak} bytes");
    }

    /// A stream of unknown length: `head`, then `fill` bytes forever (or `tail` of them).
    pub(crate) struct Endless {
        pub(crate) head: Vec<u8>,
        pub(crate) at: usize,
        pub(crate) fill: u8,
        pub(crate) tail: Option<usize>,
    }

    impl Endless {
        pub(crate) fn new(head: Vec<u8>, fill: u8, tail: Option<usize>) -> Self {
            Endless {
                head,
                at: 0,
                fill,
                tail,
            }
        }
    }

    impl Read for Endless {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let mut n = 0;
            while n < buf.len() {
                if self.at < self.head.len() {
                    buf[n] = self.head[self.at];
                } else if self.tail.is_none_or(|t| self.at < self.head.len() + t) {
                    buf[n] = self.fill;
                } else {
                    break;
                }
                self.at += 1;
                n += 1;
            }
            Ok(n)
        }
    }

    /// A device, pipe or FIFO has no length: it is read only as far as the header allows, so
    /// one that never ends is refused after a byte too many, holding no more than the data
    /// the header announces; one that ends early is truncated with the bytes it held.
    #[test]
    fn streams_are_read_no_further_than_the_header_allows() {
        let path = Path::new("stream-idx1-ubyte");
        let read = |stream: Endless, ndims| peak_alloc(|| read_idx(BufReader::new(stream), None, path, ndims));
        // /dev/zero: a bad magic number after 4 bytes.
        let (r, peak) = read(Endless::new(Vec::new(), 0, None), 3);
        expect_format(r, "stream-idx1-ubyte", &["bad magic number 0x00000000"]);
        assert!(peak < 256 << 10, "allocated {peak} bytes");
        // A valid header, then data forever: refused one byte past the 1000 announced.
        let (r, peak) = read(Endless::new(idx_bytes(&[1000], &[]), 7, None), 1);
        expect_format(
            r,
            "stream-idx1-ubyte",
            &["trailing data", "need 1000 bytes", "found more"],
        );
        assert!(peak < 256 << 10, "allocated {peak} bytes");
        // 2 GiB announced, 100 bytes delivered: memory follows what came, not the claim.
        let (r, peak) = read(Endless::new(idx_bytes(&[1 << 31], &[]), 7, Some(100)), 1);
        expect_format(r, "stream-idx1-ubyte", &["truncated data", "found 100"]);
        assert!(peak < 4 << 20, "allocated {peak} bytes");
        // A gzip member followed by zeros forever is corrupt, after the data it announces.
        let (r, peak) = read(Endless::new(gzip(&idx_bytes(&[2], &[1, 2])), 0, None), 1);
        expect_format(r, "stream-idx1-ubyte", &["gzip"]);
        assert!(peak < 4 << 20, "allocated {peak} bytes");
        // A stream that holds exactly the file reads, raw or gzipped, a byte at a time too.
        let exact = Endless::new(idx_bytes(&[3], &[4, 5, 6]), 0, Some(0));
        assert_eq!(read(exact, 1).0.unwrap().1, vec![4, 5, 6]);
        let gz = Endless::new(gzip(&idx_bytes(&[3], &[4, 5, 6])), 0, Some(0));
        assert_eq!(read(gz, 1).0.unwrap().1, vec![4, 5, 6]);
        let one_at_a_time = BufReader::with_capacity(1, Endless::new(gzip(&idx_bytes(&[1], &[9])), 0, Some(0)));
        assert_eq!(read_idx(one_at_a_time, None, path, 1).unwrap().1, vec![9]);
    }

    /// A data file that is a symbolic link to an endless device is refused from its header.
    #[cfg(unix)]
    #[test]
    fn a_link_to_an_endless_device_is_refused() {
        let dir = TempDir::new("idx-devzero");
        let path = dir.join("train-images-idx3-ubyte");
        std::os::unix::fs::symlink("/dev/zero", &path).unwrap();
        expect_format(read_idx_images(&path), "train-images-idx3-ubyte", &["bad magic number"]);
    }
}
