//! `navigen-train inspect FILE`: validates a navigen file and prints what it holds (like gguf-dump).

use std::path::Path;

use anyhow::{bail, Context, Result};
use navigen::format::{self, catalog, codebooks, container::Container};

/// Validates `path` completely and returns a human-readable summary.
pub fn inspect(path: &Path, items_to_show: usize) -> Result<String> {
    let bytes = navigen::format::FileBytes::map(path)?;
    let b = bytes.as_slice();
    let kind = format::sniff(b).with_context(|| {
        format!(
            "{}: not a navigen file (unknown magic {:?})",
            path.display(),
            String::from_utf8_lossy(&b[..b.len().min(8)])
        )
    })?;
    let mut s = String::new();
    use std::fmt::Write;
    let (magic, versions): (&[u8; 8], &[u32]) = match kind {
        "catalog" => (catalog::MAGIC, &[catalog::VERSION]),
        _ => (codebooks::MAGIC, &[codebooks::VERSION]),
    };
    let c = Container::parse(b, magic, versions)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    writeln!(
        s,
        "{}: navigen {kind} file, format version {}, {} bytes",
        path.display(),
        c.version,
        b.len()
    )?;
    writeln!(s, "sections:")?;
    for sec in c.sections() {
        writeln!(
            s,
            "  {}  offset {:>10}  length {:>10}  crc32 {:#010x}",
            sec.tag, sec.offset, sec.length, sec.crc32
        )?;
    }
    match kind {
        "catalog" => {
            let cat = navigen::Catalog::open(path)?;
            writeln!(s, "items: {}", cat.len())?;
            writeln!(
                s,
                "levels: {}  codebook sizes: {:?}  codebooks crc32: {:#010x}",
                cat.levels(),
                cat.sizes(),
                cat.codebooks_crc()
            )?;
            writeln!(s, "info: {}", cat.info())?;
            for it in cat.items().take(items_to_show) {
                writeln!(
                    s,
                    "  {:>6}  {}  {:?}  tid {:?}",
                    it.id,
                    it.cid,
                    it.title,
                    it.tid_vec()
                )?;
            }
        }
        "codebooks" => {
            let cb = navigen::Codebooks::open(path)?;
            writeln!(
                s,
                "levels: {}  sizes: {:?}  dim: {}  dtype: {}",
                cb.levels(),
                cb.sizes(),
                cb.dim(),
                cb.dtype().name()
            )?;
            writeln!(s, "centroids crc32: {:#010x}", cb.centroid_crc())?;
            writeln!(s, "info: {}", cb.info())?;
        }
        other => bail!("no inspector for {other}"),
    }
    Ok(s)
}
