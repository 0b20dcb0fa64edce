//! The convolutional encoder and decoder ([`crate::model::ConvArch`]).
//!
//! Encoder: x [b, H·W·C] (NHWC) → convolutions (each halving the image, with the model's
//! activation) → the feature map [b, H'·W'·C'] → dense layers → the head. Decoder: z → dense
//! layers (each with the activation) → the feature map → transposed convolutions → the output
//! [L·b, H·W·C] (the last without activation). A convolutional VQ-VAE has no dense layers: the
//! encoder's last convolution (without activation) is z_e, and the decoder starts from the
//! quantized map. A conditional model's one-hot joins at the dense layers: the encoder copies
//! its feature map into the first columns of rows whose last columns hold the one-hot, and its
//! gradient back.
//!
//! Checkpoint keys are the attribute names of the PyTorch module in `docs/checkpoints.md`:
//! `enc_conv.{i}`, `enc_fc.{i}`, `mu`/`logvar` (or `code`), `dec_fc.{i}`, `dec_conv.{i}`; a
//! dense weight next to the feature map takes its 3136 axis in PyTorch's flatten order.

use crate::error::{Result, VaeError};
use crate::gpu::{Dispatch, Gpu, Tensor};
use crate::model::block::{rows, Ctx, Network, NetworkWorkspace, WorkspaceSpec};
use crate::model::checkpoint::{nchw_order, CheckpointTensor};
use crate::model::config::{ConvArch, CONV_KERNEL, CONV_PADDING, CONV_STRIDE};
use crate::model::mlp::{head_names, Mlp, MlpWorkspace};
use crate::model::terms::TermLayout;
use crate::model::{Code, VaeConfig};
use crate::nn::{ArenaLayout, Conv2d, Layer, Linear};
use crate::ops::{self, Activation};

const GEOMETRY: (usize, usize, usize) = (CONV_KERNEL, CONV_STRIDE, CONV_PADDING);

/// The convolutions' activations [n, len] for `n` rows (and, training, their gradients).
/// `t` with a texture mirror where the workspace's policy asks and its values are whole texels.
fn mirrored(gpu: &Gpu, spec: &WorkspaceSpec, name: &str, t: Tensor) -> Result<Tensor> {
    let whole = t.len().is_multiple_of(4);
    ops::mirrored(gpu, name, t, spec.mirrors && whole)
}

struct ConvStack {
    layers: Vec<Conv2d>,
    /// Each layer's output except the stack's last, whose output belongs to the caller.
    outputs: Vec<Tensor>,
    d_outputs: Vec<Tensor>,
    /// Each layer's patch matrix, where its input gradient needs one.
    cols: Vec<Option<Tensor>>,
}

impl ConvStack {
    fn new(gpu: &Gpu, spec: &WorkspaceSpec, layers: &[Conv2d], name: &str, n: usize) -> Result<Self> {
        let inner = &layers[..layers.len() - 1];
        // Mirrored where a weight gradient reads it as B: a transposed layer's input, a
        // convolution's output gradient.
        let t = |prefix: &str, l: &Conv2d, mirror: bool| {
            let name = format!("{prefix}.{}", l.name);
            let t = gpu.tensor(&name, &[n, l.out_len()])?;
            if mirror {
                mirrored(gpu, spec, &name, t)
            } else {
                Ok(t)
            }
        };
        Ok(ConvStack {
            layers: layers.to_vec(),
            outputs: inner
                .iter()
                .zip(&layers[1..])
                .map(|(l, next)| t(name, l, next.transposed))
                .collect::<Result<_>>()?,
            d_outputs: if spec.train {
                inner
                    .iter()
                    .map(|l| t(&format!("d_{name}"), l, !l.transposed))
                    .collect::<Result<_>>()?
            } else {
                Vec::new()
            },
            cols: layers.iter().map(|l| l.cols(gpu, n)).collect::<Result<_>>()?,
        })
    }

    /// y = stack(x) for x's rows.
    fn forward(&self, c: &Ctx, x: &Tensor, y: &Tensor) -> Result<Vec<Dispatch>> {
        let n = x.shape()[0];
        let mut d = Vec::new();
        let mut input = x.clone();
        for (i, l) in self.layers.iter().enumerate() {
            let output = self.outputs.get(i).map_or_else(|| y.clone(), |t| rows(t, n));
            d.extend(l.forward(c.gpu, c.arena, &input, &output, self.cols[i].as_ref())?);
            if i + 1 < self.layers.len() {
                d.extend(ops::refresh_mirror(&format!("{}.forward", l.name), &output));
            }
            input = output;
        }
        Ok(d)
    }

    /// Last layer first, from dL/dy to the parameter gradients and (given `dx`) dL/dx times
    /// the derivative of `x_act`, the activation that made x.
    fn backward(
        &self,
        c: &Ctx,
        x: &Tensor,
        dy: &Tensor,
        dx: Option<&Tensor>,
        x_act: Activation,
    ) -> Result<Vec<Dispatch>> {
        let n = x.shape()[0];
        if self.d_outputs.len() != self.outputs.len() {
            return Err(VaeError::Config(
                "a backward plan needs a workspace made for training".into(),
            ));
        }
        let mut d = Vec::new();
        let mut dy = dy.clone();
        for i in (0..self.layers.len()).rev() {
            let (input, act, d_input) = if i > 0 {
                (
                    rows(&self.outputs[i - 1], n),
                    self.layers[i - 1].act,
                    Some(rows(&self.d_outputs[i - 1], n)),
                )
            } else {
                (x.clone(), x_act, dx.cloned())
            };
            d.extend(self.layers[i].backward(
                c.gpu,
                c.arena,
                &input,
                &dy,
                d_input.as_ref(),
                act,
                self.cols[i].as_ref(),
            )?);
            if let Some(next) = d_input {
                if i > 0 {
                    d.extend(ops::refresh_mirror(&format!("{}.dgrad", self.layers[i].name), &next));
                }
                dy = next;
            }
        }
        Ok(d)
    }

    fn tensors(&self) -> Vec<&Tensor> {
        self.outputs
            .iter()
            .chain(&self.d_outputs)
            .chain(self.cols.iter().flatten())
            .collect()
    }
}

/// The convolutional encoder: convolutions, then (unless the code is quantized) dense layers to
/// the head.
pub struct ConvEncoder {
    convs: Vec<Conv2d>,
    /// The dense layers from the feature map (and a conditional model's one-hot) to the head.
    dense: Option<Mlp>,
    /// Values of the feature map, and the columns the dense layers read (the feature map,
    /// then the padded one-hot).
    feature: usize,
    dense_width: usize,
    feature_map: [usize; 3],
    head_names: Vec<(&'static str, std::ops::Range<usize>)>,
}

impl ConvEncoder {
    /// Registers `encoder.conv.{i}`, then `encoder.{i}` and `encoder.head`.
    pub fn new(layout: &mut ArenaLayout, cfg: &VaeConfig, arch: &ConvArch) -> Self {
        let vq = matches!(cfg.code, Code::Quantized { .. });
        let sides = arch.sides();
        let n = arch.channels.len();
        let mut c_in = arch.input[0];
        let mut convs = Vec::new();
        for (i, &c_out) in arch.channels.iter().enumerate() {
            // A VQ-VAE's z_e is the last convolution's output as it is.
            let act = if vq && i == n - 1 {
                Activation::Identity
            } else {
                cfg.activation
            };
            let name = format!("encoder.conv.{i}");
            convs.push(Conv2d::new(layout, &name, c_in, c_out, sides[i], GEOMETRY, false, act));
            c_in = c_out;
        }
        let dense = (!vq).then(|| {
            Mlp::new(
                layout,
                "encoder",
                cfg.dense_input_dim(),
                &cfg.hidden,
                cfg.head_width(),
                "head",
                cfg.activation,
                Activation::Identity,
            )
            .with_input_act(cfg.activation)
        });
        ConvEncoder {
            convs,
            dense,
            feature: arch.feature_len(),
            dense_width: cfg.dense_input_dim(),
            feature_map: arch.feature_map().unwrap_or_default(),
            head_names: head_names(cfg),
        }
    }
}

impl Network for ConvEncoder {
    fn layers(&self) -> Vec<&Linear> {
        self.dense.iter().flat_map(|m| &m.layers).collect()
    }

    fn convs(&self) -> Vec<&Conv2d> {
        self.convs.iter().collect()
    }

    fn init(&self, rng: &mut rand_pcg::Pcg64Mcg, values: &mut [Vec<f32>]) {
        for c in &self.convs {
            c.init(rng, values);
        }
        for l in self.layers() {
            l.init(rng, values);
        }
    }

    /// `enc_conv.{i}`, `enc_fc.{i}`, then the head as `mu` and `logvar` or `code`; the first
    /// dense layer reads the feature map in PyTorch's flatten order.
    fn checkpoint(&self) -> Vec<CheckpointTensor> {
        let mut out = Vec::new();
        for (i, c) in self.convs.iter().enumerate() {
            out.extend(CheckpointTensor::conv(&format!("enc_conv.{i}"), c));
        }
        let Some(dense) = &self.dense else {
            return out;
        };
        let Some((head, hidden)) = dense.layers.split_last() else {
            return out;
        };
        let first_inputs = nchw_order(self.feature_map, self.dense_width - self.feature);
        let inputs = |i: usize, l: &Linear| {
            if i == 0 {
                first_inputs.clone()
            } else {
                (0..l.in_features).collect()
            }
        };
        for (i, l) in hidden.iter().enumerate() {
            let cols: Vec<usize> = (0..l.out_features).collect();
            out.extend(CheckpointTensor::dense(&format!("enc_fc.{i}"), l, &cols, &inputs(i, l)));
        }
        let head_inputs = inputs(hidden.len(), head);
        for (name, cols) in &self.head_names {
            let cols: Vec<usize> = cols.clone().collect();
            out.extend(CheckpointTensor::dense(name, head, &cols, &head_inputs));
        }
        out
    }

    fn workspace(
        &self,
        gpu: &Gpu,
        spec: &WorkspaceSpec,
        n: usize,
        _terms: &mut TermLayout,
    ) -> Result<Box<dyn NetworkWorkspace>> {
        let convs = ConvStack::new(gpu, spec, &self.convs, "enc", n)?;
        let Some(dense) = &self.dense else {
            return Ok(Box::new(ConvEncoderWorkspace { convs, dense: None }));
        };
        let t = |name: &str, width: usize| gpu.tensor(name, &[n, width]);
        let joined = self.dense_width != self.feature;
        let feature = t("enc_feature", self.feature)?;
        let part = DenseWorkspace {
            mlp: dense.workspace(gpu, spec, "enc_hidden", n)?,
            joined: joined.then(|| t("enc_dense_in", self.dense_width)).transpose()?,
            d_joined: (joined && spec.train)
                .then(|| t("d_enc_dense_in", self.dense_width))
                .transpose()?,
            // B of the last convolution's weight gradient: mirrored like a dense layer's.
            d_feature: spec
                .train
                .then(|| mirrored(gpu, spec, "d_enc_feature", t("d_enc_feature", self.feature)?))
                .transpose()?,
            feature,
        };
        Ok(Box::new(ConvEncoderWorkspace {
            convs,
            dense: Some(part),
        }))
    }
}

/// The encoder's dense part for one batch size: the feature map, a conditional model's joined
/// rows [feature map | one-hot | 0…], the hidden layers.
struct DenseWorkspace {
    mlp: MlpWorkspace,
    feature: Tensor,
    d_feature: Option<Tensor>,
    joined: Option<Tensor>,
    d_joined: Option<Tensor>,
}

struct ConvEncoderWorkspace {
    convs: ConvStack,
    dense: Option<DenseWorkspace>,
}

impl NetworkWorkspace for ConvEncoderWorkspace {
    fn forward(&self, c: &Ctx, x: &Tensor, y: &Tensor) -> Result<Vec<Dispatch>> {
        let n = x.shape()[0];
        let Some(p) = &self.dense else {
            return self.convs.forward(c, x, y);
        };
        let feature = rows(&p.feature, n);
        let mut d = self.convs.forward(c, x, &feature)?;
        let dense_in = match &p.joined {
            Some(j) => {
                let j = rows(j, n);
                d.push(ops::copy_columns(
                    c.gpu,
                    "encoder.join",
                    &feature,
                    &j,
                    feature.shape()[1],
                )?);
                j
            }
            None => feature,
        };
        d.extend(p.mlp.forward(c, &dense_in, y)?);
        Ok(d)
    }

    fn backward(&self, c: &Ctx, x: &Tensor, dy: &Tensor, dx: Option<&Tensor>) -> Result<Vec<Dispatch>> {
        let n = x.shape()[0];
        let Some(p) = &self.dense else {
            return self.convs.backward(c, x, dy, dx, Activation::Identity);
        };
        let d_feature = p
            .d_feature
            .as_ref()
            .map(|t| rows(t, n))
            .ok_or_else(|| VaeError::Config("a backward plan needs a workspace made for training".into()))?;
        let feature = rows(&p.feature, n);
        let mut d = match (&p.joined, &p.d_joined) {
            (Some(j), Some(dj)) => {
                let (j, dj) = (rows(j, n), rows(dj, n));
                let mut d = p.mlp.backward(c, &j, dy, Some(&dj))?;
                d.push(ops::copy_columns(
                    c.gpu,
                    "encoder.unjoin",
                    &dj,
                    &d_feature,
                    feature.shape()[1],
                )?);
                d.extend(ops::refresh_mirror("encoder.unjoin", &d_feature));
                d
            }
            _ => p.mlp.backward(c, &feature, dy, Some(&d_feature))?,
        };
        // The dense layers' input gradient has taken the last convolution's activation
        // derivative (their input activation), so the stack starts from a pre-activation one.
        d.extend(self.convs.backward(c, x, &d_feature, dx, Activation::Identity)?);
        Ok(d)
    }

    fn labelled_rows(&self) -> Vec<(Tensor, usize)> {
        match &self.dense {
            Some(DenseWorkspace {
                joined: Some(j),
                feature,
                ..
            }) => vec![(j.clone(), feature.shape()[1])],
            _ => Vec::new(),
        }
    }

    fn tensors(&self) -> Vec<&Tensor> {
        let mut all = self.convs.tensors();
        if let Some(p) = &self.dense {
            all.extend(p.mlp.tensors());
            all.push(&p.feature);
            all.extend(p.d_feature.iter().chain(&p.joined).chain(&p.d_joined));
        }
        all
    }
}

/// The convolutional decoder: (unless the code is quantized) dense layers from z to the feature
/// map, then transposed convolutions up to the image.
pub struct ConvDecoder {
    dense: Option<Mlp>,
    convs: Vec<Conv2d>,
    feature: usize,
    feature_map: [usize; 3],
    act: Activation,
}

impl ConvDecoder {
    /// Registers `decoder.{i}` (the last to the feature map), then `decoder.conv.{i}`.
    pub fn new(layout: &mut ArenaLayout, cfg: &VaeConfig, arch: &ConvArch) -> Self {
        let vq = matches!(cfg.code, Code::Quantized { .. });
        let feature = arch.feature_len();
        let dense = (!vq).then(|| {
            let hidden: Vec<usize> = cfg.hidden.iter().rev().copied().collect();
            let last = hidden.len().to_string();
            Mlp::new(
                layout,
                "decoder",
                cfg.dec_input_dim(),
                &hidden,
                feature,
                &last,
                cfg.activation,
                cfg.activation,
            )
        });
        let sides = arch.sides();
        let n = arch.channels.len();
        let mut convs = Vec::new();
        for i in 0..n {
            // Mirror of encoder layer n − 1 − i: from its output channels to its input's.
            let j = n - 1 - i;
            let c_in = arch.channels[j];
            let c_out = if j == 0 { arch.input[0] } else { arch.channels[j - 1] };
            let (h, w) = sides[j];
            let act = if i == n - 1 {
                Activation::Identity
            } else {
                cfg.activation
            };
            let name = format!("decoder.conv.{i}");
            convs.push(Conv2d::new(
                layout,
                &name,
                c_in,
                c_out,
                (h / 2, w / 2),
                GEOMETRY,
                true,
                act,
            ));
        }
        ConvDecoder {
            dense,
            convs,
            feature,
            feature_map: arch.feature_map().unwrap_or_default(),
            act: cfg.activation,
        }
    }
}

impl Network for ConvDecoder {
    fn layers(&self) -> Vec<&Linear> {
        self.dense.iter().flat_map(|m| &m.layers).collect()
    }

    fn convs(&self) -> Vec<&Conv2d> {
        self.convs.iter().collect()
    }

    fn init(&self, rng: &mut rand_pcg::Pcg64Mcg, values: &mut [Vec<f32>]) {
        for l in self.layers() {
            l.init(rng, values);
        }
        for c in &self.convs {
            c.init(rng, values);
        }
    }

    /// `dec_fc.{i}` (the last writing the feature map in PyTorch's flatten order), then
    /// `dec_conv.{i}`.
    fn checkpoint(&self) -> Vec<CheckpointTensor> {
        let mut out = Vec::new();
        if let Some(dense) = &self.dense {
            let last = dense.layers.len() - 1;
            for (i, l) in dense.layers.iter().enumerate() {
                let cols = if i == last {
                    nchw_order(self.feature_map, 0)
                } else {
                    (0..l.out_features).collect()
                };
                let inputs: Vec<usize> = (0..l.in_features).collect();
                out.extend(CheckpointTensor::dense(&format!("dec_fc.{i}"), l, &cols, &inputs));
            }
        }
        for (i, c) in self.convs.iter().enumerate() {
            out.extend(CheckpointTensor::conv(&format!("dec_conv.{i}"), c));
        }
        out
    }

    fn workspace(
        &self,
        gpu: &Gpu,
        spec: &WorkspaceSpec,
        n: usize,
        _terms: &mut TermLayout,
    ) -> Result<Box<dyn NetworkWorkspace>> {
        let t = |name: &str| gpu.tensor(name, &[n, self.feature]);
        Ok(Box::new(ConvDecoderWorkspace {
            dense: match &self.dense {
                Some(m) => Some((
                    m.workspace(gpu, spec, "dec_hidden", n)?,
                    // B of the first transposed convolution's weight gradient.
                    mirrored(gpu, spec, "dec_feature", t("dec_feature")?)?,
                    spec.train.then(|| t("d_dec_feature")).transpose()?,
                )),
                None => None,
            },
            convs: ConvStack::new(gpu, spec, &self.convs, "dec", n)?,
            act: self.act,
        }))
    }
}

struct ConvDecoderWorkspace {
    /// The dense layers' workspace, the feature map they write and its gradient.
    dense: Option<(MlpWorkspace, Tensor, Option<Tensor>)>,
    convs: ConvStack,
    act: Activation,
}

impl NetworkWorkspace for ConvDecoderWorkspace {
    fn forward(&self, c: &Ctx, z: &Tensor, y: &Tensor) -> Result<Vec<Dispatch>> {
        let n = z.shape()[0];
        let Some((mlp, feature, _)) = &self.dense else {
            return self.convs.forward(c, z, y);
        };
        let feature = rows(feature, n);
        let mut d = mlp.forward(c, z, &feature)?;
        d.extend(self.convs.forward(c, &feature, y)?);
        Ok(d)
    }

    fn backward(&self, c: &Ctx, z: &Tensor, dy: &Tensor, dz: Option<&Tensor>) -> Result<Vec<Dispatch>> {
        let n = z.shape()[0];
        let Some((mlp, feature, d_feature)) = &self.dense else {
            // A VQ-VAE's quantized code is the transposed convolutions' input as it is.
            return self.convs.backward(c, z, dy, dz, Activation::Identity);
        };
        let d_feature = d_feature
            .as_ref()
            .map(|t| rows(t, n))
            .ok_or_else(|| VaeError::Config("a backward plan needs a workspace made for training".into()))?;
        let mut d = self
            .convs
            .backward(c, &rows(feature, n), dy, Some(&d_feature), self.act)?;
        d.extend(mlp.backward(c, z, &d_feature, dz)?);
        Ok(d)
    }

    fn tensors(&self) -> Vec<&Tensor> {
        let mut all = self.convs.tensors();
        if let Some((mlp, f, df)) = &self.dense {
            all.extend(mlp.tensors());
            all.push(f);
            all.extend(df);
        }
        all
    }
}
