//! Linear probe heads for selection through a layer (THROUGH LAYER, i-Algebra's σ_l):
//! a ridge regression from a layer's activations to the full model's outputs (logits),
//! fitted in closed form — deterministic, so the same data always gives the same probe.

use rayon::prelude::*;

use crate::error::{Error, Result};

/// A fitted probe: `weight` (outputs × features, PyTorch's Linear layout) and `bias`.
#[derive(Clone, Debug)]
pub struct Probe {
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
}

/// Ridge strength relative to the mean activation energy: small enough to fit, large
/// enough to keep the system well conditioned when features outnumber inputs.
const RIDGE: f64 = 1e-3;

/// Fits `z ≈ W h + b` over `n` rows of `p` activations `h` and `k` outputs `z`.
pub fn fit(h: &[f32], n: usize, p: usize, z: &[f32], k: usize) -> Result<Probe> {
    if n == 0 {
        return Err(Error::value("a probe needs at least one input to fit on"));
    }
    let mean = |data: &[f32], width: usize| -> Vec<f64> {
        let mut m = vec![0.0f64; width];
        for row in data.chunks(width) {
            for (a, v) in m.iter_mut().zip(row) {
                *a += *v as f64;
            }
        }
        m.iter_mut().for_each(|a| *a /= n as f64);
        m
    };
    let (hm, zm) = (mean(h, p), mean(z, k));
    let hc: Vec<f64> = h.iter().enumerate().map(|(i, v)| *v as f64 - hm[i % p]).collect();
    let zc: Vec<f64> = z.iter().enumerate().map(|(i, v)| *v as f64 - zm[i % k]).collect();
    // W^T (p × k): the primal system when there are more inputs than features, else the dual.
    let wt: Vec<f64> = if n >= p {
        // (Hᵀ H + λ I) Wᵀ = Hᵀ Z
        let mut gram = vec![0.0f64; p * p];
        gram.par_chunks_mut(p).enumerate().for_each(|(a, out)| {
            for r in 0..n {
                let row = &hc[r * p..(r + 1) * p];
                let va = row[a];
                if va != 0.0 {
                    for (o, vb) in out.iter_mut().zip(row) {
                        *o += va * vb;
                    }
                }
            }
        });
        let rhs = transpose_times(&hc, n, p, &zc, k);
        solve_ridge(&mut gram, p, &rhs, k)?
    } else {
        // Wᵀ = Hᵀ (H Hᵀ + λ I)⁻¹ Z
        let mut gram = vec![0.0f64; n * n];
        gram.par_chunks_mut(n).enumerate().for_each(|(a, out)| {
            let ra = &hc[a * p..(a + 1) * p];
            for (b, o) in out.iter_mut().enumerate() {
                *o = ra.iter().zip(&hc[b * p..(b + 1) * p]).map(|(x, y)| x * y).sum();
            }
        });
        let alpha = solve_ridge(&mut gram, n, &zc, k)?;
        transpose_times(&hc, n, p, &alpha, k)
    };
    let mut weight = vec![0.0f32; k * p];
    let mut bias = vec![0.0f32; k];
    for c in 0..k {
        let mut b = zm[c];
        for a in 0..p {
            weight[c * p + a] = wt[a * k + c] as f32;
            b -= wt[a * k + c] * hm[a];
        }
        bias[c] = b as f32;
    }
    Ok(Probe { weight, bias })
}

/// Hᵀ M for H (n × p) and M (n × k), both row-major: a p × k matrix.
fn transpose_times(h: &[f64], n: usize, p: usize, m: &[f64], k: usize) -> Vec<f64> {
    let mut out = vec![0.0f64; p * k];
    for r in 0..n {
        for a in 0..p {
            let va = h[r * p + a];
            for c in 0..k {
                out[a * k + c] += va * m[r * k + c];
            }
        }
    }
    out
}

/// Solves (G + λ I) X = B for symmetric positive semi-definite G (m × m) by Cholesky.
fn solve_ridge(g: &mut [f64], m: usize, b: &[f64], k: usize) -> Result<Vec<f64>> {
    let trace: f64 = (0..m).map(|i| g[i * m + i]).sum();
    let lambda = RIDGE * (trace / m as f64).max(1e-12);
    for i in 0..m {
        g[i * m + i] += lambda;
    }
    // In place: the lower triangle becomes L with G = L Lᵀ.
    for j in 0..m {
        let mut d = g[j * m + j];
        for t in 0..j {
            d -= g[j * m + t] * g[j * m + t];
        }
        if d <= 0.0 || !d.is_finite() {
            return Err(Error::value(
                "the probe's system is singular: the layer's activations do not vary",
            ));
        }
        let d = d.sqrt();
        g[j * m + j] = d;
        for i in j + 1..m {
            let mut s = g[i * m + j];
            for t in 0..j {
                s -= g[i * m + t] * g[j * m + t];
            }
            g[i * m + j] = s / d;
        }
    }
    let mut x = b.to_vec();
    for c in 0..k {
        for i in 0..m {
            let mut s = x[i * k + c];
            for t in 0..i {
                s -= g[i * m + t] * x[t * k + c];
            }
            x[i * k + c] = s / g[i * m + i];
        }
        for i in (0..m).rev() {
            let mut s = x[i * k + c];
            for t in i + 1..m {
                s -= g[t * m + i] * x[t * k + c];
            }
            x[i * k + c] = s / g[i * m + i];
        }
    }
    Ok(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovers_a_linear_map_in_both_forms() {
        // z = 2 h0 − h1 + 3, exactly linear: the probe recovers it (up to the ridge).
        for (n, p) in [(40, 2), (3, 2)] {
            let mut h = Vec::new();
            let mut z = Vec::new();
            for i in 0..n {
                let (a, b) = ((i as f32 * 0.37).sin(), (i as f32 * 0.91).cos());
                h.extend([a, b]);
                z.push(2.0 * a - b + 3.0);
            }
            let probe = fit(&h, n, p, &z, 1).unwrap();
            for i in 0..n {
                let pred = probe.weight[0] * h[2 * i] + probe.weight[1] * h[2 * i + 1] + probe.bias[0];
                assert!((pred - z[i]).abs() < 0.05, "n={n}: {pred} vs {}", z[i]);
            }
        }
    }
}
