//! `shaders/reduce.wgsl`: column sums and the per-step metric log.

use crate::error::{Result, VaeError};
use crate::gpu::kernels::layout::{storage, uniform};
use crate::gpu::{Dispatch, Gpu, Shader, Tensor};
use crate::ops::step::StepBuffer;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct ColsumParams {
    rows: u32,
    cols4: u32,
    _pad: [u32; 2],
}

/// Plans `out[n] = Σ_m x[m, n]` (or += with `accumulate`); x is [M, N] with N % 4 == 0.
pub fn colsum(gpu: &Gpu, label: &str, x: &Tensor, out: &Tensor, accumulate: bool) -> Result<Dispatch> {
    let [m, n] = *x.shape() else {
        return Err(VaeError::Shape(format!(
            "{label}: input must be 2-D, got {:?}",
            x.shape()
        )));
    };
    if n % 4 != 0 || out.len() != n {
        return Err(VaeError::Shape(format!(
            "{label}: needs columns % 4 == 0 and an output of {n} elements; got {:?} -> {:?}",
            x.shape(),
            out.shape()
        )));
    }
    let layout = [uniform(0), storage(1, true), storage(2, false)];
    let constants = [("ACCUMULATE", if accumulate { 1.0 } else { 0.0 })];
    let pipeline = gpu.kernels.pipeline(Shader::Reduce, "colsum", &constants, &layout)?;
    let ubuf = gpu.uniform(
        label,
        &ColsumParams {
            rows: m as u32,
            cols4: (n / 4) as u32,
            _pad: [0; 2],
        },
    )?;
    let res = [ubuf.raw().as_entire_binding(), x.binding(), out.binding()];
    gpu.dispatch(
        label,
        pipeline,
        &res,
        Some(ubuf.clone()),
        [(n / 4).div_ceil(64) as u32, 1, 1],
        (m * n) as f64,
        4.0 * (m * n + n) as f64,
    )
}

/// One segment of [`sum_segments`]: `scale · Σ x[offset .. offset+len]` goes to column `slot`.
#[derive(Clone, Copy, Debug)]
pub struct Segment {
    /// First element summed, in floats.
    pub offset: usize,
    /// Elements summed.
    pub len: usize,
    /// Column of the output row that receives the sum.
    pub slot: usize,
    /// Factor on the sum.
    pub scale: f32,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct SegmentRaw {
    offset: u32,
    len: u32,
    slot: u32,
    scale: f32,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct SegmentParams {
    segments: [SegmentRaw; MAX_SEGMENTS],
    slots: u32,
    count: u32,
    _pad: [u32; 2],
}

/// Most segments of one [`sum_segments`]: the reconstruction and the KL terms of up to nine
/// stochastic layers (see [`crate::model::MAX_TOP_LAYERS`]). reduce.wgsl's array matches.
pub const MAX_SEGMENTS: usize = 10;

/// Plans up to [`MAX_SEGMENTS`] segment sums of `x` into row `step.log_row` of `log` ([rows, slots]);
/// segments aimed at one slot add up there, and slots no segment names keep their values.
/// Each step writes its own row; [`read_log_totals`] adds the rows up in f64.
pub fn sum_segments(
    gpu: &Gpu,
    label: &str,
    step: &StepBuffer,
    x: &Tensor,
    log: &Tensor,
    segments: &[Segment],
) -> Result<Dispatch> {
    let [_, slots] = *log.shape() else {
        return Err(VaeError::Shape(format!(
            "{label}: the metric log must be [rows, slots], got {:?}",
            log.shape()
        )));
    };
    if segments.is_empty() || segments.len() > MAX_SEGMENTS {
        return Err(VaeError::Shape(format!(
            "{label}: 1 to {MAX_SEGMENTS} segments, got {}",
            segments.len()
        )));
    }
    let mut raw = SegmentParams {
        segments: [SegmentRaw {
            offset: 0,
            len: 0,
            slot: 0,
            scale: 0.0,
        }; MAX_SEGMENTS],
        slots: slots as u32,
        count: segments.len() as u32,
        _pad: [0; 2],
    };
    for (r, s) in raw.segments.iter_mut().zip(segments) {
        if s.offset + s.len > x.len() || s.slot >= slots {
            return Err(VaeError::Shape(format!(
                "{label}: segment {s:?} is outside the input ({} elements) or the log's {slots} slots",
                x.len()
            )));
        }
        *r = SegmentRaw {
            offset: s.offset as u32,
            len: s.len as u32,
            slot: s.slot as u32,
            scale: s.scale,
        };
    }
    let layout = [uniform(0), storage(1, true), storage(2, false), uniform(3)];
    let pipeline = gpu.kernels.pipeline(Shader::Reduce, "sum_segments", &[], &layout)?;
    let ubuf = gpu.uniform(label, &raw)?;
    let res = [
        ubuf.raw().as_entire_binding(),
        x.binding(),
        log.binding(),
        step.binding(),
    ];
    let n: usize = segments.iter().map(|s| s.len).sum();
    gpu.dispatch(
        label,
        pipeline,
        &res,
        Some(ubuf.clone()),
        [slots as u32, 1, 1],
        n as f64,
        4.0 * n as f64,
    )
}

/// Reads the first `rows` rows of a metric log and returns each slot's total in f64.
pub fn read_log_totals(gpu: &Gpu, log: &Tensor, rows: usize) -> Result<Vec<f64>> {
    let [cap, slots] = *log.shape() else {
        return Err(VaeError::Shape(format!(
            "metric log must be [rows, slots], got {:?}",
            log.shape()
        )));
    };
    if rows > cap {
        return Err(VaeError::Shape(format!(
            "metric log holds {cap} rows, asked for {rows}"
        )));
    }
    let v = gpu.read(log)?;
    let mut totals = vec![0.0f64; slots];
    for row in v.chunks_exact(slots).take(rows) {
        for (t, x) in totals.iter_mut().zip(row) {
            *t += *x as f64;
        }
    }
    Ok(totals)
}
