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

/// The search per example (vectors × entries × values) from which the quantization runs by
/// scores (`code.wgsl`'s matmul form, for vectors of whole vec4s) instead of one kernel that
/// loops over every entry: the dense VQ-VAEs (10 vectors of 2 values) stay below it, a
/// convolutional one's feature map (49 cells × 512 entries × 64 channels) is far above.
pub const SCORED_MIN_SEARCH: usize = 1 << 16;

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

    /// Values per vector.
    fn width(&self) -> usize {
        self.latent / self.groups
    }

    /// Whether the quantization runs by scores (see [`SCORED_MIN_SEARCH`]).
    fn scored(&self, codes: usize) -> bool {
        let d = self.width();
        ops::vq_scored_fits(d, codes) && self.groups * codes * d >= SCORED_MIN_SEARCH
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
        _labels: Option<&[u32]>,
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
        let codes = shape[0];
        let rows = spec.batch * self.groups;
        let scored = if self.scored(codes) {
            let width = self.width() + if ema.is_some() { 4 } else { 0 };
            Some(Scored {
                half_norms: gpu.tensor("vq_half_norms", &[codes])?,
                scores: gpu.tensor("vq_scores", &[rows, codes])?,
                rows: gpu.tensor("vq_rows", &[rows, width])?,
                sums: match ema {
                    Some(_) => Some(gpu.tensor("vq_ema_sums_step", &[codes, width])?),
                    None => None,
                },
            })
        } else {
            None
        };
        Ok(Box::new(QuantizedWorkspace {
            code: *self,
            scored,
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

/// The scratch of the quantization by scores.
struct Scored {
    half_norms: Tensor,
    scores: Tensor,
    rows: Tensor,
    /// With moving averages: the step's sums and counts by entry, [K, d + 4].
    sums: Option<Tensor>,
}

/// The code's terms, the entry each of the B·G vectors chose (exact integers as f32), and the
/// moving averages of a codebook trained by them.
struct QuantizedWorkspace {
    code: QuantizedCode,
    scored: Option<Scored>,
    pen: TermId,
    index: Tensor,
    ema: Option<MovingAverages>,
}

impl LatentWorkspace for QuantizedWorkspace {
    fn forward(&self, c: &Ctx, enc: &Tensor, z: &Tensor) -> Result<Vec<Dispatch>> {
        let q = &self.code;
        let (book, pen, index) = (
            c.arena.param(q.codebook),
            c.terms.view(self.pen, c.b),
            self.index.reshape_prefix(&[c.b * q.groups]),
        );
        if let Some(s) = &self.scored {
            let scratch = ops::VqScratch {
                half_norms: &s.half_norms,
                scores: &s.scores,
                rows: &s.rows,
                ema: self.ema.is_some(),
            };
            let (g, commit, scale) = (q.groups, q.commitment, q.scale);
            return ops::vq_forward_scored(
                c.gpu,
                "vq.forward",
                enc,
                &book,
                g,
                commit,
                scale,
                z,
                &pen,
                &index,
                &scratch,
            );
        }
        Ok(vec![ops::vq_forward(
            c.gpu,
            "vq.forward",
            enc,
            &book,
            q.groups,
            q.commitment,
            q.scale,
            z,
            &pen,
            &index,
        )?])
    }

    fn backward(&self, c: &Ctx, enc: &Tensor, _z: &Tensor, dz: &Tensor, denc: &Tensor) -> Result<Vec<Dispatch>> {
        let q = &self.code;
        let (book, index) = (c.arena.param(q.codebook), self.index.reshape_prefix(&[c.b * q.groups]));
        // With moving averages the codebook gets no gradient: its slot's gradient stays 0.
        let dbook = c.arena.grad(q.codebook);
        let loop_grad = self.ema.is_none() && self.scored.is_none();
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
            loop_grad.then_some(&dbook),
        )?;
        match (&self.scored, &self.ema) {
            (Some(s), None) => d.push(ops::vq_codebook_grad_scored(
                c.gpu,
                "vq.codebook",
                &index,
                &s.rows,
                &dbook,
            )?),
            (Some(s), Some(ema)) => {
                let sums = s.sums.as_ref().ok_or_else(|| {
                    crate::VaeError::Config("the moving averages' scratch is missing from the workspace".into())
                })?;
                d.extend(ops::vq_ema_scored(
                    c.gpu,
                    "vq.ema",
                    &index,
                    &s.rows,
                    sums,
                    &book,
                    ema.decay,
                    &ema.counts,
                    &ema.sums,
                )?);
            }
            (None, Some(ema)) => d.push(ops::vq_ema(
                c.gpu,
                "vq.ema",
                enc,
                &book,
                q.groups,
                &index,
                ema.decay,
                &ema.counts,
                &ema.sums,
            )?),
            (None, None) => {}
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
        if let Some(s) = &self.scored {
            all.extend([&s.half_norms, &s.scores, &s.rows]);
            all.extend(&s.sums);
        }
        if let Some(e) = &self.ema {
            all.extend([&e.counts, &e.sums]);
        }
        all
    }
}
