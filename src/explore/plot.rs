//! Scatter plots of 2-D latents coloured by class, rasterised in memory (no plotting
//! dependency) and written with [`write_rgb_png`].

use std::path::Path;

use crate::error::{Result, VaeError};
use crate::io::write_rgb_png;

/// Class colours, indexed by `label % 10`: matplotlib's "tab10" palette (blue, orange, green,
/// red, purple, brown, pink, grey, olive, cyan), chosen because its ten hues stay distinct from
/// each other and from the white background.
pub const PALETTE: [[u8; 3]; 10] = [
    [0x1f, 0x77, 0xb4],
    [0xff, 0x7f, 0x0e],
    [0x2c, 0xa0, 0x2c],
    [0xd6, 0x27, 0x28],
    [0x94, 0x67, 0xbd],
    [0x8c, 0x56, 0x4b],
    [0xe3, 0x77, 0xc2],
    [0x7f, 0x7f, 0x7f],
    [0xbc, 0xbd, 0x22],
    [0x17, 0xbe, 0xcf],
];

/// Smallest image side [`scatter_plot_rgb`] draws: below this the margins, frame and legend no
/// longer fit.
pub const MIN_PLOT_SIZE: usize = 64;

const BACKGROUND: [u8; 3] = [255, 255, 255];
/// Dark grey rather than black so the frame reads as a frame, not as data.
const FRAME: [u8; 3] = [64, 64, 64];
/// Radius of a point's disc in pixels: a pixel is painted when its centre lies within it.
const POINT_RADIUS: f32 = 2.0;
/// Quantiles that bound each axis, so a few outliers cannot squash the bulk of the data.
const CLIP_QUANTILES: (f64, f64) = (0.005, 0.995);

/// Pixel geometry of a square plot of side `size`, shared by drawing and tests.
struct Layout {
    size: usize,
    /// Frame lines at pixel rows/columns `frame` and `size − 1 − frame`.
    frame: usize,
    /// Continuous pixel span `[lo, hi]` that the clipped data range maps onto, on both axes;
    /// symmetric about `size / 2`, and clear of the frame by more than a point radius.
    lo: f32,
    hi: f32,
    /// Legend swatch side, gap between swatches, and top-left corner of the first swatch.
    swatch: usize,
    gap: usize,
    legend_x: usize,
    legend_y: usize,
}

impl Layout {
    fn new(size: usize) -> Layout {
        let size = size.max(MIN_PLOT_SIZE);
        let frame = (size / 16).max(8);
        let pad = (size / 40).max(4);
        let swatch = (frame / 2).clamp(3, 12);
        let gap = (swatch / 3).max(1);
        let legend_w = 10 * swatch + 9 * gap;
        Layout {
            size,
            frame,
            lo: (frame + 1 + pad) as f32,
            hi: (size - frame - 1 - pad) as f32,
            swatch,
            gap,
            // Bottom margin, right-aligned with the frame: outside the data area so the legend
            // never hides points.
            legend_x: size - frame - legend_w,
            legend_y: size - frame + (frame - swatch) / 2,
        }
    }
}

/// Linearly interpolated quantile `q` of ascending `sorted` (non-empty).
fn quantile(sorted: &[f32], q: f64) -> f64 {
    let pos = q * (sorted.len() - 1) as f64;
    let i = pos.floor() as usize;
    let j = (i + 1).min(sorted.len() - 1);
    let frac = pos - i as f64;
    sorted[i] as f64 + frac * (sorted[j] as f64 - sorted[i] as f64)
}

/// The plotted range of one axis: the clip quantiles of its values, widened to ±1 around a
/// single value (so a constant axis is drawn centred) and `[-1, 1]` when there are none.
fn axis_range(mut values: Vec<f32>) -> (f64, f64) {
    if values.is_empty() {
        return (-1.0, 1.0);
    }
    values.sort_unstable_by(f32::total_cmp);
    let lo = quantile(&values, CLIP_QUANTILES.0);
    let hi = quantile(&values, CLIP_QUANTILES.1);
    if hi > lo {
        (lo, hi)
    } else {
        (lo - 1.0, lo + 1.0)
    }
}

fn put(rgb: &mut [u8], size: usize, x: usize, y: usize, colour: [u8; 3]) {
    let at = 3 * (y * size + x);
    rgb[at..at + 3].copy_from_slice(&colour);
}

/// Rasterises a scatter plot of `points` coloured by `labels` into an RGB image; returns
/// `(rgb, width, height)` with `rgb` interleaved row-major, ready for [`write_rgb_png`].
///
/// The image is square with side `size` (at least [`MIN_PLOT_SIZE`]): a white background, a
/// thin dark-grey frame inside a margin, each point a filled disc of radius 2 px in colour
/// `PALETTE[label % 10]`, and a legend of the ten palette swatches, class 0 to 9 from left to
/// right, in the bottom margin at the right. The first coordinate runs left to right and the
/// second bottom to top. Each axis is scaled independently so that its 0.5 % to 99.5 %
/// quantiles span the framed area; points beyond are drawn clamped to the area's edge, so they
/// stay visible without stretching the scale. Points with a non-finite coordinate are skipped.
/// Points are drawn in order, later ones over earlier ones; the output is deterministic.
///
/// # Panics
/// If `points` and `labels` differ in length.
pub fn scatter_plot_rgb(points: &[[f32; 2]], labels: &[u32], size: usize) -> (Vec<u8>, usize, usize) {
    assert_eq!(
        points.len(),
        labels.len(),
        "scatter plot: {} points but {} labels",
        points.len(),
        labels.len()
    );
    let layout = Layout::new(size);
    let size = layout.size;
    let mut rgb = BACKGROUND.repeat(size * size);

    let (first, last) = (layout.frame, size - 1 - layout.frame);
    for i in first..=last {
        put(&mut rgb, size, i, first, FRAME);
        put(&mut rgb, size, i, last, FRAME);
        put(&mut rgb, size, first, i, FRAME);
        put(&mut rgb, size, last, i, FRAME);
    }

    let finite = || {
        points
            .iter()
            .zip(labels)
            .filter(|(p, _)| p[0].is_finite() && p[1].is_finite())
    };
    let (x0, x1) = axis_range(finite().map(|(p, _)| p[0]).collect());
    let (y0, y1) = axis_range(finite().map(|(p, _)| p[1]).collect());
    let span = (layout.hi - layout.lo) as f64;
    let r = POINT_RADIUS;
    let reach = r.ceil() as i64 + 1;
    for (p, &label) in finite() {
        let u = ((p[0] as f64 - x0) / (x1 - x0)).clamp(0.0, 1.0);
        let v = ((p[1] as f64 - y0) / (y1 - y0)).clamp(0.0, 1.0);
        let cx = (layout.lo as f64 + u * span) as f32;
        // Pixel rows grow downwards; the second coordinate grows upwards.
        let cy = (layout.hi as f64 - v * span) as f32;
        let colour = PALETTE[label as usize % PALETTE.len()];
        let (px, py) = (cx.floor() as i64, cy.floor() as i64);
        for y in py - reach..=py + reach {
            for x in px - reach..=px + reach {
                let (dx, dy) = (x as f32 + 0.5 - cx, y as f32 + 0.5 - cy);
                // The data area keeps discs clear of the image edge, so x and y are in range.
                if dx * dx + dy * dy <= r * r {
                    put(&mut rgb, size, x as usize, y as usize, colour);
                }
            }
        }
    }

    for (k, &colour) in PALETTE.iter().enumerate() {
        let left = layout.legend_x + k * (layout.swatch + layout.gap);
        for y in layout.legend_y..layout.legend_y + layout.swatch {
            for x in left..left + layout.swatch {
                put(&mut rgb, size, x, y, colour);
            }
        }
    }
    (rgb, size, size)
}

/// Draws [`scatter_plot_rgb`] and writes it to `path` as an RGB PNG (atomically). A length
/// mismatch between `points` and `labels` is a [`VaeError::Shape`].
pub fn write_scatter_png(path: &Path, points: &[[f32; 2]], labels: &[u32], size: usize) -> Result<()> {
    if points.len() != labels.len() {
        return Err(VaeError::Shape(format!(
            "a scatter plot needs one label per point ({} points, {} labels)",
            points.len(),
            labels.len()
        )));
    }
    let (rgb, width, height) = scatter_plot_rgb(points, labels, size);
    write_rgb_png(path, &rgb, width, height)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::test_util::unique_dir;

    fn pixel(rgb: &[u8], size: usize, x: usize, y: usize) -> [u8; 3] {
        let at = 3 * (y * size + x);
        [rgb[at], rgb[at + 1], rgb[at + 2]]
    }

    /// Pixels of `colour` strictly inside the frame, where only points are drawn.
    fn count_inside(rgb: &[u8], size: usize, colour: [u8; 3]) -> usize {
        let l = Layout::new(size);
        let (a, b) = (l.frame + 1, size - 1 - l.frame);
        (a..b)
            .flat_map(|y| (a..b).map(move |x| (x, y)))
            .filter(|&(x, y)| pixel(rgb, size, x, y) == colour)
            .count()
    }

    #[test]
    fn image_dimensions() {
        let pts = [[0.0f32, 1.0], [2.0, -1.0]];
        let (rgb, w, h) = scatter_plot_rgb(&pts, &[0, 1], 200);
        assert_eq!((w, h, rgb.len()), (200, 200, 200 * 200 * 3));
        let (rgb, w, h) = scatter_plot_rgb(&pts, &[0, 1], 10);
        assert_eq!(
            (w, h, rgb.len()),
            (MIN_PLOT_SIZE, MIN_PLOT_SIZE, MIN_PLOT_SIZE * MIN_PLOT_SIZE * 3)
        );
        // Every size from the minimum up lays out without indexing out of bounds.
        for size in MIN_PLOT_SIZE..300 {
            let (rgb, w, _) = scatter_plot_rgb(&pts, &[8, 9], size);
            assert_eq!(w, size);
            assert_eq!(pixel(&rgb, size, size - 1, size - 1), BACKGROUND);
        }
    }

    #[test]
    fn image_is_not_constant() {
        let pts: Vec<[f32; 2]> = (0..50).map(|i| [i as f32, (i * i) as f32]).collect();
        let labels: Vec<u32> = (0..50).map(|i| i % 10).collect();
        let (rgb, _, _) = scatter_plot_rgb(&pts, &labels, 128);
        assert!(rgb.chunks_exact(3).any(|p| *p != rgb[..3]));
        assert!(rgb.chunks_exact(3).any(|p| p == FRAME));
    }

    #[test]
    fn point_at_data_centre_colours_centre_pixel() {
        let size = 101;
        let (rgb, _, _) = scatter_plot_rgb(&[[3.0, -2.0]], &[7], size);
        assert_eq!(pixel(&rgb, size, size / 2, size / 2), PALETTE[7]);
        let pts = [[-1.0f32, -4.0], [1.0, 4.0], [0.0, 0.0]];
        for size in [128, 129] {
            let (rgb, _, _) = scatter_plot_rgb(&pts, &[0, 1, 5], size);
            assert_eq!(pixel(&rgb, size, size / 2, size / 2), PALETTE[5], "size {size}");
        }
    }

    #[test]
    fn point_of_class_3_uses_palette_3() {
        let size = 96;
        let pts = [[0.0f32, 0.0], [5.0, 5.0]];
        let (rgb, _, _) = scatter_plot_rgb(&pts, &[3, 3], size);
        // A disc of radius 2 covers about 4π ≈ 12.6 pixel centres; two discs, nothing else.
        let n = count_inside(&rgb, size, PALETTE[3]);
        assert!((20..=30).contains(&n), "{n} pixels of class 3");
        for (k, &c) in PALETTE.iter().enumerate().filter(|&(k, _)| k != 3) {
            assert_eq!(count_inside(&rgb, size, c), 0, "class {k}");
        }
        // Labels wrap around the palette.
        let (rgb13, _, _) = scatter_plot_rgb(&pts, &[13, 13], size);
        assert_eq!(rgb13, rgb);
    }

    #[test]
    fn legend_shows_every_colour() {
        let size = 256;
        let (rgb, _, _) = scatter_plot_rgb(&[], &[], size);
        let l = Layout::new(size);
        for (k, &c) in PALETTE.iter().enumerate() {
            let x = l.legend_x + k * (l.swatch + l.gap) + l.swatch / 2;
            assert_eq!(pixel(&rgb, size, x, l.legend_y + l.swatch / 2), c, "swatch {k}");
        }
        assert_eq!(count_inside(&rgb, size, BACKGROUND), (size - 2 * l.frame - 2).pow(2));
    }

    #[test]
    fn outliers_do_not_squash_the_bulk() {
        let size = 200;
        let mut pts: Vec<[f32; 2]> = (0..1000).map(|i| [(i as f32 / 999.0) * 2.0 - 1.0, 0.0]).collect();
        pts.push([1e6, 0.0]);
        pts.push([f32::NAN, 0.0]);
        let labels = vec![2u32; pts.len()];
        let (rgb, _, _) = scatter_plot_rgb(&pts, &labels, size);
        // The bulk covers most of the width despite the point a million units away.
        let row = size / 2;
        let xs: Vec<usize> = (0..size).filter(|&x| pixel(&rgb, size, x, row) == PALETTE[2]).collect();
        let l = Layout::new(size);
        assert!(
            xs.len() as f32 > 0.9 * (l.hi - l.lo),
            "{} of {} columns",
            xs.len(),
            l.hi - l.lo
        );
    }

    #[test]
    fn writes_png_and_rejects_mismatch() {
        let dir = unique_dir("explore-scatter");
        let path = dir.join("scatter.png");
        let pts = [[0.0f32, 0.0], [1.0, 2.0], [-3.0, 0.5]];
        write_scatter_png(&path, &pts, &[0, 4, 9], 80).unwrap();
        let img = image::open(&path).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (80, 80));
        assert_eq!(img.into_raw(), scatter_plot_rgb(&pts, &[0, 4, 9], 80).0);
        let err = write_scatter_png(&dir.join("bad.png"), &pts, &[0, 1], 80).unwrap_err();
        assert!(matches!(err, VaeError::Shape(_)), "{err}");
        assert!(!dir.join("bad.png").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
