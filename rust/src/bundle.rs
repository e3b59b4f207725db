//! Reading and validating a model bundle (format: `docs/bundle.md`, writer: `dpr.export`).
//!
//! `Bundle::open` reads `dpr.json`, checks the format and version, optionally checks every
//! file against its sha256, memory-maps `weights.safetensors`, checks that every tensor the
//! configuration implies is present with its shape and dtype (and no other), that no float is
//! NaN/Inf, and that `items.json` agrees with the weights. Every error names the file and the
//! field. Nothing here panics on any input.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use rustc_hash::FxHashMap;
use safetensors::{Dtype, SafeTensors};
use serde::Deserialize;
use sha2::{Digest, Sha256};

pub const FORMAT: &str = "dpr-bundle";
/// The newest bundle version (2 adds the optional intent read-out).
pub const VERSION: i64 = 2;
/// Every version this reader accepts.
pub const READ_VERSIONS: [i64; 2] = [1, 2];
pub const CONFIG_FILE: &str = "dpr.json";
pub const WEIGHTS_FILE: &str = "weights.safetensors";
/// The largest dimension or count `dpr.json` may state (items are addressed by u32 rows).
pub const MAX_SIZE: usize = (u32::MAX - 1) as usize;
/// The most SASRec blocks or GRU layers a bundle may have.
pub const MAX_LAYERS: usize = 1024;

/// What is wrong with a bundle, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BundleError {
    /// A file the bundle needs is not there.
    Missing { file: PathBuf, why: String },
    /// A file is there but its content is wrong.
    Invalid { file: String, message: String },
}

impl BundleError {
    fn invalid(file: &str, message: impl Into<String>) -> Self {
        BundleError::Invalid {
            file: file.to_owned(),
            message: message.into(),
        }
    }
}

impl fmt::Display for BundleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BundleError::Missing { file, why } => write!(f, "{}: {why}", file.display()),
            BundleError::Invalid { file, message } => write!(f, "{file}: {message}"),
        }
    }
}

impl std::error::Error for BundleError {}

/// Which SASRec position embedding row each history item gets.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Positions {
    /// The most recent item is row 0, the one before it row 1, and so on.
    FromEnd,
    /// The oldest item of the (at most `max_len`) history is row 0: bundles written before
    /// `positions` existed.
    #[default]
    FromStart,
}

/// The backbone's hyper-parameters (`dpr.json` `backbone`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum BackboneConfig {
    Sasrec {
        max_len: usize,
        num_blocks: usize,
        num_heads: usize,
        ffn_dim: usize,
        #[serde(default)]
        positions: Positions,
    },
    Gru4rec {
        max_len: usize,
        num_layers: usize,
    },
}

impl BackboneConfig {
    pub fn max_len(&self) -> usize {
        match self {
            BackboneConfig::Sasrec { max_len, .. } | BackboneConfig::Gru4rec { max_len, .. } => {
                *max_len
            }
        }
    }
}

/// The steering head's hyper-parameters (`dpr.json` `steer`).
#[derive(Debug, Clone, Deserialize)]
pub struct SteerConfig {
    pub attribute_dim: usize,
    pub prompt_dim: usize,
    pub positive_experts: usize,
    pub negative_experts: usize,
    pub projector_hidden: usize,
    pub expert_hidden: usize,
    pub router_hidden: usize,
    #[serde(default)]
    pub attribute: Option<String>,
    #[serde(default)]
    pub values: Vec<String>,
    #[serde(default = "one")]
    pub strength_default: f32,
    #[serde(default = "layer_norm_eps")]
    pub layer_norm_eps: f32,
}

fn one() -> f32 {
    1.0
}

fn layer_norm_eps() -> f32 {
    1e-5
}

/// How prompts are encoded (`dpr.json` `prompt_encoder`).
#[derive(Debug, Clone, Deserialize)]
pub struct EncoderConfig {
    pub dir: String,
    pub max_tokens: usize,
    pub dim: usize,
}

/// The intent read-out head (`dpr.json` `intent`, version 2): per attribute value, the
/// probability that a prompt asks for it or refuses it.
#[derive(Debug, Clone, Deserialize)]
pub struct IntentConfig {
    /// `(family, value)` of each of the V outputs, in order.
    pub values: Vec<(String, String)>,
    /// Width of the sentence embedding it reads (the prompt encoder's `dim`).
    pub embedding_dim: usize,
    pub hidden: usize,
    /// Informative; when present it must be [`INTENT_FEATURES`].
    #[serde(default)]
    pub features: Option<String>,
    /// When present it must be `"relu"`.
    #[serde(default)]
    pub activation: Option<String>,
    /// `mode="auto"` hard-excludes a value whose refused probability reaches this (0 < t ≤ 1).
    pub refuse_threshold: f64,
    /// `interpret` lists a value whose asked or refused probability reaches this (0 < t ≤ 1).
    #[serde(default = "half")]
    pub detect_threshold: f64,
}

/// The layout of the steering head's prompt input with an intent head.
pub const INTENT_FEATURES: &str = "embedding, p_asked, p_refused";

fn half() -> f64 {
    0.5
}

impl IntentConfig {
    /// V, the number of attribute values read out.
    pub fn num_values(&self) -> usize {
        self.values.len()
    }

    /// Floats the head appends to the embedding: `2V`.
    pub fn feature_dim(&self) -> usize {
        2 * self.values.len()
    }
}

#[derive(Debug, Clone, Deserialize)]
struct ItemsConfig {
    file: String,
}

#[derive(Debug, Clone, Deserialize)]
struct RawConfig {
    version: i64,
    backbone: BackboneConfig,
    dim: usize,
    num_items: usize,
    steer: SteerConfig,
    prompt_encoder: EncoderConfig,
    items: ItemsConfig,
    files: BTreeMap<String, String>,
    #[serde(default)]
    intent: Option<IntentConfig>,
}

/// An item's external id, as the dataset spells it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ItemId {
    Int(i64),
    Str(String),
}

/// External id → model row (1..=N).
#[derive(Debug, Clone)]
pub enum IdRows {
    /// Integer ids spanning a range not much wider than the catalogue (the common case):
    /// `rows[id - first]` is the row, 0 where no item has that id.
    Dense {
        first: i64,
        rows: Vec<u32>,
    },
    Map(FxHashMap<ItemId, u32>),
}

impl Default for IdRows {
    fn default() -> Self {
        Self::Map(FxHashMap::default())
    }
}

impl IdRows {
    /// The map of `ids` (row `i + 1` has `ids[i]`); `Err(i)` when `ids[i]` repeats an earlier id.
    pub fn new(ids: &[ItemId]) -> Result<Self, usize> {
        let ints = ids.iter().map(|id| match id {
            ItemId::Int(x) => Some(*x),
            ItemId::Str(_) => None,
        });
        let span = ints
            .clone()
            .try_fold((i64::MAX, i64::MIN), |(lo, hi), x| {
                x.map(|x| (lo.min(x), hi.max(x)))
            })
            .and_then(|(lo, hi)| Some((lo, usize::try_from(hi.checked_sub(lo)?).ok()?)));
        match span {
            Some((first, width)) if width < 2 * ids.len() + 1024 => {
                let mut rows = vec![0u32; width + 1];
                for (i, x) in ints.enumerate() {
                    let slot = &mut rows[(x.unwrap_or(first) - first) as usize];
                    if *slot != 0 {
                        return Err(i);
                    }
                    *slot = i as u32 + 1;
                }
                Ok(Self::Dense { first, rows })
            }
            _ => {
                let mut map = FxHashMap::with_capacity_and_hasher(ids.len(), Default::default());
                for (i, id) in ids.iter().enumerate() {
                    if map.insert(id.clone(), i as u32 + 1).is_some() {
                        return Err(i);
                    }
                }
                Ok(Self::Map(map))
            }
        }
    }

    /// The row of `id`, if an item has it.
    pub fn get(&self, id: &ItemId) -> Option<u32> {
        match (self, id) {
            (Self::Dense { first, rows }, ItemId::Int(x)) => {
                let slot = usize::try_from(x.checked_sub(*first)?).ok()?;
                rows.get(slot).copied().filter(|&row| row != 0)
            }
            (Self::Dense { .. }, ItemId::Str(_)) => None,
            (Self::Map(map), id) => map.get(id).copied(),
        }
    }
}

/// One item attribute: its values (column order) and, per row, the value indices it has.
#[derive(Debug, Clone)]
pub struct Attribute {
    pub name: String,
    pub values: Vec<String>,
    /// `(N+1) × values.len()` 0/1 matrix, row 0 (padding) all zero.
    pub matrix: Vec<u8>,
}

impl Attribute {
    pub fn width(&self) -> usize {
        self.values.len()
    }

    /// The value indices item `row` has.
    pub fn values_of(&self, row: usize) -> impl Iterator<Item = usize> + '_ {
        let w = self.width();
        self.matrix[row * w..(row + 1) * w]
            .iter()
            .enumerate()
            .filter(|(_, &v)| v != 0)
            .map(|(j, _)| j)
    }

    pub fn has(&self, row: usize, value: usize) -> bool {
        self.matrix[row * self.width() + value] != 0
    }
}

/// A float32 tensor copied out of the safetensors file (aligned, owned).
#[derive(Debug, Clone)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// A validated bundle, everything in memory.
#[derive(Debug)]
pub struct Bundle {
    pub root: PathBuf,
    /// `dpr.json` `version` (one of [`READ_VERSIONS`]).
    pub version: i64,
    pub backbone: BackboneConfig,
    pub dim: usize,
    pub num_items: usize,
    pub steer: SteerConfig,
    pub encoder: EncoderConfig,
    /// The intent read-out (version 2, optional).
    pub intent: Option<IntentConfig>,
    /// External ids of rows 1..=N (index 0 ↔ row 1).
    pub ids: Vec<ItemId>,
    /// External id → row (1..=N).
    pub id_rows: IdRows,
    pub titles: Vec<String>,
    pub attributes: Vec<Attribute>,
    pub tensors: HashMap<String, Tensor>,
}

impl Bundle {
    /// Reads and validates the bundle directory at `root`; `verify_checksums` also hashes
    /// every file against `dpr.json` `files`.
    pub fn open(root: &Path, verify_checksums: bool) -> Result<Bundle, BundleError> {
        if !root.is_dir() {
            return Err(BundleError::Missing {
                file: root.to_path_buf(),
                why: "no such bundle directory".into(),
            });
        }
        let config_text = read_text(root, CONFIG_FILE)?;
        let raw = parse_config(&config_text)?;
        for name in raw.files.keys() {
            let path = root.join(name);
            if !path.is_file() {
                return Err(BundleError::Missing {
                    file: path,
                    why: format!("missing (listed in {CONFIG_FILE} files)"),
                });
            }
        }
        for required in [WEIGHTS_FILE, raw.items.file.as_str()] {
            if !raw.files.contains_key(required) {
                return Err(BundleError::invalid(
                    CONFIG_FILE,
                    format!("files has no entry for {required}"),
                ));
            }
        }
        // Hashing runs beside parsing (it is a third of a large bundle's load); a digest
        // mismatch is reported before any parse error, since it explains it.
        let (items, weights) = std::thread::scope(|scope| {
            let digests = verify_checksums.then(|| scope.spawn(|| verify_files(root, &raw.files)));
            // Items (JSON) and weights (safetensors) parse side by side, then are cross-checked.
            let weights = scope.spawn(|| read_weights(root, &raw));
            let items = read_items(root, &raw);
            let weights = weights
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            let parsed = items.and_then(|items| {
                let weights = weights?;
                check_attributes(&raw, &items, &weights)?;
                Ok((items, weights))
            });
            if let Some(digests) = digests {
                digests
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))?;
            }
            parsed
        })?;
        let encoder_dir = root.join(&raw.prompt_encoder.dir);
        if !encoder_dir.is_dir() {
            return Err(BundleError::Missing {
                file: encoder_dir,
                why: "the prompt encoder folder is missing".into(),
            });
        }
        let Weights {
            floats,
            attributes: mut matrices,
        } = weights;
        let attributes = items
            .attributes
            .into_iter()
            .map(|(name, a)| {
                let matrix = matrices
                    .remove(&name)
                    .map(|(_, matrix)| matrix)
                    .unwrap_or_default();
                Attribute {
                    name,
                    values: a.values,
                    matrix,
                }
            })
            .collect();
        Ok(Bundle {
            root: root.to_path_buf(),
            version: raw.version,
            backbone: raw.backbone,
            dim: raw.dim,
            num_items: raw.num_items,
            steer: raw.steer,
            encoder: raw.prompt_encoder,
            intent: raw.intent,
            ids: items.ids,
            id_rows: items.id_rows,
            titles: items.titles,
            attributes,
            tensors: floats,
        })
    }

    /// The folder holding the prompt encoder's files.
    pub fn encoder_dir(&self) -> PathBuf {
        self.root.join(&self.encoder.dir)
    }

    pub fn attribute(&self, name: &str) -> Option<&Attribute> {
        self.attributes.iter().find(|a| a.name == name)
    }

    /// Takes tensor `name` out of the bundle (validated to exist by `open`).
    pub fn take(&mut self, name: &str) -> Result<Tensor, BundleError> {
        self.tensors
            .remove(name)
            .ok_or_else(|| BundleError::invalid(WEIGHTS_FILE, format!("missing tensor '{name}'")))
    }
}

fn read_text(root: &Path, name: &str) -> Result<String, BundleError> {
    let path = root.join(name);
    let mut text = String::new();
    File::open(&path)
        .and_then(|mut f| f.read_to_string(&mut text))
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => BundleError::Missing {
                file: path.clone(),
                why: "missing (not a bundle, or an unfinished one)".into(),
            },
            std::io::ErrorKind::InvalidData => BundleError::invalid(name, "not valid UTF-8 text"),
            _ => BundleError::invalid(name, format!("cannot read: {e}")),
        })?;
    Ok(text)
}

fn parse_config(text: &str) -> Result<RawConfig, BundleError> {
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| BundleError::invalid(CONFIG_FILE, format!("not valid JSON ({e})")))?;
    let format = value.get("format").and_then(|f| f.as_str());
    if format != Some(FORMAT) {
        return Err(BundleError::invalid(
            CONFIG_FILE,
            format!("format {:?} is not \"{FORMAT}\"", value.get("format")),
        ));
    }
    match value.get("version").and_then(|v| v.as_i64()) {
        Some(v) if READ_VERSIONS.contains(&v) => {}
        other => {
            return Err(BundleError::invalid(
                CONFIG_FILE,
                format!("version {other:?} is not supported (this reader knows 1 and 2)"),
            ))
        }
    }
    let raw: RawConfig = serde_json::from_value(value)
        .map_err(|e| BundleError::invalid(CONFIG_FILE, e.to_string()))?;
    let check = |ok: bool, msg: &str| {
        if ok {
            Ok(())
        } else {
            Err(BundleError::invalid(CONFIG_FILE, msg))
        }
    };
    // Sizes index u32 rows and multiply into shapes: bounding them keeps every product in
    // range, and a layer count is bounded because each layer needs tensors in the file.
    let s = &raw.steer;
    let (layers, layer_field) = match raw.backbone {
        BackboneConfig::Sasrec { num_blocks, .. } => (num_blocks, "backbone.num_blocks"),
        BackboneConfig::Gru4rec { num_layers, .. } => (num_layers, "backbone.num_layers"),
    };
    let mut sizes = vec![
        ("dim", raw.dim),
        ("num_items", raw.num_items),
        ("backbone.max_len", raw.backbone.max_len()),
        ("steer.prompt_dim", s.prompt_dim),
        ("steer.projector_hidden", s.projector_hidden),
        ("steer.expert_hidden", s.expert_hidden),
        ("steer.router_hidden", s.router_hidden),
    ];
    match raw.backbone {
        BackboneConfig::Sasrec {
            num_heads, ffn_dim, ..
        } => sizes.extend([
            ("backbone.num_heads", num_heads),
            ("backbone.ffn_dim", ffn_dim),
        ]),
        BackboneConfig::Gru4rec { num_layers, .. } => {
            sizes.push(("backbone.num_layers", num_layers))
        }
    }
    for (field, value) in sizes {
        check(value > 0, &format!("{field} must be positive, got {value}"))?;
        check(
            value <= MAX_SIZE,
            &format!("{field} = {value} is beyond the largest size a bundle may have ({MAX_SIZE})"),
        )?;
    }
    check(
        layers <= MAX_LAYERS,
        &format!("{layer_field} = {layers} is more than {MAX_LAYERS}"),
    )?;
    for (field, value) in [
        ("steer.attribute_dim", s.attribute_dim),
        ("steer.positive_experts", s.positive_experts),
        ("steer.negative_experts", s.negative_experts),
    ] {
        check(
            value <= MAX_SIZE,
            &format!("{field} = {value} is beyond the largest size a bundle may have ({MAX_SIZE})"),
        )?;
    }
    if let BackboneConfig::Sasrec { num_heads, .. } = raw.backbone {
        check(
            raw.dim.is_multiple_of(num_heads),
            "backbone.num_heads must divide dim",
        )?;
    }
    check(
        s.positive_experts + s.negative_experts > 0,
        "steer: at least one expert",
    )?;
    for (field, path) in raw
        .files
        .keys()
        .map(|name| ("files", name.as_str()))
        .chain([
            ("items.file", raw.items.file.as_str()),
            ("prompt_encoder.dir", raw.prompt_encoder.dir.as_str()),
        ])
    {
        check(
            inside_bundle(path),
            &format!("{field}: {path:?} is not a relative path inside the bundle"),
        )?;
    }
    match &raw.intent {
        None => check(
            s.prompt_dim == raw.prompt_encoder.dim,
            "steer.prompt_dim differs from prompt_encoder.dim",
        )?,
        Some(intent) => check_intent_config(&raw, intent)?,
    }
    check(
        s.values.len() == s.attribute_dim,
        "steer.values must hold steer.attribute_dim values",
    )?;
    check(
        s.attribute_dim == 0 || s.attribute.is_some(),
        "steer.attribute is required when steer.attribute_dim > 0",
    )?;
    check(
        s.strength_default.is_finite(),
        "steer.strength_default must be finite",
    )?;
    check(
        s.layer_norm_eps.is_finite() && s.layer_norm_eps > 0.0,
        "steer.layer_norm_eps must be positive",
    )?;
    Ok(raw)
}

/// The `intent` section on its own and against the rest of `dpr.json` (its values are checked
/// against `items.json` once that is read, in [`check_intent_values`]).
fn check_intent_config(raw: &RawConfig, intent: &IntentConfig) -> Result<(), BundleError> {
    let check = |ok: bool, msg: String| {
        if ok {
            Ok(())
        } else {
            Err(BundleError::invalid(CONFIG_FILE, msg))
        }
    };
    check(
        raw.version >= 2,
        format!(
            "intent: the intent section needs version 2, the file says version {}",
            raw.version
        ),
    )?;
    let v = intent.num_values();
    check(v > 0, "intent.values must hold at least one value".into())?;
    for (field, value) in [
        ("intent.embedding_dim", intent.embedding_dim),
        ("intent.hidden", intent.hidden),
    ] {
        check(value > 0, format!("{field} must be positive, got {value}"))?;
        check(
            value <= MAX_SIZE,
            format!("{field} = {value} is beyond the largest size a bundle may have ({MAX_SIZE})"),
        )?;
    }
    check(
        v <= MAX_SIZE / 3,
        format!("intent.values holds {v} values, more than a bundle may have"),
    )?;
    let mut seen = std::collections::BTreeSet::new();
    for (i, (family, value)) in intent.values.iter().enumerate() {
        check(
            seen.insert((family, value)),
            format!("intent.values[{i}] = [{family:?}, {value:?}] repeats an earlier value"),
        )?;
    }
    for (field, t) in [
        ("intent.refuse_threshold", intent.refuse_threshold),
        ("intent.detect_threshold", intent.detect_threshold),
    ] {
        check(
            t.is_finite() && t > 0.0 && t <= 1.0,
            format!("{field} must lie in (0, 1], got {t}"),
        )?;
    }
    if let Some(activation) = &intent.activation {
        check(
            activation == "relu",
            format!("intent.activation {activation:?} is not supported (only \"relu\")"),
        )?;
    }
    if let Some(features) = &intent.features {
        check(
            features == INTENT_FEATURES,
            format!("intent.features {features:?} is not supported (only {INTENT_FEATURES:?})"),
        )?;
    }
    check(
        intent.embedding_dim == raw.prompt_encoder.dim,
        format!(
            "intent.embedding_dim {} differs from prompt_encoder.dim {}",
            intent.embedding_dim, raw.prompt_encoder.dim
        ),
    )?;
    let want = intent.embedding_dim + intent.feature_dim();
    check(
        raw.steer.prompt_dim == want,
        format!(
            "steer.prompt_dim {} differs from intent.embedding_dim + 2 x {v} intent values = {want}",
            raw.steer.prompt_dim
        ),
    )
}

/// Every `(family, value)` of the intent head is a value of that attribute in `items.json`.
fn check_intent_values(
    intent: &IntentConfig,
    attributes: &BTreeMap<String, RawAttribute>,
    items_file: &str,
) -> Result<(), BundleError> {
    for (i, (family, value)) in intent.values.iter().enumerate() {
        let problem = match attributes.get(family) {
            None => format!("{items_file} has no attribute {family:?}"),
            Some(a) if !a.values.contains(value) => {
                format!("{items_file} attributes.{family}.values has no value {value:?}")
            }
            Some(_) => continue,
        };
        return Err(BundleError::invalid(
            CONFIG_FILE,
            format!("intent.values[{i}] = [{family:?}, {value:?}]: {problem}"),
        ));
    }
    Ok(())
}

/// A relative path with no `..`, no root and no drive: it cannot leave the bundle directory.
fn inside_bundle(path: &str) -> bool {
    !path.is_empty()
        && Path::new(path)
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)))
}

/// Checks every file listed in `dpr.json` `files` against its sha256.
fn verify_files(root: &Path, files: &BTreeMap<String, String>) -> Result<(), BundleError> {
    for (name, digest) in files {
        if &sha256_of(&root.join(name), name)? != digest {
            return Err(BundleError::invalid(
                name,
                format!(
                    "sha256 differs from {CONFIG_FILE} files[\"{name}\"] (truncated or modified)"
                ),
            ));
        }
    }
    Ok(())
}

fn sha256_of(path: &Path, name: &str) -> Result<String, BundleError> {
    let file = File::open(path).map_err(|e| BundleError::invalid(name, e.to_string()))?;
    let mut hasher = Sha256::new();
    if file.metadata().map(|m| m.len()).unwrap_or(0) > 0 {
        // SAFETY: the bundle is read-only while served; a concurrent writer would at worst
        // change the digest, which is then reported as a mismatch.
        let map =
            unsafe { Mmap::map(&file) }.map_err(|e| BundleError::invalid(name, e.to_string()))?;
        hasher.update(&map[..]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

#[derive(Deserialize)]
struct RawAttribute {
    values: Vec<String>,
    items: Vec<Vec<usize>>,
}

#[derive(Deserialize)]
struct RawItems {
    ids: Vec<serde_json::Value>,
    titles: Vec<String>,
    #[serde(default)]
    attributes: BTreeMap<String, RawAttribute>,
}

struct Items {
    ids: Vec<ItemId>,
    id_rows: IdRows,
    titles: Vec<String>,
    attributes: BTreeMap<String, RawAttribute>,
}

fn read_items(root: &Path, raw: &RawConfig) -> Result<Items, BundleError> {
    let name = raw.items.file.as_str();
    let text = read_text(root, name)?;
    let items: RawItems =
        serde_json::from_str(&text).map_err(|e| BundleError::invalid(name, e.to_string()))?;
    let n = raw.num_items;
    for (field, len) in [("ids", items.ids.len()), ("titles", items.titles.len())] {
        if len != n {
            return Err(BundleError::invalid(
                name,
                format!("{field} has {len} entries, {CONFIG_FILE} num_items={n}"),
            ));
        }
    }
    let mut ids = Vec::with_capacity(n);
    for (i, v) in items.ids.iter().enumerate() {
        ids.push(match v {
            serde_json::Value::String(s) => ItemId::Str(s.clone()),
            serde_json::Value::Number(x) if x.as_i64().is_some() => {
                ItemId::Int(x.as_i64().unwrap_or_default())
            }
            other => {
                return Err(BundleError::invalid(
                    name,
                    format!("ids[{i}] is {other}, not a string or integer"),
                ))
            }
        });
    }
    let id_rows = IdRows::new(&ids).map_err(|i| {
        BundleError::invalid(name, format!("ids[{i}] = {} is a duplicate", items.ids[i]))
    })?;
    for (attr, a) in &items.attributes {
        if a.items.len() != n {
            return Err(BundleError::invalid(
                name,
                format!(
                    "attributes.{attr}.items has {} rows, num_items={n}",
                    a.items.len()
                ),
            ));
        }
        if let Some((row, bad)) = a
            .items
            .iter()
            .enumerate()
            .find_map(|(r, vs)| vs.iter().find(|&&v| v >= a.values.len()).map(|&v| (r, v)))
        {
            return Err(BundleError::invalid(
                name,
                format!(
                    "attributes.{attr}.items[{row}] holds value index {bad}, beyond its {} values",
                    a.values.len()
                ),
            ));
        }
    }
    let steer = &raw.steer;
    if let Some(attr) = steer
        .attribute
        .as_deref()
        .filter(|_| steer.attribute_dim > 0)
    {
        let values = items.attributes.get(attr).map(|a| &a.values);
        if values != Some(&steer.values) {
            return Err(BundleError::invalid(
                name,
                format!("attributes.{attr}.values differ from {CONFIG_FILE} steer.values"),
            ));
        }
    }
    if let Some(intent) = &raw.intent {
        check_intent_values(intent, &items.attributes, name)?;
    }
    Ok(Items {
        ids,
        id_rows,
        titles: items.titles,
        attributes: items.attributes,
    })
}

struct Weights {
    floats: HashMap<String, Tensor>,
    /// Attribute name → (shape, uint8 matrix).
    attributes: HashMap<String, (Vec<usize>, Vec<u8>)>,
}

/// Name → shape of every float tensor `dpr.json` implies (`intent`: its `intent` section).
pub fn expected_float_shapes(
    backbone: &BackboneConfig,
    d: usize,
    n: usize,
    steer: &SteerConfig,
    intent: Option<&IntentConfig>,
) -> BTreeMap<String, Vec<usize>> {
    let mut s: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    s.insert("items.embedding".into(), vec![n + 1, d]);
    match *backbone {
        BackboneConfig::Sasrec {
            max_len,
            num_blocks,
            ffn_dim,
            ..
        } => {
            s.insert(
                "backbone.position_embedding.weight".into(),
                vec![max_len, d],
            );
            for b in 0..num_blocks {
                let p = format!("backbone.blocks.{b}.");
                for norm in ["attention_norm", "ffn_norm"] {
                    s.insert(format!("{p}{norm}.weight"), vec![d]);
                    s.insert(format!("{p}{norm}.bias"), vec![d]);
                }
                for proj in ["query", "key", "value", "out"] {
                    s.insert(format!("{p}attention.{proj}.weight"), vec![d, d]);
                    s.insert(format!("{p}attention.{proj}.bias"), vec![d]);
                }
                s.insert(format!("{p}ffn_in.weight"), vec![ffn_dim, d]);
                s.insert(format!("{p}ffn_in.bias"), vec![ffn_dim]);
                s.insert(format!("{p}ffn_out.weight"), vec![d, ffn_dim]);
                s.insert(format!("{p}ffn_out.bias"), vec![d]);
            }
            s.insert("backbone.final_norm.weight".into(), vec![d]);
            s.insert("backbone.final_norm.bias".into(), vec![d]);
        }
        BackboneConfig::Gru4rec { num_layers, .. } => {
            for l in 0..num_layers {
                for k in ["ih", "hh"] {
                    s.insert(format!("backbone.gru.weight_{k}_l{l}"), vec![3 * d, d]);
                    s.insert(format!("backbone.gru.bias_{k}_l{l}"), vec![3 * d]);
                }
            }
        }
    }
    let (e, a) = (steer.prompt_dim, steer.attribute_dim);
    let k = steer.positive_experts + steer.negative_experts;
    let (ph, rh, eh) = (
        steer.projector_hidden,
        steer.router_hidden,
        steer.expert_hidden,
    );
    for (name, shape) in [
        ("steer.projector.hidden_layer.weight", vec![ph, e]),
        ("steer.projector.hidden_layer.bias", vec![ph]),
        ("steer.projector.output_layer.weight", vec![d, ph]),
        ("steer.projector.output_layer.bias", vec![d]),
        ("steer.router.hidden_layer.weight", vec![rh, e + d]),
        ("steer.router.hidden_layer.bias", vec![rh]),
        ("steer.router.output_layer.weight", vec![k, rh]),
        ("steer.router.output_layer.bias", vec![k]),
        ("steer.experts.in_weight", vec![k, eh, 3 * d]),
        ("steer.experts.in_bias", vec![k, eh]),
        ("steer.experts.out_weight", vec![k, d + a, eh]),
        ("steer.experts.out_bias", vec![k, d + a]),
    ] {
        s.insert(name.into(), shape);
    }
    if let Some(intent) = intent {
        let (e, h, v) = (intent.embedding_dim, intent.hidden, intent.num_values());
        for (name, shape) in [
            ("intent.hidden_layer.weight", vec![h, e]),
            ("intent.hidden_layer.bias", vec![h]),
            ("intent.output_layer.weight", vec![3 * v, h]),
            ("intent.output_layer.bias", vec![3 * v]),
        ] {
            s.insert(name.into(), shape);
        }
    }
    s
}

fn shape_str(shape: &[usize]) -> String {
    let parts: Vec<String> = shape.iter().map(|s| s.to_string()).collect();
    if parts.len() == 1 {
        format!("({},)", parts[0])
    } else {
        format!("({})", parts.join(", "))
    }
}

fn read_weights(root: &Path, raw: &RawConfig) -> Result<Weights, BundleError> {
    let path = root.join(WEIGHTS_FILE);
    let file = File::open(&path).map_err(|e| BundleError::Missing {
        file: path.clone(),
        why: e.to_string(),
    })?;
    // SAFETY: the file is only read; a bundle must not be rewritten in place while loaded
    // (the exporter replaces whole directories, never files).
    let map = unsafe { Mmap::map(&file) }
        .map_err(|e| BundleError::invalid(WEIGHTS_FILE, format!("cannot map: {e}")))?;
    let st = SafeTensors::deserialize(&map).map_err(|e| {
        BundleError::invalid(WEIGHTS_FILE, format!("not a valid safetensors file ({e})"))
    })?;
    let mut expected = expected_float_shapes(
        &raw.backbone,
        raw.dim,
        raw.num_items,
        &raw.steer,
        raw.intent.as_ref(),
    );
    let mut floats = HashMap::new();
    let mut attributes = HashMap::new();
    let mut names: Vec<String> = st.names().into_iter().map(str::to_owned).collect();
    names.sort();
    for name in &names {
        let view = st
            .tensor(name)
            .map_err(|e| BundleError::invalid(WEIGHTS_FILE, format!("tensor '{name}': {e}")))?;
        let shape = view.shape().to_vec();
        if let Some(want) = expected.remove(name) {
            if view.dtype() != Dtype::F32 {
                return Err(BundleError::invalid(
                    WEIGHTS_FILE,
                    format!("tensor '{name}' has dtype {:?}, expected F32", view.dtype()),
                ));
            }
            if shape != want {
                return Err(BundleError::invalid(
                    WEIGHTS_FILE,
                    format!(
                        "tensor '{name}' has shape {}, {CONFIG_FILE} implies {}",
                        shape_str(&shape),
                        shape_str(&want)
                    ),
                ));
            }
            let data: Vec<f32> = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            if let Some(i) = data.iter().position(|x| !x.is_finite()) {
                return Err(BundleError::invalid(
                    WEIGHTS_FILE,
                    format!("tensor '{name}' holds NaN or Inf (flat index {i})"),
                ));
            }
            floats.insert(name.clone(), Tensor { shape, data });
        } else if let Some(attr) = name.strip_prefix("items.attributes.") {
            // Which attributes exist, and their widths, are checked against the items file
            // once both are read (`check_attributes`).
            if view.dtype() != Dtype::U8 {
                return Err(BundleError::invalid(
                    WEIGHTS_FILE,
                    format!("tensor '{name}' has dtype {:?}, expected U8", view.dtype()),
                ));
            }
            attributes.insert(attr.to_owned(), (shape, view.data().to_vec()));
        } else if name.starts_with("intent.") && raw.intent.is_none() {
            return Err(BundleError::invalid(
                WEIGHTS_FILE,
                format!("unexpected tensor '{name}' ({CONFIG_FILE} has no intent section)"),
            ));
        } else {
            return Err(BundleError::invalid(
                WEIGHTS_FILE,
                format!("unexpected tensor '{name}'"),
            ));
        }
    }
    if let Some(name) = expected.keys().next() {
        return Err(BundleError::invalid(
            WEIGHTS_FILE,
            format!("missing tensor '{name}'"),
        ));
    }
    let embedding = &floats["items.embedding"].data;
    if embedding[..raw.dim].iter().any(|&x| x != 0.0) {
        return Err(BundleError::invalid(
            WEIGHTS_FILE,
            "tensor 'items.embedding' row 0 (padding) is not zero",
        ));
    }
    Ok(Weights { floats, attributes })
}

/// Every attribute of the items file has its uint8 matrix in the weights, of the implied
/// shape and saying the same, and the weights hold no other.
fn check_attributes(raw: &RawConfig, items: &Items, weights: &Weights) -> Result<(), BundleError> {
    let items_file = &raw.items.file;
    for (attr, a) in &items.attributes {
        let name = format!("items.attributes.{attr}");
        let (shape, matrix) = weights.attributes.get(attr).ok_or_else(|| {
            BundleError::invalid(
                WEIGHTS_FILE,
                format!("missing tensor '{name}' ({items_file} lists it)"),
            )
        })?;
        let want = [raw.num_items + 1, a.values.len()];
        if shape[..] != want {
            return Err(BundleError::invalid(
                WEIGHTS_FILE,
                format!(
                    "tensor '{name}' has shape {}, {items_file} implies {}",
                    shape_str(shape),
                    shape_str(&want)
                ),
            ));
        }
        check_attribute_matrix(attr, a, matrix, items_file)?;
    }
    if let Some(attr) = weights
        .attributes
        .keys()
        .find(|attr| !items.attributes.contains_key(*attr))
    {
        return Err(BundleError::invalid(
            WEIGHTS_FILE,
            format!("unexpected tensor 'items.attributes.{attr}'"),
        ));
    }
    Ok(())
}

/// The uint8 matrix must say exactly what `items.json` says, row by row.
fn check_attribute_matrix(
    attr: &str,
    a: &RawAttribute,
    matrix: &[u8],
    items_file: &str,
) -> Result<(), BundleError> {
    let w = a.values.len();
    let mut want = vec![0u8; w];
    if matrix[..w].iter().any(|&x| x != 0) {
        return Err(BundleError::invalid(
            WEIGHTS_FILE,
            format!("tensor 'items.attributes.{attr}' row 0 (padding) is not zero"),
        ));
    }
    for (i, values) in a.items.iter().enumerate() {
        want.iter_mut().for_each(|x| *x = 0);
        for &v in values {
            want[v] = 1;
        }
        let row = i + 1;
        if matrix[row * w..(row + 1) * w] != want[..] {
            return Err(BundleError::invalid(
                WEIGHTS_FILE,
                format!(
                    "tensor 'items.attributes.{attr}' row {row} disagrees with {items_file} attributes.{attr}.items[{i}]"
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ints(xs: &[i64]) -> Vec<ItemId> {
        xs.iter().map(|&x| ItemId::Int(x)).collect()
    }

    #[test]
    fn id_rows_map_every_id_to_its_row_dense_or_not() {
        let cases = [
            ints(&[7, 3, -2, 10]),             // dense, negative ids allowed
            ints(&[5, i64::MAX, i64::MIN, 0]), // span overflows i64: hashed
            ints(&[1, 1_000_000_000]),         // sparse: hashed
            vec![
                ItemId::Str("a".into()),
                ItemId::Int(4),
                ItemId::Str("4".into()),
            ],
        ];
        for ids in cases {
            let rows = IdRows::new(&ids).expect("no duplicates");
            for (i, id) in ids.iter().enumerate() {
                assert_eq!(rows.get(id), Some(i as u32 + 1), "{id:?} in {ids:?}");
            }
            for missing in [
                ItemId::Int(6),
                ItemId::Int(i64::MIN + 1),
                ItemId::Str("b".into()),
            ] {
                assert_eq!(rows.get(&missing), None, "{missing:?} in {ids:?}");
            }
        }
        assert!(matches!(
            IdRows::new(&ints(&[3, 1, 2])),
            Ok(IdRows::Dense { .. })
        ));
        assert!(matches!(
            IdRows::new(&ints(&[1, 1 << 40])),
            Ok(IdRows::Map(_))
        ));
        assert!(matches!(IdRows::new(&[]), Ok(IdRows::Map(_))));
    }

    #[test]
    fn id_rows_report_the_first_repeat() {
        assert_eq!(IdRows::new(&ints(&[4, 5, 4])).err(), Some(2));
        assert_eq!(IdRows::new(&ints(&[1, 1 << 40, 1 << 40])).err(), Some(2));
        let strs = [ItemId::Str("x".into()), ItemId::Str("x".into())];
        assert_eq!(IdRows::new(&strs).err(), Some(1));
    }

    #[test]
    fn sasrec_positions_default_to_from_start() {
        let parse = |json: &str| serde_json::from_str::<BackboneConfig>(json).unwrap();
        let old = r#"{"kind": "sasrec", "max_len": 8, "num_blocks": 1, "num_heads": 1,
                      "ffn_dim": 4}"#;
        let new = r#"{"kind": "sasrec", "max_len": 8, "num_blocks": 1, "num_heads": 1,
                      "ffn_dim": 4, "positions": "from_end"}"#;
        let positions = |config| match config {
            BackboneConfig::Sasrec { positions, .. } => positions,
            BackboneConfig::Gru4rec { .. } => unreachable!("parsed a sasrec config"),
        };
        assert_eq!(positions(parse(old)), Positions::FromStart);
        assert_eq!(positions(parse(new)), Positions::FromEnd);
        let wrong = r#"{"kind": "sasrec", "max_len": 8, "num_blocks": 1, "num_heads": 1,
                        "ffn_dim": 4, "positions": "sideways"}"#;
        assert!(serde_json::from_str::<BackboneConfig>(wrong).is_err());
    }
}
