//! A dense layer y = act(x·W + b) and the [`Layer`] contract every layer type meets.

use crate::error::Result;
use crate::gpu::{Dispatch, Gpu, Tensor};
use crate::nn::arena::{ArenaLayout, ParamArena};
use crate::ops::{self, Activation, Epilogue};

/// What the model needs of a layer: its parameter slots, and a forward and a backward record
/// step. Gradients flow w.r.t. pre-activations: `backward` receives dL/d(pre-activation of y)
/// and returns dL/d(pre-activation of x), multiplying by the derivative of `x_act` (the
/// activation that produced x) inside its own dispatch.
pub trait Layer {
    /// Name used for labels.
    fn name(&self) -> &str;
    /// Width of the input rows.
    fn in_features(&self) -> usize;
    /// Width of the output rows.
    fn out_features(&self) -> usize;
    /// Activation applied to the output.
    fn activation(&self) -> Activation;
    /// Fills this layer's slots of `values` (one vector per arena slot) with initial values.
    fn init(&self, rng: &mut rand_pcg::Pcg64Mcg, values: &mut [Vec<f32>]);
    /// Plans y = layer(x) for x [R, in] and y [R, out], and the refresh of y's texture mirror
    /// if it has one.
    fn forward(&self, gpu: &Gpu, arena: &ParamArena, x: &Tensor, y: &Tensor) -> Result<Vec<Dispatch>>;
    /// Plans the parameter gradients (overwritten) and, if `dx` is given, the input gradient
    /// (and the refresh of its mirror).
    #[allow(clippy::too_many_arguments)]
    fn backward(
        &self,
        gpu: &Gpu,
        arena: &ParamArena,
        x: &Tensor,
        dy: &Tensor,
        dx: Option<&Tensor>,
        x_act: Activation,
    ) -> Result<Vec<Dispatch>>;
}

/// Negative slope of LeakyReLU layers.
pub const LEAKY_SLOPE: f32 = 0.01;

/// y = act(x·W + b) with W stored [in, out] (the transpose of PyTorch's [out, in], so the
/// forward reads W row-major along the output; checkpoints transpose on the way out).
#[derive(Clone, Debug)]
pub struct Linear {
    /// Prefix of its parameters' names ("enc0", "head", …).
    pub name: String,
    /// Columns of its input.
    pub in_features: usize,
    /// Columns of its output.
    pub out_features: usize,
    /// Applied to x·W + b in the matmul's epilogue.
    pub act: Activation,
    /// Arena slot of W [in, out].
    pub w: usize,
    /// Arena slot of b, `[out]`.
    pub b: usize,
}

impl Linear {
    /// Registers W and b in `layout`.
    pub fn new(layout: &mut ArenaLayout, name: &str, in_features: usize, out_features: usize, act: Activation) -> Self {
        let w = layout.add(&format!("{name}.weight"), &[in_features, out_features]);
        let b = layout.add(&format!("{name}.bias"), &[out_features]);
        Linear {
            name: name.to_string(),
            in_features,
            out_features,
            act,
            w,
            b,
        }
    }
}

impl Layer for Linear {
    fn name(&self) -> &str {
        &self.name
    }
    fn in_features(&self) -> usize {
        self.in_features
    }
    fn out_features(&self) -> usize {
        self.out_features
    }
    fn activation(&self) -> Activation {
        self.act
    }

    /// PyTorch's nn.Linear default: W and b uniform in ±1/√fan_in.
    fn init(&self, rng: &mut rand_pcg::Pcg64Mcg, values: &mut [Vec<f32>]) {
        let bound = 1.0 / (self.in_features as f32).sqrt();
        for slot in [self.w, self.b] {
            for v in values[slot].iter_mut() {
                *v = crate::rng::uniform_f32(rng, -bound, bound);
            }
        }
    }

    fn forward(&self, gpu: &Gpu, arena: &ParamArena, x: &Tensor, y: &Tensor) -> Result<Vec<Dispatch>> {
        let (w, b) = (arena.param(self.w), arena.param(self.b));
        let epi = Epilogue {
            bias: Some(&b),
            act: self.act,
            leaky_slope: LEAKY_SLOPE,
            ..Default::default()
        };
        let label = format!("{}.forward", self.name);
        let mut out = vec![ops::matmul(gpu, &label, x, false, &w, false, y, &epi, None)?];
        out.extend(ops::refresh_mirror(&label, y));
        Ok(out)
    }

    fn backward(
        &self,
        gpu: &Gpu,
        arena: &ParamArena,
        x: &Tensor,
        dy: &Tensor,
        dx: Option<&Tensor>,
        x_act: Activation,
    ) -> Result<Vec<Dispatch>> {
        let (w, dw, db) = (arena.param(self.w), arena.grad(self.w), arena.grad(self.b));
        // dW = xᵀ·dy with db = Σ_rows dy in the same dispatch.
        let wgrad = Epilogue {
            colsum: Some(&db),
            ..Default::default()
        };
        let mut out = vec![ops::matmul(
            gpu,
            &format!("{}.wgrad", self.name),
            x,
            true,
            dy,
            false,
            &dw,
            &wgrad,
            None,
        )?];
        if let Some(dx) = dx {
            // dx = dy·Wᵀ ⊙ x_act'(x): the previous layer's activation backward, fused.
            let epi = Epilogue {
                dact: (x_act != Activation::Identity).then_some((x_act, x)),
                leaky_slope: LEAKY_SLOPE,
                ..Default::default()
            };
            let label = format!("{}.dgrad", self.name);
            out.push(ops::matmul(gpu, &label, dy, false, &w, true, dx, &epi, None)?);
            out.extend(ops::refresh_mirror(&label, dx));
        }
        Ok(out)
    }
}
