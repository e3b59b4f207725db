//! Fuzzing the bundle reader: a valid small bundle (SASRec or GRU4Rec) is damaged in random
//! ways, byte-wise (truncated, overwritten, bits flipped, bytes inserted) and structurally
//! (a JSON node of `dpr.json`, `items.json` or the safetensors header replaced, perturbed or
//! removed), and `Bundle::open` — then the backbone built from whatever it accepts, and one
//! forward pass — must return `Ok` or an `Err` naming a file, never panic. The SASRec bundle
//! is a version-2 one with an intent head (also read out on every accepted case), the GRU4Rec
//! bundle a version-1 one without.
//!
//! `cargo test --release` runs `DPR_FUZZ_CASES` cases (default 1000, seeded: the same every
//! run). `DPR_FUZZ_SECONDS=600` keeps running fresh randomly seeded batches for that long;
//! the number of inputs tried is printed (`--nocapture` to see it).

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use _core::bundle::{expected_float_shapes, BackboneConfig, Bundle, IntentConfig, SteerConfig};
use _core::nn::backbone::{Backbone, Rows};
use _core::nn::intent::IntentHead;
use _core::nn::steer::Steering;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const N: usize = 7;
const D: usize = 4;
const GENRES: [&str; 3] = ["Comedy", "Drama", "Horror"];
const FILES: [&str; 3] = ["dpr.json", "items.json", "weights.safetensors"];

/// The three files of a valid bundle, as bytes.
#[derive(Clone)]
struct Files([Vec<u8>; 3]);

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Deterministic small floats, all finite.
fn values(count: usize, seed: usize) -> Vec<f32> {
    (0..count)
        .map(|i| (((i * 7919 + seed * 104_729) % 2001) as f32 - 1000.0) / 4000.0)
        .collect()
}

/// Width of the (absent) prompt encoder's embeddings.
const E: usize = 8;

/// The version-2 bundle's intent section (V = 2 values of two families).
fn intent_json() -> Value {
    json!({"values": [["genre", "Comedy"], ["decade", "2000s"]], "embedding_dim": E,
           "hidden": 3, "features": "embedding, p_asked, p_refused", "activation": "relu",
           "refuse_threshold": 0.6, "detect_threshold": 0.5})
}

fn valid_bundle(kind: &str) -> Files {
    // The SASRec bundle carries an intent head (version 2), the GRU4Rec one does not (1).
    bundle_of(kind, kind == "sasrec")
}

/// A valid bundle: version 2 with an intent head, or version 1 without.
fn bundle_of(kind: &str, with_intent: bool) -> Files {
    let prompt_dim = if with_intent { E + 4 } else { E };
    let backbone = if kind == "sasrec" {
        json!({"kind": "sasrec", "num_items": N, "dim": D, "max_len": 5, "dropout": 0.1,
               "num_blocks": 1, "num_heads": 2, "ffn_dim": 6})
    } else {
        json!({"kind": "gru4rec", "num_items": N, "dim": D, "max_len": 5, "dropout": 0.1,
               "num_layers": 2})
    };
    let steer = json!({"dim": D, "attribute_dim": 3, "attribute_scale": 10.0,
                       "prompt_dim": prompt_dim,
                       "positive_experts": 1, "negative_experts": 1, "projector_hidden": 5,
                       "expert_hidden": 3, "router_hidden": 4, "attribute": "genre",
                       "values": GENRES, "strength_default": 1.0, "activation": "relu",
                       "layer_norm_eps": 1e-5});
    let genre_items: Vec<Vec<usize>> = (0..N).map(|i| vec![i % 3]).collect();
    let items = json!({
        "ids": (0..N).map(|i| 100 + i).collect::<Vec<_>>(),
        "titles": (0..N).map(|i| format!("Film {i}")).collect::<Vec<_>>(),
        "attributes": {
            "genre": {"values": GENRES, "items": genre_items},
            "decade": {"values": ["1990s", "2000s"],
                       "items": (0..N).map(|i| vec![i % 2]).collect::<Vec<_>>()},
        }
    });
    let backbone_config: BackboneConfig = serde_json::from_value(backbone.clone()).unwrap();
    let steer_config: SteerConfig = serde_json::from_value(steer.clone()).unwrap();
    let intent_config: Option<IntentConfig> =
        with_intent.then(|| serde_json::from_value(intent_json()).unwrap());
    let shapes = expected_float_shapes(
        &backbone_config,
        D,
        N,
        &steer_config,
        intent_config.as_ref(),
    );
    let mut raw: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (seed, (name, shape)) in shapes.iter().enumerate() {
        let mut data = values(shape.iter().product(), seed);
        if name == "items.embedding" {
            data[..D].iter_mut().for_each(|x| *x = 0.0);
        }
        let bytes = data.iter().flat_map(|x| x.to_le_bytes()).collect();
        raw.push((name.clone(), Dtype::F32, shape.clone(), bytes));
    }
    for (name, width, of) in [("genre", 3, 3usize), ("decade", 2, 2)] {
        let mut matrix = vec![0u8; (N + 1) * width];
        for i in 0..N {
            matrix[(i + 1) * width + i % of] = 1;
        }
        raw.push((
            format!("items.attributes.{name}"),
            Dtype::U8,
            vec![N + 1, width],
            matrix,
        ));
    }
    let views: Vec<(String, TensorView<'_>)> = raw
        .iter()
        .map(|(name, dtype, shape, data)| {
            (
                name.clone(),
                TensorView::new(*dtype, shape.clone(), data).unwrap(),
            )
        })
        .collect();
    let weights = safetensors::serialize(views, None).unwrap();
    let items = serde_json::to_vec(&items).unwrap();
    let mut config = json!({
        "format": "dpr-bundle", "version": if with_intent { 2 } else { 1 }, "backbone": backbone,
        "dim": D, "num_items": N, "steer": steer,
        "prompt_encoder": {"dir": "prompt_encoder", "pooling": "mean", "normalize": true,
                           "max_tokens": 16, "dim": E, "dtype": "float32"},
        "items": {"file": "items.json", "attributes": ["decade", "genre"]},
        "training": {},
        "files": {"items.json": sha256_hex(&items), "weights.safetensors": sha256_hex(&weights)},
    });
    if with_intent {
        config["intent"] = intent_json();
    }
    Files([serde_json::to_vec_pretty(&config).unwrap(), items, weights])
}

/// Replacement JSON values: type confusion, edge integers, path tricks.
fn json_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        prop::sample::select(vec![
            -1i64,
            0,
            1,
            2,
            3,
            8,
            255,
            1 << 31,
            (1 << 32) + 1,
            1 << 53,
            i64::MAX,
            i64::MIN
        ])
        .prop_map(|x| json!(x)),
        Just(json!(u64::MAX)),
        prop::sample::select(vec![0.5f64, -0.0, 1e300, -1e300, 3.5e38]).prop_map(|x| json!(x)),
        prop::sample::select(vec![
            "",
            "F16",
            "F64",
            "BF16",
            "U8",
            "I64",
            "sasrec",
            "gru4rec",
            "dpr-bundle",
            "../x",
            "/",
            "dpr.json",
            "items.json",
            "weights.safetensors",
            "prompt_encoder",
            "genre"
        ])
        .prop_map(|s| json!(s)),
        Just(json!([])),
        Just(json!([0])),
        Just(json!([1, 2])),
        Just(json!([u64::MAX, 2])),
        Just(json!({})),
    ]
}

#[derive(Debug, Clone)]
enum Mutation {
    Truncate {
        file: usize,
        at: f64,
    },
    Overwrite {
        file: usize,
        at: f64,
        bytes: Vec<u8>,
    },
    Insert {
        file: usize,
        at: f64,
        bytes: Vec<u8>,
    },
    FlipBit {
        file: usize,
        at: f64,
        bit: u8,
    },
    /// `file` 2 is the safetensors header.
    JsonReplace {
        file: usize,
        node: usize,
        value: Value,
    },
    JsonPerturb {
        file: usize,
        node: usize,
        delta: i64,
    },
    JsonRemove {
        file: usize,
        node: usize,
    },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let file = 0usize..3;
    let at = 0.0f64..1.0;
    let bytes = prop::collection::vec(any::<u8>(), 1..16);
    prop_oneof![
        (file.clone(), at.clone()).prop_map(|(file, at)| Mutation::Truncate { file, at }),
        (file.clone(), at.clone(), bytes.clone())
            .prop_map(|(file, at, bytes)| Mutation::Overwrite { file, at, bytes }),
        (file.clone(), at.clone(), bytes).prop_map(|(file, at, bytes)| Mutation::Insert {
            file,
            at,
            bytes
        }),
        (file.clone(), at, 0u8..8).prop_map(|(file, at, bit)| Mutation::FlipBit { file, at, bit }),
        (file.clone(), any::<usize>(), json_value())
            .prop_map(|(file, node, value)| Mutation::JsonReplace { file, node, value }),
        (file.clone(), any::<usize>(), -3i64..=3)
            .prop_map(|(file, node, delta)| Mutation::JsonPerturb { file, node, delta }),
        (file, any::<usize>()).prop_map(|(file, node)| Mutation::JsonRemove { file, node }),
    ]
}

/// JSON pointers of every node below the root, depth first.
fn pointers(value: &Value, prefix: &str, out: &mut Vec<String>) {
    let children: Vec<(String, &Value)> = match value {
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| (k.replace('~', "~0").replace('/', "~1"), v))
            .collect(),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, v)| (i.to_string(), v))
            .collect(),
        _ => return,
    };
    for (key, child) in children {
        let pointer = format!("{prefix}/{key}");
        out.push(pointer.clone());
        pointers(child, &pointer, out);
    }
}

/// Applies `edit` to the JSON of `file` (the header, for the safetensors file); files that do
/// not parse (already damaged) are left alone.
fn edit_json(files: &mut Files, file: usize, edit: impl FnOnce(&mut Value, &[String])) {
    let bytes = &mut files.0[file];
    let (json_bytes, rest) = if file == 2 {
        let Some(len) = bytes
            .get(..8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
        else {
            return;
        };
        let Some(end) = usize::try_from(len).ok().and_then(|l| l.checked_add(8)) else {
            return;
        };
        if end > bytes.len() {
            return;
        }
        (&bytes[8..end], bytes[end..].to_vec())
    } else {
        (&bytes[..], Vec::new())
    };
    let Ok(mut value) = serde_json::from_slice::<Value>(json_bytes) else {
        return;
    };
    let mut all = Vec::new();
    pointers(&value, "", &mut all);
    edit(&mut value, &all);
    let text = serde_json::to_vec(&value).unwrap();
    *bytes = if file == 2 {
        let mut out = (text.len() as u64).to_le_bytes().to_vec();
        out.extend(text);
        out.extend(rest);
        out
    } else {
        text
    };
}

fn pick(all: &[String], node: usize) -> Option<&str> {
    (!all.is_empty()).then(|| all[node % all.len()].as_str())
}

fn apply(files: &mut Files, m: &Mutation) {
    let offset = |len: usize, at: f64| ((len as f64 * at) as usize).min(len);
    match m {
        Mutation::Truncate { file, at } => {
            let f = &mut files.0[*file];
            f.truncate(offset(f.len(), *at));
        }
        Mutation::Overwrite { file, at, bytes } => {
            let f = &mut files.0[*file];
            let start = offset(f.len(), *at);
            for (i, b) in bytes.iter().enumerate() {
                if let Some(x) = f.get_mut(start + i) {
                    *x = *b;
                }
            }
        }
        Mutation::Insert { file, at, bytes } => {
            let f = &mut files.0[*file];
            let start = offset(f.len(), *at);
            f.splice(start..start, bytes.iter().copied());
        }
        Mutation::FlipBit { file, at, bit } => {
            let f = &mut files.0[*file];
            let i = offset(f.len(), *at);
            if let Some(x) = f.get_mut(i) {
                *x ^= 1 << bit;
            }
        }
        Mutation::JsonReplace { file, node, value } => edit_json(files, *file, |root, all| {
            if let Some(target) = pick(all, *node).and_then(|p| root.pointer_mut(p)) {
                *target = value.clone();
            }
        }),
        Mutation::JsonPerturb { file, node, delta } => edit_json(files, *file, |root, all| {
            if let Some(target) = pick(all, *node).and_then(|p| root.pointer_mut(p)) {
                if let Some(x) = target.as_i64() {
                    *target = json!(x.saturating_add(*delta));
                }
            }
        }),
        Mutation::JsonRemove { file, node } => edit_json(files, *file, |root, all| {
            let Some(pointer) = pick(all, *node) else {
                return;
            };
            let (parent, key) = pointer.rsplit_once('/').unwrap_or(("", pointer));
            match root.pointer_mut(parent) {
                Some(Value::Object(map)) => {
                    map.remove(&key.replace("~1", "/").replace("~0", "~"));
                }
                Some(Value::Array(items)) => {
                    if let Ok(i) = key.parse::<usize>() {
                        if i < items.len() {
                            items.remove(i);
                        }
                    }
                }
                _ => {}
            }
        }),
    }
}

/// Opens the bundle at `root` and, if it is accepted, builds the backbone and the steering
/// head and runs them.
fn open_and_use(root: &Path, verify: bool) -> Result<(), String> {
    let mut bundle = Bundle::open(root, verify).map_err(|e| e.to_string())?;
    let weights = bundle.take_weights().map_err(|e| e.to_string())?;
    let backbone = Backbone::new(
        &bundle.backbone,
        bundle.dim,
        bundle.steer.layer_norm_eps,
        weights.backbone,
    )
    .map_err(|e| e.to_string())?;
    let steering =
        Steering::new(bundle.dim, &bundle.steer, weights.steer, 2).map_err(|e| e.to_string())?;
    if bundle.intent.is_some() != weights.intent.is_some() {
        return Err("intent weights without an intent section, or the reverse".into());
    }
    let intent = match (&bundle.intent, weights.intent) {
        (Some(config), Some(w)) => {
            Some(IntentHead::from_weights(config, w).map_err(|e| e.to_string())?)
        }
        _ => None,
    };
    let table = weights.item_embedding;
    let rows = Rows {
        data: &table,
        stride: bundle.dim,
        width: bundle.dim,
    };
    let history: Vec<u32> = (1..=bundle.num_items.min(9) as u32).collect();
    let mut h = vec![0.0f32; bundle.dim];
    backbone.user_vector(rows, &history, &mut h);
    let embedding: Vec<f32> = (0..bundle.encoder.dim)
        .map(|i| (i as f32 * 0.37).sin() / 8.0)
        .collect();
    let prompt = match &intent {
        None => embedding,
        Some(head) => {
            let input = head.prompt_input(&embedding);
            let readings = head.read(&input);
            let refused = head.refused(&input);
            if readings.iter().any(|r| r.value >= head.num_values())
                || refused.iter().any(|&j| j >= head.num_values())
            {
                return Err("the intent reading names a value the head does not have".into());
            }
            input
        }
    };
    if prompt.len() != steering.prompt_dim() {
        // The reader must have rejected this bundle (no file named: a test failure).
        return Err(format!(
            "prompt input has {} floats, the steering head reads {}",
            prompt.len(),
            steering.prompt_dim()
        ));
    }
    let mut steered = vec![0.0f32; steering.output_dim()];
    let mut gates = vec![0.0f32; steering.num_experts()];
    let mut terms = vec![0.0f32; steering.history_terms_len()];
    steering.history_terms(&h, &mut terms);
    steering.steer(
        &h,
        &terms,
        &steering.prepare(&prompt),
        1.0,
        &mut steered,
        &mut gates,
    );
    if bundle.weights.is_some() || bundle.take_weights().is_ok() {
        return Err("the weights were handed out twice".into());
    }
    if h.iter().chain(&steered).all(|x| x.is_finite()) {
        Ok(())
    } else {
        Err(format!(
            "{}: the user vector or its steered version is not finite",
            root.display()
        ))
    }
}

type Case = (bool, Vec<Mutation>, bool);

/// Damaged bundles the reader accepted (a harmless change, e.g. a title or an unused field).
static ACCEPTED: AtomicU64 = AtomicU64::new(0);

fn case() -> impl Strategy<Value = Case> {
    (
        any::<bool>(),
        prop::collection::vec(mutation(), 1..4),
        prop::bool::weighted(0.1),
    )
}

fn check(
    bundles: &[Files; 2],
    dir: &Path,
    (gru, mutations, verify): &Case,
) -> Result<(), TestCaseError> {
    let mut files = bundles[usize::from(*gru)].clone();
    for m in mutations {
        apply(&mut files, m);
    }
    let root = dir.join("bundle");
    std::fs::create_dir_all(root.join("prompt_encoder")).unwrap();
    for (name, data) in FILES.iter().zip(&files.0) {
        std::fs::write(root.join(name), data).unwrap();
    }
    match open_and_use(&root, *verify) {
        Ok(()) => {
            ACCEPTED.fetch_add(1, Ordering::Relaxed);
        }
        Err(message) => {
            let names_a_file = FILES.iter().any(|f| message.contains(f))
                || message.contains(&*root.to_string_lossy());
            prop_assert!(names_a_file, "error names no file: {message}");
        }
    }
    Ok(())
}

fn env_number(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

#[test]
fn valid_bundles_open() {
    let dir = tempfile::tempdir().unwrap();
    for gru in [false, true] {
        let files = valid_bundle(if gru { "gru4rec" } else { "sasrec" });
        for (name, data) in FILES.iter().zip(&files.0) {
            std::fs::create_dir_all(dir.path().join("prompt_encoder")).unwrap();
            std::fs::write(dir.path().join(name), data).unwrap();
        }
        open_and_use(dir.path(), true).unwrap();
    }
}

#[test]
fn damaged_bundles_are_errors_not_panics() {
    let bundles = [valid_bundle("sasrec"), valid_bundle("gru4rec")];
    let dir = tempfile::tempdir().unwrap();
    let cases = env_number("DPR_FUZZ_CASES").unwrap_or(1000) as u32;
    let budget = env_number("DPR_FUZZ_SECONDS").map(Duration::from_secs);
    let config = Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    };
    let start = Instant::now();
    let mut tried = 0u64;
    for batch in 0u64.. {
        // Batch 0 is seeded (reproducible in CI); later batches (only with a time budget) are
        // seeded from the clock.
        let seed = if batch == 0 {
            0x5eed
        } else {
            start.elapsed().as_nanos() as u64 ^ batch
        };
        let mut seed_bytes = [0u8; 32];
        seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
        let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes);
        let mut runner = TestRunner::new_with_rng(config.clone(), rng);
        let result = runner.run(&case(), |c| check(&bundles, dir.path(), &c));
        if let Err(e) = result {
            panic!("{e}");
        }
        tried += u64::from(cases);
        if budget.is_none_or(|b| start.elapsed() >= b) {
            break;
        }
    }
    println!(
        "fuzz_bundle: {tried} damaged bundles tried in {:.1} s, {} accepted, the rest errors",
        start.elapsed().as_secs_f64(),
        ACCEPTED.load(Ordering::Relaxed)
    );
}

/// Writes `files` as a bundle under `dir` and opens it (checksums verified).
/// Each `(what, files, want)` case is refused with a message containing `want`.
fn expect_rejections(dir: &Path, cases: &[(&str, Files, &str)]) {
    for (what, files, want) in cases {
        let root = dir.join(what.replace(' ', "_"));
        match open_files(&root, files) {
            Ok(()) => panic!("{what}: accepted"),
            Err(message) => assert!(
                message.contains(want),
                "{what}: {message:?} does not contain {want:?}"
            ),
        }
    }
}

fn open_files(dir: &Path, files: &Files) -> Result<(), String> {
    std::fs::create_dir_all(dir.join("prompt_encoder")).unwrap();
    for (name, data) in FILES.iter().zip(&files.0) {
        std::fs::write(dir.join(name), data).unwrap();
    }
    open_and_use(dir, true)
}

/// The valid version-2 bundle with `edit` applied to its `dpr.json`.
fn with_config(edit: impl FnOnce(&mut Value)) -> Files {
    let mut files = valid_bundle("sasrec");
    let mut config: Value = serde_json::from_slice(&files.0[0]).unwrap();
    edit(&mut config);
    files.0[0] = serde_json::to_vec(&config).unwrap();
    files
}

/// The valid version-2 bundle with `edit` applied to its tensors (float32 data), rehashed.
fn with_tensors(edit: impl FnOnce(&mut Vec<(String, Vec<usize>, Vec<u8>, Dtype)>)) -> Files {
    let mut files = valid_bundle("sasrec");
    let st = safetensors::SafeTensors::deserialize(&files.0[2]).unwrap();
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>, Dtype)> = st
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            (
                name,
                view.shape().to_vec(),
                view.data().to_vec(),
                view.dtype(),
            )
        })
        .collect();
    edit(&mut tensors);
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(name, shape, data, dtype)| {
            (
                name.clone(),
                TensorView::new(*dtype, shape.clone(), data).unwrap(),
            )
        })
        .collect();
    files.0[2] = safetensors::serialize(views, None).unwrap();
    let digest = sha256_hex(&files.0[2]);
    let mut config: Value = serde_json::from_slice(&files.0[0]).unwrap();
    config["files"]["weights.safetensors"] = json!(digest);
    files.0[0] = serde_json::to_vec(&config).unwrap();
    files
}

#[test]
fn intent_section_errors_name_the_file_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let cases: Vec<(&str, Files, &str)> = vec![
        (
            "unknown value",
            with_config(|c| c["intent"]["values"][0] = json!(["genre", "Western"])),
            r#"dpr.json: intent.values[0] = ["genre", "Western"]: items.json attributes.genre.values has no value "Western""#,
        ),
        (
            "unknown family",
            with_config(|c| c["intent"]["values"][1] = json!(["mood", "2000s"])),
            r#"dpr.json: intent.values[1] = ["mood", "2000s"]: items.json has no attribute "mood""#,
        ),
        (
            "repeated value",
            with_config(|c| c["intent"]["values"][1] = json!(["genre", "Comedy"])),
            "dpr.json: intent.values[1] = [\"genre\", \"Comedy\"] repeats an earlier value",
        ),
        (
            "no values",
            with_config(|c| c["intent"]["values"] = json!([])),
            "dpr.json: intent.values must hold at least one value",
        ),
        (
            "value not a pair",
            with_config(|c| c["intent"]["values"][0] = json!("Comedy")),
            "dpr.json: ",
        ),
        (
            "refuse threshold zero",
            with_config(|c| c["intent"]["refuse_threshold"] = json!(0.0)),
            "dpr.json: intent.refuse_threshold must lie in (0, 1], got 0",
        ),
        (
            "refuse threshold above one",
            with_config(|c| c["intent"]["refuse_threshold"] = json!(1.5)),
            "dpr.json: intent.refuse_threshold must lie in (0, 1], got 1.5",
        ),
        (
            "refuse threshold missing",
            with_config(|c| {
                c["intent"].as_object_mut().unwrap().remove("refuse_threshold");
            }),
            "dpr.json: missing field `refuse_threshold`",
        ),
        (
            "detect threshold negative",
            with_config(|c| c["intent"]["detect_threshold"] = json!(-0.5)),
            "dpr.json: intent.detect_threshold must lie in (0, 1], got -0.5",
        ),
        (
            "prompt_dim without the features",
            with_config(|c| c["steer"]["prompt_dim"] = json!(E)),
            "dpr.json: steer.prompt_dim 8 differs from intent.embedding_dim + 2 x 2 intent values = 12",
        ),
        (
            "embedding_dim not the encoder's",
            with_config(|c| c["intent"]["embedding_dim"] = json!(6)),
            "dpr.json: intent.embedding_dim 6 differs from prompt_encoder.dim 8",
        ),
        (
            "zero hidden width",
            with_config(|c| c["intent"]["hidden"] = json!(0)),
            "dpr.json: intent.hidden must be positive, got 0",
        ),
        (
            "another activation",
            with_config(|c| c["intent"]["activation"] = json!("gelu")),
            "dpr.json: intent.activation \"gelu\" is not supported",
        ),
        (
            "another feature layout",
            with_config(|c| c["intent"]["features"] = json!("embedding")),
            "dpr.json: intent.features \"embedding\" is not supported",
        ),
        (
            "intent in a version-1 bundle",
            with_config(|c| c["version"] = json!(1)),
            "dpr.json: intent: the intent section needs version 2, the file says version 1",
        ),
        (
            "unknown version",
            with_config(|c| c["version"] = json!(5)),
            "dpr.json: version Some(5) is not supported (this reader knows 1, 2, 3 and 4)",
        ),
        (
            "a version-3 SASRec bundle that does not say its positions",
            with_config(|c| c["version"] = json!(3)),
            "dpr.json: backbone.positions is required for SASRec from version 3",
        ),
        (
            "hidden width disagrees with the tensors",
            with_config(|c| c["intent"]["hidden"] = json!(5)),
            "weights.safetensors: tensor 'intent.hidden_layer.bias' has shape (3,), dpr.json implies (5,)",
        ),
        (
            "intent tensors without a section",
            with_config(|c| {
                c.as_object_mut().unwrap().remove("intent");
                c["steer"]["prompt_dim"] = json!(E);
            }),
            "weights.safetensors: unexpected tensor 'intent.hidden_layer.bias' (dpr.json has no intent section)",
        ),
        (
            "output layer missing",
            with_tensors(|t| t.retain(|(name, ..)| name != "intent.output_layer.weight")),
            "weights.safetensors: missing tensor 'intent.output_layer.weight'",
        ),
        (
            "output layer of the wrong shape",
            with_tensors(|t| {
                let w = t
                    .iter_mut()
                    .find(|(name, ..)| name == "intent.output_layer.weight")
                    .unwrap();
                w.1 = vec![3, 6];
            }),
            "weights.safetensors: tensor 'intent.output_layer.weight' has shape (3, 6), dpr.json implies (6, 3)",
        ),
        (
            "NaN in the head",
            with_tensors(|t| {
                let b = t
                    .iter_mut()
                    .find(|(name, ..)| name == "intent.output_layer.bias")
                    .unwrap();
                b.2[4..8].copy_from_slice(&f32::NAN.to_le_bytes());
            }),
            "weights.safetensors: tensor 'intent.output_layer.bias' holds NaN or Inf (flat index 1)",
        ),
        (
            "an extra intent tensor",
            with_tensors(|t| {
                t.push((
                    "intent.extra_layer.bias".into(),
                    vec![2],
                    vec![0; 8],
                    Dtype::F32,
                ))
            }),
            "weights.safetensors: unexpected tensor 'intent.extra_layer.bias'",
        ),
    ];
    expect_rejections(dir.path(), &cases);
}

#[test]
fn version_3_reads_sasrec_positions_and_gru4rec_needs_none() {
    use _core::bundle::Positions;
    let dir = tempfile::tempdir().unwrap();
    for (kind, positions) in [
        ("sasrec", Some("from_end")),
        ("sasrec", Some("from_start")),
        ("gru4rec", None),
    ] {
        let mut files = valid_bundle(kind);
        let mut config: Value = serde_json::from_slice(&files.0[0]).unwrap();
        config["version"] = json!(3);
        if let Some(p) = positions {
            config["backbone"]["positions"] = json!(p);
        }
        files.0[0] = serde_json::to_vec(&config).unwrap();
        let at = dir.path().join(format!("{kind}-{positions:?}"));
        open_files(&at, &files).unwrap();
        let bundle = Bundle::open(&at, true).unwrap();
        assert_eq!(bundle.version, 3);
        if let BackboneConfig::Sasrec { positions: p, .. } = bundle.backbone {
            let want = if positions == Some("from_end") {
                Positions::FromEnd
            } else {
                Positions::FromStart
            };
            assert_eq!(p, want);
        }
    }
}

#[test]
fn bundles_without_an_intent_section_open_in_both_versions() {
    let dir = tempfile::tempdir().unwrap();
    // Version 2 without the section (and without its tensors) is a plain bundle.
    let mut plain = bundle_of("sasrec", false);
    let mut config: Value = serde_json::from_slice(&plain.0[0]).unwrap();
    config["version"] = json!(2);
    plain.0[0] = serde_json::to_vec(&config).unwrap();
    open_files(&dir.path().join("v2"), &plain).unwrap();
    let bundle = Bundle::open(&dir.path().join("v2"), true).unwrap();
    assert_eq!(bundle.version, 2);
    assert!(bundle.intent.is_none());
    // The version-1 GRU4Rec bundle.
    open_files(&dir.path().join("v1"), &valid_bundle("gru4rec")).unwrap();
    let bundle = Bundle::open(&dir.path().join("v1"), true).unwrap();
    assert_eq!(bundle.version, 1);
    assert!(bundle.intent.is_none());
    // And the version-2 bundle with its head.
    let mut bundle = {
        open_files(&dir.path().join("head"), &valid_bundle("sasrec")).unwrap();
        Bundle::open(&dir.path().join("head"), true).unwrap()
    };
    let intent = bundle.intent.clone().unwrap();
    assert_eq!(intent.num_values(), 2);
    assert_eq!(intent.refuse_threshold, 0.6);
    let weights = bundle.take_weights().unwrap().intent.unwrap();
    let head = IntentHead::from_weights(&intent, weights).unwrap();
    assert_eq!(head.feature_dim(), 4);
    assert_eq!(head.values()[1], ("decade".to_owned(), "2000s".to_owned()));
}

/// The valid version-2 SASRec bundle restated as version 4, steering `families`.
fn version_4(families: Value) -> Files {
    with_config(|c| {
        c["version"] = json!(4);
        c["backbone"]["positions"] = json!("from_end");
        let steer = c["steer"].as_object_mut().unwrap();
        steer.remove("attribute");
        steer.remove("values");
        steer.insert("families".into(), families);
    })
}

#[test]
fn version_4_bundles_steer_any_families_of_the_items_file() {
    let dir = tempfile::tempdir().unwrap();
    let families = json!([{"name": "decade", "values": ["2000s"]},
                          {"name": "genre", "values": ["Horror", "Comedy"]}]);
    let at = dir.path().join("v4");
    open_files(&at, &version_4(families)).unwrap();
    let bundle = Bundle::open(&at, true).unwrap();
    assert_eq!(bundle.version, 4);
    let names: Vec<(&str, Vec<&str>)> = bundle
        .steer
        .families
        .iter()
        .map(|f| {
            (
                f.name.as_str(),
                f.values.iter().map(String::as_str).collect(),
            )
        })
        .collect();
    assert_eq!(
        names,
        [
            ("decade", vec!["2000s"]),
            ("genre", vec!["Horror", "Comedy"])
        ]
    );
    let cases = [
        (
            "both forms",
            with_config(|c| {
                c["version"] = json!(4);
                c["backbone"]["positions"] = json!("from_end");
                c["steer"]["families"] = json!([{"name": "genre", "values": GENRES}]);
            }),
            "dpr.json: steer.attribute is not read from version 4",
        ),
        (
            "families in a version-2 bundle",
            with_config(|c| c["steer"]["families"] = json!([{"name": "genre", "values": GENRES}])),
            "dpr.json: steer.families needs version 4, the file says version 2",
        ),
        (
            "unknown family",
            version_4(json!([{"name": "mood", "values": ["Dark", "Light", "Odd"]}])),
            r#"dpr.json: steer.families[0] ("mood"): items.json has no attribute "mood""#,
        ),
        (
            "unknown value",
            version_4(json!([{"name": "genre", "values": ["Comedy", "Western", "Horror"]}])),
            r#"dpr.json: steer.families[0] ("genre"): "Western" is not one of items.json attributes.genre.values"#,
        ),
        (
            "wrong count",
            version_4(json!([{"name": "genre", "values": GENRES},
                             {"name": "decade", "values": ["1990s"]}])),
            "dpr.json: steer.families hold 4 values in all, steer.attribute_dim is 3",
        ),
    ];
    expect_rejections(dir.path(), &cases);
}
