//! A weight source that puts adapters on the base's linear layers as the
//! architecture asks for them, so no architecture file knows about adapters:
//! merged (`W += scale · B·A`, re-quantized to the weight's own type) or
//! attached unmerged (a `LoraStack` applied per token row).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use candle_core::Tensor;

use super::files::Adapter;
use crate::architecture::Architecture;
use crate::error::{Error, Result};
use crate::layers::{Embedding, Linear, LoraPair, LoraStack};
use crate::weights::WeightSource;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attach {
    Merged,
    Unmerged,
}

/// The modules adapters may target (SPEC §3), by their last name component.
pub fn adaptable_modules(arch: Architecture) -> &'static [&'static str] {
    match arch {
        Architecture::Phi3 => &["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
        Architecture::Phi2 => &["q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2"],
        // Mixtral's experts see routed subsets of the rows: attention only.
        Architecture::Mixtral => &["q_proj", "k_proj", "v_proj", "o_proj"],
        _ => &["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    }
}

pub struct AdaptedSource<'a> {
    inner: &'a dyn WeightSource,
    adapters: &'a [Adapter],
    attach: Attach,
    /// X-LoRA's layer numbers (the ordering file's `layers`); LoRA needs none.
    layer_numbers: Option<&'a HashMap<String, usize>>,
    /// Modules the model asked for that carry adapters.
    used: Mutex<BTreeSet<String>>,
}

impl<'a> AdaptedSource<'a> {
    pub fn new(
        inner: &'a dyn WeightSource,
        adapters: &'a [Adapter],
        attach: Attach,
        layer_numbers: Option<&'a HashMap<String, usize>>,
        arch: Architecture,
    ) -> Result<Self> {
        let allowed = adaptable_modules(arch);
        for a in adapters {
            for module in a.modules.keys() {
                let leaf = module.rsplit('.').next().unwrap_or(module);
                if !allowed.contains(&leaf) {
                    return Err(Error::invalid(format!(
                        "adapter `{}`: `{module}` is not a module {arch} adapters can target (those are {})",
                        a.name,
                        allowed.join(", ")
                    )));
                }
                if let Some(numbers) = layer_numbers {
                    if !numbers.contains_key(module) {
                        return Err(Error::invalid(format!(
                            "adapter `{}` targets `{module}`, which the ordering file's `layers` does not number \
                             (X-LoRA needs every adapter's modules there)",
                            a.name
                        )));
                    }
                }
            }
        }
        Ok(Self { inner, adapters, attach, layer_numbers, used: Mutex::new(BTreeSet::new()) })
    }

    /// After the model is built: every adapted module must have been one the
    /// model has (a typo'd or foreign module name would otherwise be ignored).
    pub fn check_all_used(&self) -> Result<()> {
        let used = self.used.lock().map_err(|_| Error::runtime("adapter bookkeeping poisoned"))?;
        for a in self.adapters {
            if let Some(m) = a.modules.keys().find(|m| !used.contains(*m)) {
                return Err(Error::invalid(format!("adapter `{}`: the model has no module `{m}`", a.name)));
            }
        }
        Ok(())
    }
}

impl WeightSource for AdaptedSource<'_> {
    fn linear(&self, module: &str, out_dim: usize, in_dim: usize, bias: bool) -> Result<Linear> {
        let base = self.inner.linear(module, out_dim, in_dim, bias)?;
        let mut pairs = Vec::new();
        for (i, a) in self.adapters.iter().enumerate() {
            let Some((la, lb)) = a.modules.get(module) else { continue };
            if la.dims2()?.1 != in_dim || lb.dims2()?.0 != out_dim {
                return Err(Error::invalid(format!(
                    "adapter `{}`: `{module}` has lora_A {:?} and lora_B {:?}, but the base layer maps {in_dim} to {out_dim} features",
                    a.name,
                    la.dims(),
                    lb.dims()
                )));
            }
            pairs.push(LoraPair { adapter: i, a: la.clone(), b: lb.clone(), scale: a.scale });
        }
        if pairs.is_empty() {
            return Ok(base);
        }
        if let Ok(mut used) = self.used.lock() {
            used.insert(module.to_string());
        }
        Ok(match self.attach {
            Attach::Merged => {
                let mut delta: Option<Tensor> = None;
                for p in &pairs {
                    let d = (p.b.matmul(&p.a)? * p.scale)?; // (out, in)
                    delta = Some(match delta {
                        Some(acc) => (acc + d)?,
                        None => d,
                    });
                }
                base.merged(&delta.expect("pairs is not empty"))?
            }
            Attach::Unmerged => {
                let layer = self.layer_numbers.and_then(|n| n.get(module).copied()).unwrap_or(0);
                base.with_lora(Arc::new(LoraStack::new(&pairs, layer)?))
            }
        })
    }

    fn vector(&self, name: &str, len: usize) -> Result<Tensor> {
        self.inner.vector(name, len)
    }

    fn embedding(&self, module: &str, vocab: usize, hidden: usize, head: bool) -> Result<Embedding> {
        self.inner.embedding(module, vocab, hidden, head)
    }

    fn has_module(&self, module: &str) -> bool {
        self.inner.has_module(module)
    }

    fn has_tensor(&self, name: &str) -> bool {
        self.inner.has_tensor(name)
    }

    fn dtype(&self) -> candle_core::DType {
        self.inner.dtype()
    }
}
