//! `dpr._core.HnswIndex`: the Python face of [`crate::index::hnsw`]. Thin: check and convert
//! arguments (the float input policy of `convert.rs`), release the GIL, map errors to exceptions.

use std::path::PathBuf;

use numpy::ndarray::{Ix1, Ix2};
use numpy::{
    PyArray, PyArrayDescrMethods, PyArrayMethods, PyReadonlyArray, PyUntypedArray,
    PyUntypedArrayMethods,
};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use rayon::prelude::*;

use super::convert::{
    check_dim, f32_array, hits_1d, hits_2d, matrix_of, non_negative, pad, positive, Hits,
};
use super::detached;
use super::errors::hnsw_error;
use crate::index::hnsw::{self, HnswParams};
use crate::index::policy::{self, Plan};
use crate::index::rowset::RowSet;

/// A 1-D boolean mask of length `rows`, C-contiguous.
fn bool_mask<'py>(
    obj: &Bound<'py, PyAny>,
    rows: usize,
) -> PyResult<PyReadonlyArray<'py, bool, Ix1>> {
    let numpy = obj.py().import("numpy")?;
    let arr = match obj.cast::<PyUntypedArray>() {
        Ok(arr) => arr.clone(),
        Err(_) => numpy
            .call_method1("asarray", (obj,))?
            .cast_into::<PyUntypedArray>()?,
    };
    if arr.dtype().kind() != b'b' {
        return Err(PyTypeError::new_err(format!(
            "allowed must be a boolean mask (dtype bool), got dtype {}",
            arr.dtype().str()?
        )));
    }
    if arr.ndim() != 1 || arr.len() != rows {
        return Err(PyValueError::new_err(format!(
            "allowed must be a 1-D mask of length {rows} (one flag per item row), got shape {:?}",
            arr.shape()
        )));
    }
    let ready = match arr.cast::<PyArray<bool, Ix1>>() {
        Ok(a) if a.is_c_contiguous() => a.clone(),
        _ => numpy
            .call_method1("ascontiguousarray", (arr,))?
            .cast_into::<PyArray<bool, Ix1>>()?,
    };
    Ok(ready.try_readonly()?)
}

/// A 1-D sequence of integer item rows (any order) as `usize`s.
fn int_rows(obj: &Bound<'_, PyAny>) -> PyResult<Vec<usize>> {
    let numpy = obj.py().import("numpy")?;
    let arr = numpy
        .call_method1("asarray", (obj,))?
        .cast_into::<PyUntypedArray>()?;
    let kind = arr.dtype().kind();
    if arr.ndim() != 1 || !(kind == b'i' || kind == b'u' || arr.len() == 0) {
        return Err(PyTypeError::new_err(format!(
            "rows must be a 1-D sequence of integer item rows, got dtype {} and shape {:?}",
            arr.dtype().str()?,
            arr.shape()
        )));
    }
    let rows = numpy
        .call_method1("ascontiguousarray", (arr, "int64"))?
        .cast_into::<PyArray<i64, Ix1>>()?;
    let rows = rows.try_readonly()?;
    rows.as_slice()?
        .iter()
        .map(|&r| {
            usize::try_from(r)
                .map_err(|_| PyValueError::new_err(format!("rows holds {r}, not an item row")))
        })
        .collect()
}

/// `ef=None` is the index default (0 for [`hnsw::HnswIndex::search`]).
fn ef_arg(ef: Option<i64>) -> PyResult<usize> {
    ef.map_or(Ok(0), |ef| positive(ef, "ef"))
}

/// Approximate top-k by inner product over the rows of an item matrix (dpr's HNSW graph).
/// See `_core.pyi` for the contract.
#[pyclass(frozen, name = "HnswIndex", module = "dpr._core")]
pub struct PyHnswIndex {
    index: hnsw::HnswIndex,
    /// Rows of the item matrix the index was built from (the length of an `allowed` mask).
    items: usize,
}

#[pymethods]
impl PyHnswIndex {
    #[new]
    #[pyo3(signature = (items, connectivity=16, expansion_add=128, expansion_search=128, skip_first_row=false))]
    fn new(
        py: Python<'_>,
        items: &Bound<'_, PyAny>,
        connectivity: i64,
        expansion_add: i64,
        expansion_search: i64,
        skip_first_row: bool,
    ) -> PyResult<Self> {
        let params = HnswParams {
            connectivity: positive(connectivity, "connectivity")?,
            expansion_add: positive(expansion_add, "expansion_add")?,
            expansion_search: positive(expansion_search, "expansion_search")?,
        };
        let items = f32_array::<Ix2>(items, "items")?;
        let n = items.shape()[0];
        let start = usize::from(skip_first_row);
        if start > n {
            return Err(PyValueError::new_err(
                "skip_first_row=True needs at least one item row",
            ));
        }
        let matrix = matrix_of(&items)?;
        let index = detached(py, "HnswIndex", || {
            hnsw::HnswIndex::build(matrix, start..n, &params)
        })?
        .map_err(hnsw_error)?;
        Ok(Self { index, items: n })
    }

    /// Reads an index written by `save`, for the same `items` (checked).
    #[staticmethod]
    fn load(py: Python<'_>, path: PathBuf, items: &Bound<'_, PyAny>) -> PyResult<Self> {
        let items = f32_array::<Ix2>(items, "items")?;
        let n = items.shape()[0];
        let matrix = matrix_of(&items)?;
        let index = detached(py, "HnswIndex.load", || {
            hnsw::HnswIndex::load(&path, matrix)
        })?
        .map_err(hnsw_error)?;
        Ok(Self { index, items: n })
    }

    fn save(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        detached(py, "HnswIndex.save", || self.index.save(&path))?.map_err(hnsw_error)
    }

    #[pyo3(signature = (query, k, ef=None, allowed=None))]
    fn search<'py>(
        &self,
        py: Python<'py>,
        query: &Bound<'py, PyAny>,
        k: i64,
        ef: Option<i64>,
        allowed: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Hits<'py, Ix1>> {
        let k = non_negative(k, "k")?;
        let ef = ef_arg(ef)?;
        let query = f32_array::<Ix1>(query, "query")?;
        check_dim(self.index.dim(), query.shape()[0], "query", "the index has")?;
        let mask = match allowed {
            Some(a) if !a.is_none() => Some(bool_mask(a, self.items)?),
            _ => None,
        };
        let query = query.as_slice()?;
        let mask = mask.as_ref().map(|m| m.as_slice()).transpose()?;
        let hits = detached(py, "HnswIndex.search", || {
            let allowed = mask.map(RowSet::from_mask);
            self.index.search(query, k, ef, allowed.as_ref())
        })?
        .map_err(hnsw_error)?;
        Ok(hits_1d(py, &hits))
    }

    /// `search` with the planner overridden (benchmarks only): `how` is "scan", "walk",
    /// "two_hop" or "value_graph"; `ef` is the walk's breadth.
    #[pyo3(signature = (query, k, allowed, how, ef))]
    fn _search_as<'py>(
        &self,
        py: Python<'py>,
        query: &Bound<'py, PyAny>,
        k: i64,
        allowed: &Bound<'py, PyAny>,
        how: &str,
        ef: i64,
    ) -> PyResult<Hits<'py, Ix1>> {
        let k = non_negative(k, "k")?;
        let ef = positive(ef, "ef")?;
        let plan = match how {
            "scan" => Plan::Scan,
            "value_graph" => Plan::Subgraph,
            "walk" | "two_hop" => Plan::Walk {
                ef,
                two_hop: how == "two_hop",
            },
            other => {
                return Err(PyValueError::new_err(format!(
                    "how must be 'scan', 'walk', 'two_hop' or 'value_graph', got {other:?}"
                )))
            }
        };
        let query = f32_array::<Ix1>(query, "query")?;
        check_dim(self.index.dim(), query.shape()[0], "query", "the index has")?;
        let mask = bool_mask(allowed, self.items)?;
        let (query, mask) = (query.as_slice()?, mask.as_slice()?);
        let hits = detached(py, "HnswIndex._search_as", || {
            let allowed = RowSet::from_mask(mask);
            self.index
                .search_as(query, k, ef, Some(&allowed), Some(plan))
        })?
        .map_err(hnsw_error)?;
        Ok(hits_1d(py, &hits))
    }

    #[pyo3(signature = (queries, k, ef=None))]
    fn search_batch<'py>(
        &self,
        py: Python<'py>,
        queries: &Bound<'py, PyAny>,
        k: i64,
        ef: Option<i64>,
    ) -> PyResult<Hits<'py, Ix2>> {
        let k = non_negative(k, "k")?;
        let ef = ef_arg(ef)?;
        let queries = f32_array::<Ix2>(queries, "queries")?;
        let (b, d) = (queries.shape()[0], queries.shape()[1]);
        check_dim(self.index.dim(), d, "queries", "the index has")?;
        let queries = queries.as_slice()?;
        let width = k.min(self.index.len());
        let padded = detached(py, "HnswIndex.search_batch", || {
            let hits = if d == 0 {
                Ok(vec![Vec::new(); b])
            } else {
                queries
                    .par_chunks_exact(d)
                    .map(|q| self.index.search(q, k, ef, None))
                    .collect::<Result<Vec<_>, _>>()
            };
            hits.map(|hits| pad(&hits, width))
        })?
        .map_err(hnsw_error)?;
        hits_2d(py, padded, b, width)
    }

    /// Makes `expansion_search` the smallest breadth reaching `target` recall@k on `queries`
    /// (see `_core.pyi`); returns it with the recall measured there.
    #[pyo3(signature = (queries, k=10, target=None))]
    fn calibrate(
        &self,
        py: Python<'_>,
        queries: &Bound<'_, PyAny>,
        k: i64,
        target: Option<f64>,
    ) -> PyResult<(usize, f64)> {
        let target = target.unwrap_or(policy::TARGET_RECALL);
        let k = positive(k, "k")?;
        let queries = f32_array::<Ix2>(queries, "queries")?;
        check_dim(
            self.index.dim(),
            queries.shape()[1],
            "queries",
            "the index has",
        )?;
        let matrix = matrix_of(&queries)?;
        detached(py, "HnswIndex.calibrate", || {
            self.index.calibrate(matrix, k, target)
        })?
        .map_err(hnsw_error)
    }

    /// Adds a value graph over `rows` (see `_core.pyi`); returns how many the index holds.
    fn add_subgraph(&self, py: Python<'_>, rows: &Bound<'_, PyAny>) -> PyResult<usize> {
        let rows = int_rows(rows)?;
        detached(py, "HnswIndex.add_subgraph", || {
            self.index.add_subgraph(&rows)
        })?
        .map_err(hnsw_error)
    }

    /// The rows of each value graph, smallest graph first.
    #[getter]
    fn subgraphs(&self) -> Vec<Vec<u32>> {
        self.index.subgraph_rows()
    }

    fn __len__(&self) -> usize {
        self.index.len()
    }

    #[getter]
    fn dim(&self) -> usize {
        self.index.dim()
    }

    /// First indexed row (1 when built with `skip_first_row=True`).
    #[getter]
    fn first_row(&self) -> usize {
        self.index.rows().start
    }

    #[getter]
    fn expansion_search(&self) -> usize {
        self.index.expansion_search()
    }

    fn __repr__(&self) -> String {
        let rows = self.index.rows();
        format!(
            "HnswIndex(rows={}..{}, dim={}, expansion_search={})",
            rows.start,
            rows.end,
            self.index.dim(),
            self.index.expansion_search()
        )
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyHnswIndex>()
}
