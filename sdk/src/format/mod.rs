//! On-disk formats that the device reads and the trainer writes (through this same code), and the
//! device's history log. See `docs/formats.md`.

pub mod bytes;
pub mod catalog;
pub mod codebooks;
pub mod container;
pub mod gguf;
pub mod history;
pub mod inspect;

pub use bytes::{write_atomic, FileBytes};
pub use catalog::{Catalog, Item, ItemEntry};
pub use codebooks::{Codebooks, Dtype};

/// What kind of navigen file these bytes start with, if any.
pub fn sniff(bytes: &[u8]) -> Option<&'static str> {
    match bytes.get(..8)? {
        m if m == catalog::MAGIC => Some("catalog"),
        m if m == codebooks::MAGIC => Some("codebooks"),
        _ => None,
    }
}
