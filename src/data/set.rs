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
