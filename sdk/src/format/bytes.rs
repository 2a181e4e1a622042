//! Read-only file contents, memory-mapped when possible, with the alignment that typed sections need.

use std::path::Path;
use std::sync::Arc;

use crate::error::{Error, Result};

enum Inner {
    Mmap(memmap2::Mmap),
    /// Owned copy kept in `u64`s so that it is 8-byte aligned like a page-aligned map.
    Owned(Vec<u64>, usize),
}

/// Immutable bytes of a navigen file. Cheap to clone.
#[derive(Clone)]
pub struct FileBytes(Arc<Inner>);

impl FileBytes {
    /// Maps a file read-only. Like every memory map, the contents must not be changed by another
    /// process while mapped; navigen itself only ever replaces files by rename.
    pub fn map(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        if len == 0 {
            // Zero-length maps are an error on some platforms; an empty owned buffer reads the same.
            return Ok(Self::copy(&[]));
        }
        // SAFETY: the map is read-only and navigen never writes a file in place (atomic rename).
        let map =
            unsafe { memmap2::MmapOptions::new().map(&file) }.map_err(|e| Error::io(path, e))?;
        Ok(FileBytes(Arc::new(Inner::Mmap(map))))
    }

    /// Copies bytes into an aligned buffer (used for in-memory files and tests).
    pub fn copy(bytes: &[u8]) -> Self {
        let mut words = vec![0u64; bytes.len().div_ceil(8)];
        bytemuck::cast_slice_mut::<u64, u8>(&mut words)[..bytes.len()].copy_from_slice(bytes);
        FileBytes(Arc::new(Inner::Owned(words, bytes.len())))
    }

    pub fn as_slice(&self) -> &[u8] {
        match &*self.0 {
            Inner::Mmap(m) => m,
            Inner::Owned(w, n) => &bytemuck::cast_slice::<u64, u8>(w)[..*n],
        }
    }
}

impl std::fmt::Debug for FileBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FileBytes({} bytes)", self.as_slice().len())
    }
}

/// Writes a file so that a crash leaves either the old or the new contents, never a mix:
/// temporary file in the same folder, fsync, rename, fsync of the folder.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| Error::InvalidArgument(format!("{} has no file name", path.display())))?;
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })
}
