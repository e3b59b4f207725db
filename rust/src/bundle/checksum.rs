//! Checksums: every file listed in `dpr.json` `files` against its sha256.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;

use memmap2::Mmap;
use sha2::{Digest, Sha256};

use super::BundleError;

/// Checks every file listed in `dpr.json` `files` against its sha256.
pub(super) fn verify_files(
    root: &Path,
    files: &BTreeMap<String, String>,
) -> Result<(), BundleError> {
    for (name, digest) in files {
        if &sha256_of(&root.join(name), name)? != digest {
            return Err(BundleError::Checksum { file: name.clone() });
        }
    }
    Ok(())
}

fn sha256_of(path: &Path, name: &str) -> Result<String, BundleError> {
    let file = File::open(path).map_err(|e| BundleError::unreadable(name, e.to_string()))?;
    let mut hasher = Sha256::new();
    if file.metadata().map(|m| m.len()).unwrap_or(0) > 0 {
        // SAFETY: the bundle is read-only while served; a concurrent writer would at worst
        // change the digest, which is then reported as a mismatch.
        let map = unsafe { Mmap::map(&file) }
            .map_err(|e| BundleError::unreadable(name, e.to_string()))?;
        hasher.update(&map[..]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}
