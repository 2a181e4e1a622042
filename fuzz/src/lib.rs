//! Shared by the fuzz targets: a container whose checksums are made right again, so that mutated
//! section contents reach the semantic checks behind the CRCs (docs/formats.md, container layout).

/// `bytes` with the header's file size, every in-bounds section's CRC, the table CRC and the header
/// CRC recomputed. Anything else (magic, version, counts, offsets) stays as the fuzzer made it.
pub fn fix_checksums(bytes: &[u8]) -> Vec<u8> {
    const HEADER: usize = 64;
    const ENTRY: usize = 32;
    let mut b = bytes.to_vec();
    if b.len() < HEADER {
        return b;
    }
    let len = b.len() as u64;
    b[24..32].copy_from_slice(&len.to_le_bytes());
    let count = u32::from_le_bytes(b[16..20].try_into().unwrap()).min(64) as usize;
    let table_end = HEADER + count * ENTRY;
    if table_end <= b.len() {
        for i in 0..count {
            let e = HEADER + i * ENTRY;
            let off = u64::from_le_bytes(b[e + 8..e + 16].try_into().unwrap());
            let n = u64::from_le_bytes(b[e + 16..e + 24].try_into().unwrap());
            if let Some(end) = off.checked_add(n).filter(|&end| end <= len) {
                let crc = crc32fast::hash(&b[off as usize..end as usize]);
                b[e + 24..e + 28].copy_from_slice(&crc.to_le_bytes());
            }
        }
        let crc = crc32fast::hash(&b[HEADER..table_end]);
        b[32..36].copy_from_slice(&crc.to_le_bytes());
    }
    let mut h = crc32fast::Hasher::new();
    h.update(&b[..36]);
    h.update(&[0u8; 4]);
    h.update(&b[40..HEADER]);
    let crc = h.finalize();
    b[36..40].copy_from_slice(&crc.to_le_bytes());
    b
}
