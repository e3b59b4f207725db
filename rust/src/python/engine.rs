// Over 400 lines because Engine is one #[pymethods] block (pyo3 cannot split it across files).
//! The `Engine` class: a loaded bundle. Queries take external ids and hand back external ids
//! (the id ↔ row mapping lives here only); `dpr.Recommender` wraps it with hit objects and
//! argument defaults. This layer only converts, checks, maps ids, releases the GIL and maps
//! errors:
//! missing file → `FileNotFoundError`; a damaged bundle → `dpr._core.BundleError` (a
//! `ValueError`); an unknown id, attribute or value → `KeyError`; a bad argument →
//! `ValueError`/`TypeError`; a bug → `RuntimeError` (never a panic across the boundary).

use std::path::PathBuf;
use std::sync::Arc;

use numpy::ndarray::{Array2, ArrayView2, Ix2};
use numpy::{IntoPyArray, PyArray1, PyArray2, PyArrayMethods};
use pyo3::exceptions::{PyKeyError, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple, PyType};

use super::convert::{f32_array, matrix_of, non_negative, pad, positive, type_name};
use super::detached;
use super::errors::{model_error, BundleFormatError};
use crate::bundle::ItemId;
use crate::engine::{check_strength, Filter, Model, ModelError, QueryOptions, Retrieval};
use crate::index::exact::Hit;

/// The Python side of [`Engine::query`]'s hits, made once per engine: the class of a hit,
/// `tuple.__new__` (which fills a tuple subclass without running Python code), and the
/// attribute names and values as shared Python strings.
struct HitMaker {
    /// A tuple subclass of `(id, score, title, attributes)`, or plain tuples.
    class: Option<Py<PyType>>,
    tuple_new: Py<PyAny>,
    names: Vec<Py<PyString>>,
    values: Vec<Vec<Py<PyString>>>,
}

impl HitMaker {
    fn new(py: Python<'_>, model: &Model, class: Option<Bound<'_, PyType>>) -> PyResult<Self> {
        let tuple = py.get_type::<PyTuple>();
        if let Some(class) = &class {
            if !class.is_subclass(&tuple)? {
                return Err(PyTypeError::new_err(format!(
                    "hit must be a tuple subclass of 4 fields (id, score, title, attributes), got {}",
                    class.name()?
                )));
            }
        }
        let strings = |values: &[String]| {
            values
                .iter()
                .map(|v| PyString::new(py, v).unbind())
                .collect()
        };
        Ok(Self {
            class: class.map(Bound::unbind),
            tuple_new: tuple.getattr("__new__")?.unbind(),
            names: model
                .attributes
                .iter()
                .map(|a| PyString::new(py, &a.name).unbind())
                .collect(),
            values: model
                .attributes
                .iter()
                .map(|a| strings(&a.values))
                .collect(),
        })
    }

    /// `(id, score, title, {attribute: [values]})` of item `row` (1..=N), as a hit object.
    fn make<'py>(&self, py: Python<'py>, model: &Model, hit: &Hit) -> PyResult<Bound<'py, PyAny>> {
        let n = model.num_items;
        if !(1..=n).contains(&hit.row) {
            return Err(PyRuntimeError::new_err(format!(
                "internal error in dpr._core.Engine.query: hit row {} is not an item row (1..={n})",
                hit.row
            )));
        }
        let attributes = PyDict::new(py);
        for ((a, name), values) in model.attributes.iter().zip(&self.names).zip(&self.values) {
            let list = PyList::new(py, a.values_of(hit.row).map(|v| values[v].bind(py)))?;
            attributes.set_item(name.bind(py), list)?;
        }
        let item = hit.row - 1;
        let fields = PyTuple::new(
            py,
            [
                id_to_py(py, &model.ids[item])?.into_bound(py),
                PyFloat::new(py, f64::from(hit.score)).into_any(),
                PyString::new(py, &model.titles[item]).into_any(),
                attributes.into_any(),
            ],
        )?;
        match &self.class {
            Some(class) => self.tuple_new.bind(py).call1((class.bind(py), fields)),
            None => Ok(fields.into_any()),
        }
    }
}

/// The error of a hit list whose scores overflowed float32 at `strength`.
fn not_finite(py: Python<'_>, strength: f64) -> PyErr {
    match PyFloat::new(py, strength).str() {
        Ok(strength) => PyValueError::new_err(format!(
            "the steered scores are not finite at strength={strength}; use a smaller strength"
        )),
        Err(e) => e,
    }
}

/// `(ids, scores)` of [`Engine::query_batch`]: ids an int64 or object array.
type BatchHits<'py> = PyResult<(Bound<'py, PyAny>, Bound<'py, PyArray2<f32>>)>;

/// The external ids as [`Engine::query_batch`] hands them back: when all are ints, an int64
/// array padded with -1; otherwise an object array padded with None.
enum BatchIds {
    Int(Vec<i64>),
    Object(Vec<Py<PyAny>>),
}

impl BatchIds {
    fn new(py: Python<'_>, ids: &[ItemId]) -> PyResult<Self> {
        let ints: Option<Vec<i64>> = ids
            .iter()
            .map(|id| match id {
                ItemId::Int(i) => Some(*i),
                ItemId::Str(_) => None,
            })
            .collect();
        Ok(match ints {
            Some(ints) => BatchIds::Int(ints),
            None => BatchIds::Object(
                ids.iter()
                    .map(|id| id_to_py(py, id))
                    .collect::<PyResult<_>>()?,
            ),
        })
    }

    /// The Python ids of an object table (empty for ints, which map without the GIL).
    fn objects(&self) -> &[Py<PyAny>] {
        match self {
            BatchIds::Int(_) => &[],
            BatchIds::Object(objects) => objects,
        }
    }
}

/// Index into the id tables of a padded hit row (1..=N); `None` for the padding row -1.
fn item_index(row: i64) -> Option<usize> {
    usize::try_from(row).ok()?.checked_sub(1)
}

fn bad_row(row: i64) -> PyErr {
    PyRuntimeError::new_err(format!(
        "internal error in dpr._core.Engine.query_batch: hit row {row} is not an item row"
    ))
}

fn shaped<T>(b: usize, width: usize, values: Vec<T>) -> PyResult<Array2<T>> {
    Array2::from_shape_vec((b, width), values).map_err(|e| PyRuntimeError::new_err(e.to_string()))
}

fn finite_strength(strength: f64) -> PyResult<f32> {
    check_strength(strength).map_err(model_error)
}

/// `[(attribute, [values])]` → indices.
fn resolve_filter(
    model: &Model,
    pairs: Vec<(String, Vec<String>)>,
) -> PyResult<Vec<(usize, Vec<usize>)>> {
    pairs
        .into_iter()
        .map(|(attr, values)| model.resolve(&attr, &values).map_err(model_error))
        .collect()
}

fn id_to_py(py: Python<'_>, id: &ItemId) -> PyResult<Py<PyAny>> {
    Ok(match id {
        ItemId::Int(i) => i.into_pyobject(py)?.into_any().unbind(),
        ItemId::Str(s) => PyString::new(py, s).into_any().unbind(),
    })
}

/// A loaded bundle. Thread-safe: every method takes `&self`, compute runs without the GIL.
#[pyclass(frozen, module = "dpr._core")]
pub struct Engine {
    model: Arc<Model>,
    /// `model.ids` in the form `query_batch` returns them.
    batch_ids: BatchIds,
    hits: HitMaker,
}

#[pymethods]
impl Engine {
    /// Loads and validates the bundle directory at `path`. `index`: "auto" (exact scan below
    /// 50k items, HNSW from there), "exact" or "hnsw"; the HNSW graph is read from the bundle's
    /// `index.hnsw` or built at load.
    #[new]
    /// `hit`: the tuple subclass `query` returns its hits as (default: plain tuples).
    /// `value_graphs`: whether the HNSW index has a graph per attribute value (see
    /// `Recommender.load`).
    #[pyo3(signature = (path, verify_checksums=true, cache_capacity=4096, index="auto", history_cache=4096, hit=None, value_graphs=true))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        path: PathBuf,
        verify_checksums: bool,
        cache_capacity: i64,
        index: &str,
        history_cache: i64,
        hit: Option<Bound<'_, PyType>>,
        value_graphs: bool,
    ) -> PyResult<Self> {
        let cache_capacity = non_negative(cache_capacity, "cache_capacity")?;
        let history_cache = non_negative(history_cache, "history_cache")?;
        let retrieval = match index {
            "auto" => Retrieval::Auto,
            "exact" => Retrieval::Exact,
            "hnsw" => Retrieval::Hnsw,
            other => {
                return Err(PyValueError::new_err(format!(
                    "index must be 'auto', 'exact' or 'hnsw', got {other:?}"
                )))
            }
        };
        let model = detached(py, "Engine", || {
            Model::load(
                &path,
                verify_checksums,
                cache_capacity,
                history_cache,
                retrieval,
                value_graphs,
            )
        })?
        .map_err(model_error)?;
        Ok(Engine {
            batch_ids: BatchIds::new(py, &model.ids)?,
            hits: HitMaker::new(py, &model, hit)?,
            model: Arc::new(model),
        })
    }

    /// Internal rows of the external ids in `history` and the number dropped as unknown.
    /// `unknown`: "error" (`KeyError` on the first unknown id) or "ignore".
    #[pyo3(signature = (history, unknown="error"))]
    fn rows(&self, history: &Bound<'_, PyAny>, unknown: &str) -> PyResult<(Vec<u32>, usize)> {
        let ignore = match unknown {
            "error" => false,
            "ignore" => true,
            other => {
                return Err(PyValueError::new_err(format!(
                    "unknown must be 'error' or 'ignore', got {other:?}"
                )))
            }
        };
        if history.is_instance_of::<PyString>() {
            return Err(PyTypeError::new_err(
                "history must be a sequence of item ids, not a string",
            ));
        }
        let iter = history.try_iter().map_err(|_| {
            PyTypeError::new_err(
                "history must be a sequence (list, tuple, numpy array) of item ids",
            )
        })?;
        let mut rows = Vec::new();
        let mut dropped = 0usize;
        for item in iter {
            let item = item?;
            // The common case first: a plain int (never a bool, which is a subclass).
            let exact_int = if item.is_exact_instance_of::<PyInt>() {
                item.extract::<i64>().ok()
            } else {
                None
            };
            let id = if let Some(i) = exact_int {
                Some(ItemId::Int(i))
            } else if item.is_instance_of::<PyBool>() || item.is_instance_of::<PyFloat>() {
                None
            } else if let Ok(s) = item.cast::<PyString>() {
                Some(ItemId::Str(s.to_str()?.to_owned()))
            } else if item.is_instance_of::<PyInt>() || item.hasattr("__index__")? {
                match item.extract::<i64>() {
                    Ok(i) => Some(ItemId::Int(i)),
                    Err(_) => {
                        if ignore {
                            dropped += 1;
                            continue;
                        }
                        return Err(PyKeyError::new_err(format!("unknown item id {item}")));
                    }
                }
            } else {
                None
            };
            let Some(id) = id else {
                return Err(PyTypeError::new_err(format!(
                    "item ids must be int or str, got {} ({item})",
                    type_name(&item)
                )));
            };
            match self.model.row_of(&id) {
                Some(r) => rows.push(r),
                None if ignore => dropped += 1,
                None => {
                    return Err(PyKeyError::new_err(format!("unknown item id {item}")));
                }
            }
        }
        Ok((rows, dropped))
    }

    /// One query, ids in and hits out: the best `k` items for a user with `history`
    /// (dataset item ids, oldest first; `unknown` as in `rows`) as `(id, score, title,
    /// {attribute: [values]})`, best first. `steer=False` ranks with the plain backbone
    /// vector; `include`/`exclude` are `[(attribute, [values])]` hard filters;
    /// `auto_exclude=True` (mode "auto") also excludes the values the intent head reads as
    /// refused with probability ≥ its refuse threshold. A filter-only bundle (`dpr.json`
    /// `steer.prompts: false`) refuses a non-blank prompt here and in every prompt-taking call.
    #[pyo3(signature = (history, prompt, k=10, strength=1.0, steer=true, exclude_seen=true, include=Vec::new(), exclude=Vec::new(), auto_exclude=false, unknown="error"))]
    #[allow(clippy::too_many_arguments)]
    fn query<'py>(
        &self,
        py: Python<'py>,
        history: &Bound<'py, PyAny>,
        prompt: &str,
        k: i64,
        strength: f64,
        steer: bool,
        exclude_seen: bool,
        include: Vec<(String, Vec<String>)>,
        exclude: Vec<(String, Vec<String>)>,
        auto_exclude: bool,
        unknown: &str,
    ) -> PyResult<Bound<'py, PyList>> {
        let k = non_negative(k, "k")?;
        let checked = finite_strength(strength)?;
        let (rows, _) = self.rows(history, unknown)?;
        let options = QueryOptions {
            k,
            strength: checked,
            steer,
            auto_exclude,
            exclude_seen,
            filter: Filter {
                include: resolve_filter(&self.model, include)?,
                exclude: resolve_filter(&self.model, exclude)?,
            },
        };
        let model = &self.model;
        let hits = detached(py, "Engine.query", || -> Result<Vec<Hit>, ModelError> {
            let embedding = model.query_prompt(prompt, steer)?;
            model.query(&rows, &embedding, &options, true)
        })?
        .map_err(model_error)?;
        if hits.iter().any(|hit| !hit.score.is_finite()) {
            return Err(not_finite(py, strength));
        }
        PyList::new(
            py,
            hits.iter()
                .map(|hit| self.hits.make(py, model, hit))
                .collect::<PyResult<Vec<_>>>()?,
        )
    }

    /// Top-`k` for many users, in parallel, ids in and ids out: `(ids (B, k), scores (B, k)
    /// float32)`, best first. Each history is mapped as in `query` (same `unknown`, same
    /// errors). `ids` is int64 padded with -1 when the bundle's ids are all ints, else an
    /// object array padded with None; scores are padded with -inf, where fewer than `k` items
    /// are eligible. `prompts` has one prompt per history, or a single prompt for all.
    /// `auto_exclude` as in `query`. `ValueError` if a hit's score is not finite (steering
    /// overflowed float32).
    #[pyo3(signature = (histories, prompts, k=10, strength=1.0, exclude_seen=true, auto_exclude=false, unknown="error"))]
    #[allow(clippy::too_many_arguments)]
    fn query_batch<'py>(
        &self,
        py: Python<'py>,
        histories: &Bound<'py, PyAny>,
        prompts: Vec<String>,
        k: i64,
        strength: f64,
        exclude_seen: bool,
        auto_exclude: bool,
        unknown: &str,
    ) -> BatchHits<'py> {
        let not_histories = || {
            PyTypeError::new_err(format!(
                "histories must be a sequence of histories, got {}",
                type_name(histories)
            ))
        };
        if histories.is_instance_of::<PyString>() {
            return Err(not_histories());
        }
        let iter = histories.try_iter().map_err(|_| not_histories())?;
        // Histories first, then the other arguments: the order `Recommender` has always had.
        let histories = iter
            .map(|history| Ok(self.rows(&history?, unknown)?.0))
            .collect::<PyResult<Vec<Vec<u32>>>>()?;
        let k = non_negative(k, "k")?;
        let options = QueryOptions {
            k,
            strength: finite_strength(strength)?,
            steer: true,
            auto_exclude,
            exclude_seen,
            filter: Filter::default(),
        };
        let b = histories.len();
        if prompts.len() != b && prompts.len() != 1 {
            return Err(PyValueError::new_err(format!(
                "prompts must hold one prompt per history ({b}) or a single prompt, got {}",
                prompts.len()
            )));
        }
        let model = &self.model;
        let batch_ids = &self.batch_ids;
        let width = k.min(model.num_items);
        let (rows, scores, int_ids) =
            detached(py, "Engine.query_batch", || -> Result<_, ModelError> {
                let texts: Vec<&str> = prompts.iter().map(String::as_str).collect();
                let encoded = model.encode_prompts(&texts)?;
                let per_query: Vec<Arc<[f32]>> = if encoded.len() == 1 {
                    vec![encoded[0].clone(); b]
                } else {
                    encoded
                };
                let hits = model.query_batch(&histories, &per_query, &options)?;
                let (rows, scores) = pad(&hits, width);
                let int_ids = match batch_ids {
                    BatchIds::Int(ids) => Some(
                        rows.iter()
                            .map(|&r| item_index(r).map_or(-1, |i| ids[i]))
                            .collect::<Vec<i64>>(),
                    ),
                    BatchIds::Object(_) => None,
                };
                Ok((rows, scores, int_ids))
            })?
            .map_err(model_error)?;
        if rows
            .iter()
            .zip(&scores)
            .any(|(&r, s)| r >= 0 && !s.is_finite())
        {
            return Err(not_finite(py, strength));
        }
        let ids = match int_ids {
            Some(ids) => shaped(b, width, ids)?.into_pyarray(py).into_any(),
            None => {
                let objects = batch_ids.objects();
                let ids = rows
                    .iter()
                    .map(|&r| match item_index(r) {
                        None => Ok(py.None()),
                        Some(i) => objects
                            .get(i)
                            .map(|id| id.clone_ref(py))
                            .ok_or_else(|| bad_row(r)),
                    })
                    .collect::<PyResult<Vec<Py<PyAny>>>>()?;
                shaped(b, width, ids)?.into_pyarray(py).into_any()
            }
        };
        Ok((ids, shaped(b, width, scores)?.into_pyarray(py)))
    }

    /// The (steered) user vector, `d + A` floats: the vector `query` ranks by for the same
    /// `steer`, filters and `auto_exclude` (exclusions that overrule the prompt's reading give
    /// the unsteered backbone's, as in `query`).
    #[pyo3(signature = (rows, prompt="", strength=1.0, steer=true, include=Vec::new(), exclude=Vec::new(), auto_exclude=false))]
    #[allow(clippy::too_many_arguments)]
    fn user_vector<'py>(
        &self,
        py: Python<'py>,
        rows: Vec<u32>,
        prompt: &str,
        strength: f64,
        steer: bool,
        include: Vec<(String, Vec<String>)>,
        exclude: Vec<(String, Vec<String>)>,
        auto_exclude: bool,
    ) -> PyResult<Bound<'py, PyArray1<f32>>> {
        let options = QueryOptions {
            k: 0,
            strength: finite_strength(strength)?,
            steer,
            auto_exclude,
            exclude_seen: false,
            filter: Filter {
                include: resolve_filter(&self.model, include)?,
                exclude: resolve_filter(&self.model, exclude)?,
            },
        };
        let model = &self.model;
        let vector = detached(
            py,
            "Engine.user_vector",
            || -> Result<Vec<f32>, ModelError> {
                let embedding = model.query_prompt(prompt, steer)?;
                Ok(model.query_vector(&rows, &embedding, &options)?.0)
            },
        )?
        .map_err(model_error)?;
        Ok(vector.into_pyarray(py))
    }

    /// The user vector for an explicit prompt embedding (`prompt_dim` floats).
    #[pyo3(signature = (rows, embedding, strength=1.0))]
    fn user_vector_for<'py>(
        &self,
        py: Python<'py>,
        rows: Vec<u32>,
        embedding: Vec<f32>,
        strength: f64,
    ) -> PyResult<Bound<'py, PyArray1<f32>>> {
        let strength = finite_strength(strength)?;
        let model = &self.model;
        let vector = detached(py, "Engine.user_vector_for", || {
            model.user_vector(&rows, &embedding, strength, true)
        })?
        .map_err(model_error)?;
        Ok(vector.into_pyarray(py))
    }

    /// The prompt's input to the steering head (`prompt_dim` floats; blank → zeros), cached:
    /// the sentence embedding, then the intent features `[p_asked, p_refused]` with a head.
    fn encode_prompt<'py>(
        &self,
        py: Python<'py>,
        prompt: &str,
    ) -> PyResult<Bound<'py, PyArray1<f32>>> {
        let model = &self.model;
        let vector = detached(py, "Engine.encode_prompt", || model.encode_prompt(prompt))?
            .map_err(model_error)?;
        Ok(vector.to_vec().into_pyarray(py))
    }

    /// What the intent head reads in `prompt`: `[(attribute, value, "asked"|"refused",
    /// confidence)]`, most confident first; `[]` for a blank prompt. `ValueError` for a bundle
    /// without an intent head (a filter-only bundle: `[]` for a blank prompt, `ValueError` for
    /// any other).
    fn interpret(
        &self,
        py: Python<'_>,
        prompt: &str,
    ) -> PyResult<Vec<(String, String, String, f32)>> {
        let model = &self.model;
        let readings =
            detached(py, "Engine.interpret", || model.interpret(prompt))?.map_err(model_error)?;
        let values = model.intent().map_or(&[][..], |head| head.values());
        Ok(readings
            .into_iter()
            .filter_map(|r| {
                let (family, value) = values.get(r.value)?;
                Some((
                    family.clone(),
                    value.clone(),
                    r.polarity.as_str().to_owned(),
                    r.confidence,
                ))
            })
            .collect())
    }

    /// `[(attribute, value)]` the intent head reads out, in order; `None` without a head.
    #[getter]
    fn intent_values(&self) -> Option<Vec<(String, String)>> {
        self.model.intent().map(|head| head.values().to_vec())
    }

    /// `[(family, [values])]` the steered vector's attribute coordinates stand for, in column
    /// order (family after family); `[]` when it has none.
    #[getter]
    fn steered_families(&self) -> Vec<(String, Vec<String>)> {
        self.model
            .steered_families()
            .iter()
            .map(|f| (f.name.clone(), f.values.clone()))
            .collect()
    }

    /// Refused probability from which mode "auto" excludes a value; `None` without a head.
    #[getter]
    fn refuse_threshold(&self) -> Option<f64> {
        self.model.intent().map(|head| head.refuse_threshold())
    }

    /// Probability from which `interpret` lists a value; `None` without a head.
    #[getter]
    fn detect_threshold(&self) -> Option<f64> {
        self.model.intent().map(|head| head.detect_threshold())
    }

    /// External ids of rows 1..=N, in row order.
    fn item_ids<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let ids = self
            .model
            .ids
            .iter()
            .map(|id| id_to_py(py, id))
            .collect::<PyResult<Vec<_>>>()?;
        PyList::new(py, ids)
    }

    /// The item vectors `[E_i, A_i]` (`N × (d + A)`, row i is item `item_ids()[i]`) as a
    /// read-only float32 array viewing the engine's own table (no copy; it keeps the engine
    /// alive).
    fn item_vectors(slf: Bound<'_, Self>) -> PyResult<Bound<'_, PyArray2<f32>>> {
        let model = Arc::clone(&slf.borrow().model);
        let shape = (model.num_items, model.vector_dim());
        let view = ArrayView2::from_shape(shape, model.item_vectors())
            .map_err(|e| PyRuntimeError::new_err(format!("item table: {e}")))?;
        // SAFETY: the table belongs to the engine's `Model`, which is immutable after load and
        // never reallocated; `slf` (the array's base object) owns an `Arc` of that model, so
        // the memory outlives the array. The array is made read-only below, so Python cannot
        // write to memory that Rust reads concurrently.
        let array = unsafe { PyArray2::borrow_from_array(&view, slf.into_any()) };
        drop(array.readwrite().make_nonwriteable());
        Ok(array)
    }

    /// `{attribute: [values]}` mode "auto" would hard-exclude for `prompt` (empty without an
    /// intent head or for a blank prompt).
    fn auto_exclusions<'py>(&self, py: Python<'py>, prompt: &str) -> PyResult<Bound<'py, PyDict>> {
        let model = &self.model;
        let refused = detached(py, "Engine.auto_exclusions", || {
            model
                .encode_prompt(prompt)
                .map(|input| model.auto_exclusions(&input))
        })?
        .map_err(model_error)?;
        let out = PyDict::new(py);
        for (attribute, value) in refused {
            let attr = &model.attributes[attribute];
            let values = match out.get_item(&attr.name)? {
                Some(list) => list.cast_into::<PyList>()?,
                None => {
                    let list = PyList::empty(py);
                    out.set_item(&attr.name, &list)?;
                    list
                }
            };
            values.append(&attr.values[value])?;
        }
        Ok(out)
    }

    /// Positions in `item_ids()` (0-based, ascending) of the items having at least one of
    /// `values` of `attribute`; `KeyError` for an unknown attribute or value.
    fn rows_with<'py>(
        &self,
        py: Python<'py>,
        attribute: &str,
        values: Vec<String>,
    ) -> PyResult<Bound<'py, PyArray1<i64>>> {
        let (attribute, values) = self
            .model
            .resolve(attribute, &values)
            .map_err(model_error)?;
        let model = &self.model;
        let rows = detached(py, "Engine.rows_with", || {
            model
                .rows_with(attribute, &values)
                .into_iter()
                .map(|row| i64::from(row) - 1)
                .collect::<Vec<i64>>()
        })?;
        Ok(rows.into_pyarray(py))
    }

    /// `(hits, misses, size, capacity)` of the cache of backbone vectors per history.
    fn history_cache_stats(&self) -> (u64, u64, usize, usize) {
        let s = self.model.history_cache_stats();
        (s.hits, s.misses, s.size, s.capacity)
    }

    /// `{attribute: [values]}` of the catalogue.
    fn attribute_values<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let out = PyDict::new(py);
        for a in &self.model.attributes {
            out.set_item(&a.name, &a.values)?;
        }
        Ok(out)
    }

    /// Writes the HNSW graph to `path` (e.g. `BUNDLE/index.hnsw`), building it if needed.
    fn save_index(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        let model = &self.model;
        detached(py, "Engine.save_index", || model.save_index(&path))?.map_err(model_error)
    }

    /// Sets the HNSW graph's default breadth from representative `queries` (user vectors),
    /// building the graph if needed; returns the breadth and the recall measured there.
    #[pyo3(signature = (queries, k, target=None))]
    fn calibrate_index(
        &self,
        py: Python<'_>,
        queries: &Bound<'_, PyAny>,
        k: i64,
        target: Option<f64>,
    ) -> PyResult<(usize, f64)> {
        let k = positive(k, "k")?;
        let target = target.unwrap_or(crate::index::policy::TARGET_RECALL);
        let queries = f32_array::<Ix2>(queries, "queries")?;
        let matrix = matrix_of(&queries)?;
        let model = &self.model;
        detached(py, "Engine.calibrate_index", || {
            model.calibrate_index(matrix, k, target)
        })?
        .map_err(model_error)
    }

    /// Whether queries search the HNSW graph (else the exact scan).
    #[getter]
    fn uses_hnsw(&self) -> bool {
        self.model.has_index()
    }

    #[getter]
    fn num_items(&self) -> usize {
        self.model.num_items
    }

    #[getter]
    fn prompt_dim(&self) -> usize {
        self.model.prompt_dim()
    }

    #[getter]
    fn max_len(&self) -> usize {
        self.model.max_len()
    }

    #[getter]
    fn strength_default(&self) -> f32 {
        self.model.strength_default
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Engine>()?;
    m.add("BundleFormatError", m.py().get_type::<BundleFormatError>())?;
    Ok(())
}
