//! The records a training run writes as JSON: one [`EpochRecord`] per line of `metrics.jsonl`,
//! and the run's settings as one object of strings (`run.json`, [`settings_json`]). Numbers are
//! written with 6 decimals, as nats per example need no more; a value that is not finite is
//! written as `null`, never as a bare `NaN` or `inf`.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Result, VaeError};

/// One epoch's line of `metrics.jsonl` (nats per example; the losses are the β = 1 bound).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// The epoch, from 1.
    pub epoch: u64,
    /// Training −ELBO (or an autoencoder's loss; under `train_bound`, that bound) over the
    /// epoch, as trained.
    #[serde(with = "six")]
    pub train_loss: f64,
    /// Its reconstruction part (the mean NLL over the draws).
    #[serde(with = "six")]
    pub train_recon: f64,
    /// Its KL part (an autoencoder's or a VQ-VAE's penalties; under `train_bound`, the rest of
    /// the bound: train_loss − train_recon).
    #[serde(with = "six")]
    pub train_kl: f64,
    /// The bound trained when it is not the ELBO: `iwae:K`, the importance-weighted bound over
    /// K draws (absent: the ELBO).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_bound: Option<String>,
    /// The test set's −ELBO after the epoch.
    #[serde(with = "six")]
    pub test_loss: f64,
    /// Its reconstruction part.
    #[serde(with = "six")]
    pub test_recon: f64,
    /// Its KL part.
    #[serde(with = "six")]
    pub test_kl: f64,
    /// The KL weight at the epoch's last step.
    #[serde(with = "six")]
    pub beta: f64,
    /// What the loss bounds (see [`crate::model::VaeConfig::bound_on`]).
    pub bound_on: String,
    /// Training examples per second.
    #[serde(with = "six")]
    pub samples_per_sec: f64,
    /// Seconds since the run (or its resumption) started.
    #[serde(with = "six")]
    pub elapsed_s: f64,
    /// A hierarchical VAE's test KL split by stochastic layer, z₁ first (the last epoch).
    #[serde(default, skip_serializing_if = "Option::is_none", with = "six_list")]
    pub test_layer_kl: Option<Vec<f64>>,
    /// The importance-weighted estimate of the test −log p(x) (the last epoch, when asked).
    #[serde(default, skip_serializing_if = "Option::is_none", with = "six_option")]
    pub test_iw_nll: Option<f64>,
    /// Its number of importance samples.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iw_k: Option<usize>,
}

impl EpochRecord {
    /// The record as one line of JSON (no newline).
    pub fn to_line(&self) -> Result<String> {
        serde_json::to_string(self).map_err(|e| VaeError::Config(format!("writing a metrics record: {e}")))
    }

    /// Parses one line of `metrics.jsonl`.
    pub fn from_line(line: &str) -> Result<Self> {
        serde_json::from_str(line).map_err(|e| VaeError::Config(format!("a metrics line is not a record: {e}")))
    }
}

/// Settings as one JSON object of strings, in the order given (`run.json`).
pub fn settings_json(pairs: &[(String, String)]) -> Result<String> {
    struct Ordered<'a>(&'a [(String, String)]);
    impl Serialize for Ordered<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
            s.collect_map(self.0.iter().map(|(k, v)| (k, v)))
        }
    }
    serde_json::to_string(&Ordered(pairs)).map_err(|e| VaeError::Config(format!("writing settings: {e}")))
}

/// `v` as the nearest f64 to its rounding to `decimals` places (as JSON writes it, the same
/// digits as a fixed-point print), or None when it is not finite.
pub fn rounded(v: f64, decimals: usize) -> Option<f64> {
    v.is_finite().then(|| format!("{v:.decimals$}").parse().unwrap_or(v))
}

fn six_decimals(v: f64) -> Option<f64> {
    rounded(v, 6)
}

/// A number with 6 decimals, `null` when not finite (read back as NaN).
mod six {
    use super::*;

    pub fn serialize<S: Serializer>(v: &f64, s: S) -> std::result::Result<S::Ok, S::Error> {
        six_decimals(*v).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
        Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
    }
}

/// An optional number as [`six`].
mod six_option {
    use super::*;

    pub fn serialize<S: Serializer>(v: &Option<f64>, s: S) -> std::result::Result<S::Ok, S::Error> {
        v.and_then(six_decimals).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<f64>, D::Error> {
        Ok(Option::<Option<f64>>::deserialize(d)?.map(|v| v.unwrap_or(f64::NAN)))
    }
}

/// An optional list of numbers as [`six`].
mod six_list {
    use super::*;

    pub fn serialize<S: Serializer>(v: &Option<Vec<f64>>, s: S) -> std::result::Result<S::Ok, S::Error> {
        v.as_ref()
            .map(|v| v.iter().map(|&x| six_decimals(x)).collect::<Vec<_>>())
            .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<Vec<f64>>, D::Error> {
        Ok(Option::<Vec<Option<f64>>>::deserialize(d)?.map(|v| v.into_iter().map(|x| x.unwrap_or(f64::NAN)).collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> EpochRecord {
        EpochRecord {
            epoch: 2,
            train_loss: 217.691_562_4,
            train_recon: 211.099_017,
            train_kl: 6.592_545,
            train_bound: None,
            test_loss: 208.0,
            test_recon: f64::NAN,
            test_kl: f64::INFINITY,
            beta: 1.0,
            bound_on: "-log p(x)".into(),
            samples_per_sec: 12_839.123_456_7,
            elapsed_s: 4.2,
            test_layer_kl: None,
            test_iw_nll: None,
            iw_k: None,
        }
    }

    #[test]
    fn records_write_six_decimals_and_null_for_non_finite_values() {
        let line = record().to_line().unwrap();
        assert_eq!(
            line,
            r#"{"epoch":2,"train_loss":217.691562,"train_recon":211.099017,"train_kl":6.592545,"test_loss":208.0,"test_recon":null,"test_kl":null,"beta":1.0,"bound_on":"-log p(x)","samples_per_sec":12839.123457,"elapsed_s":4.2}"#
        );
        let back = EpochRecord::from_line(&line).unwrap();
        assert_eq!((back.epoch, back.train_loss), (2, 217.691562));
        assert!(back.test_recon.is_nan() && back.test_kl.is_nan());
        // The last epoch's extras, a non-finite one among them.
        let last = EpochRecord {
            test_layer_kl: Some(vec![14.761_234_9, f64::NAN]),
            test_iw_nll: Some(98.001),
            iw_k: Some(100),
            ..record()
        };
        let line = last.to_line().unwrap();
        assert!(
            line.ends_with(r#""test_layer_kl":[14.761235,null],"test_iw_nll":98.001,"iw_k":100}"#),
            "{line}"
        );
        assert_eq!(EpochRecord::from_line(&line).unwrap().iw_k, Some(100));
        // A run on the importance-weighted bound names it after the training terms.
        let iw = EpochRecord {
            train_bound: Some("iwae:5".into()),
            ..record()
        };
        let line = iw.to_line().unwrap();
        assert!(
            line.contains(r#""train_kl":6.592545,"train_bound":"iwae:5","test_loss""#),
            "{line}"
        );
        assert_eq!(
            EpochRecord::from_line(&line).unwrap().train_bound.as_deref(),
            Some("iwae:5")
        );
        assert!(EpochRecord::from_line("{\"epoch\":1}").is_err());
    }

    #[test]
    fn settings_keep_their_order_and_escape_strings() {
        let pairs = vec![
            ("z".to_string(), "last \"quoted\"".to_string()),
            ("a".to_string(), "line\nbreak".to_string()),
        ];
        assert_eq!(
            settings_json(&pairs).unwrap(),
            r#"{"z":"last \"quoted\"","a":"line\nbreak"}"#
        );
    }
}
