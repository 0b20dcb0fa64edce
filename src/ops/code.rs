//! `shaders/code.wgsl`: the codes of models without a prior, forward and backward (the
//! counterpart of [`crate::ops::reparam_kl_forward`]): an autoencoder's deterministic code and
//! its L1 penalty, the contractive penalty's elementwise step, and the VQ-VAE's quantization.

use crate::error::{Result, VaeError};
use crate::gpu::kernels::layout::{storage, uniform};
use crate::gpu::{grid_1d, Dispatch, Gpu, Shader, Tensor};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct CodeParams {
    batch: u32,
    latent: u32,
    z_stride: u32,
    l1: f32,
}

fn layout() -> [wgpu::BindGroupLayoutEntry; 5] {
    [
        uniform(0),
        storage(1, true),
        storage(2, false),
        storage(3, false),
        storage(4, false),
    ]
}

/// The batch and code width of `enc` [B, Z], checked against `z` [B, Z' ≥ Z].
fn check(label: &str, enc: &Tensor, z: &Tensor) -> Result<(usize, usize, usize)> {
    match (enc.shape(), z.shape()) {
        ([b, zd], [r, zs]) if r == b && zs >= zd && *zd > 0 => Ok((*b, *zd, *zs)),
        _ => Err(VaeError::Shape(format!(
            "{label}: the code {:?} = [B, Z] needs z of [B, Z' ≥ Z], got {:?}",
            enc.shape(),
            z.shape()
        ))),
    }
}

/// Plans z\[b, ..Z\] = enc\[b\] and the penalty's terms pen \[B·Z\] = l1·|enc|.
pub fn code_forward(gpu: &Gpu, label: &str, enc: &Tensor, l1: f32, z: &Tensor, pen: &Tensor) -> Result<Dispatch> {
    let (b, zd, zs) = check(label, enc, z)?;
    if pen.len() != b * zd {
        return Err(VaeError::Shape(format!(
            "{label}: the penalty's terms need B·Z = {} elements, got {:?}",
            b * zd,
            pen.shape()
        )));
    }
    plan_code(
        gpu,
        label,
        "code_forward",
        l1,
        (b, zd, zs),
        [enc, z, pen, gpu.dummy_write()],
    )
}

/// Plans denc [B, Z] = dz[b, ..Z] + l1·sign(enc) from the decoder's input gradient `dz`.
pub fn code_backward(gpu: &Gpu, label: &str, enc: &Tensor, l1: f32, dz: &Tensor, denc: &Tensor) -> Result<Dispatch> {
    let (b, zd, zs) = check(label, enc, dz)?;
    if denc.shape() != enc.shape() {
        return Err(VaeError::Shape(format!(
            "{label}: gradient must be {:?}, got {:?}",
            enc.shape(),
            denc.shape()
        )));
    }
    plan_code(
        gpu,
        label,
        "code_backward",
        l1,
        (b, zd, zs),
        [enc, dz, gpu.dummy_write(), denc],
    )
}

/// One of the two code entries over B·Z invocations, its four buffers at bindings 1–4 (the
/// one it does not use bound to the dummy).
fn plan_code(
    gpu: &Gpu,
    label: &str,
    entry: &str,
    l1: f32,
    (b, zd, zs): (usize, usize, usize),
    buffers: [&Tensor; 4],
) -> Result<Dispatch> {
    let pipeline = gpu.kernels.pipeline(Shader::Code, entry, &[], &layout())?;
    let ubuf = gpu.uniform(label, &params(b, zd, zs, l1))?;
    let mut res = vec![ubuf.raw().as_entire_binding()];
    res.extend(buffers.iter().map(|t| t.binding()));
    let bytes = 4.0 * (3 * b * zd) as f64;
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

fn params(b: usize, zd: usize, zs: usize, l1: f32) -> CodeParams {
    CodeParams {
        batch: b as u32,
        latent: zd as u32,
        z_stride: zs as u32,
        l1,
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct ContractiveParams {
    count: u32,
    weight: f32,
    _pad: [u32; 2],
}

/// The contractive penalty's elementwise step (see code.wgsl): from S = MᵀM, G1 = W1ᵀW1 and
/// G2 = W2W2ᵀ (all [H, H]) writes the penalty's terms c·S·G1·G2 and the factors A1 = 2c·S·G2,
/// A2 = 2c·S·G1 of its gradients W1·A1 and A2·W2.
#[allow(clippy::too_many_arguments)]
pub fn contractive(
    gpu: &Gpu,
    label: &str,
    weight: f32,
    s: &Tensor,
    g1: &Tensor,
    g2: &Tensor,
    terms: &Tensor,
    a1: &Tensor,
    a2: &Tensor,
) -> Result<Dispatch> {
    let n = s.len();
    let square = matches!(s.shape(), [h, w] if h == w);
    if !square || [g1, g2, a1, a2].iter().any(|t| t.shape() != s.shape()) || terms.len() != n {
        return Err(VaeError::Shape(format!(
            "{label}: S {:?}, G1 {:?}, G2 {:?}, A1 {:?} and A2 {:?} must be one square shape, and the \
             terms {n} values (got {:?})",
            s.shape(),
            g1.shape(),
            g2.shape(),
            a1.shape(),
            a2.shape(),
            terms.shape()
        )));
    }
    let layout = [
        uniform(0),
        storage(5, true),
        storage(6, true),
        storage(7, true),
        storage(8, false),
        storage(9, false),
        storage(10, false),
    ];
    let pipeline = gpu.kernels.pipeline(Shader::Code, "contractive", &[], &layout)?;
    let ubuf = gpu.uniform(
        label,
        &ContractiveParams {
            count: n as u32,
            weight,
            _pad: [0; 2],
        },
    )?;
    let res = [
        (0, ubuf.raw().as_entire_binding()),
        (5, s.binding()),
        (6, g1.binding()),
        (7, g2.binding()),
        (8, terms.binding()),
        (9, a1.binding()),
        (10, a2.binding()),
    ];
    gpu.dispatch_bound(
        label,
        pipeline,
        &res,
        Some(ubuf.clone()),
        grid_1d(n, 64),
        0.0,
        24.0 * n as f64,
    )
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct VqParams {
    batch: u32,
    latent: u32,
    groups: u32,
    codes: u32,
    z_stride: u32,
    commitment: f32,
    scale: f32,
    decay: f32,
}

/// A VQ-VAE's codebook and the shapes of its quantization: `enc` [B, Z] in groups of d,
/// `codebook` [K, d], `idx` [B·G].
struct Vq {
    b: usize,
    zd: usize,
    groups: usize,
    codes: usize,
}

fn check_vq(label: &str, enc: &Tensor, codebook: &Tensor, groups: usize, idx: &Tensor) -> Result<Vq> {
    let ok = |b: usize, zd: usize| {
        groups > 0
            && zd.is_multiple_of(groups)
            && matches!(codebook.shape(), [k, d] if *d == zd / groups && *k > 0)
            && idx.len() == b * groups
    };
    match enc.shape() {
        [b, zd] if ok(*b, *zd) => Ok(Vq {
            b: *b,
            zd: *zd,
            groups,
            codes: codebook.shape()[0],
        }),
        _ => Err(VaeError::Shape(format!(
            "{label}: z_e {:?} = [B, Z] in {groups} groups needs a codebook [K, Z/{groups}] (got {:?}) \
             and B·G = {} indices (got {:?})",
            enc.shape(),
            codebook.shape(),
            enc.shape().first().copied().unwrap_or(0) * groups,
            idx.shape()
        ))),
    }
}

fn vq_uniform(
    gpu: &Gpu,
    label: &str,
    q: &Vq,
    z_stride: usize,
    commitment: f32,
    scale: f32,
    decay: f32,
) -> Result<std::sync::Arc<crate::gpu::GpuBuffer>> {
    gpu.uniform(
        label,
        &VqParams {
            batch: q.b as u32,
            latent: q.zd as u32,
            groups: q.groups as u32,
            codes: q.codes as u32,
            z_stride: z_stride as u32,
            commitment,
            scale,
            decay,
        },
    )
}

/// Plans the quantization of z_e = `enc` [B, Z] (see code.wgsl): z [B, Z' ≥ Z] gets the
/// nearest codebook entries, `idx` [B·G] their indices and `pen` [B·Z] the terms of
/// s(1 + β)‖z_e − e‖², s = `scale` (the model uses D/Z).
#[allow(clippy::too_many_arguments)]
pub fn vq_forward(
    gpu: &Gpu,
    label: &str,
    enc: &Tensor,
    codebook: &Tensor,
    groups: usize,
    commitment: f32,
    scale: f32,
    z: &Tensor,
    pen: &Tensor,
    idx: &Tensor,
) -> Result<Dispatch> {
    let q = check_vq(label, enc, codebook, groups, idx)?;
    let (_, _, zs) = check(label, enc, z)?;
    if pen.len() != q.b * q.zd {
        return Err(VaeError::Shape(format!(
            "{label}: the penalty's terms need B·Z = {} elements, got {:?}",
            q.b * q.zd,
            pen.shape()
        )));
    }
    let layout = [
        uniform(0),
        storage(1, true),
        storage(2, false),
        storage(3, false),
        storage(11, true),
        storage(12, false),
    ];
    let pipeline = gpu.kernels.pipeline(Shader::Code, "vq_forward", &[], &layout)?;
    let ubuf = vq_uniform(gpu, label, &q, zs, commitment, scale, 0.0)?;
    let res = [
        (0, ubuf.raw().as_entire_binding()),
        (1, enc.binding()),
        (2, z.binding()),
        (3, pen.binding()),
        (11, codebook.binding()),
        (12, idx.binding()),
    ];
    let flops = 3.0 * (q.b * q.zd * q.codes) as f64;
    gpu.dispatch_bound(
        label,
        pipeline,
        &res,
        Some(ubuf.clone()),
        grid_1d(q.b * q.groups, 64),
        flops,
        4.0 * (3 * q.b * q.zd) as f64,
    )
}

/// Plans the VQ backward: `denc` [B, Z] = dz (straight through) + 2sβ(z_e − e), and the
/// codebook's gradient `dcodebook` [K, d] = s·Σ over the entries' assignments of 2(e − z_e).
#[allow(clippy::too_many_arguments)]
pub fn vq_backward(
    gpu: &Gpu,
    label: &str,
    enc: &Tensor,
    codebook: &Tensor,
    groups: usize,
    commitment: f32,
    scale: f32,
    idx: &Tensor,
    dz: &Tensor,
    denc: &Tensor,
    dcodebook: Option<&Tensor>,
) -> Result<Vec<Dispatch>> {
    let q = check_vq(label, enc, codebook, groups, idx)?;
    let (_, _, zs) = check(label, enc, dz)?;
    if denc.shape() != enc.shape() || dcodebook.is_some_and(|t| t.shape() != codebook.shape()) {
        return Err(VaeError::Shape(format!(
            "{label}: gradients must be {:?} and {:?}, got {:?} and {}",
            enc.shape(),
            codebook.shape(),
            denc.shape(),
            dcodebook.map_or("none".to_string(), |t| format!("{:?}", t.shape()))
        )));
    }
    let ubuf = vq_uniform(gpu, label, &q, zs, commitment, scale, 0.0)?;
    let layout = [
        uniform(0),
        storage(1, true),
        storage(2, false),
        storage(4, false),
        storage(11, true),
        storage(12, false),
    ];
    let pipeline = gpu.kernels.pipeline(Shader::Code, "vq_backward", &[], &layout)?;
    let res = [
        (0, ubuf.raw().as_entire_binding()),
        (1, enc.binding()),
        (2, dz.binding()),
        (4, denc.binding()),
        (11, codebook.binding()),
        (12, idx.binding()),
    ];
    let back = gpu.dispatch_bound(
        format!("{label}.input"),
        pipeline,
        &res,
        Some(ubuf.clone()),
        grid_1d(q.b * q.zd, 64),
        0.0,
        4.0 * (4 * q.b * q.zd) as f64,
    )?;
    let Some(dcodebook) = dcodebook else {
        return Ok(vec![back]);
    };
    let layout = [
        uniform(0),
        storage(1, true),
        storage(11, true),
        storage(12, false),
        storage(13, false),
    ];
    let pipeline = gpu.kernels.pipeline(Shader::Code, "vq_codebook_grad", &[], &layout)?;
    let res = [
        (0, ubuf.raw().as_entire_binding()),
        (1, enc.binding()),
        (11, codebook.binding()),
        (12, idx.binding()),
        (13, dcodebook.binding()),
    ];
    let d = q.zd / q.groups;
    let grad = gpu.dispatch_bound(
        format!("{label}.codebook"),
        pipeline,
        &res,
        Some(ubuf.clone()),
        grid_1d(q.codes * d, 64),
        0.0,
        4.0 * (q.codes * d * q.b * q.groups) as f64,
    )?;
    Ok(vec![back, grad])
}

/// Plans the codebook's exponential-moving-average update (see code.wgsl), the alternative to
/// training it by its gradient: from this step's assignments `idx` [B·G] of z_e = `enc`
/// [B, Z], the running counts `ema_n` and sums `ema_m` (both [K, d], zero at the start) decay
/// by `decay` and take the batch's, and `codebook` [K, d] becomes their ratio.
#[allow(clippy::too_many_arguments)]
pub fn vq_ema(
    gpu: &Gpu,
    label: &str,
    enc: &Tensor,
    codebook: &Tensor,
    groups: usize,
    idx: &Tensor,
    decay: f32,
    ema_n: &Tensor,
    ema_m: &Tensor,
) -> Result<Dispatch> {
    let q = check_vq(label, enc, codebook, groups, idx)?;
    if ema_n.shape() != codebook.shape() || ema_m.shape() != codebook.shape() || !(0.0..1.0).contains(&decay) {
        return Err(VaeError::Shape(format!(
            "{label}: the running counts {:?} and sums {:?} must be shaped as the codebook {:?}, and \
             the decay in [0, 1) (got {decay})",
            ema_n.shape(),
            ema_m.shape(),
            codebook.shape()
        )));
    }
    let ubuf = vq_uniform(gpu, label, &q, q.zd, 0.0, 0.0, decay)?;
    let layout = [
        uniform(0),
        storage(1, true),
        storage(12, false),
        storage(14, false),
        storage(15, false),
        storage(16, false),
    ];
    let pipeline = gpu.kernels.pipeline(Shader::Code, "vq_ema", &[], &layout)?;
    let res = [
        (0, ubuf.raw().as_entire_binding()),
        (1, enc.binding()),
        (12, idx.binding()),
        (14, ema_n.binding()),
        (15, ema_m.binding()),
        (16, codebook.binding()),
    ];
    let d = q.zd / q.groups;
    gpu.dispatch_bound(
        label,
        pipeline,
        &res,
        Some(ubuf.clone()),
        grid_1d(q.codes * d, 64),
        0.0,
        4.0 * (q.codes * d * q.b * q.groups) as f64,
    )
}

/// The scratch of the scored quantization ([`vq_forward_scored`]): the codebook's half norms,
/// the B·G × K scores, and per vector the rows the codebook's update sums by entry.
pub struct VqScratch<'a> {
    /// −½‖e_k‖², `[K]`.
    pub half_norms: &'a Tensor,
    /// [B·G, K].
    pub scores: &'a Tensor,
    /// [B·G, d] (gradient) or [B·G, d + 4] (moving averages).
    pub rows: &'a Tensor,
    /// The codebook is trained by moving averages: `rows` are [z_e | 1 | 0 0 0].
    pub ema: bool,
}

/// Whether the scored quantization serves vectors of `d` values and a codebook of `codes`
/// entries: the matmuls read whole vec4s.
pub fn vq_scored_fits(d: usize, codes: usize) -> bool {
    d.is_multiple_of(4) && codes.is_multiple_of(4)
}

/// Plans [`vq_forward`]'s outputs for vectors of d % 4 == 0 values by scores (see code.wgsl:
/// the half norms, one matmul, one pick per vector), and the rows of `s` the codebook's
/// update needs.
#[allow(clippy::too_many_arguments)]
pub fn vq_forward_scored(
    gpu: &Gpu,
    label: &str,
    enc: &Tensor,
    codebook: &Tensor,
    groups: usize,
    commitment: f32,
    scale: f32,
    z: &Tensor,
    pen: &Tensor,
    idx: &Tensor,
    s: &VqScratch<'_>,
) -> Result<Vec<Dispatch>> {
    let q = check_vq(label, enc, codebook, groups, idx)?;
    let (_, _, zs) = check(label, enc, z)?;
    let (r, d) = (q.b * q.groups, q.zd / q.groups);
    let width = if s.ema { d + 4 } else { d };
    if !vq_scored_fits(d, q.codes)
        || s.half_norms.len() != q.codes
        || s.scores.len() < r * q.codes
        || s.rows.len() < r * width
        || pen.len() != q.b * q.zd
    {
        return Err(VaeError::Shape(format!(
            "{label}: scored quantization needs d = {d} and K = {} in whole vec4s, scores of {} values (got {}), \
             rows of {} (got {}) and B·Z = {} penalty terms (got {})",
            q.codes,
            r * q.codes,
            s.scores.len(),
            r * width,
            s.rows.len(),
            q.b * q.zd,
            pen.len()
        )));
    }
    let ubuf = vq_uniform(gpu, label, &q, zs, commitment, scale, 0.0)?;
    let norms = gpu.dispatch_bound(
        format!("{label}.norms"),
        gpu.kernels.pipeline(
            Shader::Code,
            "vq_half_norms",
            &[],
            &[uniform(0), storage(11, true), storage(17, false)],
        )?,
        &[
            (0, ubuf.raw().as_entire_binding()),
            (11, codebook.binding()),
            (17, s.half_norms.binding()),
        ],
        Some(ubuf.clone()),
        grid_1d(q.codes, 64),
        (2 * q.codes * d) as f64,
        4.0 * (q.codes * d + q.codes) as f64,
    )?;
    let vectors = enc.reshape_prefix(&[r, d]);
    let scores = s.scores.reshape_prefix(&[r, q.codes]);
    let epi = crate::ops::Epilogue {
        bias: Some(s.half_norms),
        ..Default::default()
    };
    let product = crate::ops::matmul(
        gpu,
        &format!("{label}.scores"),
        &vectors,
        false,
        codebook,
        true,
        &scores,
        &epi,
        None,
    )?;
    let layout = [
        uniform(0),
        storage(1, true),
        storage(2, false),
        storage(3, false),
        storage(11, true),
        storage(12, false),
        storage(17, false),
        storage(18, false),
    ];
    let constants = [("VQ_EMA", if s.ema { 1.0 } else { 0.0 })];
    let pick = gpu.dispatch_bound(
        format!("{label}.pick"),
        gpu.kernels.pipeline(Shader::Code, "vq_pick", &constants, &layout)?,
        &[
            (0, ubuf.raw().as_entire_binding()),
            (1, enc.binding()),
            (2, z.binding()),
            (3, pen.binding()),
            (11, codebook.binding()),
            (12, idx.binding()),
            (17, s.scores.binding()),
            (18, s.rows.binding()),
        ],
        Some(ubuf.clone()),
        if r <= 65535 {
            [r as u32, 1, 1]
        } else {
            [65535, r.div_ceil(65535) as u32, 1]
        },
        0.0,
        4.0 * (r * q.codes + 4 * q.b * q.zd) as f64,
    )?;
    Ok(vec![norms, product, pick])
}

/// Plans the codebook's gradient from the rows [`vq_forward_scored`] wrote (without moving
/// averages): `dcodebook` [K, d] = onehot(idx)ᵀ · rows.
pub fn vq_codebook_grad_scored(
    gpu: &Gpu,
    label: &str,
    idx: &Tensor,
    rows: &Tensor,
    dcodebook: &Tensor,
) -> Result<Dispatch> {
    let d = dcodebook.shape()[1];
    crate::ops::onehot_matmul(gpu, label, idx, &rows.reshape_prefix(&[idx.len(), d]), dcodebook)
}

/// Plans the moving averages' update from the rows [`vq_forward_scored`] wrote with `ema`:
/// the sums and counts by entry (`sums` [K, d + 4] = onehot(idx)ᵀ · rows), then N, M and the
/// codebook as [`vq_ema`].
#[allow(clippy::too_many_arguments)]
pub fn vq_ema_scored(
    gpu: &Gpu,
    label: &str,
    idx: &Tensor,
    rows: &Tensor,
    sums: &Tensor,
    codebook: &Tensor,
    decay: f32,
    ema_n: &Tensor,
    ema_m: &Tensor,
) -> Result<Vec<Dispatch>> {
    let [codes, d] = *codebook.shape() else {
        return Err(VaeError::Shape(format!(
            "{label}: the codebook must be 2-D, got {:?}",
            codebook.shape()
        )));
    };
    if sums.len() < codes * (d + 4) || ema_n.shape() != codebook.shape() || ema_m.shape() != codebook.shape() {
        return Err(VaeError::Shape(format!(
            "{label}: sums of {} values (got {}) and running counts and sums shaped as the codebook {:?}",
            codes * (d + 4),
            sums.len(),
            codebook.shape()
        )));
    }
    let sums = sums.reshape_prefix(&[codes, d + 4]);
    let product = crate::ops::onehot_matmul(gpu, label, idx, &rows.reshape_prefix(&[idx.len(), d + 4]), &sums)?;
    let q = Vq {
        b: 1,
        zd: d,
        groups: 1,
        codes,
    };
    let ubuf = vq_uniform(gpu, label, &q, d, 0.0, 0.0, decay)?;
    let layout = [
        uniform(0),
        storage(14, false),
        storage(15, false),
        storage(16, false),
        storage(17, false),
    ];
    let apply = gpu.dispatch_bound(
        format!("{label}.apply"),
        gpu.kernels.pipeline(Shader::Code, "vq_ema_apply", &[], &layout)?,
        &[
            (0, ubuf.raw().as_entire_binding()),
            (14, ema_n.binding()),
            (15, ema_m.binding()),
            (16, codebook.binding()),
            (17, sums.binding()),
        ],
        Some(ubuf.clone()),
        grid_1d(codes * d, 64),
        0.0,
        4.0 * (6 * codes * d) as f64,
    )?;
    Ok(vec![product, apply])
}
