//! Seeded mutation fuzzing of the crate's file readers, run as unit tests: IDX images and
//! labels and binarized-MNIST `.amat` text (each raw and gzipped), and safetensors checkpoints
//! (model checkpoints and training states: header length, JSON header, metadata, tensors).
//!
//! Inputs are small valid files built here (the seeds), changed by a deterministic mutator: bit
//! flips, interesting byte values, truncations, extensions, splices, duplicated and deleted
//! ranges, and edits that know the formats (IDX magic and dimensions, gzip header fields and
//! trailer, the safetensors length prefix and JSON header). Each input depends only on the
//! seed and its iteration number, so a failure replays from those two numbers alone.
//!
//! The oracle, for every input:
//! - no panic (each call runs under `catch_unwind`);
//! - no hang (each call must return within [`TIME_LIMIT`]; a watchdog aborts the process, after
//!   saving the input, if one never returns);
//! - bounded memory: the peak of bytes a call holds allocated (counted by this test binary's
//!   global allocator, on the calling thread only) stays within a small multiple of what the
//!   input really holds, plus a constant: never what its headers claim;
//! - the right answer: a typed error naming the file (`Format` for data, `Checkpoint` for
//!   checkpoints), or contents that agree with an independent decoding (a reference parser
//!   here, flate2 for gzip, the reference safetensors crate for checkpoints).
//!
//! A failing input is written to the system temp directory and named in the failure.
//! Environment: `VAE_WGPU_FUZZ_ITERS` sets the iterations per target (default
//! [`DEFAULT_ITERS`]), `VAE_WGPU_FUZZ_SEED` the seed (default 1), `VAE_WGPU_FUZZ_KEEP_GOING=1`
//! reports every failure instead of stopping at the first, `VAE_WGPU_FUZZ_MESSAGES=<prefix>`
//! writes the kinds of refusal each target reached to `<prefix>-<target>.txt`, and
//! `VAE_WGPU_FUZZ_REPLAY=<file>` runs a saved input through every target (test `fuzz::replay`).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{Read, Write};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flate2::write::GzEncoder;
use flate2::Compression;

use crate::data::amat::{parse_amat, MAX_AMAT_LINE_BYTES};
use crate::data::idx::{parse_idx_images, parse_idx_labels};
use crate::data::{MnistSet, IMAGE_PIXELS};
use crate::error::VaeError;
use crate::io::safetensors::{parse_safetensors, Contents};

/// Iterations per target in a normal test run; `VAE_WGPU_FUZZ_ITERS` overrides it.
const DEFAULT_ITERS: u64 = 50_000;
/// The longest one reader call may take. Inputs are at most a few hundred KiB, read in
/// microseconds to milliseconds; this is generous for a loaded machine.
const TIME_LIMIT: Duration = Duration::from_secs(3);
/// After this long on one input the watchdog saves it and aborts the process.
const HANG_ABORT: Duration = Duration::from_secs(60);
/// Inputs are cut to this size, so that stacked extensions cannot grow them without bound.
const MAX_INPUT: usize = 256 * 1024;
/// How far the oracle decompresses a gzip input to learn its true size.
const EXPAND_LIMIT: usize = 64 << 20;

// ---------------------------------------------------------------------------------------------
// The counting allocator.

/// Forwards to the system allocator; on threads that asked for it ([`peak_alloc`]), keeps the
/// bytes currently allocated and their peak. Other threads pay one thread-local read per call.
struct CountingAlloc;

thread_local! {
    static TRACKING: Cell<bool> = const { Cell::new(false) };
    static LIVE: Cell<i64> = const { Cell::new(0) };
    static PEAK: Cell<i64> = const { Cell::new(0) };
}

#[inline]
fn note(delta: i64) {
    // `try_with`: allocations during thread teardown, after the slots are gone, are not counted.
    let _ = TRACKING.try_with(|t| {
        if t.get() {
            let _ = LIVE.try_with(|live| {
                let now = live.get().saturating_add(delta);
                live.set(now);
                let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
            });
        }
    });
}

unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged; the caller upholds `alloc`'s contract.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            note(layout.size() as i64);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            note(layout.size() as i64);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator, which got it from `System`, with `layout`.
        unsafe { System.dealloc(ptr, layout) };
        note(-(layout.size() as i64));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as for `dealloc`; the caller upholds `realloc`'s contract.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            note(new_size as i64 - layout.size() as i64);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: CountingAlloc = CountingAlloc;

/// Runs `f` and returns its result with the peak number of bytes it held allocated at once
/// (allocations on this thread only; memory freed that was allocated before does not count
/// against it).
pub(crate) fn peak_alloc<R>(f: impl FnOnce() -> R) -> (R, usize) {
    struct Stop;
    impl Drop for Stop {
        fn drop(&mut self) {
            TRACKING.with(|t| t.set(false));
        }
    }
    LIVE.with(|l| l.set(0));
    PEAK.with(|p| p.set(0));
    TRACKING.with(|t| t.set(true));
    let stop = Stop;
    let r = f();
    drop(stop);
    (r, PEAK.with(|p| p.get()).max(0) as usize)
}

// ---------------------------------------------------------------------------------------------
// A deterministic generator.

/// SplitMix64 (Steele, Lea, Flood 2014): tiny, fast and good enough to drive mutations.
struct Rng(u64);

fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Rng {
    /// The generator of one iteration: a function of the run's seed and the iteration only.
    fn for_iteration(seed: u64, iteration: u64) -> Self {
        Rng(mix64(seed ^ mix64(iteration.wrapping_add(0x9e37_79b9_7f4a_7c15))))
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix64(self.0)
    }

    /// Uniform in `0..n` (`n > 0`; the modulo bias is irrelevant here).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    /// True with probability `1 / n`.
    fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }

    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len())]
    }

    fn pick_ref<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }

    /// A length or count, mostly small: uniform in `1..=max` scaled down by a random power of 2.
    fn small(&mut self, max: usize) -> usize {
        let shift = self.below(8);
        1 + self.below((max >> shift).max(1))
    }
}

// ---------------------------------------------------------------------------------------------
// Generic byte-level mutations.

const INTERESTING_BYTES: [u8; 10] = [0x00, 0xff, 0x7f, 0x80, 0x01, 0x20, b'\n', b'0', b'1', b'{'];

const INTERESTING_U32: [u32; 22] = [
    0,
    1,
    2,
    3,
    4,
    28,
    255,
    256,
    784,
    10_000,
    60_000,
    65_535,
    65_536,
    0x00ff_ffff,
    0x0100_0000,
    0x7fff_fffe,
    0x7fff_ffff,
    0x8000_0000,
    0x8000_0001,
    4_000_000_000,
    0xffff_fffe,
    0xffff_ffff,
];

const INTERESTING_U64: [u64; 12] = [
    0,
    1,
    7,
    8,
    100_000_000,
    100_000_001,
    0xffff_ffff,
    0x1_0000_0000,
    0x7fff_ffff_ffff_ffff,
    0x8000_0000_0000_0000,
    u64::MAX - 7,
    u64::MAX,
];

fn interesting_u32(rng: &mut Rng) -> u32 {
    if rng.one_in(4) {
        rng.next() as u32
    } else {
        rng.pick(&INTERESTING_U32)
    }
}

/// One random byte-level change; `others` supplies material for splices.
fn mutate_bytes(bytes: &mut Vec<u8>, others: &[Vec<u8>], rng: &mut Rng) {
    let len = bytes.len();
    match rng.below(11) {
        // Bit flip.
        0 if len > 0 => {
            let i = rng.below(len);
            bytes[i] ^= 1 << rng.below(8);
        }
        // A byte set to an interesting value.
        1 if len > 0 => {
            let i = rng.below(len);
            bytes[i] = rng.pick(&INTERESTING_BYTES);
        }
        // Truncation, mostly near the end.
        2 => {
            let cut = if rng.one_in(2) {
                len.saturating_sub(rng.small(64))
            } else {
                rng.below(len + 1)
            };
            bytes.truncate(cut);
        }
        // Extension with random, zero, 0xff or repeated bytes.
        3 => {
            let n = if rng.one_in(16) {
                rng.small(16 * 1024)
            } else {
                rng.small(64)
            };
            let fill = rng.below(4);
            for _ in 0..n {
                let b = match fill {
                    0 => rng.next() as u8,
                    1 => 0,
                    2 => 0xff,
                    _ => bytes.last().copied().unwrap_or(0),
                };
                bytes.push(b);
            }
        }
        // Splice: a prefix of this input and a suffix of another.
        4 if !others.is_empty() => {
            let other = rng.pick_ref(others);
            let i = rng.below(len + 1);
            let j = rng.below(other.len() + 1);
            bytes.truncate(i);
            bytes.extend_from_slice(&other[j..]);
        }
        // A duplicated range.
        5 if len > 0 => {
            let a = rng.below(len);
            let b = (a + rng.small(len - a)).min(len);
            let at = rng.below(len + 1);
            let copies = if rng.one_in(8) { rng.small(64) } else { 1 };
            let chunk = bytes[a..b].to_vec();
            let mut insert = Vec::with_capacity(chunk.len() * copies);
            for _ in 0..copies {
                insert.extend_from_slice(&chunk);
            }
            bytes.splice(at..at, insert);
        }
        // A deleted range.
        6 if len > 0 => {
            let a = rng.below(len);
            let b = (a + rng.small(len - a)).min(len);
            bytes.drain(a..b);
        }
        // A 32- or 64-bit field, either byte order, set to an interesting value.
        7 if len >= 4 => {
            let i = rng.below(len - 3);
            let v = interesting_u32(rng);
            let b = if rng.one_in(2) {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            };
            bytes[i..i + 4].copy_from_slice(&b);
        }
        8 if len >= 8 => {
            let i = rng.below(len - 7);
            let v = rng.pick(&INTERESTING_U64);
            let b = if rng.one_in(2) {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            };
            bytes[i..i + 8].copy_from_slice(&b);
        }
        // Small arithmetic on a byte.
        9 if len > 0 => {
            let i = rng.below(len);
            let d = 1 + rng.below(16) as u8;
            bytes[i] = if rng.one_in(2) {
                bytes[i].wrapping_add(d)
            } else {
                bytes[i].wrapping_sub(d)
            };
        }
        // Random bytes inserted.
        _ => {
            let at = rng.below(len + 1);
            let n = rng.small(16);
            let insert: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
            bytes.splice(at..at, insert);
        }
    }
    bytes.truncate(MAX_INPUT);
}

// ---------------------------------------------------------------------------------------------
// gzip.

fn gzip_level(bytes: &[u8], level: u32) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::new(), Compression::new(level));
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

/// Compresses `plain`, sometimes as two members.
fn compress(plain: &[u8], rng: &mut Rng) -> Vec<u8> {
    let level = rng.below(10) as u32;
    if rng.one_in(8) && !plain.is_empty() {
        let cut = rng.below(plain.len() + 1);
        let mut out = gzip_level(&plain[..cut], level);
        out.extend(gzip_level(&plain[cut..], level));
        out
    } else {
        gzip_level(plain, level)
    }
}

/// One change that knows gzip's layout: header fields, optional fields, trailer, members.
fn mutate_gzip(gz: &mut Vec<u8>, others: &[Vec<u8>], rng: &mut Rng) {
    if gz.len() < 18 {
        return mutate_bytes(gz, others, rng);
    }
    let len = gz.len();
    match rng.below(10) {
        // FLG: FTEXT 1, FHCRC 2, FEXTRA 4, FNAME 8, FCOMMENT 16, reserved bits above.
        0 => {
            gz[3] = if rng.one_in(2) {
                gz[3] | (1 << rng.below(8))
            } else {
                rng.next() as u8
            }
        }
        // CM: 8 is deflate.
        1 => {
            gz[2] = if rng.one_in(2) {
                8 ^ (1 << rng.below(8))
            } else {
                rng.next() as u8
            }
        }
        // MTIME, XFL, OS.
        2 => {
            let i = 4 + rng.below(6);
            gz[i] = rng.next() as u8;
        }
        // CRC32.
        3 => {
            let i = len - 8 + rng.below(4);
            gz[i] ^= 1 << rng.below(8);
        }
        // ISIZE: huge, zero, off by one.
        4 => {
            let real = u32::from_le_bytes(gz[len - 4..].try_into().unwrap());
            let v = match rng.below(3) {
                0 => interesting_u32(rng),
                1 => real.wrapping_add(1),
                _ => real.wrapping_sub(1),
            };
            gz[len - 4..].copy_from_slice(&v.to_le_bytes());
        }
        // An FEXTRA field, its length honest or not.
        5 => {
            gz[3] |= 4;
            let present = rng.small(64);
            let xlen: u16 = match rng.below(3) {
                0 => present as u16,
                1 => rng.pick(&[0u16, 1, 0x7fff, 0xffff]),
                _ => rng.next() as u16,
            };
            let mut field = xlen.to_le_bytes().to_vec();
            field.extend((0..present).map(|_| rng.next() as u8));
            gz.splice(10..10, field);
        }
        // FNAME or FCOMMENT, terminated or not.
        6 => {
            gz[3] |= if rng.one_in(2) { 8 } else { 16 };
            let mut field: Vec<u8> = (0..rng.small(64)).map(|_| b'a' + rng.below(26) as u8).collect();
            if !rng.one_in(4) {
                field.push(0);
            }
            gz.splice(10..10, field);
        }
        // Something after the member: another member, garbage, zeros or itself again.
        7 => match rng.below(4) {
            0 => {
                let piece: Vec<u8> = (0..rng.small(64)).map(|_| rng.next() as u8).collect();
                gz.extend(gzip_level(&piece, 6));
            }
            1 => gz.extend((0..rng.small(32)).map(|_| rng.next() as u8)),
            2 => gz.extend(std::iter::repeat_n(0, rng.small(32))),
            _ => {
                let copy = gz.clone();
                gz.extend(copy);
            }
        },
        // A cut trailer or body.
        8 => gz.truncate(len - rng.small(16).min(len)),
        // A corrupted deflate body.
        _ => {
            let i = 10 + rng.below(len - 18);
            gz[i] ^= 1 << rng.below(8);
        }
    }
    gz.truncate(MAX_INPUT);
}

/// What `bytes` decompresses to (as far as it decodes, up to [`EXPAND_LIMIT`]) and whether it
/// decoded completely without error.
fn expand(bytes: &[u8]) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let decoder = flate2::read::MultiGzDecoder::new(bytes);
    let result = decoder.take(EXPAND_LIMIT as u64 + 1).read_to_end(&mut out);
    let complete = result.is_ok() && out.len() <= EXPAND_LIMIT;
    (out, complete)
}

// ---------------------------------------------------------------------------------------------
// The targets.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    IdxImages,
    IdxLabels,
    Amat,
    Safetensors,
}

impl Target {
    const ALL: [Target; 4] = [Target::IdxImages, Target::IdxLabels, Target::Amat, Target::Safetensors];

    fn name(self) -> &'static str {
        match self {
            Target::IdxImages => "idx-images",
            Target::IdxLabels => "idx-labels",
            Target::Amat => "amat",
            Target::Safetensors => "safetensors",
        }
    }

    /// The path the readers are told they read, which their errors must name.
    fn path(self) -> &'static Path {
        Path::new(match self {
            Target::IdxImages => "fuzz/train-images-idx3-ubyte",
            Target::IdxLabels => "fuzz/train-labels-idx1-ubyte",
            Target::Amat => "fuzz/binarized_mnist_train.amat",
            Target::Safetensors => "fuzz/model.safetensors",
        })
    }
}

/// Seeds of one target: `plain` inputs the mutator starts from (uncompressed for IDX and
/// .amat, which it may compress), and `special` ready-made inputs (decompression bombs) it
/// sends as they are or lightly changed.
struct Corpus {
    plain: Vec<Vec<u8>>,
    special: Vec<Vec<u8>>,
    /// Safetensors only: the seeds' header models.
    models: Vec<StModel>,
}

fn idx_file(dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, 0x08, dims.len() as u8];
    for d in dims {
        out.extend_from_slice(&d.to_be_bytes());
    }
    out.extend_from_slice(data);
    out
}

/// Zeros compress about 1000:1: the gzip of `idx_file(dims, [])` followed by `n` zero bytes.
fn idx_bomb(dims: &[u32], n: usize) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::new(), Compression::best());
    enc.write_all(&idx_file(dims, &[])).unwrap();
    let zeros = vec![0u8; 64 * 1024];
    let mut left = n;
    while left > 0 {
        let k = left.min(zeros.len());
        enc.write_all(&zeros[..k]).unwrap();
        left -= k;
    }
    enc.finish().unwrap()
}

fn amat_line(on: impl Fn(usize) -> bool) -> String {
    let tokens: Vec<&str> = (0..IMAGE_PIXELS).map(|i| if on(i) { "1" } else { "0" }).collect();
    tokens.join(" ")
}

fn corpus(target: Target) -> Corpus {
    match target {
        Target::IdxImages => {
            let px = |n: usize| -> Vec<u8> { (0..n).map(|i| (i * 37 % 256) as u8).collect() };
            Corpus {
                plain: vec![
                    idx_file(&[2, 3, 4], &px(24)),
                    idx_file(&[1, 28, 28], &px(784)),
                    idx_file(&[3, 2, 2], &px(12)),
                    idx_file(&[0, 28, 28], &[]),
                    idx_file(&[5, 1, 1], &px(5)),
                ],
                models: vec![],
                special: vec![
                    // One 28x28 image announced, 1 MiB delivered.
                    idx_bomb(&[1, 28, 28], 1 << 20),
                    // No image announced, 1 MiB delivered.
                    idx_bomb(&[0, 28, 28], 1 << 20),
                    // Four billion images announced, 1 MiB delivered.
                    idx_bomb(&[4_000_000_000, 28, 28], 1 << 20),
                    // Labels magic in an image file, 1 MiB of data.
                    idx_bomb(&[1 << 20], 1 << 20),
                ],
            }
        }
        Target::IdxLabels => Corpus {
            plain: vec![
                idx_file(&[5], &[3, 1, 4, 1, 5]),
                idx_file(&[1], &[9]),
                idx_file(&[0], &[]),
                idx_file(&[12], &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]),
            ],
            models: vec![],
            special: vec![
                idx_bomb(&[10], 1 << 20),
                idx_bomb(&[0], 1 << 20),
                idx_bomb(&[0xffff_ffff], 1 << 20),
                idx_bomb(&[2, 28, 28], 1 << 20),
            ],
        },
        Target::Amat => {
            let a = amat_line(|i| i % 2 == 0);
            let b = amat_line(|i| i % 7 == 3);
            let c = amat_line(|i| i >= 700);
            let lenient: Vec<String> = b
                .split(' ')
                .enumerate()
                .map(|(i, t)| match i % 3 {
                    0 => format!("{t}.0"),
                    1 => format!("{t}."),
                    _ => t.to_string(),
                })
                .collect();
            let gz_of = |text: &[u8]| gzip_level(text, 9);
            // A 4 MiB line of "0 0 0 ...", and 4 MiB of blank lines, compressed.
            let long_line = "0 ".repeat(2 << 20);
            let blank = "\n".repeat(4 << 20);
            Corpus {
                plain: vec![
                    format!("{a}\n{b}\n{c}\n").into_bytes(),
                    format!("{c}\n").into_bytes(),
                    format!("{} \r\n\n{a}\r\n{c}", lenient.join(" ")).into_bytes(),
                    b"\n\n".to_vec(),
                ],
                special: vec![gz_of(long_line.as_bytes()), gz_of(blank.as_bytes())],
                models: vec![],
            }
        }
        Target::Safetensors => {
            let models = st_seeds();
            Corpus {
                plain: models.iter().map(StModel::file).collect(),
                special: vec![],
                models,
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// IDX and .amat inputs.

/// Interesting IDX magic numbers: the two we read, other dimension counts and element types.
const IDX_MAGICS: [u32; 12] = [
    0x801,
    0x803,
    0x800,
    0x802,
    0x804,
    0x8ff,
    0x903,
    0xb03,
    0xd03,
    0xe03,
    0x0803_0000,
    0x1f8b_0803,
];

fn mutate_idx(p: &mut Vec<u8>, rng: &mut Rng) {
    if p.len() < 4 {
        p.resize(4, 0);
    }
    let ndims = (p[3] as usize).min(4);
    let dim_at = |k: usize| 4 + 4 * k;
    match rng.below(6) {
        0 => {
            let m = if rng.one_in(4) {
                rng.next() as u32
            } else {
                rng.pick(&IDX_MAGICS)
            };
            p[..4].copy_from_slice(&m.to_be_bytes());
        }
        // One dimension set to an interesting value.
        1 => {
            let k = rng.below(ndims.max(1) + 1);
            if p.len() < dim_at(k) + 4 {
                p.resize(dim_at(k) + 4, 0);
            }
            let v = interesting_u32(rng);
            p[dim_at(k)..dim_at(k) + 4].copy_from_slice(&v.to_be_bytes());
        }
        // The count set so the claim is near what is there, or huge with the data cut.
        2 | 3 if p.len() >= 4 + 4 * ndims && ndims > 0 => {
            let hl = 4 + 4 * ndims;
            let inner: u64 = (1..ndims)
                .map(|k| u32::from_be_bytes(p[dim_at(k)..dim_at(k) + 4].try_into().unwrap()) as u64)
                .fold(1u64, u64::saturating_mul);
            let data = (p.len() - hl) as u64;
            let count = if rng.one_in(2) {
                (data / inner.max(1)).wrapping_add(rng.below(3) as u64).wrapping_sub(1) as u32
            } else {
                p.truncate(hl + rng.below(p.len() - hl + 1));
                rng.pick(&[0x7fff_ffff, 0x8000_0000, 4_000_000_000, 0xffff_ffff, 1 << 24])
            };
            p[4..8].copy_from_slice(&count.to_be_bytes());
        }
        // The dimension count byte.
        4 => {
            p[3] = if rng.one_in(2) {
                rng.below(6) as u8
            } else {
                rng.next() as u8
            }
        }
        // The data resized to what the header announces (when modest): a valid file of
        // another shape.
        _ => {
            if p.len() >= 4 + 4 * ndims {
                let hl = 4 + 4 * ndims;
                let need: u64 = (0..ndims)
                    .map(|k| u32::from_be_bytes(p[dim_at(k)..dim_at(k) + 4].try_into().unwrap()) as u64)
                    .fold(1u64, u64::saturating_mul);
                if need <= 64 * 1024 {
                    p.resize(hl + need as usize, 0x55);
                }
            }
        }
    }
}

const AMAT_TOKENS: [&str; 22] = [
    "0", "1", "2", "0.0", "1.0", "1.", "0.", "1.000000", "01", "-1", "1e0", "0.5", " ", "", "\t1", "1\r", "\u{e9}",
    "\0", "\u{663}", "\u{ff11}", "0x1", ".",
];

fn mutate_amat(t: &mut Vec<u8>, rng: &mut Rng) {
    let len = t.len();
    let at = rng.below(len + 1);
    let line_start = t[..at].iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let line_end = t[at..].iter().position(|&b| b == b'\n').map_or(len, |i| at + i);
    match rng.below(8) {
        // A token replaced.
        0 => {
            let s = t[..at]
                .iter()
                .rposition(|b| b.is_ascii_whitespace())
                .map_or(0, |i| i + 1);
            let e = t[at..]
                .iter()
                .position(|b| b.is_ascii_whitespace())
                .map_or(len, |i| at + i);
            let tok = rng.pick(&AMAT_TOKENS).as_bytes().to_vec();
            t.splice(s.min(e)..e, tok);
        }
        // A line deleted or duplicated.
        1 => {
            let end = (line_end + 1).min(len);
            if rng.one_in(2) {
                t.drain(line_start..end);
            } else {
                let line = t[line_start..end].to_vec();
                t.splice(line_start..line_start, line);
            }
        }
        // Lines joined or split.
        2 => {
            if line_end < len && rng.one_in(2) {
                t.remove(line_end);
            } else {
                let nl: &[u8] = if rng.one_in(2) { b"\n" } else { b"\r\n" };
                t.splice(at..at, nl.iter().copied());
            }
        }
        // Blank or whitespace-only lines.
        3 => {
            let blank: &[u8] = rng.pick(&[&b"\n"[..], b"\r\n", b"   \t\n", b"\x0b\n", b"\x0c\n", b" \n\n\n"]);
            t.splice(line_start..line_start, blank.iter().copied());
        }
        // Values added or removed at a line's end.
        4 => {
            let k = rng.small(4);
            if rng.one_in(2) {
                let extra = " 0".repeat(k).into_bytes();
                t.splice(line_end..line_end, extra);
            } else {
                t.drain(line_end.saturating_sub(2 * k).max(line_start)..line_end);
            }
        }
        // A long run of values.
        5 => {
            let n = rng.pick(&[1usize, 783, 785, 5_000, 40_000, 70_000]);
            let run = "0 ".repeat(n).into_bytes();
            t.splice(at..at, run);
        }
        // Separators changed within a line.
        6 => {
            let sep: &[u8] = rng.pick(&[&b"  "[..], b"\t", b"\r", b"\x0c", b",", b""]);
            let mut i = line_start;
            let mut out = Vec::with_capacity(len + 64);
            out.extend_from_slice(&t[..line_start]);
            while i < line_end {
                if t[i] == b' ' && rng.one_in(4) {
                    out.extend_from_slice(sep);
                } else {
                    out.push(t[i]);
                }
                i += 1;
            }
            out.extend_from_slice(&t[line_end..]);
            *t = out;
        }
        // Cut mid-line.
        _ => t.truncate(at),
    }
    t.truncate(MAX_INPUT);
}

/// Builds an IDX or .amat input: a seed changed in its plain form, then sent raw or gzipped
/// (the gzip sometimes changed too); now and then a decompression bomb.
fn data_input(target: Target, c: &Corpus, rng: &mut Rng) -> Vec<u8> {
    // Bombs cost milliseconds each (the oracle decompresses them too): now and then.
    let bomb_odds = if target == Target::Amat { 200 } else { 50 };
    if !c.special.is_empty() && rng.one_in(bomb_odds) {
        let mut input = rng.pick_ref(&c.special).clone();
        if rng.one_in(2) {
            mutate_gzip(&mut input, &c.plain, rng);
        }
        return input;
    }
    let mut plain = rng.pick_ref(&c.plain).clone();
    let rounds = if rng.one_in(8) { 0 } else { rng.small(6) };
    for _ in 0..rounds {
        if rng.one_in(2) {
            mutate_bytes(&mut plain, &c.plain, rng);
        } else if target == Target::Amat {
            mutate_amat(&mut plain, rng);
        } else {
            mutate_idx(&mut plain, rng);
        }
    }
    if rng.one_in(2) {
        return plain;
    }
    let mut gz = compress(&plain, rng);
    let rounds = if rng.one_in(2) { 0 } else { rng.small(3) };
    for _ in 0..rounds {
        if rng.one_in(3) {
            mutate_bytes(&mut gz, &[], rng);
        } else {
            mutate_gzip(&mut gz, &[], rng);
        }
    }
    gz
}

// ---------------------------------------------------------------------------------------------
// Safetensors inputs: a header model to perturb structurally, and text-level edits.

/// A safetensors file before serialisation. Every key and value is kept as JSON text, so that
/// perturbations can make any of them invalid.
#[derive(Clone)]
struct StModel {
    /// `__metadata__`'s value as JSON text pairs (key literal, value literal), or a raw value.
    metadata: Option<StMeta>,
    /// Whether `__metadata__` comes after the tensors.
    metadata_last: bool,
    /// Tensor entries: name literal and fields (name literal, value text).
    tensors: Vec<(String, Vec<(String, String)>)>,
    /// Data section length relative to what the offsets cover.
    data_delta: i64,
    /// Pad the header with spaces to a multiple of 8.
    pad: bool,
    /// Extra text after the header object.
    trailer: String,
    /// Added to the true header length in the prefix.
    len_delta: i64,
}

#[derive(Clone)]
enum StMeta {
    Pairs(Vec<(String, String)>),
    Raw(String),
}

fn lit(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

impl StModel {
    /// A model of F32 tensors laid out back to back, with string metadata.
    fn new(metadata: Option<&[(&str, &str)]>, tensors: &[(&str, &[usize])]) -> Self {
        let mut offset = 0usize;
        let tensors = tensors
            .iter()
            .map(|(name, shape)| {
                let end = offset + 4 * shape.iter().product::<usize>();
                let shape_text = format!(
                    "[{}]",
                    shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(",")
                );
                let fields = vec![
                    (lit("dtype"), lit("F32")),
                    (lit("shape"), shape_text),
                    (lit("data_offsets"), format!("[{offset},{end}]")),
                ];
                offset = end;
                (lit(name), fields)
            })
            .collect();
        StModel {
            metadata: metadata.map(|m| StMeta::Pairs(m.iter().map(|(k, v)| (lit(k), lit(v))).collect())),
            metadata_last: false,
            tensors,
            data_delta: 0,
            pad: true,
            trailer: String::new(),
            len_delta: 0,
        }
    }

    fn header(&self) -> String {
        let mut entries: Vec<String> = self
            .tensors
            .iter()
            .map(|(name, fields)| {
                let body: Vec<String> = fields.iter().map(|(k, v)| format!("{k}:{v}")).collect();
                format!("{name}:{{{}}}", body.join(","))
            })
            .collect();
        if let Some(m) = &self.metadata {
            let value = match m {
                StMeta::Pairs(pairs) => {
                    let body: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}:{v}")).collect();
                    format!("{{{}}}", body.join(","))
                }
                StMeta::Raw(v) => v.clone(),
            };
            let entry = format!("\"__metadata__\":{value}");
            if self.metadata_last {
                entries.push(entry);
            } else {
                entries.insert(0, entry);
            }
        }
        let mut h = format!("{{{}}}{}", entries.join(","), self.trailer);
        if self.pad {
            while h.len() % 8 != 0 {
                h.push(' ');
            }
        }
        h
    }

    /// The end of the data the offsets cover, as far as they parse.
    fn data_len(&self) -> usize {
        let mut end = 0usize;
        for (_, fields) in &self.tensors {
            for (k, v) in fields {
                if k == "\"data_offsets\"" {
                    if let Some(e) = v
                        .trim_matches(|c| c == '[' || c == ']')
                        .split(',')
                        .nth(1)
                        .and_then(|e| e.trim().parse::<usize>().ok())
                    {
                        end = end.max(e);
                    }
                }
            }
        }
        end.min(MAX_INPUT)
    }

    fn file(&self) -> Vec<u8> {
        let header = self.header();
        let len = (header.len() as i64).wrapping_add(self.len_delta) as u64;
        let data_len = (self.data_len() as i64 + self.data_delta).clamp(0, MAX_INPUT as i64) as usize;
        let mut out = Vec::with_capacity(8 + header.len() + data_len);
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(header.as_bytes());
        // Distinct, finite values: 0.25, 0.5, ... as little-endian F32.
        let mut i = 0u32;
        while out.len() < 8 + header.len() + data_len {
            let v = (i % 64) as f32 * 0.25 - 4.0;
            out.extend_from_slice(&v.to_le_bytes());
            i += 1;
        }
        out.truncate(8 + header.len() + data_len);
        out
    }
}

/// The model keys a checkpoint's metadata holds, as `VaeConfig::to_metadata` writes them.
const MODEL_META: [(&str, &str); 8] = [
    ("input_dim", "4"),
    ("hidden", "8"),
    ("latent", "2"),
    ("activation", "relu"),
    ("likelihood", "bernoulli"),
    ("classes", "0"),
    ("code", "gaussian"),
    ("top", "none"),
];

fn st_seeds() -> Vec<StModel> {
    let mut checkpoint: Vec<(&str, &str)> = MODEL_META.to_vec();
    checkpoint.extend([
        ("format", "vae-wgpu/1"),
        ("dataset", "mnist"),
        ("epochs", "1"),
        ("batch_size", "32"),
        ("lr", "0.001"),
        ("seed", "4"),
        ("vq_ema", "none"),
        ("epoch", "1"),
        ("step", "2"),
    ]);
    let mut state: Vec<(&str, &str)> = MODEL_META.to_vec();
    state.extend([
        ("format", "vae-wgpu-train-state/1"),
        ("step", "2"),
        ("epoch", "1"),
        ("seed", "4"),
        ("batch_size", "32"),
        ("batch", "1"),
        ("vq_ema", "0.9"),
    ]);
    let mut vq_state: Vec<(&str, &str)> = MODEL_META
        .iter()
        .map(|&(k, v)| match k {
            "code" => (k, "quantized:4:2:0.25"),
            "latent" => (k, "4"),
            _ => (k, v),
        })
        .collect();
    vq_state.extend([
        ("format", "vae-wgpu-train-state/1"),
        ("step", "2"),
        ("epoch", "1"),
        ("seed", "4"),
        ("batch_size", "32"),
        ("vq_ema", "0.9"),
    ]);
    let hier: Vec<(&str, &str)> = MODEL_META
        .iter()
        .map(|&(k, v)| match k {
            "likelihood" => (k, "gaussian:learned-pixel"),
            "classes" => (k, "10"),
            "top" => (k, "2:8"),
            _ => (k, v),
        })
        .chain([
            ("format", "vae-wgpu/1"),
            ("bound", "-log p(x|y)"),
            ("caf\u{e9} \"\\", "\u{1f600}\n"),
        ])
        .collect();
    vec![
        StModel::new(
            Some(&checkpoint),
            &[
                ("fc1.weight", &[8, 4]),
                ("fc1.bias", &[8]),
                ("fc21.weight", &[2, 8]),
                ("fc21.bias", &[2]),
                ("fc3.weight", &[8, 2]),
                ("fc4.bias", &[4]),
            ],
        ),
        StModel::new(
            Some(&state),
            &[("adam.m", &[10]), ("adam.v", &[10]), ("metrics.rows", &[1, 4])],
        ),
        StModel::new(
            Some(&vq_state),
            &[
                ("adam.m", &[6]),
                ("adam.v", &[6]),
                ("vq_ema.counts", &[4, 2]),
                ("vq_ema.sums", &[4, 2]),
            ],
        ),
        StModel::new(
            Some(&hier),
            &[("log_c", &[4]), ("p_z1.mu.bias", &[2]), ("d\u{e9}codeur", &[])],
        ),
        StModel::new(None, &[("z", &[0]), ("m", &[0]), ("a", &[2]), ("e", &[0, 3])]),
        StModel::new(Some(&[]), &[]),
    ]
}

const NUMBERS: [&str; 22] = [
    "0",
    "1",
    "4",
    "-1",
    "-0",
    "00",
    "1.0",
    "1e3",
    "1e400",
    "4294967296",
    "9223372036854775807",
    "9223372036854775808",
    "18446744073709551615",
    "18446744073709551616",
    "4611686018427387904",
    "99999999999999999999999",
    "340282366920938463463374607431768211456",
    "true",
    "null",
    "\"4\"",
    "[]",
    "{}",
];

const DTYPES: [&str; 16] = [
    "F32", "F16", "BF16", "F64", "I64", "I32", "U8", "I8", "BOOL", "F4", "F6_E2M3", "F8_E8M0", "F8_E4M3", "f32", "",
    "X",
];

/// Values for the metadata the model and trainer parse.
const META_VALUES: [&str; 30] = [
    "",
    " ",
    "0",
    "1",
    "-1",
    "18446744073709551615",
    "18446744073709551616",
    "1e3",
    "0x10",
    " 5",
    "8,",
    ",",
    "1,,2",
    "8,8,8,8,8,8,8,8,8,8,8,8,8,8,8,8",
    "0:0",
    "2:8,2:8,2:8,2:8,2:8,2:8,2:8,2:8,2:8",
    ":",
    "quantized:0:0:0",
    "quantized:4294967296:1:1",
    "quantized:4:2:nan",
    "deterministic:inf",
    "deterministic:1:-0",
    "gaussian:nan",
    "gaussian:-1",
    "gaussian:learned-",
    "gaussian:learned-pixel:3",
    "leakyrelu",
    "none",
    "vae-wgpu-train-state/1",
    "\u{1f600}\u{0}",
];

const META_KEYS: [&str; 16] = [
    "format",
    "step",
    "epoch",
    "seed",
    "batch_size",
    "batch",
    "vq_ema",
    "input_dim",
    "hidden",
    "latent",
    "activation",
    "likelihood",
    "classes",
    "code",
    "top",
    "__metadata__",
];

/// Deeply nested JSON: `[[[...1...]]]`.
fn nested(depth: usize) -> String {
    format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
}

fn perturb_st(m: &mut StModel, rng: &mut Rng) {
    let nt = m.tensors.len();
    match rng.below(16) {
        // Metadata values: non-strings, odd numbers and model fields.
        0 | 1 => {
            if let Some(StMeta::Pairs(pairs)) = &mut m.metadata {
                if !pairs.is_empty() {
                    let i = rng.below(pairs.len());
                    pairs[i].1 = if rng.one_in(3) {
                        rng.pick(&NUMBERS).to_string()
                    } else {
                        lit(rng.pick(&META_VALUES))
                    };
                }
            }
        }
        // Metadata keys: set, repeated, added, removed.
        2 => {
            if let Some(StMeta::Pairs(pairs)) = &mut m.metadata {
                match rng.below(3) {
                    0 if !pairs.is_empty() => {
                        let i = rng.below(pairs.len());
                        pairs.push(pairs[i].clone());
                    }
                    1 if !pairs.is_empty() => {
                        pairs.remove(rng.below(pairs.len()));
                    }
                    _ => pairs.push((lit(rng.pick(&META_KEYS)), lit(rng.pick(&META_VALUES)))),
                }
            }
        }
        // The metadata object itself.
        3 => match rng.below(4) {
            0 => {
                m.metadata = Some(StMeta::Raw(
                    rng.pick(&["null", "[]", "5", "\"x\"", "true", "{\"a\":{}}", "[{}]"])
                        .to_string(),
                ))
            }
            1 => m.metadata_last = !m.metadata_last,
            2 => m.metadata = None,
            // `__metadata__` twice: as a tensor entry name too.
            _ => m.tensors.push((lit("__metadata__"), vec![(lit("k"), lit("v"))])),
        },
        // A tensor entry repeated or renamed.
        4 if nt > 0 => {
            let i = rng.below(nt);
            match rng.below(3) {
                0 => m.tensors.push(m.tensors[i].clone()),
                1 => m.tensors[i].0 = m.tensors[rng.below(nt)].0.clone(),
                _ => {
                    m.tensors[i].0 = rng
                        .pick(&[
                            "\"\"",
                            "\"__metadata__\"",
                            "\"\\u0000\"",
                            "\"\\ud800\"",
                            "\"a\\\"b\"",
                            "1",
                            "null",
                        ])
                        .to_string()
                }
            }
        }
        // A field removed, repeated or added.
        5 if nt > 0 => {
            let fields = &mut m.tensors[rng.below(nt)].1;
            match rng.below(4) {
                0 if !fields.is_empty() => {
                    fields.remove(rng.below(fields.len()));
                }
                1 if !fields.is_empty() => {
                    let f = fields[rng.below(fields.len())].clone();
                    fields.push(f);
                }
                2 => fields.push((lit("extra"), nested(rng.below(200)))),
                _ => fields.push((lit("big"), format!("[{}]", vec!["0"; rng.small(4096)].join(",")))),
            }
        }
        // dtype.
        6 | 7 if nt > 0 => {
            let i = rng.below(nt);
            if let Some(f) = m.tensors[i].1.iter_mut().find(|(k, _)| k == "\"dtype\"") {
                f.1 = if rng.one_in(5) {
                    rng.pick(&NUMBERS).to_string()
                } else {
                    lit(rng.pick(&DTYPES))
                };
            }
        }
        // shape.
        8 | 9 if nt > 0 => {
            let i = rng.below(nt);
            if let Some(f) = m.tensors[i].1.iter_mut().find(|(k, _)| k == "\"shape\"") {
                f.1 = match rng.below(6) {
                    0 => "[]".to_string(),
                    1 => format!("[{}]", rng.pick(&NUMBERS)),
                    2 => format!("[{},{}]", rng.pick(&NUMBERS), rng.pick(&NUMBERS)),
                    3 => {
                        let inner = f.1.trim_matches(|c| c == '[' || c == ']').to_string();
                        let extra = rng.pick(&NUMBERS);
                        if inner.is_empty() {
                            format!("[{extra}]")
                        } else {
                            format!("[{inner},{extra}]")
                        }
                    }
                    4 => format!("[{}]", vec!["1"; rng.small(4096)].join(",")),
                    _ => rng.pick(&NUMBERS).to_string(),
                };
            }
        }
        // data_offsets.
        10..=12 if nt > 0 => {
            let i = rng.below(nt);
            if let Some(f) = m.tensors[i].1.iter_mut().find(|(k, _)| k == "\"data_offsets\"") {
                let parts: Vec<String> =
                    f.1.trim_matches(|c| c == '[' || c == ']')
                        .split(',')
                        .map(|s| s.trim().to_string())
                        .collect();
                let b: i64 = parts.first().and_then(|s| s.parse().ok()).unwrap_or(0);
                let e: i64 = parts.get(1).and_then(|s| s.parse().ok()).unwrap_or(0);
                let d = 1 + rng.below(8) as i64;
                f.1 = match rng.below(8) {
                    0 => format!("[{e},{b}]"),
                    1 => format!("[{},{}]", b + d, e + d),
                    2 => format!("[{},{}]", b - d, e),
                    3 => format!("[{b},{}]", e + d),
                    4 => format!("[{},{}]", rng.pick(&NUMBERS), rng.pick(&NUMBERS)),
                    5 => format!("[{b}]"),
                    6 => format!("[{b},{e},{e}]"),
                    _ => format!("[{b},{}]", rng.pick(&NUMBERS)),
                };
            }
        }
        // Data section length.
        13 => {
            m.data_delta = match rng.below(3) {
                0 => -(rng.small(16) as i64),
                1 => rng.small(16) as i64,
                _ => -(m.data_len() as i64) / 2,
            }
        }
        // Header framing: padding, trailing text, length prefix.
        14 => match rng.below(4) {
            0 => m.pad = !m.pad,
            1 => m.trailer = rng.pick(&[" x", "}", "\n", "\0", "  {}", "\u{feff}"]).to_string(),
            2 => m.len_delta = rng.below(17) as i64 - 8,
            _ => m.len_delta = -(rng.small(64) as i64),
        },
        // A tensor added with arbitrary shape and offsets, or removed.
        _ => {
            if nt > 0 && rng.one_in(2) {
                m.tensors.remove(rng.below(nt));
            } else {
                let end = m.data_len();
                let shape = format!("[{}]", rng.below(5));
                let len = 4 * rng.below(5);
                m.tensors.push((
                    lit(&format!("t{}", rng.below(100))),
                    vec![
                        (lit("dtype"), lit("F32")),
                        (lit("shape"), shape),
                        (lit("data_offsets"), format!("[{end},{}]", end + len)),
                    ],
                ));
            }
        }
    }
}

/// Text-level edits of a header: numbers and strings replaced, structure characters inserted.
fn mutate_json(h: &mut String, rng: &mut Rng) {
    let bytes = h.as_bytes();
    let len = bytes.len();
    let at = rng.below(len + 1);
    // Only cut at character boundaries.
    let boundary = |mut i: usize| {
        while i < len && !h.is_char_boundary(i) {
            i += 1;
        }
        i
    };
    match rng.below(5) {
        // The number at or after `at`.
        0 => {
            if let Some(s) = bytes[at..].iter().position(u8::is_ascii_digit).map(|i| at + i) {
                let e = bytes[s..]
                    .iter()
                    .position(|b| !b.is_ascii_digit())
                    .map_or(len, |i| s + i);
                h.replace_range(s..e, rng.pick(&NUMBERS));
            }
        }
        // The string at or after `at`.
        1 => {
            if let Some(s) = bytes[at..].iter().position(|&b| b == b'"').map(|i| at + i) {
                if let Some(e) = bytes[s + 1..].iter().position(|&b| b == b'"').map(|i| s + 1 + i) {
                    let v = if rng.one_in(2) {
                        rng.pick(&DTYPES)
                    } else {
                        rng.pick(&META_VALUES)
                    };
                    let v = lit(v);
                    h.replace_range(s..=e, &v);
                }
            }
        }
        // A structural character inserted.
        2 => {
            let c = rng.pick(&["{", "}", "[", "]", ",", ":", "\"", "\\", " ", "\\u", "\u{e9}"]);
            h.insert_str(boundary(at), c);
        }
        // A range deleted.
        3 => {
            let s = boundary(at);
            let e = boundary((s + rng.small(32)).min(len));
            h.replace_range(s..e, "");
        }
        // A range repeated (duplicate keys, fields, entries).
        _ => {
            let s = boundary(at);
            let e = boundary((s + rng.small(128)).min(len));
            let piece = h[s..e].to_string();
            h.insert_str(e, &piece);
        }
    }
}

fn st_input(c: &Corpus, rng: &mut Rng) -> Vec<u8> {
    let seeds = &c.models;
    match rng.below(10) {
        // A structurally perturbed model.
        0..=4 => {
            let mut m = rng.pick_ref(seeds).clone();
            for _ in 0..rng.small(4) {
                perturb_st(&mut m, rng);
            }
            let mut file = m.file();
            if rng.one_in(8) {
                mutate_bytes(&mut file, &c.plain, rng);
            }
            file
        }
        // Text edits of a seed's header, with the length prefix fixed up (mostly).
        5..=7 => {
            let mut m = rng.pick_ref(seeds).clone();
            if rng.one_in(2) {
                perturb_st(&mut m, rng);
            }
            let file = m.file();
            let hl = (u64::from_le_bytes(file[..8].try_into().unwrap()) as usize).min(file.len() - 8);
            let mut header = String::from_utf8_lossy(&file[8..8 + hl]).into_owned();
            let data = file[8 + hl..].to_vec();
            for _ in 0..rng.small(4) {
                mutate_json(&mut header, rng);
            }
            let mut header = header.into_bytes();
            // Invalid UTF-8 inside a correctly framed header: a stray byte, a lone lead byte,
            // an encoded surrogate, an overlong encoding.
            if rng.one_in(8) {
                let at = rng.below(header.len() + 1);
                let bad: &[u8] = rng.pick(&[&[0xff][..], &[0xc3], &[0xed, 0xa0, 0x80], &[0xc0, 0xaf]]);
                header.splice(at..at, bad.iter().copied());
            }
            let len = if rng.one_in(10) {
                rng.pick(&INTERESTING_U64)
            } else {
                header.len() as u64
            };
            let mut out = len.to_le_bytes().to_vec();
            out.extend_from_slice(&header);
            out.extend_from_slice(&data);
            out.truncate(MAX_INPUT);
            out
        }
        // The length prefix.
        8 => {
            let mut file = rng.pick_ref(&c.plain).clone();
            let len = u64::from_le_bytes(file[..8].try_into().unwrap());
            let v = match rng.below(3) {
                0 => rng.pick(&INTERESTING_U64),
                1 => len.wrapping_add(rng.below(17) as u64).wrapping_sub(8),
                _ => file.len() as u64 - 8 + rng.below(3) as u64 - 1,
            };
            file[..8].copy_from_slice(&v.to_le_bytes());
            file
        }
        // Byte-level changes anywhere.
        _ => {
            let mut file = rng.pick_ref(&c.plain).clone();
            for _ in 0..rng.small(6) {
                mutate_bytes(&mut file, &c.plain, rng);
            }
            file
        }
    }
}

fn input(target: Target, c: &Corpus, seed: u64, iteration: u64) -> Vec<u8> {
    let mut rng = Rng::for_iteration(seed, iteration);
    match target {
        Target::Safetensors => st_input(c, &mut rng),
        _ => data_input(target, c, &mut rng),
    }
}

// ---------------------------------------------------------------------------------------------
// The oracle.

/// What the oracle needs to know about an input before the call: its memory budget and the
/// answer an independent decoding gives.
struct Expectation {
    budget: usize,
    /// Some(result) when the reference decoding is conclusive.
    reference: Option<Reference>,
}

enum Reference {
    Idx(Option<(Vec<usize>, Vec<u8>)>),
    Amat(Option<Vec<u8>>),
    /// Checkpoints: what the reference crate makes of the file (checked when ours accepts it).
    Safetensors(Option<Contents>),
}

/// Parses plain IDX bytes as the format says, independently of the reader.
fn reference_idx(plain: &[u8], ndims: usize) -> Option<(Vec<usize>, Vec<u8>)> {
    let hl = 4 + 4 * ndims;
    if plain.len() < hl || plain[..4] != [0, 0, 8, ndims as u8] {
        return None;
    }
    let dims: Vec<usize> = plain[4..hl]
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes(c.try_into().unwrap()) as usize)
        .collect();
    let need = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d))?;
    (plain.len() - hl == need).then(|| (dims, plain[hl..].to_vec()))
}

/// The bytes of data an IDX header announces, if the header is complete and valid.
fn idx_claim(plain: &[u8], ndims: usize) -> usize {
    let hl = 4 + 4 * ndims;
    if plain.len() < hl || plain[..4] != [0, 0, 8, ndims as u8] {
        return 0;
    }
    plain[4..hl]
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes(c.try_into().unwrap()) as usize)
        .try_fold(1usize, |a, d| a.checked_mul(d))
        .unwrap_or(0)
}

/// Parses .amat text as the format says, independently of the reader.
fn reference_amat(text: &[u8]) -> Option<Vec<u8>> {
    let mut pixels = Vec::new();
    for line in text.split_inclusive(|&b| b == b'\n') {
        if line.len() > MAX_AMAT_LINE_BYTES {
            return None;
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let mut n = 0;
        for tok in line.split(u8::is_ascii_whitespace).filter(|t| !t.is_empty()) {
            let (first, rest) = tok.split_first()?;
            let v = match first {
                b'0' => 0,
                b'1' => 255,
                _ => return None,
            };
            match rest {
                [] => {}
                [b'.', zeros @ ..] if zeros.iter().all(|&b| b == b'0') => {}
                _ => return None,
            }
            pixels.push(v);
            n += 1;
        }
        if n != IMAGE_PIXELS {
            return None;
        }
    }
    (!pixels.is_empty()).then_some(pixels)
}

fn reference_safetensors(bytes: &[u8]) -> Option<Contents> {
    let st = ::safetensors::SafeTensors::deserialize(bytes).ok()?;
    let mut tensors = Vec::new();
    for (name, view) in st.tensors() {
        if view.dtype() != ::safetensors::Dtype::F32 {
            return None;
        }
        let data = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        tensors.push(crate::io::NamedTensor {
            name,
            shape: view.shape().to_vec(),
            data,
        });
    }
    tensors.sort_by(|a, b| a.name.cmp(&b.name));
    let (_, meta) = ::safetensors::SafeTensors::read_metadata(bytes).ok()?;
    let mut pairs: Vec<(String, String)> = meta.metadata().clone().unwrap_or_default().into_iter().collect();
    pairs.sort();
    Some((tensors, pairs))
}

/// Constant part of every budget: decoder state, buffers, messages.
const BUDGET_CONST: usize = 512 * 1024;

fn expect(target: Target, input: &[u8]) -> Expectation {
    let gz = input.starts_with(&[0x1f, 0x8b]);
    let (plain, complete) = if gz && target != Target::Safetensors {
        expand(input)
    } else {
        (input.to_vec(), true)
    };
    match target {
        Target::IdxImages | Target::IdxLabels => {
            let ndims = if target == Target::IdxImages { 3 } else { 1 };
            // Raw: a copy of the data. Gzipped: what decompresses, but only as far as the header
            // allows (plus one byte to see that there is more).
            let allowed = if gz {
                plain.len().min(4 + 4 * ndims + idx_claim(&plain, ndims) + 1)
            } else {
                0
            };
            Expectation {
                budget: 16 * input.len() + 4 * allowed + BUDGET_CONST,
                reference: complete.then(|| Reference::Idx(reference_idx(&plain, ndims))),
            }
        }
        Target::Amat => Expectation {
            // Pixels are at most half the text; a line is held once.
            budget: 16 * input.len() + plain.len() + BUDGET_CONST,
            reference: complete.then(|| Reference::Amat(reference_amat(&plain))),
        },
        Target::Safetensors => Expectation {
            budget: 64 * input.len() + BUDGET_CONST,
            reference: Some(Reference::Safetensors(reference_safetensors(input))),
        },
    }
}

/// The outcome of one reader call, reduced to what the oracle compares.
enum Outcome {
    Idx(crate::Result<(Vec<usize>, Vec<u8>)>),
    Amat(crate::Result<MnistSet>),
    Safetensors(crate::Result<Contents>),
}

fn call(target: Target, input: &[u8]) -> Outcome {
    let path = target.path();
    match target {
        Target::IdxImages => {
            Outcome::Idx(parse_idx_images(input, path).map(|i| (vec![i.count, i.rows, i.cols], i.pixels)))
        }
        Target::IdxLabels => Outcome::Idx(parse_idx_labels(input, path).map(|l| (vec![l.len()], l))),
        Target::Amat => Outcome::Amat(parse_amat(input, path)),
        Target::Safetensors => {
            let r = parse_safetensors(input, path);
            // What the model and the trainer do next with the metadata (host side only).
            if let Ok((_, meta)) = &r {
                if let Ok(config) = crate::model::VaeConfig::from_metadata(meta) {
                    let _ = config.validate();
                }
                for k in ["step", "epoch", "seed", "batch_size", "batch"] {
                    let _ = meta.iter().find(|(key, _)| key == k).map(|(_, v)| v.parse::<u64>());
                }
            }
            Outcome::Safetensors(r)
        }
    }
}

/// Checks an error's type and that it names the file.
fn check_error(target: Target, e: &VaeError) -> Result<(), String> {
    let path = match (target, e) {
        (Target::Safetensors, VaeError::Checkpoint { path, .. }) => path,
        (Target::Safetensors, _) => return Err(format!("expected VaeError::Checkpoint, got {e:?}")),
        (_, VaeError::Format { path, .. }) => path,
        (_, _) => return Err(format!("expected VaeError::Format, got {e:?}")),
    };
    if path != target.path() {
        return Err(format!(
            "the error names {} instead of {}: {e}",
            path.display(),
            target.path().display()
        ));
    }
    Ok(())
}

/// Compares a call's outcome with the reference decoding.
fn judge(target: Target, outcome: Outcome, reference: Option<Reference>) -> Result<(bool, String), String> {
    let describe_err = |e: &VaeError| e.to_string();
    match (outcome, reference) {
        (Outcome::Idx(Err(e)), r) => {
            check_error(target, &e)?;
            if let Some(Reference::Idx(Some((dims, _)))) = r {
                let claim: usize = dims.iter().product();
                // A valid file may be refused only for announcing more than the reader's limit.
                if claim <= crate::data::idx::MAX_IDX_DATA_BYTES {
                    return Err(format!("refused a valid file of dimensions {dims:?}: {e}"));
                }
            }
            Ok((false, describe_err(&e)))
        }
        (Outcome::Idx(Ok(got)), r) => {
            if got.1.len() != got.0.iter().product::<usize>() {
                return Err(format!("dimensions {:?} but {} bytes of data", got.0, got.1.len()));
            }
            match r {
                Some(Reference::Idx(Some(want))) if want == got => Ok((true, String::new())),
                Some(Reference::Idx(Some(want))) => Err(format!(
                    "contents differ from the reference: got dims {:?}, expected {:?}",
                    got.0, want.0
                )),
                Some(Reference::Idx(None)) => Err(format!("accepted an invalid file as dimensions {:?}", got.0)),
                _ => Ok((true, String::new())),
            }
        }
        (Outcome::Amat(Err(e)), r) => {
            check_error(target, &e)?;
            if let Some(Reference::Amat(Some(_))) = r {
                return Err(format!("refused a valid file: {e}"));
            }
            Ok((false, describe_err(&e)))
        }
        (Outcome::Amat(Ok(set)), r) => {
            if set.count == 0 || set.images.len() != set.count * IMAGE_PIXELS || !set.labels.is_empty() {
                return Err(format!(
                    "inconsistent set: count {}, {} pixels, {} labels",
                    set.count,
                    set.images.len(),
                    set.labels.len()
                ));
            }
            match r {
                Some(Reference::Amat(Some(want))) if want == set.images => Ok((true, String::new())),
                Some(Reference::Amat(Some(_))) => Err("pixels differ from the reference".to_string()),
                Some(Reference::Amat(None)) => Err(format!("accepted an invalid file as {} images", set.count)),
                _ => Ok((true, String::new())),
            }
        }
        (Outcome::Safetensors(Err(e)), _) => {
            check_error(target, &e)?;
            Ok((false, describe_err(&e)))
        }
        (Outcome::Safetensors(Ok((tensors, meta))), r) => {
            let mut names: Vec<&str> = tensors.iter().map(|t| t.name.as_str()).collect();
            names.sort_unstable();
            if names.windows(2).any(|w| w[0] == w[1]) {
                return Err("returned a tensor name twice".to_string());
            }
            if let Some(t) = tensors
                .iter()
                .find(|t| t.data.len() != t.shape.iter().product::<usize>())
            {
                return Err(format!(
                    "tensor '{}' of shape {:?} has {} values",
                    t.name,
                    t.shape,
                    t.data.len()
                ));
            }
            if !meta.windows(2).all(|w| w[0].0 < w[1].0) {
                return Err("metadata keys are not unique and sorted".to_string());
            }
            let Some(Reference::Safetensors(Some((want_t, want_m)))) = r else {
                return Err("accepted a file the reference crate refuses (or holding non-F32 data)".to_string());
            };
            let mut got_t = tensors;
            got_t.sort_by(|a, b| a.name.cmp(&b.name));
            // Compare bit patterns: NaN payloads must survive too.
            let same = got_t.len() == want_t.len()
                && got_t.iter().zip(&want_t).all(|(a, b)| {
                    a.name == b.name
                        && a.shape == b.shape
                        && a.data
                            .iter()
                            .map(|v| v.to_bits())
                            .eq(b.data.iter().map(|v| v.to_bits()))
                });
            if !same || meta != want_m {
                return Err("contents differ from the reference crate's".to_string());
            }
            Ok((true, String::new()))
        }
    }
}

/// Writes a failing input where it can be replayed from.
fn save(target: Target, seed: u64, iteration: u64, input: &[u8]) -> PathBuf {
    let path = std::env::temp_dir().join(format!(
        "vae-wgpu-fuzz-{}-seed{seed}-iter{iteration}.bin",
        target.name()
    ));
    if let Err(e) = std::fs::write(&path, input) {
        eprintln!("fuzz: could not save the input to {}: {e}", path.display());
    }
    path
}

/// Runs one input through the oracle; `Err` describes the violation.
fn check(target: Target, input: &[u8]) -> Result<Verdict, String> {
    let expectation = expect(target, input);
    let start = Instant::now();
    let (result, peak) = peak_alloc(|| catch_unwind(AssertUnwindSafe(|| call(target, input))));
    let elapsed = start.elapsed();
    let outcome = match result {
        Ok(o) => o,
        Err(payload) => {
            let msg = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "(no message)".to_string());
            return Err(format!("the reader panicked: {msg}"));
        }
    };
    if elapsed > TIME_LIMIT {
        // Once more, to tell a slow reader from a busy machine.
        let again = Instant::now();
        let _ = catch_unwind(AssertUnwindSafe(|| call(target, input)));
        let again = again.elapsed();
        if again > TIME_LIMIT {
            return Err(format!(
                "the reader took {elapsed:.2?} and then {again:.2?}, more than {TIME_LIMIT:?}"
            ));
        }
    }
    if peak > expectation.budget {
        return Err(format!(
            "the reader allocated {peak} bytes at its peak, more than the budget of {} for a {}-byte input",
            expectation.budget,
            input.len()
        ));
    }
    let (accepted, message) = judge(target, outcome, expectation.reference)?;
    Ok(Verdict {
        accepted,
        message,
        peak,
        budget: expectation.budget,
        elapsed,
    })
}

struct Verdict {
    accepted: bool,
    message: String,
    peak: usize,
    budget: usize,
    elapsed: Duration,
}

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .replace('_', "")
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a whole number")),
        Err(_) => default,
    }
}

/// Aborts the process, after saving the input, if one call never returns.
struct Watchdog {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Watchdog {
    fn start(target: Target, seed: u64, iteration: Arc<AtomicU64>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut last = u64::MAX;
            let mut since = Instant::now();
            while !flag.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(200));
                let now = iteration.load(Ordering::Relaxed);
                if now != last {
                    last = now;
                    since = Instant::now();
                } else if since.elapsed() > HANG_ABORT {
                    let input = input(target, &corpus(target), seed, now);
                    let saved = save(target, seed, now, &input);
                    eprintln!(
                        "fuzz target {}, seed {seed}, iteration {now}: the reader has not returned after {:?}; \
                         input saved to {}",
                        target.name(),
                        HANG_ABORT,
                        saved.display()
                    );
                    std::process::abort();
                }
            }
        });
        Watchdog {
            stop,
            handle: Some(handle),
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Fuzzes one target for `VAE_WGPU_FUZZ_ITERS` iterations and reports what it saw.
fn fuzz(target: Target) {
    let iters = env_u64("VAE_WGPU_FUZZ_ITERS", DEFAULT_ITERS);
    let seed = env_u64("VAE_WGPU_FUZZ_SEED", 1);
    let keep_going = std::env::var_os("VAE_WGPU_FUZZ_KEEP_GOING").is_some_and(|v| v == "1");
    let c = corpus(target);
    let progress = Arc::new(AtomicU64::new(0));
    let _watchdog = Watchdog::start(target, seed, progress.clone());
    let start = Instant::now();
    let (mut accepted, mut max_peak, mut max_time) = (0u64, 0usize, Duration::ZERO);
    // The closest any input came to its memory budget.
    let mut max_share = 0f64;
    let mut slowest = 0u64;
    let mut messages = std::collections::HashSet::new();
    // Failures by shape (digits masked): how many, and the first one's report.
    let mut failures: Vec<(String, u64, String)> = Vec::new();
    let mut failed = 0u64;
    for i in 0..iters {
        progress.store(i, Ordering::Relaxed);
        let input = input(target, &c, seed, i);
        match check(target, &input) {
            Ok(v) => {
                accepted += v.accepted as u64;
                max_peak = max_peak.max(v.peak);
                if v.elapsed > max_time {
                    (max_time, slowest) = (v.elapsed, i);
                }
                max_share = max_share.max(v.peak as f64 / v.budget as f64);
                // Message shapes as a rough measure of the paths reached.
                if messages.len() < 100_000 {
                    messages.insert(mask_digits(&v.message));
                }
            }
            Err(problem) => {
                failed += 1;
                let shape = mask_digits(&problem);
                if let Some(f) = failures.iter_mut().find(|f| f.0 == shape) {
                    f.1 += 1;
                    continue;
                }
                let saved = save(target, seed, i, &input);
                let report = format!(
                    "fuzz target {}, seed {seed}, iteration {i}: {problem}\n  input ({} bytes) saved to {}; \
                     replay with VAE_WGPU_FUZZ_REPLAY={} cargo test --release --lib fuzz::replay -- --nocapture",
                    target.name(),
                    input.len(),
                    saved.display(),
                    saved.display()
                );
                if !keep_going {
                    panic!("{report}");
                }
                eprintln!("{report}");
                failures.push((shape, 1, report));
            }
        }
    }
    eprintln!(
        "fuzz target {}: {iters} inputs (seed {seed}) in {:.2?}: {accepted} accepted, {} refused with {} distinct \
         message shapes, {failed} failed; peak allocation {max_peak} bytes (at most {:.0}% of an input's budget), slowest input {max_time:.2?} (iteration {slowest})",
        target.name(),
        start.elapsed(),
        iters - accepted - failed,
        messages.len(),
        100.0 * max_share,
    );
    if let Some(dump) = std::env::var_os("VAE_WGPU_FUZZ_MESSAGES") {
        let mut shapes: Vec<&String> = messages.iter().collect();
        shapes.sort();
        let file = PathBuf::from(format!("{}-{}.txt", PathBuf::from(dump).display(), target.name()));
        let text: String = shapes.iter().map(|m| format!("{m}\n")).collect();
        std::fs::write(&file, text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    }
    let summary: Vec<String> = failures.iter().map(|(_, n, r)| format!("{n} like: {r}")).collect();
    assert!(failures.is_empty(), "{failed} failures:\n{}", summary.join("\n"));
}

/// A message with its numbers masked (and cut), to group messages by kind.
fn mask_digits(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars().take(120) {
        if c.is_ascii_digit() {
            if !out.ends_with('#') {
                out.push('#');
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[test]
fn fuzz_idx_images() {
    fuzz(Target::IdxImages);
}

#[test]
fn fuzz_idx_labels() {
    fuzz(Target::IdxLabels);
}

#[test]
fn fuzz_amat() {
    fuzz(Target::Amat);
}

#[test]
fn fuzz_safetensors() {
    fuzz(Target::Safetensors);
}

/// Runs a saved input (`VAE_WGPU_FUZZ_REPLAY=<file>`) through every target's oracle.
#[test]
fn replay() {
    let Some(file) = std::env::var_os("VAE_WGPU_FUZZ_REPLAY") else {
        return;
    };
    let input = std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", PathBuf::from(&file).display()));
    let mut problems = Vec::new();
    for target in Target::ALL {
        match check(target, &input) {
            Ok(v) => eprintln!(
                "{}: {} ({} bytes peak, {:.2?}){}",
                target.name(),
                if v.accepted { "accepted" } else { "refused" },
                v.peak,
                v.elapsed,
                if v.message.is_empty() {
                    String::new()
                } else {
                    format!(": {}", v.message)
                }
            ),
            Err(p) => {
                eprintln!("{}: FAILS: {p}", target.name());
                problems.push(format!("{}: {p}", target.name()));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The mutator is a function of (seed, iteration) alone, so a failure replays from its numbers.
#[test]
fn inputs_are_deterministic() {
    for target in Target::ALL {
        let c = corpus(target);
        for i in [0, 1, 17, 4096] {
            assert_eq!(input(target, &c, 7, i), input(target, &c, 7, i), "{}", target.name());
        }
        let distinct: std::collections::HashSet<Vec<u8>> = (0..32).map(|i| input(target, &c, 7, i)).collect();
        assert!(
            distinct.len() >= 16,
            "{}: {} distinct inputs of 32",
            target.name(),
            distinct.len()
        );
    }
}

/// The counter sees an allocation on this thread and forgets it once freed.
#[test]
fn peak_alloc_counts_this_thread() {
    let (_, peak) = peak_alloc(|| drop(std::hint::black_box(vec![0u8; 1 << 20])));
    assert!(((1 << 20)..(1 << 20) + 4096).contains(&peak), "{peak}");
    let (_, peak) = peak_alloc(|| ());
    assert_eq!(peak, 0);
}
