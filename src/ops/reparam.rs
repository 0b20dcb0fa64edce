//! `shaders/reparam_kl.wgsl`: fused reparameterize + closed-form KL, forward and backward.

use crate::error::{Result, VaeError};
use crate::gpu::kernels::layout::{storage, uniform};
use crate::gpu::{grid_1d, Dispatch, Gpu, Shader, Tensor};
use crate::ops::step::StepBuffer;

/// Log-variance is clamped to this range before exp: σ² ∈ [e^-30, e^20] ≈ [9e-14, 5e8], so
/// neither σ nor σ² can overflow. Its gradient is zero where the clamp is active.
pub const LOGVAR_MIN: f32 = -30.0;
/// Upper end of the log-variance clamp; see [`LOGVAR_MIN`].
pub const LOGVAR_MAX: f32 = 20.0;

/// The sample index offset in the ε keys of a hierarchical VAE's upper layer (z₂), so that
/// its draws never repeat the lower layer's, which use offsets from 0 (one per sample).
pub const TOP_SAMPLE_BASE: u32 = 1 << 15;

/// The ε key's sample offset of upper stochastic layer `i` (z_{i+2}; z₂ has
/// [`TOP_SAMPLE_BASE`]): an upper layer draws once per row of the layer below (sample 0), so
/// consecutive offsets keep every layer's draws apart.
pub fn top_sample_base(i: usize) -> u32 {
    TOP_SAMPLE_BASE + i as u32
}

/// Most Monte Carlo or importance samples per example: the sample index shares a 16-bit field
/// of ε's key with [`TOP_SAMPLE_BASE`], so more would repeat z₂'s draws (and past 2¹⁶ run
/// into the stream's bits).
pub const MAX_SAMPLES: usize = TOP_SAMPLE_BASE as usize;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct ReparamParams {
    batch: u32,
    latent: u32,
    samples: u32,
    lv_min: f32,
    lv_max: f32,
    z_stride: u32,
    sample_base: u32,
    kl_scale: f32,
}

fn layout() -> [wgpu::BindGroupLayoutEntry; 7] {
    [
        uniform(0),
        uniform(1),
        storage(2, true),
        storage(3, false),
        storage(4, false),
        storage(5, false),
        storage(6, false),
    ]
}

fn check(label: &str, enc: &Tensor, z: &Tensor, samples: usize) -> Result<(usize, usize)> {
    let [b, z2] = *enc.shape() else {
        return Err(VaeError::Shape(format!(
            "{label}: encoder output must be [B, 2Z], got {:?}",
            enc.shape()
        )));
    };
    let ok = matches!(z.shape(), [r, w] if *r == samples * b && *w >= z2 / 2);
    if z2 % 2 != 0 || samples == 0 || samples > MAX_SAMPLES || !ok {
        return Err(VaeError::Shape(format!(
            "{label}: encoder output {:?} = [B, 2Z] needs z of [L·B, Z' ≥ Z] = [{}, {}+] with 1 <= L = {samples} <= {MAX_SAMPLES}; got {:?}",
            enc.shape(),
            samples * b,
            z2 / 2,
            z.shape()
        )));
    }
    Ok((b, z2 / 2))
}

fn z_stride(z: &Tensor) -> usize {
    z.shape().get(1).copied().unwrap_or(0)
}

#[allow(clippy::too_many_arguments)]
fn params(
    gpu: &Gpu,
    label: &str,
    b: usize,
    zd: usize,
    samples: usize,
    z_stride: usize,
    sample_base: u32,
    kl_scale: f32,
) -> Result<std::sync::Arc<crate::gpu::GpuBuffer>> {
    gpu.uniform(
        label,
        &ReparamParams {
            batch: b as u32,
            latent: zd as u32,
            samples: samples as u32,
            lv_min: LOGVAR_MIN,
            lv_max: LOGVAR_MAX,
            z_stride: z_stride as u32,
            sample_base,
            kl_scale,
        },
    )
}

/// Plans z = μ + σ·ε for L samples per example (rows sample-major, the first Z columns of each
/// row of `z` [L·B, Z']), the KL's terms kl [B·Z] (their sum is Σ_b KL_b) and, when given, the
/// terms of log p(z) − log q(z|x) in log_ratio [L·B·Z] (row sums over Z give the log-ratio).
#[allow(clippy::too_many_arguments)]
pub fn reparam_kl_forward(
    gpu: &Gpu,
    label: &str,
    step: &StepBuffer,
    enc: &Tensor,
    samples: usize,
    z: &Tensor,
    kl: &Tensor,
    log_ratio: Option<&Tensor>,
) -> Result<Dispatch> {
    reparam_kl_forward_at(gpu, label, step, enc, samples, z, kl, log_ratio, 0)
}

/// [`reparam_kl_forward`] with ε keyed from sample index `sample_base` on (see
/// [`TOP_SAMPLE_BASE`]); [`reparam_kl_backward_at`] must be given the same base.
#[allow(clippy::too_many_arguments)]
pub fn reparam_kl_forward_at(
    gpu: &Gpu,
    label: &str,
    step: &StepBuffer,
    enc: &Tensor,
    samples: usize,
    z: &Tensor,
    kl: &Tensor,
    log_ratio: Option<&Tensor>,
    sample_base: u32,
) -> Result<Dispatch> {
    draw(gpu, label, step, enc, samples, z, Some(kl), log_ratio, sample_base)
}

/// The draw of z shared by [`reparam_kl_forward_at`] and [`sample_forward_at`]: with `kl`
/// None the kernel is specialised not to write KL terms (`WRITE_KL`).
#[allow(clippy::too_many_arguments)]
fn draw(
    gpu: &Gpu,
    label: &str,
    step: &StepBuffer,
    enc: &Tensor,
    samples: usize,
    z: &Tensor,
    kl: Option<&Tensor>,
    log_ratio: Option<&Tensor>,
    sample_base: u32,
) -> Result<Dispatch> {
    let (b, zd) = check(label, enc, z, samples)?;
    if let Some(kl) = kl.filter(|kl| kl.len() != b * zd) {
        return Err(VaeError::Shape(format!(
            "{label}: kl must have B·Z = {} elements, got {:?}",
            b * zd,
            kl.shape()
        )));
    }
    if let Some(lr) = log_ratio {
        if lr.len() != samples * b * zd {
            return Err(VaeError::Shape(format!(
                "{label}: log_ratio must have L·B·Z = {} elements, got {:?}",
                samples * b * zd,
                lr.shape()
            )));
        }
    }
    let flag = |on: bool| if on { 1.0 } else { 0.0 };
    let constants = [
        ("LOG_RATIO", flag(log_ratio.is_some())),
        ("WRITE_KL", flag(kl.is_some())),
    ];
    let pipeline = gpu
        .kernels
        .pipeline(Shader::ReparamKl, "reparam_kl_forward", &constants, &layout())?;
    let ubuf = params(gpu, label, b, zd, samples, z_stride(z), sample_base, 1.0)?;
    let dw = gpu.dummy_write();
    let res = [
        ubuf.raw().as_entire_binding(),
        step.binding(),
        enc.binding(),
        z.binding(),
        kl.unwrap_or(dw).binding(),
        dw.binding(),
        log_ratio.unwrap_or(dw).binding(),
    ];
    let kl_bytes = if kl.is_some() { b * zd } else { 0 };
    let bytes = 4.0 * (2 * b * zd + kl_bytes + samples * b * zd) as f64;
    gpu.dispatch(
        label,
        pipeline,
        &res,
        Some(ubuf.clone()),
        grid_1d(b * zd, 64),
        0.0,
        bytes,
    )
}

/// Plans denc = [dμ | d log σ²] from dz (shape of z), with the KL weighted by the step's β.
pub fn reparam_kl_backward(
    gpu: &Gpu,
    label: &str,
    step: &StepBuffer,
    enc: &Tensor,
    samples: usize,
    dz: &Tensor,
    denc: &Tensor,
) -> Result<Dispatch> {
    reparam_kl_backward_at(gpu, label, step, enc, samples, dz, denc, 0, 1.0, None)
}

/// [`reparam_kl_backward`] for draws keyed from `sample_base` (see [`reparam_kl_forward_at`]),
/// with the KL's gradient weighted by `kl_scale` on top of β (1/L when the rows of `enc` are
/// themselves L draws of a layer below, whose terms the objective averages). With `weights`
/// ([L·B], the importance-weighted bound's normalized weights) each draw's sampled
/// log q − log p is weighted by its own weight instead, and β and `kl_scale` are not read.
#[allow(clippy::too_many_arguments)]
pub fn reparam_kl_backward_at(
    gpu: &Gpu,
    label: &str,
    step: &StepBuffer,
    enc: &Tensor,
    samples: usize,
    dz: &Tensor,
    denc: &Tensor,
    sample_base: u32,
    kl_scale: f32,
    weights: Option<&Tensor>,
) -> Result<Dispatch> {
    let (b, zd) = check(label, enc, dz, samples)?;
    if denc.shape() != enc.shape() {
        return Err(VaeError::Shape(format!(
            "{label}: gradient must be {:?}, got {:?}",
            enc.shape(),
            denc.shape()
        )));
    }
    let (weighted, weights) = weighting(label, weights, samples * b)?;
    let mut layout = layout().to_vec();
    layout.push(storage(11, true));
    let pipeline = gpu.kernels.pipeline(
        Shader::ReparamKl,
        "reparam_kl_backward",
        &[("WEIGHTED", weighted)],
        &layout,
    )?;
    let ubuf = params(gpu, label, b, zd, samples, z_stride(dz), sample_base, kl_scale)?;
    let dw = gpu.dummy_write();
    let res = [
        (0, ubuf.raw().as_entire_binding()),
        (1, step.binding()),
        (2, enc.binding()),
        (3, dz.binding()),
        (4, dw.binding()),
        (5, denc.binding()),
        (6, dw.binding()),
        (11, weights.unwrap_or(gpu.dummy_read()).binding()),
    ];
    gpu.dispatch_bound(
        label,
        pipeline,
        &res,
        Some(ubuf.clone()),
        grid_1d(b * zd, 64),
        0.0,
        4.0 * (4 * b * zd + samples * b * zd) as f64,
    )
}

/// The `WEIGHTED` constant and the binding-11 entry for per-draw weights: the importance-
/// weighted bound's normalized weight of each of the `rows` draws, which replaces β·kl_scale
/// (see reparam_kl.wgsl).
fn weighting<'a>(label: &str, weights: Option<&'a Tensor>, rows: usize) -> Result<(f64, Option<&'a Tensor>)> {
    match weights {
        Some(w) if w.len() != rows => Err(VaeError::Shape(format!(
            "{label}: the draws' weights must have {rows} elements, got {:?}",
            w.shape()
        ))),
        Some(w) => Ok((1.0, Some(w))),
        None => Ok((0.0, None)),
    }
}

/// Checks that every tensor in `same` has `want`'s element count.
fn check_len(label: &str, want: usize, same: &[(&str, &Tensor)]) -> Result<()> {
    for (name, t) in same {
        if t.len() != want {
            return Err(VaeError::Shape(format!(
                "{label}: {name} must have {want} elements, got {:?}",
                t.shape()
            )));
        }
    }
    Ok(())
}

/// A hierarchical VAE's z₁ = μ + σ·ε from `enc` [B, 2Z] into `z` [L·B, Z'] for L `samples`
/// (no KL terms: z₁'s prior term is [`hier_kl`]'s).
pub fn sample_forward(
    gpu: &Gpu,
    label: &str,
    step: &StepBuffer,
    enc: &Tensor,
    samples: usize,
    z: &Tensor,
) -> Result<Dispatch> {
    sample_forward_at(gpu, label, step, enc, samples, z, 0)
}

/// [`sample_forward`] with the ε keys' sample offset `sample_base` (an upper layer below the
/// top: see [`top_sample_base`]).
pub fn sample_forward_at(
    gpu: &Gpu,
    label: &str,
    step: &StepBuffer,
    enc: &Tensor,
    samples: usize,
    z: &Tensor,
    sample_base: u32,
) -> Result<Dispatch> {
    draw(gpu, label, step, enc, samples, z, None, None, sample_base)
}

/// The lower KL term of a hierarchical VAE (see reparam_kl.wgsl): from q(z₁|x)'s `enc`
/// [B, 2Z], the L `samples` of z₁ in `z` [L·B, Z'] and p(z₁|z₂)'s `prior` [L·B, 2Z] (one row
/// per draw), its terms `kl` [L·B·Z], the gradients weighted by the step's β·`kl_scale`,
/// `dprior` [L·B, 2Z] and `dz_kl` [L·B·Z], and when given the terms of
/// log p(z₁|z₂) − log q(z₁|x) in `log_ratio` [L·B·Z] (its ε keyed with `sample_base`, as z₁
/// was drawn). The same for any layer below the top: its q rows and one sample per row. With
/// `weights` [L·B] each row's gradients are weighted by its normalized weight instead of by
/// β·`kl_scale` (the sampled log q − log p has the ladder term's gradient).
#[allow(clippy::too_many_arguments)]
pub fn hier_kl(
    gpu: &Gpu,
    label: &str,
    step: &StepBuffer,
    enc: &Tensor,
    samples: usize,
    z: &Tensor,
    prior: &Tensor,
    kl: &Tensor,
    dprior: &Tensor,
    dz_kl: &Tensor,
    log_ratio: Option<&Tensor>,
    sample_base: u32,
    kl_scale: f32,
    weights: Option<&Tensor>,
) -> Result<Dispatch> {
    let (b, zd) = check(label, enc, z, samples)?;
    let r = samples * b;
    let (weighted, weights) = weighting(label, weights, r)?;
    check_len(label, r * zd, &[("the terms", kl), ("dz_kl", dz_kl)])?;
    if let Some(lr) = log_ratio {
        check_len(label, r * zd, &[("log_ratio", lr)])?;
    }
    let rows_2z = [r, 2 * zd];
    if prior.shape() != rows_2z || dprior.shape() != rows_2z {
        return Err(VaeError::Shape(format!(
            "{label}: the prior {:?} and its gradient {:?} must be [L·B, 2Z] = {rows_2z:?}",
            prior.shape(),
            dprior.shape(),
        )));
    }
    let layout = [
        uniform(0),
        uniform(1),
        storage(2, true),
        storage(3, false),
        storage(4, false),
        storage(6, false),
        storage(7, true),
        storage(8, false),
        storage(10, false),
        storage(11, true),
    ];
    let constants = [
        ("LOG_RATIO", if log_ratio.is_some() { 1.0 } else { 0.0 }),
        ("WEIGHTED", weighted),
    ];
    let pipeline = gpu
        .kernels
        .pipeline(Shader::ReparamKl, "hier_kl", &constants, &layout)?;
    let ubuf = params(gpu, label, b, zd, samples, z_stride(z), sample_base, kl_scale)?;
    let dw = gpu.dummy_write();
    let res = [
        (0, ubuf.raw().as_entire_binding()),
        (1, step.binding()),
        (2, enc.binding()),
        (3, z.binding()),
        (4, kl.binding()),
        (6, log_ratio.unwrap_or(dw).binding()),
        (7, prior.binding()),
        (8, dprior.binding()),
        (10, dz_kl.binding()),
        (11, weights.unwrap_or(gpu.dummy_read()).binding()),
    ];
    gpu.dispatch_bound(
        label,
        pipeline,
        &res,
        Some(ubuf.clone()),
        grid_1d(r * zd, 64),
        0.0,
        4.0 * (2 * b * zd + 8 * r * zd) as f64,
    )
}

/// The backward of [`sample_forward`] for L `samples`: denc [B, 2Z] from the sum, over the
/// draws, of the decoder's `dz` and the upper encoder's `dz_up` (both [L·B, Z'], the columns
/// past Z, a conditional model's one-hot, ignored) and [`hier_kl`]'s `dz_kl` [L·B·Z], plus
/// the entropy's −β/2 on log σ² times `entropy_scale` (1 for z₁, whose L draws' 1/L add up;
/// 1/L for a layer above, one draw per row), or with `weights` [L·B] each draw's −½ times
/// its normalized weight. ε is keyed with `sample_base`, as in the draw.
#[allow(clippy::too_many_arguments)]
pub fn sample_backward(
    gpu: &Gpu,
    label: &str,
    step: &StepBuffer,
    enc: &Tensor,
    samples: usize,
    dz: &Tensor,
    dz_up: &Tensor,
    dz_kl: &Tensor,
    denc: &Tensor,
    sample_base: u32,
    entropy_scale: f32,
    weights: Option<&Tensor>,
) -> Result<Dispatch> {
    let (b, zd) = check(label, enc, dz, samples)?;
    let (weighted, weights) = weighting(label, weights, samples * b)?;
    check_len(label, samples * b * zd, &[("dz_kl", dz_kl)])?;
    if dz_up.shape() != dz.shape() {
        return Err(VaeError::Shape(format!(
            "{label}: dz_up {:?} must be shaped as dz {:?}",
            dz_up.shape(),
            dz.shape()
        )));
    }
    if denc.shape() != enc.shape() {
        return Err(VaeError::Shape(format!(
            "{label}: gradient must be {:?}, got {:?}",
            enc.shape(),
            denc.shape()
        )));
    }
    let layout = [
        uniform(0),
        uniform(1),
        storage(2, true),
        storage(3, false),
        storage(5, false),
        storage(9, true),
        storage(10, false),
        storage(11, true),
    ];
    let pipeline = gpu
        .kernels
        .pipeline(Shader::ReparamKl, "sample_backward", &[("WEIGHTED", weighted)], &layout)?;
    let ubuf = params(gpu, label, b, zd, samples, z_stride(dz), sample_base, entropy_scale)?;
    let res = [
        (0, ubuf.raw().as_entire_binding()),
        (1, step.binding()),
        (2, enc.binding()),
        (3, dz.binding()),
        (5, denc.binding()),
        (9, dz_up.binding()),
        (10, dz_kl.binding()),
        (11, weights.unwrap_or(gpu.dummy_read()).binding()),
    ];
    gpu.dispatch_bound(
        label,
        pipeline,
        &res,
        Some(ubuf.clone()),
        grid_1d(b * zd, 64),
        0.0,
        4.0 * (4 * b * zd + 3 * samples * b * zd) as f64,
    )
}

/// Plans draws from the prior for generation into the first `latent` columns of `z` [B, Z']:
/// z = T·ε (N(0, I) at `temperature` T) when `p` is None, else z = μ + σ·T·ε from a
/// conditional prior's rows `p` [B, 2Z] = [μ | log σ²]. ε is keyed by the step's seed, step
/// and stream with sample index `sample_base` and element b·Z + j, the keys the host's
/// [`crate::infer::prior_samples`] and [`crate::infer::conditional_prior_draws`] use.
#[allow(clippy::too_many_arguments)]
pub fn prior_draw(
    gpu: &Gpu,
    label: &str,
    step: &StepBuffer,
    p: Option<&Tensor>,
    latent: usize,
    temperature: f32,
    sample_base: u32,
    z: &Tensor,
) -> Result<Dispatch> {
    let [b, width] = *z.shape() else {
        return Err(VaeError::Shape(format!(
            "{label}: z must be [B, Z'], got {:?}",
            z.shape()
        )));
    };
    if latent == 0 || width < latent || p.is_some_and(|p| p.shape() != [b, 2 * latent]) {
        return Err(VaeError::Shape(format!(
            "{label}: {latent} latent columns in z {:?}, with the prior's rows {:?} = [B, 2Z]",
            z.shape(),
            p.map(|p| p.shape().to_vec())
        )));
    }
    if !temperature.is_finite() || temperature < 0.0 {
        return Err(VaeError::Config(format!(
            "{label}: the temperature must be finite and ≥ 0, got {temperature}"
        )));
    }
    let constants = [("HAS_P", if p.is_some() { 1.0 } else { 0.0 })];
    let layout = [uniform(0), uniform(1), storage(2, true), storage(3, false)];
    let pipeline = gpu
        .kernels
        .pipeline(Shader::ReparamKl, "prior_draw", &constants, &layout)?;
    let ubuf = params(gpu, label, b, latent, 1, width, sample_base, temperature)?;
    let res = [
        (0, ubuf.raw().as_entire_binding()),
        (1, step.binding()),
        (2, p.unwrap_or(gpu.dummy_read()).binding()),
        (3, z.binding()),
    ];
    gpu.dispatch_bound(
        label,
        pipeline,
        &res,
        Some(ubuf.clone()),
        grid_1d((b * latent).max(1), 64),
        0.0,
        4.0 * (if p.is_some() { 3 } else { 1 } * b * latent) as f64,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ε's 16-bit sample field holds z₁'s draws 0..MAX_SAMPLES and then one offset per upper
    /// layer: the ranges must not meet, and the last must fit the field.
    #[test]
    fn sample_fields_of_the_layers_are_disjoint() {
        assert!(MAX_SAMPLES as u32 - 1 < top_sample_base(0));
        let last = top_sample_base(crate::model::MAX_TOP_LAYERS - 1);
        assert!(last < 1 << 16, "{last}");
        let bases: Vec<u32> = (0..crate::model::MAX_TOP_LAYERS).map(top_sample_base).collect();
        assert!(bases.windows(2).all(|w| w[0] < w[1]), "{bases:?}");
    }
}
