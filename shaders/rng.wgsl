// Counter-based random numbers: a pure function of the key (seed, step, stream|sample, index),
// so any kernel can draw the same number again (reparameterize backward re-derives ε instead of
// storing it) and draws do not depend on dispatch order. Two rounds of the 4-D PCG hash of
// Jarzynski & Olano (JCGT 2020) decorrelate adjacent counters. src/rng.rs mirrors this exactly.
// This file is prepended to the kernels that draw random numbers.

fn pcg4d(v_in: vec4<u32>) -> vec4<u32> {
    var v = v_in * 1664525u + 1013904223u;
    v.x += v.y * v.w;
    v.y += v.z * v.x;
    v.z += v.x * v.y;
    v.w += v.y * v.z;
    v = v ^ (v >> vec4<u32>(16u));
    v.x += v.y * v.w;
    v.y += v.z * v.x;
    v.z += v.x * v.y;
    v.w += v.y * v.z;
    return v;
}

fn rng_bits(seed: u32, step: u32, stream: u32, index: u32) -> vec4<u32> {
    return pcg4d(pcg4d(vec4<u32>(seed, step, stream, index)));
}

// Uniform in (0, 1): 24 random bits, centred in their bucket.
fn rng_uniform(seed: u32, step: u32, stream: u32, index: u32) -> f32 {
    let h = rng_bits(seed, step, stream, index);
    return (f32(h.x >> 8u) + 0.5) * (1.0 / 16777216.0);
}

// Standard normal by Box–Muller; elements 2i and 2i+1 are the cos and sin halves of one pair.
// u1 >= 2^-25 bounds |ε| by sqrt(-2 ln 2^-25) ≈ 5.9.
fn rng_normal(seed: u32, step: u32, stream: u32, index: u32) -> f32 {
    let h = rng_bits(seed, step, stream, index >> 1u);
    let u1 = (f32(h.x >> 8u) + 0.5) * (1.0 / 16777216.0);
    let u2 = f32(h.y >> 8u) * (1.0 / 16777216.0);
    let r = sqrt(-2.0 * log(u1));
    let theta = 6.283185307179586 * u2;
    return select(r * cos(theta), r * sin(theta), (index & 1u) == 1u);
}
