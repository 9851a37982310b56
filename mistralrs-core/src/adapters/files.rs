//! The files of an adapter set (SPEC §3): the ordering file, and per adapter
//! PEFT's `adapter_config.json` and `adapter_model.safetensors`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::hub::{ModelRepo, TokenSource};
use crate::weights::safetensors::check_header;

/// The ordering file: which adapters, in which order, over which base.
#[derive(Debug, Clone, Deserialize)]
pub struct Ordering {
    #[serde(default)]
    pub base_model_id: Option<String>,
    pub order: Vec<String>,
    /// Every adapted module, numbered in PEFT's `named_modules()` order.
    #[serde(default)]
    pub layers: Option<HashMap<String, usize>>,
    #[serde(default)]
    pub preload_adapters: Option<Vec<PreloadAdapter>>,
    #[serde(skip)]
    pub path: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PreloadAdapter {
    pub name: String,
    pub adapter_model_id: String,
}

impl Ordering {
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::not_found(path, format!("ordering file: {e}")))?;
        let mut o: Ordering = serde_json::from_str(&text)
            .map_err(|e| Error::bad_file(path, format!("not a valid ordering file: {e}")))?;
        if o.order.is_empty() && o.preload_adapters.as_ref().is_none_or(|p| p.is_empty()) {
            return Err(Error::bad_file(path, "the ordering file names no adapters (`order` is empty)"));
        }
        let mut seen = std::collections::HashSet::new();
        for n in o.order.iter().chain(o.preload_adapters.iter().flatten().map(|p| &p.name)) {
            if !seen.insert(n.as_str()) {
                return Err(Error::bad_file(path, format!("adapter `{n}` is named twice")));
            }
        }
        o.path = path.to_path_buf();
        Ok(o)
    }

    /// A repo id from the ordering file: a relative path is taken relative to
    /// the ordering file's folder when something is there.
    pub fn resolve_id(&self, id: &str) -> String {
        let p = Path::new(id);
        if p.is_relative() {
            if let Some(dir) = self.path.parent() {
                let near = dir.join(p);
                if near.exists() {
                    return near.display().to_string();
                }
            }
        }
        id.to_string()
    }
}

/// PEFT's `adapter_config.json`, the fields that change the computation.
/// Other fields (written by PEFT or other tools) are ignored.
#[derive(Debug, Clone, Deserialize)]
pub struct LoraConfig {
    pub r: usize,
    pub lora_alpha: f64,
    #[serde(default)]
    pub target_modules: Option<serde_json::Value>,
    #[serde(default)]
    pub use_rslora: bool,
    /// Only describes how the base layer stores its weight (GPT-2's Conv1D);
    /// PEFT's A and B are (r, in) and (out, r) either way.
    #[serde(default)]
    pub fan_in_fan_out: bool,
    #[serde(default = "bias_none")]
    pub bias: String,
    #[serde(default)]
    pub use_dora: bool,
    #[serde(default)]
    pub lora_bias: bool,
    #[serde(default)]
    pub rank_pattern: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default)]
    pub alpha_pattern: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default)]
    pub modules_to_save: Option<Vec<String>>,
}

fn bias_none() -> String {
    "none".into()
}

/// One LoRA adapter: its scale and, per adapted module, A (r, in) and B (out, r).
#[derive(Debug)]
pub struct Adapter {
    pub name: String,
    pub scale: f64,
    pub rank: usize,
    /// Module name (`model.layers.0.self_attn.q_proj`) -> (A, B), in module order.
    pub modules: BTreeMap<String, (Tensor, Tensor)>,
}

impl Adapter {
    /// Reads adapter `name` from `repo` (`<name>/adapter_config.json`, or the
    /// repo's root files when it holds a single adapter).
    pub fn load(name: &str, repo_id: &str, tokens: &TokenSource, device: &Device) -> Result<Self> {
        let missing = |why: String| Error::invalid(format!("adapter `{name}`: {why}"));
        let repo = ModelRepo::open(repo_id, tokens).map_err(|e| missing(format!("cannot open `{repo_id}`: {e}")))?;
        let (cfg_path, weights_path) = match repo.get_optional(&format!("{name}/adapter_config.json"))? {
            Some(c) => (c, repo.get_optional(&format!("{name}/adapter_model.safetensors"))?),
            None => match repo.get_optional("adapter_config.json")? {
                Some(c) if !Path::new(repo_id).join(name).exists() => (c, repo.get_optional("adapter_model.safetensors")?),
                _ => {
                    return Err(missing(format!(
                        "no `{name}/adapter_config.json` in {} (is the adapter name in the ordering file right?)",
                        repo.describe()
                    )))
                }
            },
        };
        let weights_path = weights_path
            .ok_or_else(|| missing(format!("`adapter_model.safetensors` is missing beside {}", cfg_path.display())))?;
        let cfg = read_config(name, &cfg_path)?;
        let modules = read_tensors(name, &cfg, &weights_path, device)?;
        let scale = if cfg.use_rslora { cfg.lora_alpha / (cfg.r as f64).sqrt() } else { cfg.lora_alpha / cfg.r as f64 };
        Ok(Self { name: name.to_string(), scale, rank: cfg.r, modules })
    }
}

fn read_config(name: &str, path: &Path) -> Result<LoraConfig> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::not_found(path, e.to_string()))?;
    let cfg: LoraConfig = serde_json::from_str(&text)
        .map_err(|e| Error::invalid(format!("adapter `{name}`: {}: invalid adapter_config.json: {e}", path.display())))?;
    let refuse = |field: &str, why: &str| Err(Error::invalid(format!("adapter `{name}`: `{field}` {why} is not supported")));
    if cfg.r == 0 {
        return refuse("r", "= 0");
    }
    if cfg.use_dora {
        return refuse("use_dora", "= true (DoRA)");
    }
    if cfg.bias != "none" {
        return refuse("bias", &format!("= \"{}\" (only \"none\")", cfg.bias));
    }
    if cfg.lora_bias {
        return refuse("lora_bias", "= true");
    }
    if cfg.rank_pattern.as_ref().is_some_and(|m| !m.is_empty()) {
        return refuse("rank_pattern", "(per-module ranks)");
    }
    if cfg.alpha_pattern.as_ref().is_some_and(|m| !m.is_empty()) {
        return refuse("alpha_pattern", "(per-module alphas)");
    }
    if cfg.modules_to_save.as_ref().is_some_and(|m| !m.is_empty()) {
        return refuse("modules_to_save", "(fully trained copies of base modules)");
    }
    Ok(cfg)
}

/// PEFT's names: `base_model.model.<module>.lora_A.weight` (or with the
/// adapter's name before `.weight`, as unsaved state dicts have it).
fn split_name(key: &str) -> Option<(&str, bool)> {
    let key = key.strip_prefix("base_model.model.").unwrap_or(key);
    let (module, rest) = key.split_once(".lora_A.").map(|(m, r)| (m, (r, true))).or_else(|| {
        key.split_once(".lora_B.").map(|(m, r)| (m, (r, false)))
    })?;
    rest.0.ends_with("weight").then_some((module, rest.1))
}

fn read_tensors(name: &str, cfg: &LoraConfig, path: &Path, device: &Device) -> Result<BTreeMap<String, (Tensor, Tensor)>> {
    check_header(path)?;
    let all = candle_core::safetensors::load(path, device).map_err(|e| Error::bad_file(path, e))?;
    let mut a_of = HashMap::new();
    let mut b_of = HashMap::new();
    for (key, t) in all {
        let Some((module, is_a)) = split_name(&key) else {
            return Err(Error::invalid(format!(
                "adapter `{name}`: tensor `{key}` in {} is not a LoRA A/B weight",
                path.display()
            )));
        };
        let t = t.to_dtype(DType::F32)?;
        if is_a { a_of.insert(module.to_string(), t) } else { b_of.insert(module.to_string(), t) };
    }
    let targets: Option<Vec<String>> = match &cfg.target_modules {
        Some(serde_json::Value::Array(a)) => Some(a.iter().filter_map(|v| v.as_str().map(String::from)).collect()),
        Some(serde_json::Value::String(s)) if s.chars().all(|c| c.is_alphanumeric() || c == '_') => Some(vec![s.clone()]),
        _ => None, // a regex, or absent: the tensors say which modules
    };
    let mut modules = BTreeMap::new();
    for (module, a) in a_of {
        let b = b_of
            .remove(&module)
            .ok_or_else(|| Error::invalid(format!("adapter `{name}`: `{module}` has lora_A but no lora_B")))?;
        let leaf = module.rsplit('.').next().unwrap_or(&module);
        if let Some(t) = &targets {
            if !t.iter().any(|x| x == leaf || module.ends_with(&format!(".{x}")) || *x == module) {
                return Err(Error::invalid(format!(
                    "adapter `{name}`: weights for `{module}`, which `target_modules` {t:?} does not name"
                )));
            }
        }
        let (ra, _) = a.dims2().map_err(|_| Error::invalid(format!("adapter `{name}`: `{module}.lora_A` is not a matrix")))?;
        let (_, rb) = b.dims2().map_err(|_| Error::invalid(format!("adapter `{name}`: `{module}.lora_B` is not a matrix")))?;
        if ra != cfg.r || rb != cfg.r {
            return Err(Error::invalid(format!(
                "adapter `{name}`: rank mismatch at `{module}`: lora_A has {ra} rows, lora_B {rb} columns, adapter_config.json says r = {}",
                cfg.r
            )));
        }
        modules.insert(module, (a, b));
    }
    if let Some(module) = b_of.keys().next() {
        return Err(Error::invalid(format!("adapter `{name}`: `{module}` has lora_B but no lora_A")));
    }
    if modules.is_empty() {
        return Err(Error::invalid(format!("adapter `{name}`: {} holds no LoRA weights", path.display())));
    }
    Ok(modules)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peft_tensor_names() {
        assert_eq!(split_name("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"), Some(("model.layers.0.self_attn.q_proj", true)));
        assert_eq!(split_name("base_model.model.model.layers.1.mlp.down_proj.lora_B.default.weight"), Some(("model.layers.1.mlp.down_proj", false)));
        assert_eq!(split_name("base_model.model.lm_head.weight"), None);
    }
}
