//! The history log's on-disk format: one append-only file per profile (the store is
//! [`crate::history`]). Each record carries a sync word, its length and a CRC-32, so that [`scan`] can
//! tell a torn tail (cut) from damage in the middle.
//!
//! File `<dir>/<hex of profile>.nvh`: 16-byte header (`NAVIGHS\0`, version u32, reserved u32), then
//! records `[sync u32][len u32][crc32 u32][payload]`, payload = `timestamp_ms i64, kind u8,
//! id_len u16, id bytes`, all little-endian.
//!
//! Version 2 is the same log encrypted with the profile's key ([`Sealer`]): the header's last word is
//! a check value of the key (a wrong key is refused before any record is read), and each payload is
//! `nonce (24 bytes) || XChaCha20-Poly1305(payload) || tag (16 bytes)`, bound to the profile's file
//! name as associated data. The CRC covers the sealed payload, so torn tails and damage are told apart
//! exactly as in version 1. An SDK that reads only version 1 leaves a version-2 log alone.

use serde::{Deserialize, Serialize};

use crate::error::{Error, FormatError, Result};

pub const MAGIC: &[u8; 8] = b"NAVIGHS\0";
pub const VERSION: u32 = 1;
/// The version of an encrypted log.
pub const VERSION_SEALED: u32 = 2;
/// Bytes a sealed payload adds: the nonce and the tag.
pub const SEAL_OVERHEAD: usize = 24 + 16;
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

/// Encrypts and decrypts one profile's records with its 32-byte key.
pub struct Sealer {
    cipher: chacha20poly1305::XChaCha20Poly1305,
    aad: Vec<u8>,
    check: u32,
}

impl Sealer {
    /// `binding`: what each record is bound to (the profile's file name), so that records cannot be
    /// moved between profiles unnoticed.
    pub fn new(key: &[u8; 32], binding: &str) -> Self {
        use chacha20poly1305::KeyInit;
        use sha2::Digest;
        let d = sha2::Sha256::new()
            .chain_update(b"navigen history key check\0")
            .chain_update(key)
            .finalize();
        Sealer {
            cipher: chacha20poly1305::XChaCha20Poly1305::new(key.into()),
            aad: binding.as_bytes().to_vec(),
            check: u32::from_le_bytes(d[..4].try_into().expect("4")),
        }
    }

    /// The check value a version-2 header stores.
    pub fn check(&self) -> u32 {
        self.check
    }

    fn seal(&self, plain: &[u8]) -> Result<Vec<u8>> {
        use chacha20poly1305::aead::{Aead, AeadCore, OsRng, Payload};
        let nonce = chacha20poly1305::XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let ct = self
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plain,
                    aad: &self.aad,
                },
            )
            .map_err(|_| Error::InvalidArgument("encryption failed".into()))?;
        let mut out = Vec::with_capacity(nonce.len() + ct.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        Ok(out)
    }

    fn open(&self, sealed: &[u8]) -> Option<Vec<u8>> {
        use chacha20poly1305::aead::{Aead, Payload};
        if sealed.len() < SEAL_OVERHEAD {
            return None;
        }
        let (nonce, ct) = sealed.split_at(24);
        self.cipher
            .decrypt(
                nonce.into(),
                Payload {
                    msg: ct,
                    aad: &self.aad,
                },
            )
            .ok()
    }
}

/// The file header (version 1).
pub fn header() -> Vec<u8> {
    header_for(None)
}

/// The file header: version 1, or version 2 with the key's check value.
pub fn header_for(sealer: Option<&Sealer>) -> Vec<u8> {
    let mut h = Vec::with_capacity(HEADER);
    h.extend_from_slice(MAGIC);
    let (version, check) = sealer.map_or((VERSION, 0), |s| (VERSION_SEALED, s.check));
    h.extend_from_slice(&version.to_le_bytes());
    h.extend_from_slice(&check.to_le_bytes());
    h
}

/// What the start of a log says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Header {
    /// A whole version-1 header: plain records follow.
    Valid,
    /// A whole version-2 header with its key's check value: sealed records follow.
    Sealed { check: u32 },
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
    match version {
        VERSION => Ok(Header::Valid),
        VERSION_SEALED => Ok(Header::Sealed {
            check: u32::from_le_bytes(bytes[12..16].try_into().expect("4")),
        }),
        _ => Err(FormatError::UnsupportedVersion {
            found: version,
            supported: vec![VERSION, VERSION_SEALED],
        }),
    }
}

/// One plain record of `e` (record header and payload). The item id must be 1..=[`MAX_ID_BYTES`]
/// bytes.
pub fn encode(e: &Event) -> Result<Vec<u8>> {
    encode_with(e, None)
}

/// One record of `e`, sealed when a sealer is given.
pub fn encode_with(e: &Event, sealer: Option<&Sealer>) -> Result<Vec<u8>> {
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
    if let Some(s) = sealer {
        payload = s.seal(&payload)?;
    }
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

/// Parses a plain log: (events, end of the last good record, torn tail bytes, damaged bytes).
pub fn scan(bytes: &[u8]) -> (Vec<Event>, usize, u64, u64) {
    scan_with(bytes, None)
}

/// Parses a log whose records are sealed with `sealer` (plain without one). A sealed record that
/// does not open (its CRC right, its tag wrong) counts as damage.
pub fn scan_with(bytes: &[u8], sealer: Option<&Sealer>) -> (Vec<Event>, usize, u64, u64) {
    let max_len = 11 + MAX_ID_BYTES + if sealer.is_some() { SEAL_OVERHEAD } else { 0 };
    let decode = |p: &[u8]| match sealer {
        Some(s) => s.open(p).and_then(|plain| decode_payload(&plain)),
        None => decode_payload(p),
    };
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
            if len > max_len {
                return Err(false);
            }
            if rest.len() < REC_HEADER + len {
                return Err(true);
            }
            let payload = &rest[REC_HEADER..REC_HEADER + len];
            if crc32fast::hash(payload) != u32::from_le_bytes(rest[8..12].try_into().expect("4")) {
                return Err(false);
            }
            decode(payload).map(|e| (e, REC_HEADER + len)).ok_or(false)
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
                        len <= max_len
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
