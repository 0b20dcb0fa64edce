// Reductions: column sums (bias gradients for layers that do not fuse them into the weight
// gradient matmul) and segment sums into metric accumulators that stay on the GPU.

// ---- column sums: out[n] (+)= Σ_m x[m, n] ----

struct ColsumParams {
    rows: u32,
    cols4: u32,   // columns / 4; the host requires columns % 4 == 0
}

override ACCUMULATE: bool = false;

@group(0) @binding(0) var<uniform> cp: ColsumParams;
@group(0) @binding(1) var<storage, read> cx: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> cout: array<vec4<f32>>;

@compute @workgroup_size(64)
fn colsum(@builtin(global_invocation_id) gid: vec3<u32>) {
    let q = gid.x;
    if (q >= cp.cols4) { return; }
    var s = vec4<f32>(0.0);
    for (var m = 0u; m < cp.rows; m++) {
        s += cx[m * cp.cols4 + q];
    }
    if (ACCUMULATE) { s += cout[q]; }
    cout[q] = s;
}

// ---- segment sums into the metric log ----
// Workgroup w sums x[offset_w .. offset_w + len_w) times scale_w and writes it to
// log[step.log_row · slots + slot_w]. One row per step, read once per epoch and added up on the
// host in f64: exact bookkeeping without float atomics or a long f32 running sum, and
// deterministic because each sum is a fixed reduction tree.

struct Segment {
    offset: u32,
    len: u32,
    slot: u32,
    scale: f32,
}

struct SegmentParams {
    segments: array<Segment, 4>,
    slots: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> sp: SegmentParams;
@group(0) @binding(1) var<storage, read> sx: array<f32>;
@group(0) @binding(2) var<storage, read_write> log_rows: array<f32>;
@group(0) @binding(3) var<uniform> step: Step;

var<workgroup> partial: array<f32, 64>;

@compute @workgroup_size(64)
fn sum_segments(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let seg = sp.segments[wid.x];
    var s = 0.0;
    for (var i = li; i < seg.len; i += 64u) {
        s += sx[seg.offset + i];
    }
    partial[li] = s;
    workgroupBarrier();
    for (var width = 32u; width > 0u; width >>= 1u) {
        if (li < width) { partial[li] += partial[li + width]; }
        workgroupBarrier();
    }
    if (li == 0u) {
        log_rows[step.log_row * sp.slots + seg.slot] = partial[0] * seg.scale;
    }
}
