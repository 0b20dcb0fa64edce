//! Schedules for the weight of the KL term over a run, and for the learning rate over its
//! epochs.
//!
//! Starting with a small KL weight lets the decoder learn to use the latent code before the
//! prior pulls the posterior towards it, which counters posterior collapse. Warm-up
//! (Bowman et al., 2016) ramps the weight once; the cyclical schedule (Fu et al., 2019) repeats
//! the ramp so the model can revisit codes learnt while the weight was low.
//!
//! Notation: `t` is the global step (0-based, counted across epochs), `T` the total number of
//! steps in the run and `β` the target weight.

use std::fmt;

use crate::error::{Result, VaeError};

/// How the KL weight evolves from step to step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KlSchedule {
    /// `β` at every step.
    #[default]
    Constant,
    /// `β·min(1, t/N)` with `N = steps`: a linear ramp from 0, reaching `β` at step `N`.
    /// `steps == 0` behaves like [`KlSchedule::Constant`].
    Warmup {
        /// Length `N` of the ramp in steps.
        steps: u64,
    },
    /// `cycles` repetitions of a ramp: each cycle of `T/cycles` steps rises linearly from 0
    /// over its first half and holds `β` over its second half.
    Cyclical {
        /// Number of cycles `M` in the run, at least 1.
        cycles: u32,
    },
}

impl KlSchedule {
    /// Builds the schedule from the command-line options `--kl-warmup N` and `--kl-cycles M`.
    ///
    /// Neither gives [`KlSchedule::Constant`], as does a warm-up of 0 steps (so the run
    /// metadata names what actually happens). Giving both, or `M = 0`, is a
    /// [`VaeError::Config`].
    pub fn parse(warmup: Option<u64>, cycles: Option<u32>) -> Result<KlSchedule> {
        match (warmup, cycles) {
            (Some(_), Some(_)) => Err(VaeError::Config(
                "--kl-warmup and --kl-cycles are exclusive; pass at most one of them".to_string(),
            )),
            (None, Some(0)) => Err(VaeError::Config(
                "--kl-cycles must be at least 1 (omit it for a constant KL weight)".to_string(),
            )),
            (None, Some(cycles)) => Ok(KlSchedule::Cyclical { cycles }),
            (Some(0), None) | (None, None) => Ok(KlSchedule::Constant),
            (Some(steps), None) => Ok(KlSchedule::Warmup { steps }),
        }
    }

    /// Checks the schedule against the run length: every cycle needs at least one step, so
    /// more cycles than `total_steps` is refused (as is 0 cycles, which [`KlSchedule::parse`]
    /// already rejects but a hand-built value might hold), naming `TrainConfig::kl_schedule`.
    pub fn validate(&self, total_steps: u64) -> Result<()> {
        match *self {
            KlSchedule::Cyclical { cycles: 0 } => Err(VaeError::setting(
                "TrainConfig::kl_schedule",
                "cyclical annealing needs at least 1 cycle (Constant for a constant KL weight)",
            )),
            KlSchedule::Cyclical { cycles } if u64::from(cycles) > total_steps => Err(VaeError::settings(
                &["TrainConfig::kl_schedule", "TrainConfig::epochs"],
                format!(
                    "{cycles} cycles exceed the {total_steps} training steps of this run; use at most \
                     {total_steps} cycles or train for more epochs"
                ),
            )),
            _ => Ok(()),
        }
    }

    /// The KL weight for global step `step` (0-based) of a run of `total_steps` steps with
    /// target weight `beta`.
    ///
    /// Warm-up follows `β·min(1, t/N)` literally, so step 0 trains with weight 0 and the full
    /// weight is first used at step `N`. A cyclical schedule over a run of 0 steps (which
    /// [`KlSchedule::validate`] rejects) returns `beta` rather than dividing by zero.
    pub fn beta_at(&self, beta: f32, step: u64, total_steps: u64) -> f32 {
        let fraction = match *self {
            KlSchedule::Constant | KlSchedule::Warmup { steps: 0 } => 1.0,
            KlSchedule::Warmup { steps } => (step as f64 / steps as f64).min(1.0),
            KlSchedule::Cyclical { cycles } => {
                // f64 keeps the cycle position exact enough for runs of up to 2^53 steps, and a
                // fractional cycle length spreads the remainder of T/M over all cycles.
                let length = total_steps as f64 / f64::from(cycles.max(1));
                if length <= 0.0 {
                    1.0
                } else {
                    let position = (step as f64 % length) / length;
                    (2.0 * position).min(1.0)
                }
            }
        };
        beta * fraction as f32
    }
}

/// The short form recorded in run metadata: `constant`, `warmup(N)` or `cyclical(M)`.
impl fmt::Display for KlSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KlSchedule::Constant => write!(f, "constant"),
            KlSchedule::Warmup { steps } => write!(f, "warmup({steps})"),
            KlSchedule::Cyclical { cycles } => write!(f, "cyclical({cycles})"),
        }
    }
}

/// How the learning rate evolves over the epochs (`lr` is [`crate::train::AdamConfig::lr`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LrSchedule {
    /// `lr` in every epoch.
    #[default]
    Constant,
    /// Burda, Grosse & Salakhutdinov (2016)'s schedule: stage i = 0…7 runs 3^i passes at
    /// lr·10^(−i/7), 3,280 passes in all. `passes` = N compresses it: stage i runs
    /// max(1, round(3^i·N/3280)) passes (N = 3280 is the paper's).
    Burda {
        /// The schedule's nominal length N in passes.
        passes: usize,
    },
}

impl LrSchedule {
    /// The full length of [`LrSchedule::Burda`]: Σ 3^i for i = 0…7.
    pub const BURDA_PASSES: usize = 3280;
    /// Stages of [`LrSchedule::Burda`].
    pub const BURDA_STAGES: usize = 8;

    /// Epochs in each stage (one stage of any length for [`LrSchedule::Constant`]: empty).
    pub fn stages(&self) -> Vec<usize> {
        match *self {
            LrSchedule::Constant => Vec::new(),
            LrSchedule::Burda { passes } => (0..Self::BURDA_STAGES)
                .map(|i| {
                    let nominal = 3f64.powi(i as i32) * passes as f64 / Self::BURDA_PASSES as f64;
                    (nominal.round() as usize).max(1)
                })
                .collect(),
        }
    }

    /// The epochs the schedule runs, if it fixes them.
    pub fn epochs(&self) -> Option<usize> {
        match self {
            LrSchedule::Constant => None,
            LrSchedule::Burda { .. } => Some(self.stages().iter().sum()),
        }
    }

    /// Whether epoch `epoch` (1-based) ends a stage: the last epoch of each stage (never, for
    /// a constant rate).
    pub fn ends_stage(&self, epoch: usize) -> bool {
        let mut end = 0;
        self.stages().iter().any(|&n| {
            end += n;
            end == epoch
        })
    }

    /// The learning rate of epoch `epoch` (0-based) for base rate `lr`; past the schedule's
    /// end, its last stage's.
    pub fn lr_at(&self, lr: f32, epoch: u64) -> f32 {
        let stages = self.stages();
        let mut end = 0u64;
        let stage = stages
            .iter()
            .position(|&n| {
                end += n as u64;
                epoch < end
            })
            .unwrap_or(stages.len().saturating_sub(1));
        match self {
            LrSchedule::Constant => lr,
            LrSchedule::Burda { .. } => (lr as f64 * 10f64.powf(-(stage as f64) / 7.0)) as f32,
        }
    }

    /// Checks the schedule against the run's length in epochs, naming both settings.
    pub fn validate(&self, epochs: usize) -> Result<()> {
        match *self {
            LrSchedule::Burda { passes: 0 } => Err(VaeError::setting(
                "TrainConfig::lr_schedule",
                "the schedule's length in passes must be at least 1, got 0",
            )),
            LrSchedule::Burda { passes } if self.epochs() != Some(epochs) => Err(VaeError::settings(
                &["TrainConfig::epochs", "TrainConfig::lr_schedule"],
                format!(
                    "the schedule of {passes} passes runs {} epochs (stages of {:?}), the run has {epochs}; \
                     train for exactly its length",
                    self.epochs().unwrap_or(0),
                    self.stages()
                ),
            )),
            _ => Ok(()),
        }
    }
}

/// The short form recorded in run metadata: `constant` or `burda(N)`.
impl fmt::Display for LrSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LrSchedule::Constant => write!(f, "constant"),
            LrSchedule::Burda { passes } => write!(f, "burda({passes})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burda_schedule_has_the_papers_stages_and_compresses() {
        let full = LrSchedule::Burda { passes: 3280 };
        assert_eq!(full.stages(), vec![1, 3, 9, 27, 81, 243, 729, 2187]);
        assert_eq!(full.epochs(), Some(3280));
        // Stage i at 1e-3 · 10^(−i/7): epoch 0 is stage 0, epochs 1–3 stage 1, 4–12 stage 2.
        let lr = |e| full.lr_at(1e-3, e);
        assert_eq!(lr(0), 1e-3);
        assert!((lr(1) as f64 - 1e-3 * 10f64.powf(-1.0 / 7.0)).abs() < 1e-10);
        assert_eq!(lr(3), lr(1));
        assert!((lr(4) as f64 - 1e-3 * 10f64.powf(-2.0 / 7.0)).abs() < 1e-10);
        assert!((lr(3279) as f64 - 1e-4).abs() < 1e-10, "{}", lr(3279));
        assert!(full.ends_stage(1) && full.ends_stage(4) && full.ends_stage(3280));
        assert!(!full.ends_stage(2) && !full.ends_stage(3279));
        // N = 100: round(3^i·100/3280) floored at 1.
        let short = LrSchedule::Burda { passes: 100 };
        assert_eq!(short.stages(), vec![1, 1, 1, 1, 2, 7, 22, 67]);
        assert_eq!(short.epochs(), Some(102));
        assert!(short.validate(102).is_ok());
        let e = short.validate(100).unwrap_err().to_string();
        assert!(e.contains("102") && e.contains("100"), "{e}");
        assert!(LrSchedule::Burda { passes: 0 }.validate(8).is_err());
        assert_eq!(LrSchedule::Constant.lr_at(3e-4, 17), 3e-4);
        assert!(LrSchedule::Constant.validate(5).is_ok() && !LrSchedule::Constant.ends_stage(5));
        assert_eq!(short.to_string(), "burda(100)");
    }

    fn config_message(r: Result<impl fmt::Debug>) -> String {
        match r {
            Err(e @ (VaeError::Config(_) | VaeError::Setting { .. })) => e.to_string(),
            other => panic!("expected a configuration error, got {other:?}"),
        }
    }

    #[test]
    fn constant_is_beta_everywhere() {
        let s = KlSchedule::Constant;
        for t in [0, 1, 499, 999] {
            assert_eq!(s.beta_at(0.7, t, 1000), 0.7);
        }
    }

    #[test]
    fn warmup_ramps_from_zero_to_beta_at_n() {
        let s = KlSchedule::Warmup { steps: 1000 };
        let total = 5000;
        assert_eq!(s.beta_at(0.5, 0, total), 0.0);
        assert_eq!(s.beta_at(0.5, 1, total), 0.0005);
        assert_eq!(s.beta_at(0.5, 500, total), 0.25);
        assert_eq!(s.beta_at(0.5, 750, total), 0.375);
        assert_eq!(s.beta_at(0.5, 1000, total), 0.5);
        assert_eq!(s.beta_at(0.5, 2000, total), 0.5);
        assert_eq!(s.beta_at(0.5, total - 1, total), 0.5);
    }

    #[test]
    fn warmup_longer_than_run_never_reaches_beta() {
        let s = KlSchedule::Warmup { steps: 400 };
        assert_eq!(s.beta_at(1.0, 99, 100), 0.2475);
    }

    #[test]
    fn zero_warmup_is_constant() {
        let s = KlSchedule::Warmup { steps: 0 };
        assert_eq!(s.beta_at(2.0, 0, 10), 2.0);
        assert_eq!(s.beta_at(2.0, 9, 10), 2.0);
    }

    #[test]
    fn cyclical_rises_over_first_half_and_holds() {
        // T = 800, M = 4: cycles of 200 steps.
        let s = KlSchedule::Cyclical { cycles: 4 };
        let total = 800;
        assert_eq!(s.beta_at(1.0, 0, total), 0.0);
        assert_eq!(s.beta_at(1.0, 50, total), 0.5);
        assert_eq!(s.beta_at(1.0, 100, total), 1.0);
        assert_eq!(s.beta_at(1.0, 150, total), 1.0);
        assert_eq!(s.beta_at(1.0, 199, total), 1.0);
        assert_eq!(s.beta_at(1.0, 200, total), 0.0);
        assert_eq!(s.beta_at(1.0, 250, total), 0.5);
        assert_eq!(s.beta_at(1.0, 675, total), 0.75);
        assert_eq!(s.beta_at(1.0, total - 1, total), 1.0);
        assert_eq!(s.beta_at(4.0, 225, total), 1.0);
    }

    #[test]
    fn cyclical_with_fractional_cycle_length() {
        // T = 10, M = 4: cycles of 2.5 steps, restarting at t = 0, 2.5, 5, 7.5.
        let s = KlSchedule::Cyclical { cycles: 4 };
        assert_eq!(s.beta_at(1.0, 0, 10), 0.0);
        assert_eq!(s.beta_at(1.0, 1, 10), 0.8);
        assert_eq!(s.beta_at(1.0, 2, 10), 1.0);
        assert_eq!(s.beta_at(1.0, 3, 10), 0.4);
        assert_eq!(s.beta_at(1.0, 5, 10), 0.0);
        assert_eq!(s.beta_at(1.0, 9, 10), 1.0);
    }

    #[test]
    fn one_cycle_is_a_warmup_over_half_the_run() {
        let cyc = KlSchedule::Cyclical { cycles: 1 };
        let warm = KlSchedule::Warmup { steps: 500 };
        for t in [0, 100, 250, 499, 500, 999] {
            assert_eq!(cyc.beta_at(1.0, t, 1000), warm.beta_at(1.0, t, 1000), "t = {t}");
        }
    }

    #[test]
    fn zero_beta_stays_zero() {
        for s in [
            KlSchedule::Constant,
            KlSchedule::Warmup { steps: 10 },
            KlSchedule::Warmup { steps: 0 },
            KlSchedule::Cyclical { cycles: 3 },
        ] {
            for t in [0, 5, 10, 29, 30] {
                assert_eq!(s.beta_at(0.0, t, 30), 0.0, "{s} at t = {t}");
            }
        }
    }

    #[test]
    fn cyclical_over_empty_run_is_beta() {
        assert_eq!(KlSchedule::Cyclical { cycles: 2 }.beta_at(0.3, 0, 0), 0.3);
    }

    #[test]
    fn parse_builds_each_schedule() {
        assert_eq!(KlSchedule::parse(None, None).unwrap(), KlSchedule::Constant);
        assert_eq!(KlSchedule::parse(Some(0), None).unwrap(), KlSchedule::Constant);
        assert_eq!(
            KlSchedule::parse(Some(1000), None).unwrap(),
            KlSchedule::Warmup { steps: 1000 }
        );
        assert_eq!(
            KlSchedule::parse(None, Some(4)).unwrap(),
            KlSchedule::Cyclical { cycles: 4 }
        );
    }

    #[test]
    fn parse_rejects_both_options_and_zero_cycles() {
        let msg = config_message(KlSchedule::parse(Some(100), Some(4)));
        assert!(msg.contains("--kl-warmup and --kl-cycles are exclusive"), "{msg}");
        let msg = config_message(KlSchedule::parse(None, Some(0)));
        assert!(msg.contains("--kl-cycles"), "{msg}");
    }

    #[test]
    fn validate_rejects_more_cycles_than_steps() {
        assert!(KlSchedule::Cyclical { cycles: 10 }.validate(10).is_ok());
        let msg = config_message(KlSchedule::Cyclical { cycles: 11 }.validate(10));
        assert!(
            msg.contains("11") && msg.contains("10") && msg.contains("TrainConfig::kl_schedule"),
            "{msg}"
        );
        let msg = config_message(KlSchedule::Cyclical { cycles: 0 }.validate(10));
        assert!(msg.contains("TrainConfig::kl_schedule"), "{msg}");
        assert!(KlSchedule::Constant.validate(0).is_ok());
        assert!(KlSchedule::Warmup { steps: 1000 }.validate(10).is_ok());
    }

    #[test]
    fn display_is_short_form() {
        assert_eq!(KlSchedule::Constant.to_string(), "constant");
        assert_eq!(KlSchedule::Warmup { steps: 1000 }.to_string(), "warmup(1000)");
        assert_eq!(KlSchedule::Cyclical { cycles: 4 }.to_string(), "cyclical(4)");
        assert_eq!(KlSchedule::default(), KlSchedule::Constant);
    }
}
