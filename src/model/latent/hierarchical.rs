//! A hierarchical VAE's latent: z₁ Gaussian as in the one-layer VAE, and stochastic layers
//! above it (see [`crate::model::TopLatent`]). Upper layer k has q(z_k|z_{k−1}), an MLP on the
//! layer below, and the conditional prior p(z_{k−1}|z_k), an MLP on its own draws, which replaces
//! N(0, I) as the lower layer's prior; the topmost layer's prior is N(0, I).
//!
//! Forward: z₁'s draws (no KL: its prior term comes later); up the layers, q's network and the
//! layer's draws (the topmost with its closed-form KL); then for each upper layer the prior's
//! network and the lower layer's ladder KL term E_q[log q] − log p(z_{k−1}|z_k) with its
//! gradients (`hier_kl`). Backward runs top down: each layer's prior network, its draw (summing
//! the gradients from above, from its own KL term and from the prior network it feeds), q's
//! network into the layer below; last z₁'s sample backward into the encoder's output.
//!
//! Each layer draws with its own ε key base ([`ops::top_sample_base`]), one draw per row of the
//! layer below; z₁ keeps L draws per example, so every upper tensor has L·b rows.

use crate::error::{Result, VaeError};
use crate::gpu::{Dispatch, Gpu, Tensor};
use crate::model::block::{rows, Ctx, Latent, LatentWorkspace, WorkspaceSpec};
use crate::model::terms::{TermId, TermKind, TermLayout, TermRows, TermSpec};
use crate::model::{TopLatent, VaeConfig};
use crate::nn::{ArenaLayout, Layer, Linear, ParamArena};
use crate::ops::{self, Activation, StepBuffer};
use crate::rng;

/// An upper layer's network: hidden layers `{prefix}.0`, `{prefix}.1`, … with the model's
/// activation, then the head `{prefix}.head` (no activation) writing [μ | log σ²].
#[derive(Clone)]
pub struct Chain {
    /// The hidden layers, input side first.
    pub hidden: Vec<Linear>,
    /// The last layer.
    pub head: Linear,
}

impl Chain {
    fn new(
        layout: &mut ArenaLayout,
        prefix: &str,
        input: usize,
        widths: &[usize],
        out: usize,
        act: Activation,
    ) -> Self {
        let mut hidden = Vec::new();
        let mut width = input;
        for (j, &h) in widths.iter().enumerate() {
            hidden.push(Linear::new(layout, &format!("{prefix}.{j}"), width, h, act));
            width = h;
        }
        Chain {
            hidden,
            head: Linear::new(layout, &format!("{prefix}.head"), width, out, Activation::Identity),
        }
    }

    /// Its layers in forward order.
    pub fn layers(&self) -> Vec<&Linear> {
        self.hidden.iter().chain([&self.head]).collect()
    }

    /// Plans x → `acts` (one per hidden layer) → `out`.
    pub fn forward(
        &self,
        gpu: &Gpu,
        arena: &ParamArena,
        x: &Tensor,
        acts: &[Tensor],
        out: &Tensor,
    ) -> Result<Vec<Dispatch>> {
        let mut d = Vec::new();
        let mut input = x;
        for (layer, a) in self.hidden.iter().zip(acts) {
            d.extend(layer.forward(gpu, arena, input, a)?);
            input = a;
        }
        d.extend(self.head.forward(gpu, arena, input, out)?);
        Ok(d)
    }

    /// Plans the parameter gradients from ∂L/∂`out`, through the hidden layers' pre-activation
    /// gradients `d_acts`, and ∂L/∂x into `dx`.
    #[allow(clippy::too_many_arguments)]
    fn backward(
        &self,
        gpu: &Gpu,
        arena: &ParamArena,
        x: &Tensor,
        acts: &[Tensor],
        d_acts: &[Tensor],
        d_out: &Tensor,
        dx: &Tensor,
    ) -> Result<Vec<Dispatch>> {
        let m = self.hidden.len();
        let mut d = self.head.backward(
            gpu,
            arena,
            &acts[m - 1],
            d_out,
            Some(&d_acts[m - 1]),
            self.hidden[m - 1].act,
        )?;
        for j in (0..m).rev() {
            let (input, below, act) = match j {
                0 => (x, dx, Activation::Identity),
                _ => (&acts[j - 1], &d_acts[j - 1], self.hidden[j - 1].act),
            };
            d.extend(self.hidden[j].backward(gpu, arena, input, &d_acts[j], Some(below), act)?);
        }
        Ok(d)
    }
}

/// The networks of one upper stochastic layer. Written for z₂ above z₁; upper layer i is
/// z_{i+2} above z_{i+1}.
#[derive(Clone)]
pub struct TopLayers {
    /// q(z₂|z₁): z₁ → hidden → [μ₂ | log σ₂²].
    pub up: Chain,
    /// p(z₁|z₂): z₂ → hidden → [μₚ | log σₚ²].
    pub prior: Chain,
}

impl TopLayers {
    fn new(layout: &mut ArenaLayout, cfg: &VaeConfig, i: usize) -> Self {
        let (act, t) = (cfg.activation, &cfg.top()[i]);
        // Slot names: "top.*" for z₂ (the first, and once the only, upper layer), "top.z3.*"
        // and so on above it.
        let name = |part: &str| match i {
            0 => format!("top.{part}"),
            _ => format!("top.z{}.{part}", i + 2),
        };
        TopLayers {
            // A conditional model's rows carry the one-hot after the draws (z₁'s as the decoder
            // reads them), so both networks see the label.
            up: Chain::new(layout, &name("up"), cfg.top_below_dim(i), &t.hidden, 2 * t.latent, act),
            prior: Chain::new(
                layout,
                &name("prior"),
                cfg.top_input_dim(i),
                &t.hidden,
                2 * cfg.top_below_latent(i),
                act,
            ),
        }
    }

    /// Its layers in forward order: q's, then p's.
    pub fn layers(&self) -> Vec<&Linear> {
        let mut all = self.up.layers();
        all.extend(self.prior.layers());
        all
    }

    /// Plans the conditional prior's network: z₂ [B, Z₂'] (z₂'s rows as
    /// [`VaeConfig::top_input_dim`] gives them) → `hidden` ([B, H] each) → `p1` [B, 2Z] =
    /// [μₚ | log σₚ²] of p(z₁|z₂).
    pub fn plan_prior(
        &self,
        gpu: &Gpu,
        arena: &ParamArena,
        z2: &Tensor,
        hidden: &[Tensor],
        p1: &Tensor,
    ) -> Result<Vec<Dispatch>> {
        self.prior.forward(gpu, arena, z2, hidden, p1)
    }
}

/// z₁ and the layers above it.
#[derive(Clone)]
pub struct Hierarchy {
    /// z₁'s size.
    latent: usize,
    /// The upper layers' sizes, from z₂ up.
    top: Vec<TopLatent>,
    /// Their rows' widths as the networks read them ([`VaeConfig::top_input_dim`]).
    input_dims: Vec<usize>,
    /// The widths of the rows below each ([`VaeConfig::top_below_dim`]).
    below_dims: Vec<usize>,
    /// The latent size below each ([`VaeConfig::top_below_latent`]).
    below_latents: Vec<usize>,
    /// Classes of a conditional model (0: none).
    classes: usize,
    /// Their networks.
    layers: Vec<TopLayers>,
}

impl Hierarchy {
    /// Registers each upper layer's networks, from z₂ up.
    pub fn new(layout: &mut ArenaLayout, cfg: &VaeConfig) -> Self {
        let n = cfg.top().len();
        Hierarchy {
            latent: cfg.latent,
            top: cfg.top().to_vec(),
            input_dims: (0..n).map(|i| cfg.top_input_dim(i)).collect(),
            below_dims: (0..n).map(|i| cfg.top_below_dim(i)).collect(),
            below_latents: (0..n).map(|i| cfg.top_below_latent(i)).collect(),
            classes: cfg.classes,
            layers: (0..n).map(|i| TopLayers::new(layout, cfg, i)).collect(),
        }
    }
}

impl Latent for Hierarchy {
    fn layers(&self) -> Vec<&Linear> {
        self.layers.iter().flat_map(|t| t.layers()).collect()
    }

    /// For each upper layer z_k: q_z{k}.{0, 1, …, mu, logvar} and p_z{k−1}.{0, 1, …, mu, logvar}
    /// (one numbered tensor per hidden layer).
    fn checkpoint_pieces(&self) -> Vec<(String, &Linear, std::ops::Range<usize>)> {
        let mut out = Vec::new();
        let whole = |l: &Linear| 0..l.out_features;
        let half = |l: &Linear| (0..l.out_features / 2, l.out_features / 2..l.out_features);
        for (i, t) in self.layers.iter().enumerate() {
            let (q, p) = (format!("q_z{}", i + 2), format!("p_z{}", i + 1));
            for (name, chain) in [(q, &t.up), (p, &t.prior)] {
                for (j, l) in chain.hidden.iter().enumerate() {
                    out.push((format!("{name}.{j}"), l, whole(l)));
                }
                let (mu, lv) = half(&chain.head);
                out.push((format!("{name}.mu"), &chain.head, mu));
                out.push((format!("{name}.logvar"), &chain.head, lv));
            }
        }
        out
    }

    /// After the encoder's and decoder's draws, so that adding an upper layer changes no other
    /// initial value (each upper layer's after those below it).
    fn init(&self, rng: &mut rand_pcg::Pcg64Mcg, values: &mut [Vec<f32>]) {
        for l in Latent::layers(self) {
            l.init(rng, values);
        }
    }

    fn workspace(
        &self,
        gpu: &Gpu,
        _arena: &ParamArena,
        spec: &WorkspaceSpec,
        terms: &mut TermLayout,
    ) -> Result<Box<dyn LatentWorkspace>> {
        let r = spec.draws();
        let t = |name: &str, shape: &[usize]| gpu.tensor(name, shape);
        let log_ratio = |terms: &mut TermLayout, layer: usize, width: usize| {
            spec.log_ratio.then(|| {
                terms.add(TermSpec::new(
                    format!("log_ratio.z{}", layer + 1),
                    TermKind::LogRatio { layer },
                    TermRows::PerDraw(width),
                ))
            })
        };
        // Every layer's terms are per draw of z₁ (L·b rows), each view on a storage boundary.
        let kl_below = terms.add(TermSpec::new(
            "kl.z1",
            TermKind::Kl { layer: 0 },
            TermRows::PerDraw(self.latent),
        ));
        let log_ratio_below = log_ratio(terms, 0, self.latent);
        let mut upper = Vec::new();
        for (i, tl) in self.top.iter().enumerate() {
            let below = self.below_latents[i];
            let hidden = |name: &str| -> Result<Vec<Tensor>> { tl.hidden.iter().map(|&h| t(name, &[r, h])).collect() };
            let grads = if spec.train {
                Some(TopGrads {
                    up_hidden: hidden("d_top_up_hidden")?,
                    q: t("d_top_q", &[r, 2 * tl.latent])?,
                    z: t("d_top_z", &[r, self.input_dims[i]])?,
                    prior_hidden: hidden("d_top_prior_hidden")?,
                    // Shaped as the rows below: z₁'s are the decoder's input rows.
                    z_below_up: t("d_top_z_below_up", &[r, self.below_dims[i]])?,
                })
            } else {
                None
            };
            upper.push(TopWorkspace {
                up_hidden: hidden("top_up_hidden")?,
                q: t("top_q", &[r, 2 * tl.latent])?,
                // Padded columns: never written, so zero (a conditional model's one-hot is
                // written by the inputs, as z₁'s is).
                z: t("top_z", &[r, self.input_dims[i]])?,
                prior_hidden: hidden("top_prior_hidden")?,
                p_below: t("top_p_below", &[r, 2 * below])?,
                d_p_below: t("d_top_p_below", &[r, 2 * below])?,
                dz_kl_below: t("d_top_z_kl_below", &[r, below])?,
                kl: terms.add(TermSpec::new(
                    format!("kl.z{}", i + 2),
                    TermKind::Kl { layer: i + 1 },
                    TermRows::PerDraw(tl.latent),
                )),
                log_ratio: log_ratio(terms, i + 1, tl.latent),
                grads,
            });
        }
        Ok(Box::new(HierarchyWorkspace {
            h: self.clone(),
            kl_below,
            log_ratio_below,
            upper,
        }))
    }

    fn sample_prior(
        &self,
        gpu: &Gpu,
        arena: &ParamArena,
        seed: u64,
        n: usize,
        temperature: f32,
        labels: Option<&[u32]>,
    ) -> Result<Vec<f32>> {
        let top = self.top.last().map_or(0, |t| t.latent);
        let z = super::gaussian::standard_normals(seed, n, top, temperature);
        self.draw_down(gpu, arena, &z, labels, seed, temperature)
    }

    fn plan_prior_draws(
        &self,
        gpu: &Gpu,
        arena: &ParamArena,
        step: &StepBuffer,
        temperature: f32,
        labels: Option<&Tensor>,
        order: &Tensor,
        z: &Tensor,
    ) -> Result<(Vec<Dispatch>, Vec<Tensor>)> {
        let (Some(t), Some(&width)) = (self.top.last(), self.input_dims.last()) else {
            return Err(VaeError::Config("a hierarchy needs a layer above z1".into()));
        };
        if (self.classes > 0) != labels.is_some() {
            return Err(VaeError::Config(format!(
                "a hierarchy with {} classes draws from its priors with {} labels",
                self.classes,
                if labels.is_some() { "no" } else { "one u32 per row of" }
            )));
        }
        let n = z.shape()[0];
        // The topmost layer from N(0, I), keyed as `sample_prior`'s host draws.
        let mut above = gpu.tensor("prior.z_top", &[n, width])?;
        let mut scratch = Vec::new();
        let mut d = vec![ops::prior_draw(
            gpu,
            "prior.top",
            step,
            None,
            t.latent,
            temperature,
            0,
            &above,
        )?];
        for i in (0..self.top.len()).rev() {
            // `above` holds z_{i+2}'s rows; draw z_{i+1} from p(z_{i+1}|z_{i+2}) as `draw_down`
            // does, into the next layer's rows (or, for z₁, the decoder's).
            let (t, zd) = (&self.top[i], self.below_latents[i]);
            if let Some(labels) = labels {
                let x = gpu.dummy_write().reshape_prefix(&[n, 0]);
                d.push(ops::condition(
                    gpu,
                    "prior.condition",
                    step,
                    labels,
                    self.classes,
                    order,
                    &x,
                    0,
                    &above,
                    t.latent,
                )?);
            }
            let hidden: Vec<Tensor> = t
                .hidden
                .iter()
                .map(|&h| gpu.tensor("prior_hidden", &[n, h]))
                .collect::<Result<_>>()?;
            let p_out = gpu.tensor("p_below", &[n, 2 * zd])?;
            d.extend(self.layers[i].plan_prior(gpu, arena, &above, &hidden, &p_out)?);
            scratch.extend(hidden);
            let below = if i == 0 {
                z.clone()
            } else {
                gpu.tensor("prior.z_below", &[n, self.input_dims[i - 1]])?
            };
            d.push(ops::prior_draw(
                gpu,
                "prior.below",
                step,
                Some(&p_out),
                zd,
                temperature,
                i as u32 + 1,
                &below,
            )?);
            scratch.push(std::mem::replace(&mut above, below));
            scratch.push(p_out);
        }
        Ok((d, scratch))
    }

    /// Each layer z_k below the top from p(z_k|z_{k+1}) (p(z_k|z_{k+1}, y) with one label per
    /// row for a conditional model), z_k = μₚ + σₚ·ε, the networks run on the device, ε for row
    /// e keyed (seed, 0, sample word k of [`rng::STREAM_SAMPLE`], e·Z_k + j) and scaled by
    /// `temperature`.
    fn draw_down(
        &self,
        gpu: &Gpu,
        arena: &ParamArena,
        top: &[f32],
        labels: Option<&[u32]>,
        seed: u64,
        temperature: f32,
    ) -> Result<Vec<f32>> {
        let Some(t) = self.top.last() else {
            return Err(VaeError::Config("a hierarchy needs a layer above z1".into()));
        };
        if top.is_empty() || !top.len().is_multiple_of(t.latent) {
            return Err(VaeError::Shape(format!(
                "{} values are not a whole number of vectors of the top layer's {}",
                top.len(),
                t.latent
            )));
        }
        let n = top.len() / t.latent;
        let mut z = top.to_vec();
        for i in (0..self.top.len()).rev() {
            // z holds z_{i+2}; draw z_{i+1} from p(z_{i+1}|z_{i+2}).
            let (t, zd) = (&self.top[i], self.below_latents[i]);
            let width = self.input_dims[i];
            let rows = crate::model::inputs::labelled_rows(
                self.classes,
                &z,
                t.latent,
                width,
                labels,
                "draws from p(z|z above, y)",
            )?;
            let above = gpu.upload("z_above", &[n, width], &rows)?;
            let hidden: Vec<Tensor> = t
                .hidden
                .iter()
                .map(|&h| gpu.tensor("prior_hidden", &[n, h]))
                .collect::<Result<_>>()?;
            let p_out = gpu.tensor("p_below", &[n, 2 * zd])?;
            let plan = self.layers[i].plan_prior(gpu, arena, &above, &hidden, &p_out)?;
            gpu.run(&plan.iter().collect::<Vec<_>>())?;
            let p = gpu.read(&p_out)?;
            let word = rng::stream_word(rng::STREAM_SAMPLE, i as u32 + 1);
            z = (0..n * zd)
                .map(|k| {
                    let (e, j) = (k / zd, k % zd);
                    let mu = p[e * 2 * zd + j] as f64;
                    let lv = (p[e * 2 * zd + zd + j] as f64).clamp(ops::LOGVAR_MIN as f64, ops::LOGVAR_MAX as f64);
                    let eps = rng::normal(rng::device_seed(seed), 0, word, k as u32) * temperature as f64;
                    (mu + (0.5 * lv).exp() * eps) as f32
                })
                .collect();
        }
        Ok(z)
    }
}

/// One upper layer's activations, one row per draw of the layer below (L·B rows). Upper layer
/// i holds z_{i+2}, the network q(z_{i+2}|z_{i+1}) and the conditional prior p(z_{i+1}|z_{i+2})
/// of the layer below; the comments name the i = 0 case, z₂ above z₁.
struct TopWorkspace {
    /// q(z₂|z₁)'s hidden layers, [L·B, H] each.
    up_hidden: Vec<Tensor>,
    /// [μ₂ | log σ₂²], [L·B, 2Z₂].
    q: Tensor,
    /// The draws of z₂, [L·B, Z₂'] (then a conditional model's one-hot, zero-padded).
    z: Tensor,
    /// p(z₁|z₂)'s hidden layers, [L·B, H] each.
    prior_hidden: Vec<Tensor>,
    /// [μₚ | log σₚ²] of p(z₁|z₂), [L·B, 2Z₁].
    p_below: Tensor,
    /// ∂L/∂p_below, written by the lower layer's KL term in the forward pass, [L·B, 2Z₁].
    d_p_below: Tensor,
    /// The lower layer's KL term's ∂L/∂z₁, [L·B, Z₁].
    dz_kl_below: Tensor,
    /// This layer's KL terms (the topmost's closed form, else its ladder term from above).
    kl: TermId,
    /// This layer's log p(z₂|·) − log q(z₂|z₁) terms, for importance weighting.
    log_ratio: Option<TermId>,
    /// The rest of the layer's gradients, for a training workspace.
    grads: Option<TopGrads>,
}

/// Gradients of a [`TopWorkspace`]'s activations (training only).
struct TopGrads {
    /// ∂L/∂ pre-activation of q(z₂|z₁)'s hidden layers.
    up_hidden: Vec<Tensor>,
    /// ∂L/∂[μ₂ | log σ₂²].
    q: Tensor,
    /// ∂L/∂z₂ through p(z₁|z₂)'s network.
    z: Tensor,
    /// ∂L/∂ pre-activation of p(z₁|z₂)'s hidden layers.
    prior_hidden: Vec<Tensor>,
    /// ∂L/∂z₁ through q(z₂|z₁)'s network, shaped as z₁'s rows.
    z_below_up: Tensor,
}

struct HierarchyWorkspace {
    h: Hierarchy,
    /// z₁'s KL terms (its ladder term against p(z₁|z₂)).
    kl_below: TermId,
    log_ratio_below: Option<TermId>,
    upper: Vec<TopWorkspace>,
}

/// The layer below upper layer `i` for `r` rows: its posterior's [μ | log σ²] rows with the
/// draws per row (z₁: the encoder's b rows and L draws each; above: one draw per row), its
/// draws, its KL terms, its log-ratio terms and its ε key offset.
struct Below {
    q: Tensor,
    samples: usize,
    z: Tensor,
    kl: Tensor,
    log_ratio: Option<Tensor>,
    sample_base: u32,
}

impl HierarchyWorkspace {
    fn below(&self, c: &Ctx, i: usize, enc: &Tensor, z: &Tensor) -> Below {
        let r = c.draws();
        if i == 0 {
            return Below {
                q: enc.clone(),
                samples: c.samples,
                z: z.clone(),
                kl: c.terms.view(self.kl_below, c.b),
                log_ratio: self.log_ratio_below.map(|id| c.terms.view(id, c.b)),
                sample_base: 0,
            };
        }
        let tw = &self.upper[i - 1];
        Below {
            q: rows(&tw.q, r),
            samples: 1,
            z: rows(&tw.z, r),
            kl: c.terms.view(tw.kl, c.b),
            log_ratio: tw.log_ratio.map(|id| c.terms.view(id, c.b)),
            sample_base: ops::top_sample_base(i - 1),
        }
    }

    /// The ladder term of the layer below upper layer `i` (`hier_kl`): its terms, their
    /// gradients and, in the forward pass, the log-ratio terms. Each draw's gradients are
    /// weighted by 1/L under the ELBO, or by the draw's normalized weight ([`Ctx::weights`]).
    fn ladder_term(&self, c: &Ctx, i: usize, enc: &Tensor, z: &Tensor, forward: bool) -> Result<Dispatch> {
        let (tw, r) = (&self.upper[i], c.draws());
        let lower = self.below(c, i, enc, z);
        let zd = self.h.below_latents[i];
        ops::hier_kl(
            c.gpu,
            "top.hier_kl",
            c.step,
            &lower.q,
            lower.samples,
            &lower.z,
            &rows(&tw.p_below, r),
            &lower.kl,
            &rows(&tw.d_p_below, r),
            &tw.dz_kl_below.reshape_prefix(&[r * zd]),
            if forward { lower.log_ratio.as_ref() } else { None },
            lower.sample_base,
            1.0 / c.samples as f32,
            if forward { None } else { c.weights.as_ref() },
        )
    }
}

/// The first `n` rows of each tensor.
fn all_rows(ts: &[Tensor], n: usize) -> Vec<Tensor> {
    ts.iter().map(|t| rows(t, n)).collect()
}

/// An upper layer's gradients, or the error of a workspace made for evaluation.
fn grads(tw: &TopWorkspace) -> Result<&TopGrads> {
    tw.grads
        .as_ref()
        .ok_or_else(|| VaeError::Config("a training step needs a workspace made for training".into()))
}

impl LatentWorkspace for HierarchyWorkspace {
    fn forward(&self, c: &Ctx, enc: &Tensor, z: &Tensor) -> Result<Vec<Dispatch>> {
        let (l, levels, a) = (c.samples, self.upper.len(), c.arena);
        let r = c.draws();
        // z₁'s draws, without a KL term: its prior is p(z₁|z₂), whose term comes below.
        let mut d = vec![ops::sample_forward(c.gpu, "sample.forward", c.step, enc, l, z)?];
        for (i, (layers, tw)) in self.h.layers.iter().zip(&self.upper).enumerate() {
            let (uh, q, zi) = (all_rows(&tw.up_hidden, r), rows(&tw.q, r), rows(&tw.z, r));
            let lower = self.below(c, i, enc, z);
            d.extend(layers.up.forward(c.gpu, a, &lower.z, &uh, &q)?);
            let base = ops::top_sample_base(i);
            if i + 1 == levels {
                let ratio = tw.log_ratio.map(|id| c.terms.view(id, c.b));
                d.push(ops::reparam_kl_forward_at(
                    c.gpu,
                    "top.reparam_kl.forward",
                    c.step,
                    &q,
                    1,
                    &zi,
                    &c.terms.view(tw.kl, c.b),
                    ratio.as_ref(),
                    base,
                )?);
            } else {
                d.push(ops::sample_forward_at(
                    c.gpu,
                    "top.sample.forward",
                    c.step,
                    &q,
                    1,
                    &zi,
                    base,
                )?);
            }
        }
        for (i, (layers, tw)) in self.h.layers.iter().zip(&self.upper).enumerate() {
            let (zi, ph, p_below) = (rows(&tw.z, r), all_rows(&tw.prior_hidden, r), rows(&tw.p_below, r));
            d.extend(layers.plan_prior(c.gpu, a, &zi, &ph, &p_below)?);
            d.push(self.ladder_term(c, i, enc, z, true)?);
        }
        Ok(d)
    }

    fn backward(&self, c: &Ctx, enc: &Tensor, z: &Tensor, dz: &Tensor, denc: &Tensor) -> Result<Vec<Dispatch>> {
        let (l, levels, a) = (c.samples, self.upper.len(), c.arena);
        // One row per draw of z₁: L·b.
        let r = c.draws();
        let mut d = Vec::new();
        // The importance-weighted bound's weights exist only after the forward pass: the
        // ladder terms' gradients are written again, each row weighted by its draw's weight.
        if c.weights.is_some() {
            for i in 0..levels {
                d.push(self.ladder_term(c, i, enc, z, false)?);
            }
        }
        for i in (0..levels).rev() {
            let (layers, tw) = (&self.h.layers[i], &self.upper[i]);
            let g = grads(tw)?;
            let (uh, q, zi, ph) = (
                all_rows(&tw.up_hidden, r),
                rows(&tw.q, r),
                rows(&tw.z, r),
                all_rows(&tw.prior_hidden, r),
            );
            let (d_uh, d_q, dzi, d_ph) = (
                all_rows(&g.up_hidden, r),
                rows(&g.q, r),
                rows(&g.z, r),
                all_rows(&g.prior_hidden, r),
            );
            d.extend(
                layers
                    .prior
                    .backward(c.gpu, a, &zi, &ph, &d_ph, &rows(&tw.d_p_below, r), &dzi)?,
            );
            let base = ops::top_sample_base(i);
            if i + 1 == levels {
                d.push(ops::reparam_kl_backward_at(
                    c.gpu,
                    "top.reparam_kl.backward",
                    c.step,
                    &q,
                    1,
                    &dzi,
                    &d_q,
                    base,
                    1.0 / l as f32,
                    c.weights.as_ref(),
                )?);
            } else {
                let (above, g_above) = (&self.upper[i + 1], grads(&self.upper[i + 1])?);
                d.push(ops::sample_backward(
                    c.gpu,
                    "top.sample.backward",
                    c.step,
                    &q,
                    1,
                    &dzi,
                    &rows(&g_above.z_below_up, r),
                    &above.dz_kl_below.reshape_prefix(&[r * self.h.top[i].latent]),
                    &d_q,
                    base,
                    1.0 / l as f32,
                    c.weights.as_ref(),
                )?);
            }
            let lower_z = if i == 0 {
                z.clone()
            } else {
                rows(&self.upper[i - 1].z, r)
            };
            d.extend(
                layers
                    .up
                    .backward(c.gpu, a, &lower_z, &uh, &d_uh, &d_q, &rows(&g.z_below_up, r))?,
            );
        }
        // z₁'s draws: the decoder's dz, q(z₂|z₁)'s and the ladder KL term's gradients.
        let (first, g_first) = (&self.upper[0], grads(&self.upper[0])?);
        d.push(ops::sample_backward(
            c.gpu,
            "sample.backward",
            c.step,
            enc,
            l,
            dz,
            &rows(&g_first.z_below_up, r),
            &first.dz_kl_below.reshape_prefix(&[r * self.h.latent]),
            denc,
            0,
            1.0,
            c.weights.as_ref(),
        )?);
        Ok(d)
    }

    fn labelled_rows(&self) -> Vec<(Tensor, usize)> {
        if self.h.classes == 0 {
            return Vec::new();
        }
        self.upper
            .iter()
            .zip(&self.h.top)
            .map(|(tw, t)| (tw.z.clone(), t.latent))
            .collect()
    }

    fn tensors(&self) -> Vec<&Tensor> {
        let mut all = Vec::new();
        for t in &self.upper {
            all.extend(t.up_hidden.iter().chain(&t.prior_hidden));
            all.extend([&t.q, &t.z, &t.p_below, &t.d_p_below, &t.dz_kl_below]);
            if let Some(g) = &t.grads {
                all.extend(g.up_hidden.iter().chain(&g.prior_hidden));
                all.extend([&g.q, &g.z, &g.z_below_up]);
            }
        }
        all
    }
}
