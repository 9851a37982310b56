//! The architectures the engine knows by name.

use crate::error::{Error, Result};

/// With the `pyo3` feature this is also the Python `Architecture` class.
#[cfg_attr(feature = "pyo3", pyo3::pyclass(eq, frozen, hash, module = "mistralrs"))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Architecture {
    Mistral,
    Gemma,
    Mixtral,
    Llama,
    Phi2,
    Phi3,
    Qwen2,
    /// Gemma 2 and Gemma 3 (text): beyond the seven architectures of SPEC.md.
    Gemma2,
    Gemma3,
}

impl Architecture {
    pub const ALL: [Architecture; 9] = [
        Architecture::Mistral,
        Architecture::Gemma,
        Architecture::Mixtral,
        Architecture::Llama,
        Architecture::Phi2,
        Architecture::Phi3,
        Architecture::Qwen2,
        Architecture::Gemma2,
        Architecture::Gemma3,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Architecture::Mistral => "mistral",
            Architecture::Gemma => "gemma",
            Architecture::Mixtral => "mixtral",
            Architecture::Llama => "llama",
            Architecture::Phi2 => "phi2",
            Architecture::Phi3 => "phi3",
            Architecture::Qwen2 => "qwen2",
            Architecture::Gemma2 => "gemma2",
            Architecture::Gemma3 => "gemma3",
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        let lower = s.to_ascii_lowercase();
        Self::ALL.into_iter().find(|a| a.name() == lower).ok_or_else(|| {
            Error::invalid(format!("unknown architecture `{s}`; supported: {}", Self::names()))
        })
    }

    /// The architecture a transformers `config.json` `model_type` names.
    pub fn from_model_type(model_type: &str) -> Option<Self> {
        Some(match model_type {
            "mistral" => Architecture::Mistral,
            "gemma" => Architecture::Gemma,
            "mixtral" => Architecture::Mixtral,
            "llama" => Architecture::Llama,
            "phi" => Architecture::Phi2,
            "phi3" => Architecture::Phi3,
            "qwen2" => Architecture::Qwen2,
            "gemma2" => Architecture::Gemma2,
            // `gemma3` is the multimodal model, whose `text_config` is read.
            "gemma3" | "gemma3_text" => Architecture::Gemma3,
            _ => return None,
        })
    }

    pub fn names() -> String {
        Self::ALL.iter().map(|a| a.name()).collect::<Vec<_>>().join(", ")
    }
}

impl std::fmt::Display for Architecture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(feature = "pyo3")]
mod python {
    use pyo3::exceptions::PyValueError;
    use pyo3::prelude::*;
    use pyo3::types::PyString;

    use super::Architecture;

    #[pymethods]
    impl Architecture {
        /// The lowercase name ("llama", ...), also accepted wherever an `arch` is.
        #[getter]
        fn value(&self) -> &'static str {
            self.name()
        }

        fn __str__(&self) -> &'static str {
            self.name()
        }

        fn __repr__(&self) -> String {
            format!("Architecture.{self:?}")
        }
    }

    /// An `arch` argument: an `Architecture` or its lowercase name.
    impl<'py> FromPyObject<'_, 'py> for Architecture {
        type Error = PyErr;

        fn extract(obj: Borrowed<'_, 'py, PyAny>) -> PyResult<Self> {
            if let Ok(a) = obj.cast::<Architecture>() {
                return Ok(*a.get());
            }
            if let Ok(s) = obj.cast::<PyString>() {
                let s: String = s.extract()?;
                return Architecture::parse(&s).map_err(|e| PyValueError::new_err(e.to_string()));
            }
            Err(PyValueError::new_err(format!(
                "arch must be an Architecture or one of {}, got {}",
                Architecture::names(),
                obj.repr().map(|r| r.to_string()).unwrap_or_default()
            )))
        }
    }
}
