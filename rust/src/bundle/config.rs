// Over 400 lines because the schema, every check of it and their tests belong together.
//! `dpr.json`: the configuration schema and its checks, on their own and against each other
//! (the items file and the weights are checked against it in [`super::items`] and
//! [`super::weights`]).

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

use super::{inside_bundle, BundleError, CONFIG_FILE, FORMAT, MAX_LAYERS, MAX_SIZE, READ_VERSIONS};

/// The first bundle version in which a SASRec backbone must state `positions`.
pub const POSITIONS_REQUIRED_FROM: i64 = 3;

/// The first bundle version whose steered attribute block is `steer.families` (any number of
/// families) instead of the one family `steer.attribute` with `steer.values`.
pub const FAMILIES_FROM: i64 = 4;

/// Which SASRec position embedding row each history item gets.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Positions {
    /// The most recent item is row 0, the one before it row 1, and so on.
    FromEnd,
    /// The oldest item of the (at most `max_len`) history is row 0: the default of bundles
    /// before version 3, written before `positions` existed.
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

/// One attribute family of the steered block (`dpr.json` `steer.families[i]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SteerFamily {
    /// An attribute of `items.json`.
    pub name: String,
    /// The values it steers, in column order (some or all of the attribute's values).
    pub values: Vec<String>,
}

/// The steering head's hyper-parameters (`dpr.json` `steer`).
#[derive(Debug, Clone, Deserialize)]
pub struct SteerConfig {
    /// A: the width of the attribute block, the number of values of all steered families.
    pub attribute_dim: usize,
    pub prompt_dim: usize,
    pub positive_experts: usize,
    pub negative_experts: usize,
    pub projector_hidden: usize,
    pub expert_hidden: usize,
    pub router_hidden: usize,
    /// The steered families in column order: family 0's values, then family 1's, and so on.
    /// Read by [`parse_config`] from whichever form the version uses (see [`steer_families`]);
    /// empty when `attribute_dim` is 0.
    #[serde(skip)]
    pub families: Vec<SteerFamily>,
    /// `steer.prompts`: whether the bundle takes prompts at all. Absent means `true`; `false`
    /// (a filter-only bundle, exported from a backbone without steering) is only valid with no
    /// steered value and no intent read-out. Read by [`parse_config`] ([`steer_prompts`]).
    #[serde(skip)]
    pub prompts: bool,
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
pub(super) struct ItemsConfig {
    pub(super) file: String,
}

#[derive(Debug, Clone, Deserialize)]
pub(super) struct RawConfig {
    pub(super) version: i64,
    pub(super) backbone: BackboneConfig,
    pub(super) dim: usize,
    pub(super) num_items: usize,
    pub(super) steer: SteerConfig,
    pub(super) prompt_encoder: EncoderConfig,
    pub(super) items: ItemsConfig,
    pub(super) files: BTreeMap<String, String>,
    #[serde(default)]
    pub(super) intent: Option<IntentConfig>,
}

pub(super) fn parse_config(text: &str) -> Result<RawConfig, BundleError> {
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| BundleError::unreadable(CONFIG_FILE, format!("not valid JSON ({e})")))?;
    let format = value.get("format").and_then(|f| f.as_str());
    if format != Some(FORMAT) {
        return Err(BundleError::config(
            "format",
            format!("format {:?} is not \"{FORMAT}\"", value.get("format")),
        ));
    }
    let version = match value.get("version").and_then(|v| v.as_i64()) {
        Some(v) if READ_VERSIONS.contains(&v) => v,
        other => {
            let known: Vec<String> = READ_VERSIONS.iter().map(|v| v.to_string()).collect();
            let (last, rest) = known.split_last().map_or(("", &[][..]), |(l, r)| (l, r));
            return Err(BundleError::config(
                "version",
                format!(
                    "version {other:?} is not supported (this reader knows {} and {last})",
                    rest.join(", ")
                ),
            ));
        }
    };
    // Before version 3 a SASRec bundle without `positions` means `from_start`; a reader that
    // predates the field would silently rank a `from_end` model wrongly, hence the bump.
    let backbone = value.get("backbone");
    let sasrec = backbone
        .and_then(|b| b.get("kind"))
        .and_then(|k| k.as_str())
        == Some("sasrec");
    if version >= POSITIONS_REQUIRED_FROM
        && sasrec
        && backbone.and_then(|b| b.get("positions")).is_none()
    {
        return Err(BundleError::config(
            "backbone.positions",
            format!(
                "backbone.positions is required for SASRec from version {POSITIONS_REQUIRED_FROM} (\"from_end\" or \"from_start\")"
            ),
        ));
    }
    let steer_section = value.get("steer").cloned().unwrap_or(Value::Null);
    let mut raw: RawConfig =
        serde_json::from_value(value).map_err(|e| BundleError::config("", e.to_string()))?;
    let check = |ok: bool, field: &str, msg: &str| {
        if ok {
            Ok(())
        } else {
            Err(BundleError::config(field, msg))
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
        check(
            value > 0,
            field,
            &format!("{field} must be positive, got {value}"),
        )?;
        check(
            value <= MAX_SIZE,
            field,
            &format!("{field} = {value} is beyond the largest size a bundle may have ({MAX_SIZE})"),
        )?;
    }
    check(
        layers <= MAX_LAYERS,
        layer_field,
        &format!("{layer_field} = {layers} is more than {MAX_LAYERS}"),
    )?;
    for (field, value) in [
        ("steer.attribute_dim", s.attribute_dim),
        ("steer.positive_experts", s.positive_experts),
        ("steer.negative_experts", s.negative_experts),
    ] {
        check(
            value <= MAX_SIZE,
            field,
            &format!("{field} = {value} is beyond the largest size a bundle may have ({MAX_SIZE})"),
        )?;
    }
    if let BackboneConfig::Sasrec { num_heads, .. } = raw.backbone {
        check(
            raw.dim.is_multiple_of(num_heads),
            "backbone.num_heads",
            "backbone.num_heads must divide dim",
        )?;
    }
    check(
        s.positive_experts + s.negative_experts > 0,
        "steer",
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
            field,
            &format!("{field}: {path:?} is not a relative path inside the bundle"),
        )?;
    }
    match &raw.intent {
        None => check(
            s.prompt_dim == raw.prompt_encoder.dim,
            "steer.prompt_dim",
            "steer.prompt_dim differs from prompt_encoder.dim",
        )?,
        Some(intent) => check_intent_config(&raw, intent)?,
    }
    check(
        s.strength_default.is_finite(),
        "steer.strength_default",
        "steer.strength_default must be finite",
    )?;
    check(
        s.layer_norm_eps.is_finite() && s.layer_norm_eps > 0.0,
        "steer.layer_norm_eps",
        "steer.layer_norm_eps must be positive",
    )?;
    raw.steer.families = steer_families(version, &steer_section, raw.steer.attribute_dim)?;
    raw.steer.prompts = steer_prompts(
        &steer_section,
        raw.steer.attribute_dim,
        raw.intent.is_some(),
    )?;
    Ok(raw)
}

/// `steer.prompts` (see [`SteerConfig::prompts`]) of the `steer` section.
fn steer_prompts(
    steer: &Value,
    attribute_dim: usize,
    has_intent: bool,
) -> Result<bool, BundleError> {
    let field = "steer.prompts";
    let takes = match steer.get("prompts") {
        None => true,
        Some(Value::Bool(takes)) => *takes,
        Some(other) => {
            return Err(BundleError::config(
                field,
                format!("steer.prompts must be true or false, got {other}"),
            ))
        }
    };
    if !takes && attribute_dim > 0 {
        return Err(BundleError::config(
            field,
            format!(
                "steer.prompts is false but the bundle steers {attribute_dim} attribute values"
            ),
        ));
    }
    if !takes && has_intent {
        return Err(BundleError::config(
            field,
            "steer.prompts is false but the bundle has an intent read-out",
        ));
    }
    Ok(takes)
}

/// `steer.<name>` of the `steer` section, `None` when absent or null.
fn steer_field<T: DeserializeOwned>(steer: &Value, name: &str) -> Result<Option<T>, BundleError> {
    match steer.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => T::deserialize(v).map(Some).map_err(|e| {
            BundleError::config(&format!("steer.{name}"), format!("steer.{name}: {e}"))
        }),
    }
}

/// The steered families of the `steer` section (`steer`), in column order: from version
/// [`FAMILIES_FROM`] `steer.families`, before it the one family `steer.attribute` with its
/// `steer.values` (none when `attribute_dim` is 0). Each family is named once, lists each
/// value once, and together they hold `attribute_dim` values; that they are attributes and
/// values of `items.json` is checked once that is read ([`super::items`]).
fn steer_families(
    version: i64,
    steer: &Value,
    attribute_dim: usize,
) -> Result<Vec<SteerFamily>, BundleError> {
    let check = |ok: bool, field: &str, msg: String| {
        if ok {
            Ok(())
        } else {
            Err(BundleError::config(field, msg))
        }
    };
    let listed = steer_field::<Vec<SteerFamily>>(steer, "families")?;
    let attribute = steer_field::<String>(steer, "attribute")?;
    let values = steer_field::<Vec<String>>(steer, "values")?;
    let families = if version >= FAMILIES_FROM {
        for (field, given) in [
            ("steer.attribute", attribute.is_some()),
            ("steer.values", values.is_some()),
        ] {
            check(
                !given,
                field,
                format!(
                    "{field} is not read from version {FAMILIES_FROM}: steer.families names the \
                     steered families and their values"
                ),
            )?;
        }
        listed.ok_or_else(|| {
            BundleError::config(
                "steer.families",
                format!(
                    "steer.families is required from version {FAMILIES_FROM} (a list of \
                     {{\"name\", \"values\"}}, empty when steer.attribute_dim is 0)"
                ),
            )
        })?
    } else {
        check(
            listed.is_none(),
            "steer.families",
            format!(
                "steer.families needs version {FAMILIES_FROM}, the file says version {version} \
                 (which names one family in steer.attribute and steer.values)"
            ),
        )?;
        let values = values.unwrap_or_default();
        check(
            values.len() == attribute_dim,
            "steer.values",
            "steer.values must hold steer.attribute_dim values".into(),
        )?;
        match attribute {
            Some(name) if attribute_dim > 0 => vec![SteerFamily { name, values }],
            None if attribute_dim > 0 => {
                return Err(BundleError::config(
                    "steer.attribute",
                    "steer.attribute is required when steer.attribute_dim > 0",
                ))
            }
            _ => Vec::new(),
        }
    };
    // Before version 4 the one family is `steer.attribute` with `steer.values` (counted above),
    // so a repeated value is reported there.
    let legacy = version < FAMILIES_FROM;
    let mut names = std::collections::BTreeSet::new();
    for (i, family) in families.iter().enumerate() {
        let name = &family.name;
        check(
            names.insert(name),
            "steer.families",
            format!("steer.families[{i}] names {name:?} again"),
        )?;
        let mut seen = std::collections::HashSet::with_capacity(family.values.len());
        if let Some(value) = family.values.iter().find(|v| !seen.insert(*v)) {
            let (field, at) = if legacy {
                ("steer.values", "steer.values".to_owned())
            } else {
                ("steer.families", format!("steer.families[{i}] ({name:?})"))
            };
            return Err(BundleError::config(
                field,
                format!("{at} lists {value:?} twice"),
            ));
        }
    }
    let total: usize = families.iter().map(|f| f.values.len()).sum();
    check(
        total == attribute_dim,
        "steer.families",
        format!(
            "steer.families hold {total} values in all, steer.attribute_dim is {attribute_dim}"
        ),
    )?;
    Ok(families)
}

/// The `intent` section on its own and against the rest of `dpr.json` (its values are checked
/// against `items.json` once that is read, in [`check_intent_values`]).
fn check_intent_config(raw: &RawConfig, intent: &IntentConfig) -> Result<(), BundleError> {
    let check = |ok: bool, field: &str, msg: String| {
        if ok {
            Ok(())
        } else {
            Err(BundleError::config(field, msg))
        }
    };
    check(
        raw.version >= 2,
        "intent",
        format!(
            "intent: the intent section needs version 2, the file says version {}",
            raw.version
        ),
    )?;
    let v = intent.num_values();
    check(
        v > 0,
        "intent.values",
        "intent.values must hold at least one value".into(),
    )?;
    for (field, value) in [
        ("intent.embedding_dim", intent.embedding_dim),
        ("intent.hidden", intent.hidden),
    ] {
        check(
            value > 0,
            field,
            format!("{field} must be positive, got {value}"),
        )?;
        check(
            value <= MAX_SIZE,
            field,
            format!("{field} = {value} is beyond the largest size a bundle may have ({MAX_SIZE})"),
        )?;
    }
    check(
        v <= MAX_SIZE / 3,
        "intent.values",
        format!("intent.values holds {v} values, more than a bundle may have"),
    )?;
    let mut seen = std::collections::BTreeSet::new();
    for (i, (family, value)) in intent.values.iter().enumerate() {
        check(
            seen.insert((family, value)),
            "intent.values",
            format!("intent.values[{i}] = [{family:?}, {value:?}] repeats an earlier value"),
        )?;
    }
    for (field, t) in [
        ("intent.refuse_threshold", intent.refuse_threshold),
        ("intent.detect_threshold", intent.detect_threshold),
    ] {
        check(
            t.is_finite() && t > 0.0 && t <= 1.0,
            field,
            format!("{field} must lie in (0, 1], got {t}"),
        )?;
    }
    if let Some(activation) = &intent.activation {
        check(
            activation == "relu",
            "intent.activation",
            format!("intent.activation {activation:?} is not supported (only \"relu\")"),
        )?;
    }
    if let Some(features) = &intent.features {
        check(
            features == INTENT_FEATURES,
            "intent.features",
            format!("intent.features {features:?} is not supported (only {INTENT_FEATURES:?})"),
        )?;
    }
    check(
        intent.embedding_dim == raw.prompt_encoder.dim,
        "intent.embedding_dim",
        format!(
            "intent.embedding_dim {} differs from prompt_encoder.dim {}",
            intent.embedding_dim, raw.prompt_encoder.dim
        ),
    )?;
    let want = intent.embedding_dim + intent.feature_dim();
    check(
        raw.steer.prompt_dim == want, "steer.prompt_dim",
        format!(
            "steer.prompt_dim {} differs from intent.embedding_dim + 2 x {v} intent values = {want}",
            raw.steer.prompt_dim
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A valid `dpr.json` of `version` (a GRU4Rec one, A = 5), its `steer` section edited.
    fn config_text(version: i64, edit_steer: impl FnOnce(&mut Value)) -> String {
        let mut steer = json!({"dim": 4, "attribute_dim": 5, "prompt_dim": 8,
                               "positive_experts": 1, "negative_experts": 1,
                               "projector_hidden": 3, "expert_hidden": 3, "router_hidden": 3});
        edit_steer(&mut steer);
        json!({"format": "dpr-bundle", "version": version,
               "backbone": {"kind": "gru4rec", "max_len": 5, "num_layers": 1},
               "dim": 4, "num_items": 6, "steer": steer,
               "prompt_encoder": {"dir": "prompt_encoder", "max_tokens": 16, "dim": 8},
               "items": {"file": "items.json"}, "files": {}})
        .to_string()
    }

    fn legacy(steer: &mut Value) {
        steer["attribute"] = json!("genre");
        steer["values"] = json!(["Action", "Comedy", "Drama", "Horror", "Romance"]);
    }

    fn two_families(steer: &mut Value) {
        steer["families"] = json!([
            {"name": "genre", "values": ["Drama", "Action", "Comedy"]},
            {"name": "decade", "values": ["1990s", "2000s"]},
        ]);
    }

    fn family(name: &str, values: &[&str]) -> SteerFamily {
        SteerFamily {
            name: name.into(),
            values: values.iter().map(|v| v.to_string()).collect(),
        }
    }

    /// The field and message of the error `text` is rejected with.
    fn rejected(text: &str) -> (String, String) {
        match parse_config(text) {
            Err(BundleError::Config { field, message }) => (field, message),
            other => panic!("not a config error: {other:?}"),
        }
    }

    #[test]
    fn prompts_default_to_true_and_false_needs_no_steered_value_and_no_intent() {
        assert!(
            parse_config(&config_text(4, two_families))
                .unwrap()
                .steer
                .prompts
        );
        let takes = |value: Value| {
            move |steer: &mut Value| {
                two_families(steer);
                steer["prompts"] = value;
            }
        };
        assert!(
            parse_config(&config_text(4, takes(json!(true))))
                .unwrap()
                .steer
                .prompts
        );
        let filter_only = |steer: &mut Value| {
            steer["attribute_dim"] = json!(0);
            steer["families"] = json!([]);
            steer["prompts"] = json!(false);
        };
        assert!(
            !parse_config(&config_text(4, filter_only))
                .unwrap()
                .steer
                .prompts
        );
        let (field, _) = rejected(&config_text(4, takes(json!(false))));
        assert_eq!(field, "steer.prompts");
        let (field, message) = rejected(&config_text(4, takes(json!("no"))));
        assert_eq!(field, "steer.prompts");
        assert!(message.contains("true or false"), "{message}");
        assert!(steer_prompts(&json!({"prompts": false}), 0, true)
            .unwrap_err()
            .to_string()
            .contains("intent read-out"));
    }

    #[test]
    fn steered_families_come_from_steer_families_or_the_one_steer_attribute() {
        for version in 1..FAMILIES_FROM {
            let raw = parse_config(&config_text(version, legacy)).unwrap();
            let genre = ["Action", "Comedy", "Drama", "Horror", "Romance"];
            assert_eq!(raw.steer.families, vec![family("genre", &genre)]);
        }
        let raw = parse_config(&config_text(4, two_families)).unwrap();
        assert_eq!(
            raw.steer.families,
            vec![
                family("genre", &["Drama", "Action", "Comedy"]),
                family("decade", &["1990s", "2000s"]),
            ]
        );
        // No attribute block: no family, in either form (a null attribute is an absent one).
        let none = |steer: &mut Value| {
            steer["attribute_dim"] = json!(0);
            steer["attribute"] = Value::Null;
            steer["values"] = json!([]);
        };
        assert!(parse_config(&config_text(3, none))
            .unwrap()
            .steer
            .families
            .is_empty());
        let empty = |steer: &mut Value| {
            steer["attribute_dim"] = json!(0);
            steer["families"] = json!([]);
        };
        assert!(parse_config(&config_text(4, empty))
            .unwrap()
            .steer
            .families
            .is_empty());
    }

    #[test]
    fn each_version_takes_one_form_of_the_steered_families() {
        let both = |steer: &mut Value| {
            two_families(steer);
            legacy(steer);
        };
        let (field, message) = rejected(&config_text(4, both));
        assert_eq!(field, "steer.attribute");
        assert!(message.contains("not read from version 4"), "{message}");
        let values_too = |steer: &mut Value| {
            two_families(steer);
            steer["values"] = json!(["Action"]);
        };
        assert_eq!(rejected(&config_text(4, values_too)).0, "steer.values");
        let (field, message) = rejected(&config_text(4, legacy));
        assert_eq!(field, "steer.attribute");
        assert!(message.contains("steer.families"), "{message}");
        let (field, message) = rejected(&config_text(4, |_| {}));
        assert_eq!(field, "steer.families");
        assert!(message.contains("required from version 4"), "{message}");
        let (field, message) = rejected(&config_text(3, both));
        assert_eq!(field, "steer.families");
        assert!(
            message.contains("needs version 4, the file says version 3"),
            "{message}"
        );
        let (field, _) = rejected(&config_text(3, |steer| steer["attribute"] = json!("genre")));
        assert_eq!(field, "steer.values");
        let (field, _) = rejected(&config_text(4, |steer| steer["families"] = json!("genre")));
        assert_eq!(field, "steer.families");
    }

    #[test]
    fn steered_families_are_distinct_and_hold_attribute_dim_values() {
        let cases: [(&str, Value, &str); 4] = [
            (
                "a family twice",
                json!([{"name": "genre", "values": ["Drama", "Action"]},
                       {"name": "decade", "values": ["1990s"]},
                       {"name": "genre", "values": ["Comedy", "Horror"]}]),
                "steer.families[2] names \"genre\" again",
            ),
            (
                "a value twice",
                json!([{"name": "genre", "values": ["Drama", "Action", "Drama"]},
                       {"name": "decade", "values": ["1990s", "2000s"]}]),
                "steer.families[0] (\"genre\") lists \"Drama\" twice",
            ),
            (
                "too few values",
                json!([{"name": "genre", "values": ["Drama", "Action", "Comedy"]},
                       {"name": "decade", "values": ["1990s"]}]),
                "steer.families hold 4 values in all, steer.attribute_dim is 5",
            ),
            (
                "too many values",
                json!([{"name": "genre", "values": ["Drama", "Action", "Comedy", "Horror"]},
                       {"name": "decade", "values": ["1990s", "2000s"]}]),
                "steer.families hold 6 values in all, steer.attribute_dim is 5",
            ),
        ];
        for (what, families, want) in cases {
            let text = config_text(4, |steer| steer["families"] = families);
            let (field, message) = rejected(&text);
            assert_eq!(field, "steer.families", "{what}");
            assert_eq!(message, want, "{what}");
        }
        let repeat = |steer: &mut Value| {
            legacy(steer);
            steer["values"][4] = json!("Action");
        };
        let (field, message) = rejected(&config_text(3, repeat));
        assert_eq!(
            (field.as_str(), message.as_str()),
            ("steer.values", "steer.values lists \"Action\" twice")
        );
    }

    #[test]
    fn unknown_versions_name_the_known_ones() {
        let (field, message) = rejected(&config_text(5, two_families));
        assert_eq!(field, "version");
        assert_eq!(
            message,
            "version Some(5) is not supported (this reader knows 1, 2, 3 and 4)"
        );
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
