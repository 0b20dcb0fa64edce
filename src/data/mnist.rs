//! MNIST and Fashion-MNIST: both ship as the same four IDX files of 28x28 greyscale images,
//! so one loader serves both.

use std::io;
use std::path::{Path, PathBuf};

use super::idx::{read_idx_images, read_idx_labels, resolve_idx_path};
use super::set::{MnistSet, IMAGE_SIDE, NUM_CLASSES};
use crate::error::{Result, VaeError};

/// The datasets this loader understands, for choosing one from the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatasetKind {
    /// Handwritten digits (LeCun, Cortes, Burges); bundled with this repository.
    Mnist,
    /// Zalando's clothing images, a harder drop-in replacement for MNIST.
    FashionMnist,
    /// Larochelle & Murray's statically binarized MNIST (the VAE literature's benchmark split:
    /// 50000 train, 10000 valid, 10000 test), read from `.amat` files. It has no labels.
    BinarizedMnist,
}

impl DatasetKind {
    /// The names [`DatasetKind::parse`] accepts, for help texts.
    pub const NAMES: [&'static str; 3] = ["mnist", "fashion-mnist", "binarized-mnist"];

    /// The command-line name, for logs and file names.
    pub fn name(&self) -> &'static str {
        match self {
            DatasetKind::Mnist => "mnist",
            DatasetKind::FashionMnist => "fashion-mnist",
            DatasetKind::BinarizedMnist => "binarized-mnist",
        }
    }

    /// Whether the dataset carries class labels (binarized MNIST does not).
    pub fn has_labels(&self) -> bool {
        !matches!(self, DatasetKind::BinarizedMnist)
    }

    /// Where the files live when the user names no directory: MNIST in the repository,
    /// Fashion-MNIST where the Debian/Ubuntu package installs it.
    pub fn default_dir(&self) -> PathBuf {
        match self {
            DatasetKind::Mnist => Path::new(env!("CARGO_MANIFEST_DIR")).join("data/mnist"),
            DatasetKind::FashionMnist => PathBuf::from("/usr/share/datasets/fashion-mnist"),
            // Not redistributable with the crate: the workplace keeps a copy beside the repository.
            DatasetKind::BinarizedMnist => Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/binarized-mnist"),
        }
    }

    /// Parses a command-line name (ASCII case-insensitive).
    pub fn parse(s: &str) -> Result<Self> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("mnist") {
            Ok(DatasetKind::Mnist)
        } else if s.eq_ignore_ascii_case("fashion-mnist") {
            Ok(DatasetKind::FashionMnist)
        } else if s.eq_ignore_ascii_case("binarized-mnist") {
            Ok(DatasetKind::BinarizedMnist)
        } else {
            Err(VaeError::Config(format!(
                "unknown dataset '{s}'; expected one of: {}",
                Self::NAMES.join(", ")
            )))
        }
    }

    /// Loads one split like [`load_mnist_split`], but a missing file's error says how to
    /// obtain this particular dataset. Binarized MNIST's `train` is its 50000-image training
    /// split and the test split is its 10000-image test file (the validation file is unused);
    /// its pixels are 0 or 255 and its `labels` are empty.
    pub fn load_split(&self, dir: &Path, train: bool) -> Result<MnistSet> {
        let hint = match self {
            DatasetKind::Mnist => format!(
                "the MNIST files ship with vae-wgpu in {}",
                DatasetKind::Mnist.default_dir().display()
            ),
            DatasetKind::FashionMnist => format!(
                "install Fashion-MNIST with `apt-get install -y dataset-fashion-mnist` (it \
                 installs into {}) or pass the directory holding its files",
                DatasetKind::FashionMnist.default_dir().display()
            ),
            DatasetKind::BinarizedMnist => {
                let split = if train {
                    super::amat::AmatSplit::Train
                } else {
                    super::amat::AmatSplit::Test
                };
                return super::amat::load_binarized_mnist(dir, split);
            }
        };
        load_split_with_hint(dir, train, &hint)
    }
}

/// Loads the training split (`train-*`) or the test split (`t10k-*`) from `dir`, each file
/// raw or gzipped, and checks that images are 28x28 and match the labels one to one.
pub fn load_mnist_split(dir: &Path, train: bool) -> Result<MnistSet> {
    let hint = format!(
        "MNIST ships in the vae-wgpu repository's data/mnist ({}), but not in the crates.io \
         package: use a clone of the repository, or pass a directory holding the four MNIST IDX \
         files (train_mnist and explore: --data-dir DIR); install Fashion-MNIST with \
         `apt-get install -y dataset-fashion-mnist`",
        DatasetKind::Mnist.default_dir().display()
    );
    load_split_with_hint(dir, train, &hint)
}

/// The image and label file names of a split, without the optional `.gz`.
fn split_file_names(train: bool) -> (&'static str, &'static str) {
    if train {
        ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")
    } else {
        ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    }
}

fn load_split_with_hint(dir: &Path, train: bool, hint: &str) -> Result<MnistSet> {
    let (image_name, label_name) = split_file_names(train);
    let image_path = locate(dir, image_name, hint)?;
    let label_path = locate(dir, label_name, hint)?;

    let images = read_idx_images(&image_path)?;
    if images.rows != IMAGE_SIDE || images.cols != IMAGE_SIDE {
        return Err(VaeError::format(
            &image_path,
            format!(
                "images are {}x{} pixels (rows x cols), expected {IMAGE_SIDE}x{IMAGE_SIDE}",
                images.rows, images.cols
            ),
        ));
    }
    let labels = read_idx_labels(&label_path)?;
    if labels.len() != images.count {
        return Err(VaeError::format(
            &image_path,
            format!(
                "holds {} images but {} holds {} labels; both files must come from the same split",
                images.count,
                label_path.display(),
                labels.len()
            ),
        ));
    }
    if let Some((i, &l)) = labels.iter().enumerate().find(|(_, &l)| l as usize >= NUM_CLASSES) {
        return Err(VaeError::format(
            &label_path,
            format!("label {l} at index {i} is outside 0..{NUM_CLASSES}"),
        ));
    }
    Ok(MnistSet {
        images: images.pixels,
        labels: labels.into_iter().map(u32::from).collect(),
        count: images.count,
    })
}

/// Resolves `dir/name` (or its `.gz`), turning "not found" into an error that says where
/// the files are expected and how to get them.
fn locate(dir: &Path, name: &str, hint: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    match resolve_idx_path(&path) {
        Err(VaeError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => Err(VaeError::io(
            &path,
            io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "dataset file not found: expected {name} or {name}.gz in {}; {hint}",
                    dir.display()
                ),
            ),
        )),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::idx::tests::{gzip, idx_bytes, TempDir};
    use crate::data::test_util::expect_format;
    use crate::data::IMAGE_PIXELS;
    use std::fs;

    /// Writes a split of `count` images of `rows x cols` with the given labels.
    fn write_split(dir: &TempDir, prefix: &str, count: u32, rows: u32, cols: u32, labels: &[u8]) {
        let pixels: Vec<u8> = (0..count * rows * cols).map(|i| (i % 251) as u8).collect();
        fs::write(
            dir.join(&format!("{prefix}-images-idx3-ubyte.gz")),
            gzip(&idx_bytes(&[count, rows, cols], &pixels)),
        )
        .unwrap();
        fs::write(
            dir.join(&format!("{prefix}-labels-idx1-ubyte")),
            idx_bytes(&[labels.len() as u32], labels),
        )
        .unwrap();
    }

    #[test]
    fn loads_small_split_mixed_compression() {
        let dir = TempDir::new("mnist-ok");
        write_split(&dir, "t10k", 3, 28, 28, &[7, 2, 1]);
        let set = load_mnist_split(&dir.0, false).unwrap();
        assert_eq!(set.count, 3);
        assert_eq!(set.labels, vec![7, 2, 1]);
        assert_eq!(set.images.len(), 3 * IMAGE_PIXELS);
        assert_eq!(set.images[IMAGE_PIXELS + 1], ((IMAGE_PIXELS + 1) % 251) as u8);
        // The training split is a different pair of files.
        assert!(matches!(load_mnist_split(&dir.0, true), Err(VaeError::Io { .. })));
    }

    #[test]
    fn count_mismatch_names_both_files_and_counts() {
        let dir = TempDir::new("mnist-count");
        write_split(&dir, "train", 3, 28, 28, &[1, 2]);
        expect_format(
            load_mnist_split(&dir.0, true),
            &[
                "train-images-idx3-ubyte.gz",
                "train-labels-idx1-ubyte",
                "3 images",
                "2 labels",
            ],
        );
    }

    #[test]
    fn wrong_image_size_says_what_was_found() {
        let dir = TempDir::new("mnist-size");
        write_split(&dir, "train", 2, 27, 28, &[1, 2]);
        expect_format(
            load_mnist_split(&dir.0, true),
            &["train-images-idx3-ubyte.gz", "27x28", "expected 28x28"],
        );
    }

    #[test]
    fn out_of_range_label() {
        let dir = TempDir::new("mnist-label");
        write_split(&dir, "t10k", 2, 28, 28, &[3, 10]);
        expect_format(
            load_mnist_split(&dir.0, false),
            &["t10k-labels-idx1-ubyte", "label 10 at index 1"],
        );
    }

    #[test]
    fn missing_files_say_where_and_how() {
        let dir = TempDir::new("mnist-missing");
        let check = |r: Result<MnistSet>, needles: &[&str]| match r {
            Err(e @ VaeError::Io { .. }) => {
                let msg = e.to_string();
                for n in needles {
                    assert!(msg.contains(n), "message {msg:?} lacks {n:?}");
                }
            }
            other => panic!("expected VaeError::Io, got {other:?}"),
        };
        let where_ = dir.0.display().to_string();
        check(
            DatasetKind::FashionMnist.load_split(&dir.0, true),
            &[
                "train-images-idx3-ubyte.gz",
                &where_,
                "apt-get install -y dataset-fashion-mnist",
            ],
        );
        check(
            DatasetKind::Mnist.load_split(&dir.0, false),
            &["t10k-images-idx3-ubyte.gz", &where_, "data/mnist"],
        );
        // Images present, labels missing: the labels file is named.
        let pixels = vec![0u8; IMAGE_PIXELS];
        fs::write(dir.join("t10k-images-idx3-ubyte"), idx_bytes(&[1, 28, 28], &pixels)).unwrap();
        check(load_mnist_split(&dir.0, false), &["t10k-labels-idx1-ubyte", &where_]);
    }

    #[test]
    fn dataset_kind_parse_and_dirs() {
        assert_eq!(DatasetKind::parse("mnist").unwrap(), DatasetKind::Mnist);
        assert_eq!(DatasetKind::parse("Fashion-MNIST").unwrap(), DatasetKind::FashionMnist);
        for k in [DatasetKind::Mnist, DatasetKind::FashionMnist] {
            assert_eq!(DatasetKind::parse(k.name()).unwrap(), k);
        }
        match DatasetKind::parse("cifar10") {
            Err(e @ VaeError::Config(_)) => {
                let msg = e.to_string();
                assert!(msg.contains("cifar10") && msg.contains("mnist, fashion-mnist"), "{msg}");
            }
            other => panic!("expected VaeError::Config, got {other:?}"),
        }
        assert!(DatasetKind::Mnist.default_dir().ends_with("data/mnist"));
        assert!(DatasetKind::Mnist.default_dir().is_absolute());
        assert_eq!(
            DatasetKind::FashionMnist.default_dir(),
            PathBuf::from("/usr/share/datasets/fashion-mnist")
        );
    }

    #[test]
    fn real_mnist_files() {
        let dir = DatasetKind::Mnist.default_dir();
        let train = DatasetKind::Mnist.load_split(&dir, true).unwrap();
        assert_eq!(train.count, 60_000);
        assert_eq!(train.images.len(), 60_000 * IMAGE_PIXELS);
        assert_eq!(train.labels[..10], [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]);
        let mut per_class = [0usize; NUM_CLASSES];
        for &l in &train.labels {
            per_class[l as usize] += 1;
        }
        assert_eq!(per_class, [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]);

        let n = train.images.len() as f64;
        let (sum, sum_sq) = train.images.iter().fold((0u64, 0u64), |(s, q), &p| {
            let p = p as u64;
            (s + p, q + p * p)
        });
        let mean = sum as f64 / n / 255.0;
        let var = sum_sq as f64 / n / (255.0 * 255.0) - mean * mean;
        let std = var.sqrt();
        assert!((mean - 0.130660).abs() < 1e-6, "mean {mean}");
        assert!((std - 0.308108).abs() < 1e-6, "std {std}");

        let test = load_mnist_split(&dir, false).unwrap();
        assert_eq!(test.count, 10_000);
        assert_eq!(test.images.len(), 10_000 * IMAGE_PIXELS);
        assert_eq!(test.labels.len(), 10_000);
    }
}
