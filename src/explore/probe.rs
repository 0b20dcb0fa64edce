//! Linear probe: multinomial logistic regression from latent means to class labels.
//!
//! How linearly a VAE's latent space separates the classes it was never told about is a common
//! measure of representation quality. The probe is a plain softmax regression on standardised
//! features, fitted full-batch in `f64` with L-BFGS so the result depends only on the data and
//! the arguments — no learning rate to tune, no shuffling, identical on every run.

use crate::error::{Result, VaeError};

/// Most classes a probe fits: its weights are (dim + 1) × classes f64 values on the host.
pub const MAX_PROBE_CLASSES: usize = 65_536;

/// Rows per block of the loss/gradient reduction. Blocks are summed in a fixed order, so the
/// result is bit-identical however many threads evaluate them.
const BLOCK_ROWS: usize = 2048;
/// Correction pairs kept by L-BFGS; 10 is the customary choice and plenty for a convex problem.
const LBFGS_MEMORY: usize = 10;
/// Armijo sufficient-decrease constant of the backtracking line search.
const ARMIJO_C1: f64 = 1e-4;
/// Most step halvings tried before the line search gives up.
const MAX_BACKTRACKS: usize = 40;
/// Stop once the largest gradient component falls below this: far below any effect on accuracy.
const GRAD_TOL: f64 = 1e-7;

/// A fitted multinomial logistic-regression classifier over `dim`-dimensional inputs.
#[derive(Debug, Clone)]
pub struct LinearProbe {
    /// `(dim + 1) × classes`, row-major: row `j < dim` holds feature `j`'s weight for each class
    /// (on standardised features), row `dim` the biases.
    weights: Vec<f64>,
    dim: usize,
    classes: usize,
    /// Per-feature mean and standard deviation of the training inputs.
    mean: Vec<f64>,
    std: Vec<f64>,
    /// Training objective before the first and after each accepted L-BFGS step.
    history: Vec<f64>,
}

/// The regularised training objective on standardised inputs: mean softmax cross-entropy plus
/// `l2/2 · ‖W‖²` over the feature weights (biases are not penalised, so the penalty does not
/// pull predictions towards equal class frequencies).
pub(crate) struct Objective<'a> {
    /// `[n × dim]` standardised inputs.
    pub x: &'a [f64],
    pub labels: &'a [u32],
    pub dim: usize,
    pub classes: usize,
    pub l2: f64,
}

impl Objective<'_> {
    fn len(&self) -> usize {
        self.labels.len()
    }

    /// Summed cross-entropy and its gradient over rows `start..end`, accumulated into `grad`.
    fn block(&self, w: &[f64], start: usize, end: usize, grad: &mut [f64]) -> f64 {
        let (dim, c) = (self.dim, self.classes);
        let bias = &w[dim * c..];
        let mut z = vec![0.0f64; c];
        let mut loss = 0.0;
        for i in start..end {
            let x = &self.x[i * dim..(i + 1) * dim];
            z.copy_from_slice(bias);
            for (j, &xj) in x.iter().enumerate() {
                for (zk, &wk) in z.iter_mut().zip(&w[j * c..(j + 1) * c]) {
                    *zk += xj * wk;
                }
            }
            // Log-sum-exp shifted by the maximum so large logits cannot overflow exp.
            let m = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let lse = m + z.iter().map(|&v| (v - m).exp()).sum::<f64>().ln();
            let y = self.labels[i] as usize;
            loss += lse - z[y];
            // z becomes the residual softmax − one-hot, which is ∂loss/∂logits.
            for v in z.iter_mut() {
                *v = (*v - lse).exp();
            }
            z[y] -= 1.0;
            for (j, &xj) in x.iter().enumerate() {
                for (gk, &rk) in grad[j * c..(j + 1) * c].iter_mut().zip(&z) {
                    *gk += xj * rk;
                }
            }
            for (gk, &rk) in grad[dim * c..].iter_mut().zip(&z) {
                *gk += rk;
            }
        }
        loss
    }

    /// The objective at `w` (layout as [`LinearProbe`]'s weights); its gradient goes to `grad`.
    pub(crate) fn loss_grad(&self, w: &[f64], grad: &mut [f64]) -> f64 {
        let n = self.len();
        let size = w.len();
        let blocks = n.div_ceil(BLOCK_ROWS);
        let threads = std::thread::available_parallelism()
            .map(|t| t.get())
            .unwrap_or(1)
            .min(blocks)
            .max(1);
        let run = |range: std::ops::Range<usize>| -> Vec<(f64, Vec<f64>)> {
            range
                .map(|b| {
                    let mut g = vec![0.0; size];
                    let end = ((b + 1) * BLOCK_ROWS).min(n);
                    (self.block(w, b * BLOCK_ROWS, end, &mut g), g)
                })
                .collect()
        };
        let per_thread = blocks.div_ceil(threads);
        let parts: Vec<(f64, Vec<f64>)> = if threads == 1 {
            run(0..blocks)
        } else {
            std::thread::scope(|s| {
                let handles: Vec<_> = (0..threads)
                    .map(|t| {
                        let range = (t * per_thread).min(blocks)..((t + 1) * per_thread).min(blocks);
                        s.spawn(move || run(range))
                    })
                    .collect();
                handles
                    .into_iter()
                    .flat_map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
                    .collect()
            })
        };

        let scale = 1.0 / n as f64;
        grad.fill(0.0);
        let mut loss = 0.0;
        for (l, g) in &parts {
            loss += l;
            for (a, b) in grad.iter_mut().zip(g) {
                *a += b;
            }
        }
        loss *= scale;
        let features = self.dim * self.classes;
        for (i, (gi, &wi)) in grad.iter_mut().zip(w).enumerate() {
            *gi *= scale;
            if i < features {
                *gi += self.l2 * wi;
            }
        }
        loss + 0.5 * self.l2 * w[..features].iter().map(|v| v * v).sum::<f64>()
    }
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Minimises `obj` from `w` with L-BFGS and an Armijo backtracking line search, for at most
/// `iterations` steps. Returns the objective before the first and after each accepted step.
///
/// Armijo backtracking alone suffices here: the objective is convex, so every step keeps
/// `s·y ≥ 0` and the curvature pairs stay usable without a Wolfe search.
fn lbfgs(obj: &Objective, w: &mut [f64], iterations: usize, mut progress: impl FnMut(usize, usize)) -> Vec<f64> {
    let size = w.len();
    let mut g = vec![0.0; size];
    let mut f = obj.loss_grad(w, &mut g);
    let mut history = vec![f];
    let mut pairs: std::collections::VecDeque<(Vec<f64>, Vec<f64>, f64)> = Default::default();
    let (mut w_new, mut g_new, mut d) = (vec![0.0; size], vec![0.0; size], vec![0.0; size]);
    let mut alpha = [0.0; LBFGS_MEMORY];

    for it in 0..iterations {
        progress(it, iterations);
        if g.iter().all(|v| v.abs() <= GRAD_TOL) {
            break;
        }
        // Two-loop recursion: d = −H·g with H the L-BFGS inverse-Hessian estimate.
        d.iter_mut().zip(&g).for_each(|(di, gi)| *di = -gi);
        for (k, (s, y, rho)) in pairs.iter().enumerate().rev() {
            alpha[k] = rho * dot(s, &d);
            d.iter_mut().zip(y).for_each(|(di, yi)| *di -= alpha[k] * yi);
        }
        let first_step = match pairs.back() {
            // Scale by s·y / y·y, the usual estimate of the Hessian's inverse along y.
            Some((_, y, rho)) => {
                let gamma = 1.0 / (rho * dot(y, y));
                d.iter_mut().for_each(|di| *di *= gamma);
                1.0
            }
            // No curvature known yet: a unit-length steepest-descent step.
            None => 1.0 / dot(&g, &g).sqrt(),
        };
        for (k, (s, y, rho)) in pairs.iter().enumerate() {
            let beta = rho * dot(y, &d);
            d.iter_mut().zip(s).for_each(|(di, si)| *di += (alpha[k] - beta) * si);
        }
        let mut slope = dot(&g, &d);
        let mut step = first_step;
        if slope >= 0.0 {
            // Rounding spoiled the direction; restart from steepest descent.
            pairs.clear();
            d.iter_mut().zip(&g).for_each(|(di, gi)| *di = -gi);
            slope = -dot(&g, &g);
            step = 1.0 / (-slope).sqrt();
        }

        let mut accepted = None;
        for _ in 0..MAX_BACKTRACKS {
            w_new
                .iter_mut()
                .zip(w.iter().zip(&d))
                .for_each(|(wn, (wi, di))| *wn = wi + step * di);
            let f_new = obj.loss_grad(&w_new, &mut g_new);
            if f_new.is_finite() && f_new <= f + ARMIJO_C1 * step * slope {
                accepted = Some(f_new);
                break;
            }
            step *= 0.5;
        }
        let Some(f_new) = accepted else { break };

        let s: Vec<f64> = w_new.iter().zip(w.iter()).map(|(a, b)| a - b).collect();
        let y: Vec<f64> = g_new.iter().zip(&g).map(|(a, b)| a - b).collect();
        let sy = dot(&s, &y);
        if sy > 1e-12 * dot(&y, &y).max(f64::MIN_POSITIVE) {
            if pairs.len() == LBFGS_MEMORY {
                pairs.pop_front();
            }
            pairs.push_back((s, y, 1.0 / sy));
        }
        w.copy_from_slice(&w_new);
        std::mem::swap(&mut g, &mut g_new);
        let decrease = f - f_new;
        f = f_new;
        history.push(f);
        // A step that no longer changes the objective in its 14th digit: converged to rounding.
        if decrease <= 1e-14 * f.abs().max(1.0) {
            break;
        }
    }
    history
}

impl LinearProbe {
    /// Fits a probe to `x` (`[labels.len() × dim]`, row-major) with labels in `0..classes`.
    ///
    /// Features are standardised with the training mean and standard deviation (a constant
    /// feature keeps scale 1) so one L2 strength `l2` suits any latent scale; the objective is
    /// mean softmax cross-entropy plus `l2/2 · ‖W‖²` on the non-bias weights, minimised with
    /// L-BFGS for at most `iterations` steps (it stops earlier once converged; ~100 is ample).
    /// `l2 = 1e-4` is a good default; `l2 = 0` is allowed but the weights of perfectly separable
    /// data then grow without bound until `iterations` runs out.
    ///
    /// Size mismatches, no rows, `dim = 0` or a label `≥ classes` are [`VaeError::Shape`];
    /// `classes` outside `1..=`[`MAX_PROBE_CLASSES`], a negative or non-finite `l2`, or a non-finite input value
    /// are [`VaeError::Config`].
    pub fn fit(
        x: &[f32],
        dim: usize,
        labels: &[u32],
        classes: usize,
        l2: f64,
        iterations: usize,
    ) -> Result<LinearProbe> {
        Self::fit_with_progress(x, dim, labels, classes, l2, iterations, |_, _| {})
    }

    /// [`LinearProbe::fit`], calling `progress(iteration, iterations)` before each L-BFGS step
    /// (the fit may stop before the last).
    pub fn fit_with_progress(
        x: &[f32],
        dim: usize,
        labels: &[u32],
        classes: usize,
        l2: f64,
        iterations: usize,
        progress: impl FnMut(usize, usize),
    ) -> Result<LinearProbe> {
        if dim == 0 {
            return Err(VaeError::Shape(
                "a linear probe needs inputs of dimension at least 1".into(),
            ));
        }
        if labels.is_empty() {
            return Err(VaeError::Shape("a linear probe needs at least one training row".into()));
        }
        if labels.len().checked_mul(dim) != Some(x.len()) {
            return Err(VaeError::Shape(format!(
                "{} input values given for {} labels of dimension {dim}",
                x.len(),
                labels.len()
            )));
        }
        if !(1..=MAX_PROBE_CLASSES).contains(&classes) {
            return Err(VaeError::Config(format!(
                "a linear probe needs 1 to {MAX_PROBE_CLASSES} classes, not {classes}"
            )));
        }
        if !(l2.is_finite() && l2 >= 0.0) {
            return Err(VaeError::Config(format!(
                "the probe's L2 strength must be finite and ≥ 0, not {l2}"
            )));
        }
        if let Some(&bad) = labels.iter().find(|&&l| l as usize >= classes) {
            return Err(VaeError::Shape(format!(
                "label {bad} is out of range for {classes} classes"
            )));
        }
        if let Some(i) = x.iter().position(|v| !v.is_finite()) {
            return Err(VaeError::Config(format!(
                "probe input row {} feature {} is {}; the probe needs finite values",
                i / dim,
                i % dim,
                x[i]
            )));
        }

        let n = labels.len();
        let mut mean = vec![0.0f64; dim];
        for row in x.chunks_exact(dim) {
            mean.iter_mut().zip(row).for_each(|(m, &v)| *m += v as f64);
        }
        mean.iter_mut().for_each(|m| *m /= n as f64);
        let mut var = vec![0.0f64; dim];
        for row in x.chunks_exact(dim) {
            var.iter_mut()
                .zip(row.iter().zip(&mean))
                .for_each(|(s, (&v, m))| *s += (v as f64 - m).powi(2));
        }
        let std: Vec<f64> = var
            .iter()
            .zip(&mean)
            .map(|(&s, m)| {
                let sd = (s / n as f64).sqrt();
                // Spread below rounding level of the mean is no spread: keep such a feature at
                // scale 1 rather than blowing its noise up to unit variance.
                if sd > 0.0 && sd > 1e-12 * m.abs() {
                    sd
                } else {
                    1.0
                }
            })
            .collect();
        let xs: Vec<f64> = x
            .chunks_exact(dim)
            .flat_map(|row| {
                row.iter()
                    .zip(mean.iter().zip(&std))
                    .map(|(&v, (m, s))| (v as f64 - m) / s)
            })
            .collect();

        let obj = Objective {
            x: &xs,
            labels,
            dim,
            classes,
            l2,
        };
        let mut weights = vec![0.0f64; (dim + 1) * classes];
        let history = lbfgs(&obj, &mut weights, iterations, progress);
        Ok(LinearProbe {
            weights,
            dim,
            classes,
            mean,
            std,
            history,
        })
    }

    /// Input dimension.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Number of classes.
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// Training objective (regularised mean cross-entropy, nats) before the first L-BFGS step
    /// and after each accepted one; non-increasing. Its last value is the final training loss.
    pub fn loss_history(&self) -> &[f64] {
        &self.history
    }

    /// Most probable class of each row of `x` (`[n × dim]`); ties go to the lower class.
    ///
    /// # Panics
    /// If `x.len()` is not a multiple of `dim`.
    pub fn predict(&self, x: &[f32]) -> Vec<u32> {
        let (dim, c) = (self.dim, self.classes);
        assert!(
            x.len().is_multiple_of(dim),
            "probe input of {} values is not a whole number of rows of dimension {dim}",
            x.len()
        );
        let mut z = vec![0.0f64; c];
        x.chunks_exact(dim)
            .map(|row| {
                z.copy_from_slice(&self.weights[dim * c..]);
                for (j, &v) in row.iter().enumerate() {
                    let xj = (v as f64 - self.mean[j]) / self.std[j];
                    z.iter_mut()
                        .zip(&self.weights[j * c..(j + 1) * c])
                        .for_each(|(zk, wk)| *zk += xj * wk);
                }
                let mut best = 0;
                for k in 1..c {
                    if z[k] > z[best] {
                        best = k;
                    }
                }
                best as u32
            })
            .collect()
    }

    /// Fraction of rows of `x` whose predicted class equals `labels`; NaN when there are no
    /// rows, since no accuracy was measured.
    ///
    /// # Panics
    /// If `x` does not hold exactly `labels.len()` rows of `dim` values.
    pub fn accuracy(&self, x: &[f32], labels: &[u32]) -> f64 {
        assert_eq!(
            x.len(),
            labels.len() * self.dim,
            "probe accuracy: {} input values for {} labels of dimension {}",
            x.len(),
            labels.len(),
            self.dim
        );
        let correct = self.predict(x).iter().zip(labels).filter(|(p, l)| p == l).count();
        correct as f64 / labels.len() as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng;

    /// `per_class` points of each of `classes` isotropic Gaussian blobs (sd 1) in `dim`
    /// dimensions, class `k` centred at `spread·e_(k mod dim)` (negated for `k ≥ dim`), rows
    /// interleaved by class. Deterministic in `seed`.
    fn blobs(seed: u32, per_class: usize, classes: usize, dim: usize, spread: f32) -> (Vec<f32>, Vec<u32>) {
        let mut x = Vec::with_capacity(per_class * classes * dim);
        let mut labels = Vec::with_capacity(per_class * classes);
        let mut index = 0u32;
        for _ in 0..per_class {
            for k in 0..classes {
                for j in 0..dim {
                    let centre = if j == k % dim {
                        if k >= dim {
                            -spread
                        } else {
                            spread
                        }
                    } else {
                        0.0
                    };
                    x.push(centre + rng::normal(seed, 0, rng::STREAM_EVAL, index) as f32);
                    index += 1;
                }
                labels.push(k as u32);
            }
        }
        (x, labels)
    }

    #[test]
    fn separates_gaussian_blobs() {
        let (mut train, train_labels) = blobs(1, 300, 3, 4, 5.0);
        let (mut test, test_labels) = blobs(2, 300, 3, 4, 5.0);
        // A badly scaled, offset feature: standardisation must make it harmless.
        for row in train.chunks_exact_mut(4).chain(test.chunks_exact_mut(4)) {
            row[3] = 1000.0 + 250.0 * row[3];
        }
        let probe = LinearProbe::fit(&train, 4, &train_labels, 3, 1e-4, 100).unwrap();
        assert_eq!((probe.dim(), probe.classes()), (4, 3));
        let train_acc = probe.accuracy(&train, &train_labels);
        let test_acc = probe.accuracy(&test, &test_labels);
        assert!(train_acc > 0.95, "train accuracy {train_acc}");
        assert!(test_acc > 0.95, "test accuracy {test_acc}");
        assert_eq!(probe.predict(&test).len(), test_labels.len());
    }

    #[test]
    fn loss_decreases_monotonically() {
        let (x, labels) = blobs(3, 200, 5, 3, 1.5);
        let probe = LinearProbe::fit(&x, 3, &labels, 5, 1e-3, 50).unwrap();
        let h = probe.loss_history();
        assert!(h.len() > 3, "{h:?}");
        // Zero weights predict uniformly: the initial loss is ln(classes).
        assert!((h[0] - 5f64.ln()).abs() < 1e-12, "{}", h[0]);
        assert!(h.windows(2).all(|w| w[1] <= w[0]), "{h:?}");
        assert!(*h.last().unwrap() < 0.8 * h[0]);
        // More iterations never end higher.
        let short = LinearProbe::fit(&x, 3, &labels, 5, 1e-3, 2).unwrap();
        assert!(short.loss_history().last().unwrap() >= h.last().unwrap());
    }

    #[test]
    fn fit_is_deterministic() {
        let (x, labels) = blobs(4, 1500, 4, 3, 2.0);
        let a = LinearProbe::fit(&x, 3, &labels, 4, 1e-4, 30).unwrap();
        let b = LinearProbe::fit(&x, 3, &labels, 4, 1e-4, 30).unwrap();
        assert_eq!(a.weights, b.weights);
        assert_eq!(a.loss_history(), b.loss_history());
    }

    #[test]
    fn gradient_matches_central_differences() {
        let (dim, classes, n) = (3, 4, 7);
        let x: Vec<f64> = (0..n * dim).map(|i| rng::normal(9, 0, 0, i as u32)).collect();
        let labels = [0u32, 3, 1, 2, 2, 0, 3];
        let obj = Objective {
            x: &x,
            labels: &labels,
            dim,
            classes,
            l2: 0.3,
        };
        let w: Vec<f64> = (0..(dim + 1) * classes)
            .map(|i| rng::normal(9, 1, 0, i as u32))
            .collect();
        let mut grad = vec![0.0; w.len()];
        obj.loss_grad(&w, &mut grad);
        let mut scratch = vec![0.0; w.len()];
        let h = 1e-5;
        for i in 0..w.len() {
            let (mut wp, mut wm) = (w.clone(), w.clone());
            wp[i] += h;
            wm[i] -= h;
            let numeric = (obj.loss_grad(&wp, &mut scratch) - obj.loss_grad(&wm, &mut scratch)) / (2.0 * h);
            assert!(
                (numeric - grad[i]).abs() < 1e-8 * grad[i].abs().max(1.0),
                "component {i}: analytic {} numeric {numeric}",
                grad[i]
            );
        }
    }

    #[test]
    fn rejects_bad_input() {
        let x = [0.0f32, 1.0, 2.0, 3.0];
        let shape_cases: [(&[f32], usize, &[u32], usize); 4] = [
            (&x, 2, &[0], 2),    // 4 values for 1 row of 2
            (&x, 0, &[], 2),     // zero dimension
            (&[], 2, &[], 2),    // no rows
            (&x, 2, &[0, 2], 2), // label out of range
        ];
        for (x, dim, labels, classes) in shape_cases {
            let err = LinearProbe::fit(x, dim, labels, classes, 1e-4, 10).unwrap_err();
            assert!(matches!(err, VaeError::Shape(_)), "{err}");
        }
        let labels = [0u32, 1];
        for (classes, l2) in [(0, 1e-4), (MAX_PROBE_CLASSES + 1, 1e-4), (2, -1.0), (2, f64::NAN)] {
            let err = LinearProbe::fit(&x, 2, &labels, classes, l2, 10).unwrap_err();
            assert!(matches!(err, VaeError::Config(_)), "{err}");
        }
        let err = LinearProbe::fit(&[0.0, f32::NAN, 1.0, 1.0], 2, &labels, 2, 1e-4, 10).unwrap_err();
        assert!(matches!(err, VaeError::Config(_)), "{err}");
    }
}
