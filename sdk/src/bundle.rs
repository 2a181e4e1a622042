//! A bundle is the folder the device opens: `model.gguf`, `catalog.nvct`, `codebooks.nvcb`, optionally
//! `embedder.gguf`, and `bundle.json`, a manifest that ties them together (sizes and sha256 of each file, prompt format).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

pub const MANIFEST: &str = "bundle.json";
pub const MODEL_FILE: &str = "model.gguf";
/// Version of the manifest format.
pub const BUNDLE_VERSION: u32 = 1;

/// One file of the bundle.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FileEntry {
    pub name: String,
    pub bytes: u64,
    pub sha256: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub bundle_version: u32,
    /// `navigen::prompt::PROMPT_VERSION` of the trainer that made the model.
    pub prompt_version: u32,
    /// "finetuned" (CID tokens in the vocabulary) or "zero-shot" (an instruct model, no CID tokens).
    pub kind: String,
    pub model: FileEntry,
    pub catalog: Option<FileEntry>,
    pub codebooks: Option<FileEntry>,
    /// The item-text embedder (`embedder.gguf`) the codebooks were built with; enables `register_item`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedder: Option<FileEntry>,
    /// Free-form facts: architecture, stage, dtype, creator.
    #[serde(default)]
    pub info: serde_json::Value,
}

/// Lower-case hex sha256 of a file.
pub fn sha256_file(path: &Path) -> Result<String> {
    use sha2::Digest;
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

impl Manifest {
    pub fn read(dir: &Path) -> Result<Self> {
        let p = dir.join(MANIFEST);
        let bytes = std::fs::read(&p).map_err(|e| Error::io(&p, e))?;
        let m: Manifest = serde_json::from_slice(&bytes)
            .map_err(|e| Error::InvalidArgument(format!("{}: {e}", p.display())))?;
        if m.bundle_version != BUNDLE_VERSION {
            return Err(Error::Mismatch(format!(
                "{}: bundle version {} (this build reads {BUNDLE_VERSION})",
                p.display(),
                m.bundle_version
            )));
        }
        if m.prompt_version != crate::prompt::PROMPT_VERSION {
            return Err(Error::Mismatch(format!(
                "{}: the model was trained with prompt format {} but this runtime builds format {}; re-export the bundle with a matching trainer",
                p.display(),
                m.prompt_version,
                crate::prompt::PROMPT_VERSION
            )));
        }
        Ok(m)
    }

    pub fn write(&self, dir: &Path) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(self).expect("manifest serialises");
        crate::format::write_atomic(&dir.join(MANIFEST), &bytes)
    }

    pub fn path(dir: &Path, entry: &FileEntry) -> PathBuf {
        dir.join(&entry.name)
    }
}
