//! [`BundleError`]: what is wrong with a bundle, and where.

use std::fmt;
use std::path::PathBuf;

/// What is wrong with a bundle, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BundleError {
    /// A file the bundle needs is not there.
    Missing { file: PathBuf, why: String },
    /// A file is there but its content is wrong.
    Invalid { file: String, message: String },
}

impl BundleError {
    pub(crate) fn invalid(file: &str, message: impl Into<String>) -> Self {
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
