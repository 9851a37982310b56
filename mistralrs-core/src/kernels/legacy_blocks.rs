//! The block formats of llama.cpp's "legacy" types (Q4_0, Q4_1, Q5_0, Q5_1,
//! Q8_0; 32 weights a block) and of the Q8 activation blocks they are
//! multiplied with: what both the row kernels (`legacy_quant.rs`) and the
//! panel kernels (`legacy_panels.rs`) read.

pub(crate) const QK: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Kind {
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
}

impl Kind {
    pub(crate) fn block_bytes(self) -> usize {
        match self {
            Kind::Q4_0 => 18,
            Kind::Q4_1 => 20,
            Kind::Q5_0 => 22,
            Kind::Q5_1 => 24,
            Kind::Q8_0 => 34,
        }
    }

    /// Activations as Q8_1 (with the block sum) for the types with a minimum.
    pub(crate) fn with_sum(self) -> bool {
        matches!(self, Kind::Q4_1 | Kind::Q5_1)
    }

    /// What the unsigned quants are offset by (their zero point), if any.
    pub(crate) fn offset(self) -> i32 {
        match self {
            Kind::Q4_0 => 8,
            Kind::Q5_0 => 16,
            _ => 0,
        }
    }
}

/// One activation block quantized to 8 bits: `x ≈ d * qs`, `s = d * Σ qs`
/// (Q8_1 only), `bias = -offset * Σ qs` (the panel kernels' start value).
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub(crate) struct Q8Block {
    pub d: f32,
    pub s: f32,
    pub bias: i32,
    pub qs: [i8; QK],
}

/// 32 bits -> 32 bytes, 0xFF where the bit is set (byte i for bit i): Q5's
/// fifth bits as a byte mask.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn bytes_from_bits(bits: u32) -> std::arch::x86_64::__m256i {
    use std::arch::x86_64::*;
    let shuf = _mm256_setr_epi64x(0, 0x0101_0101_0101_0101, 0x0202_0202_0202_0202, 0x0303_0303_0303_0303);
    let x = _mm256_shuffle_epi8(_mm256_set1_epi32(bits as i32), shuf);
    let mask = _mm256_set1_epi64x(0x7fbf_dfef_f7fb_fdfeu64 as i64);
    let x = _mm256_or_si256(x, mask);
    _mm256_cmpeq_epi8(x, _mm256_set1_epi64x(-1))
}
