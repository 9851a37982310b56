//! The check llama.cpp runs on tensor data (`ggml_validate_row_data`): every
//! float of an F32/F16/BF16 tensor, and every scale of a quantized block, is
//! finite. A NaN scale turns its block, and then every activation it
//! touches, into NaN; without the check such a file loads and generates
//! garbage without a word. Quantized blocks are checked by their scales
//! only (the quants are small integers and cannot be non-finite).

use candle_core::quantized::GgmlDType;

fn f16_bad(b: &[u8]) -> bool {
    u16::from_le_bytes([b[0], b[1]]) & 0x7c00 == 0x7c00
}

fn bf16_bad(b: &[u8]) -> bool {
    u16::from_le_bytes([b[0], b[1]]) & 0x7f80 == 0x7f80
}

fn f32_bad(b: &[u8]) -> bool {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]]) & 0x7f80_0000 == 0x7f80_0000
}

/// Where a block of `dtype` keeps its scales: (byte offset, is f32) pairs.
fn scales(dtype: GgmlDType) -> &'static [(usize, bool)] {
    match dtype {
        GgmlDType::Q4_0 | GgmlDType::Q5_0 | GgmlDType::Q8_0 => &[(0, false)],
        GgmlDType::Q4_1 | GgmlDType::Q5_1 | GgmlDType::Q4K | GgmlDType::Q5K => &[(0, false), (2, false)],
        GgmlDType::Q8_1 => &[(0, false), (2, false)],
        GgmlDType::Q2K => &[(80, false), (82, false)],
        GgmlDType::Q3K => &[(108, false)],
        GgmlDType::Q6K => &[(208, false)],
        GgmlDType::Q8K => &[(0, true)],
        GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16 => &[],
    }
}

/// Ok if every value (or block scale) in `bytes`, tensor data of `dtype`,
/// is finite; otherwise which element or block is not.
pub fn check_finite(dtype: GgmlDType, bytes: &[u8]) -> Result<(), String> {
    let (width, bad): (usize, fn(&[u8]) -> bool) = match dtype {
        GgmlDType::F32 => (4, f32_bad),
        GgmlDType::F16 => (2, f16_bad),
        GgmlDType::BF16 => (2, bf16_bad),
        _ => (0, f16_bad),
    };
    if width > 0 {
        // A plain pass the compiler vectorizes; the position is looked up only on failure.
        let any = bytes.chunks_exact(width).fold(false, |acc, v| acc | bad(v));
        if any {
            let at = bytes.chunks_exact(width).position(bad).unwrap_or(0);
            return Err(format!("element {at} is not finite (NaN or infinite)"));
        }
        return Ok(());
    }
    let size = dtype.type_size();
    for (i, block) in bytes.chunks_exact(size).enumerate() {
        for &(at, is_f32) in scales(dtype) {
            let bad = if is_f32 { f32_bad(&block[at..at + 4]) } else { f16_bad(&block[at..at + 2]) };
            if bad {
                return Err(format!("the scale of block {i} is not finite (NaN or infinite)"));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::QTensor;
    use candle_core::{Device, Tensor};

    #[test]
    fn floats_and_block_scales_are_checked() {
        let mut f = [1.0f32, 2.0, 3.0].iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        assert!(check_finite(GgmlDType::F32, &f).is_ok());
        f[4..8].copy_from_slice(&f32::NAN.to_le_bytes());
        assert!(check_finite(GgmlDType::F32, &f).unwrap_err().contains("element 1"));
        assert!(check_finite(GgmlDType::F16, &half::f16::INFINITY.to_le_bytes()).is_err());
        assert!(check_finite(GgmlDType::BF16, &half::bf16::NAN.to_le_bytes()).is_err());
        assert!(check_finite(GgmlDType::BF16, &half::bf16::MAX.to_le_bytes()).is_ok());

        // Quantize real data, then poison one block's scale where each type keeps it.
        let x: Vec<f32> = (0..512).map(|i| (i as f32 * 0.37).sin()).collect();
        let t = Tensor::from_vec(x, (2, 256), &Device::Cpu).unwrap();
        for dtype in [GgmlDType::Q4_0, GgmlDType::Q8_0, GgmlDType::Q2K, GgmlDType::Q3K, GgmlDType::Q4K, GgmlDType::Q6K, GgmlDType::Q8K] {
            let q = QTensor::quantize(&t, dtype).unwrap();
            let mut data = q.data().unwrap().into_owned();
            assert!(check_finite(dtype, &data).is_ok(), "{dtype:?}");
            let (at, is_f32) = scales(dtype)[0];
            let block = dtype.type_size();
            if is_f32 {
                data[block + at..block + at + 4].copy_from_slice(&f32::INFINITY.to_le_bytes());
            } else {
                data[block + at..block + at + 2].copy_from_slice(&half::f16::NAN.to_le_bytes());
            }
            assert!(check_finite(dtype, &data).unwrap_err().contains("block 1"), "{dtype:?}");
        }
    }
}
