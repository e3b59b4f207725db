//! [`BundleError`]: what is wrong with a bundle, and where. Every variant names the file (and,
//! where there is one, the field or tensor); `Display` writes `file: message`, the form users
//! see in the Python exceptions (`dpr._core` maps the variants, in `python/errors.rs`).

use std::fmt;
use std::path::PathBuf;

use super::{CONFIG_FILE, WEIGHTS_FILE};
use crate::index::policy::INDEX_FILE;

/// What is wrong with a bundle, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BundleError {
    /// The bundle folder, or a file or folder it needs, is not there.
    Missing { file: PathBuf, why: String },
    /// `file` is there but cannot be read as what it should be (text, JSON, safetensors).
    Unreadable { file: String, why: String },
    /// `dpr.json` breaks its schema; `field` is the dotted path at fault (`""`: the whole file).
    Config { field: String, message: String },
    /// The items file (`file`, named by `dpr.json` `items.file`) disagrees with itself or with
    /// `dpr.json`; `field` is its field at fault.
    Items {
        file: String,
        field: String,
        message: String,
    },
    /// A tensor of `weights.safetensors` is missing, unexpected, or of the wrong dtype, shape or
    /// values (`tensor`: its name; `""`: the file as a whole).
    Tensor { tensor: String, message: String },
    /// `file` differs from its sha256 in `dpr.json` `files`.
    Checksum { file: String },
    /// The saved HNSW graph (`index.hnsw`) cannot be used with this bundle.
    Index { message: String },
    /// A file of the prompt encoder folder disagrees with `dpr.json`.
    Encoder { file: String, message: String },
}

impl BundleError {
    pub(crate) fn config(field: &str, message: impl Into<String>) -> Self {
        BundleError::Config {
            field: field.to_owned(),
            message: message.into(),
        }
    }

    pub(crate) fn items(file: &str, field: &str, message: impl Into<String>) -> Self {
        BundleError::Items {
            file: file.to_owned(),
            field: field.to_owned(),
            message: message.into(),
        }
    }

    pub(crate) fn tensor(tensor: &str, message: impl Into<String>) -> Self {
        BundleError::Tensor {
            tensor: tensor.to_owned(),
            message: message.into(),
        }
    }

    pub(crate) fn unreadable(file: &str, why: impl Into<String>) -> Self {
        BundleError::Unreadable {
            file: file.to_owned(),
            why: why.into(),
        }
    }

    /// The file at fault, as named in messages.
    pub fn file(&self) -> String {
        match self {
            BundleError::Missing { file, .. } => file.display().to_string(),
            BundleError::Unreadable { file, .. }
            | BundleError::Items { file, .. }
            | BundleError::Checksum { file }
            | BundleError::Encoder { file, .. } => file.clone(),
            BundleError::Config { .. } => CONFIG_FILE.to_owned(),
            BundleError::Tensor { .. } => WEIGHTS_FILE.to_owned(),
            BundleError::Index { .. } => INDEX_FILE.to_owned(),
        }
    }
}

impl fmt::Display for BundleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = self.file();
        match self {
            BundleError::Missing { why, .. } | BundleError::Unreadable { why, .. } => {
                write!(f, "{file}: {why}")
            }
            BundleError::Config { message, .. }
            | BundleError::Items { message, .. }
            | BundleError::Tensor { message, .. }
            | BundleError::Index { message }
            | BundleError::Encoder { message, .. } => write!(f, "{file}: {message}"),
            BundleError::Checksum { file } => write!(
                f,
                "{file}: sha256 differs from {CONFIG_FILE} files[\"{file}\"] (truncated or modified)"
            ),
        }
    }
}

impl std::error::Error for BundleError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_names_its_file() {
        let cases = [
            (
                BundleError::config("steer.values", "steer.values must hold 3 values"),
                "dpr.json: steer.values must hold 3 values",
            ),
            (
                BundleError::items("items.json", "ids", "ids[1] = 4 is a duplicate"),
                "items.json: ids[1] = 4 is a duplicate",
            ),
            (
                BundleError::tensor("items.embedding", "missing tensor 'items.embedding'"),
                "weights.safetensors: missing tensor 'items.embedding'",
            ),
            (
                BundleError::Checksum {
                    file: "items.json".into(),
                },
                "items.json: sha256 differs from dpr.json files[\"items.json\"] (truncated or modified)",
            ),
            (
                BundleError::Index {
                    message: "damaged".into(),
                },
                "index.hnsw: damaged",
            ),
            (
                BundleError::unreadable("dpr.json", "not valid UTF-8 text"),
                "dpr.json: not valid UTF-8 text",
            ),
        ];
        for (err, want) in cases {
            assert_eq!(err.to_string(), want);
            assert!(want.starts_with(&err.file()));
        }
    }
}
