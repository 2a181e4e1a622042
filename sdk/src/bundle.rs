//! A bundle is the folder the device opens: `model.gguf`, `catalog.nvct`, `codebooks.nvcb`, optionally
//! `embedder.gguf`, and `bundle.json`, a manifest that ties them together (sizes and sha256 of each file, prompt format).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

pub const MANIFEST: &str = "bundle.json";
pub const MODEL_FILE: &str = "model.gguf";
/// Version of the manifest format.
pub const BUNDLE_VERSION: u32 = 1;
/// Largest `max_history` a manifest may ask for (a prompt of that many CIDs still fits a context).
pub const MAX_HISTORY_LIMIT: usize = 512;

/// One file of the bundle.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FileEntry {
    pub name: String,
    pub bytes: u64,
    pub sha256: String,
}

/// What kind of model a bundle holds (`kind` in `bundle.json`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    /// Fine-tuned: CID tokens in the vocabulary; prediction and instruction.
    #[serde(rename = "finetuned")]
    Finetuned,
    /// An instruct model without CID tokens: instructions from titles and terms only.
    #[serde(rename = "zero-shot")]
    ZeroShot,
}

fn default_max_history() -> usize {
    crate::prompt::MAX_HISTORY
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub bundle_version: u32,
    /// `navigen::prompt::PROMPT_VERSION` of the trainer that made the model.
    pub prompt_version: u32,
    /// "finetuned" (CID tokens in the vocabulary) or "zero-shot" (an instruct model, no CID tokens).
    pub kind: Kind,
    /// Most history items a prompt carries: what the model was trained with (`prepare --max-history`).
    /// Bundles written before this field existed were all trained with the default.
    #[serde(default = "default_max_history")]
    pub max_history: usize,
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
        if m.max_history == 0 || m.max_history > MAX_HISTORY_LIMIT {
            return Err(Error::InvalidArgument(format!(
                "{}: max_history {} is outside 1..={MAX_HISTORY_LIMIT}",
                p.display(),
                m.max_history
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

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest_json(extra: &str) -> String {
        format!(
            r#"{{"bundle_version":{BUNDLE_VERSION},"prompt_version":{},"kind":"zero-shot",{extra}
               "model":{{"name":"model.gguf","bytes":1,"sha256":"00"}},"catalog":null,"codebooks":null}}"#,
            crate::prompt::PROMPT_VERSION
        )
    }

    #[test]
    fn kind_and_history_length_are_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let write = |s: String| std::fs::write(dir.path().join(MANIFEST), s).unwrap();
        // A bundle from before max_history was recorded was trained with the default.
        write(manifest_json(""));
        let m = Manifest::read(dir.path()).unwrap();
        assert_eq!(m.kind, Kind::ZeroShot);
        assert_eq!(m.max_history, crate::prompt::MAX_HISTORY);
        write(manifest_json(r#""max_history":7,"#));
        assert_eq!(Manifest::read(dir.path()).unwrap().max_history, 7);
        for bad in [r#""max_history":0,"#, r#""max_history":100000,"#] {
            write(manifest_json(bad));
            let err = Manifest::read(dir.path()).unwrap_err().to_string();
            assert!(err.contains("max_history"), "{err}");
        }
        write(manifest_json("").replace("zero-shot", "fine-tuned"));
        let err = Manifest::read(dir.path()).unwrap_err().to_string();
        assert!(err.contains("fine-tuned"), "{err}");
        // The names on disk are the ones every bundle so far was written with.
        assert_eq!(
            serde_json::to_string(&Kind::Finetuned).unwrap(),
            r#""finetuned""#
        );
        assert_eq!(
            serde_json::to_string(&Kind::ZeroShot).unwrap(),
            r#""zero-shot""#
        );
    }
}
