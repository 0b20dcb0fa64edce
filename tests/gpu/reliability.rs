//! What a failing or interrupted run keeps: the divergence guard stops an epoch at the step
//! that first went non-finite and nothing of it is saved; a model with non-finite weights is
//! neither saved nor loaded; an epoch stopped midway continues bit for bit from its saved
//! state.

use vae_wgpu::data::{DatasetKind, GpuDataset};
use vae_wgpu::model::{Vae, VaeConfig};
use vae_wgpu::run::RunDir;
use vae_wgpu::train::{AdamConfig, EpochOutcome, TrainConfig, Trainer};
use vae_wgpu::{Gpu, VaeError};

use crate::common::{gpu, RawCheckpoint};

fn data(g: &Gpu, n: usize) -> GpuDataset {
    let set = DatasetKind::Mnist
        .load_split(&DatasetKind::Mnist.default_dir(), true)
        .expect("data/mnist is committed");
    GpuDataset::upload(
        g,
        "reliability",
        &set.images[..n * 784],
        n,
        784,
        set.labels[..n].to_vec(),
    )
    .unwrap()
}

fn small() -> VaeConfig {
    VaeConfig {
        hidden: vec![32],
        latent: 4,
        ..Default::default()
    }
}

fn scratch(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("vae-wgpu-reliability-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn a_diverging_run_stops_at_its_first_bad_step_and_saves_nothing() {
    let g = gpu();
    let vae = Vae::new(g, small(), 3).unwrap();
    let dir = scratch("diverge");
    let run = RunDir::create(&dir, false, 2).unwrap();
    // A good epoch, saved.
    let good = TrainConfig {
        batch_size: 64,
        ..Default::default()
    };
    let mut trainer = Trainer::new(g, &vae, data(g, 256), good.clone()).unwrap();
    trainer.train_epoch(|_, _| {}).unwrap();
    run.save(trainer.epoch, 0, |c, s| {
        vae.save(g, c, &[])?;
        trainer.save_state(&vae, s)
    })
    .unwrap();
    let saved = std::fs::read(dir.join("checkpoint.safetensors")).unwrap();
    // The same model trained on at a learning rate that overflows the parameters.
    let wild = TrainConfig {
        adam: AdamConfig {
            lr: 1e30,
            ..Default::default()
        },
        ..good
    };
    let mut trainer = Trainer::new(g, &vae, data(g, 256), wild).unwrap();
    trainer.step = 4;
    trainer.epoch = 1;
    match trainer.train_epoch(|_, _| {}) {
        Err(VaeError::Diverged { epoch, step, what }) => {
            assert_eq!(epoch, 2);
            assert!((4..8).contains(&step), "step {step}");
            assert!(what.contains("parameter") || what.contains("loss"), "{what}");
        }
        other => panic!("expected Diverged, got {other:?}"),
    }
    assert_eq!(trainer.epoch, 1, "a diverged epoch is not counted");
    // Its weights are refused: not saved over the good file, which stays byte for byte.
    let path = dir.join("checkpoint.safetensors");
    match vae.save(g, &path, &[]) {
        Err(e @ VaeError::Checkpoint { .. }) => assert!(e.to_string().contains("not written"), "{e}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(std::fs::read(&path).unwrap(), saved);
    // And a checkpoint holding a NaN does not load, naming the tensor.
    let mut raw = RawCheckpoint::read(&path);
    raw.tensors[0].2[5] = f32::NAN;
    let name = raw.tensors[0].0.clone();
    let bad = dir.join("nan.safetensors");
    RawCheckpoint::write(&bad, &raw.tensors, &raw.metadata);
    match Vae::load(g, &bad) {
        Err(e @ VaeError::Checkpoint { .. }) => {
            assert!(e.to_string().contains(&name) && e.to_string().contains("NaN"), "{e}")
        }
        other => panic!("expected a refusal, got {:?}", other.err()),
    }
    drop(run);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn an_epoch_stopped_midway_continues_bit_for_bit() {
    let g = gpu();
    let cfg = TrainConfig {
        batch_size: 64,
        seed: 8,
        epochs: 2,
        ..Default::default()
    };
    // Uninterrupted: two epochs.
    let whole = Vae::new(g, small(), 5).unwrap();
    let mut t = Trainer::new(g, &whole, data(g, 300), cfg.clone()).unwrap();
    let reports: Vec<_> = (0..2).map(|_| t.train_epoch(|_, _| {}).unwrap()).collect();
    let want = whole.arena.read_params(g).unwrap();
    // Stopped after 3 of the second epoch's 5 batches, saved, and continued elsewhere.
    let dir = scratch("midway");
    std::fs::create_dir_all(&dir).unwrap();
    let (ckpt, state) = (dir.join("m.safetensors"), dir.join("s.safetensors"));
    let first = Vae::new(g, small(), 5).unwrap();
    let mut t = Trainer::new(g, &first, data(g, 300), cfg.clone()).unwrap();
    t.train_epoch(|_, _| {}).unwrap();
    match t.train_epoch_until(|done| done == 3, |_, _| {}).unwrap() {
        EpochOutcome::Stopped { batch } => assert_eq!(batch, 3),
        other => panic!("expected a stop, got {other:?}"),
    }
    assert_eq!((t.epoch, t.batch, t.step), (1, 3, 8));
    first.save(g, &ckpt, &[]).unwrap();
    t.save_state(&first, &state).unwrap();
    let second = Vae::load(g, &ckpt).unwrap();
    let mut t = Trainer::new(g, &second, data(g, 300), cfg).unwrap();
    t.load_state(&second, &state).unwrap();
    assert_eq!((t.epoch, t.batch, t.step), (1, 3, 8));
    let rep = match t.train_epoch_until(|_| false, |_, _| {}).unwrap() {
        EpochOutcome::Done(rep) => rep,
        other => panic!("expected the epoch's end, got {other:?}"),
    };
    assert_eq!(second.arena.read_params(g).unwrap(), want);
    // The epoch's metrics include the rows of its first part, restored from the state.
    assert_eq!(rep.train, reports[1].train);
    std::fs::remove_dir_all(&dir).ok();
}
