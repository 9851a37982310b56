//! How cached keys and values are stored: as floats of some width, or as
//! llama.cpp's Q8_0 blocks (32 values as one f16 scale and 32 signed bytes,
//! 34 bytes where f32 takes 128), as llama.cpp's `--cache-type-k/-v` offer.
//! Decode at long contexts reads the whole history per token, so the bytes
//! per cached token are its speed as much as its memory.

use candle_core::DType;
use half::f16;

/// Values per Q8_0 block.
pub const Q8_0_VALUES: usize = 32;
/// Bytes per Q8_0 block: the f16 scale, then the 32 quants.
pub const Q8_0_BYTES: usize = 34;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvDtype {
    F32,
    F16,
    BF16,
    Q8_0,
}

impl KvDtype {
    /// `"f32"`, `"f16"`, `"bf16"` or `"q8_0"` (`"auto"` is the caller's to resolve).
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "f32" => Some(Self::F32),
            "f16" => Some(Self::F16),
            "bf16" => Some(Self::BF16),
            "q8_0" => Some(Self::Q8_0),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::BF16 => "bf16",
            Self::Q8_0 => "q8_0",
        }
    }

    /// The float type of the same width, for a compute dtype (what `auto`
    /// keeps where no measurement says otherwise).
    pub fn of(dtype: DType) -> Self {
        match dtype {
            DType::F16 => Self::F16,
            DType::BF16 => Self::BF16,
            _ => Self::F32,
        }
    }

    /// The dtype of the pool's tensors: the floats themselves, or the bytes of Q8_0 blocks.
    pub fn storage(self) -> DType {
        match self {
            Self::F32 => DType::F32,
            Self::F16 => DType::F16,
            Self::BF16 => DType::BF16,
            Self::Q8_0 => DType::U8,
        }
    }

    /// Elements of the storage dtype that one head's `head_dim` values take.
    pub fn units(self, head_dim: usize) -> usize {
        match self {
            Self::Q8_0 => head_dim / Q8_0_VALUES * Q8_0_BYTES,
            _ => head_dim,
        }
    }

    /// Bytes one head's `head_dim` values take.
    pub fn head_bytes(self, head_dim: usize) -> usize {
        self.units(head_dim) * self.storage().size_in_bytes()
    }

    /// Why this type cannot hold heads of `head_dim` values, if it cannot.
    pub fn check(self, head_dim: usize) -> Result<(), String> {
        if self == Self::Q8_0 && !head_dim.is_multiple_of(Q8_0_VALUES) {
            return Err(format!(
                "kv_cache_dtype=\"q8_0\" stores blocks of {Q8_0_VALUES} values, and this model's head size {head_dim} is not a multiple of {Q8_0_VALUES}; use \"f16\" or \"f32\""
            ));
        }
        Ok(())
    }
}

/// Quantizes `x` (a multiple of 32 values) into Q8_0 blocks in `out`, as
/// llama.cpp's x86 `quantize_row_q8_0`: scale amax / 127 (stored as f16),
/// quants x · 127 / amax rounded half to even.
pub fn quantize_q8_0(x: &[f32], out: &mut [u8]) {
    debug_assert!(x.len().is_multiple_of(Q8_0_VALUES) && out.len() == x.len() / Q8_0_VALUES * Q8_0_BYTES);
    for (xs, block) in x.chunks_exact(Q8_0_VALUES).zip(out.chunks_exact_mut(Q8_0_BYTES)) {
        let amax = xs.iter().fold(0f32, |a, v| a.max(v.abs()));
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        block[..2].copy_from_slice(&f16::from_f32(amax / 127.0).to_le_bytes());
        for (q, v) in block[2..].iter_mut().zip(xs) {
            *q = (v * id).round_ties_even() as i8 as u8;
        }
    }
}

/// The values of Q8_0 blocks `q` into `out` (32 per block).
pub fn dequantize_q8_0(q: &[u8], out: &mut [f32]) {
    debug_assert!(q.len().is_multiple_of(Q8_0_BYTES) && out.len() == q.len() / Q8_0_BYTES * Q8_0_VALUES);
    for (block, xs) in q.chunks_exact(Q8_0_BYTES).zip(out.chunks_exact_mut(Q8_0_VALUES)) {
        let d = f16::from_le_bytes([block[0], block[1]]).to_f32();
        for (x, &b) in xs.iter_mut().zip(&block[2..]) {
            *x = d * (b as i8) as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q8_0_blocks_round_trip_within_half_a_step() {
        let x: Vec<f32> = (0..64).map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0).collect();
        let mut q = vec![0u8; 2 * Q8_0_BYTES];
        quantize_q8_0(&x, &mut q);
        let mut y = vec![0f32; 64];
        dequantize_q8_0(&q, &mut y);
        for (b, (xs, ys)) in x.chunks(32).zip(y.chunks(32)).enumerate() {
            let amax = xs.iter().fold(0f32, |a, v| a.max(v.abs()));
            let step = amax / 127.0;
            // The stored f16 scale rounds by up to 2^-11 of itself, times 127 at the extremes.
            let bound = step / 2.0 + amax * 2f32.powi(-11) * 1.01;
            for (a, b2) in xs.iter().zip(ys) {
                assert!((a - b2).abs() <= bound, "block {b}: {a} vs {b2}");
            }
        }
        // The largest value maps to ±127 and an all-zero block stays zero.
        assert!(q[2..Q8_0_BYTES].iter().any(|&b| b as i8 == 127 || b as i8 == -127));
        let mut z = vec![0u8; Q8_0_BYTES];
        quantize_q8_0(&[0.0; 32], &mut z);
        assert!(z.iter().all(|&b| b == 0));
        assert_eq!(KvDtype::Q8_0.units(64), 68);
        assert!(KvDtype::Q8_0.check(48).is_err() && KvDtype::F16.check(48).is_ok());
    }
}
