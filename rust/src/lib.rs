//! `dpr._core`: the Python module. Thin bindings only: convert and check arguments, release
//! the GIL, call the pure-Rust modules, hand back numpy arrays.
//!
//! Input policy for float arrays (`items`, `query`, `queries`): C-contiguous, aligned, native
//! `float32` arrays are used in place (no copy). Any other real numeric array or array-like
//! (float16/float64, integers, lists, Fortran-ordered or strided views, big-endian) is converted
//! with `numpy.ascontiguousarray(x, dtype=float32)`, as faiss and hnswlib do; float64 is
//! therefore rounded to float32. bool, complex, object and string data are a `TypeError`;
//! a wrong number of dimensions or mismatched sizes are a `ValueError`.
//!
//! No panic path is known in this crate; as a second line of defence the compute runs under
//! `catch_unwind`, so a bug surfaces as a `RuntimeError`, never as pyo3's `PanicException`
//! (a `BaseException` that `except Exception` would not catch).

pub mod backbone;
pub mod bundle;
pub mod hnsw;
mod hnsw_graph;
pub mod intent;
pub mod linalg;
pub mod model;
pub mod prompt;
mod py_hnsw;
mod py_model;
mod py_prompt;
pub mod retrieve;
pub mod steer;

use std::panic::{catch_unwind, AssertUnwindSafe};

use numpy::ndarray::{Array2, Dimension, Ix1, Ix2};
use numpy::{
    IntoPyArray, PyArray, PyArray1, PyArrayDescrMethods, PyArrayMethods, PyReadonlyArray,
    PyUntypedArray, PyUntypedArrayMethods,
};
use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBool;

use retrieve::{Hit, Matrix, RetrieveError};

/// `(ids, scores)` as handed back to Python.
type Hits<'py, D> = (Bound<'py, PyArray<i64, D>>, Bound<'py, PyArray<f32, D>>);

fn value_error(err: RetrieveError) -> PyErr {
    PyValueError::new_err(err.to_string())
}

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

fn shape_str(shape: &[usize]) -> String {
    match shape {
        [n] => format!("({n},)"),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// A read-only, C-contiguous float32 view of `obj`, converted per the module's input policy.
pub(crate) fn f32_array<'py, D: Dimension>(
    obj: &Bound<'py, PyAny>,
    name: &str,
) -> PyResult<PyReadonlyArray<'py, f32, D>> {
    let py = obj.py();
    let ndim = D::NDIM.unwrap_or(0);
    let numpy = py.import("numpy")?;
    let arr = match obj.cast::<PyUntypedArray>() {
        Ok(arr) => arr.clone(),
        Err(_) => numpy
            .call_method1("asarray", (obj,))?
            .cast_into::<PyUntypedArray>()?,
    };
    let dtype = arr.dtype();
    if !matches!(dtype.kind(), b'f' | b'i' | b'u') {
        return Err(PyTypeError::new_err(format!(
            "{name} must hold real numbers (float32 preferred), got dtype {}",
            dtype.str()?
        )));
    }
    if arr.ndim() != ndim {
        let what = if ndim == 1 { "1-D (d,)" } else { "2-D (n, d)" };
        return Err(PyValueError::new_err(format!(
            "{name} must be {what}, got shape {}",
            shape_str(arr.shape())
        )));
    }
    let ready = match arr.cast::<PyArray<f32, D>>() {
        Ok(a) if a.is_c_contiguous() && a.is_aligned() => a.clone(),
        _ => numpy
            .call_method1("ascontiguousarray", (arr, numpy.getattr("float32")?))?
            .cast_into::<PyArray<f32, D>>()?,
    };
    Ok(ready.try_readonly()?)
}

/// Row ids from `obj` (a 1-D integer array or an iterable of ints), each checked to lie in
/// `0..rows`. `label` names the argument in error messages.
fn row_ids(obj: &Bound<'_, PyAny>, rows: usize, label: &str) -> PyResult<Vec<usize>> {
    let check = |id: i64| -> PyResult<usize> {
        usize::try_from(id)
            .ok()
            .filter(|&r| r < rows)
            .ok_or_else(|| {
                PyValueError::new_err(format!(
                    "{label}: row id {id} is out of range for {rows} items"
                ))
            })
    };
    if let Ok(arr) = obj.cast::<PyUntypedArray>() {
        if arr.len() == 0 {
            return Ok(Vec::new()); // np.array([]) is float64; an empty list means "nothing".
        }
        if arr.ndim() != 1 {
            return Err(PyValueError::new_err(format!(
                "{label} must be 1-D, got shape {}",
                shape_str(arr.shape())
            )));
        }
        let kind = arr.dtype().kind();
        if !matches!(kind, b'i' | b'u') {
            let hint = if kind == b'b' {
                " (for a boolean mask pass np.flatnonzero(mask))"
            } else {
                ""
            };
            return Err(PyTypeError::new_err(format!(
                "{label} must hold integer row ids, got dtype {}{hint}",
                arr.dtype().str()?
            )));
        }
        let ids = arr.call_method1("astype", ("int64",))?;
        let ids = ids.cast::<PyArray1<i64>>()?.try_readonly()?;
        return ids.as_array().iter().map(|&id| check(id)).collect();
    }
    let items = obj.try_iter().map_err(|_| {
        let type_name = obj
            .get_type()
            .name()
            .map_or_else(|_| "?".to_owned(), |n| n.to_string());
        PyTypeError::new_err(format!(
            "{label} must be a 1-D integer array or an iterable of ints, got {type_name}"
        ))
    })?;
    let mut out = Vec::new();
    for item in items {
        let item = item?;
        if item.is_instance_of::<PyBool>() {
            return Err(PyTypeError::new_err(format!(
                "{label} must hold integer row ids, got a bool"
            )));
        }
        out.push(check(item.extract::<i64>()?)?);
    }
    Ok(out)
}

fn non_negative_k(k: i64) -> PyResult<usize> {
    usize::try_from(k).map_err(|_| PyValueError::new_err(format!("k must be >= 0, got {k}")))
}

fn check_dims(items_d: usize, got: usize, what: &str) -> PyResult<()> {
    if items_d == got {
        Ok(())
    } else {
        Err(PyValueError::new_err(format!(
            "{what} has dimension {got} but items have dimension {items_d}"
        )))
    }
}

/// Exact top-k rows of `items` by inner product with `query`, best first.
///
/// Returns `(ids, scores)`: int64 and float32 arrays of length `min(k, eligible rows)`.
/// Ties go to the lower row id; NaN scores rank last. See `_core.pyi` for the full contract.
#[pyfunction]
#[pyo3(signature = (items, query, k, exclude=None))]
fn top_k<'py>(
    py: Python<'py>,
    items: &Bound<'py, PyAny>,
    query: &Bound<'py, PyAny>,
    k: i64,
    exclude: Option<&Bound<'py, PyAny>>,
) -> PyResult<Hits<'py, Ix1>> {
    let k = non_negative_k(k)?;
    let items = f32_array::<Ix2>(items, "items")?;
    let query = f32_array::<Ix1>(query, "query")?;
    let (n, d) = (items.shape()[0], items.shape()[1]);
    check_dims(d, query.shape()[0], "query")?;
    let exclude = match exclude {
        Some(e) if !e.is_none() => row_ids(e, n, "exclude")?,
        _ => Vec::new(),
    };
    let items = Matrix::new(items.as_slice()?, n, d).map_err(value_error)?;
    let query = query.as_slice()?;
    let hits = detached(py, "top_k", || retrieve::top_k(items, query, k, &exclude))?
        .map_err(value_error)?;
    let ids: Vec<i64> = hits.iter().map(|h| h.row as i64).collect();
    let scores: Vec<f32> = hits.iter().map(|h| h.score).collect();
    Ok((ids.into_pyarray(py), scores.into_pyarray(py)))
}

/// Lays per-query hits out as `(B, width)` arrays padded with id -1 and score -inf.
fn pad(hits: &[Vec<Hit>], width: usize) -> (Vec<i64>, Vec<f32>) {
    let mut ids = vec![-1i64; hits.len() * width];
    let mut scores = vec![f32::NEG_INFINITY; hits.len() * width];
    for (q, row_hits) in hits.iter().enumerate() {
        for (j, hit) in row_hits.iter().take(width).enumerate() {
            ids[q * width + j] = hit.row as i64;
            scores[q * width + j] = hit.score;
        }
    }
    (ids, scores)
}

/// `top_k` for every row of `queries`, in parallel with the GIL released.
///
/// Returns `(ids, scores)` of shape `(B, min(k, N))`; rows with fewer eligible items are padded
/// with id -1 and score -inf. `exclude`, if given, holds one id list (or None) per query.
#[pyfunction]
#[pyo3(signature = (items, queries, k, exclude=None))]
fn top_k_batch<'py>(
    py: Python<'py>,
    items: &Bound<'py, PyAny>,
    queries: &Bound<'py, PyAny>,
    k: i64,
    exclude: Option<&Bound<'py, PyAny>>,
) -> PyResult<Hits<'py, Ix2>> {
    let k = non_negative_k(k)?;
    let items = f32_array::<Ix2>(items, "items")?;
    let queries = f32_array::<Ix2>(queries, "queries")?;
    let (n, d) = (items.shape()[0], items.shape()[1]);
    let b = queries.shape()[0];
    check_dims(d, queries.shape()[1], "queries")?;
    let excludes: Vec<Vec<usize>> = match exclude {
        Some(e) if !e.is_none() => {
            if e.is_instance_of::<pyo3::types::PyString>() {
                return Err(PyTypeError::new_err(
                    "exclude must be a sequence of id lists, one per query",
                ));
            }
            let lists = e
                .try_iter()?
                .enumerate()
                .map(|(q, item)| {
                    let item = item?;
                    if item.is_none() {
                        Ok(Vec::new())
                    } else {
                        row_ids(&item, n, &format!("exclude[{q}]"))
                    }
                })
                .collect::<PyResult<Vec<_>>>()?;
            if lists.len() != b {
                return Err(PyValueError::new_err(format!(
                    "exclude must hold one id list per query: {b} queries, {} lists",
                    lists.len()
                )));
            }
            lists
        }
        _ => Vec::new(),
    };
    let items = Matrix::new(items.as_slice()?, n, d).map_err(value_error)?;
    let queries = Matrix::new(queries.as_slice()?, b, d).map_err(value_error)?;
    let width = k.min(n);
    let (ids, scores) = detached(py, "top_k_batch", || {
        retrieve::top_k_batch(items, queries, k, &excludes).map(|hits| pad(&hits, width))
    })?
    .map_err(value_error)?;
    let to_err = |e: numpy::ndarray::ShapeError| PyRuntimeError::new_err(e.to_string());
    let ids = Array2::from_shape_vec((b, width), ids).map_err(to_err)?;
    let scores = Array2::from_shape_vec((b, width), scores).map_err(to_err)?;
    Ok((ids.into_pyarray(py), scores.into_pyarray(py)))
}

static GIL_PROBE: (std::sync::Mutex<bool>, std::sync::Condvar) =
    (std::sync::Mutex::new(false), std::sync::Condvar::new());

/// For tests of GIL release: waits inside [`detached`] (the wrapper of every compute entry
/// point) up to `timeout_s` for another Python thread to call [`_gil_probe_signal`]. That
/// thread can only run Python code if the GIL is free, so the result is `true` exactly when
/// the GIL was released.
#[pyfunction]
fn _gil_probe_wait(py: Python<'_>, timeout_s: f64) -> PyResult<bool> {
    let timeout = std::time::Duration::from_secs_f64(timeout_s.clamp(0.0, 600.0));
    detached(py, "_gil_probe_wait", || {
        let (lock, signal) = &GIL_PROBE;
        let mut seen = lock.lock().unwrap_or_else(|e| e.into_inner());
        *seen = false;
        let (mut seen, _) = signal
            .wait_timeout_while(seen, timeout, |seen| !*seen)
            .unwrap_or_else(|e| e.into_inner());
        std::mem::replace(&mut *seen, false)
    })
}

/// The other half of [`_gil_probe_wait`].
#[pyfunction]
fn _gil_probe_signal() {
    let (lock, signal) = &GIL_PROBE;
    *lock.lock().unwrap_or_else(|e| e.into_inner()) = true;
    signal.notify_all();
}

/// For tests of the panic boundary: panics inside [`detached`], which must surface in Python
/// as a `RuntimeError` naming the panic, not a `PanicException` or an abort (an empty
/// `message` returns normally).
#[pyfunction]
fn _panic_probe(py: Python<'_>, message: &str) -> PyResult<()> {
    detached(py, "_panic_probe", || {
        if !message.is_empty() {
            panic!("{message}");
        }
    })
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(top_k, m)?)?;
    m.add_function(wrap_pyfunction!(top_k_batch, m)?)?;
    m.add_function(wrap_pyfunction!(_gil_probe_wait, m)?)?;
    m.add_function(wrap_pyfunction!(_gil_probe_signal, m)?)?;
    m.add_function(wrap_pyfunction!(_panic_probe, m)?)?;
    py_prompt::register(m)?;
    py_model::register(m)?;
    py_hnsw::register(m)?;
    Ok(())
}
