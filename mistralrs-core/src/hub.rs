//! Model ids to local files: a local folder, or a Hugging Face hub repo
//! resolved through the standard cache (`HF_HUB_CACHE`, `HF_HOME`), fetched
//! only when `HF_HUB_OFFLINE` is not set.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Where the hub token comes from (`Runner(token_source=...)`).
#[derive(Debug, Clone, PartialEq)]
pub enum TokenSource {
    /// The token file of the HF cache (`$HF_HOME/token`).
    Cache,
    None,
    Literal(String),
    EnvVar(String),
    Path(PathBuf),
}

impl TokenSource {
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "cache" => Self::Cache,
            "none" => Self::None,
            _ => match s.split_once(':') {
                Some(("literal", v)) => Self::Literal(v.to_string()),
                Some(("env", v)) => Self::EnvVar(v.to_string()),
                Some(("path", v)) => Self::Path(PathBuf::from(v)),
                _ => {
                    return Err(Error::invalid(format!(
                        "token_source `{s}` is not one of \"cache\", \"none\", \"literal:<token>\", \"env:<VAR>\", \"path:<file>\""
                    )))
                }
            },
        })
    }

    fn token(&self) -> Result<Option<String>> {
        Ok(match self {
            Self::Cache => {
                let path = hf_home().join("token");
                std::fs::read_to_string(path).ok().map(|t| t.trim().to_string()).filter(|t| !t.is_empty())
            }
            Self::None => None,
            Self::Literal(t) => Some(t.clone()),
            Self::EnvVar(var) => Some(std::env::var(var).map_err(|_| {
                Error::invalid(format!("token_source names environment variable `{var}`, which is not set"))
            })?),
            Self::Path(p) => Some(
                std::fs::read_to_string(p)
                    .map_err(|e| Error::not_found(p, format!("cannot read the hub token: {e}")))?
                    .trim()
                    .to_string(),
            ),
        })
    }
}

fn hf_home() -> PathBuf {
    if let Some(h) = std::env::var_os("HF_HOME") {
        return PathBuf::from(h);
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
    std::env::var_os("XDG_CACHE_HOME").map(PathBuf::from).unwrap_or(home.join(".cache")).join("huggingface")
}

fn hub_cache_dir() -> PathBuf {
    std::env::var_os("HF_HUB_CACHE")
        .or_else(|| std::env::var_os("HUGGINGFACE_HUB_CACHE"))
        .map(PathBuf::from)
        .unwrap_or_else(|| hf_home().join("hub"))
}

fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .is_ok_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
}

/// A model id opened for reading files.
pub enum ModelRepo {
    Local(PathBuf),
    Hub { id: String, token: Option<String> },
}

impl ModelRepo {
    /// A local folder if `id` names one (or looks like a path), else a hub repo id.
    pub fn open(id: &str, tokens: &TokenSource) -> Result<Self> {
        let path = Path::new(id);
        if path.is_dir() {
            return Ok(Self::Local(path.to_path_buf()));
        }
        let looks_like_path = path.is_absolute()
            || id.starts_with('.')
            || id.starts_with('~')
            || id.matches('/').count() > 1
            || path.exists();
        if looks_like_path || id.is_empty() {
            return Err(Error::not_found(path, "no such model folder"));
        }
        Ok(Self::Hub { id: id.to_string(), token: tokens.token()? })
    }

    pub fn describe(&self) -> String {
        match self {
            Self::Local(p) => p.display().to_string(),
            Self::Hub { id, .. } => format!("hub repo `{id}`"),
        }
    }

    /// The local path of `file`; fetched into the HF cache if needed and allowed.
    pub fn get(&self, file: &str) -> Result<PathBuf> {
        match self {
            Self::Local(dir) => {
                let p = dir.join(file);
                if p.is_file() {
                    Ok(p)
                } else {
                    Err(Error::not_found(&p, "no such file"))
                }
            }
            Self::Hub { id, token } => {
                let cache = hf_hub::Cache::new(hub_cache_dir());
                if let Some(p) = cache.model(id.clone()).get(file) {
                    return Ok(p);
                }
                let where_ = format!("{id}/{file}");
                if offline() {
                    return Err(Error::not_found(
                        &where_,
                        format!("not in the HF cache at {} and HF_HUB_OFFLINE is set", hub_cache_dir().display()),
                    ));
                }
                let api = hf_hub::api::sync::ApiBuilder::from_cache(cache)
                    .with_token(token.clone())
                    .with_progress(false)
                    .build()
                    .map_err(|e| Error::runtime(format!("cannot reach the hub: {e}")))?;
                api.model(id.clone())
                    .get(file)
                    .map_err(|e| Error::not_found(&where_, format!("cannot fetch from the hub: {e}")))
            }
        }
    }

    /// Like `get`, but a file the repo does not have is `None`.
    pub fn get_optional(&self, file: &str) -> Result<Option<PathBuf>> {
        match self.get(file) {
            Ok(p) => Ok(Some(p)),
            Err(Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }
}
