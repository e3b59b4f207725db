//! Argument conversion shared by every binding: float arrays, row id lists, counts, dimension
//! checks and the padded `(B, k)` hit layout.
//!
//! Input policy for float arrays (`items`, `query`, `queries`): C-contiguous, aligned, native
//! `float32` arrays are used in place (no copy). Any other real numeric array or array-like
//! (float16/float64, integers, lists, Fortran-ordered or strided views, big-endian) is converted
//! with `numpy.ascontiguousarray(x, dtype=float32)`, as faiss and hnswlib do; float64 is
//! therefore rounded to float32. bool, complex, object and string data are a `TypeError`;
//! a wrong number of dimensions or mismatched sizes are a `ValueError`.

use numpy::ndarray::{Array2, Dimension};
use numpy::ndarray::{Ix1, Ix2};
use numpy::{
    IntoPyArray, PyArray, PyArray1, PyArrayDescrMethods, PyArrayMethods, PyReadonlyArray,
    PyUntypedArray, PyUntypedArrayMethods,
};
use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBool;

use crate::index::exact::{Hit, Matrix};

/// `(ids, scores)` as handed back to Python.
pub(crate) type Hits<'py, D> = (Bound<'py, PyArray<i64, D>>, Bound<'py, PyArray<f32, D>>);

pub(crate) fn shape_str(shape: &[usize]) -> String {
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

/// The name of `obj`'s type, for error messages ("?" if Python cannot say).
pub(crate) fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map_or_else(|_| "?".to_owned(), |n| n.to_string())
}

/// The rows of a 2-D array from [`f32_array`] as a [`Matrix`] (no copy).
pub(crate) fn matrix_of<'a>(array: &'a PyReadonlyArray<'_, f32, Ix2>) -> PyResult<Matrix<'a>> {
    let (rows, cols) = (array.shape()[0], array.shape()[1]);
    Matrix::new(array.as_slice()?, rows, cols).map_err(|e| PyValueError::new_err(e.to_string()))
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
pub(crate) fn row_ids(obj: &Bound<'_, PyAny>, rows: usize, label: &str) -> PyResult<Vec<usize>> {
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
        PyTypeError::new_err(format!(
            "{label} must be a 1-D integer array or an iterable of ints, got {}",
            type_name(obj)
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

/// A count argument (`k`, a capacity): `{name} must be >= 0` otherwise.
pub(crate) fn non_negative(value: i64, name: &str) -> PyResult<usize> {
    usize::try_from(value)
        .map_err(|_| PyValueError::new_err(format!("{name} must be >= 0, got {value}")))
}

pub(crate) fn positive(value: i64, name: &str) -> PyResult<usize> {
    usize::try_from(value)
        .ok()
        .filter(|&v| v > 0)
        .ok_or_else(|| PyValueError::new_err(format!("{name} must be >= 1, got {value}")))
}

/// `what` (a query) must have the `expected` dimension of `owner` ("items have", "the index
/// has").
pub(crate) fn check_dim(expected: usize, got: usize, what: &str, owner: &str) -> PyResult<()> {
    if expected == got {
        Ok(())
    } else {
        Err(PyValueError::new_err(format!(
            "{what} has dimension {got} but {owner} dimension {expected}"
        )))
    }
}

/// Lays per-query hits out as `(B, width)` arrays padded with id -1 and score -inf.
pub(crate) fn pad(hits: &[Vec<Hit>], width: usize) -> (Vec<i64>, Vec<f32>) {
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

/// One query's hits as `(rows, scores)` arrays.
pub(crate) fn hits_1d<'py>(py: Python<'py>, hits: &[Hit]) -> Hits<'py, Ix1> {
    let ids: Vec<i64> = hits.iter().map(|h| h.row as i64).collect();
    let scores: Vec<f32> = hits.iter().map(|h| h.score).collect();
    (ids.into_pyarray(py), scores.into_pyarray(py))
}

/// The output of [`pad`] as `(B, width)` arrays.
pub(crate) fn hits_2d<'py>(
    py: Python<'py>,
    (ids, scores): (Vec<i64>, Vec<f32>),
    b: usize,
    width: usize,
) -> PyResult<Hits<'py, Ix2>> {
    let to_err = |e: numpy::ndarray::ShapeError| PyRuntimeError::new_err(e.to_string());
    let ids = Array2::from_shape_vec((b, width), ids).map_err(to_err)?;
    let scores = Array2::from_shape_vec((b, width), scores).map_err(to_err)?;
    Ok((ids.into_pyarray(py), scores.into_pyarray(py)))
}
