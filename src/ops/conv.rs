//! `shaders/conv.wgsl`: the patch matrix of a convolution (im2col), its adjoint (col2im, with
//! the matmul's epilogue), and per-channel sums. With `ops::matmul` these make a
//! convolution's forward, input gradient and weight gradient, and a transposed convolution's.

use crate::error::{Result, VaeError};
use crate::gpu::kernels::layout::{storage, uniform};
use crate::gpu::{grid_1d, Dispatch, Gpu, Shader, Tensor};
use crate::ops::matmul::Epilogue;
use crate::ops::Activation;

/// The geometry of one convolution over a batch: X [B, H, W, C_in] → Y [B, H', W', C_out]
/// (NHWC), a square kernel, one stride and one zero padding for both axes. A transposed
/// convolution is described by the convolution whose input gradient it is (X is its output).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeometry {
    /// Images.
    pub batch: usize,
    /// X's height.
    pub in_h: usize,
    /// X's width.
    pub in_w: usize,
    /// X's channels.
    pub in_c: usize,
    /// Y's height: (H + 2·pad − k) / stride + 1.
    pub out_h: usize,
    /// Y's width.
    pub out_w: usize,
    /// Y's channels.
    pub out_c: usize,
    /// Kernel side k.
    pub kernel: usize,
    /// Stride.
    pub stride: usize,
    /// Zero padding on each side.
    pub pad: usize,
}

impl ConvGeometry {
    /// The geometry of a k×k convolution with `stride` and `pad` from `batch` images of
    /// `in_hw` × `in_c` to `out_c` channels. A kernel larger than the padded image, a padding
    /// of k or more, or a zero size is an error naming `layer`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        layer: &str,
        batch: usize,
        in_hw: (usize, usize),
        in_c: usize,
        out_c: usize,
        kernel: usize,
        stride: usize,
        pad: usize,
    ) -> Result<Self> {
        let (in_h, in_w) = in_hw;
        let bad = |problem: String| VaeError::Shape(format!("{layer}: {problem}"));
        if [batch, in_h, in_w, in_c, out_c, kernel, stride].contains(&0) {
            return Err(bad(format!(
                "every size must be positive, got batch {batch}, input {in_h}×{in_w}×{in_c}, {out_c} output \
                 channels, kernel {kernel}, stride {stride}"
            )));
        }
        if pad >= kernel {
            return Err(bad(format!("padding {pad} must be smaller than the kernel {kernel}")));
        }
        if in_h + 2 * pad < kernel || in_w + 2 * pad < kernel {
            return Err(bad(format!(
                "a {kernel}×{kernel} kernel does not fit a {in_h}×{in_w} input padded by {pad}"
            )));
        }
        let g = ConvGeometry {
            batch,
            in_h,
            in_w,
            in_c,
            out_h: (in_h + 2 * pad - kernel) / stride + 1,
            out_w: (in_w + 2 * pad - kernel) / stride + 1,
            out_c,
            kernel,
            stride,
            pad,
        };
        let largest = [g.in_len(), g.out_len(), g.cols_rows() * g.cols_width()];
        if largest.iter().any(|&n| n > u32::MAX as usize / 4) {
            return Err(bad(format!(
                "{largest:?} elements: more than the kernels' 32-bit indices reach"
            )));
        }
        Ok(g)
    }

    /// Elements of X.
    pub fn in_len(&self) -> usize {
        self.batch * self.in_h * self.in_w * self.in_c
    }
    /// Elements of Y.
    pub fn out_len(&self) -> usize {
        self.batch * self.out_h * self.out_w * self.out_c
    }
    /// Rows of the patch matrix: Y's pixels, B·H'·W'.
    pub fn cols_rows(&self) -> usize {
        self.batch * self.out_h * self.out_w
    }
    /// Columns of the patch matrix (and rows of the weight): k·k·C_in rounded up to a multiple
    /// of 4, the padding columns zero.
    pub fn cols_width(&self) -> usize {
        (self.kernel * self.kernel * self.in_c).div_ceil(4) * 4
    }
    /// Multiply-adds of the convolution without the taps that fall on padding (also those of
    /// its input gradient and its weight gradient).
    pub fn macs(&self) -> f64 {
        let taps = |out: usize, inp: usize| -> usize {
            (0..out)
                .map(|o| {
                    (0..self.kernel)
                        .filter(|k| (o * self.stride + k).wrapping_sub(self.pad) < inp)
                        .count()
                })
                .sum()
        };
        (self.batch * taps(self.out_h, self.in_h) * taps(self.out_w, self.in_w) * self.in_c * self.out_c) as f64
    }

    fn params(&self, count: usize, slope: f32) -> ConvParams {
        ConvParams {
            batch: self.batch as u32,
            in_h: self.in_h as u32,
            in_w: self.in_w as u32,
            in_c: self.in_c as u32,
            out_h: self.out_h as u32,
            out_w: self.out_w as u32,
            kernel: self.kernel as u32,
            stride: self.stride as u32,
            pad: self.pad as u32,
            cols_w: self.cols_width() as u32,
            count: count as u32,
            leaky_slope: slope,
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct ConvParams {
    batch: u32,
    in_h: u32,
    in_w: u32,
    in_c: u32,
    out_h: u32,
    out_w: u32,
    kernel: u32,
    stride: u32,
    pad: u32,
    cols_w: u32,
    count: u32,
    leaky_slope: f32,
}

/// The bind group layout of conv.wgsl's entries.
fn layout() -> [wgpu::BindGroupLayoutEntry; 5] {
    [
        uniform(0),
        storage(1, true),  // src
        storage(2, true),  // bias
        storage(3, true),  // aux
        storage(4, false), // dst
    ]
}

fn flag(b: bool) -> f64 {
    if b {
        1.0
    } else {
        0.0
    }
}

fn check_len(label: &str, what: &str, t: &Tensor, want: usize) -> Result<()> {
    if t.len() != want {
        return Err(VaeError::Shape(format!(
            "{label}: {what} must hold {want} elements, got {:?}",
            t.shape()
        )));
    }
    Ok(())
}

/// Plans the patch matrix `cols` [B·H'·W', cols_width] of X (`x`, B·H·W·C elements, NHWC).
pub fn im2col(gpu: &Gpu, label: &str, g: &ConvGeometry, x: &Tensor, cols: &Tensor) -> Result<Dispatch> {
    check_len(label, "the input", x, g.in_len())?;
    if cols.shape() != [g.cols_rows(), g.cols_width()] {
        return Err(VaeError::Shape(format!(
            "{label}: the patch matrix must be [{}, {}], got {:?}",
            g.cols_rows(),
            g.cols_width(),
            cols.shape()
        )));
    }
    let constants = [("CIN4", flag(g.in_c.is_multiple_of(4)))];
    let pipeline = gpu.kernels.pipeline(Shader::Conv, "im2col", &constants, &layout())?;
    let total4 = cols.len() / 4;
    let ubuf = gpu.uniform(label, &g.params(total4, 0.0))?;
    let read = gpu.dummy_read();
    let res = [
        ubuf.raw().as_entire_binding(),
        x.binding(),
        read.binding(),
        read.binding(),
        cols.binding(),
    ];
    gpu.dispatch(
        label,
        pipeline,
        &res,
        Some(ubuf.clone()),
        grid_1d(total4, 64),
        0.0,
        4.0 * (2 * cols.len()) as f64,
    )
}

/// Plans X = epilogue(col2im(`cols`)) into `x` (B·H·W·C elements): each pixel
/// sums the patch-matrix entries that read it, then adds `epi.bias` (`[C]`), applies `epi.act`,
/// or multiplies by the derivative of `epi.dact`'s activation from its output (X's shape).
/// Accumulation and column sums are matmul epilogues only.
pub fn col2im(
    gpu: &Gpu,
    label: &str,
    g: &ConvGeometry,
    cols: &Tensor,
    x: &Tensor,
    epi: &Epilogue<'_>,
) -> Result<Dispatch> {
    check_len(label, "the output", x, g.in_len())?;
    check_len(label, "the patch matrix", cols, g.cols_rows() * g.cols_width())?;
    if epi.accumulate || epi.colsum.is_some() {
        return Err(VaeError::Config(format!(
            "{label}: col2im's epilogue has no accumulation or column sums"
        )));
    }
    if let Some(b) = epi.bias {
        check_len(label, "the bias", b, g.in_c)?;
    }
    if let Some((_, aux)) = epi.dact {
        check_len(label, "the activation output", aux, g.in_len())?;
    }
    let constants = [
        ("CIN4", flag(g.in_c.is_multiple_of(4))),
        ("HAS_BIAS", flag(epi.bias.is_some())),
        ("ACT", epi.act.code() as f64),
        ("DACT", epi.dact.map_or(Activation::Identity, |(a, _)| a).code() as f64),
    ];
    let pipeline = gpu.kernels.pipeline(Shader::Conv, "col2im", &constants, &layout())?;
    let ubuf = gpu.uniform(label, &g.params(x.len(), epi.leaky_slope))?;
    let read = gpu.dummy_read();
    let res = [
        ubuf.raw().as_entire_binding(),
        cols.binding(),
        epi.bias.unwrap_or(read).binding(),
        epi.dact.map_or(read, |(_, t)| t).binding(),
        x.binding(),
    ];
    let taps = (g.kernel.div_ceil(g.stride)).pow(2);
    gpu.dispatch(
        label,
        pipeline,
        &res,
        Some(ubuf.clone()),
        grid_1d(x.len().div_ceil(4), 64),
        (taps * x.len()) as f64,
        4.0 * ((taps + 2) * x.len()) as f64,
    )
}

/// Plans `out[c] = Σ_r x[r, c]` for `x` [R, C] of any C (a transposed convolution's bias
/// gradient); one workgroup per four channels, a fixed reduction order.
pub fn channel_sum(gpu: &Gpu, label: &str, x: &Tensor, out: &Tensor) -> Result<Dispatch> {
    let [rows, c] = *x.shape() else {
        return Err(VaeError::Shape(format!(
            "{label}: the input must be 2-D, got {:?}",
            x.shape()
        )));
    };
    check_len(label, "the output", out, c)?;
    let constants = [("CIN4", flag(c.is_multiple_of(4)))];
    let pipeline = gpu
        .kernels
        .pipeline(Shader::Conv, "channel_sum", &constants, &layout())?;
    let g = ConvGeometry {
        batch: 1,
        in_h: 1,
        in_w: 1,
        in_c: c,
        out_h: 1,
        out_w: 1,
        out_c: c,
        kernel: 1,
        stride: 1,
        pad: 0,
    };
    let ubuf = gpu.uniform(label, &g.params(rows, 0.0))?;
    let read = gpu.dummy_read();
    let res = [
        ubuf.raw().as_entire_binding(),
        x.binding(),
        read.binding(),
        read.binding(),
        out.binding(),
    ];
    gpu.dispatch(
        label,
        pipeline,
        &res,
        Some(ubuf.clone()),
        [c.div_ceil(4) as u32, 1, 1],
        (rows * c) as f64,
        4.0 * (rows * c + c) as f64,
    )
}

/// Plans `dst[r, 0..n) = src[r, 0..n)` for every row r of `src` [R, Ws] and `dst` [R, Wd]
/// (n ≤ both widths): a feature map into the first columns of wider rows, or back.
pub fn copy_columns(gpu: &Gpu, label: &str, src: &Tensor, dst: &Tensor, n: usize) -> Result<Dispatch> {
    let (&[rows, ws], &[rd, wd]) = (src.shape(), dst.shape()) else {
        return Err(VaeError::Shape(format!(
            "{label}: rows must be 2-D, got {:?} and {:?}",
            src.shape(),
            dst.shape()
        )));
    };
    if rows != rd || n > ws || n > wd || n == 0 {
        return Err(VaeError::Shape(format!(
            "{label}: {n} columns from {:?} into {:?} (the same rows, both at least {n} wide)",
            src.shape(),
            dst.shape()
        )));
    }
    let vec4 = n.is_multiple_of(4) && ws.is_multiple_of(4) && wd.is_multiple_of(4);
    let pipeline = gpu
        .kernels
        .pipeline(Shader::Conv, "copy_columns", &[("CIN4", flag(vec4))], &layout())?;
    let g = ConvGeometry {
        batch: rows,
        in_h: 1,
        in_w: ws,
        in_c: n,
        out_h: 1,
        out_w: wd,
        out_c: n,
        kernel: 1,
        stride: 1,
        pad: 0,
    };
    let ubuf = gpu.uniform(label, &g.params(rows * n, 0.0))?;
    let read = gpu.dummy_read();
    let res = [
        ubuf.raw().as_entire_binding(),
        src.binding(),
        read.binding(),
        read.binding(),
        dst.binding(),
    ];
    let items = if vec4 { rows * n / 4 } else { rows * n };
    gpu.dispatch(
        label,
        pipeline,
        &res,
        Some(ubuf.clone()),
        grid_1d(items, 64),
        0.0,
        8.0 * (rows * n) as f64,
    )
}
