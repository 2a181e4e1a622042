//! Error types of the navigen runtime.

use std::path::PathBuf;

/// What can be wrong with a navigen file. Every reader returns one of these instead of panicking.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error(
        "not a {} file: magic {found:?} (expected {expected:?})",
        String::from_utf8_lossy(expected)
    )]
    BadMagic { expected: [u8; 8], found: [u8; 8] },
    #[error("format version {found} is not supported (this build reads {supported:?})")]
    UnsupportedVersion { found: u32, supported: Vec<u32> },
    #[error("truncated {what}: need {need} bytes, have {have}")]
    Truncated {
        what: &'static str,
        need: u64,
        have: u64,
    },
    #[error("checksum mismatch in {what}: stored {stored:#010x}, computed {actual:#010x} (the file is damaged)")]
    Checksum {
        what: String,
        stored: u32,
        actual: u32,
    },
    #[error("missing section {0}")]
    MissingSection(String),
    #[error("invalid file: {0}")]
    Invalid(String),
}

/// The error type of the navigen crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Format { path: PathBuf, source: FormatError },
    #[error("{0}")]
    FormatInMemory(#[from] FormatError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("{0}")]
    Mismatch(String),
    /// The call was cancelled (by `Engine::cancel` or a streaming callback returning false).
    #[error("cancelled")]
    Cancelled,
    #[error("not supported: {0}")]
    NotSupported(String),
    /// llama.cpp refused something (model load, context creation, decode).
    #[error("llama.cpp: {0}")]
    Llama(String),
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
    pub fn format(path: impl Into<PathBuf>, source: FormatError) -> Self {
        Error::Format {
            path: path.into(),
            source,
        }
    }
    /// The one conversion of a llama.cpp (`llama-cpp-2`) error into navigen's: its message, as
    /// [`Error::Llama`].
    pub(crate) fn llama(e: impl std::fmt::Display) -> Self {
        Error::Llama(e.to_string())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
