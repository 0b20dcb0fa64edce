//! A small, dependency-free reader and writer of the safetensors format, F32 tensors only.
//!
//! Layout: an 8-byte little-endian header length `N`, `N` bytes of JSON header (padded with
//! spaces to a multiple of 8), then the raw little-endian tensor data. The header maps each
//! tensor name to `{"dtype","shape","data_offsets":[begin,end]}` (offsets relative to the start
//! of the data section) and may hold a `"__metadata__"` object of string pairs.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

use crate::error::{Result, VaeError};

/// The key under which safetensors stores free-form string metadata.
const METADATA_KEY: &str = "__metadata__";
/// Deeper nesting than this cannot be a safetensors header; the limit keeps a hostile file from
/// overflowing the stack of the recursive parser.
const MAX_JSON_DEPTH: usize = 64;

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

/// Appends `s` as a JSON string literal, escaping what JSON requires so any metadata survives.
fn push_json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
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
            push_json_string(&mut header, k);
            header.push(':');
            push_json_string(&mut header, v);
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
        push_json_string(&mut header, &t.name);
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
    Ok(header)
}

/// Writes `tensors` (in the given order) and string `metadata` as a safetensors file.
///
/// The write is atomic — a temp file `.<name>.tmp` beside `path` is synced and renamed over it —
/// so an interrupted save never leaves a torn checkpoint. Fails with [`VaeError::Checkpoint`]
/// if a shape does not match its data, or names or metadata keys repeat.
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
/// not depend on the header's key order. Anything malformed — a non-F32 dtype, offsets that are
/// out of range, overlapping, leave gaps or disagree with the shape, a truncated file — is a
/// [`VaeError::Checkpoint`] naming the problem.
#[allow(clippy::type_complexity)] // the signature is the module's documented API
pub fn read_safetensors(path: &Path) -> Result<(Vec<NamedTensor>, Vec<(String, String)>)> {
    let bytes = std::fs::read(path).map_err(|e| VaeError::io(path, e))?;
    parse_safetensors(&bytes).map_err(|problem| checkpoint_err(path, problem))
}

/// A tensor's header entry before its data is decoded.
struct Entry {
    name: String,
    shape: Vec<usize>,
    begin: usize,
    end: usize,
}

/// Tensors and metadata as [`read_safetensors`] returns them.
type Contents = (Vec<NamedTensor>, Vec<(String, String)>);

fn parse_safetensors(bytes: &[u8]) -> std::result::Result<Contents, String> {
    if bytes.len() < 8 {
        return Err(format!(
            "file is {} bytes long, too short for the 8-byte header length (truncated file?)",
            bytes.len()
        ));
    }
    let mut len_bytes = [0u8; 8];
    len_bytes.copy_from_slice(&bytes[..8]);
    let header_len = u64::from_le_bytes(len_bytes);
    let available = bytes.len() - 8;
    let header_len = match usize::try_from(header_len) {
        Ok(n) if n <= available => n,
        _ => {
            return Err(format!(
                "header length {header_len} is larger than the {available} bytes that follow \
                 it (truncated or not a safetensors file)"
            ))
        }
    };
    let header =
        std::str::from_utf8(&bytes[8..8 + header_len]).map_err(|e| format!("header is not valid UTF-8: {e}"))?;
    let data = &bytes[8 + header_len..];

    let root = Parser::parse_document(header)?;
    let Json::Object(fields) = root else {
        return Err("header JSON is not an object".to_string());
    };

    let mut metadata = Vec::new();
    let mut entries = Vec::new();
    for (key, value) in fields {
        if key == METADATA_KEY {
            let Json::Object(pairs) = value else {
                return Err(format!("'{METADATA_KEY}' is not an object"));
            };
            for (k, v) in pairs {
                match v {
                    Json::Str(s) => metadata.push((k, s)),
                    _ => return Err(format!("metadata value for '{k}' is not a string")),
                }
            }
        } else {
            entries.push(parse_entry(key, value)?);
        }
    }

    for e in &entries {
        if e.begin > e.end {
            return Err(format!(
                "tensor '{}': data_offsets [{}, {}] end before they begin",
                e.name, e.begin, e.end
            ));
        }
        if e.end > data.len() {
            return Err(format!(
                "tensor '{}': data_offsets [{}, {}] are out of range; the data section has only \
                 {} bytes (truncated file?)",
                e.name,
                e.begin,
                e.end,
                data.len()
            ));
        }
        let expected = element_count(&e.shape)
            .and_then(|n| n.checked_mul(4))
            .ok_or_else(|| format!("tensor '{}': shape {:?} overflows", e.name, e.shape))?;
        if e.end - e.begin != expected {
            return Err(format!(
                "tensor '{}': data_offsets [{}, {}] span {} bytes but shape {:?} of F32 needs {}",
                e.name,
                e.begin,
                e.end,
                e.end - e.begin,
                e.shape,
                expected
            ));
        }
    }

    entries.sort_by_key(|e| (e.begin, e.end));
    let mut cursor = 0usize;
    let mut previous: Option<&str> = None;
    for e in &entries {
        if e.begin < cursor {
            return Err(format!(
                "tensor '{}' at data_offsets [{}, {}] overlaps tensor '{}'",
                e.name,
                e.begin,
                e.end,
                previous.unwrap_or("?")
            ));
        }
        if e.begin > cursor {
            return Err(format!(
                "gap of {} unused bytes in the data section before tensor '{}'",
                e.begin - cursor,
                e.name
            ));
        }
        cursor = e.end;
        previous = Some(&e.name);
    }
    if cursor != data.len() {
        return Err(format!(
            "{} trailing bytes after the last tensor's data",
            data.len() - cursor
        ));
    }

    let tensors = entries
        .into_iter()
        .map(|e| NamedTensor {
            data: data[e.begin..e.end]
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            name: e.name,
            shape: e.shape,
        })
        .collect();
    metadata.sort_by(|a, b| a.0.cmp(&b.0));
    Ok((tensors, metadata))
}

fn parse_entry(name: String, value: Json) -> std::result::Result<Entry, String> {
    let Json::Object(fields) = value else {
        return Err(format!("header entry for tensor '{name}' is not an object"));
    };
    let mut dtype = None;
    let mut shape = None;
    let mut offsets = None;
    for (key, value) in fields {
        match key.as_str() {
            "dtype" => match value {
                Json::Str(s) => dtype = Some(s),
                _ => return Err(format!("tensor '{name}': dtype is not a string")),
            },
            "shape" => shape = Some(integer_array(&name, "shape", value)?),
            "data_offsets" => offsets = Some(integer_array(&name, "data_offsets", value)?),
            other => return Err(format!("tensor '{name}': unknown header field '{other}'")),
        }
    }
    let dtype = dtype.ok_or_else(|| format!("tensor '{name}': missing dtype"))?;
    if dtype != "F32" {
        return Err(format!("tensor '{name}' has dtype {dtype}; only F32 is supported"));
    }
    let shape = shape.ok_or_else(|| format!("tensor '{name}': missing shape"))?;
    let offsets = offsets.ok_or_else(|| format!("tensor '{name}': missing data_offsets"))?;
    let [begin, end] = offsets[..] else {
        return Err(format!(
            "tensor '{name}': data_offsets has {} entries, expected 2",
            offsets.len()
        ));
    };
    Ok(Entry {
        name,
        shape,
        begin,
        end,
    })
}

fn integer_array(name: &str, field: &str, value: Json) -> std::result::Result<Vec<usize>, String> {
    let Json::Array(items) = value else {
        return Err(format!("tensor '{name}': {field} is not an array"));
    };
    items
        .iter()
        .map(|item| match item {
            Json::Number(lexeme) if lexeme.bytes().all(|b| b.is_ascii_digit()) => lexeme
                .parse::<usize>()
                .map_err(|_| format!("tensor '{name}': {field} value {lexeme} is too large")),
            Json::Number(lexeme) => Err(format!(
                "tensor '{name}': {field} value {lexeme} is not a non-negative integer"
            )),
            _ => Err(format!("tensor '{name}': {field} holds a non-number")),
        })
        .collect()
}

/// A parsed JSON value. Objects keep their key order; numbers keep their text so integers of
/// any size are judged exactly.
#[derive(Debug, PartialEq)]
enum Json {
    Null,
    Bool(bool),
    Number(String),
    Str(String),
    Array(Vec<Json>),
    Object(Vec<(String, Json)>),
}

/// A recursive-descent parser for the subset of JSON safetensors headers use — which, apart
/// from rejecting duplicate keys and limiting nesting depth, is all of JSON.
struct Parser<'a> {
    text: &'a str,
    pos: usize,
    depth: usize,
}

impl<'a> Parser<'a> {
    /// Parses one value followed only by whitespace (safetensors pads headers with spaces).
    fn parse_document(text: &'a str) -> std::result::Result<Json, String> {
        let mut p = Parser { text, pos: 0, depth: 0 };
        let value = p.value()?;
        p.skip_ws();
        if p.pos != text.len() {
            return Err(p.error("unexpected data after the header object"));
        }
        Ok(value)
    }

    fn error(&self, what: &str) -> String {
        format!("invalid header JSON at byte {}: {what}", self.pos)
    }

    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    fn expect(&mut self, byte: u8) -> std::result::Result<(), String> {
        if self.peek() == Some(byte) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.error(&format!("expected '{}'", byte as char)))
        }
    }

    fn literal(&mut self, word: &str, value: Json) -> std::result::Result<Json, String> {
        if self.text[self.pos..].starts_with(word) {
            self.pos += word.len();
            Ok(value)
        } else {
            Err(self.error("unexpected character"))
        }
    }

    fn value(&mut self) -> std::result::Result<Json, String> {
        self.skip_ws();
        match self.peek() {
            None => Err(self.error("unexpected end of header")),
            Some(b'{') => self.nested(Self::object),
            Some(b'[') => self.nested(Self::array),
            Some(b'"') => self.string().map(Json::Str),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(b't') => self.literal("true", Json::Bool(true)),
            Some(b'f') => self.literal("false", Json::Bool(false)),
            Some(b'n') => self.literal("null", Json::Null),
            Some(_) => Err(self.error("unexpected character")),
        }
    }

    fn nested(
        &mut self,
        inner: fn(&mut Self) -> std::result::Result<Json, String>,
    ) -> std::result::Result<Json, String> {
        if self.depth >= MAX_JSON_DEPTH {
            return Err(self.error("nesting too deep"));
        }
        self.depth += 1;
        let result = inner(self);
        self.depth -= 1;
        result
    }

    fn object(&mut self) -> std::result::Result<Json, String> {
        self.expect(b'{')?;
        let mut fields: Vec<(String, Json)> = Vec::new();
        let mut keys = HashSet::new();
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(Json::Object(fields));
        }
        loop {
            self.skip_ws();
            if self.peek() != Some(b'"') {
                return Err(self.error("expected a string key"));
            }
            let key_pos = self.pos;
            let key = self.string()?;
            if !keys.insert(key.clone()) {
                self.pos = key_pos;
                return Err(self.error(&format!("duplicate key '{key}'")));
            }
            self.skip_ws();
            self.expect(b':')?;
            let value = self.value()?;
            fields.push((key, value));
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(Json::Object(fields));
                }
                _ => return Err(self.error("expected ',' or '}'")),
            }
        }
    }

    fn array(&mut self) -> std::result::Result<Json, String> {
        self.expect(b'[')?;
        let mut items = Vec::new();
        self.skip_ws();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(Json::Array(items));
        }
        loop {
            items.push(self.value()?);
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(Json::Array(items));
                }
                _ => return Err(self.error("expected ',' or ']'")),
            }
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.pos;
        while let Some(b'0'..=b'9') = self.peek() {
            self.pos += 1;
        }
        self.pos - start
    }

    fn number(&mut self) -> std::result::Result<Json, String> {
        let start = self.pos;
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return Err(self.error("malformed number")),
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            if self.digits() == 0 {
                return Err(self.error("malformed number"));
            }
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.pos += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            if self.digits() == 0 {
                return Err(self.error("malformed number"));
            }
        }
        Ok(Json::Number(self.text[start..self.pos].to_string()))
    }

    fn hex4(&mut self) -> std::result::Result<u32, String> {
        let digits = self
            .text
            .get(self.pos..self.pos + 4)
            .filter(|d| d.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| self.error("\\u must be followed by 4 hex digits"))?;
        let code = u32::from_str_radix(digits, 16).map_err(|_| self.error("bad \\u escape"))?;
        self.pos += 4;
        Ok(code)
    }

    fn string(&mut self) -> std::result::Result<String, String> {
        self.expect(b'"')?;
        let mut out = String::new();
        loop {
            // Copy the run of ordinary characters in one go; the run ends at an ASCII byte, so
            // slicing here always falls on a UTF-8 character boundary.
            let run_start = self.pos;
            while let Some(b) = self.peek() {
                if b == b'"' || b == b'\\' || b < 0x20 {
                    break;
                }
                self.pos += 1;
            }
            out.push_str(&self.text[run_start..self.pos]);
            match self.peek() {
                None => return Err(self.error("unterminated string")),
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(out);
                }
                Some(b'\\') => {
                    self.pos += 1;
                    let escape = self.peek().ok_or_else(|| self.error("unterminated string"))?;
                    self.pos += 1;
                    match escape {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b'b' => out.push('\u{8}'),
                        b'f' => out.push('\u{c}'),
                        b'n' => out.push('\n'),
                        b'r' => out.push('\r'),
                        b't' => out.push('\t'),
                        b'u' => out.push(self.unicode_escape()?),
                        _ => {
                            self.pos -= 1;
                            return Err(self.error("invalid escape sequence"));
                        }
                    }
                }
                Some(_) => return Err(self.error("unescaped control character in string")),
            }
        }
    }

    /// Decodes the `XXXX` after `\u`, joining a UTF-16 surrogate pair into one character.
    fn unicode_escape(&mut self) -> std::result::Result<char, String> {
        let first = self.hex4()?;
        let code = match first {
            0xD800..=0xDBFF => {
                if !self.text[self.pos..].starts_with("\\u") {
                    return Err(self.error("high surrogate not followed by a low surrogate"));
                }
                self.pos += 2;
                let second = self.hex4()?;
                if !(0xDC00..=0xDFFF).contains(&second) {
                    return Err(self.error("high surrogate not followed by a low surrogate"));
                }
                0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00)
            }
            0xDC00..=0xDFFF => return Err(self.error("unpaired low surrogate")),
            c => c,
        };
        char::from_u32(code).ok_or_else(|| self.error("invalid \\u escape"))
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
    fn rejects_non_f32_dtype() {
        let h = r#"{"x":{"dtype":"F16","shape":[2],"data_offsets":[0,4]}}"#;
        expect_reject(&raw_file(h, &[0; 4]), "dtype F16; only F32");
    }

    #[test]
    fn rejects_offsets_out_of_range() {
        let h = r#"{"x":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#;
        expect_reject(&raw_file(h, &[0; 8]), "out of range");
    }

    #[test]
    fn rejects_offsets_disagreeing_with_shape() {
        let h = r#"{"x":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#;
        expect_reject(&raw_file(h, &[0; 8]), "span 8 bytes but shape [3] of F32 needs 12");
    }

    #[test]
    fn rejects_reversed_offsets() {
        let h = r#"{"x":{"dtype":"F32","shape":[0],"data_offsets":[8,4]}}"#;
        expect_reject(&raw_file(h, &[0; 8]), "end before they begin");
    }

    #[test]
    fn rejects_overlapping_tensors() {
        let h = concat!(
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"#,
            r#""b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#
        );
        expect_reject(&raw_file(h, &[0; 12]), "overlaps tensor 'a'");
    }

    #[test]
    fn rejects_gaps_and_trailing_bytes() {
        let h = concat!(
            r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"#,
            r#""b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}"#
        );
        expect_reject(&raw_file(h, &[0; 12]), "gap of 4 unused bytes");
        let h = r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
        expect_reject(&raw_file(h, &[0; 6]), "2 trailing bytes");
    }

    #[test]
    fn rejects_truncated_files() {
        let dir = unique_dir("st-truncated");
        let path = dir.join("good.safetensors");
        write_safetensors(&path, &sample_tensors(), &sample_metadata()).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();

        expect_reject(&bytes[..bytes.len() - 1], "out of range");
        expect_reject(&bytes[..20], "larger than the 12 bytes");
        expect_reject(&bytes[..5], "too short");
        expect_reject(&[], "too short");
    }

    #[test]
    fn rejects_header_length_beyond_file() {
        let mut bytes = 1000u64.to_le_bytes().to_vec();
        bytes.extend_from_slice(b"{}      ");
        expect_reject(&bytes, "header length 1000 is larger than the 8 bytes");
        let mut bytes = u64::MAX.to_le_bytes().to_vec();
        bytes.extend_from_slice(b"{}");
        expect_reject(&bytes, "header length");
    }

    #[test]
    fn rejects_malformed_headers() {
        let ok_entry = r#""a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}"#;
        let cases = [
            ("[1,2]".to_string(), "not an object"),
            (format!("{{{ok_entry}"), "expected ',' or '}'"),
            (format!("{{{ok_entry},{ok_entry}}}"), "duplicate key 'a'"),
            (format!("{{{ok_entry}}} x"), "unexpected data after"),
            (r#"{"a\q":1}"#.to_string(), "invalid escape"),
            (r#"{"a":"x"#.to_string(), "unterminated string"),
            ("{\"a\n\":1}".to_string(), "unescaped control"),
            (r#"{"\ud800":1}"#.to_string(), "high surrogate"),
            (r#"{"\udc00":1}"#.to_string(), "unpaired low surrogate"),
            (r#"{"\u12g4":1}"#.to_string(), "4 hex digits"),
            (r#"{"a":01}"#.to_string(), "expected ',' or '}'"),
            (r#"{"a":-}"#.to_string(), "malformed number"),
            (r#"{"__metadata__":{"k":1}}"#.to_string(), "metadata value for 'k'"),
            (r#"{"__metadata__":[]}"#.to_string(), "'__metadata__' is not an object"),
            (
                r#"{"a":{"dtype":"F32","shape":[1]}}"#.to_string(),
                "missing data_offsets",
            ),
            (
                r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":1}}"#.to_string(),
                "unknown header field 'x'",
            ),
            (
                r#"{"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}"#.to_string(),
                "not a non-negative integer",
            ),
            (
                r#"{"a":{"dtype":"F32","shape":[1.0],"data_offsets":[0,4]}}"#.to_string(),
                "not a non-negative integer",
            ),
            (
                r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0]}}"#.to_string(),
                "data_offsets has 1 entries",
            ),
            (
                r#"{"a":{"dtype":"F32","shape":[99999999999999999999999],"data_offsets":[0,4]}}"#.to_string(),
                "too large",
            ),
            ("[".repeat(100), "nesting too deep"),
        ];
        for (header, needle) in cases {
            expect_reject(&raw_file(&header, &[0; 4]), needle);
        }
        let mut bad_utf8 = 4u64.to_le_bytes().to_vec();
        bad_utf8.extend_from_slice(&[b'{', 0xff, b'}', b' ']);
        expect_reject(&bad_utf8, "not valid UTF-8");
    }

    #[test]
    fn json_parser_handles_escapes_and_values() {
        let doc = r#" { "s" : "a\"b\\c\/d\b\f\n\r\t\u00e9\u20AC\ud83d\ude00" ,
            "n" : [0, -1.5e+3, 2E-2, 10] , "l" : [true, false, null, {}, []] } "#;
        let parsed = Parser::parse_document(doc).unwrap();
        let expected = Json::Object(vec![
            ("s".to_string(), Json::Str("a\"b\\c/d\u{8}\u{c}\n\r\té€😀".to_string())),
            (
                "n".to_string(),
                Json::Array(vec![
                    Json::Number("0".into()),
                    Json::Number("-1.5e+3".into()),
                    Json::Number("2E-2".into()),
                    Json::Number("10".into()),
                ]),
            ),
            (
                "l".to_string(),
                Json::Array(vec![
                    Json::Bool(true),
                    Json::Bool(false),
                    Json::Null,
                    Json::Object(vec![]),
                    Json::Array(vec![]),
                ]),
            ),
        ]);
        assert_eq!(parsed, expected);
    }

    #[test]
    fn escaping_round_trips_through_parser() {
        let all_controls: String = (0u32..0x20).filter_map(char::from_u32).collect();
        for s in ["", "plain", "\"\\/", "ünï😀", all_controls.as_str()] {
            let mut json = String::new();
            push_json_string(&mut json, s);
            assert_eq!(Parser::parse_document(&json).unwrap(), Json::Str(s.to_string()));
        }
    }

    #[test]
    fn reads_tensors_in_offset_order() {
        let h = concat!(
            r#"{"late":{"dtype":"F32","shape":[1],"data_offsets":[4,8]},"#,
            r#""early":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#
        );
        let mut data = 1.0f32.to_le_bytes().to_vec();
        data.extend_from_slice(&2.0f32.to_le_bytes());
        let (tensors, _) = parse_safetensors(&raw_file(h, &data)).unwrap();
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
        let (read, read_md) = parse_safetensors(&bytes).unwrap();
        let mut by_name: Vec<NamedTensor> = read;
        by_name.sort_by(|a, b| a.name.cmp(&b.name));
        let mut expected = tensors;
        expected.sort_by(|a, b| a.name.cmp(&b.name));
        assert_eq!(by_name, expected);
        let mut expected_md: Vec<(String, String)> = metadata.into_iter().collect();
        expected_md.sort();
        assert_eq!(read_md, expected_md);
    }
}
