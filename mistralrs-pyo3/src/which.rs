//! `Which`: what model to load, as immutable value objects. (`Architecture`
//! is core's enum, a Python class under its `pyo3` feature.)

use mistralrs_core::Architecture;
use pyo3::prelude::*;

/// Which model to load and how its weights are stored.
// The variant names are the Python API's (`Which.GGUF`).
#[allow(clippy::upper_case_acronyms)]
#[pyclass(frozen, from_py_object, module = "mistralrs")]
#[derive(Debug, Clone)]
pub enum Which {
    #[pyo3(constructor = (*, model_id, arch, tokenizer_json=None, repeat_last_n=64))]
    Plain { model_id: String, arch: Architecture, tokenizer_json: Option<String>, repeat_last_n: usize },
    #[pyo3(constructor = (*, arch, xlora_model_id, order, tgt_non_granular_index=None, model_id=None, tokenizer_json=None, repeat_last_n=64))]
    XLora {
        arch: Architecture,
        xlora_model_id: String,
        order: String,
        tgt_non_granular_index: Option<usize>,
        model_id: Option<String>,
        tokenizer_json: Option<String>,
        repeat_last_n: usize,
    },
    #[pyo3(constructor = (*, arch, adapters_model_id, order, model_id=None, tokenizer_json=None, repeat_last_n=64))]
    Lora {
        arch: Architecture,
        adapters_model_id: String,
        order: String,
        model_id: Option<String>,
        tokenizer_json: Option<String>,
        repeat_last_n: usize,
    },
    #[pyo3(constructor = (*, tok_model_id, quantized_model_id, quantized_filename, tokenizer_json=None, repeat_last_n=64))]
    GGUF {
        tok_model_id: Option<String>,
        quantized_model_id: String,
        quantized_filename: String,
        tokenizer_json: Option<String>,
        repeat_last_n: usize,
    },
    #[pyo3(constructor = (*, tok_model_id, quantized_model_id, quantized_filename, xlora_model_id, order, tgt_non_granular_index=None, tokenizer_json=None, repeat_last_n=64))]
    XLoraGGUF {
        tok_model_id: Option<String>,
        quantized_model_id: String,
        quantized_filename: String,
        xlora_model_id: String,
        order: String,
        tgt_non_granular_index: Option<usize>,
        tokenizer_json: Option<String>,
        repeat_last_n: usize,
    },
    #[pyo3(constructor = (*, tok_model_id, quantized_model_id, quantized_filename, adapters_model_id, order, tokenizer_json=None, repeat_last_n=64))]
    LoraGGUF {
        tok_model_id: Option<String>,
        quantized_model_id: String,
        quantized_filename: String,
        adapters_model_id: String,
        order: String,
        tokenizer_json: Option<String>,
        repeat_last_n: usize,
    },
    #[pyo3(constructor = (*, tok_model_id, quantized_model_id, quantized_filename, tokenizer_json=None, repeat_last_n=64))]
    GGML {
        tok_model_id: Option<String>,
        quantized_model_id: String,
        quantized_filename: String,
        tokenizer_json: Option<String>,
        repeat_last_n: usize,
    },
    #[pyo3(constructor = (*, tok_model_id, quantized_model_id, quantized_filename, xlora_model_id, order, tgt_non_granular_index=None, tokenizer_json=None, repeat_last_n=64))]
    XLoraGGML {
        tok_model_id: Option<String>,
        quantized_model_id: String,
        quantized_filename: String,
        xlora_model_id: String,
        order: String,
        tgt_non_granular_index: Option<usize>,
        tokenizer_json: Option<String>,
        repeat_last_n: usize,
    },
    #[pyo3(constructor = (*, tok_model_id, quantized_model_id, quantized_filename, adapters_model_id, order, tokenizer_json=None, repeat_last_n=64))]
    LoraGGML {
        tok_model_id: Option<String>,
        quantized_model_id: String,
        quantized_filename: String,
        adapters_model_id: String,
        order: String,
        tokenizer_json: Option<String>,
        repeat_last_n: usize,
    },
}

fn q(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

fn opt(s: &Option<String>) -> String {
    s.as_deref().map_or_else(|| "None".to_string(), q)
}

fn opt_n(n: &Option<usize>) -> String {
    n.map_or_else(|| "None".to_string(), |n| n.to_string())
}

impl Which {
    pub fn repeat_last_n(&self) -> usize {
        match self {
            Which::Plain { repeat_last_n, .. }
            | Which::XLora { repeat_last_n, .. }
            | Which::Lora { repeat_last_n, .. }
            | Which::GGUF { repeat_last_n, .. }
            | Which::XLoraGGUF { repeat_last_n, .. }
            | Which::LoraGGUF { repeat_last_n, .. }
            | Which::GGML { repeat_last_n, .. }
            | Which::XLoraGGML { repeat_last_n, .. }
            | Which::LoraGGML { repeat_last_n, .. } => *repeat_last_n,
        }
    }

    /// The variant's name and its fields, in constructor order, as Python literals.
    fn fields(&self) -> (&'static str, Vec<(&'static str, String)>) {
        let a = |a: &Architecture| format!("Architecture.{a:?}");
        match self {
            Which::Plain { model_id, arch, tokenizer_json, repeat_last_n } => (
                "Plain",
                vec![("model_id", q(model_id)), ("arch", a(arch)), ("tokenizer_json", opt(tokenizer_json)), ("repeat_last_n", repeat_last_n.to_string())],
            ),
            Which::XLora { arch, xlora_model_id, order, tgt_non_granular_index, model_id, tokenizer_json, repeat_last_n } => (
                "XLora",
                vec![
                    ("arch", a(arch)),
                    ("xlora_model_id", q(xlora_model_id)),
                    ("order", q(order)),
                    ("tgt_non_granular_index", opt_n(tgt_non_granular_index)),
                    ("model_id", opt(model_id)),
                    ("tokenizer_json", opt(tokenizer_json)),
                    ("repeat_last_n", repeat_last_n.to_string()),
                ],
            ),
            Which::Lora { arch, adapters_model_id, order, model_id, tokenizer_json, repeat_last_n } => (
                "Lora",
                vec![
                    ("arch", a(arch)),
                    ("adapters_model_id", q(adapters_model_id)),
                    ("order", q(order)),
                    ("model_id", opt(model_id)),
                    ("tokenizer_json", opt(tokenizer_json)),
                    ("repeat_last_n", repeat_last_n.to_string()),
                ],
            ),
            Which::GGUF { tok_model_id, quantized_model_id, quantized_filename, tokenizer_json, repeat_last_n }
            | Which::GGML { tok_model_id, quantized_model_id, quantized_filename, tokenizer_json, repeat_last_n } => (
                if matches!(self, Which::GGUF { .. }) { "GGUF" } else { "GGML" },
                vec![
                    ("tok_model_id", opt(tok_model_id)),
                    ("quantized_model_id", q(quantized_model_id)),
                    ("quantized_filename", q(quantized_filename)),
                    ("tokenizer_json", opt(tokenizer_json)),
                    ("repeat_last_n", repeat_last_n.to_string()),
                ],
            ),
            Which::XLoraGGUF { tok_model_id, quantized_model_id, quantized_filename, xlora_model_id, order, tgt_non_granular_index, tokenizer_json, repeat_last_n }
            | Which::XLoraGGML { tok_model_id, quantized_model_id, quantized_filename, xlora_model_id, order, tgt_non_granular_index, tokenizer_json, repeat_last_n } => (
                if matches!(self, Which::XLoraGGUF { .. }) { "XLoraGGUF" } else { "XLoraGGML" },
                vec![
                    ("tok_model_id", opt(tok_model_id)),
                    ("quantized_model_id", q(quantized_model_id)),
                    ("quantized_filename", q(quantized_filename)),
                    ("xlora_model_id", q(xlora_model_id)),
                    ("order", q(order)),
                    ("tgt_non_granular_index", opt_n(tgt_non_granular_index)),
                    ("tokenizer_json", opt(tokenizer_json)),
                    ("repeat_last_n", repeat_last_n.to_string()),
                ],
            ),
            Which::LoraGGUF { tok_model_id, quantized_model_id, quantized_filename, adapters_model_id, order, tokenizer_json, repeat_last_n }
            | Which::LoraGGML { tok_model_id, quantized_model_id, quantized_filename, adapters_model_id, order, tokenizer_json, repeat_last_n } => (
                if matches!(self, Which::LoraGGUF { .. }) { "LoraGGUF" } else { "LoraGGML" },
                vec![
                    ("tok_model_id", opt(tok_model_id)),
                    ("quantized_model_id", q(quantized_model_id)),
                    ("quantized_filename", q(quantized_filename)),
                    ("adapters_model_id", q(adapters_model_id)),
                    ("order", q(order)),
                    ("tokenizer_json", opt(tokenizer_json)),
                    ("repeat_last_n", repeat_last_n.to_string()),
                ],
            ),
        }
    }
}

#[pymethods]
impl Which {
    fn __repr__(&self) -> String {
        let (name, fields) = self.fields();
        let body: Vec<String> = fields.into_iter().map(|(k, v)| format!("{k}={v}")).collect();
        format!("Which.{name}({})", body.join(", "))
    }

    fn __eq__(&self, other: &Bound<'_, PyAny>) -> bool {
        other.cast::<Which>().is_ok_and(|o| o.get().__repr__() == self.__repr__())
    }
}
