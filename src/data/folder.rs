//! Image folders as datasets, the convention of torchvision's `ImageFolder`: a directory of PNG
//! and JPEG files, flat (unlabelled) or one sub-folder per class (labels from the folder names,
//! sorted), with `train/` and `test/` sub-folders as the split when it has them. Files are
//! taken in sorted path order, so a folder always gives the same dataset.
//!
//! Each image becomes bytes in the model's layout (H·W·C, channels interleaved):
//! - 16-bit samples are reduced to 8 bits by round(v·255/65535);
//! - an alpha channel is composited on black: each colour times alpha/255, rounded;
//! - grey from colour is Rec. 601 luma as PIL computes it, (19595R + 38470G + 7471B + 2¹⁵) >> 16;
//! - to the target size by `crop` (scale to cover, centre crop; the default), `fit` (scale to
//!   fit, centred on black) or `stretch`, with a bilinear (triangle) filter; an image already
//!   of the target size is not resampled.

use std::path::{Path, PathBuf};

use image::imageops::FilterType;
use image::{DynamicImage, GrayImage, RgbImage};

use crate::data::arrays::ImageArrays;
use crate::data::set::Pixels;
use crate::error::{Result, VaeError};

/// How an image of another size reaches the target size.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ResizeMode {
    /// Scale to cover the target, then cut the centre out.
    #[default]
    Crop,
    /// Scale to fit inside the target, centred on black.
    Fit,
    /// Scale each side to the target's, ignoring the aspect ratio.
    Stretch,
}

impl ResizeMode {
    /// Parses `crop`, `fit` or `stretch`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "crop" => Ok(ResizeMode::Crop),
            "fit" => Ok(ResizeMode::Fit),
            "stretch" => Ok(ResizeMode::Stretch),
            _ => Err(VaeError::Config(format!(
                "unknown resize mode {s:?}; expected crop, fit or stretch"
            ))),
        }
    }
}

/// How a folder is read.
#[derive(Clone, Debug, PartialEq)]
pub struct FolderOptions {
    /// Target (height, width); None: the images' own size, which must then agree.
    pub size: Option<(usize, usize)>,
    /// How other sizes reach it.
    pub resize: ResizeMode,
    /// 1 (grey) or 3 (RGB); None: 1 when every image is grey, else 3.
    pub channels: Option<usize>,
    /// Refuse a file that cannot be decoded instead of skipping it with a warning.
    pub strict: bool,
    /// The test fraction when the folder has no `train/` and `test/` split.
    pub test_split: f64,
}

impl Default for FolderOptions {
    fn default() -> Self {
        FolderOptions {
            size: None,
            resize: ResizeMode::Crop,
            channels: None,
            strict: false,
            test_split: 0.1,
        }
    }
}

/// A folder's images, split, with its class names and the files it skipped.
#[derive(Debug)]
pub struct FolderData {
    /// Training images (labels when the folder has class sub-folders).
    pub train: ImageArrays,
    /// Test images.
    pub test: ImageArrays,
    /// Class names, sorted: label i is `classes[i]` (empty for a flat folder).
    pub classes: Vec<String>,
    /// Files that could not be read as images, with the reason.
    pub skipped: Vec<(PathBuf, String)>,
}

/// The files of one split: (path, class index or None), sorted by path.
fn list(dir: &Path, classes: &mut Vec<String>, fixed_classes: bool) -> Result<Vec<(PathBuf, Option<usize>)>> {
    let entries = sorted_entries(dir)?;
    let dirs: Vec<&PathBuf> = entries.iter().filter(|p| p.is_dir()).collect();
    if dirs.is_empty() {
        return Ok(entries.into_iter().filter(|p| p.is_file()).map(|p| (p, None)).collect());
    }
    if !fixed_classes {
        *classes = dirs
            .iter()
            .map(|d| {
                d.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            })
            .collect();
    }
    let mut files = Vec::new();
    for d in dirs {
        let name = d
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let Some(label) = classes.iter().position(|c| *c == name) else {
            return Err(VaeError::format(
                d,
                format!("class folder {name:?} is not among the training classes {classes:?}"),
            ));
        };
        for f in sorted_entries(d)?.into_iter().filter(|p| p.is_file()) {
            files.push((f, Some(label)));
        }
    }
    Ok(files)
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| VaeError::io(dir, e))?
        .map(|e| e.map(|e| e.path()).map_err(|err| VaeError::io(dir, err)))
        .collect::<Result<_>>()?;
    v.retain(|p| !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')));
    v.sort();
    Ok(v)
}

/// An image decoded to 8-bit RGBA (16-bit samples rounded down to 8 bits) and whether it was
/// grey.
fn decode(path: &Path) -> std::result::Result<(image::RgbaImage, bool), String> {
    let reader = image::ImageReader::open(path)
        .map_err(|e| e.to_string())?
        .with_guessed_format()
        .map_err(|e| e.to_string())?;
    match reader.format() {
        Some(image::ImageFormat::Png | image::ImageFormat::Jpeg) => {}
        _ => return Err("not a PNG or JPEG image".into()),
    }
    let img = reader.decode().map_err(|e| e.to_string())?;
    let grey = matches!(
        img.color(),
        image::ColorType::L8 | image::ColorType::L16 | image::ColorType::La8 | image::ColorType::La16
    );
    let rgba16 = img.to_rgba16();
    let (w, h) = rgba16.dimensions();
    let bytes: Vec<u8> = rgba16
        .into_raw()
        .into_iter()
        .map(|v| ((v as u32 * 255 + 32767) / 65535) as u8)
        .collect();
    let rgba = image::RgbaImage::from_raw(w, h, bytes).ok_or("image size overflow")?;
    Ok((rgba, grey))
}

/// RGBA on black, then grey (Rec. 601 luma, PIL's integer form) or RGB.
fn convert(rgba: &image::RgbaImage, channels: usize) -> DynamicImage {
    let (w, h) = rgba.dimensions();
    let over_black = |px: &image::Rgba<u8>| {
        let a = px[3] as u32;
        [0, 1, 2].map(|k| (px[k] as u32 * a + 127) / 255)
    };
    if channels == 1 {
        DynamicImage::ImageLuma8(GrayImage::from_fn(w, h, |x, y| {
            let [r, g, b] = over_black(rgba.get_pixel(x, y));
            image::Luma([((19595 * r + 38470 * g + 7471 * b + 32768) >> 16) as u8])
        }))
    } else {
        DynamicImage::ImageRgb8(RgbImage::from_fn(w, h, |x, y| {
            let [r, g, b] = over_black(rgba.get_pixel(x, y));
            image::Rgb([r as u8, g as u8, b as u8])
        }))
    }
}

/// `img` brought to (height, width) by `mode`.
fn resize(img: DynamicImage, (th, tw): (usize, usize), mode: ResizeMode) -> DynamicImage {
    let (w, h) = (img.width() as usize, img.height() as usize);
    if (h, w) == (th, tw) {
        return img;
    }
    let filter = FilterType::Triangle;
    match mode {
        ResizeMode::Stretch => img.resize_exact(tw as u32, th as u32, filter),
        ResizeMode::Crop => {
            // Scale so that both sides cover the target, then the centre.
            let s = (tw as f64 / w as f64).max(th as f64 / h as f64);
            let (sw, sh) = (
                ((w as f64 * s).round() as u32).max(tw as u32),
                ((h as f64 * s).round() as u32).max(th as u32),
            );
            let scaled = img.resize_exact(sw, sh, filter);
            scaled.crop_imm((sw - tw as u32) / 2, (sh - th as u32) / 2, tw as u32, th as u32)
        }
        ResizeMode::Fit => {
            let s = (tw as f64 / w as f64).min(th as f64 / h as f64);
            let (sw, sh) = (
                ((w as f64 * s).round() as u32).clamp(1, tw as u32),
                ((h as f64 * s).round() as u32).clamp(1, th as u32),
            );
            let scaled = img.resize_exact(sw, sh, filter);
            let mut canvas = match &scaled {
                DynamicImage::ImageLuma8(_) => DynamicImage::new_luma8(tw as u32, th as u32),
                _ => DynamicImage::new_rgb8(tw as u32, th as u32),
            };
            image::imageops::overlay(
                &mut canvas,
                &scaled,
                ((tw as u32 - sw) / 2) as i64,
                ((th as u32 - sh) / 2) as i64,
            );
            canvas
        }
    }
}

/// Reads the image folder `dir` (see the module's documentation). `progress(done, total)` is
/// called as files are decoded; `warn` gets each skipped file's message.
pub fn read_image_folder(
    dir: &Path,
    opts: &FolderOptions,
    mut progress: impl FnMut(usize, usize),
    mut warn: impl FnMut(&str),
) -> Result<FolderData> {
    if !dir.is_dir() {
        return Err(VaeError::format(dir, "not a directory of images"));
    }
    if let Some(c) = opts.channels.filter(|c| !matches!(c, 1 | 3)) {
        return Err(VaeError::setting("channels", format!("1 (grey) or 3 (RGB), got {c}")));
    }
    let mut classes = Vec::new();
    let (train_dir, test_dir) = (dir.join("train"), dir.join("test"));
    let split_given = train_dir.is_dir() && test_dir.is_dir();
    let (train_files, test_files) = if split_given {
        let train = list(&train_dir, &mut classes, false)?;
        let labelled = !classes.is_empty();
        let test = list(&test_dir, &mut classes, labelled)?;
        if test.iter().any(|(_, l)| l.is_some()) != labelled && !test.is_empty() {
            return Err(VaeError::format(
                dir,
                "train/ and test/ must both hold class folders, or both hold images directly",
            ));
        }
        (train, test)
    } else {
        (list(dir, &mut classes, false)?, Vec::new())
    };
    let all: Vec<&(PathBuf, Option<usize>)> = train_files.iter().chain(&test_files).collect();
    if all.is_empty() {
        return Err(VaeError::format(
            dir,
            "holds no files (PNG or JPEG images, flat or in class folders)",
        ));
    }
    let mut decoded: Vec<Option<(image::RgbaImage, bool)>> = Vec::with_capacity(all.len());
    let mut skipped = Vec::new();
    for (i, (path, _)) in all.iter().enumerate() {
        match decode(path) {
            Ok(d) => decoded.push(Some(d)),
            Err(why) if opts.strict => {
                return Err(VaeError::format(
                    path,
                    format!("{why} (--strict refuses it; without it, it is skipped)"),
                ))
            }
            Err(why) => {
                warn(&format!("skipped {}: {why}", path.display()));
                skipped.push((path.clone(), why));
                decoded.push(None);
            }
        }
        progress(i + 1, all.len());
    }
    let good: Vec<&(image::RgbaImage, bool)> = decoded.iter().flatten().collect();
    if good.is_empty() {
        return Err(VaeError::format(
            dir,
            format!("none of its {} files is a PNG or JPEG image", all.len()),
        ));
    }
    let size = match opts.size {
        Some(s) => s,
        None => {
            let first = good[0].0.dimensions();
            if let Some(other) = good.iter().map(|g| g.0.dimensions()).find(|d| *d != first) {
                return Err(VaeError::format(
                    dir,
                    format!(
                        "its images differ in size ({}×{} and {}×{}, width × height); choose one with \
                         --image-size",
                        first.0, first.1, other.0, other.1
                    ),
                ));
            }
            (first.1 as usize, first.0 as usize)
        }
    };
    let channels = opts.channels.unwrap_or(if good.iter().all(|g| g.1) { 1 } else { 3 });
    let d = size.0 * size.1 * channels;
    let to_arrays = |files: &[(PathBuf, Option<usize>)], offset: usize| -> ImageArrays {
        let mut images = Vec::new();
        let mut labels = Vec::new();
        for (k, (_, label)) in files.iter().enumerate() {
            if let Some((rgba, _)) = &decoded[offset + k] {
                let img = resize(convert(rgba, channels), size, opts.resize);
                images.extend(img.into_bytes());
                labels.push(label.unwrap_or(0) as u32);
            }
        }
        let count = images.len() / d;
        ImageArrays {
            images: Pixels::U8(images),
            shape: [channels, size.0, size.1],
            count,
            labels: (!classes.is_empty()).then_some(labels),
            notes: Vec::new(),
        }
    };
    let train = to_arrays(&train_files, 0);
    let test = to_arrays(&test_files, train_files.len());
    let (train, test) = if split_given {
        (train, test)
    } else {
        crate::data::arrays::split(&train, opts.test_split)?
    };
    if train.count == 0 || test.count == 0 {
        return Err(VaeError::format(
            dir,
            format!(
                "{} training and {} test images could be read; both sets need at least one",
                train.count, test.count
            ),
        ));
    }
    Ok(FolderData {
        train,
        test,
        classes,
        skipped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("vae-wgpu-folder-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn quiet() -> (impl FnMut(usize, usize), impl FnMut(&str)) {
        (|_, _| {}, |_: &str| {})
    }

    #[test]
    fn grey_colour_alpha_and_16_bit_pixels_by_hand() {
        let d = dir("pixels");
        // One colour image of 2×1: pure red, and grey 128 at alpha 128.
        let rgba = image::RgbaImage::from_raw(2, 1, vec![255, 0, 0, 255, 128, 128, 128, 128]).unwrap();
        rgba.save(d.join("a.png")).unwrap();
        // A 16-bit grey image of 2×1: 65535 and 257·100.
        let grey16 = image::ImageBuffer::<image::Luma<u16>, Vec<u16>>::from_raw(2, 1, vec![65535, 25700]).unwrap();
        grey16.save(d.join("b.png")).unwrap();
        let (mut p, mut w) = quiet();
        let colour = read_image_folder(
            &d,
            &FolderOptions {
                channels: Some(3),
                test_split: 0.5,
                ..Default::default()
            },
            &mut p,
            &mut w,
        )
        .unwrap();
        // The split puts one file each side; whichever is which, the pixels are known.
        let mut all = vec![
            colour.train.images.as_u8().unwrap().to_vec(),
            colour.test.images.as_u8().unwrap().to_vec(),
        ];
        all.sort();
        // 128·128/255 = 64.25 → 64; the 16-bit grey as RGB: 255 and 100.
        assert_eq!(
            all,
            vec![vec![255, 0, 0, 64, 64, 64], vec![255, 255, 255, 100, 100, 100]]
        );
        let grey = read_image_folder(
            &d,
            &FolderOptions {
                channels: Some(1),
                test_split: 0.5,
                ..Default::default()
            },
            &mut p,
            &mut w,
        )
        .unwrap();
        let mut all = vec![
            grey.train.images.as_u8().unwrap().to_vec(),
            grey.test.images.as_u8().unwrap().to_vec(),
        ];
        all.sort();
        // Red's luma: (19595·255 + 32768) >> 16 = 76; grey 64 stays 64.
        assert_eq!(all, vec![vec![76, 64], vec![255, 100]]);
        // Without --channels: 3, as one image is in colour.
        let auto = read_image_folder(
            &d,
            &FolderOptions {
                test_split: 0.5,
                ..Default::default()
            },
            &mut p,
            &mut w,
        )
        .unwrap();
        assert_eq!(auto.train.shape[0], 3);
        std::fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn resize_modes_on_a_known_image() {
        // A 4×2 (w × h) grey image: left half 0, right half 200.
        let img = DynamicImage::ImageLuma8(GrayImage::from_fn(4, 2, |x, _| {
            image::Luma([if x < 2 { 0 } else { 200 }])
        }));
        // Crop to 2×2: scale 1 (already covers), centre columns 1 and 2.
        let crop = resize(img.clone(), (2, 2), ResizeMode::Crop).into_bytes();
        assert_eq!(crop, vec![0, 200, 0, 200]);
        // Fit into 4×4: scale 1, rows 1 and 2 hold the image, black above and below.
        let fit = resize(img.clone(), (4, 4), ResizeMode::Fit).into_bytes();
        assert_eq!(&fit[..4], &[0, 0, 0, 0]);
        assert_eq!(&fit[4..8], &[0, 0, 200, 200]);
        assert_eq!(&fit[12..], &[0, 0, 0, 0]);
        // Stretch to 2×1: each output pixel averages its half.
        let stretch = resize(img, (1, 2), ResizeMode::Stretch).into_bytes();
        assert_eq!(stretch.len(), 2);
        assert!(stretch[0] < 30 && stretch[1] > 170, "{stretch:?}");
    }

    #[test]
    fn class_folders_splits_jpeg_and_bad_files() {
        let d = dir("classes");
        for (split, class, n) in [
            ("train", "cat", 3),
            ("train", "dog", 2),
            ("test", "dog", 1),
            ("test", "cat", 1),
        ] {
            let c = d.join(split).join(class);
            std::fs::create_dir_all(&c).unwrap();
            for i in 0..n {
                let v = if class == "cat" { 40 } else { 220 };
                GrayImage::from_pixel(3, 3, image::Luma([v + i as u8]))
                    .save(c.join(format!("{i}.png")))
                    .unwrap();
            }
        }
        std::fs::write(d.join("train/cat/notes.txt"), "not an image").unwrap();
        std::fs::write(d.join("train/dog/broken.png"), b"\x89PNG\r\n\x1a\nbroken").unwrap();
        let (mut p, _) = quiet();
        let mut warnings = Vec::new();
        let f = read_image_folder(&d, &FolderOptions::default(), &mut p, |m: &str| {
            warnings.push(m.to_string())
        })
        .unwrap();
        assert_eq!(f.classes, vec!["cat", "dog"]);
        assert_eq!((f.train.count, f.test.count, f.train.shape), (5, 2, [1, 3, 3]));
        assert_eq!(f.train.labels.as_deref(), Some(&[0, 0, 0, 1, 1][..]));
        assert_eq!(f.test.labels.as_deref(), Some(&[0, 1][..]));
        assert_eq!(f.train.images.as_u8().unwrap()[0], 40);
        assert_eq!(f.skipped.len(), 2);
        assert!(
            warnings
                .iter()
                .any(|w| w.contains("notes.txt") && w.contains("not a PNG or JPEG")),
            "{warnings:?}"
        );
        let strict = FolderOptions {
            strict: true,
            ..Default::default()
        };
        let e = read_image_folder(&d, &strict, &mut p, |_: &str| {})
            .unwrap_err()
            .to_string();
        assert!(e.contains("--strict"), "{e}");
        // A JPEG of a flat grey is within ±2 grey levels.
        let j = dir("jpeg");
        for i in 0..2 {
            GrayImage::from_pixel(8, 8, image::Luma([123]))
                .save(j.join(format!("{i}.jpg")))
                .unwrap();
        }
        let f = read_image_folder(
            &j,
            &FolderOptions {
                test_split: 0.5,
                ..Default::default()
            },
            &mut p,
            |_: &str| {},
        )
        .unwrap();
        assert!(
            f.train.images.as_u8().unwrap().iter().all(|&v| v.abs_diff(123) <= 2),
            "{:?}",
            f.train.images
        );
        // Sizes that differ need --image-size; then they are resized.
        GrayImage::from_pixel(4, 8, image::Luma([9]))
            .save(j.join("2.png"))
            .unwrap();
        let e = read_image_folder(&j, &FolderOptions::default(), &mut p, |_: &str| {})
            .unwrap_err()
            .to_string();
        assert!(e.contains("--image-size"), "{e}");
        let sized = FolderOptions {
            size: Some((6, 6)),
            test_split: 0.5,
            ..Default::default()
        };
        let f = read_image_folder(&j, &sized, &mut p, |_: &str| {}).unwrap();
        assert_eq!(f.train.shape, [1, 6, 6]);
        // Empty, or no image at all.
        let empty = dir("empty");
        assert!(
            read_image_folder(&empty, &FolderOptions::default(), &mut p, |_: &str| {})
                .unwrap_err()
                .to_string()
                .contains("holds no files")
        );
        std::fs::write(empty.join("a.txt"), "x").unwrap();
        assert!(
            read_image_folder(&empty, &FolderOptions::default(), &mut p, |_: &str| {})
                .unwrap_err()
                .to_string()
                .contains("none of its 1 files")
        );
        for x in [d, j, empty] {
            std::fs::remove_dir_all(x).ok();
        }
    }
}
