//! `Lanes`: 16 f32 lanes as one value, as a 512-bit AVX-512 register, a pair of AVX2
//! registers, four NEON registers, or a plain array. Kernels that are not quantized matmuls (attention, and the
//! elementwise activations) are written once over it and built for each level inside a
//! `#[target_feature]` function. Every operation is lane-wise IEEE arithmetic (`fma` is one
//! rounding), so all three give the same bits.

use half::f16;

/// 16 f32 lanes. Slices shorter than 16 panic (loads and stores check their length).
///
/// # Safety
/// Every method is `unsafe` for one reason: the x86 implementations use their CPU's
/// features (`__m512` needs AVX-512F; `Avx2x2` needs AVX2, FMA and F16C; `Neon4` needs NEON,
/// which every aarch64 has). Call them only from
/// code dispatched on `Level::is_supported` for those features; the portable array needs none.
pub trait Lanes: Copy {
    /// # Safety
    /// See the trait: the CPU must have the implementation's features.
    unsafe fn zero() -> Self;
    /// # Safety
    /// See the trait.
    unsafe fn splat(x: f32) -> Self;
    /// Loads 16 values from `p[..16]`.
    ///
    /// # Safety
    /// See the trait.
    unsafe fn load(p: &[f32]) -> Self;
    /// Loads 16 f16 values from `p[..16]`, widened exactly.
    ///
    /// # Safety
    /// See the trait.
    unsafe fn load_f16(p: &[f16]) -> Self;
    /// # Safety
    /// See the trait.
    unsafe fn store(self, p: &mut [f32]);
    /// `self + a·b` with one rounding.
    ///
    /// # Safety
    /// See the trait.
    unsafe fn fma(self, a: Self, b: Self) -> Self;
    /// # Safety
    /// See the trait.
    unsafe fn mul(self, b: Self) -> Self;
}

impl Lanes for [f32; 16] {
    #[inline(always)]
    unsafe fn zero() -> Self {
        [0.0; 16]
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> Self {
        [x; 16]
    }
    #[inline(always)]
    unsafe fn load(p: &[f32]) -> Self {
        p[..16].try_into().expect("16 lanes")
    }
    #[inline(always)]
    unsafe fn load_f16(p: &[f16]) -> Self {
        std::array::from_fn(|i| p[i].to_f32())
    }
    #[inline(always)]
    unsafe fn store(self, p: &mut [f32]) {
        p[..16].copy_from_slice(&self)
    }
    #[inline(always)]
    unsafe fn fma(self, a: Self, b: Self) -> Self {
        std::array::from_fn(|i| a[i].mul_add(b[i], self[i]))
    }
    #[inline(always)]
    unsafe fn mul(self, b: Self) -> Self {
        std::array::from_fn(|i| self[i] * b[i])
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::Lanes;
    use half::f16;
    use std::arch::x86_64::*;

    impl Lanes for __m512 {
        #[inline(always)]
        unsafe fn zero() -> Self {
            _mm512_setzero_ps()
        }
        #[inline(always)]
        unsafe fn splat(x: f32) -> Self {
            _mm512_set1_ps(x)
        }
        #[inline(always)]
        unsafe fn load(p: &[f32]) -> Self {
            assert!(p.len() >= 16);
            _mm512_loadu_ps(p.as_ptr())
        }
        #[inline(always)]
        unsafe fn load_f16(p: &[f16]) -> Self {
            assert!(p.len() >= 16);
            _mm512_cvtph_ps(_mm256_loadu_si256(p.as_ptr() as *const __m256i))
        }
        #[inline(always)]
        unsafe fn store(self, p: &mut [f32]) {
            assert!(p.len() >= 16);
            _mm512_storeu_ps(p.as_mut_ptr(), self)
        }
        #[inline(always)]
        unsafe fn fma(self, a: Self, b: Self) -> Self {
            _mm512_fmadd_ps(a, b, self)
        }
        #[inline(always)]
        unsafe fn mul(self, b: Self) -> Self {
            _mm512_mul_ps(self, b)
        }
    }

    /// Two AVX2 registers: lanes 0–7 and 8–15.
    #[derive(Clone, Copy)]
    pub struct Avx2x2(__m256, __m256);

    impl Lanes for Avx2x2 {
        #[inline(always)]
        unsafe fn zero() -> Self {
            Avx2x2(_mm256_setzero_ps(), _mm256_setzero_ps())
        }
        #[inline(always)]
        unsafe fn splat(x: f32) -> Self {
            Avx2x2(_mm256_set1_ps(x), _mm256_set1_ps(x))
        }
        #[inline(always)]
        unsafe fn load(p: &[f32]) -> Self {
            assert!(p.len() >= 16);
            Avx2x2(_mm256_loadu_ps(p.as_ptr()), _mm256_loadu_ps(p.as_ptr().add(8)))
        }
        #[inline(always)]
        unsafe fn load_f16(p: &[f16]) -> Self {
            assert!(p.len() >= 16);
            Avx2x2(
                _mm256_cvtph_ps(_mm_loadu_si128(p.as_ptr() as *const __m128i)),
                _mm256_cvtph_ps(_mm_loadu_si128(p.as_ptr().add(8) as *const __m128i)),
            )
        }
        #[inline(always)]
        unsafe fn store(self, p: &mut [f32]) {
            assert!(p.len() >= 16);
            _mm256_storeu_ps(p.as_mut_ptr(), self.0);
            _mm256_storeu_ps(p.as_mut_ptr().add(8), self.1)
        }
        #[inline(always)]
        unsafe fn fma(self, a: Self, b: Self) -> Self {
            Avx2x2(_mm256_fmadd_ps(a.0, b.0, self.0), _mm256_fmadd_ps(a.1, b.1, self.1))
        }
        #[inline(always)]
        unsafe fn mul(self, b: Self) -> Self {
            Avx2x2(_mm256_mul_ps(self.0, b.0), _mm256_mul_ps(self.1, b.1))
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub use x86::Avx2x2;

#[cfg(target_arch = "aarch64")]
mod aarch64 {
    use super::Lanes;
    use half::f16;
    use std::arch::aarch64::*;

    /// Four NEON registers: lanes 0–3, 4–7, 8–11, 12–15.
    #[derive(Clone, Copy)]
    pub struct Neon4([float32x4_t; 4]);

    impl Lanes for Neon4 {
        #[inline(always)]
        unsafe fn zero() -> Self {
            Neon4([vdupq_n_f32(0.0); 4])
        }
        #[inline(always)]
        unsafe fn splat(x: f32) -> Self {
            Neon4([vdupq_n_f32(x); 4])
        }
        #[inline(always)]
        unsafe fn load(p: &[f32]) -> Self {
            assert!(p.len() >= 16);
            Neon4(std::array::from_fn(|i| vld1q_f32(p.as_ptr().add(4 * i))))
        }
        #[inline(always)]
        unsafe fn load_f16(p: &[f16]) -> Self {
            assert!(p.len() >= 16);
            let p = p.as_ptr() as *const u16;
            Neon4(std::array::from_fn(|i| crate::layers::kernels::neon::load_f16x4(p.add(4 * i))))
        }
        #[inline(always)]
        unsafe fn store(self, p: &mut [f32]) {
            assert!(p.len() >= 16);
            for (i, v) in self.0.iter().enumerate() {
                vst1q_f32(p.as_mut_ptr().add(4 * i), *v);
            }
        }
        #[inline(always)]
        unsafe fn fma(self, a: Self, b: Self) -> Self {
            Neon4(std::array::from_fn(|i| vfmaq_f32(self.0[i], a.0[i], b.0[i])))
        }
        #[inline(always)]
        unsafe fn mul(self, b: Self) -> Self {
            Neon4(std::array::from_fn(|i| vmulq_f32(self.0[i], b.0[i])))
        }
    }
}

#[cfg(target_arch = "aarch64")]
pub use aarch64::Neon4;

/// An element type the KV cache can store: f16 (the default, as llama.cpp's) or f32.
pub trait KvElem: Copy + Send + Sync + 'static {
    fn from_f32(x: f32) -> Self;
    fn to_f32(self) -> f32;
    /// Loads 16 elements as f32 lanes.
    ///
    /// # Safety
    /// As `Lanes`: the CPU must have `L`'s features.
    unsafe fn load<L: Lanes>(p: &[Self]) -> L;
}

impl KvElem for f32 {
    #[inline(always)]
    fn from_f32(x: f32) -> Self {
        x
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
    #[inline(always)]
    unsafe fn load<L: Lanes>(p: &[Self]) -> L {
        L::load(p)
    }
}

impl KvElem for f16 {
    #[inline(always)]
    fn from_f32(x: f32) -> Self {
        f16::from_f32(x)
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    #[inline(always)]
    unsafe fn load<L: Lanes>(p: &[Self]) -> L {
        L::load_f16(p)
    }
}
