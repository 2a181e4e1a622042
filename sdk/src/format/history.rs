//! The history log's on-disk format: one append-only file per profile (the store is
//! [`crate::history`]). Each record carries a sync word, its length and a CRC-32, so that [`scan`] can
//! tell a torn tail (cut) from damage in the middle.
//!
//! File `<dir>/<hex of profile>.nvh`: 16-byte header (`NAVIGHS\0`, version u32, reserved u32), then
//! records `[sync u32][len u32][crc32 u32][payload]`, payload = `timestamp_ms i64, kind u8,
//! id_len u16, id bytes`, all little-endian.

use serde::{Deserialize, Serialize};

use crate::error::{Error, FormatError, Result};

pub const MAGIC: &[u8; 8] = b"NAVIGHS\0";
pub const VERSION: u32 = 1;
/// Bytes of the file header.
pub const HEADER: usize = 16;
const SYNC: u32 = 0x5253_484E; // "NHSR"
/// Bytes of a record's header (sync, length, CRC).
pub const REC_HEADER: usize = 12;
/// Longest item id accepted (bytes).
pub const MAX_ID_BYTES: usize = 4096;

/// What happened with an item.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    View,
    Click,
    Purchase,
    Play,
    Rate,
    Like,
    Other,
}

impl EventKind {
    pub fn code(self) -> u8 {
        match self {
            EventKind::View => 0,
            EventKind::Click => 1,
            EventKind::Purchase => 2,
            EventKind::Play => 3,
            EventKind::Rate => 4,
            EventKind::Like => 5,
            EventKind::Other => 255,
        }
    }
    pub fn from_code(c: u8) -> Option<Self> {
        Some(match c {
            0 => EventKind::View,
            1 => EventKind::Click,
            2 => EventKind::Purchase,
            3 => EventKind::Play,
            4 => EventKind::Rate,
            5 => EventKind::Like,
            255 => EventKind::Other,
            _ => return None,
        })
    }
}

/// One event of a profile's history (one record).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub item_id: String,
    pub kind: EventKind,
    pub timestamp_ms: i64,
}

/// The file header.
pub fn header() -> Vec<u8> {
    let mut h = Vec::with_capacity(HEADER);
    h.extend_from_slice(MAGIC);
    h.extend_from_slice(&VERSION.to_le_bytes());
    h.extend_from_slice(&0u32.to_le_bytes());
    h
}

/// What the start of a log says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Header {
    /// A whole header of this version: records follow.
    Valid,
    /// Shorter than a header and a prefix of one: torn at creation, before any record.
    Torn,
}

/// Checks the header at the start of `bytes`.
pub fn read_header(bytes: &[u8]) -> Result<Header, FormatError> {
    if bytes.len() < HEADER || &bytes[..8] != MAGIC {
        if bytes.len() < HEADER && MAGIC.starts_with(&bytes[..bytes.len().min(8)]) {
            return Ok(Header::Torn);
        }
        return Err(FormatError::BadMagic {
            expected: *MAGIC,
            found: bytes
                .get(..8)
                .and_then(|b| b.try_into().ok())
                .unwrap_or([0; 8]),
        });
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4"));
    if version != VERSION {
        return Err(FormatError::UnsupportedVersion {
            found: version,
            supported: vec![VERSION],
        });
    }
    Ok(Header::Valid)
}

/// One record of `e` (record header and payload). The item id must be 1..=[`MAX_ID_BYTES`] bytes.
pub fn encode(e: &Event) -> Result<Vec<u8>> {
    let id = e.item_id.as_bytes();
    if id.is_empty() || id.len() > MAX_ID_BYTES {
        return Err(Error::InvalidArgument(format!(
            "item id must be 1..={MAX_ID_BYTES} bytes"
        )));
    }
    let mut payload = Vec::with_capacity(11 + id.len());
    payload.extend_from_slice(&e.timestamp_ms.to_le_bytes());
    payload.push(e.kind.code());
    payload.extend_from_slice(&(id.len() as u16).to_le_bytes());
    payload.extend_from_slice(id);
    let mut rec = Vec::with_capacity(REC_HEADER + payload.len());
    rec.extend_from_slice(&SYNC.to_le_bytes());
    rec.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    rec.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    rec.extend_from_slice(&payload);
    Ok(rec)
}

fn decode_payload(p: &[u8]) -> Option<Event> {
    if p.len() < 11 {
        return None;
    }
    let ts = i64::from_le_bytes(p[..8].try_into().ok()?);
    let kind = EventKind::from_code(p[8])?;
    let n = u16::from_le_bytes(p[9..11].try_into().ok()?) as usize;
    if p.len() != 11 + n || n == 0 {
        return None;
    }
    Some(Event {
        item_id: String::from_utf8(p[11..].to_vec()).ok()?,
        kind,
        timestamp_ms: ts,
    })
}

/// Parses a log: (events, end of the last good record, torn tail bytes, damaged bytes).
pub fn scan(bytes: &[u8]) -> (Vec<Event>, usize, u64, u64) {
    let mut events = Vec::new();
    let mut at = HEADER;
    let mut good_end = HEADER;
    let mut damaged = 0u64;
    while at < bytes.len() {
        let rest = &bytes[at..];
        let rec = (|| {
            if rest.len() < REC_HEADER {
                return Err(true);
            }
            if u32::from_le_bytes(rest[..4].try_into().expect("4")) != SYNC {
                return Err(false);
            }
            let len = u32::from_le_bytes(rest[4..8].try_into().expect("4")) as usize;
            if len > 11 + MAX_ID_BYTES {
                return Err(false);
            }
            if rest.len() < REC_HEADER + len {
                return Err(true);
            }
            let payload = &rest[REC_HEADER..REC_HEADER + len];
            if crc32fast::hash(payload) != u32::from_le_bytes(rest[8..12].try_into().expect("4")) {
                return Err(false);
            }
            decode_payload(payload)
                .map(|e| (e, REC_HEADER + len))
                .ok_or(false)
        })();
        match rec {
            Ok((e, n)) => {
                events.push(e);
                at += n;
                good_end = at;
            }
            Err(incomplete) => {
                // Is there a valid record further on? Then this is damage, not a torn tail.
                let next = (at + 1..bytes.len().saturating_sub(REC_HEADER - 1)).find(|&p| {
                    bytes[p..p + 4] == SYNC.to_le_bytes() && {
                        let len =
                            u32::from_le_bytes(bytes[p + 4..p + 8].try_into().expect("4")) as usize;
                        len <= 11 + MAX_ID_BYTES
                            && p + REC_HEADER + len <= bytes.len()
                            && crc32fast::hash(&bytes[p + REC_HEADER..p + REC_HEADER + len])
                                == u32::from_le_bytes(bytes[p + 8..p + 12].try_into().expect("4"))
                    }
                });
                match next {
                    Some(p) => {
                        damaged += (p - at) as u64;
                        at = p;
                    }
                    None => {
                        let _ = incomplete;
                        return (events, good_end, (bytes.len() - good_end) as u64, damaged);
                    }
                }
            }
        }
    }
    (events, good_end, 0, damaged)
}
