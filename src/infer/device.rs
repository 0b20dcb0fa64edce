//! Inference on device buffers: encode, decode, reconstruct and draw from the prior, recorded
//! into the caller's command encoder, reading from and writing to the caller's buffers (or any
//! [`Tensor`]). Nothing is read back and nothing is submitted; the host-vector methods at the
//! end are these plans with an upload before and one readback after.

use std::collections::{hash_map, HashMap};

use crate::data::{GpuDataset, PixelFormat};
use crate::error::{Result, VaeError};
use crate::gpu::{Dispatch, Gpu, Tensor};
use crate::model::block::{rows, Ctx, NetworkWorkspace, WorkspaceSpec};
use crate::model::inputs::Inputs;
use crate::model::step::{plan_encode, plan_reconstruct};
use crate::model::terms::{TermLayout, Terms};
use crate::model::workspace::Workspace;
use crate::model::{TextureMirrors, Vae};
use crate::ops::{self, StepBuffer, StepParams};
use crate::rng;

/// Plans an [`Inference`] caches; past it the least recently recorded leaves (each holds bind
/// groups over the buffers it was recorded with, and so keeps them alive).
pub const MAX_CACHED_PLANS: usize = 64;

/// Inference for one model on device buffers. Every `record_*` method validates its tensors,
/// fetches (or builds and caches) the plan for its batch size and buffers, and records it into
/// the caller's encoder: no submit, no readback, no `device.poll`.
///
/// Inputs are f32: images [n, D] in [0, 1] (D = [`crate::VaeConfig::input_dim`]), latent
/// codes [n, Z], and for a conditional model one u32 class per row (a class at or beyond the
/// model's count gives an all-zero one-hot). Outputs are posterior means [n, Z] and pixel
/// means [n, D] (the sigmoid of a Bernoulli decoder's logits, a Gaussian decoder's means
/// clamped to [0, 1]). Wrap a host's `wgpu::Buffer` with [`Gpu::wrap_buffer`]: the only
/// usage it needs is `STORAGE`, inputs and outputs alike (kernels read and write it; it is
/// never a copy's source or destination).
///
/// Buffers: per batch size n, an evaluation workspace (encode, reconstruct), the decoder's
/// workspace (decode, prior draws) and the host methods' staging tensors, each made on first
/// use and held until [`Inference::clear`] or the `Inference` drops; per plan, its uniforms,
/// a hierarchy's prior-draw scratch and the bind groups, which keep the buffers they bind
/// alive until the plan leaves the cache ([`Inference::clear_plans`], or as the least recently
/// recorded once [`MAX_CACHED_PLANS`] are held).
///
/// ```
/// use vae_wgpu::{wgpu, Gpu, GpuOptions, Inference, Vae, VaeConfig};
///
/// # fn main() -> vae_wgpu::Result<()> {
/// let gpu = Gpu::new(GpuOptions::default())?;
/// let vae = Vae::new(&gpu, VaeConfig { hidden: vec![64], latent: 8, ..Default::default() }, 1)?;
/// // The host's buffers: 4 codes in, 4 images out. STORAGE is all the crate needs; the
/// // others are for the host's own writes and reads.
/// let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC;
/// let desc = |bytes: usize| wgpu::BufferDescriptor { label: None, size: bytes as u64, usage, mapped_at_creation: false };
/// let codes = gpu.ctx.device.create_buffer(&desc(4 * 8 * 4));
/// let frame = gpu.ctx.device.create_buffer(&desc(4 * 784 * 4));
/// let z: Vec<f32> = (0..32).map(|i| (i as f32 * 0.3).sin()).collect();
/// let z_bytes: Vec<u8> = z.iter().flat_map(|v| v.to_le_bytes()).collect();
/// gpu.ctx.queue.write_buffer(&codes, 0, &z_bytes);
///
/// let mut inference = Inference::new(&gpu, &vae)?;
/// let z_t = gpu.wrap_buffer("codes", &codes, 0, &[4, 8])?;
/// let images = gpu.wrap_buffer("frame", &frame, 0, &[4, 784])?;
/// let mut encoder = gpu.ctx.device.create_command_encoder(&Default::default());
/// inference.record_decode(&mut encoder, &z_t, None, &images)?;
/// // ... the host's own passes reading `frame` ...
/// gpu.ctx.queue.submit([encoder.finish()]);
///
/// // Read back only to show it: the host-vector method runs the same plan.
/// assert_eq!(gpu.read(&images)?, inference.decode(&z, None)?);
/// # Ok(())
/// # }
/// ```
pub struct Inference<'a> {
    gpu: &'a Gpu,
    vae: &'a Vae,
    /// batch_start 0, seed 0: the deterministic plans' step uniform.
    step: StepBuffer,
    sizes: Sizes,
    plans: HashMap<PlanKey, Plan>,
    /// Recordings so far: each plan's last one decides which leaves the cache first.
    clock: u64,
    /// Plans built so far.
    built: u64,
}

/// The tensors the plans of each batch size share.
#[derive(Default)]
struct Sizes {
    /// Evaluation workspaces (encode, reconstruct).
    full: HashMap<usize, Workspace>,
    /// The decoder alone (decode, prior draws).
    decoders: HashMap<usize, DecoderRows>,
    /// 0..n: the order a plan reads the caller's rows (and labels) in.
    orders: HashMap<usize, Tensor>,
    /// The host methods' staging tensors, by batch size and name.
    staging: HashMap<(usize, &'static str), Tensor>,
}

/// The decoder's tensors for n rows: decoding needs no encoder.
struct DecoderRows {
    /// Its input [n, Z']: the codes, then a conditional model's one-hot and zero padding.
    z: Tensor,
    /// Its output [n, D].
    out: Tensor,
    ws: Box<dyn NetworkWorkspace>,
    terms: Terms,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Entry {
    Encode,
    Decode,
    Reconstruct { seed: u64 },
    SamplePrior { seed: u64, temperature: u32 },
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct PlanKey {
    entry: Entry,
    n: usize,
    /// The caller's tensors by buffer and offset: a plan's bind groups are over these.
    buffers: Vec<(wgpu::Buffer, u64)>,
}

struct Plan {
    dispatches: Vec<Dispatch>,
    /// A seeded plan's own step uniform (written once), so that plans with different seeds
    /// may be recorded into one encoder.
    _step: Option<StepBuffer>,
    /// Tensors only this plan uses (a hierarchy's prior-draw activations), counted in the
    /// ledger while the plan is cached.
    _scratch: Vec<Tensor>,
    /// The clock at its last recording.
    used: u64,
}

impl<'a> Inference<'a> {
    /// Inference for `vae` on `gpu` (the model may be weights-only:
    /// [`Vae::load_weights_only`]).
    pub fn new(gpu: &'a Gpu, vae: &'a Vae) -> Result<Self> {
        let step = StepBuffer::new(gpu)?;
        step.write(gpu, &StepParams::default());
        Ok(Inference {
            gpu,
            vae,
            step,
            sizes: Sizes::default(),
            plans: HashMap::new(),
            clock: 0,
            built: 0,
        })
    }

    /// The model.
    pub fn vae(&self) -> &Vae {
        self.vae
    }

    /// Plans held in the cache.
    pub fn plans_cached(&self) -> usize {
        self.plans.len()
    }

    /// Plans built so far: a recording that finds its plan cached builds none.
    pub fn plans_built(&self) -> u64 {
        self.built
    }

    /// Drops every cached plan (and with them the bind groups over the caller's buffers);
    /// the workspaces stay.
    pub fn clear_plans(&mut self) {
        self.plans.clear();
    }

    /// Drops the cached plans and every batch size's workspaces and staging tensors.
    pub fn clear(&mut self) {
        self.plans.clear();
        self.sizes = Sizes::default();
    }

    /// Records the posterior means μ(x) [n, Z] of images `x` [n, D] into `means` (an
    /// autoencoder's or VQ-VAE's encoder output: its code before quantization; a hierarchical
    /// VAE's: μ₁). `labels` (`[n]`, u32) for a conditional model, else None.
    pub fn record_encode(
        &mut self,
        encoder: &mut wgpu::CommandEncoder,
        x: &Tensor,
        labels: Option<&Tensor>,
        means: &Tensor,
    ) -> Result<()> {
        let n = self.rows_of("record_encode", "x", x, self.vae.config.input_dim)?;
        self.check_labels("record_encode", labels, n)?;
        self.check("record_encode", "means", means, n, self.vae.config.latent)?;
        let key = self.key(Entry::Encode, n, &[Some(x), labels, Some(means)]);
        self.record(encoder, key, |me, s| {
            let (ws, order) = me.full(s, n)?;
            let source = me.source(n, x, labels)?;
            let batches = source.batches(order);
            let inputs = Inputs {
                source: &batches,
                binarize: false,
                denoise: 0.0,
            };
            let (mut d, _) = plan_encode(me.gpu, me.vae, ws, n, &inputs, &me.step)?;
            d.push(ops::copy_columns(
                me.gpu,
                "encode.means",
                &rows(&ws.enc, n),
                means,
                me.vae.config.latent,
            )?);
            Ok((d, None, Vec::new()))
        })
    }

    /// Records the decoder's pixel means [n, D] of latent codes `z` [n, Z] into `images`.
    /// `labels` (`[n]`, u32) for a conditional model, else None.
    pub fn record_decode(
        &mut self,
        encoder: &mut wgpu::CommandEncoder,
        z: &Tensor,
        labels: Option<&Tensor>,
        images: &Tensor,
    ) -> Result<()> {
        let cfg = &self.vae.config;
        let n = self.rows_of("record_decode", "z", z, cfg.latent)?;
        self.check_labels("record_decode", labels, n)?;
        self.check("record_decode", "images", images, n, cfg.input_dim)?;
        let key = self.key(Entry::Decode, n, &[Some(z), labels, Some(images)]);
        self.record(encoder, key, |me, s| {
            let (dec, order) = me.decoder(s, n)?;
            let mut d = vec![ops::copy_columns(me.gpu, "decode.z", z, &dec.z, me.vae.config.latent)?];
            d.extend(me.decode_rows(dec, order, labels, &me.step, images)?);
            Ok((d, None, Vec::new()))
        })
    }

    /// Records reconstructions of images `x` [n, D] (encoder, one draw of z keyed by `seed`
    /// as [`crate::Evaluator::reconstruct_examples`] keys it, decoder) as pixel means into
    /// `images` [n, D]. `labels` (`[n]`, u32) for a conditional model, else None.
    pub fn record_reconstruct(
        &mut self,
        encoder: &mut wgpu::CommandEncoder,
        x: &Tensor,
        labels: Option<&Tensor>,
        seed: u64,
        images: &Tensor,
    ) -> Result<()> {
        let d_in = self.vae.config.input_dim;
        let n = self.rows_of("record_reconstruct", "x", x, d_in)?;
        self.check_labels("record_reconstruct", labels, n)?;
        self.check("record_reconstruct", "images", images, n, d_in)?;
        let key = self.key(Entry::Reconstruct { seed }, n, &[Some(x), labels, Some(images)]);
        self.record(encoder, key, |me, s| {
            let step = me.seeded_step(seed, rng::STREAM_EVAL)?;
            let (ws, order) = me.full(s, n)?;
            let source = me.source(n, x, labels)?;
            let batches = source.batches(order);
            let inputs = Inputs {
                source: &batches,
                binarize: false,
                denoise: 0.0,
            };
            let mut d = plan_reconstruct(me.gpu, me.vae, ws, n, &inputs, &step)?;
            d.push(me.pixel_means(&rows(&ws.out, n), images)?);
            Ok((d, Some(step), Vec::new()))
        })
    }

    /// Records `images.shape()[0]` draws from the model's prior, decoded into pixel means
    /// `images` [n, D]: z from N(0, I) (a hierarchy: its top layer, then each layer below from
    /// its conditional prior), the noise scaled by `temperature`, keyed by `seed` as
    /// [`crate::infer::prior_latents`] keys it (the same draws, up to f32 rounding). `labels`
    /// (`[n]`, u32) for a conditional model, else None. An autoencoder or VQ-VAE has no prior: an
    /// error.
    pub fn record_sample_prior(
        &mut self,
        encoder: &mut wgpu::CommandEncoder,
        seed: u64,
        temperature: f32,
        labels: Option<&Tensor>,
        images: &Tensor,
    ) -> Result<()> {
        let n = self.rows_of("record_sample_prior", "images", images, self.vae.config.input_dim)?;
        self.check_labels("record_sample_prior", labels, n)?;
        let entry = Entry::SamplePrior {
            seed,
            temperature: temperature.to_bits(),
        };
        let key = self.key(entry, n, &[labels, Some(images)]);
        self.record(encoder, key, |me, s| {
            let step = me.seeded_step(seed, rng::STREAM_SAMPLE)?;
            let (dec, order) = me.decoder(s, n)?;
            let (mut d, scratch) =
                me.vae
                    .latent
                    .plan_prior_draws(me.gpu, &me.vae.arena, &step, temperature, labels, order, &dec.z)?;
            d.extend(me.decode_rows(dec, order, labels, &step, images)?);
            Ok((d, Some(step), scratch))
        })
    }

    /// Posterior means of host images `x` (n·D values), n·Z values: [`Inference::record_encode`]
    /// with one upload and one readback.
    pub fn encode(&mut self, x: &[f32], labels: Option<&[u32]>) -> Result<Vec<f32>> {
        let cfg = &self.vae.config;
        let n = whole_rows("encode", "image values", x.len(), cfg.input_dim)?;
        let (xt, lt, out) = self.staged(n, Some(("x", cfg.input_dim, x)), labels, ("means", cfg.latent))?;
        self.run(|me, enc| me.record_encode(enc, &xt, lt.as_ref(), &out), &out)
    }

    /// Pixel means of host latent codes `z` (n·Z values), n·D values:
    /// [`Inference::record_decode`] with one upload and one readback.
    pub fn decode(&mut self, z: &[f32], labels: Option<&[u32]>) -> Result<Vec<f32>> {
        let cfg = &self.vae.config;
        let n = whole_rows("decode", "latent values", z.len(), cfg.latent)?;
        let (zt, lt, out) = self.staged(n, Some(("z", cfg.latent, z)), labels, ("images", cfg.input_dim))?;
        self.run(|me, enc| me.record_decode(enc, &zt, lt.as_ref(), &out), &out)
    }

    /// Reconstructions of host images `x` (n·D values), n·D values:
    /// [`Inference::record_reconstruct`] with one upload and one readback.
    pub fn reconstruct(&mut self, x: &[f32], labels: Option<&[u32]>, seed: u64) -> Result<Vec<f32>> {
        let cfg = &self.vae.config;
        let n = whole_rows("reconstruct", "image values", x.len(), cfg.input_dim)?;
        let (xt, lt, out) = self.staged(n, Some(("x", cfg.input_dim, x)), labels, ("images", cfg.input_dim))?;
        self.run(|me, enc| me.record_reconstruct(enc, &xt, lt.as_ref(), seed, &out), &out)
    }

    /// `n` images drawn from the prior, n·D values: [`Inference::record_sample_prior`] with
    /// one readback.
    pub fn sample_prior(&mut self, n: usize, seed: u64, temperature: f32, labels: Option<&[u32]>) -> Result<Vec<f32>> {
        if n == 0 {
            return Ok(Vec::new());
        }
        let (_, lt, out) = self.staged(n, None, labels, ("images", self.vae.config.input_dim))?;
        self.run(
            |me, enc| me.record_sample_prior(enc, seed, temperature, lt.as_ref(), &out),
            &out,
        )
    }

    // ---- plans ----

    fn key(&self, entry: Entry, n: usize, tensors: &[Option<&Tensor>]) -> PlanKey {
        PlanKey {
            entry,
            n,
            buffers: tensors
                .iter()
                .map(|t| {
                    t.map_or((self.gpu.dummy_read().raw().clone(), u64::MAX), |t| {
                        (t.raw().clone(), t.offset())
                    })
                })
                .collect(),
        }
    }

    /// Records the cached plan for `key`, building it with `build` first if needed (a plan's
    /// dispatches, its own step uniform and scratch tensors).
    fn record(
        &mut self,
        encoder: &mut wgpu::CommandEncoder,
        key: PlanKey,
        build: impl FnOnce(&Self, &mut Sizes) -> Result<(Vec<Dispatch>, Option<StepBuffer>, Vec<Tensor>)>,
    ) -> Result<()> {
        self.clock += 1;
        if !self.plans.contains_key(&key) {
            let mut sizes = std::mem::take(&mut self.sizes);
            let built = build(self, &mut sizes);
            self.sizes = sizes;
            let (dispatches, step, scratch) = built?;
            self.built += 1;
            if self.plans.len() >= MAX_CACHED_PLANS {
                let oldest = self.plans.iter().min_by_key(|(_, p)| p.used).map(|(k, _)| k.clone());
                if let Some(k) = oldest {
                    self.plans.remove(&k);
                }
            }
            self.plans.insert(
                key.clone(),
                Plan {
                    dispatches,
                    _step: step,
                    _scratch: scratch,
                    used: 0,
                },
            );
        }
        let plan = self
            .plans
            .get_mut(&key)
            .ok_or_else(|| VaeError::Gpu("an inference plan went missing from its cache".into()))?;
        plan.used = self.clock;
        self.gpu.record(encoder, &plan.dispatches.iter().collect::<Vec<_>>());
        Ok(())
    }

    /// The order 0..n, made on first use.
    fn order<'s>(&self, orders: &'s mut HashMap<usize, Tensor>, n: usize) -> Result<&'s Tensor> {
        match orders.entry(n) {
            hash_map::Entry::Occupied(e) => Ok(e.into_mut()),
            hash_map::Entry::Vacant(e) => {
                let order: Vec<u32> = (0..n as u32).collect();
                Ok(e.insert(self.gpu.upload_words("inference.order", &order)?))
            }
        }
    }

    /// The evaluation workspace for `n` rows and their order, made on first use.
    fn full<'s>(&self, s: &'s mut Sizes, n: usize) -> Result<(&'s Workspace, &'s Tensor)> {
        if let hash_map::Entry::Vacant(e) = s.full.entry(n) {
            e.insert(Workspace::new(self.gpu, self.vae, &WorkspaceSpec::eval(n, 1))?);
        }
        let order = self.order(&mut s.orders, n)?;
        Ok((&s.full[&n], order))
    }

    /// The decoder's tensors for `n` rows and their order, made on first use.
    fn decoder<'s>(&self, s: &'s mut Sizes, n: usize) -> Result<(&'s DecoderRows, &'s Tensor)> {
        if let hash_map::Entry::Vacant(e) = s.decoders.entry(n) {
            let cfg = &self.vae.config;
            let mut terms = TermLayout::new(n, 1);
            // Texture mirrors as the model's policy sets them, as `Workspace::new` does.
            let mirrors = self.vae.texture_mirrors() != TextureMirrors::None;
            let spec = WorkspaceSpec {
                mirrors,
                ..WorkspaceSpec::eval(n, 1)
            };
            let ws = self.vae.decoder.workspace(self.gpu, &spec, n, &mut terms)?;
            let width = cfg.dec_input_dim();
            let z = self.gpu.tensor("decode.z", &[n, width])?;
            e.insert(DecoderRows {
                z: ops::mirrored(self.gpu, "decode.z", z, mirrors && (n * width).is_multiple_of(4))?,
                out: self.gpu.tensor("decode.out", &[n, cfg.input_dim])?,
                ws,
                terms: terms.allocate(self.gpu)?,
            });
        }
        let order = self.order(&mut s.orders, n)?;
        Ok((&s.decoders[&n], order))
    }

    /// After the codes are in `dec.z`'s first columns: a conditional model's one-hot, z's
    /// texture mirror, the decoder, and the pixel means into `images`.
    fn decode_rows(
        &self,
        dec: &DecoderRows,
        order: &Tensor,
        labels: Option<&Tensor>,
        step: &StepBuffer,
        images: &Tensor,
    ) -> Result<Vec<Dispatch>> {
        let n = dec.z.shape()[0];
        let mut d = Vec::new();
        if let Some(labels) = labels {
            // No pixel columns to label: an empty x of n rows.
            let x = self.gpu.dummy_write().reshape_prefix(&[n, 0]);
            d.push(ops::condition(
                self.gpu,
                "decode.condition",
                step,
                labels,
                self.vae.config.classes,
                order,
                &x,
                0,
                &dec.z,
                self.vae.config.latent,
            )?);
        }
        d.extend(ops::refresh_mirror("decode.z", &dec.z));
        let c = Ctx {
            gpu: self.gpu,
            arena: &self.vae.arena,
            step,
            terms: &dec.terms,
            b: n,
            samples: 1,
            weights: None,
        };
        d.extend(dec.ws.forward(&c, &dec.z, &dec.out)?);
        d.push(self.pixel_means(&dec.out, images)?);
        Ok(d)
    }

    /// The caller's images (and labels) as a batch source over `n` rows.
    fn source(&self, n: usize, x: &Tensor, labels: Option<&Tensor>) -> Result<GpuDataset> {
        GpuDataset::from_device(
            x.clone(),
            PixelFormat::F32,
            n,
            self.vae.config.input_dim,
            labels.cloned(),
        )
    }

    fn pixel_means(&self, out: &Tensor, images: &Tensor) -> Result<Dispatch> {
        ops::pixel_means(self.gpu, "pixel_means", self.vae.config.likelihood, out, images)
    }

    /// A step uniform for a seeded plan: the draws keyed (seed, step 0, `stream`).
    fn seeded_step(&self, seed: u64, stream: u32) -> Result<StepBuffer> {
        let step = StepBuffer::new(self.gpu)?;
        step.write(
            self.gpu,
            &StepParams {
                seed: rng::device_seed(seed),
                stream,
                kl_beta: 1.0,
                ..Default::default()
            },
        );
        Ok(step)
    }

    // ---- validation ----

    /// Rows of a [n, cols] tensor named `name`, n ≥ 1.
    fn rows_of(&self, entry: &str, name: &str, t: &Tensor, cols: usize) -> Result<usize> {
        match *t.shape() {
            [n, c] if n > 0 && c == cols => Ok(n),
            _ => Err(VaeError::Shape(format!(
                "{entry}: {name} must be [n, {cols}] with n ≥ 1, got {:?}",
                t.shape()
            ))),
        }
    }

    fn check(&self, entry: &str, name: &str, t: &Tensor, n: usize, cols: usize) -> Result<()> {
        if t.shape() != [n, cols] {
            return Err(VaeError::Shape(format!(
                "{entry}: {name} must be [{n}, {cols}], got {:?}",
                t.shape()
            )));
        }
        Ok(())
    }

    fn check_labels(&self, entry: &str, labels: Option<&Tensor>, n: usize) -> Result<()> {
        let classes = self.vae.config.classes;
        match (classes, labels) {
            (0, None) => Ok(()),
            (0, Some(_)) => Err(VaeError::Config(format!(
                "{entry}: labels given, but the model is not conditional"
            ))),
            (c, None) => Err(VaeError::Config(format!(
                "{entry}: a conditional model ({c} classes) needs one u32 label per row"
            ))),
            (_, Some(l)) if l.shape() != [n] => Err(VaeError::Shape(format!(
                "{entry}: labels must be [{n}] (one u32 per row), got {:?}",
                l.shape()
            ))),
            _ => Ok(()),
        }
    }

    // ---- the host methods' staging ----

    /// Staging tensors for a host call of `n` rows: the input (written with `values`), the
    /// labels (checked against the class count, written) and the output.
    #[allow(clippy::type_complexity)]
    fn staged(
        &mut self,
        n: usize,
        input: Option<(&'static str, usize, &[f32])>,
        labels: Option<&[u32]>,
        output: (&'static str, usize),
    ) -> Result<(Tensor, Option<Tensor>, Tensor)> {
        let classes = self.vae.config.classes;
        if let Some(l) = labels {
            if l.len() != n || l.iter().any(|&c| c as usize >= classes.max(1)) {
                return Err(VaeError::Shape(format!(
                    "{} labels for {n} rows, each must be below the model's {classes} classes",
                    l.len()
                )));
            }
        }
        let gpu = self.gpu;
        let staging = &mut self.sizes.staging;
        let mut tensor = |name: &'static str, shape: &[usize]| -> Result<Tensor> {
            match staging.entry((n, name)) {
                hash_map::Entry::Occupied(e) => Ok(e.get().clone()),
                hash_map::Entry::Vacant(e) => Ok(e.insert(gpu.tensor(&format!("inference.{name}"), shape)?).clone()),
            }
        };
        let inp = match input {
            Some((name, cols, values)) => {
                let t = tensor(name, &[n, cols])?;
                gpu.write(&t, values)?;
                t
            }
            None => gpu.dummy_read().clone(),
        };
        let lt = match labels {
            Some(l) => {
                let t = tensor("labels", &[n])?;
                gpu.write_words(&t, l)?;
                Some(t)
            }
            None => None,
        };
        let out = tensor(output.0, &[n, output.1])?;
        Ok((inp, lt, out))
    }

    /// Records `record` into a new encoder, submits it and reads `out` back.
    fn run(
        &mut self,
        record: impl FnOnce(&mut Self, &mut wgpu::CommandEncoder) -> Result<()>,
        out: &Tensor,
    ) -> Result<Vec<f32>> {
        let mut encoder = self
            .gpu
            .ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("inference"),
            });
        record(self, &mut encoder)?;
        self.gpu.submit(encoder.finish());
        self.gpu.read(out)
    }
}

/// Rows of `len` values of `cols` each, refusing none or a remainder.
fn whole_rows(entry: &str, what: &str, len: usize, cols: usize) -> Result<usize> {
    if len == 0 || !len.is_multiple_of(cols) {
        return Err(VaeError::Shape(format!(
            "{entry}: {len} {what} are not a whole number of rows of {cols}"
        )));
    }
    Ok(len / cols)
}
