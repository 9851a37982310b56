//! From a model spec (what the Python `Which` names) to a loaded model with
//! its tokenizer, chat template and end-of-sequence tokens.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device};

use crate::adapters::{AdapterInfo, AdapterSet, AdapterSpec};
use crate::architecture::Architecture;
use crate::chat_template::{template_from_config, token_text, ChatTemplate, TemplateOverride};
use crate::error::{Error, Result};
use crate::hub::{ModelRepo, TokenSource};
use crate::config::{Field, ModelConfig};
use crate::models::{self, CausalLm};
use crate::tokenizer::{gguf::from_gguf, TextTokenizer};
use crate::weights::ggml::GgmlFile;
use crate::weights::gguf::{model_config, GgufFile, GgufSource};
use crate::weights::isq::QuantizingSource;
use crate::weights::safetensors::SafetensorsSource;
use crate::weights::tensor_file::TensorFile;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    Gguf,
    Ggml,
}

#[derive(Debug, Clone)]
pub enum ModelSpec {
    /// `model_id` None: the base the adapters' ordering file names.
    Plain { model_id: Option<String>, arch: Architecture, tokenizer_json: Option<String>, adapters: Option<AdapterSpec> },
    /// A llama.cpp file: GGUF, or legacy GGML (llama family, whose tokenizer
    /// comes from `tok_model_id` or `tokenizer_json`).
    File {
        format: FileFormat,
        tok_model_id: Option<String>,
        quantized_model_id: String,
        quantized_filename: String,
        tokenizer_json: Option<String>,
        adapters: Option<AdapterSpec>,
    },
}

#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub token_source: TokenSource,
    /// `Runner(chat_template=...)`: a path or a literal template.
    pub chat_template: Option<String>,
    pub device: Device,
    /// `Runner(in_situ_quant=...)`: quantize the weights to this type at load.
    pub in_situ_quant: Option<GgmlDType>,
    /// `Runner(dtype=...)`: the compute dtype of dense weights, activations
    /// and the KV cache; None picks it (`compute_dtype`).
    pub dtype: Option<DType>,
}

/// The compute dtype: the one asked for, else f32 on the CPU (where the
/// engine's own kernels run and bf16 has no fast path) and the checkpoint's
/// dtype on an accelerator. llama.cpp files name no dtype: their dense
/// tensors and activations are f32 there too, as llama.cpp computes them.
pub fn compute_dtype(asked: Option<DType>, device: &Device, checkpoint: Option<DType>) -> DType {
    match asked {
        Some(d) => d,
        None if device.is_cpu() => DType::F32,
        None => checkpoint.unwrap_or(DType::F32),
    }
}

/// `torch_dtype` (transformers 4) or `dtype` (transformers 5) of a
/// config.json, or of its `text_config`. float64 checkpoints run as f32.
fn checkpoint_dtype(config: &serde_json::Value) -> Option<DType> {
    let named = |v: &serde_json::Value| v.get("torch_dtype").or_else(|| v.get("dtype")).and_then(|d| d.as_str()).map(str::to_string);
    let name = named(config).or_else(|| config.get("text_config").and_then(named))?;
    match name.trim_start_matches("torch.") {
        "bfloat16" => Some(DType::BF16),
        "float16" | "half" => Some(DType::F16),
        "float32" | "float" | "float64" | "double" => Some(DType::F32),
        _ => None,
    }
}

pub struct LoadedModel {
    pub model: Box<dyn CausalLm>,
    pub tokenizer: TextTokenizer,
    pub chat_template: Option<ChatTemplate>,
    pub eos_ids: Vec<u32>,
    pub context_len: usize,
    pub adapters: Option<AdapterInfo>,
    /// The compute dtype the model was built in.
    pub dtype: DType,
    /// What the checkpoint's config.json names (None for llama.cpp files).
    pub checkpoint_dtype: Option<DType>,
}

/// What a tokenizer folder (`tokenizer_config.json`, `generation_config.json`) says.
#[derive(Default)]
struct TokenizerFolder {
    tokenizer_json: Option<PathBuf>,
    chat_template: Option<String>,
    bos: Option<String>,
    eos: Option<String>,
    eos_ids: Vec<u32>,
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::not_found(path, e.to_string()))?;
    serde_json::from_str(&text).map_err(|e| Error::bad_file(path, format!("invalid JSON: {e}")))
}

fn read_tokenizer_folder(repo: &ModelRepo) -> Result<TokenizerFolder> {
    let mut f = TokenizerFolder { tokenizer_json: repo.get_optional("tokenizer.json")?, ..Default::default() };
    if let Some(p) = repo.get_optional("tokenizer_config.json")? {
        let v = read_json(&p)?;
        f.chat_template = v.get("chat_template").and_then(template_from_config);
        f.bos = v.get("bos_token").and_then(token_text);
        f.eos = v.get("eos_token").and_then(token_text);
    }
    if let Some(p) = repo.get_optional("generation_config.json")? {
        let v = read_json(&p)?;
        match v.get("eos_token_id") {
            Some(serde_json::Value::Number(n)) => f.eos_ids.extend(n.as_u64().map(|x| x as u32)),
            Some(serde_json::Value::Array(a)) => f.eos_ids.extend(a.iter().filter_map(|x| x.as_u64()).map(|x| x as u32)),
            _ => {}
        }
    }
    Ok(f)
}

fn progress_bar(layers: usize) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::with_draw_target(Some(layers as u64), indicatif::ProgressDrawTarget::stderr());
    if let Ok(style) = indicatif::ProgressStyle::with_template("loading layers {bar:30} {pos}/{len} [{elapsed}]") {
        bar.set_style(style);
    }
    bar
}

/// Builds the architecture from `weights`, with the adapters where there are some.
fn build(
    cfg: &ModelConfig,
    weights: &dyn crate::weights::WeightSource,
    adapters: Option<&AdapterSet>,
    isq: Option<GgmlDType>,
    device: &Device,
) -> Result<(Box<dyn CausalLm>, Option<AdapterInfo>)> {
    let bar = progress_bar(cfg.num_layers);
    let progress = |i: usize| bar.set_position(i as u64);
    let built = match (adapters, isq) {
        (Some(a), _) => a.load_model(cfg, weights, isq, device, &progress).map(|(m, info)| (m, Some(info))),
        (None, Some(t)) => models::load(cfg, &QuantizingSource::new(weights, t), device, &progress).map(|m| (m, None)),
        (None, None) => models::load(cfg, weights, device, &progress).map(|m| (m, None)),
    };
    bar.finish_and_clear();
    built
}

pub fn load(spec: &ModelSpec, opts: &LoadOptions) -> Result<LoadedModel> {
    let device = &opts.device;
    // A reload (`send_re_isq`) runs on whichever thread asks for it.
    crate::device::bind_thread(device)?;
    let adapter_spec = match spec {
        ModelSpec::Plain { adapters, .. } | ModelSpec::File { adapters, .. } => adapters.as_ref(),
    };
    let adapters = adapter_spec.map(|a| AdapterSet::read(a, &opts.token_source, device)).transpose()?;
    // llama.cpp files name no dtype; a plain checkpoint's config.json does.
    let mut dtype = compute_dtype(opts.dtype, device, None);
    let mut checkpoint = None;
    let (cfg, (model, adapter_info), folder, gguf_vocab) = match spec {
        ModelSpec::Plain { model_id, arch, .. } => {
            let model_id = match (model_id, adapters.as_ref().and_then(|a| a.base_model_id())) {
                (Some(id), _) => id.clone(),
                (None, Some(id)) => id,
                (None, None) => {
                    return Err(Error::invalid("model_id is None and the ordering file names no base_model_id"))
                }
            };
            let repo = ModelRepo::open(&model_id, &opts.token_source)?;
            let config_path = repo.get("config.json")?;
            let cfg = ModelConfig::from_hf_json(&config_path, *arch)?;
            checkpoint = checkpoint_dtype(&read_json(&config_path)?);
            dtype = compute_dtype(opts.dtype, device, checkpoint);
            let files = safetensors_files(&repo)?;
            let weights = SafetensorsSource::open(&files, device, dtype)?;
            check_config(&cfg, weights.tensor_count(), &weights, &config_path, &|f| f.hf_key().to_string())?;
            (cfg.clone(), build(&cfg, &weights, adapters.as_ref(), opts.in_situ_quant, device)?, read_tokenizer_folder(&repo)?, None)
        }
        ModelSpec::File { format: FileFormat::Gguf, tok_model_id, quantized_model_id, quantized_filename, .. } => {
            let repo = ModelRepo::open(quantized_model_id, &opts.token_source)?;
            let file = Arc::new(GgufFile::open(&repo.get(quantized_filename)?)?);
            let cfg = model_config(&file)?;
            let arch = file.architecture()?.to_string();
            let weights = GgufSource::new(file.clone(), &cfg, device, dtype)?;
            check_config(&cfg, file.tensor_count(), &weights, &file.path, &|f| match f {
                Field::Vocab => "token_embd.weight".to_string(),
                _ => format!("{arch}.{}", f.gguf_key()),
            })?;
            let folder = match tok_model_id {
                Some(id) => read_tokenizer_folder(&ModelRepo::open(id, &opts.token_source)?)?,
                None => TokenizerFolder::default(),
            };
            // The GGUF vocabulary is needed when no tokenizer.json is given, and
            // its chat template / EOS ids complete what a folder lacks. It is
            // built on a thread of its own while the weights are repacked:
            // the two take about as long for a 150k vocabulary, and neither
            // holds much memory beyond what it keeps.
            let (vocab, model) = std::thread::scope(|s| {
                let vocab = file
                    .get_str("tokenizer.ggml.model")
                    .is_some()
                    .then(|| s.spawn(|| from_gguf(&file)));
                let model = build(&cfg, &weights, adapters.as_ref(), opts.in_situ_quant, device);
                let vocab = vocab.map(|h| h.join().unwrap_or_else(|_| Err(Error::runtime("the GGUF tokenizer build panicked"))));
                (vocab, model)
            });
            (cfg, model?, folder, vocab)
        }
        ModelSpec::File { format: FileFormat::Ggml, tok_model_id, quantized_model_id, quantized_filename, .. } => {
            let repo = ModelRepo::open(quantized_model_id, &opts.token_source)?;
            let file = Arc::new(GgmlFile::open(&repo.get(quantized_filename)?)?);
            // What the GGML header lacks (context, norm epsilon, rope base) comes
            // from the tokenizer folder's config.json where there is one.
            let tok_repo = tok_model_id.as_deref().map(|id| ModelRepo::open(id, &opts.token_source)).transpose()?;
            let config = match &tok_repo {
                Some(r) => r.get_optional("config.json")?.map(|p| read_json(&p)).transpose()?,
                None => None,
            };
            let cfg = file.model_config(config.as_ref())?;
            let weights = GgufSource::with_layout(file.clone(), true, false, &cfg, device, dtype);
            check_config(&cfg, file.tensor_count(), &weights, file.path(), &|f| GgmlFile::field_name(f).to_string())?;
            let model = build(&cfg, &weights, adapters.as_ref(), opts.in_situ_quant, device)?;
            let folder = match &tok_repo {
                Some(r) => read_tokenizer_folder(r)?,
                None => TokenizerFolder::default(),
            };
            (cfg, model, folder, None)
        }
    };

    let tokenizer_json = match spec {
        ModelSpec::Plain { tokenizer_json, .. } | ModelSpec::File { tokenizer_json, .. } => tokenizer_json,
    };
    let gguf_vocab = match (gguf_vocab, tokenizer_json.is_some() || folder.tokenizer_json.is_some()) {
        (Some(Err(e)), false) => return Err(e),
        (Some(Ok(v)), _) => Some(v),
        _ => None,
    };
    let (gguf_tokenizer, gguf_bos, gguf_eos, gguf_eos_ids, gguf_template) = match gguf_vocab {
        Some(v) => (Some(v.tokenizer), v.bos, v.eos, v.eos_ids, v.chat_template),
        None => (None, None, None, Vec::new(), None),
    };
    let tokenizer = match (tokenizer_json, &folder.tokenizer_json) {
        (Some(p), _) => TextTokenizer::from_file(Path::new(p))?,
        (None, Some(p)) => TextTokenizer::from_file(p)?,
        (None, None) => match gguf_tokenizer {
            Some(t) => t,
            None => {
                return Err(match spec {
                    ModelSpec::Plain { model_id, .. } => Error::not_found(
                        Path::new(model_id.as_deref().unwrap_or(".")).join("tokenizer.json"),
                        "the model folder has no tokenizer.json; pass tokenizer_json",
                    ),
                    ModelSpec::File { format: FileFormat::Gguf, quantized_filename, .. } => Error::invalid(format!(
                        "{quantized_filename}: no tokenizer in the GGUF metadata; pass tok_model_id or tokenizer_json"
                    )),
                    ModelSpec::File { format: FileFormat::Ggml, quantized_filename, .. } => Error::invalid(format!(
                        "{quantized_filename}: GGML files are loaded with the tokenizer of tok_model_id (a folder or \
                         hub repo with tokenizer.json) or tokenizer_json"
                    )),
                })
            }
        },
    };

    let over = opts.chat_template.as_deref().map(TemplateOverride::parse).transpose()?;
    let template = over.as_ref().map(|o| o.template.clone()).or(folder.chat_template.clone()).or(gguf_template);
    let bos = over.as_ref().and_then(|o| o.bos_token.clone()).or(folder.bos.clone()).or(gguf_bos);
    let eos = over.as_ref().and_then(|o| o.eos_token.clone()).or(folder.eos.clone()).or(gguf_eos);

    // Every EOS the files name ends generation.
    let mut eos_ids = folder.eos_ids.clone();
    eos_ids.extend(eos.as_deref().and_then(|e| tokenizer.token_id(e)));
    eos_ids.extend(gguf_eos_ids);
    eos_ids.sort_unstable();
    eos_ids.dedup();

    let chat_template = template
        .map(|t| ChatTemplate::new(t, bos.unwrap_or_default(), eos.unwrap_or_default()))
        .transpose()?;
    if tokenizer.vocab_size() > cfg.vocab_size {
        // Padded embedding tables are common; a tokenizer larger than the
        // model's vocabulary is not, and would index past the embeddings.
        return Err(Error::invalid(format!(
            "the tokenizer has {} tokens but the model's vocabulary has {}",
            tokenizer.vocab_size(),
            cfg.vocab_size
        )));
    }
    Ok(LoadedModel {
        context_len: cfg.max_position_embeddings,
        model,
        tokenizer,
        chat_template,
        eos_ids,
        adapters: adapter_info,
        dtype,
        checkpoint_dtype: checkpoint,
    })
}

/// The config's sizes checked before anything is built from them: in
/// range, consistent, and no more layers than the weights hold (nor fewer:
/// a layer the config leaves out would be silently skipped).
fn check_config(
    cfg: &ModelConfig,
    tensors: usize,
    weights: &dyn crate::weights::WeightSource,
    path: &Path,
    name: &dyn Fn(Field) -> String,
) -> Result<()> {
    cfg.validate(tensors, name).map_err(|why| Error::bad_file(path, why))?;
    let n = cfg.num_layers;
    if weights.has_module(&format!("model.layers.{n}.input_layernorm")) {
        return Err(Error::bad_file(
            path,
            format!("`{}` is {n}, but the weights hold a layer {n} too", name(Field::Layers)),
        ));
    }
    Ok(())
}

fn safetensors_files(repo: &ModelRepo) -> Result<Vec<PathBuf>> {
    if let Some(p) = repo.get_optional("model.safetensors")? {
        return Ok(vec![p]);
    }
    let index = repo.get_optional("model.safetensors.index.json")?.ok_or_else(|| {
        Error::not_found(repo.describe(), "neither model.safetensors nor model.safetensors.index.json is there")
    })?;
    let v = read_json(&index)?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| Error::bad_file(&index, "no `weight_map` object"))?;
    let mut shards: Vec<&str> = map.values().filter_map(|s| s.as_str()).collect();
    shards.sort_unstable();
    shards.dedup();
    shards.into_iter().map(|s| repo.get(s)).collect()
}
