//! The one place engine errors become Python exceptions.

use mistralrs_core::Error;
use pyo3::exceptions::{PyFileNotFoundError, PyNotImplementedError, PyRuntimeError, PyValueError};
use pyo3::PyErr;

pub fn to_py(e: Error) -> PyErr {
    let msg = e.to_string();
    match e {
        Error::NotFound { .. } => PyFileNotFoundError::new_err(msg),
        Error::BadFile { .. } | Error::InvalidInput(_) => PyValueError::new_err(msg),
        Error::NotImplemented(_) => PyNotImplementedError::new_err(msg),
        Error::EngineClosed(_) | Error::Runtime(_) => PyRuntimeError::new_err(msg),
    }
}

pub fn not_implemented(what: &str) -> PyErr {
    PyNotImplementedError::new_err(format!("{what} is not implemented in this version of mistralrs"))
}
