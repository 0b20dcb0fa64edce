//! Pictures of a trained model's latent space, decoded on the GPU: interpolation strips, latent
//! arithmetic, a class grid (conditional models), the 2-D manifold and a hierarchical VAE's
//! two layers. Each returns a
//! [`Figure`] (images and grid layout) that [`Figure::write`] saves as a PNG.

use std::path::Path;

use crate::error::{Result, VaeError};
use crate::explore::interp::{class_means, interpolation_path, latent_arithmetic, manifold_grid};
use crate::gpu::Gpu;
use crate::infer::{conditional_prior_draws, decode_conditional, prior_latents, prior_samples};
use crate::io::{write_colour_grid_png, write_grid_png};
use crate::model::Vae;

/// Pixels between grid cells and around the border of a figure.
pub const FIGURE_PAD: usize = 2;

/// Decoded images laid out as a grid: `count` images of the model's pixels, `cols` per row.
#[derive(Clone, Debug, PartialEq)]
pub struct Figure {
    /// The images' pixels, image after image, each in [0, 1].
    pub images: Vec<f32>,
    /// How many images `images` holds.
    pub count: usize,
    /// Images per row of the grid.
    pub cols: usize,
}

impl Figure {
    /// Writes the grid as a PNG of cells of the model's image `shape` [C, H, W]: greyscale for
    /// one channel, RGB for three (see [`crate::io::grid_size`] for its size, with pad
    /// [`FIGURE_PAD`]).
    pub fn write(&self, path: &Path, shape: [usize; 3]) -> Result<()> {
        match shape {
            [1, h, w] => write_grid_png(path, &self.images, self.count, h, w, self.cols, FIGURE_PAD),
            [3, h, w] => write_colour_grid_png(path, &self.images, self.count, h, w, self.cols, FIGURE_PAD),
            _ => Err(VaeError::Shape(format!(
                "a figure draws images of 1 or 3 channels, got the shape {shape:?}"
            ))),
        }
    }
}

/// Decodes codes (n·Z values) with the labels a conditional model needs (ignored otherwise).
fn decode_with(gpu: &Gpu, vae: &Vae, z: &[f32], labels: &[u32]) -> Result<Vec<f32>> {
    if vae.config.classes > 0 {
        decode_conditional(gpu, vae, z, Some(labels))
    } else {
        decode_conditional(gpu, vae, z, None)
    }
}

fn code(means: &[f32], zd: usize, i: usize) -> Result<&[f32]> {
    means
        .get(i * zd..(i + 1) * zd)
        .ok_or_else(|| VaeError::Shape(format!("example {i} is past the {} encoded examples", means.len() / zd)))
}

/// Interpolation between the latent means of pairs of examples: for each pair, a row of
/// `steps` decodings along the straight line and a row along the great circle (slerp), the
/// end points being the pair's own codes. A conditional model decodes the whole path with the
/// first example's label, so the strip varies style, not class.
pub fn interpolation_figure(
    gpu: &Gpu,
    vae: &Vae,
    means: &[f32],
    labels: &[u32],
    pairs: &[(usize, usize)],
    steps: usize,
) -> Result<Figure> {
    let zd = vae.config.latent;
    if steps < 2 || pairs.is_empty() {
        return Err(VaeError::Config(
            "interpolation needs a pair of examples and at least 2 steps".into(),
        ));
    }
    let mut z = Vec::new();
    let mut y = Vec::new();
    for &(a, b) in pairs {
        let (za, zb) = (code(means, zd, a)?, code(means, zd, b)?);
        let label = labels.get(a).copied().unwrap_or(0);
        for spherical in [false, true] {
            z.extend(interpolation_path(za, zb, steps, spherical));
            y.extend(std::iter::repeat_n(label, steps));
        }
    }
    let count = z.len() / zd;
    Ok(Figure {
        images: decode_with(gpu, vae, &z, &y)?,
        count,
        cols: steps,
    })
}

/// Latent arithmetic with class means: one row per source example, showing its decoded code,
/// then z − mean(its class) + mean(class c) for every class c. Needs labels.
pub fn arithmetic_figure(
    gpu: &Gpu,
    vae: &Vae,
    means: &[f32],
    labels: &[u32],
    classes: usize,
    sources: &[usize],
) -> Result<Figure> {
    let zd = vae.config.latent;
    if labels.len() * zd != means.len() {
        return Err(VaeError::Config(
            "latent arithmetic needs a label for every encoded example".into(),
        ));
    }
    let centres = class_means(means, zd, labels, classes)?;
    let mut z = Vec::new();
    let mut y = Vec::new();
    for &i in sources {
        let zi = code(means, zd, i)?;
        let from = labels[i] as usize;
        z.extend_from_slice(zi);
        y.push(labels[i]);
        for c in 0..classes {
            z.extend(latent_arithmetic(
                zi,
                &centres[from * zd..(from + 1) * zd],
                &centres[c * zd..(c + 1) * zd],
            ));
            y.push(c as u32);
        }
    }
    Ok(Figure {
        images: decode_with(gpu, vae, &z, &y)?,
        count: sources.len() * (classes + 1),
        cols: classes + 1,
    })
}

/// A conditional model's classes: row c decodes the same `per_class` prior draws (scaled by
/// `temperature`) with label c, so columns hold style fixed while rows change the class. In a
/// hierarchical model the draws fixed along a column are the top layer's and the noise of every
/// layer below, each drawn from its conditional prior given class c.
pub fn class_figure(gpu: &Gpu, vae: &Vae, seed: u64, per_class: usize, temperature: f32) -> Result<Figure> {
    let classes = vae.config.classes;
    if classes == 0 {
        return Err(VaeError::Config("a class grid needs a conditional model".into()));
    }
    let zd = vae.config.latent;
    let mut z = Vec::with_capacity(classes * per_class * zd);
    let mut y = Vec::with_capacity(classes * per_class);
    for c in 0..classes {
        let labels = vec![c as u32; per_class];
        z.extend(prior_latents(gpu, vae, seed, per_class, temperature, Some(&labels))?);
        y.extend(labels);
    }
    Ok(Figure {
        images: decode_with(gpu, vae, &z, &y)?,
        count: classes * per_class,
        cols: per_class,
    })
}

/// The learned 2-D manifold: an n×n grid of decodings at the prior's quantiles (first latent
/// along columns, second decreasing down the rows); a conditional model uses `label`.
pub fn manifold_figure(gpu: &Gpu, vae: &Vae, n: usize, label: u32) -> Result<Figure> {
    if vae.config.latent != 2 || n == 0 {
        return Err(VaeError::Config(format!(
            "a manifold picture needs a 2-D latent (this model has {}) and n >= 1",
            vae.config.latent
        )));
    }
    let z: Vec<f32> = manifold_grid(n).into_iter().flatten().collect();
    let y = vec![label; n * n];
    Ok(Figure {
        images: decode_with(gpu, vae, &z, &y)?,
        count: n * n,
        cols: n,
    })
}

/// A hierarchical VAE's layers apart: row r decodes `cols` draws of the layers below the
/// top for one draw of the topmost layer (row r of [`prior_samples`]; z₂ with two layers), so
/// a row shows what the top holds fixed and its columns what the layers below add; a
/// conditional model gives row r the class r mod classes. All noise is scaled by
/// `temperature`.
pub fn hierarchy_figure(gpu: &Gpu, vae: &Vae, seed: u64, rows: usize, cols: usize, temperature: f32) -> Result<Figure> {
    let Some(t) = vae.config.top().last() else {
        return Err(VaeError::Config(
            "a hierarchy picture needs a hierarchical VAE (Code::Hierarchical)".into(),
        ));
    };
    if rows == 0 || cols == 0 {
        return Err(VaeError::Config("a hierarchy picture needs rows and columns".into()));
    }
    let z2 = prior_samples(seed, rows, t.latent, temperature);
    let repeated: Vec<f32> = z2
        .chunks_exact(t.latent)
        .flat_map(|row| std::iter::repeat_n(row, cols).flatten().copied())
        .collect();
    let classes = vae.config.classes;
    let labels: Option<Vec<u32>> =
        (classes > 0).then(|| (0..rows * cols).map(|i| ((i / cols) % classes) as u32).collect());
    let z1 = conditional_prior_draws(gpu, vae, &repeated, labels.as_deref(), seed, temperature)?;
    Ok(Figure {
        images: decode_conditional(gpu, vae, &z1, labels.as_deref())?,
        count: rows * cols,
        cols,
    })
}
