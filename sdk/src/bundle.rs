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

/// Where an engine records the bundle files it has checked against the manifest's sha256, keyed by
/// each file's size, modification time and inode: a later open hashes only files that changed since.
/// Without it a damaged `model.gguf` of the right size would go straight into llama.cpp's loader.
/// A folder that cannot be written (an app's read-only resources) is verified at every open.
pub const VERIFIED_STAMP: &str = ".navigen-verified.json";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct StampEntry {
    bytes: u64,
    modified_ns: u128,
    inode: u64,
    sha256: String,
}

fn stamp_of(path: &Path, sha256: &str) -> Result<StampEntry> {
    let m = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&m);
    #[cfg(not(unix))]
    let inode = 0;
    Ok(StampEntry {
        bytes: m.len(),
        modified_ns: m
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos()),
        inode,
        sha256: sha256.to_string(),
    })
}

/// Checks `entries` of the bundle in `dir` against their sha256: every file when `always`, else
/// those whose size, modification time or inode changed since they were last verified here.
/// Mismatch names the file that differs.
pub fn verify_files(dir: &Path, entries: &[&FileEntry], always: bool) -> Result<()> {
    let stamp_path = dir.join(VERIFIED_STAMP);
    let mut stamp: std::collections::BTreeMap<String, StampEntry> = std::fs::read(&stamp_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let mut changed = false;
    for e in entries {
        let p = Manifest::path(dir, e);
        let now = stamp_of(&p, &e.sha256)?;
        if !always && stamp.get(&e.name) == Some(&now) {
            continue;
        }
        let got = sha256_file(&p)?;
        if got != e.sha256 {
            stamp.remove(&e.name);
            let _ = crate::format::write_atomic(
                &stamp_path,
                &serde_json::to_vec(&stamp).unwrap_or_default(),
            );
            return Err(Error::Mismatch(format!(
                "{}: sha256 {got} differs from the manifest's {} (damaged or replaced file)",
                p.display(),
                e.sha256
            )));
        }
        stamp.insert(e.name.clone(), now);
        changed = true;
    }
    if changed {
        // Best effort: a read-only folder is verified again at the next open.
        let _ = crate::format::write_atomic(
            &stamp_path,
            &serde_json::to_vec_pretty(&stamp).unwrap_or_default(),
        );
    }
    Ok(())
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
        // Names are files inside the bundle folder: a manifest must not send the engine elsewhere
        // ("../", absolute paths, devices).
        let entries = [
            Some(&m.model),
            m.catalog.as_ref(),
            m.codebooks.as_ref(),
            m.embedder.as_ref(),
        ];
        for e in entries.into_iter().flatten() {
            let plain = !e.name.is_empty()
                && e.name != "."
                && e.name != ".."
                && !e.name.contains(['/', '\\', '\0', ':']);
            if !plain {
                return Err(Error::InvalidArgument(format!(
                    "{}: file name {:?} is not a plain file name inside the bundle",
                    p.display(),
                    e.name
                )));
            }
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

    fn entry(dir: &Path, name: &str, bytes: &[u8]) -> FileEntry {
        std::fs::write(dir.join(name), bytes).unwrap();
        FileEntry {
            name: name.into(),
            bytes: bytes.len() as u64,
            sha256: sha256_file(&dir.join(name)).unwrap(),
        }
    }

    /// Damage of the right size is caught at open by default; an unchanged file is hashed once.
    #[cfg(unix)]
    #[test]
    fn bundle_files_are_verified_once_and_again_when_they_change() {
        let d = tempfile::tempdir().unwrap();
        let model = entry(d.path(), "model.gguf", &vec![7u8; 64 * 1024]);
        verify_files(d.path(), &[&model], false).unwrap();
        assert!(d.path().join(VERIFIED_STAMP).exists());
        // 4 KiB of other bytes inside, same size: the modification time changed, so it is hashed.
        let p = d.path().join("model.gguf");
        let mut b = std::fs::read(&p).unwrap();
        b[8192..12288].fill(0xAB);
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&p, &b).unwrap();
        let e = verify_files(d.path(), &[&model], false).unwrap_err();
        assert!(matches!(e, Error::Mismatch(_)), "{e}");
        // Restored: verified again (the failed file was struck from the stamp).
        std::fs::write(&p, vec![7u8; 64 * 1024]).unwrap();
        verify_files(d.path(), &[&model], false).unwrap();
        // Damage that keeps size and modification time is trusted from the stamp (the documented
        // limit) but caught when every open verifies.
        let t = std::fs::metadata(&p).unwrap().modified().unwrap();
        let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
        std::os::unix::fs::FileExt::write_at(&f, &[0u8; 16], 100).unwrap();
        f.set_modified(t).unwrap();
        drop(f);
        verify_files(d.path(), &[&model], false).unwrap();
        assert!(verify_files(d.path(), &[&model], true).is_err());
    }

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

    #[test]
    fn file_names_stay_inside_the_bundle() {
        let dir = tempfile::tempdir().unwrap();
        for bad in [
            "../model.gguf",
            "/etc/passwd",
            "..",
            "",
            "a\\b",
            "C:model.gguf",
        ] {
            let m = manifest_json("").replace(
                r#""name":"model.gguf""#,
                &format!("\"name\":{}", serde_json::to_string(bad).unwrap()),
            );
            std::fs::write(dir.path().join(MANIFEST), m).unwrap();
            let err = Manifest::read(dir.path()).unwrap_err().to_string();
            assert!(err.contains("not a plain file name"), "{bad:?}: {err}");
        }
    }
}
