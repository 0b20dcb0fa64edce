//! The per-example terms of a step, declared by name: the NLL, a latent's KL or a code's
//! penalties, a hierarchy's per-layer KL terms, and the log-ratios of the importance-weighted
//! bound. Blocks declare their terms while their workspaces are made ([`TermLayout::add`]);
//! the objective sums them into the metric row by kind ([`Terms::segments`]); the evaluator
//! reads them by kind or name ([`Terms::find`], [`Terms::view`]).
//!
//! Terms that enter the metrics share one buffer, each at a storage-aligned offset, so that
//! one dispatch sums them all. The log-ratios get buffers of their own: the kernels that write
//! them also write a KL term, and one buffer bound writable twice in a dispatch is best avoided.

use crate::error::{Result, VaeError};
use crate::gpu::{Gpu, Tensor};
use crate::nn::PARAM_ALIGN;
use crate::ops::Segment;

/// Column of the metric log that the reconstruction terms are summed into.
pub const SLOT_RECON: usize = 0;
/// Column of the KL terms and the codes' penalties.
pub const SLOT_KL: usize = 1;
/// Columns of the metric log.
pub const METRIC_SLOTS: usize = 2;

/// What a term measures, which decides the metric column it is summed into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TermKind {
    /// −log p(x|z) of each draw: the reconstruction column.
    Nll,
    /// A stochastic layer's KL term (layer 0 is z₁, the only one outside a hierarchy): the KL
    /// column.
    Kl {
        /// The layer, from z₁ = 0 up.
        layer: usize,
    },
    /// A code's or an encoder's penalty (L1, codebook and commitment, contractive): the KL
    /// column.
    Penalty,
    /// A layer's log p(z) − log q(z|·) terms, for the importance-weighted bound: in no column.
    LogRatio {
        /// The layer, from z₁ = 0 up.
        layer: usize,
    },
    /// The importance-weighted bound's gap to the mean NLL per example, −bound − mean NLL:
    /// the KL column (that objective sums the NLL and this alone).
    BoundGap,
}

impl TermKind {
    fn slot(self) -> Option<usize> {
        match self {
            TermKind::Nll => Some(SLOT_RECON),
            TermKind::Kl { .. } | TermKind::Penalty | TermKind::BoundGap => Some(SLOT_KL),
            TermKind::LogRatio { .. } => None,
        }
    }
}

/// How many values a term holds for a plan of b examples and L draws each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TermRows {
    /// `width` values per example (b·width); summed with weight 1.
    PerExample(usize),
    /// `width` values per draw (L·b·width); averaged over the L draws in the metrics.
    PerDraw(usize),
    /// A fixed count whatever the batch (a penalty on the weights).
    Fixed(usize),
}

impl TermRows {
    fn len(self, b: usize, samples: usize) -> usize {
        match self {
            TermRows::PerExample(w) => b * w,
            TermRows::PerDraw(w) => samples * b * w,
            TermRows::Fixed(n) => n,
        }
    }
}

/// One declared term.
#[derive(Clone, Debug)]
pub struct TermSpec {
    /// Name for lookups and messages, e.g. `kl.z1`.
    pub name: String,
    /// What it measures.
    pub kind: TermKind,
    /// How many values it holds.
    pub rows: TermRows,
    /// Summed in one segment with the term declared after it, as one run of values (a fixed
    /// term only). Two adjacent terms summed apart would add in a different order.
    pub joins_next: bool,
}

impl TermSpec {
    /// A term of `kind` with `rows`, summed on its own.
    pub fn new(name: impl Into<String>, kind: TermKind, rows: TermRows) -> Self {
        TermSpec {
            name: name.into(),
            kind,
            rows,
            joins_next: false,
        }
    }
}

/// Handle of a declared term.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TermId(usize);

/// The terms declared so far, for a workspace of `batch` examples and `samples` draws each.
pub struct TermLayout {
    batch: usize,
    samples: usize,
    specs: Vec<TermSpec>,
}

impl TermLayout {
    /// An empty layout for `batch` examples of `samples` draws.
    pub fn new(batch: usize, samples: usize) -> Self {
        TermLayout {
            batch,
            samples,
            specs: Vec::new(),
        }
    }

    /// Declares a term; terms in a metric column are summed in declaration order.
    pub fn add(&mut self, spec: TermSpec) -> TermId {
        self.specs.push(spec);
        TermId(self.specs.len() - 1)
    }

    /// Offsets in the shared buffer (None for a term with a buffer of its own), and the
    /// shared buffer's length.
    fn offsets(&self) -> (Vec<Option<usize>>, usize) {
        let mut end = 0usize;
        let offsets = self
            .specs
            .iter()
            .map(|spec| {
                spec.kind.slot().map(|_| {
                    let offset = end.div_ceil(PARAM_ALIGN) * PARAM_ALIGN;
                    end = offset + spec.rows.len(self.batch, self.samples);
                    offset
                })
            })
            .collect();
        (offsets, end)
    }

    /// Allocates the terms' buffers.
    pub fn allocate(self, gpu: &Gpu) -> Result<Terms> {
        let (offsets, end) = self.offsets();
        let mut placed = Vec::new();
        for (spec, offset) in self.specs.iter().zip(offsets) {
            placed.push(match offset {
                Some(o) => Place::Shared(o),
                None => Place::Own(gpu.tensor(&spec.name, &[spec.rows.len(self.batch, self.samples).max(1)])?),
            });
        }
        Ok(Terms {
            shared: gpu.tensor("per_example", &[end.max(1)])?,
            specs: self.specs,
            placed,
            samples: self.samples,
        })
    }
}

enum Place {
    /// Offset in floats in the shared buffer.
    Shared(usize),
    Own(Tensor),
}

/// The allocated terms of a workspace.
pub struct Terms {
    shared: Tensor,
    specs: Vec<TermSpec>,
    placed: Vec<Place>,
    samples: usize,
}

impl Terms {
    /// The values of term `id` for a plan of `b` examples: a prefix of its region.
    pub fn view(&self, id: TermId, b: usize) -> Tensor {
        let len = self.specs[id.0].rows.len(b, self.samples);
        match &self.placed[id.0] {
            Place::Shared(offset) => Tensor::view(
                self.shared.buffer().clone(),
                self.shared.offset() + 4 * *offset as u64,
                &[len],
            ),
            Place::Own(t) => t.reshape_prefix(&[len]),
        }
    }

    /// The terms of a kind, in declaration order.
    pub fn of_kind(&self, kind: TermKind) -> Vec<TermId> {
        (0..self.specs.len())
            .filter(|&i| self.specs[i].kind == kind)
            .map(TermId)
            .collect()
    }

    /// Every term whose kind passes `keep`, with its spec, in declaration order.
    pub fn matching(&self, keep: impl Fn(TermKind) -> bool) -> Vec<(TermId, &TermSpec)> {
        self.specs
            .iter()
            .enumerate()
            .filter(|(_, s)| keep(s.kind))
            .map(|(i, s)| (TermId(i), s))
            .collect()
    }

    /// The metric row's segments for a plan of `b` examples (see [`segments`]).
    pub fn segments(&self, b: usize) -> Result<Vec<Segment>> {
        self.segments_where(b, |_| true)
    }

    /// [`Terms::segments`] of the terms whose kind passes `keep` alone.
    pub fn segments_where(&self, b: usize, keep: impl Fn(TermKind) -> bool) -> Result<Vec<Segment>> {
        let offsets: Vec<Option<usize>> = self
            .placed
            .iter()
            .zip(&self.specs)
            .map(|(p, spec)| match p {
                Place::Shared(o) if keep(spec.kind) => Some(*o),
                _ => None,
            })
            .collect();
        segments(&self.specs, &offsets, b, self.samples)
    }

    /// The buffer of the terms summed into the metrics (segment offsets index it).
    pub fn shared(&self) -> &Tensor {
        &self.shared
    }

    /// Every buffer (for byte counts).
    pub fn tensors(&self) -> Vec<&Tensor> {
        let mut all = vec![&self.shared];
        all.extend(self.placed.iter().filter_map(|p| match p {
            Place::Own(t) => Some(t),
            Place::Shared(_) => None,
        }));
        all
    }
}

/// The metric row's segments of terms at `offsets` (None: not in the shared buffer) for a plan
/// of `b` examples of `samples` draws: each term in a column summed in declaration order, a
/// per-draw term averaged over the draws, a fixed term joined to the one after it where it
/// says so.
fn segments(specs: &[TermSpec], offsets: &[Option<usize>], b: usize, samples: usize) -> Result<Vec<Segment>> {
    let mut segs: Vec<Segment> = Vec::new();
    let mut joined: Option<(usize, usize)> = None; // (offset, slot) of a term joining the next
    for (spec, place) in specs.iter().zip(offsets) {
        let (Some(slot), Some(offset)) = (spec.kind.slot(), *place) else {
            continue;
        };
        let len = spec.rows.len(b, samples);
        let scale = match spec.rows {
            TermRows::PerDraw(_) => 1.0 / samples as f32,
            _ => 1.0,
        };
        let (start, run) = match joined.take() {
            Some((start, s)) if s == slot && scale == 1.0 => (start, offset - start + len),
            Some(_) => {
                return Err(VaeError::Config(format!(
                    "term '{}' cannot be summed with the fixed term before it (another column or weight)",
                    spec.name
                )))
            }
            None => (offset, len),
        };
        if spec.joins_next {
            if !matches!(spec.rows, TermRows::Fixed(_)) {
                return Err(VaeError::Config(format!(
                    "term '{}' joins the next, but only a fixed term can",
                    spec.name
                )));
            }
            joined = Some((start, slot));
            continue;
        }
        segs.push(Segment {
            offset: start,
            len: run,
            slot,
            scale,
        });
    }
    if let Some((start, _)) = joined {
        return Err(VaeError::Config(format!(
            "the term at {start} joins the next, but none follows"
        )));
    }
    Ok(segs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, kind: TermKind, rows: TermRows) -> TermSpec {
        TermSpec::new(name, kind, rows)
    }

    #[test]
    fn layout_places_each_term_on_a_storage_boundary() {
        let mut l = TermLayout::new(100, 3);
        l.add(spec("nll", TermKind::Nll, TermRows::PerDraw(1)));
        l.add(spec("pen", TermKind::Penalty, TermRows::Fixed(70)));
        l.add(spec("kl", TermKind::Kl { layer: 0 }, TermRows::PerExample(20)));
        // 300 nll values end at 300, padded to 320; 70 penalty values end at 390 → 448.
        assert_eq!(l.offsets(), (vec![Some(0), Some(320), Some(448)], 448 + 2000));
    }

    fn seg(offset: usize, len: usize, slot: usize, scale: f32) -> (usize, usize, usize, f32) {
        (offset, len, slot, scale)
    }

    fn segs_of(l: &TermLayout, b: usize) -> Result<Vec<(usize, usize, usize, f32)>> {
        Ok(segments(&l.specs, &l.offsets().0, b, l.samples)?
            .into_iter()
            .map(|s| (s.offset, s.len, s.slot, s.scale))
            .collect())
    }

    #[test]
    fn segments_sum_each_column_in_order_and_join_fixed_terms() {
        // A contractive autoencoder: the penalty's fixed terms and the L1 terms in one run.
        let mut l = TermLayout::new(8, 1);
        l.add(spec("nll", TermKind::Nll, TermRows::PerDraw(1)));
        l.add(TermSpec {
            joins_next: true,
            ..spec("contractive", TermKind::Penalty, TermRows::Fixed(100))
        });
        l.add(spec("l1", TermKind::Penalty, TermRows::PerExample(20)));
        // For 5 examples: nll [0, 5); 100 penalty terms at 64, padded to 192, where the
        // 5·20 L1 terms start: one run of 128 + 100 values, the padding zeros.
        assert_eq!(
            segs_of(&l, 5).unwrap(),
            vec![seg(0, 5, SLOT_RECON, 1.0), seg(64, 128 + 100, SLOT_KL, 1.0)]
        );
        // A hierarchy with 2 draws: per-draw terms averaged, log-ratios in no column.
        let mut h = TermLayout::new(4, 2);
        h.add(spec("nll", TermKind::Nll, TermRows::PerDraw(1)));
        h.add(spec("kl.z1", TermKind::Kl { layer: 0 }, TermRows::PerDraw(6)));
        h.add(spec(
            "log_ratio.z1",
            TermKind::LogRatio { layer: 0 },
            TermRows::PerDraw(6),
        ));
        h.add(spec("kl.z2", TermKind::Kl { layer: 1 }, TermRows::PerDraw(2)));
        assert_eq!(
            segs_of(&h, 3).unwrap(),
            vec![
                seg(0, 6, SLOT_RECON, 0.5),
                seg(64, 36, SLOT_KL, 0.5),
                seg(128, 12, SLOT_KL, 0.5)
            ]
        );
        // Joining is for a fixed term followed by one of its column and weight.
        let mut bad = TermLayout::new(4, 1);
        bad.add(TermSpec {
            joins_next: true,
            ..spec("nll", TermKind::Nll, TermRows::PerDraw(1))
        });
        bad.add(spec("kl", TermKind::Kl { layer: 0 }, TermRows::PerExample(2)));
        assert!(segs_of(&bad, 4).is_err());
        let mut last = TermLayout::new(4, 1);
        last.add(TermSpec {
            joins_next: true,
            ..spec("pen", TermKind::Penalty, TermRows::Fixed(3))
        });
        assert!(segs_of(&last, 4).is_err());
    }
}
