//! LoRA and X-LoRA adapters over any base (safetensors, GGUF, GGML): read
//! the adapter files, then build the architecture through a weight source
//! that merges or attaches them (`source.rs`), wrapping the model in X-LoRA's
//! two-pass forward where asked (`xlora.rs`).

pub mod files;
pub mod source;
pub mod xlora;

use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use candle_core::quantized::GgmlDType;
use candle_core::Device;

use crate::error::{Error, Result};
use crate::hub::{ModelRepo, TokenSource};
use crate::config::ModelConfig;
use crate::models::{self, CausalLm};
use crate::weights::isq::QuantizingSource;
use crate::weights::WeightSource;
use files::{Adapter, Ordering};
use source::{AdaptedSource, Attach};
use xlora::{Classifier, XLoraConfig, XLoraModel};

/// The adapter half of an adapter `Which` variant.
#[derive(Debug, Clone)]
pub enum AdapterSpec {
    Lora { adapters_model_id: String, order: String },
    XLora { xlora_model_id: String, order: String, tgt_non_granular_index: Option<usize> },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdapterMode {
    /// Added into the weights at load; nothing to switch.
    Merged,
    /// Kept apart; each request picks its set.
    Unmerged,
    /// Mixed per token by the X-LoRA classifier.
    XLora,
}

/// What the runner knows of a model's adapters.
#[derive(Debug, Clone)]
pub struct AdapterInfo {
    pub mode: AdapterMode,
    /// Every loaded adapter: the ordering file's `order`, then `preload_adapters`.
    pub names: Vec<String>,
    /// The set requests get unless they name one: `order`.
    pub default_active: Vec<usize>,
    /// X-LoRA's scaling passes so far (one per sequence per step that ran it).
    pub scaling_passes: Option<Arc<AtomicU64>>,
}

/// The adapter files, read and checked, before the base model is built.
pub struct AdapterSet {
    ordering: Ordering,
    adapters: Vec<Adapter>,
    mode: AdapterMode,
    xlora: Option<(XLoraConfig, std::path::PathBuf, Option<usize>)>,
}

impl AdapterSet {
    pub fn read(spec: &AdapterSpec, tokens: &TokenSource, device: &Device) -> Result<Self> {
        let (repo_id, order) = match spec {
            AdapterSpec::Lora { adapters_model_id, order } => (adapters_model_id, order),
            AdapterSpec::XLora { xlora_model_id, order, .. } => (xlora_model_id, order),
        };
        let ordering = Ordering::read(Path::new(order))?;
        let mut adapters = Vec::new();
        for name in &ordering.order {
            adapters.push(Adapter::load(name, repo_id, tokens, device)?);
        }
        let preload = ordering.preload_adapters.clone().unwrap_or_default();
        let (mode, xlora) = match spec {
            AdapterSpec::Lora { .. } if preload.is_empty() => (AdapterMode::Merged, None),
            AdapterSpec::Lora { .. } => {
                for p in &preload {
                    adapters.push(Adapter::load(&p.name, &ordering.resolve_id(&p.adapter_model_id), tokens, device)?);
                }
                (AdapterMode::Unmerged, None)
            }
            AdapterSpec::XLora { tgt_non_granular_index, .. } => {
                if !preload.is_empty() {
                    return Err(Error::invalid(format!(
                        "{order}: `preload_adapters` is for LoRA; X-LoRA mixes the adapters of `order`"
                    )));
                }
                if ordering.layers.as_ref().is_none_or(|l| l.is_empty()) {
                    return Err(Error::invalid(format!(
                        "{order}: X-LoRA needs `layers`, numbering every adapted module"
                    )));
                }
                let repo = ModelRepo::open(repo_id, tokens)?;
                let missing = |f: &str| Error::invalid(format!("X-LoRA model {}: `{f}` is missing", repo.describe()));
                let cfg_path = repo.get_optional("xlora_config.json")?.ok_or_else(|| missing("xlora_config.json"))?;
                let classifier =
                    repo.get_optional("xlora_classifier.safetensors")?.ok_or_else(|| missing("xlora_classifier.safetensors"))?;
                (AdapterMode::XLora, Some((XLoraConfig::read(&cfg_path)?, classifier, *tgt_non_granular_index)))
            }
        };
        Ok(Self { ordering, adapters, mode, xlora })
    }

    /// The base model the ordering file (or X-LoRA config) names.
    pub fn base_model_id(&self) -> Option<String> {
        let id = self
            .ordering
            .base_model_id
            .clone()
            .or_else(|| self.xlora.as_ref().and_then(|(c, _, _)| c.base_model_id.clone()))?;
        Some(self.ordering.resolve_id(&id))
    }

    /// Builds the architecture over `base` with the adapters merged or attached.
    pub fn load_model(
        &self,
        cfg: &ModelConfig,
        base: &dyn WeightSource,
        isq: Option<GgmlDType>,
        device: &Device,
        progress: &dyn Fn(usize),
    ) -> Result<(Box<dyn CausalLm>, AdapterInfo)> {
        let attach = if self.mode == AdapterMode::Merged { Attach::Merged } else { Attach::Unmerged };
        let numbers = if self.mode == AdapterMode::XLora { self.ordering.layers.as_ref() } else { None };
        let source = AdaptedSource::new(base, &self.adapters, attach, numbers, cfg.arch)?;
        // In-situ quantization wraps the adapters, so merged deltas are quantized with the base.
        let model = match isq {
            Some(t) => models::load(cfg, &QuantizingSource::new(&source, t), device, progress)?,
            None => models::load(cfg, &source, device, progress)?,
        };
        source.check_all_used()?;
        let mut info = AdapterInfo {
            mode: self.mode,
            names: self.adapters.iter().map(|a| a.name.clone()).collect(),
            default_active: (0..self.ordering.order.len()).collect(),
            scaling_passes: None,
        };
        let Some((xcfg, classifier_path, tgt)) = &self.xlora else { return Ok((model, info)) };
        if xcfg.hidden_size != cfg.hidden_size {
            return Err(Error::invalid(format!(
                "xlora_config.json: hidden_size {} does not match the base model's {}",
                xcfg.hidden_size, cfg.hidden_size
            )));
        }
        let n_layers = numbers.map_or(0, |n| n.len());
        if let Some(n) = numbers {
            if let Some((m, i)) = n.iter().find(|(_, &i)| i >= n_layers) {
                return Err(Error::invalid(format!(
                    "{}: `layers` numbers `{m}` as {i}, but has only {n_layers} entries (numbers must be 0..{n_layers})",
                    self.ordering.path.display()
                )));
            }
        }
        if let Some(k) = xcfg.top_k_lora {
            if k == 0 || k > self.adapters.len() {
                return Err(Error::invalid(format!("xlora_config.json: top_k_lora {k} is not in 1..={}", self.adapters.len())));
            }
        }
        let classifier = Classifier::load(classifier_path, xcfg, self.adapters.len(), n_layers, device)?;
        let x = XLoraModel::new(model, classifier, xcfg.clone(), self.adapters.len(), n_layers, *tgt);
        info.scaling_passes = Some(x.pass_counter());
        Ok((Box::new(x), info))
    }
}
