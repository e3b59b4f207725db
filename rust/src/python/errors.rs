//! Every Rust error → Python exception mapping of `dpr._core`, in one place:
//!
//! * a missing bundle file or folder → `FileNotFoundError`;
//! * a damaged bundle (or an encoder folder that disagrees with it) → `BundleFormatError`
//!   (a `ValueError`); the standalone `PromptEncoder` reports a damaged folder as `ValueError`;
//! * an unknown id, attribute or value → `KeyError`;
//! * a bad argument → `ValueError` (`TypeError` for a wrong type, raised in [`super::convert`]);
//! * a saved HNSW file that cannot be read or written → `OSError`;
//! * a bug → `RuntimeError` (never a panic across the boundary: [`super::detached`]).

use pyo3::create_exception;
use pyo3::exceptions::{PyFileNotFoundError, PyKeyError, PyOSError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;

use crate::bundle::BundleError;
use crate::engine::ModelError;
use crate::index::exact::RetrieveError;
use crate::index::hnsw::HnswError;
use crate::nn::encoder::{PromptError, PromptErrorKind};

create_exception!(
    _core,
    BundleFormatError,
    PyValueError,
    "A bundle file is damaged or disagrees with dpr.json (the message names the file and field)."
);

pub(crate) fn model_error(err: ModelError) -> PyErr {
    match err {
        ModelError::Bundle(BundleError::Missing { .. }) => {
            PyFileNotFoundError::new_err(err.to_string())
        }
        ModelError::Bundle(
            BundleError::Unreadable { .. }
            | BundleError::Config { .. }
            | BundleError::Items { .. }
            | BundleError::Tensor { .. }
            | BundleError::Checksum { .. }
            | BundleError::Index { .. }
            | BundleError::Encoder { .. },
        ) => BundleFormatError::new_err(err.to_string()),
        ModelError::Prompt(ref e) => match e.kind {
            PromptErrorKind::NotFound => PyFileNotFoundError::new_err(err.to_string()),
            PromptErrorKind::Invalid => BundleFormatError::new_err(err.to_string()),
            PromptErrorKind::Prompt => PyValueError::new_err(err.to_string()),
            PromptErrorKind::Model => PyRuntimeError::new_err(err.to_string()),
        },
        ModelError::Argument(m) => PyValueError::new_err(m),
        ModelError::Key(m) => PyKeyError::new_err(m),
    }
}

/// Errors of the standalone `PromptEncoder`.
pub(crate) fn prompt_error(err: PromptError) -> PyErr {
    match err.kind {
        PromptErrorKind::NotFound => PyFileNotFoundError::new_err(err.message),
        PromptErrorKind::Invalid | PromptErrorKind::Prompt => PyValueError::new_err(err.message),
        PromptErrorKind::Model => PyRuntimeError::new_err(err.message),
    }
}

pub(crate) fn hnsw_error(err: HnswError) -> PyErr {
    match err {
        HnswError::File { .. } => PyOSError::new_err(err.to_string()),
        _ => PyValueError::new_err(err.to_string()),
    }
}

pub(crate) fn retrieve_error(err: RetrieveError) -> PyErr {
    PyValueError::new_err(err.to_string())
}
