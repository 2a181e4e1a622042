//! Validates a navigen file completely and describes what it holds (like gguf-dump); behind both
//! `navigen inspect` and `navigen-train inspect`.

use std::fmt::Write;
use std::path::Path;

use crate::error::{Error, Result};
use crate::format::{self, catalog, codebooks, container::Container};

/// Validates `path` completely and returns a human-readable summary.
pub fn inspect(path: &Path, items_to_show: usize) -> Result<String> {
    let bytes = format::FileBytes::map(path)?;
    let b = bytes.as_slice();
    let kind = format::sniff(b).ok_or_else(|| {
        Error::InvalidArgument(format!(
            "{}: not a navigen file (unknown magic {:?})",
            path.display(),
            String::from_utf8_lossy(&b[..b.len().min(8)])
        ))
    })?;
    // Writing to a String cannot fail: the `fmt::Result`s below are ignored.
    let mut s = String::new();
    let (magic, versions): (&[u8; 8], &[u32]) = match kind {
        "catalog" => (catalog::MAGIC, &[catalog::VERSION]),
        _ => (codebooks::MAGIC, &[codebooks::VERSION]),
    };
    let c = Container::parse(b, magic, versions).map_err(|e| Error::format(path, e))?;
    let _ = writeln!(
        s,
        "{}: navigen {kind} file, format version {}, {} bytes",
        path.display(),
        c.version,
        b.len()
    );
    let _ = writeln!(s, "sections:");
    for sec in c.sections() {
        let _ = writeln!(
            s,
            "  {}  offset {:>10}  length {:>10}  crc32 {:#010x}",
            sec.tag, sec.offset, sec.length, sec.crc32
        );
    }
    match kind {
        "catalog" => {
            let cat = crate::Catalog::open(path)?;
            let _ = writeln!(s, "items: {}", cat.len());
            let _ = writeln!(
                s,
                "levels: {}  codebook sizes: {:?}  codebooks crc32: {:#010x}",
                cat.levels(),
                cat.sizes(),
                cat.codebooks_crc()
            );
            let _ = writeln!(s, "info: {}", cat.info());
            for it in cat.items().take(items_to_show) {
                let _ = writeln!(
                    s,
                    "  {:>6}  {}  {:?}  tid {:?}",
                    it.id,
                    it.cid,
                    it.title,
                    it.tid_vec()
                );
            }
        }
        "codebooks" => {
            let cb = crate::Codebooks::open(path)?;
            let _ = writeln!(
                s,
                "levels: {}  sizes: {:?}  dim: {}  dtype: {}",
                cb.levels(),
                cb.sizes(),
                cb.dim(),
                cb.dtype().name()
            );
            if let Some(f) = cb.fusion() {
                let _ = writeln!(
                    s,
                    "fused: {} text + {} collaborative values, collaborative weight {}",
                    f.text_dim, f.collab_dim, f.weight
                );
            }
            let _ = writeln!(s, "centroids crc32: {:#010x}", cb.centroid_crc());
            let _ = writeln!(s, "info: {}", cb.info());
        }
        other => return Err(Error::NotSupported(format!("no inspector for {other}"))),
    }
    Ok(s)
}
