//! Reading and writing checkpoints in the safetensors format, F32 tensors only.
//!
//! Layout: an 8-byte little-endian header length `N`, `N` bytes of JSON header (padded with
//! spaces to a multiple of 8), then the raw little-endian tensor data. The header maps each
//! tensor name to `{"dtype","shape","data_offsets":[begin,end]}` (offsets relative to the start
//! of the data section) and may hold a `"__metadata__"` object of string pairs.
//!
//! Reading goes through the format's reference crate, [`safetensors`], with checks of our own
//! on top: a pass over the header with serde_json that refuses repeated keys (the crate parses
//! into hash maps and would keep the last one silently), non-string metadata and dtypes other
//! than F32, and that names the tensor or key behind each of the crate's refusals. Tensors come
//! back in data-offset order, ties (empty tensors) in header order.
//!
//! Writing is our own small writer rather than the crate's `serialize`: that one orders tensors
//! by dtype and name and writes the metadata from a `HashMap`, so its bytes change from one
//! process to the next. Ours writes the tensors and metadata in the order given, so identical
//! checkpoints are identical files.

use std::collections::HashSet;
use std::fmt::{self, Write as _};
use std::io::Write as _;
use std::path::Path;

use ::safetensors::tensor::TensorInfo;
use ::safetensors::{Dtype, SafeTensorError, SafeTensors};
use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::error::{Result, VaeError};

/// The key under which safetensors stores free-form string metadata.
const METADATA_KEY: &str = "__metadata__";
/// The largest header the reference crate reads (its own limit, which it does not export).
const MAX_HEADER_SIZE: usize = 100_000_000;

/// One named F32 tensor, the unit a checkpoint is made of.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedTensor {
    /// Unique name within the file, e.g. `"encoder.fc1.weight"`.
    pub name: String,
    /// Dimensions, outermost first; `[]` is a scalar.
    pub shape: Vec<usize>,
    /// Row-major values; its length is the product of `shape`.
    pub data: Vec<f32>,
}

fn checkpoint_err(path: &Path, problem: impl Into<String>) -> VaeError {
    VaeError::Checkpoint {
        path: path.to_path_buf(),
        problem: problem.into(),
    }
}

/// Number of elements of `shape`, or `None` if the product overflows `usize`.
fn element_count(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

/// Bytes of F32 data `shape` needs, or `None` on overflow.
fn f32_bytes(shape: &[usize]) -> Option<usize> {
    element_count(shape).and_then(|n| n.checked_mul(4))
}

/// Appends `s` as a JSON string literal, escaped by serde_json: `\"`, `\\`, `\b`, `\f`, `\n`,
/// `\r`, `\t` and `\u00xx` for the other control characters; everything else as it is.
fn push_json_string(path: &Path, out: &mut String, s: &str) -> Result<()> {
    let literal = serde_json::to_string(s)
        .map_err(|e| checkpoint_err(path, format!("cannot encode {s:?} as a JSON string: {e}")))?;
    out.push_str(&literal);
    Ok(())
}

/// Builds the padded JSON header, validating the tensors first so that nothing is written for
/// an invalid checkpoint.
fn build_header(path: &Path, tensors: &[NamedTensor], metadata: &[(String, String)]) -> Result<String> {
    let mut header = String::from("{");
    let mut first = true;
    if !metadata.is_empty() {
        let mut keys = HashSet::new();
        header.push_str("\"__metadata__\":{");
        for (i, (k, v)) in metadata.iter().enumerate() {
            if !keys.insert(k.as_str()) {
                return Err(checkpoint_err(path, format!("duplicate metadata key '{k}'")));
            }
            if i > 0 {
                header.push(',');
            }
            push_json_string(path, &mut header, k)?;
            header.push(':');
            push_json_string(path, &mut header, v)?;
        }
        header.push('}');
        first = false;
    }
    let mut names = HashSet::new();
    let mut offset = 0usize;
    for t in tensors {
        if t.name == METADATA_KEY {
            return Err(checkpoint_err(
                path,
                format!("a tensor may not be named '{METADATA_KEY}'; that key is reserved"),
            ));
        }
        if !names.insert(t.name.as_str()) {
            return Err(checkpoint_err(path, format!("duplicate tensor name '{}'", t.name)));
        }
        let numel = element_count(&t.shape)
            .ok_or_else(|| checkpoint_err(path, format!("tensor '{}': shape {:?} overflows", t.name, t.shape)))?;
        if numel != t.data.len() {
            return Err(checkpoint_err(
                path,
                format!(
                    "tensor '{}': shape {:?} has {numel} elements but {} values were given",
                    t.name,
                    t.shape,
                    t.data.len()
                ),
            ));
        }
        let end = numel
            .checked_mul(4)
            .and_then(|n| n.checked_add(offset))
            .ok_or_else(|| checkpoint_err(path, "total tensor size overflows"))?;
        if !first {
            header.push(',');
        }
        first = false;
        push_json_string(path, &mut header, &t.name)?;
        header.push_str(":{\"dtype\":\"F32\",\"shape\":[");
        for (i, d) in t.shape.iter().enumerate() {
            if i > 0 {
                header.push(',');
            }
            let _ = write!(header, "{d}");
        }
        let _ = write!(header, "],\"data_offsets\":[{offset},{end}]}}");
        offset = end;
    }
    header.push('}');
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    if header.len() > MAX_HEADER_SIZE {
        return Err(checkpoint_err(
            path,
            format!(
                "the header would be {} bytes, more than the {MAX_HEADER_SIZE} bytes safetensors readers \
                 accept; save fewer tensors or less metadata",
                header.len()
            ),
        ));
    }
    Ok(header)
}

/// Writes `tensors` (in the given order) and string `metadata` as a safetensors file.
///
/// The write is atomic — a temp file `.<name>.tmp` beside `path` is synced and renamed over it —
/// so an interrupted save never leaves a torn checkpoint. Fails with [`VaeError::Checkpoint`]
/// if a shape does not match its data, names or metadata keys repeat, or the header would exceed
/// the format's 100 MB limit. The bytes depend only on the arguments.
pub fn write_safetensors(path: &Path, tensors: &[NamedTensor], metadata: &[(String, String)]) -> Result<()> {
    let header = build_header(path, tensors, metadata)?;
    super::write_atomically(path, |w| {
        w.write_all(&(header.len() as u64).to_le_bytes())?;
        w.write_all(header.as_bytes())?;
        let mut buf = Vec::with_capacity(16 * 1024);
        for t in tensors {
            for chunk in t.data.chunks(4 * 1024) {
                buf.clear();
                for v in chunk {
                    buf.extend_from_slice(&v.to_le_bytes());
                }
                w.write_all(&buf)?;
            }
        }
        Ok(())
    })
}

/// Reads a safetensors file of F32 tensors, as written by [`write_safetensors`] or other tools.
///
/// Returns the tensors in data-offset order and the metadata sorted by key, so the result does
/// not depend on the header's key order. Anything malformed — a non-F32 dtype, a repeated key,
/// offsets that are out of range, overlapping, leave gaps or disagree with the shape, a
/// truncated file — is a [`VaeError::Checkpoint`] naming the problem and the tensor or key.
///
/// The file is read once, as a stream, and no further than its header allows: the header
/// length first (at most 100 MB), then the header, then the tensor data it describes (at most
/// [`MAX_DATA_BYTES`]). So a pipe (`/dev/stdin`) reads, and a device or FIFO that goes on past
/// what the header describes (or never ends) is refused after one byte too many.
#[allow(clippy::type_complexity)] // the signature is the module's documented API
pub fn read_safetensors(path: &Path) -> Result<(Vec<NamedTensor>, Vec<(String, String)>)> {
    let file = std::fs::File::open(path).map_err(|e| VaeError::io(path, e))?;
    let size = file.metadata().ok().filter(|m| m.is_file()).map(|m| m.len());
    read_contents(std::io::BufReader::new(file), size, path)
}

/// Parses the contents of a safetensors file as [`read_safetensors`] does; `path` only names
/// the file in errors.
#[cfg(test)]
pub(crate) fn parse_safetensors(bytes: &[u8], path: &Path) -> Result<Contents> {
    read_contents(bytes, Some(bytes.len() as u64), path)
}

/// Tensors and metadata as [`read_safetensors`] returns them.
pub(crate) type Contents = (Vec<NamedTensor>, Vec<(String, String)>);

/// The most tensor data a file may hold: 16 GiB, far beyond any model (with its optimizer
/// state) the kernels can train, and a bound on what a stream can make the reader hold.
pub const MAX_DATA_BYTES: u64 = 1 << 34;

/// Memory reserved up front for the data of a stream of unknown length; more grows as it
/// arrives, so what a stream holds, not what its header claims, sets the memory it costs.
const STREAM_PREALLOC: u64 = 1 << 20;

/// Reads a safetensors file from `reader` in the order of its parts, each bounded by what the
/// parts before it say: the 8-byte header length, the header, the data. `size` is the input's
/// length when it is known (a regular file, a slice): then the data is read whole if it is
/// at most [`MAX_DATA_BYTES`]; a stream of unknown length is read up to one byte past the data
/// its header describes.
fn read_contents(mut reader: impl std::io::Read, size: Option<u64>, path: &Path) -> Result<Contents> {
    use std::io::Read as _;
    let io_err = |e| VaeError::io(path, e);
    let mut bytes = Vec::with_capacity(8);
    (&mut reader).take(8).read_to_end(&mut bytes).map_err(io_err)?;
    let declared = match <[u8; 8]>::try_from(&bytes[..]) {
        Ok(prefix) => u64::from_le_bytes(prefix),
        Err(_) => return parse_contents(&bytes).map_err(|p| checkpoint_err(path, p)),
    };
    if declared > MAX_HEADER_SIZE as u64 {
        return parse_contents(&bytes).map_err(|p| checkpoint_err(path, p));
    }
    // `declared` is at most 100 MB; a file's size bounds what is reserved for it.
    let header_len = declared as usize;
    bytes.reserve(header_len.min(size.unwrap_or(STREAM_PREALLOC).min(usize::MAX as u64) as usize));
    (&mut reader).take(declared).read_to_end(&mut bytes).map_err(io_err)?;
    // The header's own problems (truncated, not UTF-8, not JSON, malformed entries) are
    // reported as for a whole file; otherwise it says how much data follows.
    let Some(infos) = std::str::from_utf8(&bytes[8..])
        .ok()
        .filter(|_| bytes.len() == 8 + header_len)
        .and_then(|header| serde_json::from_str::<HeaderProbe>(header).ok())
        .and_then(|probe| probe.check().ok())
    else {
        return parse_contents(&bytes).map_err(|p| checkpoint_err(path, p));
    };
    let last = infos.iter().max_by_key(|(_, info)| info.data_offsets.1);
    let claim = last.map_or(0, |(_, info)| info.data_offsets.1) as u64;
    let data_len = match size {
        Some(size) => {
            let data_len = size.saturating_sub(bytes.len() as u64);
            if data_len > MAX_DATA_BYTES {
                return Err(checkpoint_err(
                    path,
                    format!(
                        "it holds {data_len} bytes of tensor data, more than the {MAX_DATA_BYTES} bytes this \
                         reader accepts (not a checkpoint?)"
                    ),
                ));
            }
            data_len
        }
        None => {
            if claim > MAX_DATA_BYTES {
                let name = last.map_or("?", |(name, _)| name.as_str());
                return Err(checkpoint_err(
                    path,
                    format!(
                        "tensor '{name}' ends at byte {claim} of the data, more than the {MAX_DATA_BYTES} bytes \
                         this reader accepts (corrupt header?)"
                    ),
                ));
            }
            claim.min(STREAM_PREALLOC)
        }
    };
    // A file is read whole (its length is bounded above), so that its problems are named
    // exactly; a stream up to one byte past the data its header describes.
    let limit = if size.is_some() { data_len } else { claim + 1 };
    bytes.reserve(data_len as usize);
    let before = bytes.len();
    (&mut reader).take(limit).read_to_end(&mut bytes).map_err(io_err)?;
    if size.is_none() && (bytes.len() - before) as u64 > claim {
        let name = last.map_or("?", |(name, _)| name.as_str());
        return Err(checkpoint_err(
            path,
            format!(
                "it goes on past the {claim} bytes of tensor data its header describes (tensor '{name}' ends \
                 there): not a checkpoint, or one followed by other data"
            ),
        ));
    }
    parse_contents(&bytes).map_err(|p| checkpoint_err(path, p))
}

fn parse_contents(bytes: &[u8]) -> std::result::Result<Contents, String> {
    let Some((header, data)) = split_header(bytes) else {
        // The length prefix or the header's bytes are unusable; the crate says which.
        return Err(match SafeTensors::read_metadata(bytes) {
            Err(e) => framing_problem(bytes, e),
            Ok(_) => "the header could not be located in the file".to_string(),
        });
    };
    let probe: HeaderProbe = serde_json::from_str(header).map_err(|e| format!("invalid header JSON: {e}"))?;
    let mut infos = probe.check()?;
    // Offsets past the end are refused here, before the crate adds them to the header length
    // (which could overflow for hostile offsets near usize::MAX).
    for (name, info) in &infos {
        let (begin, end) = info.data_offsets;
        if end > data.len() {
            return Err(format!(
                "tensor '{name}': data_offsets [{begin}, {end}] are out of range; the data section has only \
                 {} bytes (truncated file?)",
                data.len()
            ));
        }
    }
    // The order the crate validates in; stable, so tied (empty) tensors keep their header order.
    infos.sort_by_key(|(_, info)| info.data_offsets);

    let (_, metadata) = SafeTensors::read_metadata(bytes).map_err(|e| content_problem(e, &infos, data.len()))?;
    let mut tensors = Vec::with_capacity(infos.len());
    for (name, _) in &infos {
        let info = metadata
            .info(name)
            .ok_or_else(|| format!("tensor '{name}' is missing from the header as the safetensors crate read it"))?;
        if info.dtype != Dtype::F32 {
            return Err(format!(
                "tensor '{name}' has dtype {:?}; only F32 is supported",
                info.dtype
            ));
        }
        let (begin, end) = info.data_offsets;
        let raw = data
            .get(begin..end)
            .ok_or_else(|| format!("tensor '{name}': data_offsets [{begin}, {end}] are out of range"))?;
        tensors.push(NamedTensor {
            name: name.clone(),
            shape: info.shape.clone(),
            data: raw
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        });
    }
    let mut pairs: Vec<(String, String)> = metadata.metadata().clone().unwrap_or_default().into_iter().collect();
    pairs.sort();
    Ok((tensors, pairs))
}

/// The header text and the data section, if the length prefix fits the file and the format's
/// limit and the header is UTF-8 — the checks the crate makes first, in the same order.
fn split_header(bytes: &[u8]) -> Option<(&str, &[u8])> {
    let prefix: [u8; 8] = bytes.get(..8)?.try_into().ok()?;
    let len = usize::try_from(u64::from_le_bytes(prefix))
        .ok()
        .filter(|&n| n <= MAX_HEADER_SIZE)?;
    let header = std::str::from_utf8(bytes.get(8..8 + len)?).ok()?;
    Some((header, &bytes[8 + len..]))
}

/// The message for a refusal of the length prefix or the header's encoding.
fn framing_problem(bytes: &[u8], err: SafeTensorError) -> String {
    let declared = bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_le_bytes);
    let available = bytes.len().saturating_sub(8);
    match err {
        SafeTensorError::HeaderTooSmall => format!(
            "file is {} bytes long, too short for the 8-byte header length (truncated file?)",
            bytes.len()
        ),
        SafeTensorError::HeaderTooLarge => format!(
            "header length {declared} exceeds the safetensors limit of {MAX_HEADER_SIZE} bytes (corrupt or \
             not a safetensors file)"
        ),
        SafeTensorError::InvalidHeaderLength => format!(
            "header length {declared} is larger than the {available} bytes that follow it (truncated or not \
             a safetensors file)"
        ),
        SafeTensorError::InvalidHeader(e) => format!("header is not valid UTF-8: {e}"),
        other => format!("the safetensors reader refused the file: {other}"),
    }
}

/// The message for a refusal by the crate once our own pass has accepted the header, naming
/// the tensor at fault. `infos` is the header's tensors sorted by data offsets, as the crate
/// validates them; `data_len` the size of the data section.
fn content_problem(err: SafeTensorError, infos: &[(String, TensorInfo)], data_len: usize) -> String {
    match err {
        SafeTensorError::InvalidHeaderDeserialization(e) => format!("invalid header JSON: {e}"),
        SafeTensorError::InvalidOffset(name) => {
            let Some(i) = infos.iter().position(|(n, _)| *n == name) else {
                return format!("tensor '{name}': invalid data_offsets");
            };
            let (begin, end) = infos[i].1.data_offsets;
            let (previous, previous_end) = match i.checked_sub(1) {
                Some(p) => (Some(infos[p].0.as_str()), infos[p].1.data_offsets.1),
                None => (None, 0),
            };
            if end < begin {
                format!("tensor '{name}': data_offsets [{begin}, {end}] end before they begin")
            } else if begin < previous_end {
                format!(
                    "tensor '{name}' at data_offsets [{begin}, {end}] overlaps tensor '{}', whose data ends at \
                     {previous_end}",
                    previous.unwrap_or("?")
                )
            } else if begin > previous_end {
                format!(
                    "gap of {} unused bytes in the data section before tensor '{name}' at data_offsets \
                     [{begin}, {end}]",
                    begin - previous_end
                )
            } else {
                format!("tensor '{name}': data_offsets [{begin}, {end}] do not follow the previous tensor's data")
            }
        }
        SafeTensorError::ValidationOverflow => match infos.iter().find(|(_, t)| f32_bytes(&t.shape).is_none()) {
            Some((name, t)) => format!(
                "tensor '{name}': shape {:?} overflows: its size in bytes does not fit",
                t.shape
            ),
            None => "a tensor's shape overflows: its size in bytes does not fit".to_string(),
        },
        SafeTensorError::TensorInvalidInfo => {
            let mismatch = infos.iter().find_map(|(name, t)| {
                let (begin, end) = t.data_offsets;
                let needed = f32_bytes(&t.shape)?;
                (end.checked_sub(begin) != Some(needed)).then(|| {
                    format!(
                        "tensor '{name}': data_offsets [{begin}, {end}] span {} bytes but shape {:?} of F32 needs \
                         {needed}",
                        end.wrapping_sub(begin),
                        t.shape
                    )
                })
            });
            mismatch.unwrap_or_else(|| "a tensor's data_offsets disagree with its shape".to_string())
        }
        SafeTensorError::MetadataIncompleteBuffer => {
            let covered = infos.iter().map(|(_, t)| t.data_offsets.1).max().unwrap_or(0);
            if data_len > covered {
                match infos.last() {
                    Some((name, _)) => format!(
                        "{} trailing bytes after the last tensor's data: the data section has {data_len} bytes, \
                         tensor '{name}' ends at {covered}",
                        data_len - covered
                    ),
                    None => format!("{data_len} trailing bytes after a header that lists no tensors"),
                }
            } else {
                let short = infos.iter().find(|(_, t)| t.data_offsets.1 > data_len);
                match short {
                    Some((name, t)) => format!(
                        "tensor '{name}': data_offsets [{}, {}] are out of range; the data section has only \
                         {data_len} bytes (truncated file?)",
                        t.data_offsets.0, t.data_offsets.1
                    ),
                    None => format!("the tensors do not cover the {data_len}-byte data section exactly"),
                }
            }
        }
        other => format!("the safetensors reader refused the file: {other}"),
    }
}

/// One value of the header as our pass sees it: an object keeps its fields in file order,
/// repeats included; anything else is only described.
enum Probed {
    Object(Vec<(String, serde_json::Value)>),
    Other(&'static str),
}

impl<'de> Deserialize<'de> for Probed {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        struct ProbedVisitor;
        impl<'de> Visitor<'de> for ProbedVisitor {
            type Value = Probed;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Probed, A::Error> {
                let mut fields = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    fields.push((key, map.next_value()?));
                }
                Ok(Probed::Object(fields))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<Probed, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Probed::Other("an array"))
            }
            fn visit_unit<E>(self) -> std::result::Result<Probed, E> {
                Ok(Probed::Other("null"))
            }
            fn visit_bool<E>(self, _: bool) -> std::result::Result<Probed, E> {
                Ok(Probed::Other("a boolean"))
            }
            fn visit_i64<E>(self, _: i64) -> std::result::Result<Probed, E> {
                Ok(Probed::Other("a number"))
            }
            fn visit_u64<E>(self, _: u64) -> std::result::Result<Probed, E> {
                Ok(Probed::Other("a number"))
            }
            fn visit_f64<E>(self, _: f64) -> std::result::Result<Probed, E> {
                Ok(Probed::Other("a number"))
            }
            fn visit_str<E>(self, _: &str) -> std::result::Result<Probed, E> {
                Ok(Probed::Other("a string"))
            }
        }
        deserializer.deserialize_any(ProbedVisitor)
    }
}

/// Describes a JSON value's type for messages.
fn json_kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// Our own pass over the header: its top-level keys in file order with their values.
struct HeaderProbe(Vec<(String, Probed)>);

impl<'de> Deserialize<'de> for HeaderProbe {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        struct HeaderVisitor;
        impl<'de> Visitor<'de> for HeaderVisitor {
            type Value = HeaderProbe;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object mapping tensor names to their entries")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<HeaderProbe, A::Error> {
                let mut entries = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    entries.push((key, map.next_value()?));
                }
                Ok(HeaderProbe(entries))
            }
        }
        deserializer.deserialize_map(HeaderVisitor)
    }
}

impl HeaderProbe {
    /// Refuses what the crate would let through or report without a name — repeated keys,
    /// malformed metadata, dtypes other than F32, malformed tensor entries — and returns the
    /// tensor entries in header order as the crate reads them.
    fn check(self) -> std::result::Result<Vec<(String, TensorInfo)>, String> {
        let mut seen = HashSet::new();
        for (key, _) in &self.0 {
            if !seen.insert(key.as_str()) {
                return Err(if key == METADATA_KEY {
                    format!("'{METADATA_KEY}' appears twice in the header")
                } else {
                    format!("tensor '{key}' appears twice in the header")
                });
            }
        }
        let mut infos = Vec::with_capacity(self.0.len());
        for (key, value) in self.0 {
            if key == METADATA_KEY {
                match value {
                    Probed::Object(pairs) => {
                        let mut seen = HashSet::new();
                        for (k, v) in &pairs {
                            if !seen.insert(k.as_str()) {
                                return Err(format!("metadata key '{k}' appears twice in '{METADATA_KEY}'"));
                            }
                            if !v.is_string() {
                                return Err(format!("metadata value for '{k}' is {}, not a string", json_kind(v)));
                            }
                        }
                    }
                    // The crate reads `null` as no metadata.
                    Probed::Other("null") => {}
                    Probed::Other(kind) => {
                        return Err(format!("'{METADATA_KEY}' is {kind}, not an object of string pairs"));
                    }
                }
                continue;
            }
            let fields = match value {
                Probed::Object(fields) => fields,
                Probed::Other(kind) => return Err(format!("header entry for tensor '{key}' is {kind}, not an object")),
            };
            let mut seen = HashSet::new();
            for (field, _) in &fields {
                if !seen.insert(field.as_str()) {
                    return Err(format!("tensor '{key}': field '{field}' appears twice"));
                }
            }
            let entry: serde_json::Map<String, serde_json::Value> = fields.into_iter().collect();
            match entry.get("dtype").and_then(|d| d.as_str()) {
                Some("F32") | None => {}
                Some(other) => return Err(format!("tensor '{key}' has dtype {other}; only F32 is supported")),
            }
            let info = TensorInfo::deserialize(&serde_json::Value::Object(entry))
                .map_err(|e| format!("tensor '{key}': bad header entry: {e}"))?;
            infos.push((key, info));
        }
        Ok(infos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::test_util::{dir_entries, unique_dir};
    use std::collections::HashMap;

    fn t(name: &str, shape: &[usize], data: Vec<f32>) -> NamedTensor {
        NamedTensor {
            name: name.to_string(),
            shape: shape.to_vec(),
            data,
        }
    }

    fn md(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    /// A file made of an (unpadded) header and raw data, for feeding the reader bad input.
    fn raw_file(header: &str, data: &[u8]) -> Vec<u8> {
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(data);
        bytes
    }

    fn expect_reject(bytes: &[u8], needle: &str) {
        let dir = unique_dir("st-reject");
        let path = dir.join("bad.safetensors");
        std::fs::write(&path, bytes).unwrap();
        match read_safetensors(&path) {
            Err(VaeError::Checkpoint { path: p, problem }) => {
                assert_eq!(p, path);
                assert!(problem.contains(needle), "problem {problem:?} lacks {needle:?}");
            }
            other => panic!("expected a Checkpoint error containing {needle:?}, got {other:?}"),
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn sample_tensors() -> Vec<NamedTensor> {
        vec![
            t(
                "encoder.fc1.weight",
                &[2, 3],
                vec![0.5, -1.25, 3.0, f32::MAX, f32::MIN, 1e-30],
            ),
            t("encoder.fc1.bias", &[3], vec![0.0, -0.0, 7.5]),
            t("scalar", &[], vec![42.0]),
            t("empty", &[0, 4], vec![]),
            t("décodeur.😀", &[1, 1, 2], vec![f32::INFINITY, f32::NEG_INFINITY]),
        ]
    }

    fn sample_metadata() -> Vec<(String, String)> {
        md(&[
            ("quote", "say \"hi\""),
            ("backslash", "C:\\path\\to\\x \\u0041 not an escape"),
            ("newlines", "line1\nline2\r\n\ttabbed"),
            ("control", "\u{0}\u{1}\u{1f}\u{7f}\u{8}\u{c}"),
            ("non-ascii ключ", "größe 😀 日本語"),
            ("empty", ""),
        ])
    }

    #[test]
    fn round_trip_with_awkward_metadata() {
        let dir = unique_dir("st-roundtrip");
        let path = dir.join("model.safetensors");
        let tensors = sample_tensors();
        let metadata = sample_metadata();
        write_safetensors(&path, &tensors, &metadata).unwrap();

        let bytes = std::fs::read(&path).unwrap();
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        assert_eq!(n % 8, 0, "header must be padded to a multiple of 8");

        let (read, read_md) = read_safetensors(&path).unwrap();
        // Written in the given order, so data-offset order is the same.
        assert_eq!(read.len(), tensors.len());
        for (a, b) in read.iter().zip(&tensors) {
            assert_eq!(a.name, b.name);
            assert_eq!(a.shape, b.shape);
            let a_bits: Vec<u32> = a.data.iter().map(|v| v.to_bits()).collect();
            let b_bits: Vec<u32> = b.data.iter().map(|v| v.to_bits()).collect();
            assert_eq!(a_bits, b_bits, "tensor {}", a.name);
        }
        let mut sorted = metadata.clone();
        sorted.sort();
        assert_eq!(read_md, sorted);
        assert_eq!(dir_entries(&dir), vec!["model.safetensors".to_string()]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn nan_bits_survive() {
        let dir = unique_dir("st-nan");
        let path = dir.join("nan.safetensors");
        let nan = f32::from_bits(0x7fc0_1234);
        write_safetensors(&path, &[t("x", &[1], vec![nan])], &[]).unwrap();
        let (read, md) = read_safetensors(&path).unwrap();
        assert_eq!(read[0].data[0].to_bits(), 0x7fc0_1234);
        assert!(md.is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn byte_exact_tiny_file() {
        let dir = unique_dir("st-exact");
        let path = dir.join("tiny.safetensors");
        write_safetensors(&path, &[t("w", &[2], vec![1.0, -2.0])], &md(&[("k", "v")])).unwrap();

        let json = r#"{"__metadata__":{"k":"v"},"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
        // Counted by hand: `{"__metadata__":{"k":"v"},` is 26 bytes, `"w":` 4,
        // `{"dtype":"F32",` 15, `"shape":[2],` 12, `"data_offsets":[0,8]}` 21, final `}` 1.
        assert_eq!(json.len(), 79);
        let padded_len = 80u64; // next multiple of 8: one space of padding
        let mut expected = Vec::new();
        expected.extend_from_slice(&padded_len.to_le_bytes());
        expected.extend_from_slice(json.as_bytes());
        expected.push(b' ');
        expected.extend_from_slice(&[0x00, 0x00, 0x80, 0x3f]); // 1.0f32 little-endian
        expected.extend_from_slice(&[0x00, 0x00, 0x00, 0xc0]); // -2.0f32 little-endian
        assert_eq!(std::fs::read(&path).unwrap(), expected);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn empty_file_has_padded_empty_object() {
        let dir = unique_dir("st-empty");
        let path = dir.join("none.safetensors");
        write_safetensors(&path, &[], &[]).unwrap();
        let mut expected = 8u64.to_le_bytes().to_vec();
        expected.extend_from_slice(b"{}      ");
        assert_eq!(std::fs::read(&path).unwrap(), expected);
        assert_eq!(read_safetensors(&path).unwrap(), (vec![], vec![]));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn overwrite_is_atomic_and_leaves_no_temp() {
        let dir = unique_dir("st-atomic");
        let path = dir.join("ckpt.safetensors");
        write_safetensors(&path, &[t("a", &[1], vec![1.0])], &[]).unwrap();
        write_safetensors(&path, &[t("b", &[2], vec![2.0, 3.0])], &[]).unwrap();
        let (read, _) = read_safetensors(&path).unwrap();
        assert_eq!(read, vec![t("b", &[2], vec![2.0, 3.0])]);
        assert_eq!(dir_entries(&dir), vec!["ckpt.safetensors".to_string()]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Tensors and metadata the writer must refuse, with a word its message must hold.
    type Refused<'a> = (Vec<NamedTensor>, Vec<(String, String)>, &'a str);

    #[test]
    fn writer_rejects_bad_input_and_writes_nothing() {
        let dir = unique_dir("st-write-reject");
        let path = dir.join("x.safetensors");
        let cases: Vec<Refused> = vec![
            (
                vec![t("a", &[2, 2], vec![1.0; 3])],
                vec![],
                "has 4 elements but 3 values",
            ),
            (
                vec![t("a", &[1], vec![1.0]), t("a", &[1], vec![2.0])],
                vec![],
                "duplicate tensor",
            ),
            (vec![t(METADATA_KEY, &[1], vec![1.0])], vec![], "reserved"),
            (vec![], md(&[("k", "1"), ("k", "2")]), "duplicate metadata key"),
            (vec![t("a", &[usize::MAX, 2], vec![])], vec![], "overflows"),
        ];
        for (tensors, metadata, needle) in cases {
            match write_safetensors(&path, &tensors, &metadata) {
                Err(VaeError::Checkpoint { problem, .. }) => {
                    assert!(problem.contains(needle), "{problem:?} lacks {needle:?}")
                }
                other => panic!("expected Checkpoint error {needle:?}, got {other:?}"),
            }
        }
        assert!(dir_entries(&dir).is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn writer_refuses_headers_beyond_the_format_limit() {
        let dir = unique_dir("st-write-huge");
        let path = dir.join("x.safetensors");
        let huge = "x".repeat(MAX_HEADER_SIZE);
        match write_safetensors(&path, &[], &md(&[("k", huge.as_str())])) {
            Err(VaeError::Checkpoint { problem, .. }) => assert_eq!(
                problem,
                "the header would be 100000032 bytes, more than the 100000000 bytes safetensors readers accept; \
                 save fewer tensors or less metadata"
            ),
            other => panic!("expected a Checkpoint error, got {other:?}"),
        }
        assert!(dir_entries(&dir).is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn rejects_non_f32_dtype() {
        let h = r#"{"x":{"dtype":"F16","shape":[2],"data_offsets":[0,4]}}"#;
        expect_reject(&raw_file(h, &[0; 4]), "tensor 'x' has dtype F16; only F32 is supported");
        // A dtype the reference crate does not know is refused the same way.
        let h = r#"{"x":{"dtype":"F128","shape":[1],"data_offsets":[0,16]}}"#;
        expect_reject(
            &raw_file(h, &[0; 16]),
            "tensor 'x' has dtype F128; only F32 is supported",
        );
    }

    #[test]
    fn rejects_offsets_out_of_range() {
        let h = r#"{"x":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#;
        expect_reject(
            &raw_file(h, &[0; 8]),
            "tensor 'x': data_offsets [0, 16] are out of range; the data section has only 8 bytes (truncated file?)",
        );
    }

    #[test]
    fn rejects_offsets_near_usize_max_without_overflowing() {
        // Eight tensors of 2^61 - 4 bytes each, contiguous: offsets the crate would add to the
        // header length, overflowing usize.
        let size = (1usize << 61) - 4;
        let entries: Vec<String> = (0..8)
            .map(|i| {
                format!(
                    r#""t{i}":{{"dtype":"F32","shape":[{}],"data_offsets":[{},{}]}}"#,
                    size / 4,
                    i * size,
                    (i + 1) * size
                )
            })
            .collect();
        let h = format!("{{{}}}", entries.join(","));
        expect_reject(
            &raw_file(&h, &[]),
            &format!(
                "tensor 't0': data_offsets [0, {size}] are out of range; the data section has only 0 bytes \
                 (truncated file?)"
            ),
        );
    }

    #[test]
    fn rejects_offsets_disagreeing_with_shape() {
        let h = r#"{"x":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#;
        expect_reject(
            &raw_file(h, &[0; 8]),
            "tensor 'x': data_offsets [0, 8] span 8 bytes but shape [3] of F32 needs 12",
        );
        // The second tensor is at fault, not the first.
        let h = concat!(
            r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"#,
            r#""b":{"dtype":"F32","shape":[2,2],"data_offsets":[4,8]}}"#
        );
        expect_reject(
            &raw_file(h, &[0; 8]),
            "tensor 'b': data_offsets [4, 8] span 4 bytes but shape [2, 2] of F32 needs 16",
        );
    }

    #[test]
    fn rejects_shapes_whose_size_overflows() {
        let h = r#"{"a":{"dtype":"F32","shape":[18446744073709551615,2],"data_offsets":[0,0]}}"#;
        expect_reject(
            &raw_file(h, &[]),
            "tensor 'a': shape [18446744073709551615, 2] overflows: its size in bytes does not fit",
        );
    }

    #[test]
    fn rejects_reversed_offsets() {
        let h = r#"{"x":{"dtype":"F32","shape":[0],"data_offsets":[8,4]}}"#;
        expect_reject(
            &raw_file(h, &[0; 8]),
            "tensor 'x': data_offsets [8, 4] end before they begin",
        );
    }

    #[test]
    fn rejects_overlapping_tensors() {
        let h = concat!(
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"#,
            r#""b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#
        );
        expect_reject(
            &raw_file(h, &[0; 12]),
            "tensor 'b' at data_offsets [4, 12] overlaps tensor 'a', whose data ends at 8",
        );
    }

    #[test]
    fn rejects_gaps_and_trailing_bytes() {
        let h = concat!(
            r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"#,
            r#""b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}"#
        );
        expect_reject(
            &raw_file(h, &[0; 12]),
            "gap of 4 unused bytes in the data section before tensor 'b' at data_offsets [8, 12]",
        );
        let h = r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#;
        expect_reject(
            &raw_file(h, &[0; 8]),
            "gap of 4 unused bytes in the data section before tensor 'a' at data_offsets [4, 8]",
        );
        let h = r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
        expect_reject(
            &raw_file(h, &[0; 6]),
            "2 trailing bytes after the last tensor's data: the data section has 6 bytes, tensor 'a' ends at 4",
        );
        expect_reject(
            &raw_file("{}", &[0; 3]),
            "3 trailing bytes after a header that lists no tensors",
        );
    }

    #[test]
    fn rejects_truncated_files() {
        let dir = unique_dir("st-truncated");
        let path = dir.join("good.safetensors");
        write_safetensors(&path, &sample_tensors(), &sample_metadata()).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();

        let data_len = bytes.len() - 8 - u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        expect_reject(
            &bytes[..bytes.len() - 1],
            &format!(
                "tensor 'décodeur.😀': data_offsets [{}, {data_len}] are out of range; the data section has only \
                 {} bytes (truncated file?)",
                data_len - 8,
                data_len - 1
            ),
        );
        let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap());
        expect_reject(
            &bytes[..20],
            &format!(
                "header length {header_len} is larger than the 12 bytes that follow it (truncated or not a \
                 safetensors file)"
            ),
        );
        expect_reject(
            &bytes[..5],
            "file is 5 bytes long, too short for the 8-byte header length (truncated file?)",
        );
        expect_reject(
            &[],
            "file is 0 bytes long, too short for the 8-byte header length (truncated file?)",
        );
    }

    #[test]
    fn rejects_header_length_beyond_file() {
        let mut bytes = 1000u64.to_le_bytes().to_vec();
        bytes.extend_from_slice(b"{}      ");
        expect_reject(
            &bytes,
            "header length 1000 is larger than the 8 bytes that follow it (truncated or not a safetensors file)",
        );
        let mut bytes = u64::MAX.to_le_bytes().to_vec();
        bytes.extend_from_slice(b"{}");
        expect_reject(
            &bytes,
            "header length 18446744073709551615 exceeds the safetensors limit of 100000000 bytes (corrupt or not \
             a safetensors file)",
        );
        let mut bytes = 100_000_001u64.to_le_bytes().to_vec();
        bytes.extend_from_slice(b"{}");
        expect_reject(
            &bytes,
            "header length 100000001 exceeds the safetensors limit of 100000000 bytes",
        );
    }

    #[test]
    fn rejects_malformed_headers() {
        let ok_entry = r#""a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}"#;
        let cases = [
            (
                "[1,2]".to_string(),
                "invalid header JSON: invalid type: sequence, expected an object mapping tensor names to their \
                 entries at line 1 column 0",
            ),
            (
                format!("{{{ok_entry}"),
                "invalid header JSON: EOF while parsing an object at line 1 column 53",
            ),
            (
                format!("{{{ok_entry},{ok_entry}}}"),
                "tensor 'a' appears twice in the header",
            ),
            (
                format!("{{{ok_entry}}} x"),
                "invalid header JSON: trailing characters at line 1 column 56",
            ),
            (
                r#"{"a\q":1}"#.to_string(),
                "invalid header JSON: invalid escape at line 1 column 5",
            ),
            (
                r#"{"a":"x"#.to_string(),
                "invalid header JSON: EOF while parsing a string at line 1 column 7",
            ),
            (
                "{\"a\n\":1}".to_string(),
                "invalid header JSON: control character (\\u0000-\\u001F) found while parsing a string at line 2 \
                 column 0",
            ),
            (
                r#"{"\ud800":1}"#.to_string(),
                "invalid header JSON: unexpected end of hex escape at line 1 column 9",
            ),
            (
                r#"{"\udc00":1}"#.to_string(),
                "invalid header JSON: lone leading surrogate in hex escape at line 1 column 8",
            ),
            (
                r#"{"\u12g4":1}"#.to_string(),
                "invalid header JSON: invalid escape at line 1 column 8",
            ),
            (
                r#"{"a":01}"#.to_string(),
                "invalid header JSON: invalid number at line 1 column 7",
            ),
            (
                r#"{"a":-}"#.to_string(),
                "invalid header JSON: invalid number at line 1 column 7",
            ),
            (
                format!("{{\"a\":{{\"shape\":{}1{}}}}}", "[".repeat(200), "]".repeat(200)),
                "invalid header JSON: recursion limit exceeded at line 1 column 140",
            ),
            (
                "[".repeat(100),
                "invalid header JSON: invalid type: sequence, expected an object mapping tensor names to their \
                 entries at line 1 column 0",
            ),
            (
                r#"{"a":1}"#.to_string(),
                "header entry for tensor 'a' is a number, not an object",
            ),
            (
                r#"{"__metadata__":{"k":1}}"#.to_string(),
                "metadata value for 'k' is a number, not a string",
            ),
            (
                r#"{"__metadata__":{"k":"1","k":"2"}}"#.to_string(),
                "metadata key 'k' appears twice in '__metadata__'",
            ),
            (
                r#"{"__metadata__":{},"__metadata__":{}}"#.to_string(),
                "'__metadata__' appears twice in the header",
            ),
            (
                r#"{"__metadata__":[]}"#.to_string(),
                "'__metadata__' is an array, not an object of string pairs",
            ),
            (
                r#"{"a":{"dtype":"F32","shape":[1]}}"#.to_string(),
                "tensor 'a': bad header entry: missing field `data_offsets`",
            ),
            (
                r#"{"a":{"dtype":"F32","dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#.to_string(),
                "tensor 'a': field 'dtype' appears twice",
            ),
            (
                r#"{"a":{"dtype":7,"shape":[1],"data_offsets":[0,4]}}"#.to_string(),
                "tensor 'a': bad header entry: invalid type: integer `7`, expected string or map",
            ),
            (
                r#"{"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}"#.to_string(),
                "tensor 'a': bad header entry: invalid value: integer `-1`, expected usize",
            ),
            (
                r#"{"a":{"dtype":"F32","shape":[1.0],"data_offsets":[0,4]}}"#.to_string(),
                "tensor 'a': bad header entry: invalid type: floating point `1.0`, expected usize",
            ),
            (
                r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0]}}"#.to_string(),
                "tensor 'a': bad header entry: invalid length 1, expected a tuple of size 2",
            ),
            (
                r#"{"a":{"dtype":"F32","shape":[99999999999999999999999],"data_offsets":[0,4]}}"#.to_string(),
                "tensor 'a': bad header entry: invalid type: floating point `1e+23`, expected usize",
            ),
        ];
        for (header, needle) in cases {
            expect_reject(&raw_file(&header, &[0; 4]), needle);
        }
        let mut bad_utf8 = 4u64.to_le_bytes().to_vec();
        bad_utf8.extend_from_slice(&[b'{', 0xff, b'}', b' ']);
        expect_reject(
            &bad_utf8,
            "header is not valid UTF-8: invalid utf-8 sequence of 1 bytes from index 1",
        );
    }

    /// Like the reference crate, fields a tensor entry does not need are ignored, and a `null`
    /// metadata object is no metadata.
    #[test]
    fn accepts_extra_entry_fields_and_null_metadata() {
        let h = r#"{"__metadata__":null,"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":1}}"#;
        let (tensors, metadata) = parse_contents(&raw_file(h, &2.5f32.to_le_bytes())).unwrap();
        assert_eq!(tensors, vec![t("a", &[1], vec![2.5])]);
        assert!(metadata.is_empty());
    }

    /// Escapes, whitespace and key order in a header written by another tool decode as JSON says.
    #[test]
    fn reads_escaped_names_and_metadata() {
        let h = concat!(
            " { \"__metadata__\" : { \"s\" : \"a\\\"b\\\\c\\/d\\b\\f\\n\\r\\t\\u00e9\\u20AC\\ud83d\\ude00\" ,\n",
            "   \"caf\\u00e9\" : \"\" } ,\n",
            "  \"w\\u00e9\\ud83d\\ude00\" : { \"shape\" : [ 1 ] , \"data_offsets\" : [ 0 , 4 ] , \"dtype\" : \"F32\" } }   "
        );
        let (tensors, metadata) = parse_contents(&raw_file(h, &1.5f32.to_le_bytes())).unwrap();
        assert_eq!(tensors, vec![t("wé😀", &[1], vec![1.5])]);
        assert_eq!(metadata, md(&[("café", ""), ("s", "a\"b\\c/d\u{8}\u{c}\n\r\té€😀")]));
    }

    /// The writer escapes strings exactly as the old hand-written escaper did (serde_json's
    /// rules), so checkpoints keep their bytes, and every string reads back unchanged.
    #[test]
    fn escaping_is_stable_and_round_trips() {
        let all_controls: String = (0u32..0x20).filter_map(char::from_u32).collect();
        let controls_escaped = concat!(
            r#""\u0000\u0001\u0002\u0003\u0004\u0005\u0006\u0007\b\t\n\u000b\f\r\u000e\u000f"#,
            r#"\u0010\u0011\u0012\u0013\u0014\u0015\u0016\u0017\u0018\u0019\u001a\u001b\u001c\u001d\u001e\u001f""#
        );
        let cases = [
            ("", r#""""#),
            ("plain", r#""plain""#),
            ("\"\\/", r#""\"\\/""#),
            ("ünï😀\u{7f}", "\"ünï😀\u{7f}\""),
            (all_controls.as_str(), controls_escaped),
        ];
        let dir = unique_dir("st-escape");
        let path = dir.join("e.safetensors");
        for (s, escaped) in cases {
            let mut json = String::new();
            push_json_string(&path, &mut json, s).unwrap();
            assert_eq!(json, escaped);

            let tensors = vec![t(&format!("t{s}"), &[1], vec![1.0])];
            let metadata = md(&[(s, s)]);
            write_safetensors(&path, &tensors, &metadata).unwrap();
            assert_eq!(read_safetensors(&path).unwrap(), (tensors, metadata));
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Empty tensors share their offsets; they come back in the order of the header (the crate
    /// alone would order them by its hash map).
    #[test]
    fn tied_offsets_keep_header_order() {
        let dir = unique_dir("st-ties");
        let path = dir.join("ties.safetensors");
        let names = ["z", "m", "a", "q", "b", "y"];
        let mut tensors: Vec<NamedTensor> = names.iter().map(|n| t(n, &[0], vec![])).collect();
        tensors.push(t("last", &[1], vec![3.0]));
        write_safetensors(&path, &tensors, &[]).unwrap();
        for _ in 0..8 {
            assert_eq!(read_safetensors(&path).unwrap().0, tensors);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn reads_tensors_in_offset_order() {
        let h = concat!(
            r#"{"late":{"dtype":"F32","shape":[1],"data_offsets":[4,8]},"#,
            r#""early":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#
        );
        let mut data = 1.0f32.to_le_bytes().to_vec();
        data.extend_from_slice(&2.0f32.to_le_bytes());
        let (tensors, _) = parse_contents(&raw_file(h, &data)).unwrap();
        assert_eq!(tensors, vec![t("early", &[1], vec![1.0]), t("late", &[1], vec![2.0])]);
    }

    /// Files we write must load in the reference implementation, with identical contents.
    #[test]
    fn reference_implementation_reads_our_files() {
        let dir = unique_dir("st-interop-read");
        let path = dir.join("ours.safetensors");
        let tensors = sample_tensors();
        let metadata = sample_metadata();
        write_safetensors(&path, &tensors, &metadata).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let st = ::safetensors::SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(st.len(), tensors.len());
        for ours in &tensors {
            let view = st.tensor(&ours.name).unwrap();
            assert_eq!(view.dtype(), ::safetensors::Dtype::F32);
            assert_eq!(view.shape(), &ours.shape[..]);
            let expected: Vec<u8> = ours.data.iter().flat_map(|v| v.to_le_bytes()).collect();
            assert_eq!(view.data(), &expected[..]);
        }
        let (_, meta) = ::safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        let expected: HashMap<String, String> = metadata.into_iter().collect();
        assert_eq!(meta.metadata().as_ref(), Some(&expected));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Files the reference implementation writes must load here.
    #[test]
    fn we_read_reference_implementation_files() {
        let tensors = sample_tensors();
        let raw: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
            .iter()
            .map(|t| {
                (
                    t.name.clone(),
                    t.shape.clone(),
                    t.data.iter().flat_map(|v| v.to_le_bytes()).collect(),
                )
            })
            .collect();
        let views: Vec<(String, ::safetensors::tensor::TensorView)> = raw
            .iter()
            .map(|(n, s, d)| {
                let view = ::safetensors::tensor::TensorView::new(::safetensors::Dtype::F32, s.clone(), d).unwrap();
                (n.clone(), view)
            })
            .collect();
        let metadata: HashMap<String, String> = sample_metadata().into_iter().collect();
        let bytes = ::safetensors::tensor::serialize(views, Some(metadata.clone())).unwrap();
        let (read, read_md) = parse_contents(&bytes).unwrap();
        let mut by_name: Vec<NamedTensor> = read;
        by_name.sort_by(|a, b| a.name.cmp(&b.name));
        let mut expected = tensors;
        expected.sort_by(|a, b| a.name.cmp(&b.name));
        assert_eq!(by_name, expected);
        let mut expected_md: Vec<(String, String)> = metadata.into_iter().collect();
        expected_md.sort();
        assert_eq!(read_md, expected_md);
    }

    /// A device, pipe or FIFO is read as a stream, once, and no further than its header
    /// allows: /dev/zero and /dev/urandom are refused from their first bytes, a stream that
    /// goes on past the data its header describes after one byte too many, and memory follows
    /// what the stream holds, not what its header claims. A stream that holds a checkpoint
    /// reads like the file.
    #[test]
    fn streams_are_read_no_further_than_the_header_allows() {
        use crate::data::idx::tests::Endless;
        use crate::fuzz::peak_alloc;
        let path = Path::new("/dev/stdin");
        let read = |stream: Endless| peak_alloc(|| read_contents(std::io::BufReader::new(stream), None, path));
        let problem = |r: Result<Contents>| match r {
            Err(VaeError::Checkpoint { path: p, problem }) => {
                assert_eq!(p, path);
                problem
            }
            other => panic!("expected a Checkpoint error, got {other:?}"),
        };
        // /dev/zero: an empty header.
        let (r, peak) = read(Endless::new(Vec::new(), 0, None));
        assert!(problem(r).contains("invalid header JSON"));
        assert!(peak < 64 << 10, "allocated {peak} bytes");
        // /dev/urandom (here 0xff forever): a header length beyond the format's limit.
        let (r, peak) = read(Endless::new(Vec::new(), 0xff, None));
        assert!(problem(r).contains("exceeds the safetensors limit"));
        assert!(peak < 64 << 10, "allocated {peak} bytes");
        // A valid file, then more forever: refused one byte past its data.
        let dir = unique_dir("st-stream");
        let file = dir.join("m.safetensors");
        write_safetensors(&file, &sample_tensors(), &sample_metadata()).unwrap();
        let bytes = std::fs::read(&file).unwrap();
        let (r, peak) = read(Endless::new(bytes.clone(), 0, None));
        let p = problem(r);
        assert!(
            p.contains("goes on past the") && p.contains("bytes of tensor data"),
            "{p}"
        );
        assert!(peak < 64 * bytes.len() + (64 << 10), "allocated {peak} bytes");
        // A header claiming more than 16 GiB of data on a stream: refused from the header.
        let huge = raw_file(
            r#"{"a":{"dtype":"F32","shape":[4294967297],"data_offsets":[0,17179869188]}}"#,
            &[],
        );
        let (r, _) = read(Endless::new(huge, 0, None));
        assert!(problem(r).contains("more than the 17179869184 bytes"));
        // A header claiming 1 GiB, a stream ending after 1,000 bytes: truncated, and the
        // memory is that of the bytes that came.
        let big = raw_file(
            r#"{"a":{"dtype":"F32","shape":[268435456],"data_offsets":[0,1073741824]}}"#,
            &[],
        );
        let (r, peak) = read(Endless::new(big, 0, Some(1000)));
        assert!(problem(r).contains("the data section has only 1000 bytes"));
        assert!(peak < 4 << 20, "allocated {peak} bytes");
        // The checkpoint as a stream reads as the file does, even a byte at a time.
        let exact = Endless::new(bytes.clone(), 0, Some(0));
        assert_eq!(read(exact).0.unwrap(), read_safetensors(&file).unwrap());
        let slow = std::io::BufReader::with_capacity(1, Endless::new(bytes, 0, Some(0)));
        assert_eq!(
            read_contents(slow, None, path).unwrap(),
            read_safetensors(&file).unwrap()
        );
    }

    /// A checkpoint through a FIFO (as `/dev/stdin` from a pipe) reads, once, as a stream; a
    /// FIFO fed forever after it is refused one byte past the checkpoint's data.
    #[cfg(unix)]
    #[test]
    fn a_fifo_reads_and_an_endless_one_is_refused() {
        let dir = unique_dir("st-fifo");
        let file = dir.join("m.safetensors");
        write_safetensors(&file, &sample_tensors(), &sample_metadata()).unwrap();
        let bytes = std::fs::read(&file).unwrap();
        for endless in [false, true] {
            let fifo = dir.join(format!("fifo{endless}"));
            let status = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
            assert!(status.success());
            let (contents, at) = (bytes.clone(), fifo.clone());
            let writer = std::thread::spawn(move || {
                let mut w = std::fs::OpenOptions::new().write(true).open(at).unwrap();
                // Until the reader closes its end (EPIPE; std ignores SIGPIPE).
                let _ = w.write_all(&contents);
                while endless && w.write_all(&[0; 4096]).is_ok() {}
            });
            let read = read_safetensors(&fifo);
            writer.join().unwrap();
            if endless {
                let e = read.unwrap_err().to_string();
                assert!(e.contains("goes on past the"), "{e}");
            } else {
                assert_eq!(read.unwrap(), read_safetensors(&file).unwrap());
            }
        }
    }
}
