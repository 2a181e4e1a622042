//! `navigen-train inspect FILE`: the runtime's validator of navigen files (`navigen::format::inspect`),
//! so the trainer and the device check a file the same way.

use std::path::Path;

use anyhow::Result;

/// Validates `path` completely and returns a human-readable summary.
pub fn inspect(path: &Path, items_to_show: usize) -> Result<String> {
    Ok(navigen::format::inspect::inspect(path, items_to_show)?)
}
