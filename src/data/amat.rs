//! Statically binarized MNIST (Larochelle & Murray, 2011): the fixed 0/1 sample of MNIST that
//! VAE papers report test likelihoods on, so results compare across papers without the noise of
//! dynamic binarization.
//!
//! Each split is a text file `binarized_mnist_{train,valid,test}.amat` (optionally gzipped) with
//! one image per line: 784 values `0` or `1` separated by spaces, row-major. The published files
//! hold 50000, 10000 and 10000 images and carry no labels. They are not bundled with vae-wgpu.

use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use flate2::bufread::MultiGzDecoder;

use super::set::{MnistSet, IMAGE_PIXELS};
use crate::error::{Result, VaeError};

/// First two bytes of every gzip stream; a text file of digits never starts with them.
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Read buffer size: large enough that the per-call overhead of the gzip decoder is negligible.
const READ_BUFFER: usize = 1 << 16;

/// The longest line accepted, newline included. 784 values spelled `1.000000` take 7 KiB;
/// 64 KiB leaves room for any spelling while bounding what one line can make the reader hold
/// (a gzipped file of one endless line would otherwise be read whole into memory).
pub(crate) const MAX_AMAT_LINE_BYTES: usize = 64 * 1024;

/// The most (decompressed) text a file may hold: 2 GiB, over 25 times the published training
/// split. Bounds the memory and time a corrupt or hostile file can cost.
pub(crate) const MAX_AMAT_TEXT_BYTES: usize = 1 << 31;

/// One of the three published splits of binarized MNIST.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AmatSplit {
    /// 50000 training images.
    Train,
    /// 10000 validation images (MNIST's last 10000 training images).
    Valid,
    /// 10000 test images.
    Test,
}

impl AmatSplit {
    /// All splits in their conventional order.
    pub const ALL: [AmatSplit; 3] = [AmatSplit::Train, AmatSplit::Valid, AmatSplit::Test];

    /// The uncompressed file name, e.g. `binarized_mnist_train.amat`; the loader also accepts
    /// this name with `.gz` appended.
    pub fn file_name(&self) -> &'static str {
        match self {
            AmatSplit::Train => "binarized_mnist_train.amat",
            AmatSplit::Valid => "binarized_mnist_valid.amat",
            AmatSplit::Test => "binarized_mnist_test.amat",
        }
    }

    /// Number of images in the published file. The loader does not enforce it, so subsets
    /// in the same format load too.
    pub fn expected_count(&self) -> usize {
        match self {
            AmatSplit::Train => 50_000,
            AmatSplit::Valid | AmatSplit::Test => 10_000,
        }
    }
}

/// Loads one split of binarized MNIST from `dir`, reading `<file_name>` if it exists and
/// `<file_name>.gz` otherwise.
///
/// Pixels are stored as bytes 0 or 255, so the usual division by 255 yields exactly 0 or 1.
/// The files carry no labels: the returned `labels` is always EMPTY, and `count` alone gives
/// the number of images. Blank lines are skipped; any other line must hold exactly 784 values,
/// each `0` or `1` (`0.0`/`1.0` are accepted too), or a [`VaeError::Format`] names the line.
/// Lines longer than 64 KiB and files of more than 2 GiB of text are refused the same way.
pub fn load_binarized_mnist(dir: &Path, split: AmatSplit) -> Result<MnistSet> {
    let path = locate(dir, split)?;
    let file = File::open(&path).map_err(|e| VaeError::io(&path, e))?;
    parse_amat(BufReader::with_capacity(READ_BUFFER, file), &path)
}

/// Parses the contents of an .amat file (raw or gzipped) as [`load_binarized_mnist`] does;
/// `path` only names the file in errors.
pub(crate) fn parse_amat<R: BufRead>(mut reader: R, path: &Path) -> Result<MnistSet> {
    // Sniff the content rather than trust the extension, so a decompressed file that kept its
    // `.gz` name (or the reverse) still loads.
    let gz = reader
        .fill_buf()
        .map_err(|e| VaeError::io(path, e))?
        .starts_with(&GZIP_MAGIC);
    if gz {
        let decoder = BufReader::with_capacity(READ_BUFFER, MultiGzDecoder::new(reader));
        parse(path, decoder, true)
    } else {
        parse(path, reader, false)
    }
}

/// Picks `dir/<name>` or `dir/<name>.gz`, whichever exists (the plain file if both do, as it
/// needs no decompression).
fn locate(dir: &Path, split: AmatSplit) -> Result<PathBuf> {
    let plain = dir.join(split.file_name());
    let gz = dir.join(format!("{}.gz", split.file_name()));
    for path in [&plain, &gz] {
        match fs::metadata(path) {
            Ok(_) => return Ok(path.clone()),
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(VaeError::io(path, e)),
            Err(_) => {}
        }
    }
    let msg = format!(
        "neither {} nor {} exists; binarized MNIST is not bundled: download \
         binarized_mnist_{{train,valid,test}}.amat (Larochelle & Murray) and pass their directory \
         (train_mnist and explore: --data-dir DIR)",
        plain.display(),
        gz.display()
    );
    Err(VaeError::io(&plain, io::Error::new(io::ErrorKind::NotFound, msg)))
}

/// Parses the whole file line by line into one reused buffer, so memory stays at the size of
/// the decoded pixels plus one line of at most [`MAX_AMAT_LINE_BYTES`]. `gz` only changes how
/// read errors are reported.
fn parse(path: &Path, mut reader: impl BufRead, gz: bool) -> Result<MnistSet> {
    let mut images = Vec::new();
    let mut line = Vec::with_capacity(2 * IMAGE_PIXELS + 2);
    let mut line_no = 0usize;
    let mut text_bytes = 0usize;
    let read_error = |e: io::Error| {
        if gz {
            VaeError::format(path, format!("gzip data is corrupt or truncated: {e}"))
        } else {
            VaeError::io(path, e)
        }
    };
    loop {
        // Runs of blank lines are skipped in bulk: one at a time (about 5 ns each), a small
        // gzip of nothing but newlines would take 12 s to reach the text limit.
        let buf = reader.fill_buf().map_err(read_error)?;
        let blank = buf.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(buf.len());
        if let Some(last) = buf[..blank].iter().rposition(|&b| b == b'\n') {
            line_no += buf[..=last].iter().filter(|&&b| b == b'\n').count();
            text_bytes += last + 1;
            reader.consume(last + 1);
            if text_bytes > MAX_AMAT_TEXT_BYTES {
                return Err(too_much_text(path, gz));
            }
            continue;
        }
        line.clear();
        let n = (&mut reader)
            .take(MAX_AMAT_LINE_BYTES as u64 + 1)
            .read_until(b'\n', &mut line)
            .map_err(read_error)?;
        if n == 0 {
            break;
        }
        line_no += 1;
        if n > MAX_AMAT_LINE_BYTES {
            return Err(VaeError::format(
                path,
                format!(
                    "line {line_no} is longer than {MAX_AMAT_LINE_BYTES} bytes; a line holds one image of \
                     {IMAGE_PIXELS} values 0/1 (corrupt or not an .amat file?)"
                ),
            ));
        }
        text_bytes += n;
        if text_bytes > MAX_AMAT_TEXT_BYTES {
            return Err(too_much_text(path, gz));
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        parse_line(&line, &mut images)
            .map_err(|problem| VaeError::format(path, format!("line {line_no}: {problem}")))?;
    }
    if images.is_empty() {
        return Err(VaeError::format(
            path,
            "holds no images (the file is empty or blank); expected one line of 784 values 0/1 per image",
        ));
    }
    let count = images.len() / IMAGE_PIXELS;
    Ok(MnistSet {
        images,
        labels: Vec::new(),
        count,
    })
}

/// The error for a file of more than [`MAX_AMAT_TEXT_BYTES`].
fn too_much_text(path: &Path, gz: bool) -> VaeError {
    VaeError::format(
        path,
        format!(
            "holds more than {MAX_AMAT_TEXT_BYTES} bytes of text{}; binarized MNIST's largest split has 78 MB \
             (corrupt or not an .amat file?)",
            if gz { " after decompression" } else { "" }
        ),
    )
}

/// Appends one line's pixels (0 or 255) to `out`; on error `out` may hold a partial image,
/// which is fine because the caller then discards everything.
fn parse_line(line: &[u8], out: &mut Vec<u8>) -> std::result::Result<(), String> {
    if parse_canonical_line(line, out) {
        return Ok(());
    }
    let start = out.len();
    for token in line.split(u8::is_ascii_whitespace).filter(|t| !t.is_empty()) {
        match token_value(token) {
            Some(v) => out.push(v),
            None => {
                let shown: String = String::from_utf8_lossy(token).chars().take(24).collect();
                return Err(format!("value {} is {shown:?}, expected 0 or 1", out.len() - start + 1));
            }
        }
    }
    let values = out.len() - start;
    if values != IMAGE_PIXELS {
        return Err(format!(
            "holds {values} values, expected {IMAGE_PIXELS} (one 28x28 image)"
        ));
    }
    Ok(())
}

/// Fast path for the layout every published file uses, single digits separated by single
/// spaces: checking that shape and converting in straight loops is several times faster than
/// tokenising. Returns false, leaving `out` untouched, for any other layout.
fn parse_canonical_line(line: &[u8], out: &mut Vec<u8>) -> bool {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.len() != 2 * IMAGE_PIXELS - 1 {
        return false;
    }
    let digits_ok = line.iter().step_by(2).all(|&b| b == b'0' || b == b'1');
    let spaces_ok = line[1..].iter().step_by(2).all(|&b| b == b' ');
    if !(digits_ok && spaces_ok) {
        return false;
    }
    // '0' is 0x30 and '1' is 0x31: the low bit negated gives 0x00 or 0xff.
    out.extend(line.iter().step_by(2).map(|&b| (b & 1).wrapping_neg()));
    true
}

/// The pixel byte for a token: `0` or `1`, optionally followed by `.` and zeros.
fn token_value(token: &[u8]) -> Option<u8> {
    let v = match token[0] {
        b'0' => 0,
        b'1' => 255,
        _ => return None,
    };
    match &token[1..] {
        [] => Some(v),
        [b'.', zeros @ ..] if zeros.iter().all(|&b| b == b'0') => Some(v),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::test_util::expect_format;
    use crate::io::test_util::unique_dir;
    use flate2::write::GzEncoder;
    use flate2::Compression;
    use std::io::{Read, Write};
    use std::time::{Duration, Instant};

    /// Removes its directory when the test ends, even on panic.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> Self {
            TempDir(unique_dir(tag))
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut enc = GzEncoder::new(Vec::new(), Compression::fast());
        enc.write_all(bytes).unwrap();
        enc.finish().unwrap()
    }

    /// A line whose pixel `i` is 1 when `on(i)`.
    fn amat_line(on: impl Fn(usize) -> bool) -> String {
        let tokens: Vec<&str> = (0..IMAGE_PIXELS).map(|i| if on(i) { "1" } else { "0" }).collect();
        tokens.join(" ")
    }

    /// Three images with distinct patterns, and the bytes the loader should produce for them.
    fn three_images() -> (String, Vec<u8>) {
        let patterns: [fn(usize) -> bool; 3] = [|i| i % 2 == 0, |i| i % 7 == 3, |i| i >= 700];
        let mut text = String::new();
        let mut expected = Vec::new();
        for p in patterns {
            text.push_str(&amat_line(p));
            text.push('\n');
            expected.extend((0..IMAGE_PIXELS).map(|i| if p(i) { 255u8 } else { 0 }));
        }
        (text, expected)
    }

    #[test]
    fn file_names() {
        assert_eq!(AmatSplit::Train.file_name(), "binarized_mnist_train.amat");
        assert_eq!(AmatSplit::Valid.file_name(), "binarized_mnist_valid.amat");
        assert_eq!(AmatSplit::Test.file_name(), "binarized_mnist_test.amat");
    }

    #[test]
    fn parses_plain_file() {
        let dir = TempDir::new("amat-plain");
        let (text, expected) = three_images();
        fs::write(dir.0.join(AmatSplit::Train.file_name()), &text).unwrap();
        let set = load_binarized_mnist(&dir.0, AmatSplit::Train).unwrap();
        assert_eq!(set.count, 3);
        assert!(set.labels.is_empty());
        assert_eq!(set.images, expected);
    }

    #[test]
    fn parses_gzipped_file() {
        let dir = TempDir::new("amat-gz");
        let (text, expected) = three_images();
        fs::write(dir.0.join("binarized_mnist_valid.amat.gz"), gzip(text.as_bytes())).unwrap();
        let set = load_binarized_mnist(&dir.0, AmatSplit::Valid).unwrap();
        assert_eq!(set.count, 3);
        assert!(set.labels.is_empty());
        assert_eq!(set.images, expected);
    }

    #[test]
    fn tolerates_crlf_trailing_space_decimals_and_blank_lines() {
        let dir = TempDir::new("amat-lenient");
        let (text, expected) = three_images();
        let lines: Vec<&str> = text.lines().collect();
        // Mix the spellings `1`, `1.0` and `1.` (likewise for 0) within one line.
        let first: Vec<String> = lines[0]
            .split(' ')
            .enumerate()
            .map(|(i, t)| match i % 3 {
                0 => format!("{t}.0"),
                1 => format!("{t}."),
                _ => t.to_string(),
            })
            .collect();
        let body = format!("{} \r\n\n{}\r\n{}", first.join(" "), lines[1], lines[2]);
        fs::write(dir.0.join(AmatSplit::Test.file_name()), body).unwrap();
        let set = load_binarized_mnist(&dir.0, AmatSplit::Test).unwrap();
        assert_eq!(set.count, 3);
        assert_eq!(set.images, expected);
    }

    #[test]
    fn prefers_plain_over_gz() {
        let dir = TempDir::new("amat-both");
        let (text, expected) = three_images();
        fs::write(dir.0.join(AmatSplit::Test.file_name()), &text).unwrap();
        // A corrupt .gz twin proves the plain file was the one read.
        fs::write(dir.0.join("binarized_mnist_test.amat.gz"), b"\x1f\x8bnot gzip").unwrap();
        assert_eq!(load_binarized_mnist(&dir.0, AmatSplit::Test).unwrap().images, expected);
    }

    #[test]
    fn bad_token_names_line_and_value() {
        let dir = TempDir::new("amat-token");
        let (text, _) = three_images();
        let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
        lines[1] = format!("0 0 2{}", &lines[1][5..]);
        fs::write(dir.0.join(AmatSplit::Train.file_name()), lines.join("\n")).unwrap();
        expect_format(
            load_binarized_mnist(&dir.0, AmatSplit::Train),
            &["binarized_mnist_train.amat", "line 2", "value 3", "\"2\"", "0 or 1"],
        );
        for bad in ["0.5", "1e0", "-1", "01"] {
            assert_eq!(token_value(bad.as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn wrong_value_count_names_line() {
        let dir = TempDir::new("amat-count");
        let (text, _) = three_images();
        let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
        lines[0].push_str(" 1");
        fs::write(dir.0.join(AmatSplit::Train.file_name()), lines.join("\n")).unwrap();
        expect_format(
            load_binarized_mnist(&dir.0, AmatSplit::Train),
            &["line 1", "785 values", "expected 784"],
        );

        let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
        let keep = lines[2].len() - 2;
        lines[2].truncate(keep);
        fs::write(dir.0.join(AmatSplit::Valid.file_name()), lines.join("\n")).unwrap();
        expect_format(
            load_binarized_mnist(&dir.0, AmatSplit::Valid),
            &["line 3", "783 values", "expected 784"],
        );
    }

    #[test]
    fn empty_file_is_an_error() {
        let dir = TempDir::new("amat-empty");
        fs::write(dir.0.join(AmatSplit::Test.file_name()), "\n\n").unwrap();
        expect_format(load_binarized_mnist(&dir.0, AmatSplit::Test), &["no images", "empty"]);
        fs::write(dir.0.join(AmatSplit::Valid.file_name()), "").unwrap();
        expect_format(load_binarized_mnist(&dir.0, AmatSplit::Valid), &["no images"]);
    }

    #[test]
    fn corrupt_gzip_is_a_format_error() {
        let dir = TempDir::new("amat-badgz");
        let (text, _) = three_images();
        let mut gz = gzip(text.as_bytes());
        gz.truncate(gz.len() / 2);
        fs::write(dir.0.join("binarized_mnist_train.amat.gz"), gz).unwrap();
        expect_format(load_binarized_mnist(&dir.0, AmatSplit::Train), &["gzip"]);
    }

    #[test]
    fn missing_files_name_both_paths_and_the_fix() {
        let dir = TempDir::new("amat-missing");
        match load_binarized_mnist(&dir.0, AmatSplit::Valid) {
            Err(e @ VaeError::Io { .. }) => {
                let msg = e.to_string();
                for needle in [
                    "binarized_mnist_valid.amat ",
                    "binarized_mnist_valid.amat.gz",
                    "not bundled",
                    "--data-dir DIR",
                ] {
                    assert!(msg.contains(needle), "message {msg:?} lacks {needle:?}");
                }
            }
            other => panic!("expected VaeError::Io, got {other:?}"),
        }
    }

    /// SHA-1 per FIPS 180-4, section 6.1; only to verify the real files, hence test-only.
    fn sha1_hex(bytes: &[u8]) -> String {
        let mut h: [u32; 5] = [0x6745_2301, 0xefcd_ab89, 0x98ba_dcfe, 0x1032_5476, 0xc3d2_e1f0];
        // Padding: a 1 bit, zeros up to 56 mod 64 bytes, then the message length in bits.
        let mut tail = bytes[bytes.len() / 64 * 64..].to_vec();
        tail.push(0x80);
        while tail.len() % 64 != 56 {
            tail.push(0);
        }
        tail.extend_from_slice(&((bytes.len() as u64) * 8).to_be_bytes());
        let full = &bytes[..bytes.len() / 64 * 64];
        for block in full.chunks_exact(64).chain(tail.chunks_exact(64)) {
            let mut w = [0u32; 80];
            for (t, word) in block.chunks_exact(4).enumerate() {
                w[t] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
            }
            for t in 16..80 {
                w[t] = (w[t - 3] ^ w[t - 8] ^ w[t - 14] ^ w[t - 16]).rotate_left(1);
            }
            let [mut a, mut b, mut c, mut d, mut e] = h;
            for (t, &wt) in w.iter().enumerate() {
                let (f, k) = match t {
                    0..=19 => ((b & c) | (!b & d), 0x5a82_7999),
                    20..=39 => (b ^ c ^ d, 0x6ed9_eba1),
                    40..=59 => ((b & c) | (b & d) | (c & d), 0x8f1b_bcdc),
                    _ => (b ^ c ^ d, 0xca62_c1d6),
                };
                let temp = a
                    .rotate_left(5)
                    .wrapping_add(f)
                    .wrapping_add(e)
                    .wrapping_add(k)
                    .wrapping_add(wt);
                e = d;
                d = c;
                c = b.rotate_left(30);
                b = a;
                a = temp;
            }
            for (hi, v) in h.iter_mut().zip([a, b, c, d, e]) {
                *hi = hi.wrapping_add(v);
            }
        }
        h.iter().map(|x| format!("{x:08x}")).collect()
    }

    #[test]
    fn sha1_known_answers() {
        assert_eq!(sha1_hex(b"abc"), "a9993e364706816aba3e25717850c26c9cd0d89d");
        assert_eq!(sha1_hex(b""), "da39a3ee5e6b4b0d3255bfef95601890afd80709");
        // Two-block message from FIPS 180-2 appendix A.2: padding spills into a second block.
        assert_eq!(
            sha1_hex(b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "84983e441c3bd26ebaae4aa1f95129e5e54670f1"
        );
        assert_eq!(sha1_hex(&[b'a'; 1_000_000]), "34aa973cd4c4daa4f61eeb2bdbad27316534016f");
    }

    /// Where the real files are looked for. An explicitly set `VAE_WGPU_BINARIZED_MNIST` must
    /// exist: silently skipping a directory the user named would hide a typo.
    fn real_data_dir() -> Option<PathBuf> {
        if let Some(dir) = std::env::var_os("VAE_WGPU_BINARIZED_MNIST") {
            let dir = PathBuf::from(dir);
            assert!(
                dir.is_dir(),
                "VAE_WGPU_BINARIZED_MNIST={} is not a directory",
                dir.display()
            );
            return Some(dir);
        }
        let candidates = [
            PathBuf::from("/work/shared/data/binarized-mnist"),
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/binarized-mnist"),
        ];
        candidates.into_iter().find(|d| d.is_dir())
    }

    /// Checks the real files when present. They may not be committed to this repository, so
    /// their absence only skips the test.
    #[test]
    fn real_files_match_published_checksums() {
        let Some(dir) = real_data_dir() else {
            eprintln!(
                "NOTE: binarized MNIST not found, skipping real_files_match_published_checksums. \
                 Put binarized_mnist_{{train,valid,test}}.amat[.gz] in /work/shared/data/binarized-mnist \
                 or set VAE_WGPU_BINARIZED_MNIST to their directory (never commit them to this repository)."
            );
            return;
        };
        let checksums = [
            (AmatSplit::Train, "cf70514ec5f481e54ad3eb0e6c03c83326ff96f8"),
            (AmatSplit::Valid, "13418487742e6ea6d48db7b5187353a20b1b1f8c"),
            (AmatSplit::Test, "ca70bd7775e182596dec148d4dc1bc6bd6c4c5f4"),
        ];
        for (split, sha1) in checksums {
            let path = locate(&dir, split).unwrap();
            let raw = fs::read(&path).unwrap();
            let text = if raw.starts_with(&GZIP_MAGIC) {
                let mut out = Vec::new();
                MultiGzDecoder::new(raw.as_slice()).read_to_end(&mut out).unwrap();
                out
            } else {
                raw
            };
            assert_eq!(sha1_hex(&text), sha1, "SHA-1 of uncompressed {}", path.display());

            let start = Instant::now();
            let set = load_binarized_mnist(&dir, split).unwrap();
            let elapsed = start.elapsed();
            eprintln!(
                "{split:?}: loaded {} images from {} in {elapsed:.2?}",
                set.count,
                path.display()
            );
            assert_eq!(set.count, split.expected_count(), "{split:?}");
            assert_eq!(set.images.len(), set.count * IMAGE_PIXELS);
            assert!(set.labels.is_empty());
            assert!(
                set.images.iter().all(|&p| p == 0 || p == 255),
                "{split:?}: pixels must be 0 or 255"
            );
            // Every `1` character in the text is one lit pixel, so the counts must agree.
            let ones_in_text = text.iter().filter(|&&b| b == b'1').count();
            let lit = set.images.iter().filter(|&&p| p == 255).count();
            assert_eq!(lit, ones_in_text, "{split:?}");
            // Parsing alone, without decompression, from the bytes already in memory.
            let start = Instant::now();
            let from_memory = parse(&path, text.as_slice(), false).unwrap();
            eprintln!("{split:?}: parsed the uncompressed text in {:.2?}", start.elapsed());
            assert_eq!(from_memory, set);

            if split == AmatSplit::Test {
                let mean = lit as f64 / set.images.len() as f64;
                eprintln!("Test: mean pixel value {mean:.6}");
                assert!(
                    mean > 0.12 && mean < 0.15,
                    "test-set pixel mean {mean} outside (0.12, 0.15)"
                );
            }
        }
    }

    /// Fuzzing found: lines had no length limit, so a gzipped file of one endless line was
    /// read whole into memory (4 MiB of "0 " from 4 KiB of gzip: 6.4 MB allocated). Lines are
    /// now cut after MAX_AMAT_LINE_BYTES.
    #[test]
    fn endless_line_is_refused_without_holding_it() {
        let path = Path::new("endless.amat.gz");
        let text = "0 ".repeat(2 << 20);
        let gz = gzip(text.as_bytes());
        let (r, peak) = crate::fuzz::peak_alloc(|| parse_amat(gz.as_slice(), path));
        expect_format(r, &["endless.amat.gz", "line 1 is longer than 65536 bytes"]);
        assert!(peak < 512 << 10, "allocated {peak} bytes");
        let (r, peak) = crate::fuzz::peak_alloc(|| parse_amat(text.as_bytes(), Path::new("endless.amat")));
        expect_format(r, &["endless.amat", "line 1 is longer than 65536 bytes"]);
        assert!(peak < 512 << 10, "allocated {peak} bytes");
        // The longest line allowed still reads: one image padded with spaces.
        let (one, expected) = three_images();
        let first = one.lines().next().unwrap();
        let padded = format!("{first}{}\n", " ".repeat(MAX_AMAT_LINE_BYTES - first.len() - 1));
        let set = parse_amat(padded.as_bytes(), path).unwrap();
        assert_eq!(set.images, expected[..IMAGE_PIXELS]);
        let longer = format!("{first}{}\n", " ".repeat(MAX_AMAT_LINE_BYTES - first.len()));
        expect_format(parse_amat(longer.as_bytes(), path), &["line 1 is longer"]);
    }

    /// Runs of blank lines are skipped in bulk (hardening, with the 2 GiB text limit: one line
    /// at a time, about 5.5 ns each, a small gzip of 2 GiB of newlines took 12 s), and line
    /// numbers stay right.
    #[test]
    fn blank_line_runs_are_skipped_quickly() {
        let path = Path::new("blank.amat.gz");
        let gz = gzip(&vec![b'\n'; 256 << 20]);
        let start = Instant::now();
        expect_format(parse_amat(gz.as_slice(), path), &["blank.amat.gz", "no images"]);
        let elapsed = start.elapsed();
        assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
        let (text, _) = three_images();
        let first = text.lines().next().unwrap();
        let body = format!("\n\n \r\n{first}\n\t\n\n0 2\n");
        expect_format(parse_amat(body.as_bytes(), path), &["line 7: value 2 is \"2\""]);
    }
}
