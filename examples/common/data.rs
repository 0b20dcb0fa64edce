//! Where a run's images come from, shared by the examples: a built-in dataset, a folder of
//! images or NumPy arrays, read into memory with their shape and classes; and the value
//! parsers of the flags that choose them.

use std::path::{Path, PathBuf};

use vae_wgpu::data::{
    ArrayLayout, DatasetKind, FolderOptions, GpuDataset, MnistSet, NpzNames, Pixels, ResizeMode, IMAGE_SIDE,
    NUM_CLASSES,
};
use vae_wgpu::{Result, VaeError};

/// Where the images come from: a built-in dataset or NumPy arrays.
#[derive(Clone, Debug)]
pub enum DataSpec {
    Builtin(DatasetKind),
    /// A .npy of images with an optional .npy of labels, or a .npz of both splits.
    Arrays {
        file: PathBuf,
        labels: Option<PathBuf>,
    },
    /// A folder of PNG and JPEG images.
    Folder(PathBuf),
}

impl DataSpec {
    /// The name run.json and the checkpoint record: the built-in name, images:DIR or
    /// npy:FILE[,LABELS].
    pub fn name(&self) -> String {
        match self {
            DataSpec::Builtin(k) => k.name().to_string(),
            DataSpec::Arrays { file, labels } => match labels {
                Some(l) => format!("npy:{},{}", file.display(), l.display()),
                None => format!("npy:{}", file.display()),
            },
            DataSpec::Folder(dir) => format!("images:{}", dir.display()),
        }
    }

    /// Whether it names a .npz archive.
    pub fn is_npz(&self) -> bool {
        matches!(self, DataSpec::Arrays { file, .. } if file.extension().is_some_and(|e| e == "npz"))
    }
}

pub fn dataset(s: &str) -> std::result::Result<DataSpec, String> {
    if let Some(dir) = s.strip_prefix("images:") {
        if dir.is_empty() {
            return Err("images: takes a directory, images:DIR".into());
        }
        return Ok(DataSpec::Folder(PathBuf::from(dir)));
    }
    if let Some(rest) = s.strip_prefix("npy:") {
        let (file, labels) = match rest.split_once(',') {
            Some((f, l)) => (f, Some(l)),
            None => (rest, None),
        };
        if file.is_empty() || labels.is_some_and(str::is_empty) {
            return Err("npy: takes FILE or FILE,LABELS".into());
        }
        let file = PathBuf::from(file);
        if labels.is_some() && file.extension().is_some_and(|e| e == "npz") {
            return Err("a .npz holds its own labels (y_train, y_test); give npy:FILE.npz alone".into());
        }
        return Ok(DataSpec::Arrays {
            file,
            labels: labels.map(PathBuf::from),
        });
    }
    DatasetKind::parse(s).map(DataSpec::Builtin).map_err(|e| {
        format!(
            "{}; or images:DIR for a folder of images, npy:FILE[,LABELS] for NumPy arrays",
            super::explain(&e)
        )
    })
}
pub fn image_size(s: &str) -> std::result::Result<(usize, usize), String> {
    let parse = |v: &str| v.trim().parse::<usize>().ok().filter(|&n| n > 0);
    match s.split_once('x') {
        Some((h, w)) => parse(h).zip(parse(w)),
        None => parse(s).map(|n| (n, n)),
    }
    .ok_or_else(|| format!("{s:?}: expected a side S or HxW, e.g. 64 or 48x64"))
}
pub fn fraction(s: &str) -> std::result::Result<f64, String> {
    s.parse::<f64>()
        .ok()
        .filter(|v| *v > 0.0 && *v < 1.0)
        .ok_or_else(|| format!("{s:?} is not a fraction in (0, 1)"))
}
pub fn npz_names(s: &str) -> std::result::Result<NpzNames, String> {
    match s.split(',').map(str::trim).collect::<Vec<_>>()[..] {
        [a, b, c, d] if [a, b, c, d].iter().all(|n| !n.is_empty()) => Ok(NpzNames {
            x_train: a.into(),
            y_train: b.into(),
            x_test: c.into(),
            y_test: d.into(),
        }),
        _ => Err(format!("{s:?}: expected four names, x_train,y_train,x_test,y_test")),
    }
}

/// One split in memory: `count` images of C·H·W values, bytes or f32 (channels interleaved),
/// and their labels (empty without them).
pub struct Split {
    pub images: Pixels,
    pub labels: Vec<u32>,
    pub count: usize,
}

impl Split {
    /// The split on the device for evaluation: resident when it fits one storage binding and
    /// `stream` is off, else streamed through a window of one evaluation batch (the same
    /// numbers: the evaluator's batches are the window's).
    pub fn eval_set(&self, gpu: &vae_wgpu::Gpu, name: &str, d: usize, stream: bool) -> Result<GpuDataset> {
        let bytes = (self.count * d * self.images.value_bytes()) as u128;
        if stream || gpu.check_buffer(&format!("the {name} images"), bytes).is_err() {
            GpuDataset::streamed_pixels(
                gpu,
                name,
                self.images.clone(),
                self.count,
                d,
                self.labels.clone(),
                vae_wgpu::train::EVAL_BATCH,
            )
        } else {
            GpuDataset::upload_pixels(gpu, name, &self.images, self.count, d, self.labels.clone())
        }
    }
}

/// The data of a run: both splits, the image shape and what the summary line says of them.
pub struct Data {
    pub train: Split,
    pub test: Split,
    pub shape: [usize; 3],
    /// Classes in the labels (0 without labels).
    pub classes: usize,
    pub from: String,
    pub notes: Vec<String>,
}

impl Data {
    /// NumPy arrays, read and split now: their shape and classes decide the model.
    pub fn arrays(
        spec: &DataSpec,
        layout: Option<ArrayLayout>,
        test_split: Option<f64>,
        names: &NpzNames,
    ) -> Result<Data> {
        let DataSpec::Arrays { file, labels } = spec else {
            return Err(VaeError::Config("not an array dataset".into()));
        };
        let (train, test) = if spec.is_npz() {
            if test_split.is_some() {
                return Err(VaeError::Config(
                    "--test-split splits a .npy; a .npz has its own test arrays".into(),
                ));
            }
            vae_wgpu::data::read_npz(file, names, layout)?
        } else {
            let mut all = vae_wgpu::data::read_npy_images(file, layout)?;
            if let Some(l) = labels {
                all.labels = Some(vae_wgpu::data::read_npy_labels(l, all.count)?);
            }
            vae_wgpu::data::arrays::split(&all, test_split.unwrap_or(0.1))?
        };
        let classes = train
            .labels
            .iter()
            .chain(&test.labels)
            .flatten()
            .max()
            .map_or(0, |&m| m as usize + 1);
        let notes = train.notes.clone();
        Ok(Data {
            train: Split {
                labels: train.labels.unwrap_or_default(),
                images: train.images,
                count: train.count,
            },
            test: Split {
                labels: test.labels.unwrap_or_default(),
                images: test.images,
                count: test.count,
            },
            shape: train.shape,
            classes,
            from: file.display().to_string(),
            notes,
        })
    }

    /// A folder of images, decoded now (with a progress bar): their shape and classes decide
    /// the model.
    /// Decoded images are kept in `cache` (see `vae_wgpu::data::cache`) when given.
    pub fn folder(dir: &Path, opts: &vae_wgpu::data::FolderOptions, cache: Option<&Path>) -> Result<Data> {
        let bar = super::progress_bar(0, "decoding");
        let progress = |done: usize, total: usize| {
            bar.set_length(total as u64);
            bar.set_position(done as u64)
        };
        let warn = |warning: &str| bar.suspend(|| eprintln!("warning: {warning}"));
        let t0 = std::time::Instant::now();
        let f = match cache {
            Some(c) => {
                let (f, used) = vae_wgpu::data::read_image_folder_cached(dir, opts, c, progress, warn)?;
                bar.finish_and_clear();
                let secs = t0.elapsed().as_secs_f64();
                match used {
                    vae_wgpu::data::CacheUse::Reused(p) => {
                        println!("decoded images: reused {} ({secs:.1} s)", p.display())
                    }
                    vae_wgpu::data::CacheUse::Written(p) => {
                        println!("decoded images: {secs:.1} s, cached in {}", p.display())
                    }
                }
                f
            }
            None => {
                let f = vae_wgpu::data::read_image_folder(dir, opts, progress, warn)?;
                bar.finish_and_clear();
                println!("decoded images: {:.1} s (no cache)", t0.elapsed().as_secs_f64());
                f
            }
        };
        bar.finish_and_clear();
        let mut notes = Vec::new();
        if !f.classes.is_empty() {
            let counts: Vec<String> = f
                .classes
                .iter()
                .enumerate()
                .map(|(i, name)| {
                    let n = f
                        .train
                        .labels
                        .iter()
                        .chain(&f.test.labels)
                        .flatten()
                        .filter(|&&l| l as usize == i)
                        .count();
                    format!("{name} {n}")
                })
                .collect();
            println!("classes: {}", counts.join(", "));
        }
        if !f.skipped.is_empty() {
            notes.push(format!("{} files skipped", f.skipped.len()));
        }
        let classes = f.classes.len();
        Ok(Data {
            train: Split {
                labels: f.train.labels.unwrap_or_default(),
                images: f.train.images,
                count: f.train.count,
            },
            test: Split {
                labels: f.test.labels.unwrap_or_default(),
                images: f.test.images,
                count: f.test.count,
            },
            shape: f.train.shape,
            classes,
            from: dir.display().to_string(),
            notes,
        })
    }

    /// The data a run recorded in its checkpoint's metadata (`dataset`, `test_split`,
    /// `layout`, `preprocessing`), read again the same way; a built-in dataset from `dir` (or
    /// its own place).
    pub fn recorded(meta: &[(String, String)], dir: Option<&Path>) -> Result<Data> {
        let get = |k: &str| meta.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
        let bad = |key: &str, problem: String| {
            VaeError::Config(format!(
                "the checkpoint's metadata '{key}' is {:?}: {problem}",
                get(key).unwrap_or_default()
            ))
        };
        let spec = dataset(get("dataset").unwrap_or("mnist")).map_err(|e| bad("dataset", e))?;
        let test_split = match get("test_split") {
            None | Some("none") => None,
            Some(v) => Some(
                v.parse::<f64>()
                    .map_err(|_| bad("test_split", "not a fraction".into()))?,
            ),
        };
        let preprocessing = get("preprocessing").unwrap_or("none");
        match &spec {
            DataSpec::Builtin(kind) => Data::builtin(*kind, &dir.map_or_else(|| kind.default_dir(), Path::to_path_buf)),
            DataSpec::Arrays { .. } => {
                let layout = match get("layout") {
                    None | Some("none") => None,
                    Some(v) => Some(ArrayLayout::parse(v)?),
                };
                let names = match preprocessing.strip_prefix("npz-names ") {
                    Some(list) => npz_names(list).map_err(|e| bad("preprocessing", e))?,
                    None => NpzNames::default(),
                };
                Data::arrays(&spec, layout, test_split, &names)
            }
            DataSpec::Folder(folder) => {
                // "HxW mode C channels[ strict]", as train_mnist writes it.
                let parts: Vec<&str> = preprocessing.split_whitespace().collect();
                let (size, mode, channels) = match parts[..] {
                    [size, mode, c, "channels", ..] => (
                        image_size(size).map_err(|e| bad("preprocessing", e))?,
                        ResizeMode::parse(mode)?,
                        c.parse::<usize>()
                            .map_err(|_| bad("preprocessing", "no channel count".into()))?,
                    ),
                    _ => return Err(bad("preprocessing", "expected HxW MODE C channels".into())),
                };
                let opts = FolderOptions {
                    size: Some(size),
                    resize: mode,
                    channels: Some(channels),
                    strict: parts.last() == Some(&"strict"),
                    test_split: test_split.unwrap_or(0.1),
                };
                Data::folder(folder, &opts, vae_wgpu::data::default_cache_dir().as_deref())
            }
        }
    }

    /// A built-in dataset from `dir`.
    pub fn builtin(kind: DatasetKind, dir: &Path) -> Result<Data> {
        let split = |set: MnistSet| Split {
            images: Pixels::U8(set.images),
            labels: set.labels,
            count: set.count,
        };
        Ok(Data {
            train: split(kind.load_split(dir, true)?),
            test: split(kind.load_split(dir, false)?),
            shape: [1, IMAGE_SIDE, IMAGE_SIDE],
            classes: if kind.has_labels() { NUM_CLASSES } else { 0 },
            from: dir.display().to_string(),
            notes: Vec::new(),
        })
    }
}
