//! The serving numerics against the PyTorch side, without torch: the tiny fixture bundles in
//! `tests/fixtures/` (a SASRec and a GRU4Rec bundle with a random BERT-shaped prompt encoder,
//! its own WordPiece tokenizer, a steering head and an intent read-out) are loaded through the
//! engine, and every number is compared to `tests/fixtures/golden.json`, which
//! `tests/fixtures/make_tiny_bundles.py` computed with the PyTorch models:
//!
//! - the prompt encoder (sentence embedding: cosine ≥ 0.9999 and |Δ| ≤ 1e-4; intent
//!   read-out probabilities: |Δ| ≤ 1e-4);
//! - the backbone's user vector (steering off) and the steered vector (cosine ≥ 0.9999 and
//!   |Δ| ≤ 1e-4);
//! - the exact scan: the same top-k rows, seen items excluded, scores within 1e-4; the same
//!   rows in `mode="auto"` (the items of values the intent read-out refuses left out too);
//! - an HNSW graph over the item vectors: the graph walk returns exactly the top-k over all
//!   items, before and after a save and load (with and without the flat graph file).
//!
//! The fixture is regenerated with `python tests/fixtures/make_tiny_bundles.py`.

use std::path::{Path, PathBuf};

use serde_json::Value;

use _core::engine::{Model, QueryOptions};
use _core::index::exact::Matrix;
use _core::index::hnsw::{HnswIndex, HnswParams};
use _core::index::policy::{Filter, Retrieval};

const KINDS: [&str; 2] = ["sasrec", "gru4rec"];

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

/// `golden.json`: the whole file, and the section of one bundle.
fn golden(kind: &str) -> (Value, Value) {
    let path = fixtures().join("golden.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run tests/fixtures/make_tiny_bundles.py)",
            path.display()
        )
    });
    let all: Value = serde_json::from_str(&text).expect("golden.json is JSON");
    let section = all["bundles"][kind].clone();
    assert!(section.is_object(), "golden.json has no bundle {kind:?}");
    (all, section)
}

fn tolerance(all: &Value, name: &str) -> f32 {
    all["tolerance"][name].as_f64().expect("tolerance") as f32
}

fn floats(value: &Value) -> Vec<f32> {
    value
        .as_array()
        .expect("an array of numbers")
        .iter()
        .map(|v| v.as_f64().expect("a number") as f32)
        .collect()
}

fn rows(value: &Value) -> Vec<u32> {
    value
        .as_array()
        .expect("an array of rows")
        .iter()
        .map(|v| v.as_u64().expect("a row") as u32)
        .collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Cosine of two vectors (1 when both are zero: the blank prompt).
fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    if na == 0.0 && nb == 0.0 {
        1.0
    } else {
        (dot / (na * nb)) as f32
    }
}

fn assert_close(got: &[f32], want: &[f32], all: &Value, what: &str) {
    let diff = max_abs_diff(got, want);
    let cos = cosine(got, want);
    assert!(
        diff <= tolerance(all, "vector") && cos >= tolerance(all, "cosine"),
        "{what}: max |rust - torch| = {diff}, cosine {cos}\n rust  {got:?}\n torch {want:?}"
    );
}

fn load(kind: &str) -> Model {
    let path = fixtures().join(format!("tiny_{kind}"));
    Model::load(&path, true, 64, 64, Retrieval::Exact, true)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The prompt input of golden prompt `p` as the engine computes it.
fn prompt_input(model: &Model, golden: &Value, p: usize) -> Vec<f32> {
    let text = golden["prompts"][p]["text"].as_str().expect("prompt text");
    model.encode_prompt(text).expect("encode").to_vec()
}

#[test]
fn fixture_shapes() {
    for kind in KINDS {
        let (_, golden) = golden(kind);
        let model = load(kind);
        assert_eq!(
            model.num_items as u64,
            golden["num_items"].as_u64().unwrap()
        );
        assert_eq!(model.dim as u64, golden["dim"].as_u64().unwrap());
        assert_eq!(
            model.vector_dim() as u64,
            golden["vector_dim"].as_u64().unwrap()
        );
        let first = &golden["prompts"][0]["prompt_input"];
        assert_eq!(
            model.prompt_dim(),
            first.as_array().unwrap().len(),
            "{kind}"
        );
        assert!(
            model.intent().is_some(),
            "{kind}: the fixture has an intent read-out"
        );
    }
}

#[test]
fn prompt_encoder_and_intent_read_out() {
    for kind in KINDS {
        let (all, golden) = golden(kind);
        let model = load(kind);
        for (p, prompt) in golden["prompts"].as_array().unwrap().iter().enumerate() {
            let got = prompt_input(&model, &golden, p);
            let embedding = floats(&prompt["embedding"]);
            let e = embedding.len();
            let what = format!("{kind} prompt {:?}", prompt["text"]);
            assert_close(&got[..e], &embedding, &all, &format!("{what}: embedding"));
            // The read-out: (none, asked, refused) per value; the engine appends asked, refused.
            let probabilities: Vec<Vec<f32>> = prompt["intent_probabilities"]
                .as_array()
                .unwrap()
                .iter()
                .map(floats)
                .collect();
            let v = probabilities.len();
            let asked: Vec<f32> = probabilities.iter().map(|q| q[1]).collect();
            let refused: Vec<f32> = probabilities.iter().map(|q| q[2]).collect();
            let score = tolerance(&all, "score");
            assert!(
                max_abs_diff(&got[e..e + v], &asked) <= score,
                "{what}: asked"
            );
            assert!(
                max_abs_diff(&got[e + v..], &refused) <= score,
                "{what}: refused"
            );
            let input = floats(&prompt["prompt_input"]);
            assert_close(&got, &input, &all, &format!("{what}: prompt input"));
        }
        // Blank means zero, exactly.
        assert!(model
            .encode_prompt("  \t")
            .unwrap()
            .iter()
            .all(|&x| x == 0.0));
    }
}

#[test]
fn backbone_user_vectors() {
    for kind in KINDS {
        let (all, golden) = golden(kind);
        let model = load(kind);
        let zero = vec![0.0f32; model.prompt_dim()];
        for history in golden["histories"].as_array().unwrap() {
            let rows = rows(&history["rows"]);
            let got = model.user_vector(&rows, &zero, 1.0, false).unwrap();
            let want = floats(&history["user_vector"]);
            let what = format!("{kind} history {rows:?}");
            assert_close(&got[..model.dim], &want, &all, &what);
            assert!(got[model.dim..].iter().all(|&x| x == 0.0), "{what}: [h, 0]");
        }
    }
}

#[test]
fn steered_vectors_and_exact_scan() {
    for kind in KINDS {
        let (all, golden) = golden(kind);
        let model = load(kind);
        let k = golden["k"].as_u64().unwrap() as usize;
        let prompts: Vec<Vec<f32>> = (0..golden["prompts"].as_array().unwrap().len())
            .map(|p| prompt_input(&model, &golden, p))
            .collect();
        for case in golden["cases"].as_array().unwrap() {
            let h = case["history"].as_u64().unwrap() as usize;
            let p = case["prompt"].as_u64().unwrap() as usize;
            let strength = case["strength"].as_f64().unwrap() as f32;
            let history = rows(&golden["histories"][h]["rows"]);
            let what = format!("{kind} history {history:?} prompt {p} strength {strength}");
            let steered = model
                .user_vector(&history, &prompts[p], strength, true)
                .unwrap();
            assert_close(&steered, &floats(&case["steered"]), &all, &what);

            let options = QueryOptions {
                k,
                strength,
                steer: true,
                auto_exclude: false,
                exclude_seen: true,
                filter: Filter::default(),
            };
            let hits = model.query(&history, &prompts[p], &options, false).unwrap();
            let got: Vec<u32> = hits.iter().map(|hit| hit.row as u32).collect();
            assert_eq!(got, rows(&case["top_k_rows"]), "{what}: top-k rows");
            let scores: Vec<f32> = hits.iter().map(|hit| hit.score).collect();
            let diff = max_abs_diff(&scores, &floats(&case["top_k_scores"]));
            assert!(
                diff <= tolerance(&all, "score"),
                "{what}: scores differ by {diff}"
            );
            // mode="auto": the items of the values the prompt refuses are left out as well.
            let auto = QueryOptions {
                auto_exclude: true,
                ..options.clone()
            };
            let hits = model.query(&history, &prompts[p], &auto, false).unwrap();
            let got: Vec<u32> = hits.iter().map(|hit| hit.row as u32).collect();
            assert_eq!(
                got,
                rows(&case["auto_top_k_rows"]),
                "{what}: auto top-k rows"
            );
            // Every item's score: the whole catalogue, seen items included.
            let everything = QueryOptions {
                k: model.num_items,
                exclude_seen: false,
                ..options
            };
            let mut full = vec![f32::NAN; model.num_items];
            for hit in model
                .query(&history, &prompts[p], &everything, false)
                .unwrap()
            {
                full[hit.row - 1] = hit.score;
            }
            assert!(
                full.iter().all(|s| !s.is_nan()),
                "{what}: an item was not scored"
            );
            let diff = max_abs_diff(&full, &floats(&case["scores"]));
            assert!(
                diff <= tolerance(&all, "score"),
                "{what}: catalogue scores differ by {diff}"
            );
        }
    }
}

/// Top-k rows of every golden case from `index` (no filter, nothing excluded).
fn graph_top_k(index: &HnswIndex, golden: &Value) -> Vec<Vec<u32>> {
    let k = golden["k"].as_u64().unwrap() as usize;
    golden["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|case| {
            let hits = index.search(&floats(&case["steered"]), k, 0, None).unwrap();
            hits.iter().map(|hit| hit.row as u32).collect()
        })
        .collect()
}

#[test]
fn hnsw_graph_walk_returns_the_exact_top_k() {
    for kind in KINDS {
        let (_, golden) = golden(kind);
        let vectors = golden["item_vectors"].as_array().unwrap();
        let width = golden["vector_dim"].as_u64().unwrap() as usize;
        // Row 0 is padding, as in the engine's table: index rows 1..=N.
        let mut table = vec![0.0f32; width];
        vectors.iter().for_each(|row| table.extend(floats(row)));
        let n = vectors.len();
        let items = Matrix::new(&table, n + 1, width).unwrap();
        let index = HnswIndex::build(items, 1..n + 1, &HnswParams::default()).unwrap();
        let want: Vec<Vec<u32>> = golden["cases"]
            .as_array()
            .unwrap()
            .iter()
            .map(|case| rows(&case["all_items_top_k_rows"]))
            .collect();
        assert_eq!(graph_top_k(&index, &golden), want, "{kind}: built graph");

        // Saved and loaded: dpr's index file, the graph read back as it was built.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("index.hnsw");
        index.save(&file).unwrap();
        let loaded = HnswIndex::load(&file, items).unwrap();
        assert_eq!(graph_top_k(&loaded, &golden), want, "{kind}: loaded graph");
    }
}

/// Copies the fixture bundle `kind` to `to` as a version-4 bundle steering `families` (in
/// place of its `steer.attribute` and `steer.values`); `dpr.json` is not checksummed.
fn version_4_copy(kind: &str, to: &Path, families: Value) {
    let from = fixtures().join(format!("tiny_{kind}"));
    for dir in [to.to_path_buf(), to.join("prompt_encoder")] {
        std::fs::create_dir_all(dir).unwrap();
    }
    for name in ["items.json", "weights.safetensors"] {
        std::fs::copy(from.join(name), to.join(name)).unwrap();
    }
    for entry in std::fs::read_dir(from.join("prompt_encoder")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(
            entry.path(),
            to.join("prompt_encoder").join(entry.file_name()),
        )
        .unwrap();
    }
    let text = std::fs::read_to_string(from.join("dpr.json")).unwrap();
    let mut config: Value = serde_json::from_str(&text).unwrap();
    config["version"] = Value::from(4);
    if kind == "sasrec" {
        config["backbone"]["positions"] = Value::from("from_end");
    }
    let steer = config["steer"].as_object_mut().unwrap();
    steer.remove("attribute");
    steer.remove("values");
    steer.insert("families".into(), families);
    std::fs::write(to.join("dpr.json"), config.to_string()).unwrap();
}

#[test]
fn a_version_4_restatement_of_the_fixtures_scores_identically() {
    let dir = tempfile::tempdir().unwrap();
    for kind in KINDS {
        let (_, golden) = golden(kind);
        let old = load(kind);
        let genre: Vec<String> = old
            .attributes
            .iter()
            .find(|a| a.name == "genre")
            .unwrap()
            .values
            .clone();
        let at = dir.path().join(kind);
        let family = |values: &[String]| serde_json::json!([{"name": "genre", "values": values}]);
        version_4_copy(kind, &at, family(&genre));
        let new = Model::load(&at, true, 64, 64, Retrieval::Exact, true).unwrap();
        assert_eq!(new.item_vectors(), old.item_vectors(), "{kind}: item table");
        let steered: Vec<(&str, &[String])> = new
            .steered_families()
            .iter()
            .map(|f| (f.name.as_str(), &f.values[..]))
            .collect();
        assert_eq!(steered, [("genre", &genre[..])]);
        assert_eq!(old.steered_families(), new.steered_families());
        let k = golden["k"].as_u64().unwrap() as usize;
        for case in golden["cases"].as_array().unwrap() {
            let h = case["history"].as_u64().unwrap() as usize;
            let p = case["prompt"].as_u64().unwrap() as usize;
            let history = rows(&golden["histories"][h]["rows"]);
            let prompt = prompt_input(&old, &golden, p);
            let options = QueryOptions {
                k,
                strength: case["strength"].as_f64().unwrap() as f32,
                steer: true,
                auto_exclude: true,
                exclude_seen: true,
                filter: Filter::default(),
            };
            let hits = |model: &Model| -> Vec<(usize, f32)> {
                let hits = model.query(&history, &prompt, &options, false).unwrap();
                hits.iter().map(|hit| (hit.row, hit.score)).collect()
            };
            assert_eq!(hits(&new), hits(&old), "{kind} history {h} prompt {p}");
        }

        // Listed in another order, the genre columns follow the list, not items.json.
        let reversed: Vec<String> = genre.iter().rev().cloned().collect();
        let at = dir.path().join(format!("{kind}-reversed"));
        version_4_copy(kind, &at, family(&reversed));
        let model = Model::load(&at, true, 64, 64, Retrieval::Exact, true).unwrap();
        let (d, width) = (old.dim, old.vector_dim());
        let mut moved = 0;
        for (row, (got, want)) in model
            .item_vectors()
            .chunks(width)
            .zip(old.item_vectors().chunks(width))
            .enumerate()
        {
            let mut flipped = want.to_vec();
            flipped[d..].reverse();
            assert_eq!(got, flipped, "{kind}: row {}", row + 1);
            moved += usize::from(flipped != want);
        }
        assert!(moved > 0, "{kind}: no item's genre columns moved");
    }
}
