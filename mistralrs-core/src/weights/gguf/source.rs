//! Weights from a file of ggml tensors under llama.cpp's names (`TensorFile`),
//! asked for by transformers' module names and handed over in transformers'
//! layout: Q/K rows un-interleaved, Gemma norms without their `1 +`, experts
//! and fused Q/K/V sliced out.

use std::sync::Arc;

use candle_core::quantized::ggml_file::qtensor_from_ggml;
use candle_core::{DType, Device, Tensor};

use super::config::arch_of_gguf;
use super::file::GgufFile;
use super::names::gguf_name;
use crate::architecture::Architecture;
use crate::config::ModelConfig;
use crate::error::{candle_message, Error, Result};
use crate::kernels::StoredRows;
use crate::layers::{Embedding, Linear};
use crate::weights::stored::StoredTensor;
use crate::weights::tensor_file::TensorFile;
use crate::weights::WeightSource;

/// A `WeightSource` over a `TensorFile`.
pub struct GgufSource {
    file: Arc<dyn TensorFile>,
    /// (heads, kv_heads) when Q/K rows must be un-interleaved.
    unpermute: Option<(usize, usize)>,
    /// Gemma files store `1 + w` for norms; the models expect transformers' `w`.
    norm_plus_one: bool,
    /// Gemma 2/3 names (see `gguf_name`).
    post_norms: bool,
    /// Rows of Q, K and V within a fused `attn_qkv` (for files that fuse what the model keeps apart).
    qkv_rows: (usize, usize),
    device: Device,
    dtype: DType,
}

impl GgufSource {
    /// `dtype`: the compute dtype, which dense tensors are converted to.
    pub fn new(file: Arc<GgufFile>, cfg: &ModelConfig, device: &Device, dtype: DType) -> Result<Self> {
        let kind = arch_of_gguf(&file)?;
        Ok(Self::with_layout(file, kind.interleaved_rope, kind.norm_plus_one, cfg, device, dtype))
    }

    /// Tensors of `file` laid out as llama.cpp stores them: Q/K rows
    /// interleaved for rotary pairs (the `llama` family) and norms stored as
    /// `1 + w` (gemma) where the flags say so.
    pub fn with_layout(
        file: Arc<dyn TensorFile>,
        interleaved_rope: bool,
        norm_plus_one: bool,
        cfg: &ModelConfig,
        device: &Device,
        dtype: DType,
    ) -> Self {
        let unpermute = interleaved_rope.then_some((cfg.num_heads, cfg.num_kv_heads));
        let qkv_rows = (cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim);
        let post_norms = matches!(cfg.arch, Architecture::Gemma2 | Architecture::Gemma3);
        Self { file, unpermute, norm_plus_one, post_norms, qkv_rows, device: device.clone(), dtype }
    }

    /// The (weight or bias) tensor `name`, resolving stacked experts (`name#E`)
    /// and Q/K/V kept fused in the file.
    fn resolve(&self, name: &str, suffix: &str, shape: &[usize]) -> Result<StoredTensor<'_>> {
        let rows_of = |fused: &str, start: usize, n: usize| -> Result<StoredTensor<'_>> {
            let t = self.file.stored(fused)?;
            t.rows(start, n, shape).map_err(|e| Error::bad_file(self.file.path(), format!("tensor `{fused}`: {e}")))
        };
        if let Some((base, e)) = name.split_once('#') {
            let e: usize = e.parse().map_err(|_| Error::runtime(format!("bad expert index in `{name}`")))?;
            let stacked = format!("{base}.{suffix}");
            if self.file.has_tensor(&stacked) {
                return rows_of(&stacked, e * shape[0], shape[0]);
            }
            // Older files: one tensor per expert, `blk.N.ffn_gate.E.weight`.
            let per_expert = format!("{}.{e}.{suffix}", base.trim_end_matches("_exps"));
            return self.checked(&per_expert, shape);
        }
        let full = format!("{name}.{suffix}");
        if !self.file.has_tensor(&full) {
            if let Some((blk, part)) = name.rsplit_once('.') {
                let (q, kv) = self.qkv_rows;
                let range = match part {
                    "attn_q" => Some((0, q)),
                    "attn_k" => Some((q, kv)),
                    "attn_v" => Some((q + kv, kv)),
                    _ => None,
                };
                let fused = format!("{blk}.attn_qkv.{suffix}");
                if let (Some((start, n)), true) = (range, self.file.has_tensor(&fused)) {
                    return rows_of(&fused, start, n);
                }
            }
        }
        self.checked(&full, shape)
    }

    fn name(&self, module: &str) -> Result<String> {
        gguf_name(module, self.post_norms).ok_or_else(|| Error::runtime(format!("no GGUF name for module `{module}`")))
    }

    fn checked(&self, name: &str, shape: &[usize]) -> Result<StoredTensor<'_>> {
        let t = self.file.stored(name)?;
        if t.dims != shape {
            return Err(Error::bad_file(
                self.file.path(),
                format!("tensor `{name}` has shape {:?}, the metadata implies {shape:?}", t.dims),
            ));
        }
        Ok(t)
    }

    /// A dense vector from a stored 1-D tensor.
    fn dense(&self, t: &StoredTensor, name: &str) -> Result<Tensor> {
        let q = qtensor_from_ggml(t.dtype, &t.bytes, t.dims.clone(), &self.device)
            .map_err(|e| Error::bad_file(self.file.path(), format!("tensor `{name}`: {}", candle_message(&e))))?;
        Ok(q.dequantize(&self.device)?.to_dtype(self.dtype)?)
    }

    /// A linear layer (or embedding table) over a stored (rows, cols) matrix.
    fn matrix(&self, t: &StoredTensor, order: Option<&(dyn Fn(usize) -> usize + Sync)>, bias: Option<Tensor>) -> Result<Linear> {
        let [rows, cols] = t.dims[..] else {
            return Err(Error::bad_file(self.file.path(), format!("expected a matrix, got a {:?} tensor", t.dims)));
        };
        let release = |r: std::ops::Range<usize>| t.release(r);
        let src = StoredRows::new(&t.bytes, t.row_bytes(), order)
            .ok_or_else(|| Error::bad_file(self.file.path(), format!("a {:?} tensor of {} bytes is not whole rows", t.dims, t.bytes.len())))?
            .with_release(&release);
        Ok(Linear::from_stored(t.dtype, &src, rows, cols, bias, &self.device)?.with_dense_dtype(self.dtype)?)
    }

    /// Rows per head that llama.cpp's converter interleaved, if `module` is Q or K.
    fn rotary_heads(&self, module: &str) -> Option<usize> {
        let (heads, kv_heads) = self.unpermute?;
        if module.ends_with("self_attn.q_proj") {
            Some(heads)
        } else if module.ends_with("self_attn.k_proj") {
            Some(kv_heads)
        } else {
            None
        }
    }
}

/// Where llama.cpp's `permute` put each Q/K row: within each head of
/// `head_dim` rows, transformers row `j * head_dim/2 + i` is stored as row
/// `2i + j`. Rows are whole quantization blocks, so taking rows in this order
/// undoes the permutation for every ggml type.
fn rotary_order(rows: usize, heads: usize) -> impl Fn(usize) -> usize + Sync {
    let head_dim = (rows / heads.max(1)).max(2);
    let half = head_dim / 2;
    move |r| {
        let (h, w) = (r / head_dim, r % head_dim);
        let (j, i) = (w / half, w % half);
        h * head_dim + 2 * i + j
    }
}

fn unpermute_vector(v: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
    let n = v.dims1()?;
    v.reshape((heads, n / heads / 2, 2))?.transpose(1, 2)?.contiguous()?.reshape(n)
}

impl WeightSource for GgufSource {
    fn linear(&self, module: &str, out_dim: usize, in_dim: usize, bias: bool) -> Result<Linear> {
        let name = self.name(module)?;
        let heads = self.rotary_heads(module);
        let b = if bias {
            let b = self.dense(&self.resolve(&name, "bias", &[out_dim])?, &name)?;
            Some(match heads {
                Some(h) => unpermute_vector(&b, h)?,
                None => b,
            })
        } else {
            None
        };
        let w = self.resolve(&name, "weight", &[out_dim, in_dim])?;
        let order = heads.map(|h| rotary_order(out_dim, h));
        self.matrix(&w, order.as_ref().map(|f| f as &(dyn Fn(usize) -> usize + Sync)), b)
    }

    fn vector(&self, name: &str, len: usize) -> Result<Tensor> {
        let (module, suffix) = name.rsplit_once('.').unwrap_or((name, "weight"));
        let gname = format!("{}.{suffix}", self.name(module)?);
        let v = self.dense(&self.checked(&gname, &[len])?, &gname)?;
        if self.norm_plus_one && suffix == "weight" && (module.ends_with("norm") || module.ends_with("layernorm")) {
            return Ok((v - 1.0)?);
        }
        Ok(v)
    }

    fn embedding(&self, module: &str, vocab: usize, hidden: usize, head: bool) -> Result<Embedding> {
        let name = format!("{}.weight", self.name(module)?);
        if !head && self.device.is_cpu() {
            // Only looked up: read in place, as llama.cpp does, rather than
            // repacked for products that never happen (a 150k-token table is
            // about a fifth of a small model's file).
            let (bytes, dtype, dims) = self.file.shared(&name)?;
            if dims != [vocab, hidden] {
                return Err(Error::bad_file(self.file.path(), format!("tensor `{name}` has shape {dims:?}, the metadata implies {:?}", [vocab, hidden])));
            }
            return Ok(Embedding::stored(bytes, dtype, vocab, hidden)?);
        }
        Ok(Embedding::from_table(self.matrix(&self.checked(&name, &[vocab, hidden])?, None, None)?))
    }

    fn has_module(&self, module: &str) -> bool {
        gguf_name(module, self.post_norms).is_some_and(|n| self.file.has_tensor(&format!("{n}.weight")))
    }

    fn has_tensor(&self, name: &str) -> bool {
        let (module, suffix) = name.rsplit_once('.').unwrap_or((name, "weight"));
        gguf_name(module, self.post_norms).is_some_and(|n| self.file.has_tensor(&format!("{n}.{suffix}")))
    }

    fn dtype(&self) -> DType {
        self.dtype
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::{GgmlDType, QTensor};

    /// llama.cpp's converter: `w.reshape(heads, 2, rows/heads/2, cols).swapaxes(1, 2)`.
    #[test]
    fn unpermute_inverts_the_converter() {
        let (heads, head_dim, cols) = (2usize, 4usize, 32usize);
        let rows = heads * head_dim;
        let hf: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
        let hf_t = Tensor::from_vec(hf.clone(), (rows, cols), &Device::Cpu).unwrap();
        let permuted = hf_t
            .reshape((heads, 2, head_dim / 2, cols))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .contiguous()
            .unwrap()
            .reshape((rows, cols))
            .unwrap();
        let stored = permuted.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let order = rotary_order(rows, heads);
        let back: Vec<f32> = (0..rows).flat_map(|r| stored[order(r) * cols..(order(r) + 1) * cols].to_vec()).collect();
        assert_eq!(back, hf);
    }

    #[test]
    fn expert_rows_are_sliced_from_stacked_tensors() {
        let (experts, rows, cols) = (3usize, 2usize, 32usize);
        let all: Vec<f32> = (0..experts * rows * cols).map(|i| i as f32).collect();
        let t = Tensor::from_vec(all.clone(), (experts, rows, cols), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&t, GgmlDType::Q8_0).unwrap();
        let stored = || StoredTensor::owned(q.dtype(), vec![experts, rows, cols], q.data().unwrap().into_owned());
        let e1 = stored().rows(rows, rows, &[rows, cols]).unwrap();
        let e1 = qtensor_from_ggml(e1.dtype, &e1.bytes, e1.dims.clone(), &Device::Cpu).unwrap();
        let full = q.dequantize(&Device::Cpu).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let got = e1.dequantize(&Device::Cpu).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(got, full[rows * cols..2 * rows * cols]);
        assert!(stored().rows(5, 2, &[2, cols]).is_err());
    }
}
