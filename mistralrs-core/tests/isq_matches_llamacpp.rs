//! In-situ quantization writes the bytes llama.cpp's quantizer writes, for every type llama.cpp writes.
//!
//! Reference: tests/fixtures/quant-types/model-<type>.gguf, written by llama.cpp's own quantizer
//! (llama-cpp-python's `llama_model_quantize`, `pure`, no importance matrix; scripts/make_fixtures_quant.py)
//! from the f32 weights in model.safetensors. Each 2-D weight of that model, quantized by
//! `quantize_dense` (what `Runner(in_situ_quant=...)` runs on every linear layer and the embeddings), must
//! give the file's blocks byte for byte. llama.cpp's converter permutes the rows of attn_q and attn_k (its
//! rotary layout); rows are quantized independently, so those two are compared as sets of rows.

use candle_core::quantized::{gguf_file, GgmlDType};
use candle_core::{DType, Device};
use mistralrs_core::layers::linear::quantize_dense;

const TYPES: [(&str, GgmlDType); 10] = [
    ("q4_0", GgmlDType::Q4_0),
    ("q4_1", GgmlDType::Q4_1),
    ("q5_0", GgmlDType::Q5_0),
    ("q5_1", GgmlDType::Q5_1),
    ("q8_0", GgmlDType::Q8_0),
    ("q2_k", GgmlDType::Q2K),
    ("q3_k", GgmlDType::Q3K),
    ("q4_k", GgmlDType::Q4K),
    ("q5_k", GgmlDType::Q5K),
    ("q6_k", GgmlDType::Q6K),
];

/// (safetensors name, GGUF name, rows permuted by llama.cpp's converter)
fn weights() -> Vec<(String, String, bool)> {
    let mut out = vec![
        ("model.embed_tokens.weight".to_string(), "token_embd.weight".to_string(), false),
        ("lm_head.weight".to_string(), "output.weight".to_string(), false),
    ];
    for i in 0..2 {
        for (hf, gg, permuted) in [
            ("self_attn.q_proj", "attn_q", true),
            ("self_attn.k_proj", "attn_k", true),
            ("self_attn.v_proj", "attn_v", false),
            ("self_attn.o_proj", "attn_output", false),
            ("mlp.gate_proj", "ffn_gate", false),
            ("mlp.up_proj", "ffn_up", false),
            ("mlp.down_proj", "ffn_down", false),
        ] {
            out.push((format!("model.layers.{i}.{hf}.weight"), format!("blk.{i}.{gg}.weight"), permuted));
        }
    }
    out
}

#[test]
fn isq_blocks_equal_llama_cpp_quantizer() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/quant-types");
    let dense = candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap();
    let mut wrong = Vec::new();
    for (file, dtype) in TYPES {
        let path = dir.join(format!("model-{file}.gguf"));
        let mut f = std::fs::File::open(&path).unwrap();
        let content = gguf_file::Content::read(&mut f).unwrap();
        for (hf, gg, permuted) in weights() {
            let w = dense[&hf].to_dtype(DType::F32).unwrap();
            let theirs = content.tensor(&mut f, &gg, &Device::Cpu).unwrap();
            assert_eq!(theirs.dtype(), dtype, "{file}: {gg} is not {dtype:?} in the fixture");
            let ours = quantize_dense(&w, dtype).unwrap();
            let (a, b) = (ours.data().unwrap(), theirs.data().unwrap());
            let row_bytes = a.len() / w.dims2().unwrap().0;
            let (mut ra, mut rb): (Vec<&[u8]>, Vec<&[u8]>) = (a.chunks(row_bytes).collect(), b.chunks(row_bytes).collect());
            if permuted {
                ra.sort();
                rb.sort();
            }
            let differ = ra.iter().zip(&rb).filter(|(x, y)| x != y).count();
            if a.len() != b.len() || differ > 0 {
                wrong.push(format!("{file} {gg}: {differ} of {} rows differ", rb.len()));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
