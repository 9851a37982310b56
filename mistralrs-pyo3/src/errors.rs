//! The one place engine errors become Python exceptions.

use mistralrs_core::error::Invalid;
use mistralrs_core::Error;
use pyo3::exceptions::{PyFileNotFoundError, PyNotImplementedError, PyRuntimeError, PyValueError};
use pyo3::types::PyAnyMethods;
use pyo3::{PyErr, Python};

pub fn to_py(e: Error) -> PyErr {
    match e {
        Error::NotFound { .. } => PyFileNotFoundError::new_err(e.to_string()),
        Error::BadFile { .. } => value_error(e.to_string(), None, None),
        Error::InvalidInput(Invalid { message, param, code }) => value_error(message, param, code),
        Error::NotImplemented(_) => PyNotImplementedError::new_err(e.to_string()),
        Error::EngineClosed(_) | Error::Runtime(_) => PyRuntimeError::new_err(e.to_string()),
    }
}

/// A ValueError with the attributes `param` (the request field at fault, by the Python
/// API's name) and `code` (OpenAI's error code), None where the error has none.
fn value_error(message: String, param: Option<&str>, code: Option<&str>) -> PyErr {
    Python::attach(|py| {
        let err = PyValueError::new_err(message);
        let value = err.value(py);
        // A ValueError instance has a __dict__, so setting these cannot fail.
        let _ = value.setattr("param", param);
        let _ = value.setattr("code", code);
        err
    })
}

/// A bad value of the request field `param` (its Python API name), as `to_py` raises it.
pub fn invalid_field(param: &'static str, message: impl Into<String>) -> PyErr {
    to_py(Error::invalid_field(param, message))
}

/// A bad request value that no single field is at fault for.
pub fn invalid(message: impl Into<String>) -> PyErr {
    to_py(Error::invalid(message))
}

pub fn not_implemented(what: &str) -> PyErr {
    PyNotImplementedError::new_err(format!("{what} is not implemented in this version of mistralrs"))
}
