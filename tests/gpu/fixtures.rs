//! Checkpoints and training states written by earlier versions (`tests/fixtures/`: from before
//! the reader moved to the `safetensors` crate, and the first convolutional format) still load:
//! the model's configuration from the metadata, every tensor as stored (re-saved and read back
//! by hand, bit for bit), and the optimizer state into a trainer of the same settings.

use std::path::Path;

use vae_wgpu::data::{DatasetKind, GpuDataset};
use vae_wgpu::model::{Arch, Code, ConvArch, Likelihood, TopLatent, Vae, VaeConfig};
use vae_wgpu::train::{TrainConfig, Trainer};

use crate::common::{gpu, RawCheckpoint};

fn check(dir: &str, want: VaeConfig, train: TrainConfig) {
    let g = gpu();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(dir);
    let path = dir.join("checkpoint.safetensors");
    let vae = Vae::load(g, &path).unwrap();
    assert_eq!(vae.config, want);
    // Saved again, the model holds exactly the fixture's tensors.
    let tmp = std::env::temp_dir().join(format!("vae-wgpu-fixture-{}-{}", std::process::id(), want.latent));
    std::fs::create_dir_all(&tmp).unwrap();
    let again = tmp.join("again.safetensors");
    vae.save(g, &again, &[]).unwrap();
    let (old, new) = (RawCheckpoint::read(&path), RawCheckpoint::read(&again));
    assert_eq!(old.names(), new.names());
    for name in old.names() {
        assert_eq!(old.shape(&name), new.shape(&name), "{name}");
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(old.values(&name)), bits(new.values(&name)), "{name}");
    }
    for (k, v) in want.to_metadata() {
        assert_eq!(old.metadata.get(&k), Some(&v), "{k}");
    }
    // The training state restores into a trainer of the run's settings.
    let set = DatasetKind::Mnist
        .load_split(&DatasetKind::Mnist.default_dir(), true)
        .unwrap();
    let data = GpuDataset::upload(
        g,
        "fixture",
        &set.images[..64 * 784],
        64,
        784,
        set.labels[..64].to_vec(),
    )
    .unwrap();
    let mut trainer = Trainer::new(g, &vae, data, train).unwrap();
    trainer
        .load_state(&vae, &dir.join("training_state.safetensors"))
        .unwrap();
    assert_eq!((trainer.epoch, trainer.step), (1, 2));
    std::fs::remove_dir_all(&tmp).ok();
}

#[test]
fn checkpoints_and_states_of_earlier_versions_load() {
    let train = TrainConfig {
        batch_size: 32,
        seed: 4,
        ..Default::default()
    };
    check(
        "hier-conditional-learned-pixel",
        VaeConfig {
            hidden: vec![8],
            latent: 2,
            likelihood: Likelihood::GaussianLearned { per_pixel: true },
            classes: 10,
            code: Code::Hierarchical(vec![TopLatent {
                latent: 2,
                hidden: vec![8],
            }]),
            ..Default::default()
        },
        train.clone(),
    );
    check(
        "vq-ema",
        VaeConfig {
            hidden: vec![8],
            latent: 4,
            code: Code::Quantized {
                codes: 16,
                groups: 2,
                commitment: 0.25,
            },
            ..Default::default()
        },
        TrainConfig {
            vq_ema: Some(0.9),
            ..train.clone()
        },
    );
    check(
        "conv-conditional",
        VaeConfig {
            hidden: vec![8],
            latent: 2,
            classes: 10,
            arch: Arch::Conv(ConvArch {
                input: [1, 28, 28],
                channels: vec![4, 8],
            }),
            ..Default::default()
        },
        train,
    );
}
