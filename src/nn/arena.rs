//! The parameter arena: every parameter of a model in one buffer, with gradients and Adam's
//! two moments in three more buffers of the same layout, so the optimizer is one dispatch.

use crate::error::{Result, VaeError};
use std::sync::Arc;

use crate::gpu::{Dispatch, Gpu, GpuTexture, Tensor};
use crate::ops;

/// Parameters start on 64-float (256-byte) boundaries: storage bindings need that offset
/// alignment on most adapters, and vec4 kernels need the 16-byte part of it.
pub const PARAM_ALIGN: usize = 64;

/// Where one named parameter lives in the arena.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamSlot {
    /// Name within the model ("enc0.weight", …); checkpoints map it to their keys.
    pub name: String,
    /// Shape as stored (weights [in, out]).
    pub shape: Vec<usize>,
    /// Offset in floats.
    pub offset: usize,
}

impl ParamSlot {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }
    /// True when the parameter has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The layout, built before any device memory exists (layers register their parameters).
#[derive(Clone, Debug, Default)]
pub struct ArenaLayout {
    slots: Vec<ParamSlot>,
    len: usize,
}

impl ArenaLayout {
    /// Reserves an aligned slot and returns its index.
    pub fn add(&mut self, name: &str, shape: &[usize]) -> usize {
        let offset = self.len.div_ceil(PARAM_ALIGN) * PARAM_ALIGN;
        let slot = ParamSlot {
            name: name.to_string(),
            shape: shape.to_vec(),
            offset,
        };
        self.len = offset + slot.len();
        self.slots.push(slot);
        self.slots.len() - 1
    }
    /// The slot named `name` (e.g. `encoder.head.weight`, `codebook`).
    pub fn find(&self, name: &str) -> Option<usize> {
        self.slots.iter().position(|s| s.name == name)
    }
    /// Every slot, in registration order.
    pub fn slots(&self) -> &[ParamSlot] {
        &self.slots
    }
    /// Floats in the arena including alignment padding (rounded to whole vec4s).
    pub fn len(&self) -> usize {
        self.len.div_ceil(4) * 4
    }
    /// True when no parameter was registered.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
    /// Number of parameters (padding excluded).
    pub fn num_params(&self) -> usize {
        self.slots.iter().map(|s| s.len()).sum()
    }
}

/// The arena on the device: parameters, gradients and Adam's first and second moments.
pub struct ParamArena {
    /// Where each named parameter lives; the same offsets index all four buffers.
    pub layout: ArenaLayout,
    /// The parameters.
    pub params: Tensor,
    /// Their gradients, written (not accumulated) by each step's backward pass.
    pub grads: Tensor,
    /// Adam's first moments.
    pub m: Tensor,
    /// Adam's second moments.
    pub v: Tensor,
    /// The divergence guard's word (u32): the first step at which Adam made a parameter
    /// non-finite, or [`ops::HEALTHY`].
    pub health: Tensor,
    /// Texture mirrors of parameters, by slot (see [`crate::gpu::mirror`]).
    mirrors: Vec<Option<Arc<GpuTexture>>>,
    /// Whether gradients and Adam's moments are allocated ([`ParamArena::weights_only`] has
    /// placeholders instead).
    trainable: bool,
}

impl ParamArena {
    /// Allocates the four buffers; parameters from `init` (full arena length, padding zero),
    /// gradients and moments zero.
    pub fn new(gpu: &Gpu, layout: ArenaLayout, init: &[f32]) -> Result<Self> {
        Self::allocate(gpu, layout, init, true)
    }

    /// The parameters alone, for inference: the gradients and Adam's moments are 16-byte
    /// placeholders, so the arena holds a quarter of a trainable one's bytes. Training refuses
    /// it ([`ParamArena::is_trainable`]).
    pub fn weights_only(gpu: &Gpu, layout: ArenaLayout, init: &[f32]) -> Result<Self> {
        Self::allocate(gpu, layout, init, false)
    }

    fn allocate(gpu: &Gpu, layout: ArenaLayout, init: &[f32], trainable: bool) -> Result<Self> {
        let n = layout.len();
        if init.len() != n {
            return Err(VaeError::Shape(format!(
                "arena init has {} floats, layout needs {n}",
                init.len()
            )));
        }
        let zeros = vec![0.0f32; if trainable { n } else { 4 }];
        let state = |name: &str| gpu.upload(name, &[zeros.len()], &zeros);
        Ok(ParamArena {
            params: gpu.upload("arena.params", &[n], init)?,
            grads: state(if trainable {
                "arena.grads"
            } else {
                "arena.grads (weights only)"
            })?,
            m: state(if trainable {
                "arena.adam_m"
            } else {
                "arena.adam_m (weights only)"
            })?,
            v: state(if trainable {
                "arena.adam_v"
            } else {
                "arena.adam_v (weights only)"
            })?,
            health: {
                let h = gpu.tensor("arena.health", &[4])?;
                gpu.write_words(&h, &[ops::HEALTHY; 4])?;
                h
            },
            mirrors: vec![None; layout.slots.len()],
            layout,
            trainable,
        })
    }

    /// Whether the arena holds gradients and Adam's moments (false: weights only).
    pub fn is_trainable(&self) -> bool {
        self.trainable
    }

    /// Device bytes of the parameters, their gradients and Adam's two moments (texture mirrors
    /// apart: [`ParamArena::mirror_bytes`]).
    pub fn device_bytes(&self) -> (u64, u64, u64) {
        let b = |t: &Tensor| t.buffer().bytes();
        (b(&self.params), b(&self.grads), b(&self.m) + b(&self.v))
    }

    fn view(&self, t: &Tensor, slot: usize) -> Tensor {
        let s = &self.layout.slots[slot];
        Tensor::view(t.buffer().clone(), t.offset() + 4 * s.offset as u64, &s.shape)
    }
    /// The parameter tensor of a slot, with its texture mirror if it has one.
    pub fn param(&self, slot: usize) -> Tensor {
        self.view(&self.params, slot).with_mirror(self.mirrors[slot].clone())
    }

    /// Gives each listed slot's parameter a texture mirror (or drops it), then fills them all
    /// in one submit.
    pub fn set_mirrors(&mut self, gpu: &Gpu, wanted: &[(usize, bool)]) -> Result<()> {
        for &(slot, on) in wanted {
            let name = self.layout.slots[slot].name.clone();
            self.mirrors[slot] = ops::mirrored(gpu, &name, self.view(&self.params, slot), on)?
                .mirror()
                .cloned();
        }
        self.sync_mirrors(gpu)
    }

    /// Device bytes of the parameters' texture mirrors.
    pub fn mirror_bytes(&self) -> u64 {
        self.mirrors.iter().flatten().map(|m| m.bytes()).sum()
    }

    /// Number of parameters with a texture mirror.
    pub fn mirrored(&self) -> usize {
        self.mirrors.iter().flatten().count()
    }

    /// The copies that bring every mirror up to date; planned after each optimizer step.
    pub fn refresh_mirrors(&self) -> Vec<Dispatch> {
        (0..self.mirrors.len())
            .filter_map(|slot| ops::refresh_mirror(&self.layout.slots[slot].name, &self.param(slot)))
            .collect()
    }

    /// Brings every mirror up to date now (after parameters were written from the host).
    pub fn sync_mirrors(&self, gpu: &Gpu) -> Result<()> {
        let copies = self.refresh_mirrors();
        if copies.is_empty() {
            return Ok(());
        }
        gpu.run(&copies.iter().collect::<Vec<_>>())
    }
    /// The gradient tensor of a slot.
    pub fn grad(&self, slot: usize) -> Tensor {
        self.view(&self.grads, slot)
    }

    /// Zeroes a slot's gradient and Adam moments, so that Adam (without weight decay) leaves
    /// it where it is for as long as nothing writes its gradient.
    pub fn freeze_slot(&self, gpu: &Gpu, slot: usize) -> Result<()> {
        let zeros = vec![0.0; self.layout.slots[slot].len()];
        for t in [&self.grads, &self.m, &self.v] {
            gpu.write(&self.view(t, slot), &zeros)?;
        }
        Ok(())
    }

    /// Sets the divergence guard's word back to [`ops::HEALTHY`] (queued; at the next submit).
    pub fn reset_health(&self, gpu: &Gpu) -> Result<()> {
        gpu.write_words(&self.health, &[ops::HEALTHY; 4])
    }

    /// The first parameter slot holding a value that is not finite, with that value, from
    /// values read back (one vector per slot).
    pub fn first_non_finite<'a>(&'a self, values: &[Vec<f32>]) -> Option<(&'a str, usize, f32)> {
        self.layout.slots.iter().zip(values).find_map(|(s, v)| {
            v.iter()
                .position(|x| !x.is_finite())
                .map(|i| (s.name.as_str(), i, v[i]))
        })
    }

    /// Reads every parameter back, one vector per slot.
    pub fn read_params(&self, gpu: &Gpu) -> Result<Vec<Vec<f32>>> {
        self.read_slots(gpu, &self.params)
    }

    /// Reads every gradient back, one vector per slot.
    pub fn read_grads(&self, gpu: &Gpu) -> Result<Vec<Vec<f32>>> {
        self.refuse_weights_only("reading gradients")?;
        self.read_slots(gpu, &self.grads)
    }

    /// A typed refusal of `what` for an arena without gradients and moments.
    pub fn refuse_weights_only(&self, what: &str) -> Result<()> {
        if self.trainable {
            return Ok(());
        }
        Err(VaeError::Config(format!(
            "{what} needs a trainable model; this one was loaded for inference (weights only): load it with \
             Vae::load to train it"
        )))
    }

    fn read_slots(&self, gpu: &Gpu, t: &Tensor) -> Result<Vec<Vec<f32>>> {
        let all = gpu.read(t)?;
        Ok(self
            .layout
            .slots
            .iter()
            .map(|s| all[s.offset..s.offset + s.len()].to_vec())
            .collect())
    }

    /// Replaces all parameters (one vector per slot, in slot order) and their mirrors.
    pub fn write_params(&self, gpu: &Gpu, values: &[Vec<f32>]) -> Result<()> {
        gpu.write(&self.params, &self.flatten(values)?)?;
        self.sync_mirrors(gpu)
    }

    /// One arena-length vector from per-slot values (padding zero).
    pub fn flatten(&self, values: &[Vec<f32>]) -> Result<Vec<f32>> {
        flatten(&self.layout, values)
    }
}

/// One arena-length vector from per-slot values (padding zero).
pub fn flatten(layout: &ArenaLayout, values: &[Vec<f32>]) -> Result<Vec<f32>> {
    if values.len() != layout.slots.len() {
        return Err(VaeError::Shape(format!(
            "{} tensors for {} parameter slots",
            values.len(),
            layout.slots.len()
        )));
    }
    let mut flat = vec![0.0f32; layout.len()];
    for (s, v) in layout.slots.iter().zip(values) {
        if v.len() != s.len() {
            return Err(VaeError::Shape(format!(
                "{}: {} values for shape {:?}",
                s.name,
                v.len(),
                s.shape
            )));
        }
        flat[s.offset..s.offset + v.len()].copy_from_slice(v);
    }
    Ok(flat)
}
