//! Python face of `encoder::PromptEncoder`: `dpr._core.PromptEncoder`.
//!
//! Errors: a missing folder or file is `FileNotFoundError`; a malformed file, an out-of-range
//! argument or a prompt the tokenizer rejects is `ValueError`; a failed model run (a bug) is
//! `RuntimeError`. Loading and encoding run with the GIL released.

use std::path::PathBuf;

use numpy::ndarray::Array2;
use numpy::{IntoPyArray, PyArray1, PyArray2};
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;

use super::convert::non_negative;
use super::detached;
use super::errors::prompt_error;
use crate::nn::encoder;

/// Sentence encoder for prompts (all-MiniLM-L6-v2 by default) with an LRU cache.
#[pyclass(frozen, name = "PromptEncoder", module = "dpr._core")]
pub struct PyPromptEncoder {
    inner: encoder::PromptEncoder,
}

#[pymethods]
impl PyPromptEncoder {
    #[new]
    #[pyo3(signature = (path, max_tokens = 256, cache_capacity = 4096))]
    fn new(py: Python<'_>, path: PathBuf, max_tokens: i64, cache_capacity: i64) -> PyResult<Self> {
        let max_tokens = non_negative(max_tokens, "max_tokens")?;
        let cache_capacity = non_negative(cache_capacity, "cache_capacity")?;
        let inner = detached(py, "PromptEncoder", || {
            encoder::PromptEncoder::load(&path, max_tokens, cache_capacity)
        })?
        .map_err(prompt_error)?;
        Ok(Self { inner })
    }

    /// The prompt's vector, float32 of shape (dim,); zeros for a blank prompt.
    fn encode<'py>(&self, py: Python<'py>, prompt: &str) -> PyResult<Bound<'py, PyArray1<f32>>> {
        let vector = detached(py, "PromptEncoder.encode", || self.inner.encode(prompt))?
            .map_err(prompt_error)?;
        Ok(PyArray1::from_slice(py, &vector))
    }

    /// The vectors of many prompts, float32 of shape (n, dim).
    fn encode_many<'py>(
        &self,
        py: Python<'py>,
        prompts: Vec<String>,
    ) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let dim = self.inner.dim();
        let refs: Vec<&str> = prompts.iter().map(String::as_str).collect();
        let flat = detached(py, "PromptEncoder.encode_many", || {
            self.inner.encode_many(&refs).map(|vectors| {
                let mut flat = Vec::with_capacity(vectors.len() * dim);
                vectors.iter().for_each(|v| flat.extend_from_slice(v));
                flat
            })
        })?
        .map_err(prompt_error)?;
        let matrix = Array2::from_shape_vec((prompts.len(), dim), flat)
            .map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
        Ok(matrix.into_pyarray(py))
    }

    /// Width of a prompt vector (384 for MiniLM).
    #[getter]
    fn dim(&self) -> usize {
        self.inner.dim()
    }

    /// Truncation length in tokens, [CLS] and [SEP] included.
    #[getter]
    fn max_tokens(&self) -> usize {
        self.inner.max_tokens()
    }

    /// Number of prompt vectors in the cache.
    #[getter]
    fn cache_len(&self) -> usize {
        self.inner.cache_len()
    }

    fn __repr__(&self) -> String {
        format!(
            "PromptEncoder(dim={}, max_tokens={}, cache_len={})",
            self.inner.dim(),
            self.inner.max_tokens(),
            self.inner.cache_len()
        )
    }
}

/// Adds `PromptEncoder` to the module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyPromptEncoder>()
}
