//! Datasets: readers of the IDX, .amat and NumPy formats and of image folders, the MNIST family, and the sources
//! batches are gathered from on the device.

pub mod amat;
pub mod arrays;
pub mod cache;
pub mod folder;
pub mod idx;
pub mod mnist;
pub mod resident;
pub mod set;
pub mod source;

pub use amat::{load_binarized_mnist, AmatSplit};
pub use arrays::{read_npy_images, read_npy_labels, read_npz, ArrayLayout, ImageArrays, NpzNames};
pub use cache::{default_cache_dir, read_image_folder_cached, CacheUse};
pub use folder::{read_image_folder, FolderData, FolderOptions, ResizeMode};
pub use idx::{read_idx_images, read_idx_labels, resolve_idx_path, IdxImages};
pub use mnist::{load_mnist_split, DatasetKind};
pub use resident::{GpuDataset, PixelFormat, ResidentBatches};
pub use set::{MnistSet, Pixels, IMAGE_PIXELS, IMAGE_SIDE, NUM_CLASSES};
pub use source::BatchSource;

#[cfg(test)]
pub(crate) mod test_util {
    use crate::data::MnistSet;
    use crate::error::{Result, VaeError};

    /// Asserts that loading failed with a format error whose message names every needle.
    pub fn expect_format(r: Result<MnistSet>, needles: &[&str]) {
        match r {
            Err(e @ VaeError::Format { .. }) => {
                let msg = e.to_string();
                for n in needles {
                    assert!(msg.contains(n), "message {msg:?} lacks {n:?}");
                }
            }
            other => panic!("expected VaeError::Format, got {other:?}"),
        }
    }
}
