//! The MLP encoder and decoder: dense layers with the model's activation, the last one linear
//! (the encoder's head, the decoder's output). Forward fuses bias and activation into each
//! matmul's epilogue; backward fuses each layer's bias gradient into its weight gradient and
//! the previous activation's derivative into its input gradient, so a layer is one dispatch
//! forward and two backward.

use crate::error::Result;
use crate::gpu::{Dispatch, Gpu, Tensor};
use crate::model::block::{rows, Ctx, Network, NetworkWorkspace, WorkspaceSpec};
use crate::model::contractive::{Contractive, ContractiveWorkspace};
use crate::model::terms::TermLayout;
use crate::model::VaeConfig;
use crate::nn::{ArenaLayout, Layer, Linear};
use crate::ops::{self, Activation};

/// A stack of dense layers, the last without activation.
#[derive(Clone)]
pub struct Mlp {
    layers: Vec<Linear>,
}

impl Mlp {
    /// Registers `widths[0] → widths[1] → … → out` as layers `{name}.{i}` with `act`, and the
    /// last as `{name}.{last}` without activation.
    fn new(
        layout: &mut ArenaLayout,
        name: &str,
        input: usize,
        hidden: &[usize],
        out: usize,
        last: &str,
        act: Activation,
    ) -> Self {
        let mut layers = Vec::new();
        let mut width = input;
        for (i, &h) in hidden.iter().enumerate() {
            layers.push(Linear::new(layout, &format!("{name}.{i}"), width, h, act));
            width = h;
        }
        layers.push(Linear::new(
            layout,
            &format!("{name}.{last}"),
            width,
            out,
            Activation::Identity,
        ));
        Mlp { layers }
    }

    /// Each hidden layer's output (or its gradient) for `rows` rows, mirrored when the
    /// workspace's policy asks.
    fn hidden(&self, gpu: &Gpu, spec: &WorkspaceSpec, name: &str, rows: usize) -> Result<Vec<Tensor>> {
        let hidden = &self.layers[..self.layers.len() - 1];
        hidden
            .iter()
            .map(|l| {
                let t = gpu.tensor(name, &[rows, l.out_features])?;
                let whole = (rows * l.out_features).is_multiple_of(4);
                ops::mirrored(gpu, name, t, spec.mirrors && whole)
            })
            .collect()
    }

    fn workspace(&self, gpu: &Gpu, spec: &WorkspaceSpec, name: &str, rows: usize) -> Result<MlpWorkspace> {
        Ok(MlpWorkspace {
            net: self.clone(),
            hidden: self.hidden(gpu, spec, name, rows)?,
            d_hidden: if spec.train {
                self.hidden(gpu, spec, &format!("d_{name}"), rows)?
            } else {
                Vec::new()
            },
        })
    }
}

/// An MLP's hidden activations [rows, h] and, for training, their gradients.
pub struct MlpWorkspace {
    net: Mlp,
    hidden: Vec<Tensor>,
    d_hidden: Vec<Tensor>,
}

impl MlpWorkspace {
    /// The first hidden layer's output for `n` rows.
    pub fn first_hidden(&self, n: usize) -> Option<Tensor> {
        self.hidden.first().map(|t| rows(t, n))
    }

    fn forward(&self, c: &Ctx, x: &Tensor, y: &Tensor) -> Result<Vec<Dispatch>> {
        let n = x.shape()[0];
        let mut d = Vec::new();
        let mut input = x.clone();
        for (i, l) in self.net.layers.iter().enumerate() {
            let output = self.hidden.get(i).map_or_else(|| y.clone(), |h| rows(h, n));
            d.extend(l.forward(c.gpu, c.arena, &input, &output)?);
            input = output;
        }
        Ok(d)
    }

    /// Output layer first; each layer's input gradient goes to the layer below (the first
    /// layer's to `dx`, if given), multiplied by the derivative of the activation that made
    /// its input.
    fn backward(&self, c: &Ctx, x: &Tensor, dy: &Tensor, dx: Option<&Tensor>) -> Result<Vec<Dispatch>> {
        let n = x.shape()[0];
        if self.d_hidden.len() != self.hidden.len() {
            return Err(crate::VaeError::Config(
                "a backward plan needs a workspace made for training".into(),
            ));
        }
        let layers = &self.net.layers;
        let mut d = Vec::new();
        let mut dy = dy.clone();
        for i in (0..layers.len()).rev() {
            let (input, input_act, d_input) = if i > 0 {
                (
                    rows(&self.hidden[i - 1], n),
                    layers[i - 1].act,
                    Some(rows(&self.d_hidden[i - 1], n)),
                )
            } else {
                (x.clone(), Activation::Identity, dx.cloned())
            };
            d.extend(layers[i].backward(c.gpu, c.arena, &input, &dy, d_input.as_ref(), input_act)?);
            if let Some(next) = d_input {
                dy = next;
            }
        }
        Ok(d)
    }

    fn tensors(&self) -> Vec<&Tensor> {
        self.hidden.iter().chain(&self.d_hidden).collect()
    }
}

/// The MLP encoder: [x | one-hot | 0…] → hidden layers → head ([μ | log σ²], or a code), with
/// the contractive penalty on its Jacobian when the model has one.
pub struct MlpEncoder {
    mlp: Mlp,
    contractive: Option<Contractive>,
}

impl MlpEncoder {
    /// Registers the layers `encoder.{i}` and `encoder.head` (as wide as the latent block reads).
    pub fn new(layout: &mut ArenaLayout, cfg: &VaeConfig) -> Self {
        let mlp = Mlp::new(
            layout,
            "encoder",
            cfg.enc_input_dim(),
            &cfg.hidden,
            cfg.head_width(),
            "head",
            cfg.activation,
        );
        let contractive = Contractive::for_config(cfg, &mlp.layers);
        MlpEncoder { mlp, contractive }
    }
}

impl Network for MlpEncoder {
    fn layers(&self) -> Vec<&Linear> {
        self.mlp.layers.iter().collect()
    }

    fn workspace(
        &self,
        gpu: &Gpu,
        spec: &WorkspaceSpec,
        rows: usize,
        terms: &mut TermLayout,
    ) -> Result<Box<dyn NetworkWorkspace>> {
        Ok(Box::new(MlpEncoderWorkspace {
            mlp: self.mlp.workspace(gpu, spec, "enc_hidden", rows)?,
            contractive: match &self.contractive {
                Some(c) => Some(c.workspace(gpu, rows, terms)?),
                None => None,
            },
        }))
    }
}

/// The encoder's activations, and the contractive penalty's scratch.
struct MlpEncoderWorkspace {
    mlp: MlpWorkspace,
    contractive: Option<ContractiveWorkspace>,
}

impl NetworkWorkspace for MlpEncoderWorkspace {
    fn forward(&self, c: &Ctx, x: &Tensor, y: &Tensor) -> Result<Vec<Dispatch>> {
        self.mlp.forward(c, x, y)
    }

    fn penalties(&self, c: &Ctx) -> Result<Vec<Dispatch>> {
        match (&self.contractive, self.mlp.first_hidden(c.b)) {
            (Some(p), Some(hidden)) => p.forward(c, &hidden),
            (Some(_), None) => Err(crate::VaeError::Config(
                "the contractive penalty needs the encoder's hidden layer".into(),
            )),
            (None, _) => Ok(Vec::new()),
        }
    }

    fn backward(&self, c: &Ctx, x: &Tensor, dy: &Tensor, dx: Option<&Tensor>) -> Result<Vec<Dispatch>> {
        let mut d = self.mlp.backward(c, x, dy, dx)?;
        // Added to the weight gradients the layers have just written.
        if let Some(p) = &self.contractive {
            d.extend(p.backward(c)?);
        }
        Ok(d)
    }

    fn tensors(&self) -> Vec<&Tensor> {
        let mut all = self.mlp.tensors();
        all.extend(self.contractive.iter().flat_map(|p| p.tensors()));
        all
    }
}

/// The MLP decoder: [z | one-hot | 0…] → hidden layers (the encoder's widths reversed) →
/// output (Bernoulli logits or Gaussian means).
pub struct MlpDecoder {
    mlp: Mlp,
}

impl MlpDecoder {
    /// Registers the layers `decoder.{i}` and `decoder.out`.
    pub fn new(layout: &mut ArenaLayout, cfg: &VaeConfig) -> Self {
        let hidden: Vec<usize> = cfg.hidden.iter().rev().copied().collect();
        MlpDecoder {
            mlp: Mlp::new(
                layout,
                "decoder",
                cfg.dec_input_dim(),
                &hidden,
                cfg.input_dim,
                "out",
                cfg.activation,
            ),
        }
    }
}

impl Network for MlpDecoder {
    fn layers(&self) -> Vec<&Linear> {
        self.mlp.layers.iter().collect()
    }

    fn workspace(
        &self,
        gpu: &Gpu,
        spec: &WorkspaceSpec,
        rows: usize,
        _terms: &mut TermLayout,
    ) -> Result<Box<dyn NetworkWorkspace>> {
        Ok(Box::new(self.mlp.workspace(gpu, spec, "dec_hidden", rows)?))
    }
}

impl NetworkWorkspace for MlpWorkspace {
    fn forward(&self, c: &Ctx, x: &Tensor, y: &Tensor) -> Result<Vec<Dispatch>> {
        MlpWorkspace::forward(self, c, x, y)
    }
    fn backward(&self, c: &Ctx, x: &Tensor, dy: &Tensor, dx: Option<&Tensor>) -> Result<Vec<Dispatch>> {
        MlpWorkspace::backward(self, c, x, dy, dx)
    }
    fn tensors(&self) -> Vec<&Tensor> {
        MlpWorkspace::tensors(self)
    }
}
