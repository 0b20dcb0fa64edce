//! Shared device, deterministic test data and the f64 reference helpers.

use std::sync::OnceLock;

use vae_wgpu::Gpu;

/// The device all tests share.
pub fn gpu() -> &'static Gpu {
    static GPU: OnceLock<Gpu> = OnceLock::new();
    GPU.get_or_init(
        || match Gpu::new(vae_wgpu::GpuOptions::from_env().expect("the environment's GPU settings")) {
            Ok(g) => {
                eprintln!("adapter: {}", g.report());
                g
            }
            Err(e) => panic!("GPU tests need an adapter: {e}"),
        },
    )
}

/// Deterministic pseudo-random values in [lo, hi) (SplitMix64).
pub fn rand_vec(n: usize, seed: u64, lo: f32, hi: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(1);
    (0..n)
        .map(|_| {
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            lo + (hi - lo) * ((z >> 40) as f32 / (1u64 << 24) as f32)
        })
        .collect()
}

/// Asserts |got − want| <= tol[i] elementwise, reporting the worst index.
pub fn assert_close(what: &str, got: &[f32], want: &[f64], tol: impl Fn(usize) -> f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut worst = (0usize, 0.0f64, 0.0f64);
    for i in 0..got.len() {
        let err = (got[i] as f64 - want[i]).abs();
        let t = tol(i);
        assert!(got[i].is_finite(), "{what}[{i}] = {} is not finite", got[i]);
        if err / t > worst.2 {
            worst = (i, err, err / t);
        }
    }
    assert!(
        worst.2 <= 1.0,
        "{what}: index {} got {} want {} (error {:.3e} is {:.2}× the tolerance)",
        worst.0,
        got[worst.0],
        want[worst.0],
        worst.1,
        worst.2
    );
}

/// Tensors (one vector each, e.g. the arena's parameters by slot) widened to f64 for the
/// reference.
pub fn to_f64(v: &[Vec<f32>]) -> Vec<Vec<f64>> {
    v.iter().map(|t| t.iter().map(|&x| x as f64).collect()).collect()
}

/// The latent of a model with `top` stochastic layers above z₁: Gaussian when there are none.
pub fn hier(top: &[vae_wgpu::model::TopLatent]) -> vae_wgpu::model::Code {
    if top.is_empty() {
        vae_wgpu::model::Code::Gaussian
    } else {
        vae_wgpu::model::Code::Hierarchical(top.to_vec())
    }
}

/// A safetensors file read by hand, independently of the library's reader: the 8-byte header
/// length, the JSON header (every tensor F32, its offsets inside the data and matching its
/// shape), the data. Panics on anything malformed.
pub struct RawCheckpoint {
    /// (name, shape, values) in header order.
    pub tensors: Vec<(String, Vec<usize>, Vec<f32>)>,
    /// The `__metadata__` pairs.
    pub metadata: std::collections::BTreeMap<String, String>,
}

impl RawCheckpoint {
    /// Parses a file's bytes.
    pub fn parse(bytes: &[u8]) -> Self {
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).expect("header JSON");
        let data = &bytes[8 + n..];
        let mut tensors = Vec::new();
        let mut metadata = std::collections::BTreeMap::new();
        for (name, entry) in header.as_object().expect("header object") {
            if name == "__metadata__" {
                for (k, v) in entry.as_object().expect("metadata object") {
                    metadata.insert(k.clone(), v.as_str().expect("string metadata").to_string());
                }
                continue;
            }
            assert_eq!(entry["dtype"], "F32", "{name}");
            let shape: Vec<usize> = entry["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap() as usize)
                .collect();
            let (begin, end) = (
                entry["data_offsets"][0].as_u64().unwrap() as usize,
                entry["data_offsets"][1].as_u64().unwrap() as usize,
            );
            assert_eq!(
                end - begin,
                4 * shape.iter().product::<usize>(),
                "{name}: offsets and shape"
            );
            let values = data[begin..end]
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            tensors.push((name.clone(), shape, values));
        }
        RawCheckpoint { tensors, metadata }
    }

    /// Reads a file.
    pub fn read(path: &std::path::Path) -> Self {
        Self::parse(&std::fs::read(path).unwrap())
    }

    /// The tensor names, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut n: Vec<String> = self.tensors.iter().map(|t| t.0.clone()).collect();
        n.sort();
        n
    }

    fn find(&self, name: &str) -> &(String, Vec<usize>, Vec<f32>) {
        self.tensors
            .iter()
            .find(|t| t.0 == name)
            .unwrap_or_else(|| panic!("no tensor {name}"))
    }

    /// A tensor's shape.
    pub fn shape(&self, name: &str) -> &[usize] {
        &self.find(name).1
    }

    /// A tensor's values.
    pub fn values(&self, name: &str) -> &[f32] {
        &self.find(name).2
    }

    /// Writes `tensors` and `metadata` as a safetensors file, by hand.
    pub fn write(
        path: &std::path::Path,
        tensors: &[(String, Vec<usize>, Vec<f32>)],
        metadata: &std::collections::BTreeMap<String, String>,
    ) {
        let mut header = serde_json::Map::new();
        header.insert("__metadata__".into(), serde_json::json!(metadata));
        let mut offset = 0;
        for (name, shape, values) in tensors {
            let end = offset + 4 * values.len();
            header.insert(
                name.clone(),
                serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [offset, end]}),
            );
            offset = end;
        }
        let mut text = serde_json::to_string(&header).unwrap();
        while !text.len().is_multiple_of(8) {
            text.push(' ');
        }
        let mut bytes = (text.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(text.as_bytes());
        for (_, _, values) in tensors {
            bytes.extend(values.iter().flat_map(|v| v.to_le_bytes()));
        }
        std::fs::write(path, bytes).unwrap();
    }
}
