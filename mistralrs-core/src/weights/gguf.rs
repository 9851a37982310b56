//! GGUF files (v2, v3): metadata, the model config it implies, and tensors
//! under llama.cpp's names mapped to transformers' module names.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::{ggml_file::qtensor_from_ggml, GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};

use super::gguf_header::{self, tensor_bytes};
use super::finite::check_finite;
use super::stored::{MappedFile, StoredTensor};
use super::WeightSource;
use crate::architecture::Architecture;
use crate::error::{candle_message, Error, Result};
use crate::kernels::StoredRows;
use crate::layers::{Activation, Embedding, Linear};
use crate::config::{Extras, ModelConfig, RopeScaling};

/// A file of ggml tensors under llama.cpp's GGUF tensor names (a GGUF file,
/// or a legacy GGML file whose names are mapped).
pub trait TensorFile: Send + Sync {
    fn path(&self) -> &Path;
    fn has_tensor(&self, name: &str) -> bool;
    /// Tensor `name` as stored, with its transformers-order shape (rows, cols).
    fn stored(&self, name: &str) -> Result<StoredTensor<'_>>;

    /// Tensor `name` as a candle tensor on `device`.
    fn qtensor(&self, name: &str, device: &Device) -> Result<QTensor> {
        let t = self.stored(name)?;
        qtensor_from_ggml(t.dtype, &t.bytes, t.dims.clone(), device)
            .map_err(|e| Error::bad_file(self.path(), format!("tensor `{name}`: {}", candle_message(&e))))
    }
}

impl TensorFile for GgufFile {
    fn path(&self) -> &Path {
        &self.path
    }
    fn has_tensor(&self, name: &str) -> bool {
        GgufFile::has_tensor(self, name)
    }
    fn stored(&self, name: &str) -> Result<StoredTensor<'_>> {
        GgufFile::stored(self, name)
    }
}

/// A GGUF file opened for loading, its tensors read through a memory map
/// (see `stored.rs`).
pub struct GgufFile {
    pub path: PathBuf,
    map: MappedFile,
    content: Content,
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self> {
        let mut file = std::fs::File::open(path).map_err(|e| Error::not_found(path, e.to_string()))?;
        let mut head = [0u8; 8];
        let got = file.read(&mut head).map_err(|e| Error::bad_file(path, e))?;
        if got < 8 || &head[..4] != b"GGUF" {
            return Err(Error::bad_file(
                path,
                format!("not a GGUF file: bad magic {:?} (expected b\"GGUF\")", &head[..got.min(4)]),
            ));
        }
        let version = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        if !(2..=3).contains(&version) {
            return Err(Error::bad_file(path, format!("GGUF version {version} is not supported (2 and 3 are)")));
        }
        let map = MappedFile::new(&file).map_err(|e| Error::bad_file(path, format!("cannot map the file: {e}")))?;
        let content = gguf_header::read(map.bytes(), path)?;
        // The header (with the tokenizer's vocabulary) is parsed: its pages can go.
        drop(map.pages(0, usize::try_from(content.tensor_data_offset).unwrap_or(0)));
        Ok(Self { path: path.to_path_buf(), map, content })
    }

    pub fn metadata(&self) -> &HashMap<String, Value> {
        &self.content.metadata
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.content.metadata.get(key)
    }

    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(|v| v.to_string().ok()).map(|s| s.as_str())
    }

    pub fn get_usize(&self, key: &str) -> Option<usize> {
        self.get(key).and_then(value_as_u64).map(|v| v as usize)
    }

    pub fn get_f64(&self, key: &str) -> Option<f64> {
        self.get(key).and_then(|v| match v {
            Value::F32(x) => Some(*x as f64),
            Value::F64(x) => Some(*x),
            other => value_as_u64(other).map(|x| x as f64),
        })
    }

    pub fn require_usize(&self, key: &str) -> Result<usize> {
        self.get_usize(key).ok_or_else(|| Error::bad_file(&self.path, format!("missing metadata key `{key}`")))
    }

    pub fn architecture(&self) -> Result<&str> {
        self.get_str("general.architecture")
            .ok_or_else(|| Error::bad_file(&self.path, "missing metadata key `general.architecture`"))
    }

    pub fn has_tensor(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    pub fn tensor_count(&self) -> usize {
        self.content.tensor_infos.len()
    }

    /// Tensor `name` as stored, with its transformers-order shape (rows, cols).
    pub fn stored(&self, name: &str) -> Result<StoredTensor<'_>> {
        let info = self
            .content
            .tensor_infos
            .get(name)
            .ok_or_else(|| Error::bad_file(&self.path, format!("tensor `{name}` is missing")))?;
        let len = tensor_bytes(info.ggml_dtype, info.shape.elem_count());
        let pages = self
            .content
            .tensor_data_offset
            .checked_add(info.offset)
            .and_then(|start| self.map.pages(start, len))
            .ok_or_else(|| Error::bad_file(&self.path, format!("tensor `{name}` lies outside the file")))?;
        check_finite(info.ggml_dtype, pages.bytes()).map_err(|why| Error::bad_file(&self.path, format!("tensor `{name}`: {why}")))?;
        Ok(StoredTensor::mapped(info.ggml_dtype, info.shape.dims().to_vec(), pages))
    }

    /// Tensor `name` as a candle tensor on `device`.
    pub fn qtensor(&self, name: &str, device: &Device) -> Result<QTensor> {
        TensorFile::qtensor(self, name, device)
    }

    /// The ggml types of the file's tensors, counted (for logs and checks).
    pub fn dtype_counts(&self) -> Vec<(GgmlDType, usize)> {
        let mut counts: Vec<(GgmlDType, usize)> = Vec::new();
        for info in self.content.tensor_infos.values() {
            match counts.iter_mut().find(|(d, _)| *d == info.ggml_dtype) {
                Some((_, n)) => *n += 1,
                None => counts.push((info.ggml_dtype, 1)),
            }
        }
        counts
    }
}

pub fn value_as_u64(v: &Value) -> Option<u64> {
    Some(match v {
        Value::U8(x) => *x as u64,
        Value::I8(x) => *x as u64,
        Value::U16(x) => *x as u64,
        Value::I16(x) => *x as u64,
        Value::U32(x) => *x as u64,
        Value::I32(x) => *x as u64,
        Value::U64(x) => *x,
        Value::I64(x) => *x as u64,
        Value::Bool(x) => *x as u64,
        _ => return None,
    })
}

/// How llama.cpp stores an architecture.
struct GgufArch {
    arch: Architecture,
    /// The converter interleaved the rotary pairs of Q and K (the `llama` family only).
    interleaved_rope: bool,
    /// Norm weights are stored with transformers' `1 +` already added (gemma).
    norm_plus_one: bool,
}

const SUPPORTED_GGUF: &str = "llama (also Mistral and Mixtral files), qwen2, gemma, gemma2, gemma3, phi2, phi3";

fn arch_of_gguf(file: &GgufFile) -> Result<GgufArch> {
    let name = file.architecture()?;
    let plain = |arch| GgufArch { arch, interleaved_rope: false, norm_plus_one: false };
    Ok(match name {
        "llama" | "mistral" => {
            let moe = file.get_usize(&format!("{name}.expert_count")).unwrap_or(0) > 0;
            let arch = if moe { Architecture::Mixtral } else { Architecture::Llama };
            GgufArch { arch, interleaved_rope: true, norm_plus_one: false }
        }
        "qwen2" => plain(Architecture::Qwen2),
        "phi2" => plain(Architecture::Phi2),
        "phi3" => plain(Architecture::Phi3),
        "gemma" => GgufArch { arch: Architecture::Gemma, interleaved_rope: false, norm_plus_one: true },
        "gemma2" => GgufArch { arch: Architecture::Gemma2, interleaved_rope: false, norm_plus_one: true },
        "gemma3" => GgufArch { arch: Architecture::Gemma3, interleaved_rope: false, norm_plus_one: true },
        other => {
            return Err(Error::bad_file(
                &file.path,
                format!("GGUF architecture `{other}` is not supported; supported: {SUPPORTED_GGUF}"),
            ))
        }
    })
}

pub fn model_config(file: &GgufFile) -> Result<ModelConfig> {
    let name = file.architecture()?.to_string();
    let kind = arch_of_gguf(file)?;
    let key = |k: &str| format!("{name}.{k}");
    let hidden = file.require_usize(&key("embedding_length"))?;
    let heads = file.require_usize(&key("attention.head_count"))?;
    let kv_heads = file.get_usize(&key("attention.head_count_kv")).unwrap_or(heads);
    if heads == 0 || kv_heads == 0 || heads % kv_heads != 0 {
        return Err(Error::bad_file(
            &file.path,
            format!(
                "`{}` is {heads} and `{}` is {kv_heads}: both must be positive, the first a multiple of the second",
                key("attention.head_count"),
                key("attention.head_count_kv")
            ),
        ));
    }
    let head_dim = file.get_usize(&key("attention.key_length")).unwrap_or(hidden / heads);
    let vocab = match file.content.tensor_infos.get("token_embd.weight") {
        Some(info) if info.shape.rank() == 2 => info.shape.dims()[0],
        _ => return Err(Error::bad_file(&file.path, "tensor `token_embd.weight` is missing or not 2-D")),
    };
    let vector = |name: &str| -> Result<Vec<f32>> {
        Ok(file.qtensor(name, &Device::Cpu)?.dequantize(&Device::Cpu)?.to_vec1::<f32>()?)
    };
    let context = file.require_usize(&key("context_length"))?;
    let rope_scaling = if file.has_tensor("rope_freqs.weight") {
        RopeScaling::Factors(vector("rope_freqs.weight")?)
    } else if file.has_tensor("rope_factors_long.weight") {
        // Phi-3 LongRoPE; the switch to the long factors follows transformers
        // (per sequence length), not llama.cpp's choice by context size.
        let original = file.get_usize(&key("rope.scaling.original_context_length")).unwrap_or(context);
        let factor = context as f64 / original as f64;
        let computed = if factor <= 1.0 { 1.0 } else { (1.0 + factor.ln() / (original as f64).ln()).sqrt() };
        RopeScaling::LongRope {
            short: vector("rope_factors_short.weight")?,
            long: vector("rope_factors_long.weight")?,
            original_max_position: original,
            attention_factor: file.get_f64(&key("rope.scaling.attn_factor")).unwrap_or(computed),
        }
    } else {
        match (file.get_str(&key("rope.scaling.type")), file.get_f64(&key("rope.scaling.factor"))) {
            (Some("linear"), Some(factor)) => RopeScaling::Linear { factor },
            (None | Some("none"), _) => RopeScaling::None,
            (Some(other), _) => {
                return Err(Error::bad_file(&file.path, format!("rope scaling `{other}` is not supported")))
            }
        }
    };
    let eps = file
        .get_f64(&key("attention.layer_norm_rms_epsilon"))
        .or_else(|| file.get_f64(&key("attention.layer_norm_epsilon")))
        .unwrap_or(1e-5);
    let hidden_act = match kind.arch {
        Architecture::Gemma | Architecture::Gemma2 | Architecture::Gemma3 | Architecture::Phi2 => Activation::GeluTanh,
        _ => Activation::Silu,
    };
    let layers = file.require_usize(&key("block_count"))?;
    let extras = gemma_extras(file, &name, kind.arch, layers, hidden / heads, head_dim);
    Ok(ModelConfig {
        arch: kind.arch,
        vocab_size: vocab,
        hidden_size: hidden,
        intermediate_size: file.require_usize(&key("feed_forward_length"))?,
        num_layers: layers,
        num_heads: heads,
        num_kv_heads: kv_heads,
        head_dim,
        norm_eps: eps,
        rope_theta: file.get_f64(&key("rope.freq_base")).unwrap_or(10_000.0),
        rope_scaling,
        max_position_embeddings: context,
        tie_word_embeddings: !file.has_tensor("output.weight"),
        sliding_window: file.get_usize(&key("attention.sliding_window")).filter(|&w| w > 0),
        qkv_bias: file.has_tensor("blk.0.attn_q.bias"),
        o_bias: file.has_tensor("blk.0.attn_output.bias"),
        mlp_bias: false,
        rotary_dim: file.get_usize(&key("rope.dimension_count")).unwrap_or(head_dim),
        hidden_act,
        num_experts: file.get_usize(&key("expert_count")).unwrap_or(0),
        experts_per_token: file.get_usize(&key("expert_used_count")).unwrap_or(2),
        extras,
    })
}

/// Gemma 2 and 3 as llama.cpp runs them. Its files record neither
/// `query_pre_attn_scalar` nor which layers are local: llama.cpp scales
/// attention by 1/sqrt(head_dim), except for the 27B models (46 layers of
/// Gemma 2, 62 of Gemma 3), scaled by hidden/heads as their configs say;
/// and every 2nd (Gemma 2) or 6th (Gemma 3) layer is global unless the
/// file gives `attention.sliding_window_pattern`. Soft-capping defaults to
/// llama.cpp's (and transformers') 50 and 30 for Gemma 2; Gemma 3 has none.
fn gemma_extras(file: &GgufFile, name: &str, arch: Architecture, layers: usize, hidden_per_head: usize, head_dim: usize) -> Extras {
    let key = |k: &str| format!("{name}.{k}");
    let (pattern, is_27b, caps) = match arch {
        Architecture::Gemma2 => (2, layers == 46, (Some(50.0), Some(30.0))),
        Architecture::Gemma3 => (6, layers == 62, (None, None)),
        _ => return Extras::default(),
    };
    let sliding_layers = match file.get(&key("attention.sliding_window_pattern")) {
        Some(Value::Array(flags)) => (0..layers).map(|i| flags.get(i).and_then(|f| f.to_bool().ok()).unwrap_or(false)).collect(),
        other => {
            let n = other.and_then(value_as_u64).map_or(pattern, |n| n.max(1) as usize);
            (0..layers).map(|i| (i + 1) % n != 0).collect()
        }
    };
    Extras {
        query_pre_attn_scalar: Some(if is_27b { hidden_per_head } else { head_dim } as f64),
        attn_logit_softcap: file.get_f64(&key("attn_logit_softcapping")).or(caps.0),
        final_logit_softcap: file.get_f64(&key("final_logit_softcapping")).or(caps.1),
        sliding_layers: Some(sliding_layers),
        local_rope_theta: (arch == Architecture::Gemma3).then(|| file.get_f64(&key("rope.freq_base_swa")).unwrap_or(10_000.0)),
    }
}

/// llama.cpp's tensor name for a transformers module name; `post_norms`:
/// Gemma 2/3, whose `post_attention_layernorm` is a norm of the attention
/// output (`post_attention_norm`), not the llama family's pre-MLP norm.
fn gguf_name(module: &str, post_norms: bool) -> Option<String> {
    let direct = match module {
        "model.embed_tokens" => Some("token_embd"),
        "model.norm" | "model.final_layernorm" => Some("output_norm"),
        "lm_head" => Some("output"),
        _ => None,
    };
    if let Some(n) = direct {
        return Some(n.to_string());
    }
    let rest = module.strip_prefix("model.layers.")?;
    let (idx, sub) = rest.split_once('.')?;
    let part = match sub {
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.qkv_proj" => "attn_qkv",
        "self_attn.o_proj" | "self_attn.dense" => "attn_output",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" | "mlp.gate_up_proj" | "mlp.fc1" => "ffn_up",
        "mlp.down_proj" | "mlp.fc2" => "ffn_down",
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" if post_norms => "post_attention_norm",
        "post_attention_layernorm" | "pre_feedforward_layernorm" => "ffn_norm",
        "post_feedforward_layernorm" => "post_ffw_norm",
        "self_attn.q_norm" => "attn_q_norm",
        "self_attn.k_norm" => "attn_k_norm",
        "block_sparse_moe.gate" => "ffn_gate_inp",
        _ => return expert_name(idx, sub),
    };
    Some(format!("blk.{idx}.{part}"))
}

/// `block_sparse_moe.experts.E.w1` -> expert E of the stacked `ffn_gate_exps`
/// (written `blk.N.ffn_gate_exps#E`; older files have `blk.N.ffn_gate.E`).
fn expert_name(idx: &str, sub: &str) -> Option<String> {
    let rest = sub.strip_prefix("block_sparse_moe.experts.")?;
    let (e, w) = rest.split_once('.')?;
    let part = match w {
        "w1" => "ffn_gate",
        "w2" => "ffn_down",
        "w3" => "ffn_up",
        _ => return None,
    };
    Some(format!("blk.{idx}.{part}_exps#{e}"))
}

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
        let src = StoredRows::new(&t.bytes, t.row_bytes(), order)
            .ok_or_else(|| Error::bad_file(self.file.path(), format!("a {:?} tensor of {} bytes is not whole rows", t.dims, t.bytes.len())))?;
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

    fn embedding(&self, module: &str, vocab: usize, hidden: usize) -> Result<Embedding> {
        let name = format!("{}.weight", self.name(module)?);
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

    #[test]
    fn transformers_names_map_to_llama_cpp_names() {
        assert_eq!(gguf_name("model.embed_tokens", false).as_deref(), Some("token_embd"));
        assert_eq!(gguf_name("model.layers.3.self_attn.q_proj", false).as_deref(), Some("blk.3.attn_q"));
        assert_eq!(gguf_name("model.layers.0.mlp.gate_up_proj", false).as_deref(), Some("blk.0.ffn_up"));
        assert_eq!(gguf_name("model.layers.1.self_attn.dense", false).as_deref(), Some("blk.1.attn_output"));
        assert_eq!(gguf_name("model.final_layernorm", false).as_deref(), Some("output_norm"));
        assert_eq!(
            gguf_name("model.layers.2.block_sparse_moe.experts.5.w2", false).as_deref(),
            Some("blk.2.ffn_down_exps#5")
        );
        assert_eq!(gguf_name("model.layers.2.mystery", false), None);
        // Gemma 2/3: the same transformers name is another tensor.
        assert_eq!(gguf_name("model.layers.0.post_attention_layernorm", false).as_deref(), Some("blk.0.ffn_norm"));
        assert_eq!(gguf_name("model.layers.0.post_attention_layernorm", true).as_deref(), Some("blk.0.post_attention_norm"));
        assert_eq!(gguf_name("model.layers.0.pre_feedforward_layernorm", true).as_deref(), Some("blk.0.ffn_norm"));
        assert_eq!(gguf_name("model.layers.0.self_attn.k_norm", true).as_deref(), Some("blk.0.attn_k_norm"));
    }

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
