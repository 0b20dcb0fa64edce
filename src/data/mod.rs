//! Datasets.

pub mod amat;
pub mod idx;
pub mod mnist;

pub use amat::{load_binarized_mnist, AmatSplit};
pub use idx::{read_idx_images, read_idx_labels, resolve_idx_path, IdxImages};
pub use mnist::{load_mnist_split, DatasetKind, MnistSet, IMAGE_PIXELS, IMAGE_SIDE, NUM_CLASSES};
