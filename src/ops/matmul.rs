//! `shaders/matmul.wgsl`: C = epilogue(op(A)·op(B)), the one kernel behind every dense layer.

use crate::error::{Result, VaeError};
use crate::gpu::kernels::layout::{storage, storage_texture, uniform};
use crate::gpu::{Dispatch, Gpu, Shader, Tensor};
use crate::ops::activation::Activation;
use crate::ops::conv::ConvGeometry;

pub use crate::gpu::MatmulStrategy;

/// What happens to op(A)·op(B) before it is stored; see matmul.wgsl for the order.
#[derive(Clone, Default)]
pub struct Epilogue<'a> {
    /// Added to every row (length N).
    pub bias: Option<&'a Tensor>,
    /// Applied after the bias.
    pub act: Activation,
    /// Multiplies by act'(y) where y (shape M×N) is that activation's output: the fused
    /// activation backward.
    pub dact: Option<(Activation, &'a Tensor)>,
    /// Add into C instead of overwriting it (and into `colsum`).
    pub accumulate: bool,
    /// Also write Σ_k op(B)[k, n] (length N): the bias gradient beside a weight gradient.
    pub colsum: Option<&'a Tensor>,
    /// Negative slope of LeakyReLU (forward or backward).
    pub leaky_slope: f32,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct MatmulParams {
    m: u32,
    n: u32,
    k: u32,
    leaky_slope: f32,
    batch: u32,
    _pad: [u32; 3],
}

/// Which product of a convolution an implicit-convolution matmul computes (see
/// `matmul.wgsl`): the operand that is an image is gathered in the kernel, never written out
/// as a patch matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvProduct {
    /// Y [B·H'·W', C'] = patches(X) · W: `a` is X, `b` the weight [k·k·C (rounded to 4), C'].
    Forward,
    /// dW [k·k·C (rounded), C'] = patches(X)ᵀ · dY: `a` is X, `b` is dY [B·H'·W', C'] (column
    /// sums: the bias gradient).
    WeightGrad,
    /// dX [B·H·W, C] = the adjoint of the forward applied to dY: `a` is dY, `b` the weight;
    /// one stride class of X's pixels per workgroup layer. Needs the stride to divide H, W and
    /// the kernel.
    InputGrad,
}

impl ConvProduct {
    /// Whether the input gradient's stride classes fit `g` (the stride divides the sides and
    /// the kernel), so that [`ConvProduct::InputGrad`] can run on it.
    pub fn input_grad_fits(g: &ConvGeometry) -> bool {
        g.in_h.is_multiple_of(g.stride) && g.in_w.is_multiple_of(g.stride) && g.kernel.is_multiple_of(g.stride)
    }
}

/// The bind group layout of matmul.wgsl; the subgroup entry also reads B's texture mirror.
fn layout(subgroup: bool) -> Vec<wgpu::BindGroupLayoutEntry> {
    let mut l = vec![
        uniform(0),
        storage(1, true),  // a
        storage(2, true),  // b
        storage(3, true),  // bias
        storage(4, true),  // aux (activation output for DACT)
        storage(5, false), // c
        storage(6, false), // colsum
    ];
    if subgroup {
        l.push(storage_texture(7, true)); // b_tex
        l.push(storage_texture(8, true)); // a_tex
    }
    l
}

fn dims2(t: &Tensor, what: &str) -> Result<(usize, usize)> {
    match t.shape() {
        [r, c] => Ok((*r, *c)),
        s => Err(VaeError::Shape(format!("matmul: {what} must be 2-D, got {s:?}"))),
    }
}

/// Plans C = epilogue(op(A)·op(B)) with op(X) = Xᵀ where `trans_*`. `strategy` None picks the
/// adapter's preferred one, falling back to naive where the shape does not suit it. The
/// subgroup strategy reads A and B from their texture mirrors where they have one (see
/// `gpu/mirror.rs`); the caller keeps the mirrors current.
#[allow(clippy::too_many_arguments)]
pub fn matmul(
    gpu: &Gpu,
    label: &str,
    a: &Tensor,
    trans_a: bool,
    b: &Tensor,
    trans_b: bool,
    c: &Tensor,
    epi: &Epilogue<'_>,
    strategy: Option<MatmulStrategy>,
) -> Result<Dispatch> {
    let (ar, ac) = dims2(a, "A")?;
    let (br, bc) = dims2(b, "B")?;
    let (m, k) = if trans_a { (ac, ar) } else { (ar, ac) };
    let (kb, n) = if trans_b { (bc, br) } else { (br, bc) };
    if k != kb {
        return Err(VaeError::Shape(format!(
            "{label}: op(A) is {m}×{k} but op(B) is {kb}×{n} (A {:?}{}, B {:?}{})",
            a.shape(),
            if trans_a { "ᵀ" } else { "" },
            b.shape(),
            if trans_b { "ᵀ" } else { "" }
        )));
    }
    if c.shape() != [m, n] {
        return Err(VaeError::Shape(format!(
            "{label}: C must be [{m}, {n}], got {:?}",
            c.shape()
        )));
    }
    check_epilogue(label, m, n, epi)?;
    let shape = Shape {
        m,
        n,
        k,
        trans_a,
        trans_b,
        vec_ok: MatmulStrategy::vec4_shape_ok(m, n, k, trans_a, trans_b),
    };
    dispatch(gpu, label, a, b, c, epi, strategy, shape, Gathered::None)
}

/// Plans one product of a convolution of geometry `g` (see [`ConvProduct`]) as an implicit
/// matmul: C = epilogue(op(A)·op(B)) with the image operand `a` gathered in the kernel.
/// Bias, activation and column sums apply as in [`matmul`]; `strategy` None picks the
/// adapter's preferred one where the channels allow it (whole vec4s of channels on the
/// gathered and the output side), else the naive one.
#[allow(clippy::too_many_arguments)]
pub fn conv_matmul(
    gpu: &Gpu,
    label: &str,
    product: ConvProduct,
    g: &ConvGeometry,
    a: &Tensor,
    b: &Tensor,
    c: &Tensor,
    epi: &Epilogue<'_>,
    strategy: Option<MatmulStrategy>,
) -> Result<Dispatch> {
    let (kc, pixels) = (g.cols_width(), g.cols_rows());
    let want = |what: &str, t: &Tensor, len: usize| -> Result<()> {
        if t.len() != len {
            return Err(VaeError::Shape(format!(
                "{label}: {what} must hold {len} values, got {:?}",
                t.shape()
            )));
        }
        Ok(())
    };
    let (m, n, k, trans_a, trans_b, gathered_c) = match product {
        ConvProduct::Forward => {
            want("the input image", a, g.in_len())?;
            want("the weight", b, kc * g.out_c)?;
            want("the output", c, pixels * g.out_c)?;
            (pixels, g.out_c, kc, false, false, g.in_c)
        }
        ConvProduct::WeightGrad => {
            want("the input image", a, g.in_len())?;
            want("the output gradient", b, pixels * g.out_c)?;
            want("the weight gradient", c, kc * g.out_c)?;
            (kc, g.out_c, pixels, true, false, g.in_c)
        }
        ConvProduct::InputGrad => {
            if !ConvProduct::input_grad_fits(g) {
                return Err(VaeError::Shape(format!(
                    "{label}: the implicit input gradient needs the stride {} to divide the input {}×{} and the \
                     kernel {}",
                    g.stride, g.in_h, g.in_w, g.kernel
                )));
            }
            want("the output gradient", a, g.out_len())?;
            want("the weight", b, kc * g.out_c)?;
            want("the input gradient", c, g.in_len())?;
            let taps = (g.kernel / g.stride).pow(2);
            let rows = g.batch * (g.in_h / g.stride) * (g.in_w / g.stride);
            (rows, g.in_c, taps * g.out_c, false, true, g.out_c)
        }
    };
    check_epilogue(
        label,
        if product == ConvProduct::InputGrad {
            g.in_len() / g.in_c
        } else {
            m
        },
        n,
        epi,
    )?;
    // The forward and the weight gradient gather a unit's four patch columns either way; the
    // input gradient's units and weight rows must not straddle two taps.
    let vec_ok = MatmulStrategy::vec4_shape_ok(m, n, k, trans_a, trans_b)
        && (product != ConvProduct::InputGrad || gathered_c.is_multiple_of(4));
    let shape = Shape {
        m,
        n,
        k,
        trans_a,
        trans_b,
        vec_ok,
    };
    dispatch(gpu, label, a, b, c, epi, strategy, shape, Gathered::Conv(product, g))
}

/// Plans C [K, N] = onehot(idx)ᵀ · B: row k of C sums the rows r of `b` [R, N] whose index
/// `idx[r]` (R exact integers as f32) is k. The one-hot matrix is never written: the kernel
/// gathers it from the indices (ONE_HOT_A).
pub fn onehot_matmul(gpu: &Gpu, label: &str, idx: &Tensor, b: &Tensor, c: &Tensor) -> Result<Dispatch> {
    let (r, n) = dims2(b, "B")?;
    let (k, cn) = dims2(c, "C")?;
    if idx.len() != r || cn != n {
        return Err(VaeError::Shape(format!(
            "{label}: {} indices for B {:?}, and C {:?} must have B's columns",
            idx.len(),
            b.shape(),
            c.shape()
        )));
    }
    let epi = Epilogue::default();
    let shape = Shape {
        m: k,
        n,
        k: r,
        trans_a: true,
        trans_b: false,
        vec_ok: MatmulStrategy::vec4_shape_ok(k, n, r, true, false),
    };
    dispatch(gpu, label, idx, b, c, &epi, None, shape, Gathered::OneHot)
}

/// An operand the kernel gathers instead of reading a matrix.
#[derive(Clone, Copy)]
enum Gathered<'g> {
    /// Both operands are matrices.
    None,
    /// A is a convolution's image (see [`ConvProduct`]).
    Conv(ConvProduct, &'g ConvGeometry),
    /// A is an index list standing for its one-hot matrix.
    OneHot,
}

/// The product's sizes as the kernel sees them.
#[derive(Clone, Copy)]
struct Shape {
    m: usize,
    n: usize,
    k: usize,
    trans_a: bool,
    trans_b: bool,
    /// The vec4 strategies can run it.
    vec_ok: bool,
}

fn check_epilogue(label: &str, m: usize, n: usize, epi: &Epilogue<'_>) -> Result<()> {
    if let Some(bias) = epi.bias {
        if bias.len() != n {
            return Err(VaeError::Shape(format!(
                "{label}: bias must have {n} elements, got {:?}",
                bias.shape()
            )));
        }
    }
    if let Some((_, aux)) = epi.dact {
        if aux.len() != m * n {
            return Err(VaeError::Shape(format!(
                "{label}: activation output for the backward must be [{m}, {n}], got {:?}",
                aux.shape()
            )));
        }
    }
    if let Some(cs) = epi.colsum {
        if cs.len() != n {
            return Err(VaeError::Shape(format!(
                "{label}: column-sum output must have {n} elements, got {:?}",
                cs.shape()
            )));
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn dispatch(
    gpu: &Gpu,
    label: &str,
    a: &Tensor,
    b: &Tensor,
    c: &Tensor,
    epi: &Epilogue<'_>,
    strategy: Option<MatmulStrategy>,
    shape: Shape,
    gathered: Gathered<'_>,
) -> Result<Dispatch> {
    let conv = match gathered {
        Gathered::Conv(p, g) => Some((p, g)),
        _ => None,
    };
    let Shape {
        m,
        n,
        k,
        trans_a,
        trans_b,
        vec_ok,
    } = shape;
    let strategy = match strategy {
        Some(s) => {
            s.check_supported(gpu)?;
            if s != MatmulStrategy::Naive && !vec_ok {
                return Err(VaeError::Shape(format!(
                    "{label}: the {s:?} strategy needs N % 4 == 0, K % 4 == 0 when K is the \
                     contiguous axis of A or B, and M % 4 == 0 when A is transposed; got \
                     M={m} N={n} K={k} (use the naive strategy)"
                )));
            }
            s
        }
        None if vec_ok => MatmulStrategy::preferred(gpu)?,
        None => MatmulStrategy::Naive,
    };

    let sg = gpu.report().subgroup_min_size.max(4);
    let flag = |b: bool| if b { 1.0 } else { 0.0 };
    let mut constants: Vec<(&str, f64)> = vec![
        ("TRANS_A", flag(trans_a)),
        ("TRANS_B", flag(trans_b)),
        ("HAS_BIAS", flag(epi.bias.is_some())),
        ("ACCUMULATE", flag(epi.accumulate)),
        ("COLSUM", flag(epi.colsum.is_some())),
        ("ACT", epi.act.code() as f64),
        ("DACT", epi.dact.map(|(act, _)| act.code()).unwrap_or(0) as f64),
    ];
    if let Some((product, g)) = conv {
        let mode = match product {
            ConvProduct::Forward => 1.0,
            ConvProduct::WeightGrad => 2.0,
            ConvProduct::InputGrad => 3.0,
        };
        let gathered = if product == ConvProduct::InputGrad {
            g.out_c
        } else {
            g.in_c
        };
        constants.extend([
            ("CONV", mode),
            ("KS", g.kernel as f64),
            ("STRIDE", g.stride as f64),
            ("PAD", g.pad as f64),
            ("GC", gathered as f64),
            ("IMG_H", g.in_h as f64),
            ("IMG_W", g.in_w as f64),
            ("OUT_H", g.out_h as f64),
            ("OUT_W", g.out_w as f64),
        ]);
    }
    if let Gathered::OneHot = gathered {
        constants.push(("ONE_HOT_A", 1.0));
    }
    let subgroup = strategy == MatmulStrategy::Subgroup;
    // A gathered operand is read from its buffer, never from a mirror.
    let a_tex = if subgroup && matches!(gathered, Gathered::None) {
        a.mirror().map(|t| &**t)
    } else {
        None
    };
    let b_tex = if subgroup { b.mirror().map(|t| &**t) } else { None };
    for (what, t, tex) in [("A", a, a_tex), ("B", b, b_tex)] {
        if let Some(tex) = tex {
            crate::gpu::mirror::check_mirror(&format!("{label}: {what}"), t, tex)?;
        }
    }
    // The input gradient's stride classes, one per workgroup layer.
    let layers = match conv {
        Some((ConvProduct::InputGrad, g)) => (g.stride * g.stride) as u32,
        _ => 1,
    };
    let (entry, workgroups) = match strategy {
        MatmulStrategy::Naive => ("matmul_naive", [n.div_ceil(8) as u32, m.div_ceil(8) as u32, layers]),
        MatmulStrategy::Tiled => ("matmul_tiled", [n.div_ceil(64) as u32, m.div_ceil(64) as u32, layers]),
        MatmulStrategy::Subgroup => {
            // One subgroup per workgroup: at 8 lanes, 32 columns per workgroup waste less of
            // N = 400 or 784 than 64 did, and N = 20 runs on one SIMD batch instead of two.
            let wg = sg.max(8) as usize;
            // With 16 or more lanes per subgroup each lane loads half as much of A.
            let lanes = if sg >= 16 { 16 } else { 8 };
            constants.push(("LANES", lanes as f64));
            constants.push(("SG_WG", wg as f64));
            constants.push(("A_TEXTURE", flag(a_tex.is_some())));
            constants.push(("B_TEXTURE", flag(b_tex.is_some())));
            constants.push(("K_TAIL", flag(k % 4 != 0)));
            // Measured on lavapipe: two k steps per iteration speed up the forward and
            // input-gradient shapes by 5-10 %, and slow the transposed-A weight gradient.
            constants.push(("K8", flag(!trans_a)));
            (
                "matmul_subgroup",
                [(n / 4).div_ceil(wg) as u32, m.div_ceil(32) as u32, layers],
            )
        }
    };
    let pipeline = gpu
        .kernels
        .pipeline(Shader::Matmul, entry, &constants, &layout(subgroup))?;
    let params = MatmulParams {
        m: m as u32,
        n: n as u32,
        k: k as u32,
        leaky_slope: epi.leaky_slope,
        batch: conv.map_or(0, |(_, g)| g.batch as u32),
        _pad: [0; 3],
    };
    let ubuf = gpu.uniform(label, &params)?;
    let read = gpu.dummy_read();
    let mut resources = vec![
        ubuf.raw().as_entire_binding(),
        a.binding(),
        b.binding(),
        epi.bias.unwrap_or(read).binding(),
        epi.dact.map(|(_, t)| t).unwrap_or(read).binding(),
        c.binding(),
        epi.colsum.unwrap_or(gpu.dummy_write()).binding(),
    ];
    if subgroup {
        for tex in [b_tex, a_tex] {
            resources.push(wgpu::BindingResource::TextureView(
                tex.unwrap_or(gpu.dummy_texture()).view(),
            ));
        }
    }
    // A convolution's rate counts its multiply-adds without the taps on padding.
    let flops = match conv {
        Some((_, g)) => 2.0 * g.macs(),
        None => 2.0 * (m * n * k) as f64,
    };
    let bytes = match conv {
        Some((_, g)) => 4.0 * (g.in_len() + g.out_len() + g.cols_width() * g.out_c) as f64,
        None => 4.0 * (m * k + k * n + m * n) as f64,
    };
    let name = if subgroup && sg >= 16 {
        "Subgroup16".to_string()
    } else {
        format!("{strategy:?}")
    };
    let tag = match (a_tex.is_some(), b_tex.is_some()) {
        (false, false) => name,
        (true, false) => format!("{name}, A texture"),
        (false, true) => format!("{name}, B texture"),
        (true, true) => format!("{name}, A and B textures"),
    };
    gpu.dispatch(
        format!("{label} [{tag}]"),
        pipeline,
        &resources,
        Some(ubuf.clone()),
        workgroups,
        flops,
        bytes,
    )
}
