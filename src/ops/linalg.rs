//! Small dense linear algebra in f64: the symmetric eigenproblem (Jacobi rotations),
//! for EigenCAM's projections and the pseudo-inverse; and the surrogate models LIME and
//! KernelSHAP fit — weighted least squares (minimum-norm, as `scipy.linalg.lstsq` gives
//! it to scikit-learn's LinearRegression) and the weighted Lasso (coordinate descent,
//! scikit-learn's objective and preprocessing).

/// MᵀM (`columns`: cols × cols) or MMᵀ (rows × rows) of the row-major rows × cols
/// matrix `m`.
pub fn gram(m: &[f64], rows: usize, cols: usize, columns: bool) -> Vec<f64> {
    let n = if columns { cols } else { rows };
    let mut g = vec![0.0f64; n * n];
    for i in 0..n {
        for j in i..n {
            let s: f64 = if columns {
                (0..rows).map(|p| m[p * cols + i] * m[p * cols + j]).sum()
            } else {
                (0..cols).map(|c| m[i * cols + c] * m[j * cols + c]).sum()
            };
            g[i * n + j] = s;
            g[j * n + i] = s;
        }
    }
    g
}

/// The eigenvalues of a symmetric n × n matrix and its unit eigenvectors (column k of
/// the row-major result belongs to value k), by cyclic Jacobi rotations: exact to
/// rounding, whatever the gaps between eigenvalues.
pub fn symmetric_eigen(mut a: Vec<f64>, n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut v = vec![0.0f64; n * n];
    for i in 0..n {
        v[i * n + i] = 1.0;
    }
    for _sweep in 0..100 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i * n + j] * a[i * n + j])
            .sum();
        let scale: f64 = (0..n)
            .map(|i| a[i * n + i] * a[i * n + i])
            .sum::<f64>()
            .max(f64::MIN_POSITIVE);
        if off <= 1e-30 * scale {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[p * n + q];
                if apq == 0.0 {
                    continue;
                }
                let theta = (a[q * n + q] - a[p * n + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let (akp, akq) = (a[k * n + p], a[k * n + q]);
                    a[k * n + p] = c * akp - s * akq;
                    a[k * n + q] = s * akp + c * akq;
                }
                for k in 0..n {
                    let (apk, aqk) = (a[p * n + k], a[q * n + k]);
                    a[p * n + k] = c * apk - s * aqk;
                    a[q * n + k] = s * apk + c * aqk;
                }
                for k in 0..n {
                    let (vkp, vkq) = (v[k * n + p], v[k * n + q]);
                    v[k * n + p] = c * vkp - s * vkq;
                    v[k * n + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    ((0..n).map(|i| a[i * n + i]).collect(), v)
}

/// The largest eigenvalue of a symmetric matrix and its unit eigenvector.
pub fn top_eigen(a: Vec<f64>, n: usize) -> (f64, Vec<f64>) {
    let (values, vectors) = symmetric_eigen(a, n);
    let top = (0..n).max_by(|&i, &j| values[i].total_cmp(&values[j])).unwrap_or(0);
    let vector = (0..n)
        .map(|k| vectors.get(k * n + top).copied().unwrap_or(0.0))
        .collect();
    (values.get(top).copied().unwrap_or(0.0), vector)
}

/// Singular values below this fraction of the largest count as zero in the
/// pseudo-inverse (through the Gram matrix, whose rounding is ~1e-16 of its largest
/// eigenvalue, so not much lower).
const RCOND: f64 = 1e-7;

/// The minimum-norm solution of min ‖A·w − b‖ (A rows × cols, row-major): pinv(A)·b,
/// through the eigenvectors of the smaller Gram matrix.
pub fn min_norm_least_squares(a: &[f64], b: &[f64], rows: usize, cols: usize) -> Vec<f64> {
    let columns = cols <= rows;
    let n = if columns { cols } else { rows };
    let (values, vectors) = symmetric_eigen(gram(a, rows, cols, columns), n);
    let largest = values.iter().copied().fold(0.0f64, f64::max);
    let floor = largest * RCOND * RCOND;
    // With AᵀA = V Λ Vᵀ: w = V Λ⁺ Vᵀ Aᵀb; with AAᵀ = U Λ Uᵀ: w = Aᵀ U Λ⁺ Uᵀ b.
    let rhs: Vec<f64> = if columns {
        (0..cols)
            .map(|j| (0..rows).map(|r| a[r * cols + j] * b[r]).sum())
            .collect()
    } else {
        b.to_vec()
    };
    let mut solved = vec![0.0f64; n];
    for k in 0..n {
        if values[k] <= floor || values[k] <= 0.0 {
            continue;
        }
        let along: f64 = (0..n).map(|i| vectors[i * n + k] * rhs[i]).sum::<f64>() / values[k];
        for i in 0..n {
            solved[i] += vectors[i * n + k] * along;
        }
    }
    if columns {
        solved
    } else {
        (0..cols)
            .map(|j| (0..rows).map(|r| a[r * cols + j] * solved[r]).sum())
            .collect()
    }
}

/// A linear model fitted to weighted samples: coefficients and intercept.
#[derive(Clone, Debug, PartialEq)]
pub struct Linear {
    pub coef: Vec<f64>,
    pub intercept: f64,
}

/// Centres X and y on their weighted means and scales each row by √(weight), as
/// scikit-learn does before fitting with an intercept and sample weights (the weights
/// first rescaled to sum to the number of samples). Returns the centred rows, targets
/// and the means.
fn weighted_centre(x: &[f64], y: &[f64], w: &[f64], cols: usize) -> (Vec<f64>, Vec<f64>, Vec<f64>, f64) {
    let rows = y.len();
    let total: f64 = w.iter().sum();
    let w: Vec<f64> = w.iter().map(|v| v * rows as f64 / total).collect();
    let sum_w: f64 = w.iter().sum();
    let x_mean: Vec<f64> = (0..cols)
        .map(|j| (0..rows).map(|r| w[r] * x[r * cols + j]).sum::<f64>() / sum_w)
        .collect();
    let y_mean = (0..rows).map(|r| w[r] * y[r]).sum::<f64>() / sum_w;
    let mut xc = vec![0.0f64; rows * cols];
    let mut yc = vec![0.0f64; rows];
    for r in 0..rows {
        let s = w[r].sqrt();
        for j in 0..cols {
            xc[r * cols + j] = (x[r * cols + j] - x_mean[j]) * s;
        }
        yc[r] = (y[r] - y_mean) * s;
    }
    (xc, yc, x_mean, y_mean)
}

fn with_intercept(coef: Vec<f64>, x_mean: &[f64], y_mean: f64) -> Linear {
    let intercept = y_mean - coef.iter().zip(x_mean).map(|(c, m)| c * m).sum::<f64>();
    Linear { coef, intercept }
}

/// scikit-learn's `LinearRegression().fit(x, y, sample_weight = w)`: weighted least
/// squares with an intercept; the minimum-norm coefficients when they are not unique.
pub fn least_squares(x: &[f64], y: &[f64], w: &[f64], cols: usize) -> Linear {
    let (xc, yc, x_mean, y_mean) = weighted_centre(x, y, w, cols);
    let coef = min_norm_least_squares(&xc, &yc, y.len(), cols);
    with_intercept(coef, &x_mean, y_mean)
}

/// scikit-learn's `Lasso(alpha).fit(x, y, sample_weight = w)`: minimises
/// (1 / 2n)·Σᵢ wᵢ(yᵢ − xᵢ·c − c₀)² + α‖c‖₁ (weights rescaled to sum to n) by cyclic
/// coordinate descent from zero, run to convergence (a duality gap below 1e-10·‖y‖², at
/// most 10 000 sweeps, where scikit-learn stops at its `tol` of 1e-4 or 1000 sweeps).
/// With α = 0 it is least squares, solved directly.
pub fn lasso(x: &[f64], y: &[f64], w: &[f64], cols: usize, alpha: f64) -> Linear {
    if alpha == 0.0 {
        return least_squares(x, y, w, cols);
    }
    let rows = y.len();
    let (xc, yc, x_mean, y_mean) = weighted_centre(x, y, w, cols);
    let l1 = alpha * rows as f64;
    let norms: Vec<f64> = (0..cols)
        .map(|j| (0..rows).map(|r| xc[r * cols + j].powi(2)).sum())
        .collect();
    let mut coef = vec![0.0f64; cols];
    let mut residual = yc.clone();
    let y_norm: f64 = yc.iter().map(|v| v * v).sum();
    let tolerance = 1e-10 * y_norm.max(f64::MIN_POSITIVE);
    for _sweep in 0..10_000 {
        let mut largest_step = 0.0f64;
        let mut largest_coef = 0.0f64;
        for j in 0..cols {
            if norms[j] == 0.0 {
                continue;
            }
            let old = coef[j];
            let rho: f64 = (0..rows).map(|r| xc[r * cols + j] * residual[r]).sum::<f64>() + old * norms[j];
            let new = rho.signum() * (rho.abs() - l1).max(0.0) / norms[j];
            if new != old {
                for r in 0..rows {
                    residual[r] -= xc[r * cols + j] * (new - old);
                }
                coef[j] = new;
            }
            largest_step = largest_step.max((new - old).abs());
            largest_coef = largest_coef.max(new.abs());
        }
        if largest_coef == 0.0 || largest_step <= 1e-12 * largest_coef {
            // The duality gap (scikit-learn's criterion) confirms the optimum.
            let dual_norm = (0..cols)
                .map(|j| (0..rows).map(|r| xc[r * cols + j] * residual[r]).sum::<f64>().abs())
                .fold(0.0f64, f64::max);
            let r_norm: f64 = residual.iter().map(|v| v * v).sum();
            let scale = if dual_norm > l1 { l1 / dual_norm } else { 1.0 };
            let ry: f64 = residual.iter().zip(&yc).map(|(r, y)| r * y).sum();
            let l1_norm: f64 = coef.iter().map(|c| c.abs()).sum();
            let gap = 0.5 * r_norm * (1.0 + scale * scale) + l1 * l1_norm - scale * ry;
            if gap <= tolerance {
                break;
            }
        }
    }
    with_intercept(coef, &x_mean, y_mean)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jacobi_finds_the_top_eigenpair() {
        // [[2, 1], [1, 2]]: eigenvalues 3 (1, 1)/√2 and 1.
        let (lambda, v) = top_eigen(vec![2.0, 1.0, 1.0, 2.0], 2);
        assert!((lambda - 3.0).abs() < 1e-12);
        assert!((v[0].abs() - std::f64::consts::FRAC_1_SQRT_2).abs() < 1e-12);
        assert!((v[0] - v[1]).abs() < 1e-12);
    }

    #[test]
    fn least_squares_is_minimum_norm() {
        // One equation, two unknowns: w₀ + w₁ = 2 → the minimum-norm (1, 1), both routes.
        assert_eq!(
            min_norm_least_squares(&[1.0, 1.0], &[2.0], 1, 2)
                .iter()
                .map(|v| (v * 1e9).round())
                .collect::<Vec<_>>(),
            vec![1e9, 1e9]
        );
        // Overdetermined and exact: y = 3x₀ − x₁ + 0.5.
        let x = [0.0, 0.0, 1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 2.0, 1.0];
        let y: Vec<f64> = x.chunks(2).map(|r| 3.0 * r[0] - r[1] + 0.5).collect();
        let fit = least_squares(&x, &y, &[1.0; 5], 2);
        assert!(
            (fit.coef[0] - 3.0).abs() < 1e-9 && (fit.coef[1] + 1.0).abs() < 1e-9 && (fit.intercept - 0.5).abs() < 1e-9,
            "{fit:?}"
        );
    }

    #[test]
    fn lasso_soft_thresholds_an_orthogonal_design() {
        // Orthogonal centred columns: each coefficient is the least-squares one shrunk by
        // n·α / ‖xⱼ‖².
        let x = [1.0, 1.0, 1.0, -1.0, -1.0, 1.0, -1.0, -1.0];
        let y: Vec<f64> = x.chunks(2).map(|r| 2.0 * r[0] + 0.1 * r[1]).collect();
        let fit = lasso(&x, &y, &[1.0; 4], 2, 0.5);
        assert!((fit.coef[0] - 1.5).abs() < 1e-9 && fit.coef[1] == 0.0, "{fit:?}");
    }
}
