//! `dpr._core`: the Python module. Thin bindings only: convert and check arguments
//! ([`convert`]), release the GIL ([`detached`]), call the pure-Rust stages, hand back numpy
//! arrays, and map errors to exceptions.
//!
//! No panic path is known in this crate; as a second line of defence the compute runs under
//! `catch_unwind`, so a bug surfaces as a `RuntimeError`, never as pyo3's `PanicException`
//! (a `BaseException` that `except Exception` would not catch).

mod convert;
mod encoder;
mod engine;
mod errors;
mod exact;
mod hnsw;
mod probes;

use std::panic::{catch_unwind, AssertUnwindSafe};

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;

/// Runs `f` with the GIL released, turning a panic (a bug) into a `RuntimeError`.
pub(crate) fn detached<T, F>(py: Python<'_>, what: &str, f: F) -> PyResult<T>
where
    F: FnOnce() -> T + Send,
    T: Send,
{
    py.detach(|| catch_unwind(AssertUnwindSafe(f)))
        .map_err(|payload| {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_owned());
            PyRuntimeError::new_err(format!("internal error in dpr._core.{what}: {msg}"))
        })
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("INDEX_FILE", crate::index::policy::INDEX_FILE)?;
    m.add("KERNEL_LEVEL", crate::nn::linalg::level().name())?;
    exact::register(m)?;
    probes::register(m)?;
    encoder::register(m)?;
    engine::register(m)?;
    hnsw::register(m)?;
    Ok(())
}
