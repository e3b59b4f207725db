// Over 400 lines because loading and the query path share `Model`'s private fields.
//! A loaded model: bundle + backbone + steering + prompt encoder + retrieval, queried by
//! internal item rows. Item-id mapping and result decoration live in the bindings / Python.
//!
//! Scoring follows `docs/bundle.md`: items are scored by `[E_i, A_i] · h'`. The serving table
//! stores each item's `[E_i, A_i]` as one row (`d + A` floats), so a query is one inner-product
//! search; the backbone reads the first `d` floats of the same rows as its input embedding.

mod history_cache;
mod prompts;

use std::fmt;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use rayon::prelude::*;

use crate::bundle::{Attribute, Bundle, BundleError, IdRows, ItemId, SteerFamily};
use crate::index::compact::{self, CompactRows};
use crate::index::exact::{self, Hit, Matrix};
use crate::index::hnsw::{HnswIndex, HnswParams, SharedItems};
use crate::index::policy::{self, COMPACT_COPY_MAX_BYTES, INDEX_FILE};
pub use crate::index::policy::{Filter, Retrieval};
use crate::index::rowset::{Postings, RowSet};
use crate::nn::backbone::{Backbone, Rows};
use crate::nn::encoder::{PromptEncoder, PromptError};
use crate::nn::intent::{IntentHead, Polarity, Reading};
use crate::nn::steer::Steering;

pub use history_cache::CacheStats;
use history_cache::HistoryCache;

/// Why a load or a query failed.
#[derive(Debug)]
pub enum ModelError {
    Bundle(BundleError),
    Prompt(PromptError),
    /// A bad argument (Python `ValueError`).
    Argument(String),
    /// An unknown key: item id, attribute or attribute value (Python `KeyError`).
    Key(String),
}

impl fmt::Display for ModelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModelError::Bundle(e) => e.fmt(f),
            ModelError::Prompt(e) => e.fmt(f),
            ModelError::Argument(m) | ModelError::Key(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for ModelError {}

impl From<BundleError> for ModelError {
    fn from(e: BundleError) -> Self {
        ModelError::Bundle(e)
    }
}

impl From<PromptError> for ModelError {
    fn from(e: PromptError) -> Self {
        ModelError::Prompt(e)
    }
}

/// The largest steering strength a query may ask for: far beyond any useful steering (the model
/// is trained at 1.0); a bound keeps the float32 user vector and its scores finite.
pub const MAX_STRENGTH: f64 = 1e6;

/// The strength rule, the one place it is written: a finite number in `0..=MAX_STRENGTH`.
pub fn check_strength(strength: f64) -> Result<f32, ModelError> {
    if strength.is_finite() && (0.0..=MAX_STRENGTH).contains(&strength) {
        Ok(strength as f32)
    } else {
        Err(ModelError::Argument(format!(
            "strength must be a finite number >= 0 (at most 1e+06), got {strength}"
        )))
    }
}

/// How one query runs.
#[derive(Debug, Clone)]
pub struct QueryOptions {
    pub k: usize,
    pub strength: f32,
    /// Apply the prompt to the user vector (false: the plain backbone vector, `mode="hard"`).
    pub steer: bool,
    /// `mode="auto"`: also hard-exclude every value the intent head reads as refused with
    /// probability ≥ its `refuse_threshold` (no effect without a head, when not steering, at
    /// strength 0 or for a blank prompt).
    pub auto_exclude: bool,
    pub exclude_seen: bool,
    pub filter: Filter,
}

/// A model ready to answer queries. Immutable after load, so `&Model` is shared freely
/// between threads (the prompt cache has its own lock).
pub struct Model {
    pub dim: usize,
    pub num_items: usize,
    pub ids: Vec<ItemId>,
    pub titles: Vec<String>,
    pub attributes: Vec<Attribute>,
    pub strength_default: f32,
    id_rows: IdRows,
    /// `(N+1) × (d+A)`: row i is `[E_i, A_i]`; row 0 (padding) is zero and never returned.
    /// Shared with the HNSW index, which rescores from it.
    table: Arc<Vec<f32>>,
    width: usize,
    backbone: Backbone,
    steering: Steering,
    encoder: PromptEncoder,
    /// `(attribute index, value index)` of each intent value (empty without a head).
    intent_targets: Vec<(usize, usize)>,
    /// The families of the attribute block (columns `d..`), in column order.
    steered_families: Vec<SteerFamily>,
    /// Rows having each value of each attribute: every filter's allowed rows come from here.
    postings: Postings,
    /// The graph that answers queries (set at load when the bundle's retrieval uses one).
    index: OnceLock<HnswIndex>,
    /// A graph built only to be saved or calibrated by a model that answers by the exact
    /// scan: it never answers this model's queries, so `save_index` does not turn exact
    /// answers into approximate ones.
    unserved: OnceLock<HnswIndex>,
    /// The compact copy (int8 or bfloat16) the exact scan reads first, when no graph serves
    /// queries and the copy is small enough ([`COMPACT_COPY_MAX_BYTES`]).
    compact: Option<CompactRows>,
    histories: HistoryCache,
    /// `dpr.json` `steer.prompts`: false for a filter-only bundle, which refuses every
    /// non-blank prompt ([`prompts::NO_PROMPT`]).
    takes_prompts: bool,
    /// Whether the HNSW index builds (or keeps from its file) value graphs
    /// ([`crate::index::subgraph`]).
    value_graphs: bool,
}

const _: () = {
    const fn shared<T: Send + Sync>() {}
    shared::<Model>();
};

/// The saved graph at `file` if there is one (with the value graphs saved in it), else a new
/// one over rows 1..=N of `table` (`(N+1) × width`) with a value graph for each attribute
/// value [`policy::wants_value_graph`] picks among `postings`; either way the index rescores
/// from `table`. Without `value_graphs`, the index holds none.
fn open_index(
    table: &Arc<Vec<f32>>,
    (width, num_items): (usize, usize),
    file: &Path,
    postings: &Postings,
    value_graphs: bool,
) -> Result<HnswIndex, ModelError> {
    let index_error = |e: crate::index::hnsw::HnswError| {
        ModelError::Bundle(BundleError::Index {
            message: e.to_string(),
        })
    };
    let shared = SharedItems {
        data: Arc::clone(table),
        cols: width,
    };
    if file.is_file() {
        let index = HnswIndex::load_shared(file, shared, value_graphs).map_err(index_error)?;
        if index.rows() != (1..num_items + 1) || index.dim() != width {
            return Err(ModelError::Bundle(BundleError::Index {
                message: "the saved index does not cover this bundle's items".into(),
            }));
        }
        return Ok(index);
    }
    let index = HnswIndex::build_shared(shared, 1..num_items + 1, &HnswParams::default())
        .map_err(index_error)?;
    if value_graphs {
        for rows in postings.value_rows() {
            if policy::wants_value_graph(rows.len(), num_items) {
                let rows: Vec<usize> = rows.iter().map(|&r| r as usize).collect();
                index.add_subgraph(&rows).map_err(index_error)?;
            }
        }
    }
    Ok(index)
}

/// `(attribute index, value index)` of each of the intent head's `(family, value)` among
/// `attributes` (the bundle reader has checked that each exists).
fn intent_targets(
    values: &[(String, String)],
    attributes: &[Attribute],
) -> Result<Vec<(usize, usize)>, ModelError> {
    values
        .iter()
        .map(|(family, value)| {
            attributes
                .iter()
                .enumerate()
                .find(|(_, a)| &a.name == family)
                .and_then(|(i, a)| Some((i, a.values.iter().position(|v| v == value)?)))
                .ok_or_else(|| {
                    ModelError::Bundle(BundleError::Config {
                        field: "intent.values".into(),
                        message: format!(
                            "intent.values: [{family:?}, {value:?}] is not an item attribute value"
                        ),
                    })
                })
        })
        .collect()
}

/// `filter` that also leaves out every `(attribute index, value index)` of `values`, each
/// under its own attribute.
fn excluding(filter: &Filter, values: &[(usize, usize)]) -> Filter {
    let mut filter = filter.clone();
    for &(attribute, value) in values {
        match filter.exclude.iter_mut().find(|(a, _)| *a == attribute) {
            Some((_, values)) => values.push(value),
            None => filter.exclude.push((attribute, vec![value])),
        }
    }
    filter
}

/// Where one steered family's values go in an item row.
#[derive(Debug, PartialEq)]
struct SteerColumns {
    /// Index of the family's attribute in the bundle's attributes.
    attribute: usize,
    /// Per value index of the attribute, its column in the row (`d + offset + position`), or
    /// `None` for a value the family does not list.
    columns: Vec<Option<usize>>,
}

/// The columns of every steered family's values in rows of `width = d + A` floats (the
/// families' values fill `d..width` in order; the bundle reader has checked them).
fn steer_columns(
    families: &[SteerFamily],
    attributes: &[Attribute],
    d: usize,
    width: usize,
) -> Result<Vec<SteerColumns>, ModelError> {
    let mut next = d;
    let mut out = Vec::with_capacity(families.len());
    for family in families {
        let (attribute, attr) = attributes
            .iter()
            .enumerate()
            .find(|(_, a)| a.name == family.name)
            .ok_or_else(|| {
                BundleError::config(
                    "steer.families",
                    format!("steer.families: {:?} is not an item attribute", family.name),
                )
            })?;
        let listed: rustc_hash::FxHashMap<&str, usize> = family
            .values
            .iter()
            .enumerate()
            .map(|(position, value)| (value.as_str(), next + position))
            .collect();
        let columns = attr
            .values
            .iter()
            .map(|value| listed.get(value.as_str()).copied())
            .collect();
        out.push(SteerColumns { attribute, columns });
        next += family.values.len();
    }
    if next != width {
        return Err(BundleError::config(
            "steer.families",
            format!(
                "steer.families hold {} values, the steering head's output has {}",
                next - d,
                width.saturating_sub(d)
            ),
        )
        .into());
    }
    Ok(out)
}

/// The item table, `(N+1) × width`: row i is `[E_i, A_i]`, where `embedding` is `(N+1) × d`
/// and `A_i` has a 1 in the column of each steered value item i has. It is built in the
/// embedding's own buffer (rows move back to front, so none is overwritten before it moves):
/// a large catalogue loads without a second table-sized allocation.
fn item_table(
    embedding: Vec<f32>,
    d: usize,
    n: usize,
    width: usize,
    steered: &[SteerColumns],
    attributes: &[Attribute],
) -> Vec<f32> {
    let mut table = embedding;
    table.resize((n + 1) * width, 0.0);
    for row in (0..=n).rev() {
        table.copy_within(row * d..(row + 1) * d, row * width);
        let out = &mut table[row * width..(row + 1) * width];
        out[d..].fill(0.0);
        for family in steered {
            for v in attributes[family.attribute].values_of(row) {
                if let Some(column) = family.columns[v] {
                    out[column] = 1.0;
                }
            }
        }
    }
    table
}

impl Model {
    /// Loads and validates the bundle at `path` (see [`Bundle::open`]).
    pub fn load(
        path: &Path,
        verify_checksums: bool,
        cache_capacity: usize,
        history_cache: usize,
        retrieval: Retrieval,
        value_graphs: bool,
    ) -> Result<Model, ModelError> {
        let mut bundle = Bundle::open(path, verify_checksums)?;
        let takes_prompts = bundle.steer.prompts;
        let encoder_dir = bundle.encoder_dir();
        let max_tokens = bundle.encoder.max_tokens;
        // The encoder (float16 → float32 weights) loads beside the item table and the index.
        let (encoder, (backbone, steering, intent, table, index, postings)) =
            std::thread::scope(|scope| {
                let encoder =
                    scope.spawn(|| PromptEncoder::load(&encoder_dir, max_tokens, cache_capacity));
                let graphs = (retrieval, value_graphs);
                let rest = Self::load_items(path, &mut bundle, cache_capacity, graphs);
                let encoder = encoder
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
                Ok::<_, ModelError>((encoder?, rest?))
            })?;
        let features = intent.as_ref().map_or(0, |h| h.feature_dim());
        if encoder.dim() + features != steering.prompt_dim() {
            let plus = if features > 0 {
                format!(" plus {features} intent features")
            } else {
                String::new()
            };
            return Err(ModelError::Bundle(BundleError::Encoder {
                file: format!("{}/config.json", bundle.encoder.dir),
                message: format!(
                    "the encoder's hidden size {}{plus} differs from steer.prompt_dim {}",
                    encoder.dim(),
                    steering.prompt_dim()
                ),
            }));
        }
        let intent_targets = match &intent {
            None => Vec::new(),
            Some(head) => intent_targets(head.values(), &bundle.attributes)?,
        };
        let encoder = match intent {
            None => encoder,
            Some(head) => encoder.with_intent(Arc::new(head)).map_err(|message| {
                ModelError::Bundle(BundleError::Encoder {
                    file: format!("{}/config.json", bundle.encoder.dir),
                    message,
                })
            })?,
        };
        let attributes = std::mem::take(&mut bundle.attributes);
        let n = bundle.num_items;
        let mut model = Model {
            dim: bundle.dim,
            num_items: n,
            ids: std::mem::take(&mut bundle.ids),
            titles: std::mem::take(&mut bundle.titles),
            attributes,
            strength_default: bundle.steer.strength_default,
            id_rows: std::mem::take(&mut bundle.id_rows),
            width: steering.output_dim(),
            table,
            backbone,
            steering,
            encoder,
            intent_targets,
            steered_families: std::mem::take(&mut bundle.steer.families),
            postings,
            index: OnceLock::new(),
            unserved: OnceLock::new(),
            compact: None,
            histories: HistoryCache::new(history_cache),
            takes_prompts,
            value_graphs,
        };
        match index {
            Some(index) => {
                let _ = model.index.set(index);
            }
            None => model.compact = model.compact_copy(),
        }
        Ok(model)
    }

    /// The backbone, the steering head, the intent head (if any), the item table and (when
    /// queries use it) the HNSW index.
    #[allow(clippy::type_complexity)]
    fn load_items(
        path: &Path,
        bundle: &mut Bundle,
        cache_capacity: usize,
        (retrieval, value_graphs): (Retrieval, bool),
    ) -> Result<
        (
            Backbone,
            Steering,
            Option<IntentHead>,
            Arc<Vec<f32>>,
            Option<HnswIndex>,
            Postings,
        ),
        ModelError,
    > {
        let weights = bundle.take_weights()?;
        let backbone = Backbone::new(
            &bundle.backbone,
            bundle.dim,
            bundle.steer.layer_norm_eps,
            weights.backbone,
        )?;
        let steering = Steering::new(bundle.dim, &bundle.steer, weights.steer, cache_capacity)?;
        let intent = match (&bundle.intent, weights.intent) {
            (Some(config), Some(w)) => Some(IntentHead::from_weights(config, w)?),
            _ => None,
        };
        let (d, n) = (bundle.dim, bundle.num_items);
        let width = steering.output_dim();
        let columns = steer_columns(&bundle.steer.families, &bundle.attributes, d, width)?;
        let table = item_table(
            weights.item_embedding,
            d,
            n,
            width,
            &columns,
            &bundle.attributes,
        );
        let table = Arc::new(table);
        let postings = Postings::build(&bundle.attributes, n);
        let index = if retrieval.uses_graph(n) {
            let file = path.join(INDEX_FILE);
            Some(open_index(
                &table,
                (width, n),
                &file,
                &postings,
                value_graphs,
            )?)
        } else {
            None
        };
        Ok((backbone, steering, intent, table, index, postings))
    }

    fn matrix(&self) -> Result<Matrix<'_>, ModelError> {
        Matrix::new(&self.table, self.num_items + 1, self.width)
            .map_err(|e| ModelError::Argument(e.to_string()))
    }

    /// The compact copy of the item table for the exact scan, unless it could exceed
    /// [`COMPACT_COPY_MAX_BYTES`] (at 2 bytes a value, the larger kind) or the table holds
    /// values too large for it.
    fn compact_copy(&self) -> Option<CompactRows> {
        let values = (self.num_items + 1) * self.width;
        if values.saturating_mul(2) > COMPACT_COPY_MAX_BYTES {
            return None;
        }
        CompactRows::new(self.matrix().ok()?)
    }

    /// The exact top-k among rows passing `keep`: from the compact copy when there is one.
    fn scan(
        &self,
        items: Matrix<'_>,
        vector: &[f32],
        k: usize,
        exclude: &[usize],
        keep: exact::Keep<'_>,
        parallel: bool,
    ) -> Result<Vec<Hit>, exact::RetrieveError> {
        match &self.compact {
            Some(copy) => compact::top_k_where(items, copy, vector, k, exclude, keep),
            None => exact::top_k_where(items, vector, k, exclude, keep, parallel),
        }
    }

    /// The HNSW graph to save or calibrate: the one answering queries, else one built now
    /// (once) that queries keep ignoring.
    fn graph(&self) -> Result<&HnswIndex, ModelError> {
        if let Some(index) = self.index.get().or(self.unserved.get()) {
            return Ok(index);
        }
        let shape = (self.width, self.num_items);
        let built = open_index(
            &self.table,
            shape,
            Path::new(""),
            &self.postings,
            self.value_graphs,
        )?;
        Ok(self.unserved.get_or_init(|| built))
    }

    /// Saves the HNSW graph (building it first if needed) to `file`.
    pub fn save_index(&self, file: &Path) -> Result<(), ModelError> {
        self.graph()?
            .save(file)
            .map_err(|e| ModelError::Argument(e.to_string()))
    }

    /// Sets the HNSW graph's default breadth from representative `queries` (steered user
    /// vectors, `width` floats each), building the graph first if needed (see
    /// [`HnswIndex::calibrate`]).
    pub fn calibrate_index(
        &self,
        queries: Matrix<'_>,
        k: usize,
        target: f64,
    ) -> Result<(usize, f64), ModelError> {
        self.graph()?
            .calibrate(queries, k, target)
            .map_err(|e| ModelError::Argument(e.to_string()))
    }

    /// Whether queries use the HNSW graph (when the filter is not too selective).
    pub fn has_index(&self) -> bool {
        self.index.get().is_some()
    }

    /// Items having value `value` of attribute `attribute`.
    pub fn value_count(&self, attribute: usize, value: usize) -> usize {
        self.postings.count(attribute, value)
    }

    /// Width of a steered user vector (`d + A`).
    pub fn vector_dim(&self) -> usize {
        self.width
    }

    pub fn prompt_dim(&self) -> usize {
        self.steering.prompt_dim()
    }

    pub fn max_len(&self) -> usize {
        self.backbone.max_len()
    }

    pub fn encoder(&self) -> &PromptEncoder {
        &self.encoder
    }

    /// The internal row of an external id.
    pub fn row_of(&self, id: &ItemId) -> Option<u32> {
        self.id_rows.get(id)
    }

    /// The prompt's input to the steering head, `prompt_dim` floats (cached; blank → zeros):
    /// the sentence embedding, followed by the intent features when the bundle has a head.
    /// A bundle that takes no prompt refuses a non-blank one ([`prompts::NO_PROMPT`]).
    pub fn encode_prompt(&self, prompt: &str) -> Result<Arc<[f32]>, ModelError> {
        let input = self.encoder.encode(prompt)?;
        prompts::check(self.takes_prompts, &input)?;
        Ok(input)
    }

    /// The prompt input a query with `prompt` runs on: its encoding when `steer`, else zeros
    /// (the prompt is ignored), except that a bundle taking no prompt refuses a non-blank one
    /// either way.
    pub fn query_prompt(&self, prompt: &str, steer: bool) -> Result<Arc<[f32]>, ModelError> {
        if steer || !self.takes_prompts {
            self.encode_prompt(prompt)
        } else {
            Ok(vec![0.0f32; self.prompt_dim()].into())
        }
    }

    /// The attribute families of the steered vector's coordinates `d..`, in column order.
    pub fn steered_families(&self) -> &[SteerFamily] {
        &self.steered_families
    }

    /// The intent read-out head, if the bundle has one.
    pub fn intent(&self) -> Option<&IntentHead> {
        self.encoder.intent()
    }

    /// What the intent head reads in `prompt`: the values asked for or refused with
    /// probability ≥ its detect threshold, most confident first (blank → none). An
    /// `Argument` error for a bundle without a head.
    /// A bundle that takes no prompt reads nothing: `[]` for a blank prompt, [`prompts::NO_PROMPT`]
    /// for any other.
    pub fn interpret(&self, prompt: &str) -> Result<Vec<Reading>, ModelError> {
        if !self.takes_prompts {
            self.encode_prompt(prompt)?;
            return Ok(Vec::new());
        }
        let head = self.intent().ok_or_else(|| {
            ModelError::Argument(
                "this bundle has no intent read-out (dpr.json has no intent section): \
                 interpret needs a version-2 bundle exported from a model with an intent head"
                    .into(),
            )
        })?;
        let input = self.encoder.encode(prompt)?;
        Ok(head.read(&input))
    }

    /// `(attribute index, value index)` of each intent value, as filters name them.
    pub fn intent_target(&self, value: usize) -> Option<(usize, usize)> {
        self.intent_targets.get(value).copied()
    }

    /// `(attribute index, value index)` of every value `prompt` (a prompt input) refuses with
    /// probability ≥ the refuse threshold: what mode "auto" hard-excludes (none without a head).
    pub fn auto_exclusions(&self, prompt: &[f32]) -> Vec<(usize, usize)> {
        self.intent().map_or_else(Vec::new, |head| {
            head.refused(prompt)
                .into_iter()
                .map(|j| self.intent_targets[j])
                .collect()
        })
    }

    /// `filter` plus, in auto mode, [`Model::auto_exclusions`]; `None` when nothing is added.
    fn auto_filter(&self, prompt: &[f32], options: &QueryOptions) -> Option<Filter> {
        if !(options.auto_exclude && options.steer && options.strength != 0.0) {
            return None;
        }
        let refused = self.auto_exclusions(prompt);
        if refused.is_empty() {
            return None;
        }
        Some(excluding(&options.filter, &refused))
    }

    /// Whether `filter` overrules what the intent head reads in `prompt` (a prompt input): it
    /// excludes every value the head reads, and at least one of them is read as asked for. The
    /// filter then contradicts the reading (a refusal the head misread, e.g. "hold the horror"
    /// with Horror excluded) and says everything else the prompt says, so the query ranks the
    /// items it allows by the unsteered backbone, as the filter alone would (the rule and its
    /// measurement: docs/prompts.md, "A filter overrules a contradicting reading").
    fn filters_overrule(&self, prompt: &[f32], filter: &Filter) -> bool {
        let Some(head) = self.intent() else {
            return false;
        };
        if filter.exclude.is_empty() {
            return false;
        }
        let mut contradicted = false;
        for (j, polarity) in head.detected(prompt) {
            let (attribute, value) = self.intent_targets[j];
            if !filter.excludes(attribute, value) {
                return false;
            }
            contradicted |= polarity == Polarity::Asked;
        }
        contradicted
    }

    /// The steered user vector a query ranks by and, in auto mode, the filter with its
    /// exclusions added (`None`: `options.filter` as given).
    pub fn query_vector(
        &self,
        history: &[u32],
        prompt: &[f32],
        options: &QueryOptions,
    ) -> Result<(Vec<f32>, Option<Filter>), ModelError> {
        let auto = self.auto_filter(prompt, options);
        let overruled = options.steer
            && self.filters_overrule(prompt, auto.as_ref().unwrap_or(&options.filter));
        let strength = if overruled { 0.0 } else { options.strength };
        let vector = self.user_vector(history, prompt, strength, options.steer)?;
        Ok((vector, auto))
    }

    fn check_history(&self, history: &[u32]) -> Result<(), ModelError> {
        match history
            .iter()
            .find(|&&r| r == 0 || r as usize > self.num_items)
        {
            Some(r) => Err(ModelError::Argument(format!(
                "history row {r} is not an item row (1..={})",
                self.num_items
            ))),
            None => Ok(()),
        }
    }

    /// `[h, 0] + strength · shift`: the backbone's vector after `history`, steered by the
    /// prompt embedding (`steer == false` or a zero prompt leaves it unsteered).
    pub fn user_vector(
        &self,
        history: &[u32],
        prompt: &[f32],
        strength: f32,
        steer: bool,
    ) -> Result<Vec<f32>, ModelError> {
        self.check_history(history)?;
        if prompt.len() != self.prompt_dim() {
            return Err(ModelError::Argument(format!(
                "prompt embedding has {} floats, the model expects {}",
                prompt.len(),
                self.prompt_dim()
            )));
        }
        check_strength(f64::from(strength))?;
        prompts::check(self.takes_prompts, prompt)?;
        let rows = Rows {
            data: &self.table,
            stride: self.width,
            width: self.dim,
        };
        // What the history alone determines, cached together: the backbone's vector `h`, then
        // (for a bundle that steers) the steering's terms in `h`.
        let terms = if self.takes_prompts {
            self.steering.history_terms_len()
        } else {
            0
        };
        let mut state = vec![0.0f32; self.dim + terms];
        let window = self.backbone.window(history);
        self.histories.get_or_compute(window, &mut state, |state| {
            let (h, terms) = state.split_at_mut(self.dim);
            self.backbone.user_vector(rows, window, h);
            if !terms.is_empty() {
                self.steering.history_terms(h, terms);
            }
        });
        let (h, terms) = state.split_at(self.dim);
        let mut out = vec![0.0f32; self.width];
        let mut gates = vec![0.0f32; self.steering.num_experts()];
        let strength = if steer { strength } else { 0.0 };
        if strength != 0.0 && !terms.is_empty() {
            let prepared = self.steering.prepare(prompt);
            self.steering
                .steer(h, terms, &prepared, strength, &mut out, &mut gates);
        } else {
            out[..self.dim].copy_from_slice(h);
        }
        Ok(out)
    }

    /// The item vectors `[E_i, A_i]` of rows 1..=N, row-major (`N × vector_dim`): exactly what
    /// queries score a user vector against.
    pub fn item_vectors(&self) -> &[f32] {
        &self.table[self.width..(self.num_items + 1) * self.width]
    }

    /// Rows (ascending) of the items having at least one of `values` of attribute `attribute`
    /// (indices as [`Model::resolve`] gives them).
    pub fn rows_with(&self, attribute: usize, values: &[usize]) -> Vec<u32> {
        let filter = Filter {
            include: vec![(attribute, values.to_vec())],
            exclude: Vec::new(),
        };
        let mut rows: Vec<u32> = self
            .postings
            .allowed(&filter, &self.attributes, &[])
            .iter()
            .map(|row| row as u32)
            .collect();
        rows.sort_unstable();
        rows
    }

    /// Hits, misses and size of the cache of backbone vectors per history.
    pub fn history_cache_stats(&self) -> CacheStats {
        self.histories.stats()
    }

    /// The best `k` items for `vector` (a steered user vector), never row 0, never a row in
    /// `seen` when `exclude_seen`, only rows passing `filter`. `parallel` lets one large scan
    /// use every core; batch callers parallelise across queries instead.
    pub fn search(
        &self,
        vector: &[f32],
        seen: &[u32],
        options: &QueryOptions,
        parallel: bool,
    ) -> Result<Vec<Hit>, ModelError> {
        let mut exclude: Vec<usize> = Vec::with_capacity(1 + seen.len());
        exclude.push(0);
        if options.exclude_seen {
            exclude.extend(seen.iter().map(|&r| r as usize));
        }
        let items = self.matrix()?;
        let filter = &options.filter;
        let argument = |e: &dyn fmt::Display| ModelError::Argument(e.to_string());
        if filter.is_empty() {
            if let Some(index) = self.index.get() {
                return index
                    .search_excluding(vector, options.k, 0, &exclude)
                    .map_err(|e| argument(&e));
            }
            return self
                .scan(items, vector, options.k, &exclude, None, parallel)
                .map_err(|e| argument(&e));
        }
        let allowed = self.postings.allowed(filter, &self.attributes, &exclude);
        if let Some(index) = self.index.get() {
            return index
                .search(vector, options.k, 0, Some(&allowed))
                .map_err(|e| argument(&e));
        }
        match &allowed {
            RowSet::Sorted(_) => exact::top_k_among(items, 0, vector, options.k, &allowed),
            RowSet::Bits { .. } => {
                let keep = |row: usize| allowed.contains(row);
                self.scan(items, vector, options.k, &[], Some(&keep), parallel)
            }
        }
        .map_err(|e| argument(&e))
    }

    /// One query: history rows + prompt input (`prompt_dim` floats) → hits (internal rows,
    /// best first). With `options.auto_exclude`, the values the prompt refuses are excluded
    /// as well (see [`QueryOptions`]).
    pub fn query(
        &self,
        history: &[u32],
        prompt: &[f32],
        options: &QueryOptions,
        parallel: bool,
    ) -> Result<Vec<Hit>, ModelError> {
        let (vector, auto) = self.query_vector(history, prompt, options)?;
        match auto {
            None => self.search(&vector, history, options, parallel),
            Some(filter) => {
                let options = QueryOptions {
                    filter,
                    ..options.clone()
                };
                self.search(&vector, history, &options, parallel)
            }
        }
    }

    /// Many queries in parallel (rayon); prompt `i` goes with history `i`.
    pub fn query_batch(
        &self,
        histories: &[Vec<u32>],
        prompts: &[Arc<[f32]>],
        options: &QueryOptions,
    ) -> Result<Vec<Vec<Hit>>, ModelError> {
        if histories.len() != prompts.len() {
            return Err(ModelError::Argument(format!(
                "{} histories but {} prompts",
                histories.len(),
                prompts.len()
            )));
        }
        histories
            .par_iter()
            .zip(prompts.par_iter())
            .map(|(history, prompt)| self.query(history, prompt, options, false))
            .collect()
    }

    /// Encodes every distinct prompt once (cached), in order: prompt inputs, as
    /// [`Model::encode_prompt`].
    pub fn encode_prompts(&self, texts: &[&str]) -> Result<Vec<Arc<[f32]>>, ModelError> {
        let inputs = self.encoder.encode_many(texts)?;
        for input in &inputs {
            prompts::check(self.takes_prompts, input)?;
        }
        Ok(inputs)
    }

    /// Resolves `(attribute, values)` names to indices; unknown names are `ModelError::Key`.
    pub fn resolve(
        &self,
        attribute: &str,
        values: &[String],
    ) -> Result<(usize, Vec<usize>), ModelError> {
        let (index, attr) = self
            .attributes
            .iter()
            .enumerate()
            .find(|(_, a)| a.name == attribute)
            .ok_or_else(|| {
                let known: Vec<&str> = self.attributes.iter().map(|a| a.name.as_str()).collect();
                ModelError::Key(format!(
                    "unknown attribute {attribute:?} (known: {known:?})"
                ))
            })?;
        let values = values
            .iter()
            .map(|v| {
                attr.values.iter().position(|x| x == v).ok_or_else(|| {
                    ModelError::Key(format!(
                        "attribute {attribute:?} has no value {v:?} (values: {:?})",
                        attr.values
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok((index, values))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An attribute over `items.len()` items; `items[i]` are the value indices of row `i + 1`.
    fn attribute(name: &str, values: &[&str], items: &[&[usize]]) -> Attribute {
        let w = values.len();
        let mut matrix = vec![0u8; (items.len() + 1) * w];
        for (i, item) in items.iter().enumerate() {
            for &v in *item {
                matrix[(i + 1) * w + v] = 1;
            }
        }
        Attribute {
            name: name.into(),
            values: values.iter().map(|v| v.to_string()).collect(),
            matrix,
        }
    }

    fn family(name: &str, values: &[&str]) -> SteerFamily {
        SteerFamily {
            name: name.into(),
            values: values.iter().map(|v| v.to_string()).collect(),
        }
    }

    /// Three items: Action + Drama of the 2000s, Comedy of the 1990s, nothing; and a language.
    fn catalogue() -> Vec<Attribute> {
        vec![
            attribute("language", &["en", "fr"], &[&[0], &[1], &[0]]),
            attribute(
                "genre",
                &["Action", "Comedy", "Drama"],
                &[&[0, 2], &[1], &[]],
            ),
            attribute("decade", &["1990s", "2000s"], &[&[1], &[0], &[]]),
        ]
    }

    /// The item table of `catalogue()` steering `families`, with d = 2 and `E_i = [i, -i]`.
    fn table_of(families: &[SteerFamily]) -> (Vec<f32>, usize) {
        let (d, n) = (2, 3);
        let attributes = catalogue();
        let width = d + families.iter().map(|f| f.values.len()).sum::<usize>();
        let embedding = (0..=n).flat_map(|i| [i as f32, -(i as f32)]).collect();
        let columns = steer_columns(families, &attributes, d, width).unwrap();
        (
            item_table(embedding, d, n, width, &columns, &attributes),
            width,
        )
    }

    #[test]
    fn the_item_table_has_a_one_per_steered_value_family_after_family() {
        // Genre listed in another order than the items file's, then decade.
        let families = [
            family("genre", &["Drama", "Action", "Comedy"]),
            family("decade", &["1990s", "2000s"]),
        ];
        let (table, width) = table_of(&families);
        assert_eq!(width, 7);
        #[rustfmt::skip]
        let want = [
            0.0, 0.0,   0.0, 0.0, 0.0,  0.0, 0.0,  // padding
            1.0, -1.0,  1.0, 1.0, 0.0,  0.0, 1.0,  // Drama, Action; 2000s
            2.0, -2.0,  0.0, 0.0, 1.0,  1.0, 0.0,  // Comedy; 1990s
            3.0, -3.0,  0.0, 0.0, 0.0,  0.0, 0.0,  // nothing steered
        ];
        assert_eq!(table, want);
        let ones = table[width + 2..2 * width]
            .iter()
            .filter(|&&x| x == 1.0)
            .count();
        assert_eq!(ones, 3, "two genres and a decade");
    }

    #[test]
    fn values_a_family_does_not_list_get_no_column() {
        let families = [
            family("decade", &["2000s"]),
            family("genre", &["Comedy", "Action"]),
        ];
        let (table, width) = table_of(&families);
        assert_eq!(width, 5);
        assert_eq!(&table[width + 2..2 * width], [1.0, 0.0, 1.0]); // 2000s; Action, no Drama
        assert_eq!(&table[2 * width + 2..3 * width], [0.0, 1.0, 0.0]); // no 1990s; Comedy
                                                                       // One family in the items file's order: column d + v for value v, as before version 4.
        let (table, width) = table_of(&[family("genre", &["Action", "Comedy", "Drama"])]);
        assert_eq!(&table[width + 2..2 * width], [1.0, 0.0, 1.0]);
        let (table, width) = table_of(&[]);
        assert_eq!(width, 2);
        assert_eq!(table, [0.0, 0.0, 1.0, -1.0, 2.0, -2.0, 3.0, -3.0]);
    }

    #[test]
    fn steer_columns_are_errors_for_an_unknown_family_or_another_width() {
        let attributes = catalogue();
        let mood = steer_columns(&[family("mood", &["Dark"])], &attributes, 2, 3);
        assert!(
            matches!(&mood, Err(ModelError::Bundle(BundleError::Config { field, .. })) if field == "steer.families"),
            "{mood:?}"
        );
        let decade = [family("decade", &["1990s", "2000s"])];
        assert!(steer_columns(&decade, &attributes, 2, 5).is_err());
        assert_eq!(
            steer_columns(&decade, &attributes, 2, 4).unwrap(),
            [SteerColumns {
                attribute: 2,
                columns: vec![Some(2), Some(3)]
            }]
        );
    }

    #[test]
    fn auto_exclusions_land_in_the_family_of_each_intent_value() {
        let attributes = catalogue();
        let pair = |f: &str, v: &str| (f.to_owned(), v.to_owned());
        let values = [
            pair("genre", "Comedy"),
            pair("decade", "2000s"),
            pair("genre", "Drama"),
        ];
        let targets = intent_targets(&values, &attributes).unwrap();
        assert_eq!(targets, [(1, 1), (2, 1), (1, 2)]);
        // Refusing Comedy and the 2000s leaves out rows 1 (2000s) and 2 (Comedy).
        let filter = excluding(&Filter::default(), &targets[..2]);
        assert_eq!(filter.exclude, [(1, vec![1]), (2, vec![1])]);
        let passing = |filter: &Filter| -> Vec<usize> {
            (1..=3).filter(|&r| filter.passes(&attributes, r)).collect()
        };
        assert_eq!(passing(&filter), [3]);
        // Added to a caller's filter: the same family's list grows, others stay.
        let caller = Filter {
            include: vec![(0, vec![0])],
            exclude: vec![(1, vec![2])],
        };
        let filter = excluding(&caller, &targets[..2]);
        assert_eq!(filter.include, caller.include);
        assert_eq!(filter.exclude, [(1, vec![2, 1]), (2, vec![1])]);
        assert_eq!(passing(&filter), [3]);
        let filter = excluding(&caller, &[targets[0]]);
        assert_eq!(passing(&filter), [3]);
        assert_eq!(
            passing(&excluding(&Filter::default(), &[targets[1]])),
            [2, 3]
        );
        let unknown = intent_targets(&[pair("decade", "1980s")], &attributes);
        assert!(matches!(unknown, Err(ModelError::Bundle(_))));
    }
}
