//! An image set held as bytes: what every dataset reader returns.

/// Side length of every image; the models' input size depends on it.
pub const IMAGE_SIDE: usize = 28;
/// Pixels per image, the length of one image's slice in [`MnistSet::images`].
pub const IMAGE_PIXELS: usize = IMAGE_SIDE * IMAGE_SIDE;
/// Number of classes; labels lie in `0..NUM_CLASSES`.
pub const NUM_CLASSES: usize = 10;

/// One split (training or test) held as raw bytes, ready to be normalised and uploaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MnistSet {
    /// `count * IMAGE_PIXELS` pixels in 0..=255, image after image, each row-major.
    pub images: Vec<u8>,
    /// `count` class labels in `0..NUM_CLASSES`.
    pub labels: Vec<u32>,
    /// Number of images (and labels).
    pub count: usize,
}

/// Image values on the host: bytes as most sources store them, or f32 grey levels in [0, 1]
/// (float32 NumPy arrays, kept at full precision).
#[derive(Clone, Debug, PartialEq)]
pub enum Pixels {
    /// 0..=255; the batch gets byte·(1/255).
    U8(Vec<u8>),
    /// In [0, 1]; the batch gets them as they are.
    F32(Vec<f32>),
}

impl Pixels {
    /// Values held.
    pub fn len(&self) -> usize {
        match self {
            Pixels::U8(v) => v.len(),
            Pixels::F32(v) => v.len(),
        }
    }
    /// True when no values are held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The bytes, when they are bytes.
    pub fn as_u8(&self) -> Option<&[u8]> {
        match self {
            Pixels::U8(v) => Some(v),
            Pixels::F32(_) => None,
        }
    }
    /// The f32 values, when they are f32.
    pub fn as_f32(&self) -> Option<&[f32]> {
        match self {
            Pixels::U8(_) => None,
            Pixels::F32(v) => Some(v),
        }
    }
    /// Bytes per value on the host and on the device (1 or 4).
    pub fn value_bytes(&self) -> usize {
        match self {
            Pixels::U8(_) => 1,
            Pixels::F32(_) => 4,
        }
    }
    /// Value `i` as a grey level in [0, 1].
    pub fn level(&self, i: usize) -> f64 {
        match self {
            Pixels::U8(v) => v[i] as f64 / 255.0,
            Pixels::F32(v) => v[i] as f64,
        }
    }
    /// The images of `d` values at `indices`, in that order.
    pub fn select(&self, d: usize, indices: &[usize]) -> Pixels {
        fn pick<T: Copy>(v: &[T], d: usize, indices: &[usize]) -> Vec<T> {
            indices
                .iter()
                .flat_map(|&i| v[i * d..(i + 1) * d].iter().copied())
                .collect()
        }
        match self {
            Pixels::U8(v) => Pixels::U8(pick(v, d, indices)),
            Pixels::F32(v) => Pixels::F32(pick(v, d, indices)),
        }
    }
    /// The first `n` values.
    pub fn prefix(&self, n: usize) -> Pixels {
        match self {
            Pixels::U8(v) => Pixels::U8(v[..n].to_vec()),
            Pixels::F32(v) => Pixels::F32(v[..n].to_vec()),
        }
    }
}
