//! Reading and validating a model bundle (format: `docs/bundle.md`, writer: `dpr.export`):
//! [`config`] (`dpr.json`), [`items`] (ids, titles, attributes), [`weights`] (the tensor
//! name/shape table), [`checksum`], and [`BundleError`].
//!
//! `Bundle::open` reads `dpr.json`, checks the format and version, optionally checks every
//! file against its sha256, memory-maps `weights.safetensors`, checks that every tensor the
//! configuration implies is present with its shape and dtype (and no other), that no float is
//! NaN/Inf, and that `items.json` agrees with the weights. Every error names the file and the
//! field. Nothing here panics on any input.

mod checksum;
pub mod config;
mod error;
pub mod items;
pub mod weights;

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

pub use config::{
    BackboneConfig, EncoderConfig, IntentConfig, Positions, SteerConfig, SteerFamily,
    FAMILIES_FROM, INTENT_FEATURES,
};
pub use error::BundleError;
pub use items::{Attribute, IdRows, ItemId};
pub use weights::{
    attribute_shape, expected_float_shapes, BackboneWeights, GruLayerWeights, IntentWeights,
    LinearWeights, NormWeights, SasRecBlockWeights, SteerWeights, Tensor, Weights,
    ATTRIBUTE_PREFIX,
};

use checksum::verify_files;
use config::parse_config;
use items::read_items;
use weights::{check_attributes, read_weights, ReadWeights};

pub const FORMAT: &str = "dpr-bundle";
/// The newest bundle version (2 adds the optional intent read-out, 3 makes SASRec's
/// `backbone.positions` mandatory, 4 lets the steered block span several attribute families).
pub const VERSION: i64 = 4;
/// Every version this reader accepts.
pub const READ_VERSIONS: [i64; 4] = [1, 2, 3, 4];
pub const CONFIG_FILE: &str = "dpr.json";
pub const WEIGHTS_FILE: &str = "weights.safetensors";
/// The largest dimension or count `dpr.json` may state (items are addressed by u32 rows).
pub const MAX_SIZE: usize = (u32::MAX - 1) as usize;
/// The most SASRec blocks or GRU layers a bundle may have.
pub const MAX_LAYERS: usize = 1024;

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
    /// The float tensors, typed; [`Bundle::take_weights`] moves them out.
    pub weights: Option<Weights<Vec<f32>>>,
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
                return Err(BundleError::config(
                    "files",
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
        let ReadWeights {
            mut floats,
            attributes: mut matrices,
        } = weights;
        // `read_weights` checked that the file holds exactly these tensors.
        let typed = Weights::walk(
            &raw.backbone,
            raw.dim,
            raw.num_items,
            &raw.steer,
            raw.intent.as_ref(),
            &mut |name, _| {
                floats
                    .remove(name)
                    .map(|t| t.data)
                    .ok_or_else(|| BundleError::tensor(name, format!("missing tensor '{name}'")))
            },
        )?;
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
            weights: Some(typed),
        })
    }

    /// The folder holding the prompt encoder's files.
    pub fn encoder_dir(&self) -> PathBuf {
        self.root.join(&self.encoder.dir)
    }

    pub fn attribute(&self, name: &str) -> Option<&Attribute> {
        self.attributes.iter().find(|a| a.name == name)
    }

    /// Moves the float tensors out of the bundle (once; validated by `open`).
    pub fn take_weights(&mut self) -> Result<Weights<Vec<f32>>, BundleError> {
        self.weights
            .take()
            .ok_or_else(|| BundleError::tensor("", "the weights were already taken"))
    }
}

pub(super) fn read_text(root: &Path, name: &str) -> Result<String, BundleError> {
    let path = root.join(name);
    let mut text = String::new();
    File::open(&path)
        .and_then(|mut f| f.read_to_string(&mut text))
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => BundleError::Missing {
                file: path.clone(),
                why: "missing (not a bundle, or an unfinished one)".into(),
            },
            std::io::ErrorKind::InvalidData => {
                BundleError::unreadable(name, "not valid UTF-8 text")
            }
            _ => BundleError::unreadable(name, format!("cannot read: {e}")),
        })?;
    Ok(text)
}

/// A relative path with no `..`, no root and no drive: it cannot leave the bundle directory.
pub(super) fn inside_bundle(path: &str) -> bool {
    !path.is_empty()
        && Path::new(path)
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)))
}
