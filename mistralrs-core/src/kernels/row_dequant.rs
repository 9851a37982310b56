//! One row of a ggml block matrix, as a file stores it, to f32: the lookup
//! of an embedding table kept in its file's layout (`layers/embedding.rs`).
//! The arithmetic is candle's (ggml's reference dequantization), applied to
//! the stored bytes in place.

use candle_core::quantized::k_quants::{
    BlockQ2K, BlockQ3K, BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K, BlockQ5_0, BlockQ5_1, BlockQ6K, BlockQ8K, BlockQ8_0,
    BlockQ8_1, GgmlType,
};
use candle_core::quantized::GgmlDType;
use half::{bf16, f16};

/// `bytes` (whole blocks of `dtype`) dequantized into `out` (as many values
/// as the blocks hold).
pub fn dequantize_row(dtype: GgmlDType, bytes: &[u8], out: &mut [f32]) -> Result<(), String> {
    let values = bytes.len() / dtype.type_size() * dtype.block_size();
    if !bytes.len().is_multiple_of(dtype.type_size()) || values != out.len() {
        return Err(format!("{} bytes of {dtype:?} do not hold {} values", bytes.len(), out.len()));
    }
    match dtype {
        GgmlDType::F32 => out.iter_mut().zip(bytes.chunks_exact(4)).for_each(|(o, b)| *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        GgmlDType::F16 => out.iter_mut().zip(bytes.chunks_exact(2)).for_each(|(o, b)| *o = f16::from_le_bytes([b[0], b[1]]).to_f32()),
        GgmlDType::BF16 => out.iter_mut().zip(bytes.chunks_exact(2)).for_each(|(o, b)| *o = bf16::from_le_bytes([b[0], b[1]]).to_f32()),
        GgmlDType::Q4_0 => blocks::<BlockQ4_0>(bytes, out),
        GgmlDType::Q4_1 => blocks::<BlockQ4_1>(bytes, out),
        GgmlDType::Q5_0 => blocks::<BlockQ5_0>(bytes, out),
        GgmlDType::Q5_1 => blocks::<BlockQ5_1>(bytes, out),
        GgmlDType::Q8_0 => blocks::<BlockQ8_0>(bytes, out),
        GgmlDType::Q8_1 => blocks::<BlockQ8_1>(bytes, out),
        GgmlDType::Q2K => blocks::<BlockQ2K>(bytes, out),
        GgmlDType::Q3K => blocks::<BlockQ3K>(bytes, out),
        GgmlDType::Q4K => blocks::<BlockQ4K>(bytes, out),
        GgmlDType::Q5K => blocks::<BlockQ5K>(bytes, out),
        GgmlDType::Q6K => blocks::<BlockQ6K>(bytes, out),
        GgmlDType::Q8K => blocks::<BlockQ8K>(bytes, out),
    }
    Ok(())
}

/// candle's `to_float` over `bytes` seen as blocks `T`; bytes not aligned
/// for `T` (a file may place a tensor at any offset its alignment key
/// allows) go through an aligned copy, one block at a time.
fn blocks<T: GgmlType>(bytes: &[u8], out: &mut [f32]) {
    let size = std::mem::size_of::<T>();
    debug_assert_eq!(size, T::DTYPE.type_size());
    if (bytes.as_ptr() as usize).is_multiple_of(std::mem::align_of::<T>()) {
        // SAFETY: ggml blocks are `repr(C)` structs of integers, f16s and
        // byte arrays, valid for any bit pattern; `bytes` holds whole blocks
        // (checked by the caller) and is aligned for `T` (checked above).
        let xs = unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<T>(), bytes.len() / size) };
        T::to_float(xs, out);
        return;
    }
    for (b, o) in bytes.chunks_exact(size).zip(out.chunks_exact_mut(T::BLCK_SIZE)) {
        let mut block = std::mem::MaybeUninit::<T>::uninit();
        // SAFETY: as above; the copy fills every byte of the block.
        let block = unsafe {
            std::ptr::copy_nonoverlapping(b.as_ptr(), block.as_mut_ptr().cast::<u8>(), size);
            block.assume_init()
        };
        T::to_float(std::slice::from_ref(&block), o);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::QTensor;
    use candle_core::{Device, Tensor};

    /// Every type, aligned and not, against candle's own dequantization of
    /// the same blocks.
    #[test]
    fn rows_match_candle() {
        let cols = 512;
        let x: Vec<f32> = (0..2 * cols).map(|i| ((i * 37 % 101) as f32 - 50.0) / 17.0).collect();
        let t = Tensor::from_vec(x, (2, cols), &Device::Cpu).unwrap();
        for dtype in [
            GgmlDType::F32, GgmlDType::F16, GgmlDType::BF16, GgmlDType::Q4_0, GgmlDType::Q4_1, GgmlDType::Q5_0,
            GgmlDType::Q5_1, GgmlDType::Q8_0, GgmlDType::Q2K, GgmlDType::Q3K, GgmlDType::Q4K, GgmlDType::Q5K,
            GgmlDType::Q6K, GgmlDType::Q8K,
        ] {
            let q = QTensor::quantize(&t, dtype).unwrap();
            let want: Vec<f32> = q.dequantize(&Device::Cpu).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            let data = q.data().unwrap();
            for shift in [0usize, 1] {
                let mut buf = vec![0u8; data.len() + shift];
                buf[shift..].copy_from_slice(&data);
                let row_bytes = data.len() / 2;
                let mut got = vec![0f32; cols];
                dequantize_row(dtype, &buf[shift + row_bytes..], &mut got).unwrap();
                assert_eq!(got, want[cols..], "{dtype:?}, shifted by {shift}");
            }
        }
    }
}
