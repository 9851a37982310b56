//! Legacy GGML files (llama.cpp before GGUF): unversioned `ggml`, `ggmf` v1
//! and `ggjt` v1–v3, llama-family only. The layout is the one llama.cpp's
//! own `convert_llama_ggml_to_gguf.py` reads: magic (+ version), seven u32
//! hyper-parameters, the vocabulary (scores from `ggmf` on), then tensors to
//! the end of the file (dims innermost first; `ggjt` pads each tensor's data
//! to 32 bytes). The tensors are offered under llama.cpp's GGUF names, so
//! `GgufSource` builds the model from them.
//!
//! Block layouts changed between versions, and each version is read as it
//! was written:
//! - `ggjt` v3: today's layouts, the K-quants included (they came with v3);
//! - `ggjt` v2: Q5_0/Q5_1 as today; Q4_0, Q4_1 and Q8_0 with f32 scales
//!   (v3 made them f16); their scales are converted to f16 at load (exact
//!   for scales that came from f16 blocks, otherwise rounded once);
//! - older containers: F32 and F16 only. Their quantized blocks predate
//!   GGJTv2's re-packing, which llama.cpp's converter refuses too.
//!
//! A type that never existed in a container (a K-quant in `ggjt` v2, the
//! removed Q4_2/Q4_3) is a `ValueError`. candle's `ggml_file` reader is not
//! used: it reads every version with today's layouts and expects vocabulary
//! scores in unversioned files, which have none.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use candle_core::quantized::GgmlDType;

use super::finite::check_finite;
use super::gguf_types::{dtype_of, ggml_type_name};
use super::stored::StoredTensor;
use super::tensor_file::TensorFile;
use crate::architecture::Architecture;
use crate::config::{Field, ModelConfig, RopeScaling};
use crate::error::{Error, Result};
use crate::layers::Activation;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Container {
    Ggml,
    GgmfV1,
    Ggjt(u32),
}

impl std::fmt::Display for Container {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Container::Ggml => write!(f, "unversioned GGML"),
            Container::GgmfV1 => write!(f, "GGMF v1"),
            Container::Ggjt(v) => write!(f, "GGJT v{v}"),
        }
    }
}

/// The seven hyper-parameters every GGML file starts with.
#[derive(Debug, Clone, Copy)]
pub struct HParams {
    pub n_vocab: usize,
    pub n_embd: usize,
    pub n_mult: usize,
    pub n_head: usize,
    pub n_layer: usize,
    pub n_rot: usize,
    pub ftype: u32,
}

struct TensorInfo {
    dtype: GgmlDType,
    /// transformers order: (rows, cols), or (len,)
    dims: Vec<usize>,
    offset: u64,
    /// Bytes in the file (old layouts can be larger than today's).
    bytes: usize,
    /// Q4_0 / Q4_1 / Q8_0 blocks with f32 scales (`ggjt` v2).
    f32_scales: bool,
}

pub struct GgmlFile {
    path: PathBuf,
    file: Mutex<std::fs::File>,
    pub container: Container,
    pub hparams: HParams,
    /// Under GGUF names.
    tensors: HashMap<String, TensorInfo>,
}

fn u32_at(r: &mut impl Read) -> std::io::Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_le_bytes(b))
}

/// llama.cpp's GGUF name for a GGML tensor name.
fn gguf_name(name: &str) -> Option<String> {
    let direct = match name {
        "tok_embeddings.weight" => Some("token_embd.weight"),
        "norm.weight" => Some("output_norm.weight"),
        "output.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(n) = direct {
        return Some(n.to_string());
    }
    let rest = name.strip_prefix("layers.")?;
    let (idx, sub) = rest.split_once('.')?;
    let part = match sub {
        "attention.wq.weight" => "attn_q.weight",
        "attention.wk.weight" => "attn_k.weight",
        "attention.wv.weight" => "attn_v.weight",
        "attention.wo.weight" => "attn_output.weight",
        "attention_norm.weight" => "attn_norm.weight",
        "feed_forward.w1.weight" => "ffn_gate.weight",
        "feed_forward.w2.weight" => "ffn_down.weight",
        "feed_forward.w3.weight" => "ffn_up.weight",
        "ffn_norm.weight" => "ffn_norm.weight",
        _ => return None,
    };
    Some(format!("blk.{idx}.{part}"))
}

/// The tensor type `id` as this container stored it: its candle type, its
/// bytes per block in the file, and whether its scales are f32.
fn stored_type(container: Container, id: u32, name: &str) -> std::result::Result<(GgmlDType, usize, bool), String> {
    let type_name = ggml_type_name(id);
    // Q8_1 (an activation type) and BF16 (GGUF only) were never stored in these containers.
    let dtype = match dtype_of(id).filter(|d| !matches!(d, GgmlDType::Q8_1 | GgmlDType::BF16)) {
        Some(d) => d,
        None => return Err(format!("tensor `{name}` has type {type_name} (id {id}), which {container} files never held")),
    };
    let quantized = !matches!(dtype, GgmlDType::F32 | GgmlDType::F16);
    let k_quant = id >= 10;
    match container {
        Container::Ggjt(3) => Ok((dtype, dtype.type_size(), false)),
        Container::Ggjt(2) if k_quant => {
            Err(format!("tensor `{name}` is {type_name}, but K-quants came with GGJT v3; a {container} file never held one"))
        }
        Container::Ggjt(2) => Ok(match dtype {
            GgmlDType::Q4_0 => (dtype, 4 + 16, true),
            GgmlDType::Q4_1 => (dtype, 8 + 16, true),
            GgmlDType::Q8_0 => (dtype, 4 + 32, true),
            _ => (dtype, dtype.type_size(), false),
        }),
        _ if k_quant => {
            Err(format!("tensor `{name}` is {type_name}, but K-quants came with GGJT v3; a {container} file never held one"))
        }
        _ if quantized => Err(format!(
            "tensor `{name}` is {type_name} in a {container} file: quantized blocks from before GGJT v2 use a layout \
             llama.cpp itself no longer reads (its converter refuses them too); convert the original weights again"
        )),
        _ => Ok((dtype, dtype.type_size(), false)),
    }
}

impl GgmlFile {
    pub fn open(path: &Path) -> Result<Self> {
        let mut file = std::fs::File::open(path).map_err(|e| Error::not_found(path, e.to_string()))?;
        let size = file.metadata().map_err(|e| Error::bad_file(path, e))?.len();
        let mut r = std::io::BufReader::new(&mut file);
        let bad = |why: String| Error::bad_file(path, why);
        let eof = |_| Error::bad_file(path, "truncated GGML file: the header ends early");
        let magic = u32_at(&mut r).map_err(eof)?;
        let container = match magic {
            0x6767_6d6c => Container::Ggml,
            0x6767_6d66 | 0x6767_6a74 => {
                let v = u32_at(&mut r).map_err(eof)?;
                match (magic, v) {
                    (0x6767_6d66, 1) => Container::GgmfV1,
                    (0x6767_6a74, 1..=3) => Container::Ggjt(v),
                    _ => {
                        let kind = if magic == 0x6767_6d66 { "GGMF" } else { "GGJT" };
                        return Err(bad(format!("{kind} version {v} does not exist (GGMF 1, GGJT 1-3 do)")));
                    }
                }
            }
            0x4655_4747 => return Err(bad("this is a GGUF file; load it with Which.GGUF".into())),
            _ => return Err(bad(format!("not a GGML file: bad magic {:?}", magic.to_le_bytes()))),
        };
        let mut h = [0usize; 7];
        for x in &mut h {
            *x = u32_at(&mut r).map_err(eof)? as usize;
        }
        let hparams =
            HParams { n_vocab: h[0], n_embd: h[1], n_mult: h[2], n_head: h[3], n_layer: h[4], n_rot: h[5], ftype: h[6] as u32 };
        if hparams.n_head == 0 || hparams.n_embd == 0 || !hparams.n_embd.is_multiple_of(hparams.n_head) || hparams.n_vocab == 0 {
            return Err(bad(format!("bad hyper-parameters {hparams:?}")));
        }
        let mut pos = match container {
            Container::Ggml => 4,
            _ => 8,
        } + 28u64;
        // The vocabulary: the tokenizer comes from tok_model_id, so it is only skipped.
        for _ in 0..hparams.n_vocab {
            let len = u32_at(&mut r).map_err(eof)? as u64;
            if len > 4096 {
                return Err(bad(format!("corrupt vocabulary: a {len}-byte token")));
            }
            let skip = len + if container == Container::Ggml { 0 } else { 4 };
            r.seek_relative(skip as i64).map_err(|e| bad(e.to_string()))?;
            pos += 4 + skip;
        }
        let mut tensors = HashMap::new();
        while pos < size {
            let head = (|| -> std::io::Result<(u32, u32, u32)> { Ok((u32_at(&mut r)?, u32_at(&mut r)?, u32_at(&mut r)?)) })()
                .map_err(|_| bad(format!("truncated GGML file: a tensor header at byte {pos} ends early")))?;
            let (n_dims, name_len, type_id) = head;
            if !(1..=4).contains(&n_dims) || name_len > 4096 {
                return Err(bad(format!("corrupt tensor header at byte {pos}")));
            }
            let mut dims = vec![0usize; n_dims as usize];
            for d in &mut dims {
                *d = u32_at(&mut r).map_err(|_| bad("truncated GGML file".into()))? as usize;
            }
            dims.reverse(); // innermost first in the file
            let mut name = vec![0u8; name_len as usize];
            r.read_exact(&mut name).map_err(|_| bad("truncated GGML file".into()))?;
            let name = String::from_utf8_lossy(&name).into_owned();
            pos += 12 + 4 * n_dims as u64 + name_len as u64;
            if matches!(container, Container::Ggjt(_)) {
                let pad = (32 - pos % 32) % 32;
                r.seek_relative(pad as i64).map_err(|e| bad(e.to_string()))?;
                pos += pad;
            }
            let (dtype, block_bytes, f32_scales) = stored_type(container, type_id, &name).map_err(bad)?;
            let elems = dims
                .iter()
                .try_fold(1usize, |acc, &d| acc.checked_mul(d))
                .filter(|&e| e > 0)
                .ok_or_else(|| bad(format!("tensor `{name}`: dims {dims:?} are empty or overflow")))?;
            let cols = *dims.last().unwrap_or(&0);
            if !cols.is_multiple_of(dtype.block_size()) {
                return Err(bad(format!("tensor `{name}`: rows of {cols} are not whole {} blocks", ggml_type_name(type_id))));
            }
            let bytes = (elems / dtype.block_size())
                .checked_mul(block_bytes)
                .ok_or_else(|| bad(format!("tensor `{name}`: dims {dims:?} overflow")))?;
            if pos.saturating_add(bytes as u64) > size {
                return Err(bad(format!(
                    "truncated GGML file: tensor `{name}` ends at byte {} but the file has {size} bytes",
                    pos + bytes as u64
                )));
            }
            let gname = gguf_name(&name)
                .ok_or_else(|| bad(format!("tensor `{name}` is not one of a llama model's (GGML files are llama-family)")))?;
            if tensors.insert(gname, TensorInfo { dtype, dims, offset: pos, bytes, f32_scales }).is_some() {
                return Err(bad(format!("duplicate tensor name `{name}`")));
            }
            r.seek_relative(bytes as i64).map_err(|e| bad(e.to_string()))?;
            pos += bytes as u64;
        }
        drop(r);
        Ok(Self { path: path.to_path_buf(), file: Mutex::new(file), container, hparams, tensors })
    }

    pub fn tensor_count(&self) -> usize {
        self.tensors.len()
    }

    /// Where a config field comes from: the header, the tensors' shapes, or
    /// (what GGML files lack) the tokenizer folder's config.json.
    pub fn field_name(f: Field) -> &'static str {
        match f {
            Field::Vocab => "n_vocab",
            Field::Hidden => "n_embd",
            Field::Heads => "n_head",
            Field::Layers => "n_layer",
            Field::RotaryDim => "n_rot",
            Field::Intermediate => "layers.0.feed_forward.w1.weight",
            Field::KvHeads | Field::HeadDim => "layers.0.attention.wk.weight",
            other => other.hf_key(),
        }
    }

    fn dims(&self, name: &str) -> Option<&[usize]> {
        self.tensors.get(name).map(|t| t.dims.as_slice())
    }

    /// The model config the hyper-parameters and tensor shapes imply. GGML
    /// files do not store the context length, norm epsilon or rope base: they
    /// come from `config` (the tokenizer folder's `config.json`) where given,
    /// else llama.cpp's converter defaults (2048, 5e-6, 10000).
    pub fn model_config(&self, config: Option<&serde_json::Value>) -> Result<ModelConfig> {
        let hp = self.hparams;
        let missing = |t: &str| Error::bad_file(&self.path, format!("tensor for `{t}` is missing"));
        let head_dim = hp.n_embd / hp.n_head;
        // The KV head count is not a hyper-parameter (llama.cpp's converter asks
        // for it); K's rows say it.
        let kv_rows = self.dims("blk.0.attn_k.weight").ok_or_else(|| missing("layers.0.attention.wk"))?[0];
        let inter = self.dims("blk.0.ffn_gate.weight").ok_or_else(|| missing("layers.0.feed_forward.w1"))?[0];
        let vocab = self.dims("token_embd.weight").ok_or_else(|| missing("tok_embeddings"))?[0];
        let kv_heads = kv_rows / head_dim;
        if kv_heads == 0 || !hp.n_head.is_multiple_of(kv_heads) {
            return Err(Error::bad_file(&self.path, format!("K has {kv_rows} rows, not a whole number of KV heads")));
        }
        let get = |k: &str| config.and_then(|c| c.get(k)).and_then(|v| v.as_f64());
        Ok(ModelConfig {
            arch: Architecture::Llama,
            vocab_size: vocab,
            hidden_size: hp.n_embd,
            intermediate_size: inter,
            num_layers: hp.n_layer,
            num_heads: hp.n_head,
            num_kv_heads: kv_heads,
            head_dim,
            norm_eps: get("rms_norm_eps").unwrap_or(5e-6),
            rope_theta: get("rope_theta").unwrap_or(10_000.0),
            rope_scaling: RopeScaling::None,
            max_position_embeddings: get("max_position_embeddings").map_or(2048, |v| v as usize),
            tie_word_embeddings: !self.tensors.contains_key("output.weight"),
            sliding_window: None,
            qkv_bias: false,
            o_bias: false,
            mlp_bias: false,
            rotary_dim: if hp.n_rot > 0 { hp.n_rot } else { head_dim },
            hidden_act: Activation::Silu,
            num_experts: 0,
            experts_per_token: 2,
            extras: Default::default(),
        })
    }
}

impl TensorFile for GgmlFile {
    fn path(&self) -> &Path {
        &self.path
    }

    fn has_tensor(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Legacy files are small and rare: read with plain reads, not mapped.
    fn stored(&self, name: &str) -> Result<StoredTensor<'_>> {
        let t = self.tensors.get(name).ok_or_else(|| Error::bad_file(&self.path, format!("tensor `{name}` is missing")))?;
        let mut data = vec![0u8; t.bytes];
        {
            let mut f = self.file.lock().map_err(|_| Error::runtime("GGML reader poisoned"))?;
            f.seek(SeekFrom::Start(t.offset))
                .and_then(|_| f.read_exact(&mut data))
                .map_err(|e| Error::bad_file(&self.path, format!("cannot read tensor `{name}`: {e}")))?;
        }
        if t.f32_scales {
            data = f16_scales(t.dtype, &data);
        }
        check_finite(t.dtype, &data).map_err(|why| Error::bad_file(&self.path, format!("tensor `{name}`: {why}")))?;
        Ok(StoredTensor::owned(t.dtype, t.dims.clone(), data))
    }
}

/// GGJT v2 Q4_0 / Q4_1 / Q8_0 blocks (f32 scales) in today's layout (f16 scales).
fn f16_scales(dtype: GgmlDType, old: &[u8]) -> Vec<u8> {
    let (scales, payload) = match dtype {
        GgmlDType::Q4_0 => (1, 16),
        GgmlDType::Q4_1 => (2, 16),
        _ => (1, 32), // Q8_0
    };
    let old_block = 4 * scales + payload;
    let mut out = Vec::with_capacity(old.len() / old_block * (2 * scales + payload));
    for b in old.chunks_exact(old_block) {
        for s in 0..scales {
            let v = f32::from_le_bytes([b[4 * s], b[4 * s + 1], b[4 * s + 2], b[4 * s + 3]]);
            out.extend_from_slice(&half::f16::from_f32(v).to_le_bytes());
        }
        out.extend_from_slice(&b[4 * scales..]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ggml_names_map_to_gguf_names() {
        assert_eq!(gguf_name("layers.3.attention.wk.weight").as_deref(), Some("blk.3.attn_k.weight"));
        assert_eq!(gguf_name("layers.0.feed_forward.w2.weight").as_deref(), Some("blk.0.ffn_down.weight"));
        assert_eq!(gguf_name("tok_embeddings.weight").as_deref(), Some("token_embd.weight"));
        assert_eq!(gguf_name("layers.0.mlp.fc1.weight"), None);
    }

    #[test]
    fn type_and_version_pairs() {
        assert!(stored_type(Container::Ggjt(3), 12, "w").is_ok());
        assert!(stored_type(Container::Ggjt(2), 12, "w").unwrap_err().contains("GGJT v3"));
        assert_eq!(stored_type(Container::Ggjt(2), 2, "w").unwrap(), (GgmlDType::Q4_0, 20, true));
        assert!(stored_type(Container::Ggjt(1), 2, "w").unwrap_err().contains("before GGJT v2"));
        assert!(stored_type(Container::Ggml, 1, "w").is_ok());
        assert!(stored_type(Container::Ggjt(3), 4, "w").unwrap_err().contains("Q4_2"));
    }

    #[test]
    fn v2_scales_become_f16() {
        let mut old = 0.5f32.to_le_bytes().to_vec();
        old.extend(0u8..32);
        let new = f16_scales(GgmlDType::Q8_0, &old);
        assert_eq!(new.len(), 34);
        assert_eq!(half::f16::from_le_bytes([new[0], new[1]]).to_f32(), 0.5);
        assert_eq!(&new[2..], &old[4..]);
    }
}
