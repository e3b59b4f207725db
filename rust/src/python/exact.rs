//! `dpr._core.top_k` / `top_k_batch`: the exact scan on caller-supplied arrays, public API
//! (documented in `_core.pyi`) for scoring vectors that are not a bundle's.

use numpy::ndarray::{Ix1, Ix2};
use numpy::PyUntypedArrayMethods;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;

use super::convert::{check_dim, f32_array, hits_1d, hits_2d, non_negative, pad, row_ids, Hits};
use super::detached;
use super::errors::retrieve_error;
use crate::index::exact::{self, Matrix};

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
    let k = non_negative(k, "k")?;
    let items = f32_array::<Ix2>(items, "items")?;
    let query = f32_array::<Ix1>(query, "query")?;
    let (n, d) = (items.shape()[0], items.shape()[1]);
    check_dim(d, query.shape()[0], "query", "items have")?;
    let exclude = match exclude {
        Some(e) if !e.is_none() => row_ids(e, n, "exclude")?,
        _ => Vec::new(),
    };
    let items = Matrix::new(items.as_slice()?, n, d).map_err(retrieve_error)?;
    let query = query.as_slice()?;
    let hits = detached(py, "top_k", || exact::top_k(items, query, k, &exclude))?
        .map_err(retrieve_error)?;
    Ok(hits_1d(py, &hits))
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
    let k = non_negative(k, "k")?;
    let items = f32_array::<Ix2>(items, "items")?;
    let queries = f32_array::<Ix2>(queries, "queries")?;
    let (n, d) = (items.shape()[0], items.shape()[1]);
    let b = queries.shape()[0];
    check_dim(d, queries.shape()[1], "queries", "items have")?;
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
    let items = Matrix::new(items.as_slice()?, n, d).map_err(retrieve_error)?;
    let queries = Matrix::new(queries.as_slice()?, b, d).map_err(retrieve_error)?;
    let width = k.min(n);
    let padded = detached(py, "top_k_batch", || {
        exact::top_k_batch(items, queries, k, &excludes).map(|hits| pad(&hits, width))
    })?
    .map_err(retrieve_error)?;
    hits_2d(py, padded, b, width)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(top_k, m)?)?;
    m.add_function(wrap_pyfunction!(top_k_batch, m)?)?;
    Ok(())
}
