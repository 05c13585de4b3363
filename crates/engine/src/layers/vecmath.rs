//! Small vector kernels with a fixed reduction order: 16 independent lanes summed in a fixed
//! tree, so the compiler can vectorize them and the result never depends on the caller; and a
//! vectorizable `exp`. Rust never reassociates or contracts float arithmetic, so code written
//! lane by lane with `mul_add` gives the same bits at every vector width: a kernel's build
//! inside a `#[target_feature(enable = "avx512f")]` wrapper equals its AVX2 build.

const LANES: usize = 16;

/// Sums 16 lanes in a fixed tree (halves, then quarters, …).
#[inline(always)]
pub fn reduce(acc: [f32; LANES]) -> f32 {
    let mut a = acc;
    let mut w = LANES / 2;
    while w > 0 {
        for i in 0..w {
            a[i] += a[i + w];
        }
        w /= 2;
    }
    a[0]
}

/// Dot product of two equal-length slices.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let mut acc = [0f32; LANES];
    let ca = a.chunks_exact(LANES);
    let cb = b.chunks_exact(LANES);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..LANES {
            acc[i] += x[i] * y[i];
        }
    }
    for (i, (x, y)) in ra.iter().zip(rb).enumerate() {
        acc[i] += x * y;
    }
    reduce(acc)
}

/// Sum of squares.
#[inline]
pub fn sum_sq(a: &[f32]) -> f32 {
    dot(a, a)
}

/// `y += alpha * x`.
#[inline]
pub fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y += alpha * x;
    }
}

/// `x += y` elementwise.
#[inline]
pub fn add_assign(x: &mut [f32], y: &[f32]) {
    for (x, y) in x.iter_mut().zip(y) {
        *x += *y;
    }
}

/// e^x in f32 with Cephes' `expf` polynomial (within 2 ulp), written with `mul_add` and bit
/// operations only, so a loop of it vectorizes. Inputs are clamped to [-87.33, 88]: below,
/// the true result is under f32's smallest normal and this returns ~1.2e-38; NaN stays NaN.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    // Adding 1.5·2^23 rounds to an integer (half to even) and leaves it in the low mantissa
    // bits: n without a float-to-int conversion (whose saturating form does not vectorize).
    const MAGIC: f32 = 12_582_912.0;
    let x = x.clamp(-87.33, 88.0);
    let t = x * std::f32::consts::LOG2_E + MAGIC;
    let n = t - MAGIC;
    let ni = t.to_bits().wrapping_sub(MAGIC.to_bits());
    // x - n·ln 2 in two parts, so r is exact to f32 precision.
    let r = n.mul_add(-0.693_359_4, x);
    let r = n.mul_add(2.121_944_4e-4, r);
    let mut p = 1.987_569_1e-4_f32;
    p = p.mul_add(r, 1.398_199_9e-3);
    p = p.mul_add(r, 8.333_452e-3);
    p = p.mul_add(r, 4.166_579_6e-2);
    p = p.mul_add(r, 1.666_666_5e-1);
    p = p.mul_add(r, 0.5);
    let y = p.mul_add(r * r, r) + 1.0;
    y * f32::from_bits(ni.wrapping_add(127) << 23)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_matches_naive_sum() {
        let a: Vec<f32> = (0..37).map(|i| i as f32 * 0.5).collect();
        let b: Vec<f32> = (0..37).map(|i| 1.0 - i as f32 * 0.25).collect();
        let naive: f64 = a.iter().zip(&b).map(|(x, y)| (*x as f64) * (*y as f64)).sum();
        assert!((dot(&a, &b) as f64 - naive).abs() < 1e-3);
    }

    #[test]
    fn exp_is_within_two_ulp_of_f64() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let want = (x as f64).exp();
            let rel = ((exp(x) as f64) - want).abs() / want;
            worst = worst.max(rel);
            x += 0.0137;
        }
        assert!(worst < 2.5 * f32::EPSILON as f64, "worst relative error {worst:e}");
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(-1000.0) < 1.2e-38 && exp(-1000.0) > 0.0);
        assert!(exp(1000.0).is_finite());
        assert!(exp(f32::NAN).is_nan());
    }
}
