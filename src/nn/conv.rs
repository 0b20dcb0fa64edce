//! A 2-D convolution layer, or a transposed one, on NHWC images: y = act(conv(x) + b).
//!
//! Both are planned around one convolution, the layer's own or (transposed) the one whose
//! input gradient it is; PyTorch's ConvTranspose2d weight [in, out, k, k] is exactly that
//! convolution's [out, in, k, k], so the two share a weight layout and every kernel. Per step
//! (a patch matrix `cols` per layer, kept from forward to backward):
//!
//! | | forward | backward |
//! |---|---|---|
//! | convolution | im2col(x); matmul + bias + act | weight + bias gradient (one matmul); dx: matmul, col2im · act′ |
//! | transposed | matmul; col2im + bias + act | im2col(dy); weight gradient; bias gradient (channel sums); dx: matmul · act′ |

use crate::error::Result;
use crate::gpu::{Dispatch, Gpu, Tensor};
use crate::nn::arena::{ArenaLayout, ParamArena};
use crate::nn::linear::LEAKY_SLOPE;
use crate::ops::{self, Activation, ConvGeometry, Epilogue};

/// A k×k convolution (or transposed convolution) with one stride and padding on both axes.
/// The weight is stored [k·k·C (rounded up to 4), C'] for the convolution C → C' it is planned
/// around (row (ky·k + kx)·C + c, the rounding rows zero); checkpoints permute it to PyTorch's
/// layout.
#[derive(Clone, Debug)]
pub struct Conv2d {
    /// Prefix of its parameters' names (`encoder.conv.0`, …).
    pub name: String,
    /// Input channels (PyTorch's `in_channels`).
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Input height and width.
    pub in_hw: (usize, usize),
    /// Output height and width.
    pub out_hw: (usize, usize),
    /// Kernel side.
    pub kernel: usize,
    /// Stride.
    pub stride: usize,
    /// Zero padding per side.
    pub padding: usize,
    /// A transposed convolution (the decoder's upsampling).
    pub transposed: bool,
    /// Applied after the bias.
    pub act: Activation,
    /// Arena slot of the weight.
    pub w: usize,
    /// Arena slot of the bias, [out_channels].
    pub b: usize,
}

/// Output side of a convolution of `side` pixels, or None when the kernel does not fit.
pub fn conv_out(side: usize, kernel: usize, stride: usize, padding: usize) -> Option<usize> {
    (side + 2 * padding)
        .checked_sub(kernel)
        .filter(|_| stride > 0)
        .map(|s| s / stride + 1)
}

/// Output side of a transposed convolution of `side` pixels: (side − 1)·stride − 2·padding + k.
pub fn conv_transpose_out(side: usize, kernel: usize, stride: usize, padding: usize) -> Option<usize> {
    ((side.checked_sub(1)?) * stride + kernel).checked_sub(2 * padding)
}

impl Conv2d {
    /// Registers the weight and bias of a layer from `in_hw` × `in_channels` to `out_channels`
    /// (its output size follows from the geometry; the caller has checked that it exists).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        layout: &mut ArenaLayout,
        name: &str,
        in_channels: usize,
        out_channels: usize,
        in_hw: (usize, usize),
        (kernel, stride, padding): (usize, usize, usize),
        transposed: bool,
        act: Activation,
    ) -> Self {
        let side = |s: usize| {
            if transposed {
                conv_transpose_out(s, kernel, stride, padding)
            } else {
                conv_out(s, kernel, stride, padding)
            }
            .unwrap_or(0)
        };
        let out_hw = (side(in_hw.0), side(in_hw.1));
        let (conv_in, conv_out) = if transposed {
            (out_channels, in_channels)
        } else {
            (in_channels, out_channels)
        };
        let rows = (kernel * kernel * conv_in).div_ceil(4) * 4;
        let w = layout.add(&format!("{name}.weight"), &[rows, conv_out]);
        let b = layout.add(&format!("{name}.bias"), &[out_channels]);
        Conv2d {
            name: name.to_string(),
            in_channels,
            out_channels,
            in_hw,
            out_hw,
            kernel,
            stride,
            padding,
            transposed,
            act,
            w,
            b,
        }
    }

    /// Values per example of the input.
    pub fn in_len(&self) -> usize {
        self.in_hw.0 * self.in_hw.1 * self.in_channels
    }

    /// Values per example of the output.
    pub fn out_len(&self) -> usize {
        self.out_hw.0 * self.out_hw.1 * self.out_channels
    }

    /// The convolution the layer is planned around, for `batch` images.
    pub fn geometry(&self, batch: usize) -> Result<ConvGeometry> {
        let (hw, c_in, c_out) = if self.transposed {
            (self.out_hw, self.out_channels, self.in_channels)
        } else {
            (self.in_hw, self.in_channels, self.out_channels)
        };
        ConvGeometry::new(
            &self.name,
            batch,
            hw,
            c_in,
            c_out,
            self.kernel,
            self.stride,
            self.padding,
        )
    }

    /// The patch matrix it keeps from forward to backward, for `batch` images.
    pub fn cols(&self, gpu: &Gpu, batch: usize) -> Result<Tensor> {
        let g = self.geometry(batch)?;
        gpu.tensor(&format!("{}.cols", self.name), &[g.cols_rows(), g.cols_width()])
    }

    /// PyTorch's default initialisation, U(±1/√fan_in) for weight and bias, with fan_in the
    /// planned convolution's C·k·k (for a transposed layer PyTorch takes it from its weight's
    /// dimension 1, the layer's output channels: the same number). The rounding rows stay 0.
    pub fn init(&self, rng: &mut rand_pcg::Pcg64Mcg, values: &mut [Vec<f32>]) {
        let conv_in = if self.transposed {
            self.out_channels
        } else {
            self.in_channels
        };
        let taps = self.kernel * self.kernel * conv_in;
        let bound = 1.0 / (taps as f32).sqrt();
        let conv_out = values[self.w].len() / ((taps.div_ceil(4)) * 4);
        for v in values[self.w][..taps * conv_out].iter_mut() {
            *v = crate::rng::uniform_f32(rng, -bound, bound);
        }
        for v in values[self.b].iter_mut() {
            *v = crate::rng::uniform_f32(rng, -bound, bound);
        }
    }

    /// A tensor of whole NHWC images seen as its pixels' rows, [n·H·W, C].
    fn pixels(t: &Tensor, c: usize) -> Tensor {
        t.reshape_prefix(&[t.len() / c, c])
    }

    /// Plans y = act(layer(x) + b) for x [n, in_len] and y [n, out_len]; `cols` is the
    /// layer's patch matrix for at least n images.
    pub fn forward(
        &self,
        gpu: &Gpu,
        arena: &ParamArena,
        x: &Tensor,
        y: &Tensor,
        cols: &Tensor,
    ) -> Result<Vec<Dispatch>> {
        let n = x.shape()[0];
        let g = self.geometry(n)?;
        let cols = cols.reshape_prefix(&[g.cols_rows(), g.cols_width()]);
        let (w, b) = (arena.param(self.w), arena.param(self.b));
        let epi = Epilogue {
            bias: Some(&b),
            act: self.act,
            leaky_slope: LEAKY_SLOPE,
            ..Default::default()
        };
        let label = format!("{}.forward", self.name);
        if self.transposed {
            // cols = x·Wᵀ: each input pixel's contribution to every tap; col2im adds them up.
            let x = Self::pixels(x, self.in_channels);
            Ok(vec![
                ops::matmul(gpu, &label, &x, false, &w, true, &cols, &Epilogue::default(), None)?,
                ops::col2im(gpu, &format!("{label}.col2im"), &g, &cols, y, &epi)?,
            ])
        } else {
            let y = Self::pixels(y, self.out_channels);
            Ok(vec![
                ops::im2col(gpu, &format!("{label}.im2col"), &g, x, &cols)?,
                ops::matmul(gpu, &label, &cols, false, &w, false, &y, &epi, None)?,
            ])
        }
    }

    /// Plans the weight and bias gradients (overwritten) from dy = dL/d(pre-activation of y)
    /// and, with `dx`, dL/d(pre-activation of x) (times the derivative of `x_act`, the
    /// activation that made x). `cols` must hold what [`Conv2d::forward`] left in it.
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &self,
        gpu: &Gpu,
        arena: &ParamArena,
        x: &Tensor,
        dy: &Tensor,
        dx: Option<&Tensor>,
        x_act: Activation,
        cols: &Tensor,
    ) -> Result<Vec<Dispatch>> {
        let n = x.shape()[0];
        let g = self.geometry(n)?;
        let cols = cols.reshape_prefix(&[g.cols_rows(), g.cols_width()]);
        let (w, dw, db) = (arena.param(self.w), arena.grad(self.w), arena.grad(self.b));
        let dact = Epilogue {
            dact: (x_act != Activation::Identity).then_some((x_act, x)),
            leaky_slope: LEAKY_SLOPE,
            ..Default::default()
        };
        let name = &self.name;
        let mut d = Vec::new();
        if self.transposed {
            // The planned convolution reads dy and writes x: its weight gradient is
            // im2col(dy)ᵀ·x, its input gradient (the layer's dx) im2col(dy)·W.
            let xp = Self::pixels(x, self.in_channels);
            let dyp = Self::pixels(dy, self.out_channels);
            d.push(ops::im2col(gpu, &format!("{name}.im2col"), &g, dy, &cols)?);
            d.push(ops::matmul(
                gpu,
                &format!("{name}.wgrad"),
                &cols,
                true,
                &xp,
                false,
                &dw,
                &Epilogue::default(),
                None,
            )?);
            d.push(ops::channel_sum(gpu, &format!("{name}.bgrad"), &dyp, &db)?);
            if let Some(dx) = dx {
                let dxp = Self::pixels(dx, self.in_channels);
                let dact = Epilogue {
                    dact: dact.dact.map(|(a, _)| (a, &xp)),
                    ..dact
                };
                d.push(ops::matmul(
                    gpu,
                    &format!("{name}.dgrad"),
                    &cols,
                    false,
                    &w,
                    false,
                    &dxp,
                    &dact,
                    None,
                )?);
            }
        } else {
            let dyp = Self::pixels(dy, self.out_channels);
            let wgrad = Epilogue {
                colsum: Some(&db),
                ..Default::default()
            };
            d.push(ops::matmul(
                gpu,
                &format!("{name}.wgrad"),
                &cols,
                true,
                &dyp,
                false,
                &dw,
                &wgrad,
                None,
            )?);
            if let Some(dx) = dx {
                // The patch matrix is no longer needed: it takes dy·Wᵀ, which col2im adds up.
                d.push(ops::matmul(
                    gpu,
                    &format!("{name}.dgrad"),
                    &dyp,
                    false,
                    &w,
                    true,
                    &cols,
                    &Epilogue::default(),
                    None,
                )?);
                d.push(ops::col2im(gpu, &format!("{name}.dgrad.col2im"), &g, &cols, dx, &dact)?);
            }
        }
        Ok(d)
    }
}
