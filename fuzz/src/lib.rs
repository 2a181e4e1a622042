//! Shared by the fuzz targets: a container whose checksums are made right again, so that mutated
//! section contents reach the semantic checks behind the CRCs (docs/formats.md, container layout),
//! and a GGUF laid out from fuzzer-chosen parts.

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

/// A GGUF file from parts the fuzzer chose: metadata (key, GGUF type, raw value bytes) and tensors
/// (name, shape, ggml type), laid out as a writer would (offsets in order, each padded to
/// `alignment`, data after the header at the next multiple). `block` gives a ggml type's block size
/// and bytes per block.
pub fn gguf_bytes(
    version: u32,
    metadata: &[(String, u32, Vec<u8>)],
    tensors: &[(String, Vec<u64>, u32)],
    alignment: u64,
    block: impl Fn(u32) -> (u64, u64),
) -> Vec<u8> {
    fn string(b: &mut Vec<u8>, s: &[u8]) {
        b.extend_from_slice(&(s.len() as u64).to_le_bytes());
        b.extend_from_slice(s);
    }
    let mut b = b"GGUF".to_vec();
    b.extend_from_slice(&version.to_le_bytes());
    b.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    b.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
    for (k, t, v) in metadata {
        string(&mut b, k.as_bytes());
        b.extend_from_slice(&t.to_le_bytes());
        b.extend_from_slice(v);
    }
    let mut offset = 0u64;
    let mut end = 0u64;
    for (name, dims, ty) in tensors {
        string(&mut b, name.as_bytes());
        b.extend_from_slice(&(dims.len() as u32).to_le_bytes());
        for d in dims {
            b.extend_from_slice(&d.to_le_bytes());
        }
        b.extend_from_slice(&ty.to_le_bytes());
        b.extend_from_slice(&offset.to_le_bytes());
        let (blck, size) = block(*ty);
        let n = (dims.iter().fold(1u64, |a, d| a.saturating_mul(*d)) / blck.max(1)).saturating_mul(size);
        end = offset.saturating_add(n);
        offset = end.div_ceil(alignment).saturating_mul(alignment);
    }
    let data = (b.len() as u64).div_ceil(alignment) * alignment;
    // Keep files small: a shape past 1 MiB of data is written short (and must be refused).
    b.resize((data + end.min(1 << 20)) as usize, 0x3c);
    b
}
