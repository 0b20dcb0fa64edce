//! The VQ-VAE's latent: the head's z_e [Z] cut into G vectors of Z/G values, each replaced by
//! its nearest entry of a learned codebook of K vectors. The decoder's gradient passes straight
//! through to z_e; the terms add (D/Z)·(‖sg(z_e) − e‖² + β·‖z_e − sg(e)‖²). The codebook is
//! trained by its gradient (Adam), or by exponential moving averages of the vectors assigned
//! to each entry, which are then part of the training state. Kernels in `code.wgsl`.

use crate::error::{Result, VaeError};
use crate::gpu::{Dispatch, Gpu, Tensor};
use crate::model::block::{Ctx, Latent, LatentWorkspace, WorkspaceSpec};
use crate::model::latent::deterministic::refuse_draws;
use crate::model::terms::{TermId, TermKind, TermLayout, TermRows, TermSpec};
use crate::model::VaeConfig;
use crate::nn::{ArenaLayout, Linear, ParamArena};
use crate::ops;

/// Arena slot name (and checkpoint key) of the codebook.
pub const CODEBOOK_SLOT: &str = "codebook";

/// A codebook of `codes` entries for `groups` vectors per code.
#[derive(Clone, Copy)]
pub struct QuantizedCode {
    /// Values of the code, Z.
    latent: usize,
    groups: usize,
    commitment: f32,
    /// The terms' weight D/Z: the reconstruction is a sum over D pixels and the terms a sum
    /// over Z values, where the VQ-VAE paper's implementation takes means of both.
    scale: f32,
    /// Arena slot of the codebook [K, Z/G].
    codebook: usize,
}

impl QuantizedCode {
    /// Registers the codebook [K, Z/G].
    pub fn new(layout: &mut ArenaLayout, cfg: &VaeConfig, codes: usize, groups: usize, commitment: f32) -> Self {
        QuantizedCode {
            latent: cfg.latent,
            groups,
            commitment,
            scale: cfg.input_dim as f32 / cfg.latent as f32,
            codebook: layout.add(CODEBOOK_SLOT, &[codes, cfg.latent / groups]),
        }
    }
}

impl Latent for QuantizedCode {
    fn layers(&self) -> Vec<&Linear> {
        Vec::new()
    }

    /// Uniform in ±1, the scale of a fresh encoder's outputs. The ±1/K of some implementations
    /// leaves every z_e far from every entry: measured here, the penalty ran to 1,000 nats in
    /// the first epoch and the codes collapsed (recon 185 against 119 after 3 epochs of 10,000
    /// images, K = 512, G = 10).
    fn init(&self, rng: &mut rand_pcg::Pcg64Mcg, values: &mut [Vec<f32>]) {
        for v in values[self.codebook].iter_mut() {
            *v = crate::rng::uniform_f32(rng, -1.0, 1.0);
        }
    }

    fn checkpoint_slots(&self) -> Vec<(&'static str, usize)> {
        vec![(CODEBOOK_SLOT, self.codebook)]
    }

    fn sample_prior(
        &self,
        _gpu: &Gpu,
        _arena: &ParamArena,
        _seed: u64,
        _n: usize,
        _temperature: f32,
        _labels: Option<&[u8]>,
    ) -> Result<Vec<f32>> {
        Err(VaeError::Config(
            "a VQ-VAE has no prior to sample from (its code is deterministic)".into(),
        ))
    }

    fn workspace(
        &self,
        gpu: &Gpu,
        arena: &ParamArena,
        spec: &WorkspaceSpec,
        terms: &mut TermLayout,
    ) -> Result<Box<dyn LatentWorkspace>> {
        refuse_draws(spec, "a quantized code")?;
        let shape = arena.layout.slots()[self.codebook].shape.clone();
        let ema = match spec.vq_ema {
            Some(decay) if spec.train => {
                // (TrainConfig::validate has checked the decay.) The codebook then gets no gradient, and Adam (without weight decay) leaves it
                // alone only if its gradient and momentum are zero: a model trained by its
                // gradient before keeps both in the arena.
                arena.freeze_slot(gpu, self.codebook)?;
                Some(MovingAverages {
                    decay,
                    counts: gpu.tensor("vq_ema_counts", &shape)?,
                    sums: gpu.tensor("vq_ema_sums", &shape)?,
                })
            }
            _ => None,
        };
        Ok(Box::new(QuantizedWorkspace {
            code: *self,
            pen: terms.add(TermSpec::new(
                "vq",
                TermKind::Penalty,
                TermRows::PerExample(self.latent),
            )),
            index: gpu.tensor("vq_index", &[spec.batch * self.groups])?,
            ema,
        }))
    }
}

/// The running state of a codebook trained by moving averages (see `code.wgsl`'s `vq_ema`).
struct MovingAverages {
    /// γ: the weight of the past in each update.
    decay: f32,
    /// N, the decayed count of vectors assigned to each entry, [K, d] (repeated per value).
    counts: Tensor,
    /// M, the decayed sum of those vectors, [K, d].
    sums: Tensor,
}

/// The code's terms, the entry each of the B·G vectors chose (exact integers as f32), and the
/// moving averages of a codebook trained by them.
struct QuantizedWorkspace {
    code: QuantizedCode,
    pen: TermId,
    index: Tensor,
    ema: Option<MovingAverages>,
}

impl LatentWorkspace for QuantizedWorkspace {
    fn forward(&self, c: &Ctx, enc: &Tensor, z: &Tensor) -> Result<Vec<Dispatch>> {
        let q = &self.code;
        Ok(vec![ops::vq_forward(
            c.gpu,
            "vq.forward",
            enc,
            &c.arena.param(q.codebook),
            q.groups,
            q.commitment,
            q.scale,
            z,
            &c.terms.view(self.pen, c.b),
            &self.index.reshape_prefix(&[c.b * q.groups]),
        )?])
    }

    fn backward(&self, c: &Ctx, enc: &Tensor, _z: &Tensor, dz: &Tensor, denc: &Tensor) -> Result<Vec<Dispatch>> {
        let q = &self.code;
        let (book, index) = (c.arena.param(q.codebook), self.index.reshape_prefix(&[c.b * q.groups]));
        // With moving averages the codebook gets no gradient: its slot's gradient stays 0.
        let dbook = c.arena.grad(q.codebook);
        let mut d = ops::vq_backward(
            c.gpu,
            "vq.backward",
            enc,
            &book,
            q.groups,
            q.commitment,
            q.scale,
            &index,
            dz,
            denc,
            if self.ema.is_some() { None } else { Some(&dbook) },
        )?;
        if let Some(ema) = &self.ema {
            d.push(ops::vq_ema(
                c.gpu,
                "vq.ema",
                enc,
                &book,
                q.groups,
                &index,
                ema.decay,
                &ema.counts,
                &ema.sums,
            )?);
        }
        Ok(d)
    }

    fn state(&self) -> Vec<(&'static str, &Tensor)> {
        self.ema
            .iter()
            .flat_map(|e| [("vq_ema.counts", &e.counts), ("vq_ema.sums", &e.sums)])
            .collect()
    }

    fn output(&self, name: &str) -> Option<&Tensor> {
        (name == "vq.index").then_some(&self.index)
    }

    fn tensors(&self) -> Vec<&Tensor> {
        let mut all = vec![&self.index];
        if let Some(e) = &self.ema {
            all.extend([&e.counts, &e.sums]);
        }
        all
    }
}
