//! The container every navigen file shares: a fixed header, a section table and aligned sections,
//! each with its own CRC-32. Layout and rules are documented in `docs/formats.md`.
//!
//! Readers never trust a byte: the header, the table and every section are checked (bounds, alignment,
//! overlap, checksum) before any accessor hands out a slice, so a damaged file is a typed error, not a panic.

use crate::error::FormatError;

/// Size of the fixed header in bytes.
pub const HEADER_SIZE: usize = 64;
/// Size of one section-table entry in bytes.
pub const ENTRY_SIZE: usize = 32;
/// Every section starts at a multiple of this, so typed slices can be used in place from a memory map.
pub const SECTION_ALIGN: usize = 64;
/// A file holds at most this many sections (guards against absurd counts in damaged headers).
pub const MAX_SECTIONS: u32 = 64;

/// A four-character section tag, stored as a little-endian `u32`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tag(pub [u8; 4]);

impl Tag {
    pub const fn new(s: &[u8; 4]) -> Self {
        Tag(*s)
    }
    fn as_u32(self) -> u32 {
        u32::from_le_bytes(self.0)
    }
    fn from_u32(v: u32) -> Self {
        Tag(v.to_le_bytes())
    }
}

impl std::fmt::Debug for Tag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self)
    }
}

impl std::fmt::Display for Tag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in self.0 {
            if b.is_ascii_graphic() {
                write!(f, "{}", b as char)?;
            } else {
                write!(f, "\\x{b:02x}")?;
            }
        }
        Ok(())
    }
}

/// One entry of the section table, as read from the file and validated.
#[derive(Clone, Copy, Debug)]
pub struct SectionInfo {
    pub tag: Tag,
    pub offset: u64,
    pub length: u64,
    pub crc32: u32,
}

/// A validated view of a container in a byte buffer (usually a memory map).
#[derive(Debug)]
pub struct Container<'a> {
    bytes: &'a [u8],
    pub magic: [u8; 8],
    pub version: u32,
    sections: Vec<SectionInfo>,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn header_crc(header: &[u8]) -> u32 {
    // CRC of the header with its own checksum field (bytes 36..40) taken as zero.
    let mut h = crc32fast::Hasher::new();
    h.update(&header[..36]);
    h.update(&[0u8; 4]);
    h.update(&header[40..HEADER_SIZE]);
    h.finalize()
}

impl<'a> Container<'a> {
    /// Validates the whole container: magic, version, header and table checksums, section bounds,
    /// alignment, overlaps and every section's CRC-32.
    pub fn parse(bytes: &'a [u8], magic: &[u8; 8], versions: &[u32]) -> Result<Self, FormatError> {
        if bytes.len() < HEADER_SIZE {
            return Err(FormatError::Truncated {
                what: "header",
                need: HEADER_SIZE as u64,
                have: bytes.len() as u64,
            });
        }
        let header = &bytes[..HEADER_SIZE];
        let found: [u8; 8] = header[..8].try_into().expect("8 bytes");
        if &found != magic {
            return Err(FormatError::BadMagic {
                expected: *magic,
                found,
            });
        }
        let version = u32_at(header, 8);
        if !versions.contains(&version) {
            return Err(FormatError::UnsupportedVersion {
                found: version,
                supported: versions.to_vec(),
            });
        }
        let header_size = u32_at(header, 12);
        if header_size as usize != HEADER_SIZE {
            return Err(FormatError::Invalid(format!(
                "header size {header_size}, expected {HEADER_SIZE}"
            )));
        }
        let count = u32_at(header, 16);
        let file_size = u64_at(header, 24);
        let table_crc = u32_at(header, 32);
        let stored_header_crc = u32_at(header, 36);
        let actual = header_crc(header);
        if actual != stored_header_crc {
            return Err(FormatError::Checksum {
                what: "header".into(),
                stored: stored_header_crc,
                actual,
            });
        }
        if file_size != bytes.len() as u64 {
            return Err(if file_size > bytes.len() as u64 {
                FormatError::Truncated {
                    what: "file",
                    need: file_size,
                    have: bytes.len() as u64,
                }
            } else {
                FormatError::Invalid(format!(
                    "file has {} bytes, header says {file_size}",
                    bytes.len()
                ))
            });
        }
        if count > MAX_SECTIONS {
            return Err(FormatError::Invalid(format!(
                "{count} sections (at most {MAX_SECTIONS})"
            )));
        }
        let table_end = HEADER_SIZE + count as usize * ENTRY_SIZE;
        if table_end > bytes.len() {
            return Err(FormatError::Truncated {
                what: "section table",
                need: table_end as u64,
                have: bytes.len() as u64,
            });
        }
        let table = &bytes[HEADER_SIZE..table_end];
        let actual = crc32fast::hash(table);
        if actual != table_crc {
            return Err(FormatError::Checksum {
                what: "section table".into(),
                stored: table_crc,
                actual,
            });
        }
        let mut sections = Vec::with_capacity(count as usize);
        for i in 0..count as usize {
            let e = &table[i * ENTRY_SIZE..(i + 1) * ENTRY_SIZE];
            let info = SectionInfo {
                tag: Tag::from_u32(u32_at(e, 0)),
                offset: u64_at(e, 8),
                length: u64_at(e, 16),
                crc32: u32_at(e, 24),
            };
            if !info.offset.is_multiple_of(SECTION_ALIGN as u64) {
                return Err(FormatError::Invalid(format!(
                    "section {} at offset {} is not {SECTION_ALIGN}-byte aligned",
                    info.tag, info.offset
                )));
            }
            let end = info
                .offset
                .checked_add(info.length)
                .ok_or_else(|| FormatError::Invalid(format!("section {} overflows", info.tag)))?;
            if info.offset < table_end as u64 || end > bytes.len() as u64 {
                return Err(FormatError::Invalid(format!(
                    "section {} spans {}..{} outside the data area {}..{}",
                    info.tag,
                    info.offset,
                    end,
                    table_end,
                    bytes.len()
                )));
            }
            if sections.iter().any(|s: &SectionInfo| s.tag == info.tag) {
                return Err(FormatError::Invalid(format!(
                    "section {} appears twice",
                    info.tag
                )));
            }
            if let Some(o) = sections
                .iter()
                .find(|s: &&SectionInfo| info.offset < s.offset + s.length && s.offset < end)
            {
                return Err(FormatError::Invalid(format!(
                    "sections {} and {} overlap",
                    o.tag, info.tag
                )));
            }
            let data = &bytes[info.offset as usize..end as usize];
            let actual = crc32fast::hash(data);
            if actual != info.crc32 {
                return Err(FormatError::Checksum {
                    what: format!("section {}", info.tag),
                    stored: info.crc32,
                    actual,
                });
            }
            sections.push(info);
        }
        // Bytes outside every section (alignment padding) must be zero, so that no flipped byte anywhere
        // in the file goes unnoticed.
        let mut spans: Vec<(usize, usize)> = sections
            .iter()
            .map(|s| (s.offset as usize, (s.offset + s.length) as usize))
            .collect();
        spans.sort_unstable();
        let mut at = table_end;
        for (start, end) in spans
            .into_iter()
            .chain(std::iter::once((bytes.len(), bytes.len())))
        {
            if let Some(p) = bytes[at..start].iter().position(|&b| b != 0) {
                return Err(FormatError::Invalid(format!(
                    "non-zero padding byte at offset {}",
                    at + p
                )));
            }
            at = end;
        }
        Ok(Container {
            bytes,
            magic: found,
            version,
            sections,
        })
    }

    pub fn sections(&self) -> &[SectionInfo] {
        &self.sections
    }

    /// The bytes of a section that must exist.
    pub fn section(&self, tag: Tag) -> Result<&'a [u8], FormatError> {
        self.optional_section(tag)
            .ok_or(FormatError::MissingSection(tag.to_string()))
    }

    pub fn optional_section(&self, tag: Tag) -> Option<&'a [u8]> {
        self.sections
            .iter()
            .find(|s| s.tag == tag)
            .map(|s| &self.bytes[s.offset as usize..(s.offset + s.length) as usize])
    }
}

/// Builds a container in memory; `finish` returns the complete file.
pub struct ContainerWriter {
    magic: [u8; 8],
    version: u32,
    sections: Vec<(Tag, Vec<u8>)>,
}

impl ContainerWriter {
    pub fn new(magic: &[u8; 8], version: u32) -> Self {
        ContainerWriter {
            magic: *magic,
            version,
            sections: Vec::new(),
        }
    }

    pub fn section(&mut self, tag: Tag, data: Vec<u8>) -> &mut Self {
        self.sections.push((tag, data));
        self
    }

    pub fn finish(self) -> Vec<u8> {
        let table_end = HEADER_SIZE + self.sections.len() * ENTRY_SIZE;
        let mut out = vec![0u8; align_up(table_end)];
        let mut table = Vec::with_capacity(self.sections.len() * ENTRY_SIZE);
        for (tag, data) in &self.sections {
            let offset = out.len();
            out.extend_from_slice(data);
            out.resize(align_up(out.len()), 0);
            table.extend_from_slice(&tag.as_u32().to_le_bytes());
            table.extend_from_slice(&0u32.to_le_bytes()); // flags, reserved
            table.extend_from_slice(&(offset as u64).to_le_bytes());
            table.extend_from_slice(&(data.len() as u64).to_le_bytes());
            table.extend_from_slice(&crc32fast::hash(data).to_le_bytes());
            table.extend_from_slice(&0u32.to_le_bytes());
        }
        out[HEADER_SIZE..table_end].copy_from_slice(&table);
        let file_size = out.len() as u64;
        let h = &mut out[..HEADER_SIZE];
        h[..8].copy_from_slice(&self.magic);
        h[8..12].copy_from_slice(&self.version.to_le_bytes());
        h[12..16].copy_from_slice(&(HEADER_SIZE as u32).to_le_bytes());
        h[16..20].copy_from_slice(&(self.sections.len() as u32).to_le_bytes());
        h[24..32].copy_from_slice(&file_size.to_le_bytes());
        h[32..36].copy_from_slice(&crc32fast::hash(&table).to_le_bytes());
        let crc = header_crc(h);
        h[36..40].copy_from_slice(&crc.to_le_bytes());
        out
    }
}

fn align_up(n: usize) -> usize {
    n.div_ceil(SECTION_ALIGN) * SECTION_ALIGN
}

/// The optional `INFO` section (JSON) of a container; `Null` when absent.
pub fn info_json(c: &Container<'_>) -> Result<serde_json::Value, FormatError> {
    match c.optional_section(Tag::new(b"INFO")) {
        Some(b) => serde_json::from_slice(b)
            .map_err(|e| FormatError::Invalid(format!("INFO is not JSON: {e}"))),
        None => Ok(serde_json::Value::Null),
    }
}

/// Casts a section to a slice of plain-old-data records, in place.
pub fn cast_records<'a, T: bytemuck::Pod>(
    what: &str,
    bytes: &'a [u8],
) -> Result<&'a [T], FormatError> {
    let size = std::mem::size_of::<T>();
    if !bytes.len().is_multiple_of(size) {
        return Err(FormatError::Invalid(format!(
            "{what}: {} bytes is not a multiple of the record size {size}",
            bytes.len()
        )));
    }
    bytemuck::try_cast_slice(bytes)
        .map_err(|e| FormatError::Invalid(format!("{what}: {e:?} (buffer not aligned?)")))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAGIC: &[u8; 8] = b"NAVGTEST";

    fn sample() -> Vec<u8> {
        let mut w = ContainerWriter::new(MAGIC, 1);
        w.section(Tag::new(b"AAAA"), b"hello".to_vec())
            .section(Tag::new(b"BBBB"), vec![7u8; 100]);
        w.finish()
    }

    #[test]
    fn round_trip() {
        let bytes = sample();
        let c = Container::parse(&bytes, MAGIC, &[1]).unwrap();
        assert_eq!(c.section(Tag::new(b"AAAA")).unwrap(), b"hello");
        assert_eq!(c.section(Tag::new(b"BBBB")).unwrap(), &[7u8; 100][..]);
        assert!(matches!(
            c.section(Tag::new(b"CCCC")),
            Err(FormatError::MissingSection(_))
        ));
    }

    #[test]
    fn every_flipped_byte_is_an_error() {
        let bytes = sample();
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x40;
            assert!(Container::parse(&b, MAGIC, &[1]).is_err(), "byte {i}");
        }
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = sample();
        for n in 0..bytes.len() {
            assert!(
                Container::parse(&bytes[..n], MAGIC, &[1]).is_err(),
                "length {n}"
            );
        }
    }

    #[test]
    fn wrong_magic_and_version() {
        let bytes = sample();
        assert!(matches!(
            Container::parse(&bytes, b"NAVGXXXX", &[1]),
            Err(FormatError::BadMagic { .. })
        ));
        assert!(matches!(
            Container::parse(&bytes, MAGIC, &[2]),
            Err(FormatError::UnsupportedVersion { .. })
        ));
    }
}
