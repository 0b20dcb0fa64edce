//! `shaders/matmul.wgsl`: C = epilogue(op(A)·op(B)), the one kernel behind every dense layer.

use crate::error::{Result, VaeError};
use crate::gpu::kernels::layout::{storage, storage_texture, uniform};
use crate::gpu::{Dispatch, Gpu, Shader, Tensor};
use crate::ops::activation::Activation;

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
    if let Some(bias) = epi.bias {
        if bias.len() != n {
            return Err(VaeError::Shape(format!(
                "{label}: bias must have {n} elements, got {:?}",
                bias.shape()
            )));
        }
    }
    if let Some((_, aux)) = epi.dact {
        if aux.shape() != [m, n] {
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
    let vec_ok = MatmulStrategy::vec4_shape_ok(m, n, k, trans_a, trans_b);
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
    let subgroup = strategy == MatmulStrategy::Subgroup;
    let a_tex = if subgroup { a.mirror().map(|t| &**t) } else { None };
    let b_tex = if subgroup { b.mirror().map(|t| &**t) } else { None };
    for (what, t, tex) in [("A", a, a_tex), ("B", b, b_tex)] {
        if let Some(tex) = tex {
            crate::gpu::mirror::check_mirror(&format!("{label}: {what}"), t, tex)?;
        }
    }
    let (entry, workgroups) = match strategy {
        MatmulStrategy::Naive => ("matmul_naive", [n.div_ceil(8) as u32, m.div_ceil(8) as u32, 1]),
        MatmulStrategy::Tiled => ("matmul_tiled", [n.div_ceil(64) as u32, m.div_ceil(64) as u32, 1]),
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
                [(n / 4).div_ceil(wg) as u32, m.div_ceil(32) as u32, 1],
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
    let flops = 2.0 * (m * n * k) as f64;
    let bytes = 4.0 * (m * k + k * n + m * n) as f64;
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
