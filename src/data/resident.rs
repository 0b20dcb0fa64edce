//! A byte dataset on the GPU, and the batches gathered from it: resident (every example in one
//! storage binding), or streamed (the examples on the host, a window of one batch on the device
//! that the trainer fills before each step: for data beyond the device's binding size).

use crate::data::set::Pixels;
use crate::data::source::BatchSource;
use crate::error::{Result, VaeError};
use crate::gpu::{Dispatch, Gpu, Tensor};
use crate::ops::{self, StepBuffer};

/// How a dataset's pixels are stored on the device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PixelFormat {
    /// Bytes, four pixels per little-endian u32 word; the batch gets byte·(1/255).
    #[default]
    U8,
    /// f32 grey levels in [0, 1], taken as they are.
    F32,
}

/// A dataset resident on the GPU (bytes four per u32 word, or f32 values), with its labels on
/// the host and, when it has labels, on the device (one u32 each, for conditional models).
pub struct GpuDataset {
    /// The pixels, example after example, in `format`.
    pub words: Tensor,
    /// How `words` holds the pixels.
    pub format: PixelFormat,
    /// Examples.
    pub count: usize,
    /// Pixels per example (a multiple of 4).
    pub dim: usize,
    /// One class label per example on the host, or empty for an unlabelled dataset (and for
    /// one made [`GpuDataset::from_device`], whose labels are on the device only).
    pub labels: Vec<u32>,
    /// The labels as u32 on the device, when there are labels.
    pub labels_gpu: Option<Tensor>,
    /// A streamed dataset's examples on the host (`words` and `labels_gpu` then hold a window
    /// of `window` examples); None for a resident one.
    host: Option<std::sync::Arc<Pixels>>,
    /// Examples the device buffers hold: `count` resident, the window streamed.
    window: usize,
}

impl GpuDataset {
    /// Uploads `count` examples of `dim` bytes (dim a multiple of 4) and their labels (`labels`
    /// empty for an unlabelled dataset, else one per example).
    pub fn upload(gpu: &Gpu, label: &str, pixels: &[u8], count: usize, dim: usize, labels: Vec<u32>) -> Result<Self> {
        check_sizes(label, pixels.len(), count, dim, &labels)?;
        let words: Vec<u32> = pixels
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let words = gpu.upload_words(label, &words)?;
        Self::resident(gpu, label, words, PixelFormat::U8, count, dim, labels)
    }

    /// Uploads `count` examples of `dim` f32 grey levels in [0, 1] (dim a multiple of 4) and
    /// their labels, as [`GpuDataset::upload`] does bytes: the batch gets the values as they
    /// are (four times the device bytes of the same images as bytes).
    pub fn upload_f32(
        gpu: &Gpu,
        label: &str,
        values: &[f32],
        count: usize,
        dim: usize,
        labels: Vec<u32>,
    ) -> Result<Self> {
        check_sizes(label, values.len(), count, dim, &labels)?;
        let words = gpu.upload(label, &[values.len()], values)?;
        Self::resident(gpu, label, words, PixelFormat::F32, count, dim, labels)
    }

    /// A resident dataset of uploaded `words` in `format`, with its labels uploaded beside.
    fn resident(
        gpu: &Gpu,
        label: &str,
        words: Tensor,
        format: PixelFormat,
        count: usize,
        dim: usize,
        labels: Vec<u32>,
    ) -> Result<Self> {
        let labels_gpu = if labels.is_empty() {
            None
        } else {
            Some(gpu.upload_words(&format!("{label}_labels"), &labels)?)
        };
        Ok(GpuDataset {
            words,
            format,
            count,
            dim,
            labels,
            labels_gpu,
            host: None,
            window: count,
        })
    }

    /// [`GpuDataset::upload`] or [`GpuDataset::upload_f32`], as `pixels` holds them.
    pub fn upload_pixels(
        gpu: &Gpu,
        label: &str,
        pixels: &Pixels,
        count: usize,
        dim: usize,
        labels: Vec<u32>,
    ) -> Result<Self> {
        match pixels {
            Pixels::U8(v) => Self::upload(gpu, label, v, count, dim, labels),
            Pixels::F32(v) => Self::upload_f32(gpu, label, v, count, dim, labels),
        }
    }

    /// A streamed dataset: `count` examples of `dim` bytes kept on the host, and on the device a
    /// window of `window` examples (the batch size) and their labels, which
    /// [`GpuDataset::fill_window`] writes before each step. Training on it gives the numbers of
    /// the same data resident, bit for bit.
    pub fn streamed(
        gpu: &Gpu,
        label: &str,
        pixels: Vec<u8>,
        count: usize,
        dim: usize,
        labels: Vec<u32>,
        window: usize,
    ) -> Result<Self> {
        Self::streamed_pixels(gpu, label, Pixels::U8(pixels), count, dim, labels, window)
    }

    /// [`GpuDataset::streamed`] of bytes or of f32 grey levels, as `pixels` holds them.
    pub fn streamed_pixels(
        gpu: &Gpu,
        label: &str,
        pixels: Pixels,
        count: usize,
        dim: usize,
        labels: Vec<u32>,
        window: usize,
    ) -> Result<Self> {
        if window == 0 {
            return Err(VaeError::Shape(format!(
                "{label}: a streamed dataset needs a window of 1 or more examples"
            )));
        }
        check_sizes(label, pixels.len(), count, dim, &labels)?;
        let window = window.min(count);
        let labels_gpu = if labels.is_empty() {
            None
        } else {
            Some(gpu.tensor(&format!("{label}_labels_window"), &[window])?)
        };
        let (words, format) = match &pixels {
            Pixels::U8(_) => (window * dim / 4, PixelFormat::U8),
            Pixels::F32(_) => (window * dim, PixelFormat::F32),
        };
        Ok(GpuDataset {
            words: gpu.tensor(&format!("{label}_window"), &[words])?,
            format,
            count,
            dim,
            labels,
            labels_gpu,
            host: Some(std::sync::Arc::new(pixels)),
            window,
        })
    }

    /// A dataset already on the device, such as a host's own buffers wrapped by
    /// [`Gpu::wrap_buffer`]: `pixels` holds `count` examples of `dim` pixels (dim a multiple of
    /// 4) in `format`, `labels` one u32 class per example or None. Nothing is copied; the
    /// host keeps the contents valid while batches are gathered from them. Training on byte
    /// values b stored as f32 b·(1/255) gives the numbers of the bytes, bit for bit.
    ///
    /// ```
    /// use vae_wgpu::data::{GpuDataset, PixelFormat};
    /// use vae_wgpu::{wgpu, Gpu, GpuOptions, TrainConfig, Trainer, Vae, VaeConfig};
    ///
    /// # fn main() -> vae_wgpu::Result<()> {
    /// let gpu = Gpu::new(GpuOptions::default())?;
    /// // 64 images of 16 grey levels the host already holds in a storage buffer.
    /// let values: Vec<f32> = (0..64 * 16).map(|i| (i % 7) as f32 / 6.0).collect();
    /// let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    /// let buffer = gpu.ctx.device.create_buffer(&wgpu::BufferDescriptor {
    ///     label: Some("host images"),
    ///     size: bytes.len() as u64,
    ///     usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
    ///     mapped_at_creation: false,
    /// });
    /// gpu.ctx.queue.write_buffer(&buffer, 0, &bytes);
    /// let pixels = gpu.wrap_buffer("images", &buffer, 0, &[64 * 16])?;
    /// let data = GpuDataset::from_device(pixels, PixelFormat::F32, 64, 16, None)?;
    ///
    /// let config = VaeConfig { input_dim: 16, hidden: vec![8], latent: 2, ..Default::default() };
    /// let vae = Vae::new(&gpu, config, 1)?;
    /// let mut trainer = Trainer::new(&gpu, &vae, data, TrainConfig { batch_size: 16, ..Default::default() })?;
    /// trainer.begin_epoch()?; // the epoch's order, uploaded; no readback
    /// for batch in 0..trainer.steps_per_epoch() {
    ///     let mut encoder = gpu.ctx.device.create_command_encoder(&Default::default());
    ///     trainer.record_step(&mut encoder, batch)?;
    ///     gpu.ctx.queue.submit([encoder.finish()]);
    /// }
    /// let report = trainer.end_epoch()?; // one readback
    /// assert_eq!((report.steps, report.train.examples), (4, 64));
    /// # Ok(())
    /// # }
    /// ```
    pub fn from_device(
        pixels: Tensor,
        format: PixelFormat,
        count: usize,
        dim: usize,
        labels: Option<Tensor>,
    ) -> Result<Self> {
        let per_word = match format {
            PixelFormat::U8 => 4,
            PixelFormat::F32 => 1,
        };
        if !dim.is_multiple_of(4) || count == 0 || pixels.len() < count * dim / per_word {
            return Err(VaeError::Shape(format!(
                "a device dataset of {count} examples of {dim} pixels ({format:?}) needs {} words \
                 (count > 0, dim a multiple of 4), got a tensor of {:?}",
                count * dim / per_word,
                pixels.shape()
            )));
        }
        if let Some(l) = labels.as_ref().filter(|l| l.len() < count) {
            return Err(VaeError::Shape(format!(
                "{count} examples need one u32 label each, got a tensor of {:?}",
                l.shape()
            )));
        }
        Ok(GpuDataset {
            words: pixels,
            format,
            count,
            dim,
            labels: Vec::new(),
            labels_gpu: labels,
            host: None,
            window: count,
        })
    }

    /// Examples the device buffers hold: all of them resident, the window streamed.
    pub fn window(&self) -> usize {
        self.window
    }

    /// Whether the examples stay on the host ([`GpuDataset::streamed`]).
    pub fn is_streamed(&self) -> bool {
        self.host.is_some()
    }

    /// Device bytes of the examples and labels it holds (the window, when streamed).
    pub fn device_bytes(&self) -> u64 {
        self.words.buffer().bytes() + self.labels_gpu.as_ref().map_or(0, |t| t.buffer().bytes())
    }

    /// A streamed dataset: writes examples `ids` (dataset indices) into the window's first rows,
    /// and their labels, with `queue.write_buffer` (they land before the next submit, after
    /// every earlier one, so the window may be refilled while the previous step runs). A
    /// resident dataset: nothing to do.
    pub fn fill_window(&self, gpu: &Gpu, ids: &[u32]) -> Result<()> {
        let Some(host) = &self.host else {
            return Ok(());
        };
        if ids.len() > self.window || ids.iter().any(|&i| i as usize >= self.count) {
            return Err(VaeError::Shape(format!(
                "{} examples for a window of {} (indices below {})",
                ids.len(),
                self.window,
                self.count
            )));
        }
        // The values go up as they are: four bytes per little-endian word, or one f32, is the
        // layout the device reads (`dim` is a multiple of 4).
        let d = self.dim;
        let mut bytes = Vec::with_capacity(ids.len() * d * host.value_bytes());
        for &i in ids {
            let rows = i as usize * d..(i as usize + 1) * d;
            match host.as_ref() {
                Pixels::U8(v) => bytes.extend_from_slice(&v[rows]),
                Pixels::F32(v) => bytes.extend_from_slice(bytemuck::cast_slice(&v[rows])),
            }
        }
        gpu.ctx
            .queue
            .write_buffer(self.words.raw(), self.words.offset(), &bytes);
        if let Some(l) = &self.labels_gpu {
            let w: Vec<u32> = ids.iter().map(|&i| self.labels[i as usize]).collect();
            gpu.write_words(l, &w)?;
        }
        Ok(())
    }

    /// The batches of this dataset taken in `order` (a permutation of its indices on the
    /// device, one u32 each; the step uniform's `batch_start` indexes it).
    pub fn batches<'a>(&'a self, order: &'a Tensor) -> ResidentBatches<'a> {
        ResidentBatches { data: self, order }
    }
}

/// Refuses `values` pixels that are not `count` > 0 examples of `dim` (a multiple of 4), and
/// labels that are neither none nor one per example.
fn check_sizes(label: &str, values: usize, count: usize, dim: usize, labels: &[u32]) -> Result<()> {
    if !dim.is_multiple_of(4) || values != count * dim || count == 0 {
        return Err(VaeError::Shape(format!(
            "{label}: {values} values for {count} examples of {dim} pixels (dim must be a multiple of 4, count > 0)"
        )));
    }
    if !labels.is_empty() && labels.len() != count {
        return Err(VaeError::Shape(format!(
            "{label}: {} labels for {count} examples",
            labels.len()
        )));
    }
    Ok(())
}

/// The batches of a [`GpuDataset`] in a device-side order: the gather reads the bytes straight
/// from the resident dataset.
pub struct ResidentBatches<'a> {
    data: &'a GpuDataset,
    order: &'a Tensor,
}

impl BatchSource for ResidentBatches<'_> {
    fn dim(&self) -> usize {
        self.data.dim
    }

    fn plan_gather(&self, gpu: &Gpu, step: &StepBuffer, x: &Tensor, binarize: bool) -> Result<Dispatch> {
        let d = self.data;
        let gather = match d.format {
            PixelFormat::U8 => ops::gather,
            PixelFormat::F32 => ops::gather_f32,
        };
        gather(gpu, "gather", step, &d.words, d.window, d.dim, self.order, x, binarize)
    }

    fn plan_labels(
        &self,
        gpu: &Gpu,
        label: &str,
        step: &StepBuffer,
        classes: usize,
        x: &Tensor,
        rows: &Tensor,
        rows_dim: usize,
    ) -> Result<Dispatch> {
        let labels = self.data.labels_gpu.as_ref().ok_or_else(|| {
            VaeError::Config("a conditional model needs a labelled dataset (binarized MNIST has no labels)".into())
        })?;
        ops::condition(
            gpu,
            label,
            step,
            labels,
            classes,
            self.order,
            x,
            self.data.dim,
            rows,
            rows_dim,
        )
    }
}
