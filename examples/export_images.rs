//! Writes a built-in dataset as a folder of PNG images, the layout `train_mnist --dataset
//! images:DIR` reads: `DIR/train/` and `DIR/test/`, flat (zero-padded names in the dataset's
//! order) or with `--by-class` one sub-folder per class (`0/` … `9/`). A worked example of
//! training on your own images starts from it (docs/cli.md).

mod common;

use std::path::PathBuf;

use clap::Parser;
use vae_wgpu::data::{DatasetKind, IMAGE_SIDE};
use vae_wgpu::{Result, VaeError};

/// Write MNIST (or Fashion-MNIST) as PNG files in train/ and test/ folders.
#[derive(Parser, Debug)]
#[command(name = "export_images")]
struct Args {
    /// The dataset: mnist or fashion-mnist
    #[arg(long, value_name = "D", default_value = "mnist", value_parser = ["mnist", "fashion-mnist"])]
    dataset: String,
    /// Directory with the dataset's files (default: the dataset's own)
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Where to write (it must not exist yet)
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Write the first N training images only (the test set whole)
    #[arg(long, value_name = "N", value_parser = common::positive)]
    limit_train: Option<usize>,
    /// Write the first N test images only
    #[arg(long, value_name = "N", value_parser = common::positive)]
    limit_test: Option<usize>,
    /// One sub-folder per class instead of flat folders
    #[arg(long)]
    by_class: bool,
}

fn run(args: Args) -> Result<()> {
    if args.out.exists() {
        return Err(VaeError::Config(format!(
            "--out {} exists; name a new directory",
            args.out.display()
        )));
    }
    let kind = DatasetKind::parse(&args.dataset)?;
    let dir = args.data_dir.clone().unwrap_or_else(|| kind.default_dir());
    for (split, train, limit) in [("train", true, args.limit_train), ("test", false, args.limit_test)] {
        let set = kind.load_split(&dir, train)?;
        let n = limit.map_or(set.count, |l| l.min(set.count));
        let width = n.to_string().len().max(5);
        let bar = common::progress_bar(n as u64, split.to_string());
        for i in 0..n {
            let folder = if args.by_class {
                args.out.join(split).join(set.labels[i].to_string())
            } else {
                args.out.join(split)
            };
            std::fs::create_dir_all(&folder).map_err(|e| VaeError::io(&folder, e))?;
            let path = folder.join(format!("{i:0width$}.png"));
            let pixels = set.images[i * IMAGE_SIDE * IMAGE_SIDE..(i + 1) * IMAGE_SIDE * IMAGE_SIDE].to_vec();
            image::GrayImage::from_raw(IMAGE_SIDE as u32, IMAGE_SIDE as u32, pixels)
                .ok_or_else(|| VaeError::Config("image size mismatch".into()))?
                .save(&path)
                .map_err(|e| VaeError::io(&path, std::io::Error::other(e.to_string())))?;
            bar.set_position(i as u64 + 1);
        }
        bar.finish_and_clear();
        println!("wrote {n} {split} images to {}", args.out.join(split).display());
    }
    Ok(())
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        common::fail(&e, 1);
    }
}
