//! The one error type of the engine. The Python binding maps each variant to
//! one exception class, so the variant says *what kind* of failure this is and
//! the message says which file or field and why.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A model file or folder that does not exist (locally or in the hub cache).
    #[error("{path}: {reason}")]
    NotFound { path: PathBuf, reason: String },

    /// A file that exists but whose content is wrong or unsupported.
    #[error("{path}: {reason}")]
    BadFile { path: PathBuf, reason: String },

    /// A request or option with a bad value.
    #[error("{0}")]
    InvalidInput(Invalid),

    /// A feature named in the API whose implementation is a later milestone.
    #[error("{0}")]
    NotImplemented(String),

    /// The engine was closed or its thread is gone.
    #[error("{0}")]
    EngineClosed(String),

    /// Anything else that went wrong while computing.
    #[error("{0}")]
    Runtime(String),
}

pub type Result<T> = std::result::Result<T, Error>;

/// What is wrong with a request or option: the message, and as data what a
/// server answering in OpenAI's error shape needs, so it never parses the message.
#[derive(Debug)]
pub struct Invalid {
    pub message: String,
    /// The request field at fault, by the Python API's name (`top_p`, `n_choices`).
    pub param: Option<&'static str>,
    /// OpenAI's error code where it has one (`context_length_exceeded`).
    pub code: Option<&'static str>,
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl Error {
    pub fn not_found(path: impl AsRef<Path>, reason: impl Into<String>) -> Self {
        Error::NotFound { path: path.as_ref().to_path_buf(), reason: reason.into() }
    }
    pub fn bad_file(path: impl AsRef<Path>, reason: impl std::fmt::Display) -> Self {
        Error::BadFile { path: path.as_ref().to_path_buf(), reason: reason.to_string() }
    }
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::InvalidInput(Invalid { message: msg.into(), param: None, code: None })
    }
    /// A bad value of the request field `param` (its Python API name).
    pub fn invalid_field(param: &'static str, msg: impl Into<String>) -> Self {
        Error::InvalidInput(Invalid { message: msg.into(), param: Some(param), code: None })
    }
    /// A prompt that, with what it asks to generate, does not fit the model's context.
    pub fn context_length_exceeded(msg: impl Into<String>) -> Self {
        Error::InvalidInput(Invalid { message: msg.into(), param: None, code: Some("context_length_exceeded") })
    }
    /// Names `param` as the field at fault of an `InvalidInput` that names none; other errors are unchanged.
    pub fn with_param(self, param: &'static str) -> Self {
        match self {
            Error::InvalidInput(Invalid { message, param: None, code }) => {
                Error::InvalidInput(Invalid { message, param: Some(param), code })
            }
            other => other,
        }
    }
    pub fn runtime(msg: impl std::fmt::Display) -> Self {
        Error::Runtime(msg.to_string())
    }
}

impl From<candle_core::Error> for Error {
    fn from(e: candle_core::Error) -> Self {
        Error::Runtime(candle_message(&e))
    }
}

/// candle's message without the backtrace it attaches when `RUST_BACKTRACE`
/// is set (common among Rust users): frames of our internals mean nothing
/// to a Python caller and bury the reason.
pub fn candle_message(e: &candle_core::Error) -> String {
    use candle_core::Error as E;
    match e {
        E::WithBacktrace { inner, .. } => candle_message(inner),
        E::Context { inner, context } => format!("{context}: {}", candle_message(inner)),
        E::WithPath { inner, path } => format!("{}: {}", path.display(), candle_message(inner)),
        other => other.to_string(),
    }
}

/// Attach a file path to an error coming from a parser of that file.
pub trait FileContext<T> {
    fn in_file(self, path: &Path) -> Result<T>;
}

impl<T, E: std::fmt::Display> FileContext<T> for std::result::Result<T, E> {
    fn in_file(self, path: &Path) -> Result<T> {
        self.map_err(|e| Error::bad_file(path, e))
    }
}

/// The text of a caught panic, for the error that replaces it.
pub fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panic".into())
}
