//! X-LoRA (SPEC §3): a classifier reads the base model's final hidden state
//! of every token and mixes the adapters per token (and per adapted layer).
//!
//! Each step runs the model twice over the same new tokens: a scaling pass
//! with every adapter at `scaling_pass_value` (0: the base model) whose
//! normed hidden states feed the classifier, then the real pass with the
//! classifier's scalings. Each pass keeps its own KV cache (layers `L..2L` of
//! the sequence's cache hold the scaling pass's), so past tokens keep the
//! scalings they were computed with, as PEFT's full recompute gives them.
//!
//! Scalings follow PEFT's `XLoraClassifier` / `XLoraLayer`:
//! softmax(logits / temperature) over adapters (when `enable_softmax`), then
//! per layer the top-k mask (`top_k_lora`) and, with `enable_softmax_topk`, a
//! softmax over the kept ones; every adapter's output is then multiplied by
//! its scaling and by `global_scaling_weight`.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use candle_core::{DType, Device, Result, Tensor};
use serde::Deserialize;

use crate::error::{Error, Result as LoadResult};
use crate::kv_cache::StepKv;
use crate::layers::{AdapterRows, ForwardBatch};
use crate::config::ModelConfig;
use crate::models::CausalLm;

/// `xlora_config.json`; fields not listed are ignored.
#[derive(Debug, Clone, Deserialize)]
pub struct XLoraConfig {
    pub hidden_size: usize,
    #[serde(default)]
    pub base_model_id: Option<String>,
    #[serde(default)]
    pub layerwise_scalings: bool,
    #[serde(default = "one")]
    pub xlora_depth: usize,
    #[serde(default = "default_size")]
    pub xlora_size: usize,
    /// ReLU between the classifier's hidden layers. PEFT's classifier always
    /// has it; files written by PEFT (with `peft_type`) get it regardless.
    #[serde(default)]
    pub enable_relu_and_dropout: bool,
    #[serde(default = "yes")]
    pub enable_softmax: bool,
    #[serde(default)]
    pub enable_softmax_topk: bool,
    #[serde(default = "one_f")]
    pub softmax_temperature: f64,
    #[serde(default)]
    pub scaling_pass_value: f64,
    #[serde(default = "yes")]
    pub use_bias: bool,
    #[serde(default = "one_f")]
    pub global_scaling_weight: f64,
    #[serde(default)]
    pub top_k_lora: Option<usize>,
    #[serde(default)]
    pub peft_type: Option<String>,
}

fn one() -> usize {
    1
}
fn one_f() -> f64 {
    1.0
}
fn yes() -> bool {
    true
}
fn default_size() -> usize {
    2048
}

impl XLoraConfig {
    pub fn read(path: &Path) -> LoadResult<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::not_found(path, e.to_string()))?;
        let c: Self = serde_json::from_str(&text).map_err(|e| Error::bad_file(path, format!("invalid xlora_config.json: {e}")))?;
        if c.xlora_depth == 0 {
            return Err(Error::bad_file(path, "xlora_depth must be at least 1"));
        }
        if c.softmax_temperature.is_nan() || c.softmax_temperature <= 0.0 {
            return Err(Error::bad_file(path, "softmax_temperature must be > 0"));
        }
        Ok(c)
    }
}

struct Dense {
    /// (in, out)
    w_t: Tensor,
    b: Option<Tensor>,
}

impl Dense {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = x.matmul(&self.w_t)?;
        match &self.b {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}

pub struct Classifier {
    inner: Vec<Dense>,
    last: Dense,
    relu: bool,
}

impl Classifier {
    /// `inner.{i}.weight/bias` (depth − 1 of them) and `last.weight/bias`
    /// from `xlora_classifier.safetensors`, checked against the config.
    pub fn load(path: &Path, cfg: &XLoraConfig, n_adapters: usize, n_layers: usize, device: &Device) -> LoadResult<Self> {
        crate::weights::safetensors::check_header(path)?;
        let mut t = candle_core::safetensors::load(path, device).map_err(|e| Error::bad_file(path, e))?;
        let mut take = |name: &str, shape: &[usize], required: bool| -> LoadResult<Option<Tensor>> {
            match t.remove(name) {
                Some(x) if x.dims() == shape => Ok(Some(x.to_dtype(DType::F32)?)),
                Some(x) => Err(Error::invalid(format!(
                    "{}: `{name}` has shape {:?}, expected {shape:?} (from xlora_config.json and {n_adapters} adapters over {n_layers} adapted layers)",
                    path.display(),
                    x.dims()
                ))),
                None if required => Err(Error::invalid(format!("{}: tensor `{name}` is missing", path.display()))),
                None => Ok(None),
            }
        };
        let mut dense = |prefix: &str, out: usize, inp: usize| -> LoadResult<Dense> {
            let w = take(&format!("{prefix}.weight"), &[out, inp], true)?.expect("required");
            let b = take(&format!("{prefix}.bias"), &[out], cfg.use_bias)?;
            Ok(Dense { w_t: w.t()?.contiguous()?, b })
        };
        let mut inner = Vec::new();
        let mut width = cfg.hidden_size;
        for i in 0..cfg.xlora_depth - 1 {
            inner.push(dense(&format!("inner.{i}"), cfg.xlora_size, width)?);
            width = cfg.xlora_size;
        }
        let outs = if cfg.layerwise_scalings { n_adapters * n_layers } else { n_adapters };
        let last = dense("last", outs, width)?;
        Ok(Self { inner, last, relu: cfg.enable_relu_and_dropout || cfg.peft_type.is_some() })
    }

    /// (tokens, hidden) -> (tokens, outputs) logits.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = x.clone();
        for d in &self.inner {
            h = d.forward(&h)?;
            if self.relu {
                h = h.relu()?;
            }
        }
        self.last.forward(&h)
    }
}

pub struct XLoraModel {
    model: Box<dyn CausalLm>,
    classifier: Classifier,
    cfg: XLoraConfig,
    n_adapters: usize,
    n_layers: usize,
    tgt_non_granular_index: Option<usize>,
    /// Scaling passes run, counted per sequence (a batch of 3 counts 3).
    passes: Arc<AtomicU64>,
}

impl XLoraModel {
    pub fn new(
        model: Box<dyn CausalLm>,
        classifier: Classifier,
        cfg: XLoraConfig,
        n_adapters: usize,
        n_layers: usize,
        tgt_non_granular_index: Option<usize>,
    ) -> Self {
        Self { model, classifier, cfg, n_adapters, n_layers, tgt_non_granular_index, passes: Arc::new(AtomicU64::new(0)) }
    }

    pub fn pass_counter(&self) -> Arc<AtomicU64> {
        self.passes.clone()
    }

    /// Classifier logits (tokens, outputs) -> scalings (tokens, layers, adapters),
    /// `global_scaling_weight` included.
    fn scalings_from_logits(&self, logits: &Tensor) -> Result<Vec<f32>> {
        let (tokens, outs) = logits.dims2()?;
        let logits = logits.to_vec2::<f32>()?;
        let (nl, na) = (self.n_layers, self.n_adapters);
        let mut s = Vec::with_capacity(tokens * nl * na);
        for row in &logits {
            for l in 0..nl {
                let group = if outs == na { &row[..] } else { &row[l * na..(l + 1) * na] };
                let mut v: Vec<f32> = group.to_vec();
                if self.cfg.enable_softmax {
                    softmax_in_place(&mut v, self.cfg.softmax_temperature as f32, |_| true);
                }
                if let Some(k) = self.cfg.top_k_lora {
                    // torch.topk's choice: the k largest, earlier index first on ties.
                    let mut idx: Vec<usize> = (0..na).collect();
                    idx.sort_by(|&a, &b| v[b].total_cmp(&v[a]).then(a.cmp(&b)));
                    let keep: Vec<bool> = (0..na).map(|i| idx[..k.min(na)].contains(&i)).collect();
                    for (x, kept) in v.iter_mut().zip(&keep) {
                        if !kept {
                            *x = 0.0;
                        }
                    }
                }
                if self.cfg.enable_softmax_topk {
                    let nonzero: Vec<bool> = v.iter().map(|x| *x != 0.0).collect();
                    softmax_in_place(&mut v, 1.0, |i| nonzero[i]);
                }
                s.extend(v.iter().map(|x| x * self.cfg.global_scaling_weight as f32));
            }
        }
        Ok(s)
    }

    /// Every row's scalings for this step: (tokens, layers, adapters).
    fn step_scalings(&self, batch: &ForwardBatch, kv: &mut StepKv) -> Result<Tensor> {
        let device = batch.input_ids.device();
        let (nl, na) = (self.n_layers, self.n_adapters);
        let layers = self.model.cache_layers();
        // Sequences whose scalings are frozen skip the scaling pass.
        let live: Vec<usize> = (0..batch.slots.len()).filter(|&i| kv.side_state(i).frozen_scalings.is_none()).collect();
        let mut per_seq: Vec<Option<Tensor>> = vec![None; batch.slots.len()];
        if !live.is_empty() {
            let sub = if live.len() == batch.slots.len() {
                batch.with_adapters(None)
            } else {
                let ids = batch.input_ids.to_vec1::<u32>()?;
                let seqs: Vec<(&[u32], usize)> =
                    live.iter().map(|&i| (&ids[batch.slots[i].start..][..batch.slots[i].len], batch.slots[i].past)).collect();
                ForwardBatch::new(&seqs, device)?
            };
            let tokens = sub.tokens();
            let value = (self.cfg.scaling_pass_value * self.cfg.global_scaling_weight) as f32;
            let dummy = Tensor::full(value, (tokens, na), device)?;
            let sub = sub.with_adapters(Some(AdapterRows::shared(dummy, vec![value != 0.0; na])));
            // The scaling pass keeps its own keys and values, in the cache layers after the real pass's.
            let hidden = self.model.hidden_states(&sub, &mut kv.subset(&live, layers))?;
            let s = self.scalings_from_logits(&self.classifier.forward(&hidden)?)?;
            let s = Tensor::from_vec(s, (tokens, nl, na), device)?;
            for (j, &i) in live.iter().enumerate() {
                let slot = sub.slots[j];
                let rows = s.narrow(0, slot.start, slot.len)?;
                self.passes.fetch_add(1, Ordering::Relaxed);
                let state = kv.side_state(i);
                state.scaling_passes += 1;
                // After k generated tokens (k + 1 passes: the prompt, then one per token) the scalings freeze.
                if self.tgt_non_granular_index.is_some_and(|k| state.scaling_passes > k) {
                    state.frozen_scalings = Some(rows.narrow(0, slot.len - 1, 1)?.squeeze(0)?);
                }
                per_seq[i] = Some(rows);
            }
        }
        let parts = batch
            .slots
            .iter()
            .enumerate()
            .map(|(i, slot)| match per_seq[i].take() {
                Some(rows) => Ok(rows),
                None => {
                    let f = kv.side_state(i).frozen_scalings.clone().expect("not live, so frozen");
                    f.unsqueeze(0)?.broadcast_as((slot.len, nl, na))?.contiguous()
                }
            })
            .collect::<Result<Vec<_>>>()?;
        if parts.len() == 1 {
            Ok(parts.into_iter().next().expect("one part"))
        } else {
            Tensor::cat(&parts, 0)
        }
    }

    fn real_batch(&self, batch: &ForwardBatch, kv: &mut StepKv) -> Result<ForwardBatch> {
        let s = self.step_scalings(batch, kv)?;
        Ok(batch.with_adapters(Some(AdapterRows::layerwise(&s, vec![true; self.n_adapters])?)))
    }
}

/// Softmax of `v / t` over the entries `keep` accepts; the others become 0.
fn softmax_in_place(v: &mut [f32], t: f32, keep: impl Fn(usize) -> bool) {
    let max = v.iter().enumerate().filter(|(i, _)| keep(*i)).map(|(_, x)| *x / t).fold(f32::NEG_INFINITY, f32::max);
    if !max.is_finite() {
        return;
    }
    let mut sum = 0.0;
    for (i, x) in v.iter_mut().enumerate() {
        *x = if keep(i) { (*x / t - max).exp() } else { 0.0 };
        sum += *x;
    }
    for x in v.iter_mut() {
        *x /= sum;
    }
}

impl CausalLm for XLoraModel {
    fn forward(&self, batch: &ForwardBatch, kv: &mut StepKv) -> Result<Tensor> {
        let real = self.real_batch(batch, kv)?;
        self.model.forward(&real, kv)
    }

    fn hidden_states(&self, batch: &ForwardBatch, kv: &mut StepKv) -> Result<Tensor> {
        let real = self.real_batch(batch, kv)?;
        self.model.hidden_states(&real, kv)
    }

    fn config(&self) -> &ModelConfig {
        self.model.config()
    }

    fn dtype(&self) -> candle_core::DType {
        self.model.dtype()
    }

    /// The real pass's layers, then the scaling pass's.
    fn cache_layers(&self) -> usize {
        2 * self.model.cache_layers()
    }
}

#[cfg(test)]
mod tests {
    use super::softmax_in_place;

    #[test]
    fn softmax_over_kept_entries() {
        let mut v = [1.0f32, 0.0, 3.0];
        softmax_in_place(&mut v, 1.0, |i| i != 1);
        let e = (1f32 - 3.0).exp();
        assert!((v[0] - e / (1.0 + e)).abs() < 1e-6 && v[1] == 0.0 && (v[2] - 1.0 / (1.0 + e)).abs() < 1e-6);
    }
}
