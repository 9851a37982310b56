//! Every weight type's quantization and products against f32, with the
//! error bounds and synthetic data of ggml's own `tests/test-quantize-fns.cpp`
//! (data `0.1 + 2·cos(i + offset)`, 4096 values; rmse / n below 0.002, 0.004
//! for Q3_K, 0.0075 for Q2_K; |dot − f32 dot| / n below 0.02, 0.04 for Q2_K).
//! The products run through `Linear`, i.e. the kernels the models use
//! (activations quantized as llama.cpp does), on 32 output rows so that the
//! repacked tile kernels are taken where the CPU has them, for 1 and 4
//! activation rows. (Measured maxima over all rows: Q4_1 0.011, Q2_K 0.012,
//! Q3_K 0.041, the others below 0.006.) It lives with `Linear` rather
//! than in `kernels/` because it goes through the layer, which is above them.

#[cfg(test)]
mod tests {
    use candle_core::quantized::{GgmlDType, QMatMul};
    use candle_core::{Device, Tensor};

    use crate::layers::linear::{quantize_matrix, Linear};

    const N: usize = 32 * 128;
    const ROWS: usize = 32;

    fn data(offset: f32) -> Vec<f32> {
        (0..N).map(|i| 0.1 + 2.0 * (i as f32 + offset).cos()).collect()
    }

    fn types() -> [(GgmlDType, f64, f64); 13] {
        use GgmlDType::*;
        [
            (F16, 0.002, 0.02),
            (BF16, 0.002, 0.02),
            (Q4_0, 0.002, 0.02),
            (Q4_1, 0.002, 0.02),
            (Q5_0, 0.002, 0.02),
            (Q5_1, 0.002, 0.02),
            (Q8_0, 0.002, 0.02),
            (Q2K, 0.0075, 0.04),
            (Q3K, 0.004, 0.02),
            (Q4K, 0.002, 0.02),
            (Q5K, 0.002, 0.02),
            (Q6K, 0.002, 0.02),
            (Q8K, 0.002, 0.02),
        ]
    }

    #[test]
    fn quantization_and_products_within_ggml_bounds() {
        let dev = Device::Cpu;
        let w: Vec<f32> = (0..ROWS).flat_map(|r| data(r as f32 * 0.37)).collect();
        let w = Tensor::from_vec(w, (ROWS, N), &dev).unwrap();
        for (dtype, max_rmse, max_dot) in types() {
            // F16/BF16 come back dense (expanded at load, as from a GGUF file); quantize them for the error.
            let q = match quantize_matrix(&QMatMul::Tensor(w.clone()), dtype).unwrap().unwrap() {
                QMatMul::QTensor(q) => q,
                _ => std::sync::Arc::new(candle_core::quantized::QTensor::quantize(&w, dtype).unwrap()),
            };
            // ggml's array_rmse: sqrt(Σ d²) / n, on one row of test data.
            let back = q.dequantize(&dev).unwrap().get(0).unwrap().to_vec1::<f32>().unwrap();
            let orig = w.get(0).unwrap().to_vec1::<f32>().unwrap();
            let rmse = back.iter().zip(&orig).map(|(a, b)| ((a - b) as f64).powi(2)).sum::<f64>().sqrt() / N as f64;
            assert!(rmse < max_rmse, "{dtype:?}: quantization error {rmse}");

            let lin = Linear::new(QMatMul::from_arc(q).unwrap(), None);
            for m in [1usize, 4] {
                let x: Vec<f32> = (0..m).flat_map(|r| data(1.0 + r as f32)).collect();
                let x = Tensor::from_vec(x, (m, N), &dev).unwrap();
                let got = lin.forward(&x).unwrap().to_vec2::<f32>().unwrap();
                let want = x.matmul(&w.t().unwrap()).unwrap().to_vec2::<f32>().unwrap();
                let mut worst = (0f64, 0f64);
                for (gr, wr) in got.iter().zip(&want) {
                    for (j, (g, w)) in gr.iter().zip(wr).enumerate() {
                        let err = ((g - w) / N as f32).abs() as f64;
                        if j == 0 { worst.0 = worst.0.max(err) } else { worst.1 = worst.1.max(err) }
                    }
                }
                // ggml's own case (weight row 0, activation offset 1, one row) is held to ggml's
                // bound; other rows and offsets, which ggml's bounds were not tuned on, to 2.5x it
                // (Q3_K reaches 0.041 there, every other type stays under the plain bound).
                let ggml_case = if m == 1 { worst.0 } else { 0.0 };
                assert!(ggml_case < max_dot, "{dtype:?}: ggml's dot product case, error {ggml_case}");
                let rest = worst.0.max(worst.1);
                assert!(rest < 2.5 * max_dot, "{dtype:?} with {m} rows: dot product error {rest}");
            }
        }
    }
}
