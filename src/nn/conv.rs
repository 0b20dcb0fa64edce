//! A 2-D convolution layer, or a transposed one, on NHWC images: y = act(conv(x) + b).
//!
//! Both are planned around one convolution, the layer's own or (transposed) the one whose
//! input gradient it is; PyTorch's ConvTranspose2d weight [in, out, k, k] is exactly that
//! convolution's [out, in, k, k], so the two share a weight layout and every kernel. Per step:
//!
//! | | forward | backward |
//! |---|---|---|
//! | convolution | forward product + bias + act | weight gradient + bias gradient (its column sums); dx: input-gradient product · act′ |
//! | transposed | input-gradient product + bias + act | weight gradient; bias gradient (channel sums); dx: forward product · act′ |
//!
//! Each product is one implicit matmul ([`crate::ops::conv_matmul`]: the image operand gathered
//! in the kernel), except an input gradient whose stride classes or channels do not suit it
//! (a transposed layer to one channel, the decoder's last): dY·Wᵀ into a patch matrix
//! ([`Conv2d::cols`], the only layers that have one), then col2im.

use crate::error::Result;
use crate::gpu::{Dispatch, Gpu, Tensor};
use crate::nn::arena::{ArenaLayout, ParamArena};
use crate::nn::linear::LEAKY_SLOPE;
use crate::ops::{self, Activation, ConvGeometry, ConvProduct, Epilogue};

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
    /// Arena slot of the bias, `[out_channels]`.
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

    /// Values of the stored weight, [k·k·C (rounded up to 4), C'] of the planned convolution.
    pub fn weight_len(&self) -> usize {
        let (c, c_out) = if self.transposed {
            (self.out_channels, self.in_channels)
        } else {
            (self.in_channels, self.out_channels)
        };
        (self.kernel * self.kernel * c).div_ceil(4) * 4 * c_out
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

    /// Whether the input gradient of the planned convolution runs as one implicit matmul
    /// (the stride divides the sides and the kernel; channels in whole vec4s on both sides),
    /// or as a matmul into a patch matrix followed by col2im. Measured on lavapipe, the
    /// implicit product is the faster wherever the vec4 strategies run it (docs/performance.md).
    fn implicit_input_grad(g: &ConvGeometry) -> bool {
        ConvProduct::input_grad_fits(g) && g.in_c.is_multiple_of(4) && g.out_c.is_multiple_of(4)
    }

    /// The patch matrix the layer needs for `batch` images, if it needs one: where its planned
    /// convolution's input gradient (a convolution's backward, a transposed one's forward) is
    /// not implicit.
    pub fn cols(&self, gpu: &Gpu, batch: usize) -> Result<Option<Tensor>> {
        let g = self.geometry(batch)?;
        if Self::implicit_input_grad(&g) {
            return Ok(None);
        }
        let t = gpu.tensor(&format!("{}.cols", self.name), &[g.cols_rows(), g.cols_width()])?;
        Ok(Some(t))
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

    /// The patch matrix for `g`, a prefix of the workspace's.
    fn cols_for(&self, cols: Option<&Tensor>, g: &ConvGeometry) -> Result<Tensor> {
        let t = cols.ok_or_else(|| {
            crate::VaeError::Config(format!("{}: a patch matrix is needed (Conv2d::cols)", self.name))
        })?;
        Ok(t.reshape_prefix(&[g.cols_rows(), g.cols_width()]))
    }

    /// The planned convolution's input gradient dX = adjoint(dY) into `dx` with `epi`: one
    /// implicit matmul, or dY·Wᵀ into the patch matrix and col2im.
    #[allow(clippy::too_many_arguments)]
    fn input_grad(
        &self,
        gpu: &Gpu,
        label: &str,
        g: &ConvGeometry,
        w: &Tensor,
        dy: &Tensor,
        dx: &Tensor,
        epi: &Epilogue<'_>,
        cols: Option<&Tensor>,
    ) -> Result<Vec<Dispatch>> {
        if Self::implicit_input_grad(g) {
            return Ok(vec![ops::conv_matmul(
                gpu,
                label,
                ConvProduct::InputGrad,
                g,
                dy,
                w,
                dx,
                epi,
                None,
            )?]);
        }
        let cols = self.cols_for(cols, g)?;
        let dyp = dy.reshape_prefix(&[g.cols_rows(), g.out_c]);
        Ok(vec![
            ops::matmul(gpu, label, &dyp, false, w, true, &cols, &Epilogue::default(), None)?,
            ops::col2im(gpu, &format!("{label}.col2im"), g, &cols, dx, epi)?,
        ])
    }

    /// Plans y = act(layer(x) + b) for x [n, in_len] and y [n, out_len]; `cols` is the
    /// layer's patch matrix for at least n images if [`Conv2d::cols`] made one.
    pub fn forward(
        &self,
        gpu: &Gpu,
        arena: &ParamArena,
        x: &Tensor,
        y: &Tensor,
        cols: Option<&Tensor>,
    ) -> Result<Vec<Dispatch>> {
        let n = x.shape()[0];
        let g = self.geometry(n)?;
        let (w, b) = (arena.param(self.w), arena.param(self.b));
        let epi = Epilogue {
            bias: Some(&b),
            act: self.act,
            leaky_slope: LEAKY_SLOPE,
            ..Default::default()
        };
        let label = format!("{}.forward", self.name);
        if self.transposed {
            // The planned convolution's input gradient, with the layer's bias and activation.
            return self.input_grad(gpu, &label, &g, &w, x, y, &epi, cols);
        }
        Ok(vec![ops::conv_matmul(
            gpu,
            &label,
            ConvProduct::Forward,
            &g,
            x,
            &w,
            y,
            &epi,
            None,
        )?])
    }

    /// Plans the weight and bias gradients (overwritten) from dy = dL/d(pre-activation of y)
    /// and, with `dx`, dL/d(pre-activation of x) (times the derivative of `x_act`, the
    /// activation that made x).
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &self,
        gpu: &Gpu,
        arena: &ParamArena,
        x: &Tensor,
        dy: &Tensor,
        dx: Option<&Tensor>,
        x_act: Activation,
        cols: Option<&Tensor>,
    ) -> Result<Vec<Dispatch>> {
        let n = x.shape()[0];
        let g = self.geometry(n)?;
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
            // patches(dy)ᵀ·x, its forward applied to dy the layer's dx.
            let product = |p, label: &str, b: &Tensor, c: &Tensor, epi: &Epilogue<'_>| {
                ops::conv_matmul(gpu, &format!("{name}.{label}"), p, &g, dy, b, c, epi, None)
            };
            d.push(product(ConvProduct::WeightGrad, "wgrad", x, &dw, &Epilogue::default())?);
            let dyp = dy.reshape_prefix(&[dy.len() / self.out_channels, self.out_channels]);
            d.push(ops::channel_sum(gpu, &format!("{name}.bgrad"), &dyp, &db)?);
            if let Some(dx) = dx {
                d.push(product(ConvProduct::Forward, "dgrad", &w, dx, &dact)?);
            }
        } else {
            let wgrad = Epilogue {
                colsum: Some(&db),
                ..Default::default()
            };
            let label = format!("{name}.wgrad");
            d.push(ops::conv_matmul(
                gpu,
                &label,
                ConvProduct::WeightGrad,
                &g,
                x,
                dy,
                &dw,
                &wgrad,
                None,
            )?);
            if let Some(dx) = dx {
                d.extend(self.input_grad(gpu, &format!("{name}.dgrad"), &g, &w, dy, dx, &dact, cols)?);
            }
        }
        Ok(d)
    }
}
