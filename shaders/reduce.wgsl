// Reductions: column sums (bias gradients for layers that do not fuse them into the weight
// gradient matmul) and segment sums into metric accumulators that stay on the GPU.

// ---- column sums: out[n] (+)= Σ_m x[m, n] ----

struct ColsumParams {
    rows: u32,
    cols4: u32,   // columns / 4; the host requires columns % 4 == 0
}

override ACCUMULATE: bool = false;

@group(0) @binding(0) var<uniform> cp: ColsumParams;
// Private copies of the uniforms, taken first thing in each entry: once a branch has made the
// execution mask live, lavapipe loads a uniform lane by lane (a gather) on every read.
var<private> CP: ColsumParams;
@group(0) @binding(1) var<storage, read> cx: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> cout: array<vec4<f32>>;

@compute @workgroup_size(64)
fn colsum(@builtin(global_invocation_id) gid: vec3<u32>) {
    CP = cp;
    let q = gid.x;
    if (q >= CP.cols4) { return; }
    var s = vec4<f32>(0.0);
    for (var m = 0u; m < CP.rows; m++) {
        s += cx[m * CP.cols4 + q];
    }
    if (ACCUMULATE) { s += cout[q]; }
    cout[q] = s;
}

// ---- segment sums into the metric log ----
// Workgroup w adds, over the segments k aimed at slot w, x[offset_k .. offset_k + len_k) times
// scale_k, and writes it to log[step.log_row · slots + w]. One row per step, read once per epoch and added up on the
// host in f64: exact bookkeeping without float atomics or a long f32 running sum, and
// deterministic because each sum is a fixed reduction tree.

struct Segment {
    offset: u32,
    len: u32,
    slot: u32,
    scale: f32,
}

struct SegmentParams {
    segments: array<Segment, 10>,  // MAX_SEGMENTS in src/ops/reduce.rs
    slots: u32,
    count: u32,     // segments in use
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> sp: SegmentParams;
var<private> SP: SegmentParams;
@group(0) @binding(1) var<storage, read> sx: array<f32>;
@group(0) @binding(2) var<storage, read_write> log_rows: array<f32>;
@group(0) @binding(3) var<uniform> step: Step;
var<private> S: Step;

var<workgroup> partial: array<f32, 64>;

@compute @workgroup_size(64)
fn sum_segments(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    SP = sp;
    S = step;
    // One workgroup per slot of the row: it adds every segment aimed at its slot (a slot may
    // take several, e.g. a hierarchical VAE's two KL terms), and leaves a slot none aims at.
    let slot = wid.x;
    var used = false;
    var s = 0.0;
    for (var k = 0u; k < SP.count; k++) {
        let seg = SP.segments[k];
        if (seg.slot == slot) {
            used = true;
            var part = 0.0;
            for (var i = li; i < seg.len; i += 64u) {
                part += sx[seg.offset + i];
            }
            s += part * seg.scale;
        }
    }
    partial[li] = s;
    workgroupBarrier();
    for (var width = 32u; width > 0u; width >>= 1u) {
        if (li < width) { partial[li] += partial[li + width]; }
        workgroupBarrier();
    }
    if (li == 0u && used) {
        log_rows[S.log_row * SP.slots + slot] = partial[0];
    }
}
