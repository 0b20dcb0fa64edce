//! PNG output: grids of greyscale samples or reconstructions, and raw RGB images for plots.

use image::codecs::png::PngEncoder;
use image::{ExtendedColorType, ImageEncoder, ImageError};

use std::path::Path;

use crate::error::{Result, VaeError};

/// Grey level of the padding around and between grid cells, and of unused cells in the last row.
///
/// Mid-grey rather than black because the images this crate draws (MNIST-style digits) have
/// black backgrounds: black padding would make neighbouring cells run together.
pub const GRID_PAD_VALUE: u8 = 128;

/// Exact grid dimensions `(width, height)` in pixels, or `None` on arithmetic overflow.
fn grid_dims(count: usize, height: usize, width: usize, cols: usize, pad: usize) -> Option<(usize, usize)> {
    let rows = if cols == 0 { 0 } else { count.div_ceil(cols) };
    let span = |cells: usize, cell: usize| -> Option<usize> {
        cells
            .checked_mul(cell)?
            .checked_add(cells.checked_add(1)?.checked_mul(pad)?)
    };
    Some((span(cols, width)?, span(rows, height)?))
}

/// Pixel size `(width, height)` of the PNG that [`write_grid_png`] writes, so callers and tests
/// need not repeat the layout rule.
///
/// The grid always has `cols` columns and `ceil(count / cols)` rows, with `pad` pixels before,
/// between and after cells in both directions: `width = cols*width + (cols+1)*pad` and
/// `height = rows*height + (rows+1)*pad`. Degenerate inputs (`count` or `cols` zero) give the
/// size of an empty grid, which `write_grid_png` rejects; sizes that overflow saturate at
/// `usize::MAX`.
pub fn grid_size(count: usize, height: usize, width: usize, cols: usize, pad: usize) -> (usize, usize) {
    grid_dims(count, height, width, cols, pad).unwrap_or((usize::MAX, usize::MAX))
}

/// Maps a grey value in [0, 1] to 8 bits; out-of-range values clamp and NaN becomes black, so a
/// diverging model still produces a viewable image.
fn grey_to_u8(v: f32) -> u8 {
    if v.is_nan() {
        0
    } else {
        (v.clamp(0.0, 1.0) * 255.0).round() as u8
    }
}

fn image_to_io(e: ImageError) -> std::io::Error {
    match e {
        ImageError::IoError(e) => e,
        other => std::io::Error::other(other.to_string()),
    }
}

/// Checks that PNG dimensions fit the format's `u32` fields and the pixel buffer fits memory.
fn png_dims(width: usize, height: usize, what: &str) -> Result<(u32, u32)> {
    match (u32::try_from(width), u32::try_from(height)) {
        (Ok(w), Ok(h)) if width.checked_mul(height).is_some() => Ok((w, h)),
        _ => Err(VaeError::Shape(format!(
            "{what} of {width}×{height} pixels is too large for a PNG"
        ))),
    }
}

/// Writes `count` greyscale images as one 8-bit greyscale PNG grid, for eyeballing samples and
/// reconstructions during training.
///
/// `images` holds `count × height × width` values in [0, 1], image after image, each row-major.
/// Image `i` goes to row `i / cols`, column `i % cols`; the layout and size are those of
/// [`grid_size`]. Padding and unused cells are [`GRID_PAD_VALUE`]. Values are mapped with
/// `round(v * 255)` after clamping to [0, 1]; NaN is drawn as 0. The file is written atomically
/// (temp file beside `path`, then rename). A length mismatch or a zero `count`, `cols`, `height`
/// or `width` is a [`VaeError::Shape`].
pub fn write_grid_png(
    path: &Path,
    images: &[f32],
    count: usize,
    height: usize,
    width: usize,
    cols: usize,
    pad: usize,
) -> Result<()> {
    write_grid(path, images, count, height, width, 1, cols, pad)
}

/// [`write_grid_png`] for colour images: `images` holds `count × height × width × 3` values in
/// [0, 1], each pixel's red, green and blue interleaved; the grid is one 8-bit RGB PNG with
/// the same layout ([`grid_size`]) and grey padding.
pub fn write_colour_grid_png(
    path: &Path,
    images: &[f32],
    count: usize,
    height: usize,
    width: usize,
    cols: usize,
    pad: usize,
) -> Result<()> {
    write_grid(path, images, count, height, width, 3, cols, pad)
}

/// The grid of [`write_grid_png`] (`channels` 1, 8-bit grey) or [`write_colour_grid_png`]
/// (`channels` 3, 8-bit RGB, values interleaved per pixel).
#[allow(clippy::too_many_arguments)]
fn write_grid(
    path: &Path,
    images: &[f32],
    count: usize,
    height: usize,
    width: usize,
    channels: usize,
    cols: usize,
    pad: usize,
) -> Result<()> {
    if count == 0 || cols == 0 {
        return Err(VaeError::Shape(format!(
            "an image grid needs at least one image and one column (got {count} images, {cols} \
             columns)"
        )));
    }
    if height == 0 || width == 0 {
        return Err(VaeError::Shape(format!(
            "grid cells must be at least 1×1 pixels (got {height}×{width})"
        )));
    }
    let per_image = height.checked_mul(width).and_then(|n| n.checked_mul(channels));
    if per_image.and_then(|n| n.checked_mul(count)) != Some(images.len()) {
        return Err(VaeError::Shape(format!(
            "{} values given for {count} images of {height}×{width} ({channels} per pixel)",
            images.len()
        )));
    }
    let (grid_w, grid_h) = grid_dims(count, height, width, cols, pad)
        .ok_or_else(|| VaeError::Shape("image grid size overflows".to_string()))?;
    let (png_w, png_h) = png_dims(grid_w, grid_h, "an image grid")?;
    let row = width * channels;
    let mut canvas = vec![GRID_PAD_VALUE; grid_w * grid_h * channels];
    for (i, image) in images.chunks_exact(height * row).enumerate() {
        let x0 = pad + (i % cols) * (width + pad);
        let y0 = pad + (i / cols) * (height + pad);
        for (y, src) in image.chunks_exact(row).enumerate() {
            let start = ((y0 + y) * grid_w + x0) * channels;
            for (dst, &v) in canvas[start..start + row].iter_mut().zip(src) {
                *dst = grey_to_u8(v);
            }
        }
    }
    let colour = if channels == 1 {
        ExtendedColorType::L8
    } else {
        ExtendedColorType::Rgb8
    };
    super::write_atomically(path, |w| {
        PngEncoder::new(w)
            .write_image(&canvas, png_w, png_h, colour)
            .map_err(image_to_io)
    })
}

/// Writes an 8-bit RGB PNG from interleaved `rgb` bytes (row-major, 3 per pixel), for plots the
/// caller rasterises itself such as latent-space scatter plots. Written atomically like
/// [`write_grid_png`]; a length mismatch or zero dimension is a [`VaeError::Shape`].
pub fn write_rgb_png(path: &Path, rgb: &[u8], width: usize, height: usize) -> Result<()> {
    if width == 0 || height == 0 {
        return Err(VaeError::Shape(format!(
            "an RGB image must be at least 1×1 pixels (got {width}×{height})"
        )));
    }
    let expected = width.checked_mul(height).and_then(|n| n.checked_mul(3));
    if expected != Some(rgb.len()) {
        return Err(VaeError::Shape(format!(
            "{} bytes given for a {width}×{height} RGB image, which needs 3 per pixel",
            rgb.len()
        )));
    }
    let (png_w, png_h) = png_dims(width, height, "an RGB image")?;
    super::write_atomically(path, |w| {
        PngEncoder::new(w)
            .write_image(rgb, png_w, png_h, ExtendedColorType::Rgb8)
            .map_err(image_to_io)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::test_util::{dir_entries, unique_dir};

    #[test]
    fn grid_size_follows_documented_rule() {
        // 3 images of 2×3 in 2 columns with 1 px padding: 2 rows.
        assert_eq!(grid_size(3, 2, 3, 2, 1), (2 * 3 + 3, 2 * 2 + 3));
        assert_eq!(grid_size(4, 28, 28, 2, 0), (56, 56));
        assert_eq!(grid_size(1, 5, 7, 4, 2), (4 * 7 + 5 * 2, 5 + 2 * 2));
        assert_eq!(grid_size(0, 5, 7, 4, 2), (4 * 7 + 5 * 2, 2));
        assert_eq!(grid_size(3, 5, 7, 0, 2), (2, 2));
        assert_eq!(grid_size(usize::MAX, 2, 2, 1, 1), (usize::MAX, usize::MAX));
    }

    #[test]
    fn colour_grid_keeps_each_channel() {
        let dir = unique_dir("png-colour");
        let path = dir.join("grid.png");
        // Two 1×2 images in 2 columns, 1 px padding: 2·2 + 3 = 7 wide, 1 + 2 = 3 high.
        let images = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.5, 0.5, 0.5];
        write_colour_grid_png(&path, &images, 2, 1, 2, 2, 1).unwrap();
        let img = image::open(&path).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (7, 3));
        assert_eq!(img.get_pixel(1, 1).0, [255, 0, 0]);
        assert_eq!(img.get_pixel(2, 1).0, [0, 255, 0]);
        assert_eq!(img.get_pixel(4, 1).0, [0, 0, 255]);
        assert_eq!(img.get_pixel(5, 1).0, [128, 128, 128]);
        assert_eq!(img.get_pixel(0, 0).0, [GRID_PAD_VALUE; 3]);
        assert!(write_colour_grid_png(&path, &images[..9], 2, 1, 2, 2, 1).is_err());
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn grid_round_trips_through_image_open() {
        let dir = unique_dir("png-grid");
        let path = dir.join("grid.png");
        let (count, h, w, cols, pad) = (3, 2, 3, 2, 1);
        #[rustfmt::skip]
        let images: Vec<f32> = vec![
            // image 0: includes clamping and NaN
            0.0, 0.2, 0.5,
            1.0, -0.5, 1.5,
            // image 1
            0.1, 0.3, f32::NAN,
            0.7, 0.9, 0.999,
            // image 2
            0.25, 0.75, 0.004,
            0.6, 0.8, 0.333,
        ];
        write_grid_png(&path, &images, count, h, w, cols, pad).unwrap();
        assert_eq!(dir_entries(&dir), vec!["grid.png".to_string()]);

        let img = image::open(&path).unwrap();
        assert_eq!(img.color(), image::ColorType::L8);
        let grey = img.to_luma8();
        let (gw, gh) = grid_size(count, h, w, cols, pad);
        assert_eq!((grey.width() as usize, grey.height() as usize), (gw, gh));

        let expected_at = |v: f32| -> u8 {
            if v.is_nan() {
                0
            } else {
                (v.clamp(0.0, 1.0) * 255.0).round() as u8
            }
        };
        let mut is_cell = vec![false; gw * gh];
        for i in 0..count {
            let (x0, y0) = (pad + (i % cols) * (w + pad), pad + (i / cols) * (h + pad));
            for y in 0..h {
                for x in 0..w {
                    let v = images[i * h * w + y * w + x];
                    let px = grey.get_pixel((x0 + x) as u32, (y0 + y) as u32).0[0];
                    assert_eq!(px, expected_at(v), "image {i} pixel ({x},{y}) value {v}");
                    is_cell[(y0 + y) * gw + x0 + x] = true;
                }
            }
        }
        // Spot checks written out by hand: image 0 at (1, 1), image 1 at (4, 1), image 2 at
        // (1, 4); 0.2 → 51, 0.5 → 127.5 → 128, -0.5 → 0, 1.5 → 255, NaN → 0.
        assert_eq!(grey.get_pixel(2, 1).0[0], 51);
        assert_eq!(grey.get_pixel(3, 1).0[0], 128);
        assert_eq!(grey.get_pixel(2, 2).0[0], 0);
        assert_eq!(grey.get_pixel(3, 2).0[0], 255);
        assert_eq!(grey.get_pixel(7, 1).0[0], 0);
        assert_eq!(grey.get_pixel(1, 4).0[0], 64);
        // Everything else — padding and the unused fourth cell — is the pad value.
        for (idx, p) in grey.pixels().enumerate() {
            if !is_cell[idx] {
                assert_eq!(p.0[0], GRID_PAD_VALUE, "pixel ({}, {})", idx % gw, idx / gw);
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn grid_without_padding_tiles_images() {
        let dir = unique_dir("png-nopad");
        let path = dir.join("g.png");
        let images = [0.0, 1.0, 1.0, 0.0];
        write_grid_png(&path, &images, 4, 1, 1, 2, 0).unwrap();
        let grey = image::open(&path).unwrap().to_luma8();
        assert_eq!(grey.dimensions(), (2, 2));
        assert_eq!(grey.into_raw(), vec![0, 255, 255, 0]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn grid_overwrites_atomically() {
        let dir = unique_dir("png-atomic");
        let path = dir.join("g.png");
        write_grid_png(&path, &[0.0; 4], 1, 2, 2, 1, 1).unwrap();
        write_grid_png(&path, &[1.0; 8], 2, 2, 2, 2, 0).unwrap();
        let grey = image::open(&path).unwrap().to_luma8();
        assert_eq!(grey.dimensions(), (4, 2));
        assert!(grey.pixels().all(|p| p.0[0] == 255));
        assert_eq!(dir_entries(&dir), vec!["g.png".to_string()]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn grid_rejects_bad_shapes_and_writes_nothing() {
        let dir = unique_dir("png-reject");
        let path = dir.join("g.png");
        let cases: [(&[f32], usize, usize, usize, usize); 6] = [
            (&[0.0; 5], 1, 2, 3, 1), // too few values
            (&[0.0; 7], 1, 2, 3, 1), // too many values
            (&[], 0, 2, 3, 1),       // no images
            (&[0.0; 6], 1, 2, 3, 0), // no columns
            (&[], 1, 0, 3, 1),       // zero height
            (&[], 3, 2, 0, 1),       // zero width
        ];
        for (images, count, h, w, cols) in cases {
            let err = write_grid_png(&path, images, count, h, w, cols, 1).unwrap_err();
            assert!(matches!(err, VaeError::Shape(_)), "{err}");
        }
        let err = write_grid_png(&path, &[0.0; 2], 2, 1, 1, 1, usize::MAX).unwrap_err();
        assert!(matches!(err, VaeError::Shape(_)), "{err}");
        assert!(dir_entries(&dir).is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn rgb_round_trip_and_rejection() {
        let dir = unique_dir("png-rgb");
        let path = dir.join("plot.png");
        let rgb: Vec<u8> = (0..3 * 2 * 3).map(|i| (i * 13) as u8).collect();
        write_rgb_png(&path, &rgb, 3, 2).unwrap();
        let img = image::open(&path).unwrap();
        assert_eq!(img.color(), image::ColorType::Rgb8);
        let img = img.to_rgb8();
        assert_eq!(img.dimensions(), (3, 2));
        assert_eq!(img.into_raw(), rgb);
        assert_eq!(dir_entries(&dir), vec!["plot.png".to_string()]);

        for (len, w, h) in [(17, 3, 2), (0, 0, 0), (3, 1, 0)] {
            let err = write_rgb_png(&dir.join("bad.png"), &vec![0; len], w, h).unwrap_err();
            assert!(matches!(err, VaeError::Shape(_)), "{err}");
        }
        assert_eq!(dir_entries(&dir), vec!["plot.png".to_string()]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_directory_is_an_io_error() {
        let dir = unique_dir("png-missing");
        let path = dir.join("no/such/dir/g.png");
        let err = write_grid_png(&path, &[0.5], 1, 1, 1, 1, 0).unwrap_err();
        assert!(matches!(err, VaeError::Io { .. }), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
