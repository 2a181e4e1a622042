//! File helpers shared by the stages that write folders (`prepare`, `export`).

use std::path::Path;

use anyhow::{Context, Result};

/// Copies a file through a temporary file and a rename (a reader never sees half of it).
pub fn copy_atomic(from: &Path, to: &Path) -> Result<()> {
    let bytes = std::fs::read(from).with_context(|| format!("reading {}", from.display()))?;
    navigen::format::write_atomic(to, &bytes)?;
    Ok(())
}
