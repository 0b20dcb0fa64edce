//! The MLP encoder and decoder: dense layers with the model's activation, the last one linear
//! (the encoder's head, the decoder's output). Forward fuses bias and activation into each
//! matmul's epilogue; backward fuses each layer's bias gradient into its weight gradient and
//! the previous activation's derivative into its input gradient, so a layer is one dispatch
//! forward and two backward.

use std::ops::Range;

use crate::error::Result;
use crate::gpu::{Dispatch, Gpu, Tensor};
use crate::model::block::{rows, Ctx, Network, NetworkWorkspace, WorkspaceSpec};
use crate::model::checkpoint::CheckpointTensor;
use crate::model::contractive::{Contractive, ContractiveWorkspace};
use crate::model::terms::TermLayout;
use crate::model::VaeConfig;
use crate::nn::{ArenaLayout, Layer, Linear};
use crate::ops::{self, Activation};

/// A stack of dense layers.
#[derive(Clone)]
pub(crate) struct Mlp {
    pub(crate) layers: Vec<Linear>,
    /// The activation that made the stack's input, whose derivative the input gradient takes
    /// (identity for data or draws; a convolutional encoder's feature map has one).
    input_act: Activation,
}

impl Mlp {
    /// Registers `input → hidden[0] → … → out` as layers `{name}.{i}` with `act`, and the
    /// last as `{name}.{last}` with `last_act`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        layout: &mut ArenaLayout,
        name: &str,
        input: usize,
        hidden: &[usize],
        out: usize,
        last: &str,
        act: Activation,
        last_act: Activation,
    ) -> Self {
        let mut layers = Vec::new();
        let mut width = input;
        for (i, &h) in hidden.iter().enumerate() {
            layers.push(Linear::new(layout, &format!("{name}.{i}"), width, h, act));
            width = h;
        }
        layers.push(Linear::new(layout, &format!("{name}.{last}"), width, out, last_act));
        Mlp {
            layers,
            input_act: Activation::Identity,
        }
    }

    /// The same stack reading an input made by `act`.
    pub(crate) fn with_input_act(self, act: Activation) -> Self {
        Mlp { input_act: act, ..self }
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

    pub(crate) fn workspace(&self, gpu: &Gpu, spec: &WorkspaceSpec, name: &str, rows: usize) -> Result<MlpWorkspace> {
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
pub(crate) struct MlpWorkspace {
    net: Mlp,
    hidden: Vec<Tensor>,
    d_hidden: Vec<Tensor>,
}

impl MlpWorkspace {
    /// The first hidden layer's output for `n` rows.
    pub fn first_hidden(&self, n: usize) -> Option<Tensor> {
        self.hidden.first().map(|t| rows(t, n))
    }

    pub(crate) fn forward(&self, c: &Ctx, x: &Tensor, y: &Tensor) -> Result<Vec<Dispatch>> {
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
    pub(crate) fn backward(&self, c: &Ctx, x: &Tensor, dy: &Tensor, dx: Option<&Tensor>) -> Result<Vec<Dispatch>> {
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
                (x.clone(), self.net.input_act, dx.cloned())
            };
            d.extend(layers[i].backward(c.gpu, c.arena, &input, &dy, d_input.as_ref(), input_act)?);
            if let Some(next) = d_input {
                dy = next;
            }
        }
        Ok(d)
    }

    pub(crate) fn tensors(&self) -> Vec<&Tensor> {
        self.hidden.iter().chain(&self.d_hidden).collect()
    }
}

/// The MLP encoder: [x | one-hot | 0…] → hidden layers → head ([μ | log σ²], or a code), with
/// the contractive penalty on its Jacobian when the model has one.
pub struct MlpEncoder {
    mlp: Mlp,
    contractive: Option<Contractive>,
    /// Checkpoint names of the head's column ranges: μ and log σ² (a VAE) or the code.
    head_names: Vec<(&'static str, Range<usize>)>,
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
            Activation::Identity,
        );
        let contractive = Contractive::for_config(cfg, &mlp.layers);
        MlpEncoder {
            mlp,
            contractive,
            head_names: head_names(cfg),
        }
    }
}

/// The checkpoint names of an encoder head's columns: `mu` and `logvar` for a VAE, `code` for
/// an autoencoder or a VQ-VAE.
pub(crate) fn head_names(cfg: &VaeConfig) -> Vec<(&'static str, Range<usize>)> {
    let z = cfg.latent;
    if cfg.is_vae() {
        vec![("mu", 0..z), ("logvar", z..2 * z)]
    } else {
        vec![("code", 0..z)]
    }
}

/// With one hidden layer, the dense models take the PyTorch reference model's names.
fn short_names(mlp: &Mlp) -> bool {
    mlp.layers.len() == 2
}

impl Network for MlpEncoder {
    fn layers(&self) -> Vec<&Linear> {
        self.mlp.layers.iter().collect()
    }

    /// `fc1` (one hidden layer) or `enc{i}`, then the head as `fc21`/`fc22`, `fc2`, or
    /// `mu`/`logvar`, `code`.
    fn checkpoint(&self) -> Vec<CheckpointTensor> {
        let short = short_names(&self.mlp);
        let Some((head, hidden)) = self.mlp.layers.split_last() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, l) in hidden.iter().enumerate() {
            let name = if short { "fc1".to_string() } else { format!("enc{i}") };
            out.extend(CheckpointTensor::dense_range(&name, l, 0..l.out_features));
        }
        let n = self.head_names.len();
        for (k, (long, cols)) in self.head_names.iter().enumerate() {
            let name = match (short, n) {
                (true, 1) => "fc2".to_string(),
                (true, _) => format!("fc2{}", k + 1),
                (false, _) => long.to_string(),
            };
            out.extend(CheckpointTensor::dense_range(&name, head, cols.clone()));
        }
        out
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
                Activation::Identity,
            ),
        }
    }
}

impl Network for MlpDecoder {
    fn layers(&self) -> Vec<&Linear> {
        self.mlp.layers.iter().collect()
    }

    /// `fc3` and `fc4` (one hidden layer), or `dec{i}` and `out`.
    fn checkpoint(&self) -> Vec<CheckpointTensor> {
        let short = short_names(&self.mlp);
        let last = self.mlp.layers.len() - 1;
        let mut out = Vec::new();
        for (i, l) in self.mlp.layers.iter().enumerate() {
            let name = match (short, i == last) {
                (true, false) => "fc3".to_string(),
                (true, true) => "fc4".to_string(),
                (false, false) => format!("dec{i}"),
                (false, true) => "out".to_string(),
            };
            out.extend(CheckpointTensor::dense_range(&name, l, 0..l.out_features));
        }
        out
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
