//! NumPy arrays as image sets: `.npy` files (read with `npyz`) and `.npz` archives of them
//! (their members read through `zip`), uint8 or float32 images shaped `[N, H, W]`,
//! `[N, H, W, C]` or `[N, C, H, W]`, integer labels (one per image). Images come out as they
//! are stored, bytes or f32 ([`Pixels`]), each image H·W·C values with the channels
//! interleaved (the models' NHWC); float32 images must lie in [0, 1] and are kept as f32 (the
//! device gathers them as they are); four channels are RGBA, composited on black to RGB.
//!
//! Every size is read from the header and checked against the file before the data is read,
//! so a header that promises more than the file holds is refused, not allocated.

use std::io::{Read, Seek};
use std::path::Path;

use npyz::{DType, NpyFile, Order, TypeChar};

use crate::data::set::Pixels;
use crate::error::{Result, VaeError};

/// Where the channels of a 4-D image array are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArrayLayout {
    /// [N, H, W, C].
    Nhwc,
    /// [N, C, H, W].
    Nchw,
}

impl ArrayLayout {
    /// Parses `nhwc` or `nchw`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "nhwc" => Ok(ArrayLayout::Nhwc),
            "nchw" => Ok(ArrayLayout::Nchw),
            _ => Err(VaeError::Config(format!(
                "unknown array layout {s:?}; expected nhwc or nchw"
            ))),
        }
    }
}

/// Images read from arrays, with what was done to them on the way.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageArrays {
    /// `count` images of H·W·C values (bytes or f32 in [0, 1]), row-major, channels
    /// interleaved.
    pub images: Pixels,
    /// Channels, height, width.
    pub shape: [usize; 3],
    /// Number of images.
    pub count: usize,
    /// One class label per image, when the source has them.
    pub labels: Option<Vec<u32>>,
    /// What the reader did beyond copying values (floats kept as f32, alpha compositing), for
    /// the caller's summary line.
    pub notes: Vec<String>,
}

impl ImageArrays {
    /// Values per image, C·H·W.
    pub fn image_len(&self) -> usize {
        self.shape.iter().product()
    }

    /// The images (and labels) at `indices`, in that order.
    pub fn select(&self, indices: &[usize]) -> ImageArrays {
        let d = self.image_len();
        ImageArrays {
            images: self.images.select(d, indices),
            shape: self.shape,
            count: indices.len(),
            labels: self.labels.as_ref().map(|l| indices.iter().map(|&i| l[i]).collect()),
            notes: self.notes.clone(),
        }
    }
}

/// The names of an `.npz` archive's arrays.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NpzNames {
    /// Training images (`x_train`).
    pub x_train: String,
    /// Training labels (`y_train`), optional in the archive.
    pub y_train: String,
    /// Test images (`x_test`).
    pub x_test: String,
    /// Test labels (`y_test`), optional in the archive.
    pub y_test: String,
}

impl Default for NpzNames {
    fn default() -> Self {
        NpzNames {
            x_train: "x_train".into(),
            y_train: "y_train".into(),
            x_test: "x_test".into(),
            y_test: "y_test".into(),
        }
    }
}

/// Most images one array may hold, and most values per image: sizes the kernels index with
/// 32-bit integers.
const MAX_VALUES: u64 = 1 << 31;

fn type_str(path: &Path, what: &str, dtype: &DType) -> Result<npyz::TypeStr> {
    match dtype {
        DType::Plain(t) => Ok(t.clone()),
        _ => Err(VaeError::format(
            path,
            format!(
                "{what}: a structured or nested dtype ({}); expected plain numbers",
                dtype.descr()
            ),
        )),
    }
}

/// Refuses a header whose data would exceed `available` bytes (the file's or the member's).
fn check_size(path: &Path, what: &str, shape: &[u64], item: usize, available: u64) -> Result<u64> {
    let count = shape
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .filter(|&n| n <= MAX_VALUES * 64)
        .ok_or_else(|| VaeError::format(path, format!("{what}: shape {shape:?} is too large")))?;
    let bytes = count.saturating_mul(item as u64);
    if bytes > available {
        return Err(VaeError::format(
            path,
            format!("{what}: shape {shape:?} needs {bytes} bytes of data, the file holds {available}"),
        ));
    }
    Ok(count)
}

/// An image array's values as bytes and its shape [N, C, H, W] read from its header.
fn images_from<R: Read>(
    path: &Path,
    what: &str,
    npy: NpyFile<R>,
    available: u64,
    layout: Option<ArrayLayout>,
) -> Result<ImageArrays> {
    let shape: Vec<u64> = npy.shape().to_vec();
    if npy.order() == Order::Fortran {
        return Err(VaeError::format(
            path,
            format!("{what}: Fortran (column-major) order; save it with np.ascontiguousarray first"),
        ));
    }
    let t = type_str(path, what, &npy.dtype())?;
    let dims: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
    // [N, H, W] is one channel; a 4-D array's channels are where a count of 1, 3 or 4 is.
    let (n, c, h, w, layout) = match dims[..] {
        [n, h, w] => (n, 1, h, w, ArrayLayout::Nhwc),
        [n, a, b, last] => {
            let chan = |v: usize| matches!(v, 1 | 3 | 4);
            let picked = match (layout, chan(a), chan(last)) {
                (Some(l), _, _) => l,
                (None, false, true) => ArrayLayout::Nhwc,
                (None, true, false) => ArrayLayout::Nchw,
                (None, true, true) => {
                    return Err(VaeError::format(
                        path,
                        format!(
                            "{what}: shape {dims:?} could be [N, H, W, C] or [N, C, H, W]; say which with \
                             --layout nhwc or --layout nchw"
                        ),
                    ))
                }
                (None, false, false) => {
                    return Err(VaeError::format(
                        path,
                        format!(
                            "{what}: shape {dims:?} has no axis of 1, 3 or 4 channels after N (expected [N, H, W], \
                             [N, H, W, C] or [N, C, H, W])"
                        ),
                    ))
                }
            };
            match picked {
                ArrayLayout::Nhwc => (n, last, a, b, picked),
                ArrayLayout::Nchw => (n, a, b, last, picked),
            }
        }
        _ => {
            return Err(VaeError::format(
                path,
                format!("{what}: shape {dims:?}; expected [N, H, W], [N, H, W, C] or [N, C, H, W]"),
            ))
        }
    };
    if !matches!(c, 1 | 3 | 4) {
        return Err(VaeError::format(
            path,
            format!("{what}: {c} channels; expected 1 (grey), 3 (RGB) or 4 (RGBA)"),
        ));
    }
    if n == 0 || h == 0 || w == 0 {
        return Err(VaeError::format(path, format!("{what}: shape {dims:?} holds no image")));
    }
    if (c * h * w) as u64 > MAX_VALUES {
        return Err(VaeError::format(
            path,
            format!("{what}: images of {c}×{h}×{w} values are too large"),
        ));
    }
    let mut notes = Vec::new();
    let values = match (t.type_char(), t.size_field()) {
        (TypeChar::Uint, 1) => {
            check_size(path, what, &shape, 1, available)?;
            Pixels::U8(
                npy.into_vec::<u8>()
                    .map_err(|e| VaeError::format(path, format!("{what}: {e}")))?,
            )
        }
        (TypeChar::Float, 4) => {
            check_size(path, what, &shape, 4, available)?;
            let v = npy
                .into_vec::<f32>()
                .map_err(|e| VaeError::format(path, format!("{what}: {e}")))?;
            if let Some((i, x)) = v.iter().enumerate().find(|(_, x)| !(0.0..=1.0).contains(*x)) {
                return Err(VaeError::format(
                    path,
                    format!("{what}: float32 images must lie in [0, 1]; value {i} is {x} (scale it to [0, 1] first)"),
                ));
            }
            notes.push("float32 kept as f32 (4 bytes a value on the device)".to_string());
            Pixels::F32(v)
        }
        _ => {
            return Err(VaeError::format(
                path,
                format!("{what}: dtype {}; expected uint8 or float32 images", t),
            ))
        }
    };
    // Into [N, H, W, C] with the channels interleaved.
    let plane = h * w;
    fn interleave<T: Copy + Default>(values: Vec<T>, c: usize, plane: usize) -> Vec<T> {
        let mut out = vec![T::default(); values.len()];
        for (src, dst) in values.chunks_exact(c * plane).zip(out.chunks_exact_mut(c * plane)) {
            for p in 0..plane {
                for ch in 0..c {
                    dst[p * c + ch] = src[ch * plane + p];
                }
            }
        }
        out
    }
    let mut images = match (layout, values) {
        (ArrayLayout::Nhwc, v) => v,
        (ArrayLayout::Nchw, Pixels::U8(v)) => Pixels::U8(interleave(v, c, plane)),
        (ArrayLayout::Nchw, Pixels::F32(v)) => Pixels::F32(interleave(v, c, plane)),
    };
    let mut channels = c;
    if c == 4 {
        // RGBA composited on black: each colour times alpha (bytes: · alpha / 255, rounded).
        images = match images {
            Pixels::U8(v) => Pixels::U8(
                v.chunks_exact(4)
                    .flat_map(|px| {
                        let a = px[3] as u32;
                        [0, 1, 2].map(|k| ((px[k] as u32 * a + 127) / 255) as u8)
                    })
                    .collect(),
            ),
            Pixels::F32(v) => Pixels::F32(
                v.chunks_exact(4)
                    .flat_map(|px| [0, 1, 2].map(|k| px[k] * px[3]))
                    .collect(),
            ),
        };
        channels = 3;
        notes.push("RGBA composited on black".to_string());
    }
    Ok(ImageArrays {
        images,
        shape: [channels, h, w],
        count: n,
        labels: None,
        notes,
    })
}

/// An integer label array of `n` labels, each ≥ 0.
fn labels_from<R: Read>(path: &Path, what: &str, npy: NpyFile<R>, available: u64, n: usize) -> Result<Vec<u32>> {
    let shape: Vec<u64> = npy.shape().to_vec();
    let flat = match shape[..] {
        [m] => m,
        [m, 1] => m,
        _ => {
            return Err(VaeError::format(
                path,
                format!("{what}: shape {shape:?}; labels are one integer per image, [N]"),
            ))
        }
    };
    if flat as usize != n {
        return Err(VaeError::format(
            path,
            format!("{what}: {flat} labels for {n} images; one label per image"),
        ));
    }
    let t = type_str(path, what, &npy.dtype())?;
    let bad = |e: std::io::Error| VaeError::format(path, format!("{what}: {e}"));
    let size = t.size_field() as usize;
    check_size(path, what, &shape, size.max(1), available)?;
    let values: Vec<i128> = match (t.type_char(), size) {
        (TypeChar::Uint, 1) => npy.into_vec::<u8>().map_err(bad)?.into_iter().map(i128::from).collect(),
        (TypeChar::Uint, 2) => npy
            .into_vec::<u16>()
            .map_err(bad)?
            .into_iter()
            .map(i128::from)
            .collect(),
        (TypeChar::Uint, 4) => npy
            .into_vec::<u32>()
            .map_err(bad)?
            .into_iter()
            .map(i128::from)
            .collect(),
        (TypeChar::Uint, 8) => npy
            .into_vec::<u64>()
            .map_err(bad)?
            .into_iter()
            .map(i128::from)
            .collect(),
        (TypeChar::Int, 1) => npy.into_vec::<i8>().map_err(bad)?.into_iter().map(i128::from).collect(),
        (TypeChar::Int, 2) => npy
            .into_vec::<i16>()
            .map_err(bad)?
            .into_iter()
            .map(i128::from)
            .collect(),
        (TypeChar::Int, 4) => npy
            .into_vec::<i32>()
            .map_err(bad)?
            .into_iter()
            .map(i128::from)
            .collect(),
        (TypeChar::Int, 8) => npy
            .into_vec::<i64>()
            .map_err(bad)?
            .into_iter()
            .map(i128::from)
            .collect(),
        _ => {
            return Err(VaeError::format(
                path,
                format!("{what}: dtype {t}; labels must be integers"),
            ))
        }
    };
    values
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            u32::try_from(v).map_err(|_| {
                VaeError::format(
                    path,
                    format!("{what}: label {i} is {v}; labels are class indices from 0"),
                )
            })
        })
        .collect()
}

fn open(path: &Path) -> Result<(std::fs::File, u64)> {
    let f = std::fs::File::open(path).map_err(|e| VaeError::io(path, e))?;
    let meta = f.metadata().map_err(|e| VaeError::io(path, e))?;
    if !meta.is_file() {
        return Err(VaeError::format(path, "not a regular file"));
    }
    Ok((f, meta.len()))
}

fn npy_file<R: Read>(path: &Path, what: &str, r: R) -> Result<NpyFile<R>> {
    NpyFile::new(r).map_err(|e| VaeError::format(path, format!("{what}: not a NumPy .npy array ({e})")))
}

/// The images of a `.npy` file (see the module's documentation); `layout` settles a 4-D shape
/// whose channel axis is ambiguous.
pub fn read_npy_images(path: &Path, layout: Option<ArrayLayout>) -> Result<ImageArrays> {
    let (f, len) = open(path)?;
    let npy = npy_file(path, "images", std::io::BufReader::new(f))?;
    images_from(path, "images", npy, len, layout)
}

/// The labels of a `.npy` file: `n` integers ≥ 0.
pub fn read_npy_labels(path: &Path, n: usize) -> Result<Vec<u32>> {
    let (f, len) = open(path)?;
    let npy = npy_file(path, "labels", std::io::BufReader::new(f))?;
    labels_from(path, "labels", npy, len, n)
}

/// The training and test splits of an `.npz` archive: images `names.x_*` and, when the
/// archive has them, labels `names.y_*` (both splits or neither).
pub fn read_npz(path: &Path, names: &NpzNames, layout: Option<ArrayLayout>) -> Result<(ImageArrays, ImageArrays)> {
    let (f, _) = open(path)?;
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(f))
        .map_err(|e| VaeError::format(path, format!("not a .npz (zip) archive: {e}")))?;
    // Sorted: the archive's own listing order is not kept.
    let mut members: Vec<String> = zip.file_names().map(str::to_string).collect();
    members.sort();
    let has = |name: &str| members.iter().any(|m| m == &format!("{name}.npy"));
    for name in [&names.x_train, &names.x_test] {
        if !has(name) {
            return Err(VaeError::format(
                path,
                format!(
                    "no array {name:?} (the archive holds {}); name the arrays with --npz-names",
                    members
                        .iter()
                        .map(|m| m.trim_end_matches(".npy"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
    }
    let labelled = (has(&names.y_train), has(&names.y_test));
    if labelled.0 != labelled.1 {
        return Err(VaeError::format(
            path,
            format!(
                "labels for one split only ({} but not {}); give both or neither",
                if labelled.0 { &names.y_train } else { &names.y_test },
                if labelled.0 { &names.y_test } else { &names.y_train }
            ),
        ));
    }
    let mut read_split = |x: &str, y: &str| -> Result<ImageArrays> {
        let mut set = member(&mut zip, path, x, |p, w, npy, n| images_from(p, w, npy, n, layout))?;
        if labelled.0 {
            let count = set.count;
            set.labels = Some(member(&mut zip, path, y, |p, w, npy, n| {
                labels_from(p, w, npy, n, count)
            })?);
        }
        Ok(set)
    };
    let train = read_split(&names.x_train, &names.y_train)?;
    let test = read_split(&names.x_test, &names.y_test)?;
    if train.shape != test.shape {
        return Err(VaeError::format(
            path,
            format!(
                "the training images are {:?} (C, H, W), the test images {:?}; both splits need one shape",
                train.shape, test.shape
            ),
        ));
    }
    Ok((train, test))
}

/// Reads member `name`.npy of an archive with `read` (given the member's uncompressed size).
fn member<R: Read + Seek, T>(
    zip: &mut zip::ZipArchive<R>,
    path: &Path,
    name: &str,
    read: impl FnOnce(&Path, &str, NpyFile<&mut dyn Read>, u64) -> Result<T>,
) -> Result<T> {
    let mut file = zip
        .by_name(&format!("{name}.npy"))
        .map_err(|e| VaeError::format(path, format!("array {name:?}: {e}")))?;
    let size = file.size();
    let reader: &mut dyn Read = &mut file;
    let npy = npy_file(path, name, reader)?;
    read(path, name, npy, size)
}

/// Splits `set` into training and test images: a fraction `test_fraction` in (0, 1) of the
/// images (rounded, at least one each side) chosen by a permutation with a fixed key, so that
/// the split does not change with the training seed; each side keeps the source's order.
pub fn split(set: &ImageArrays, test_fraction: f64) -> Result<(ImageArrays, ImageArrays)> {
    if !(test_fraction > 0.0 && test_fraction < 1.0) {
        return Err(VaeError::setting(
            "test split",
            format!("the test fraction must lie in (0, 1), got {test_fraction}"),
        ));
    }
    if set.count < 2 {
        return Err(VaeError::Config(format!(
            "{} image(s) cannot be split into a training and a test set",
            set.count
        )));
    }
    let n_test = ((set.count as f64 * test_fraction).round() as usize).clamp(1, set.count - 1);
    // The key is the split's own: the host PCG64 seeded apart from any training seed.
    let order = crate::rng::permutation(&mut crate::rng::host_rng(SPLIT_SEED, 0), set.count);
    let mut test: Vec<usize> = order[..n_test].iter().map(|&i| i as usize).collect();
    let mut train: Vec<usize> = order[n_test..].iter().map(|&i| i as usize).collect();
    test.sort_unstable();
    train.sort_unstable();
    Ok((set.select(&train), set.select(&test)))
}

/// The seed of [`split`]'s permutation, fixed so that a test set never depends on `--seed`.
pub const SPLIT_SEED: u64 = 0x07e5_75e7;

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A .npy file written by hand (format 1.0): the magic, the header dict padded to a
    /// multiple of 64 bytes, the raw little-endian data.
    fn npy(descr: &str, shape: &[usize], data: &[u8]) -> Vec<u8> {
        let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
        let tuple = if shape.len() == 1 {
            format!("({},)", dims[0])
        } else {
            format!("({})", dims.join(", "))
        };
        let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {tuple}, }}");
        while (10 + header.len() + 1) % 64 != 0 {
            header.push(' ');
        }
        header.push('\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend((header.len() as u16).to_le_bytes());
        out.extend(header.as_bytes());
        out.extend(data);
        out
    }

    fn f32_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    fn temp(name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("vae-wgpu-arrays-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn message(r: Result<impl std::fmt::Debug>) -> String {
        match r {
            Err(e) => e.to_string(),
            Ok(v) => panic!("expected an error, got {v:?}"),
        }
    }

    #[test]
    fn grey_colour_and_planar_images_come_out_interleaved() {
        let grey = temp("grey.npy", &npy("|u1", &[2, 2, 3], &(0..12).collect::<Vec<u8>>()));
        let g = read_npy_images(&grey, None).unwrap();
        assert_eq!((g.count, g.shape, g.image_len()), (2, [1, 2, 3], 6));
        assert_eq!(g.images, Pixels::U8((0..12).collect()));
        assert!(g.notes.is_empty());
        // One 2×2 RGB image as [N, C, H, W]: planes R = 10.., G = 20.., B = 30.. .
        let planar: Vec<u8> = vec![10, 11, 12, 13, 20, 21, 22, 23, 30, 31, 32, 33];
        let nchw = read_npy_images(&temp("nchw.npy", &npy("|u1", &[1, 3, 2, 2], &planar)), None).unwrap();
        assert_eq!(nchw.shape, [3, 2, 2]);
        assert_eq!(
            nchw.images,
            Pixels::U8(vec![10, 20, 30, 11, 21, 31, 12, 22, 32, 13, 23, 33])
        );
        // The same image as [N, H, W, C] is read as it is.
        let nhwc = read_npy_images(
            &temp("nhwc.npy", &npy("|u1", &[1, 2, 2, 3], nchw.images.as_u8().unwrap())),
            None,
        )
        .unwrap();
        assert_eq!(nhwc, nchw);
        // [N, 3, 4, 3] has a channel-sized axis at both ends: the layout must be given.
        let both = temp("both.npy", &npy("|u1", &[1, 3, 4, 3], &[7; 36]));
        assert!(message(read_npy_images(&both, None)).contains("--layout nhwc or --layout nchw"));
        assert_eq!(
            read_npy_images(&both, Some(ArrayLayout::Nhwc)).unwrap().shape,
            [3, 3, 4]
        );
        assert_eq!(
            read_npy_images(&both, Some(ArrayLayout::Nchw)).unwrap().shape,
            [3, 4, 3]
        );
        let none = temp("none.npy", &npy("|u1", &[1, 5, 6, 7], &[0; 210]));
        assert!(message(read_npy_images(&none, None)).contains("no axis of 1, 3 or 4 channels"));
    }

    #[test]
    fn floats_are_checked_and_kept_and_rgba_is_composited() {
        // Kept as they are, to the last bit (0.3 is no multiple of 1/255).
        let values = [0.0, 0.5, 1.0 / 255.0, 0.3];
        let f = temp("f.npy", &npy("<f4", &[1, 1, 4], &f32_bytes(&values)));
        let a = read_npy_images(&f, None).unwrap();
        assert_eq!(a.images, Pixels::F32(values.to_vec()));
        assert_eq!(
            a.notes,
            vec!["float32 kept as f32 (4 bytes a value on the device)".to_string()]
        );
        // Planar RGBA floats: interleaved, then each colour times alpha.
        let planar = f32_bytes(&[0.5, 0.25, 1.0, 0.4, 0.2, 0.0, 0.5, 1.0]); // [1, 4, 1, 2]
        let c = read_npy_images(&temp("f_rgba.npy", &npy("<f4", &[1, 4, 1, 2], &planar)), None).unwrap();
        assert_eq!(c.shape, [3, 1, 2]);
        assert_eq!(
            c.images,
            Pixels::F32(vec![0.5 * 0.5, 1.0 * 0.5, 0.2 * 0.5, 0.25, 0.4, 0.0])
        );
        let out = temp("out.npy", &npy("<f4", &[1, 1, 2], &f32_bytes(&[0.25, 1.5])));
        let e = message(read_npy_images(&out, None));
        assert!(e.contains("[0, 1]") && e.contains("value 1 is 1.5"), "{e}");
        let nan = temp("nan.npy", &npy("<f4", &[1, 1, 1], &f32_bytes(&[f32::NAN])));
        assert!(message(read_npy_images(&nan, None)).contains("NaN"));
        // RGBA on black: each colour · alpha / 255, rounded: 200·128/255 = 100.4 → 100,
        // 100·128/255 = 50.2 → 50, 255·128/255 = 128; full alpha keeps, zero alpha blackens.
        let px = [200, 100, 255, 128, 9, 8, 7, 255, 9, 8, 7, 0, 1, 2, 3, 4];
        let rgba = temp("rgba.npy", &npy("|u1", &[1, 2, 2, 4], &px));
        let c = read_npy_images(&rgba, None).unwrap();
        assert_eq!(c.shape, [3, 2, 2]);
        assert_eq!(c.images, Pixels::U8(vec![100, 50, 128, 9, 8, 7, 0, 0, 0, 0, 0, 0]));
        assert_eq!(c.notes, vec!["RGBA composited on black".to_string()]);
        let i16s = temp("i16.npy", &npy("<i2", &[1, 1, 1], &[0, 0]));
        assert!(message(read_npy_images(&i16s, None)).contains("expected uint8 or float32"));
    }

    #[test]
    fn labels_are_checked_and_sizes_come_from_the_file() {
        let l = temp(
            "l.npy",
            &npy(
                "<i8",
                &[3],
                &[2i64, 0, 300].iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>(),
            ),
        );
        assert_eq!(read_npy_labels(&l, 3).unwrap(), vec![2, 0, 300]);
        assert!(message(read_npy_labels(&l, 4)).contains("3 labels for 4 images"));
        let neg = temp(
            "neg.npy",
            &npy(
                "<i4",
                &[2],
                &[1i32, -1].iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>(),
            ),
        );
        assert!(message(read_npy_labels(&neg, 2)).contains("label 1 is -1"));
        let fl = temp("fl.npy", &npy("<f4", &[1], &f32_bytes(&[1.0])));
        assert!(message(read_npy_labels(&fl, 1)).contains("labels must be integers"));
        // A header that promises 10⁶ images of a file of 40 bytes is refused before reading.
        let short = temp("short.npy", &npy("|u1", &[1_000_000, 28, 28], &[0; 40]));
        let e = message(read_npy_images(&short, None));
        assert!(e.contains("needs 784000000 bytes"), "{e}");
        let junk = temp("junk.npy", b"not an array at all");
        assert!(message(read_npy_images(&junk, None)).contains("not a NumPy .npy array"));
        let dir = std::env::temp_dir();
        assert!(message(read_npy_images(&dir, None)).contains("not a regular file"));
    }

    fn npz(members: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let mut buf = std::io::Cursor::new(Vec::new());
        let mut w = zip::ZipWriter::new(&mut buf);
        let opts = zip::write::FileOptions::default().compression_method(zip::CompressionMethod::Deflated);
        for (name, bytes) in members {
            w.start_file(format!("{name}.npy"), opts).unwrap();
            w.write_all(bytes).unwrap();
        }
        w.finish().unwrap();
        drop(w);
        buf.into_inner()
    }

    #[test]
    fn npz_archives_give_both_splits() {
        let x = |n: usize, v: u8| npy("|u1", &[n, 2, 2], &vec![v; 4 * n]);
        let y = |labels: &[u8]| npy("|u1", &[labels.len()], labels);
        let full = temp(
            "full.npz",
            &npz(&[
                ("x_train", x(3, 5)),
                ("y_train", y(&[0, 1, 2])),
                ("x_test", x(2, 9)),
                ("y_test", y(&[2, 1])),
            ]),
        );
        let (train, test) = read_npz(&full, &NpzNames::default(), None).unwrap();
        assert_eq!((train.count, test.count, train.shape), (3, 2, [1, 2, 2]));
        assert_eq!(
            (train.images.level(0), test.images.level(7)),
            (5.0 / 255.0, 9.0 / 255.0)
        );
        assert_eq!(
            (train.labels.unwrap(), test.labels.unwrap()),
            (vec![0, 1, 2], vec![2, 1])
        );
        // Unlabelled, and under other names.
        let names = NpzNames {
            x_train: "a".into(),
            x_test: "b".into(),
            ..NpzNames::default()
        };
        let other = temp("other.npz", &npz(&[("a", x(1, 1)), ("b", x(1, 2))]));
        let (a, _) = read_npz(&other, &names, None).unwrap();
        assert!(a.labels.is_none());
        let e = message(read_npz(&other, &NpzNames::default(), None));
        assert!(e.contains("no array \"x_train\"") && e.contains("a, b"), "{e}");
        let half = temp(
            "half.npz",
            &npz(&[("x_train", x(1, 1)), ("y_train", y(&[0])), ("x_test", x(1, 2))]),
        );
        assert!(message(read_npz(&half, &NpzNames::default(), None)).contains("labels for one split only"));
        let shapes = temp(
            "shapes.npz",
            &npz(&[("x_train", x(1, 1)), ("x_test", npy("|u1", &[1, 3, 3], &[0; 9]))]),
        );
        assert!(message(read_npz(&shapes, &NpzNames::default(), None)).contains("both splits need one shape"));
    }

    #[test]
    fn the_split_is_fixed_sized_and_disjoint() {
        let set = ImageArrays {
            images: Pixels::U8((0..50u8).collect()),
            shape: [1, 1, 1],
            count: 50,
            labels: Some((0..50).collect()),
            notes: Vec::new(),
        };
        let (train, test) = split(&set, 0.1).unwrap();
        assert_eq!((train.count, test.count), (45, 5));
        let (t, s) = (train.labels.clone().unwrap(), test.labels.clone().unwrap());
        assert!(t.windows(2).all(|w| w[0] < w[1]) && s.windows(2).all(|w| w[0] < w[1]));
        assert!(s.iter().all(|v| !t.contains(v)));
        assert_eq!(train.images, Pixels::U8(t.iter().map(|&v| v as u8).collect()));
        // The same every time: the key is the split's own.
        assert_eq!(split(&set, 0.1).unwrap(), (train, test));
        assert_eq!(split(&set, 0.999).unwrap().0.count, 1);
        assert!(split(&set, 0.0).is_err() && split(&set, 1.0).is_err());
    }
}
