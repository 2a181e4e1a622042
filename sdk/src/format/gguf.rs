//! Structural validation of a GGUF file before llama.cpp's loader sees it (issue 14).
//!
//! A bundle's files are checked against the manifest's sha256, but a bundle may be written by a
//! buggy or hostile tool with matching hashes, and `Model::load` also opens GGUFs by path (teachers,
//! judges). llama.cpp's own reader refuses many malformed files, yet parts of its loader read
//! metadata through asserting getters (`GGML_ASSERT` aborts the app) or index one array by another's
//! length. This pass, in safe Rust and fuzzed (`fuzz/fuzz_targets/gguf.rs`), reads the whole header:
//! magic, version, every metadata value with its bounds, every tensor's name, shape, type and offset
//! against the data section, and the types and lengths of the keys llama.cpp's vocabulary reads
//! unchecked. What it accepts, llama.cpp's reader accepts structurally; tensor contents (NaNs) and
//! architecture-specific shapes stay llama.cpp's to check (it reports those as errors).

use std::collections::HashSet;
use std::path::Path;

use crate::error::{Error, FormatError, Result};

pub const MAGIC: &[u8; 4] = b"GGUF";
/// Versions llama.cpp reads (1 had 32-bit counts and is refused by llama.cpp too).
pub const VERSIONS: [u32; 2] = [2, 3];
/// llama.cpp's `GGML_MAX_DIMS` and `GGML_MAX_NAME` (the name's buffer, NUL included).
const MAX_DIMS: u32 = 4;
const MAX_NAME: usize = 64;
const DEFAULT_ALIGNMENT: u64 = 32;

/// GGUF metadata value types (gguf.h `gguf_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValueType {
    U8,
    I8,
    U16,
    I16,
    U32,
    I32,
    F32,
    Bool,
    String,
    Array,
    U64,
    I64,
    F64,
}

impl ValueType {
    fn from_u32(t: u32) -> Option<Self> {
        use ValueType::*;
        Some(match t {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => String,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }

    /// Size of a scalar; strings and arrays have none.
    fn scalar_size(self) -> Option<u64> {
        use ValueType::*;
        match self {
            U8 | I8 | Bool => Some(1),
            U16 | I16 => Some(2),
            U32 | I32 | F32 => Some(4),
            U64 | I64 | F64 => Some(8),
            String | Array => None,
        }
    }
}

/// Keys whose type (and, for arrays, element types) llama.cpp's loader relies on; it checks most of
/// them itself today, this keeps the message in navigen's words and the check in fuzzed code.
const TYPED_KEYS: &[(&str, ValueType, &[ValueType])] = &[
    ("general.architecture", ValueType::String, &[]),
    ("general.alignment", ValueType::U32, &[]),
    (
        "tokenizer.ggml.tokens",
        ValueType::Array,
        &[ValueType::String],
    ),
    (
        "tokenizer.ggml.scores",
        ValueType::Array,
        &[ValueType::F32, ValueType::I32],
    ),
    (
        "tokenizer.ggml.token_type",
        ValueType::Array,
        &[ValueType::I32],
    ),
    (
        "tokenizer.ggml.merges",
        ValueType::Array,
        &[ValueType::String],
    ),
];

/// What a valid GGUF header holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GgufInfo {
    pub version: u32,
    pub metadata: u64,
    pub tensors: u64,
    pub alignment: u64,
    /// Where the tensor data starts, and how many bytes the tensors take in it (with padding).
    pub data_offset: u64,
    pub data_bytes: u64,
    pub architecture: Option<String>,
}

/// Validates the GGUF file at `path` (memory-mapped; only the header and the data section's size
/// are read).
pub fn validate_file(path: &Path) -> Result<GgufInfo> {
    let bytes = super::FileBytes::map(path)?;
    validate(bytes.as_slice()).map_err(|e| Error::format(path, e))
}

fn invalid(msg: impl Into<String>) -> FormatError {
    FormatError::Invalid(msg.into())
}

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> u64 {
        (self.b.len() - self.pos) as u64
    }

    fn take(&mut self, n: u64, what: &'static str) -> std::result::Result<&'a [u8], FormatError> {
        if n > self.remaining() {
            return Err(FormatError::Truncated {
                what,
                need: (self.pos as u64).saturating_add(n),
                have: self.b.len() as u64,
            });
        }
        let s = &self.b[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn u32(&mut self, what: &'static str) -> std::result::Result<u32, FormatError> {
        Ok(u32::from_le_bytes(self.take(4, what)?.try_into().unwrap()))
    }

    fn u64(&mut self, what: &'static str) -> std::result::Result<u64, FormatError> {
        Ok(u64::from_le_bytes(self.take(8, what)?.try_into().unwrap()))
    }

    fn bytes(&mut self, what: &'static str) -> std::result::Result<&'a [u8], FormatError> {
        let n = self.u64(what)?;
        self.take(n, what)
    }

    fn text(&mut self, what: &'static str) -> std::result::Result<&'a str, FormatError> {
        std::str::from_utf8(self.bytes(what)?).map_err(|_| invalid(format!("{what} is not UTF-8")))
    }

    /// Refuses a count of items that cannot fit in what is left, before looping over it.
    fn check_count(
        &self,
        n: u64,
        min_size: u64,
        what: &'static str,
    ) -> std::result::Result<(), FormatError> {
        match n.checked_mul(min_size) {
            Some(need) if need <= self.remaining() => Ok(()),
            _ => Err(FormatError::Truncated {
                what,
                need: (self.pos as u64).saturating_add(n.saturating_mul(min_size)),
                have: self.b.len() as u64,
            }),
        }
    }
}

/// A metadata value, read and bounds-checked; what later checks need is kept.
struct Value<'a> {
    ty: ValueType,
    elem: Option<ValueType>,
    len: u64,
    scalar: &'a [u8],
}

fn read_value<'a>(
    r: &mut Reader<'a>,
    ty: ValueType,
    key: &str,
) -> std::result::Result<Value<'a>, FormatError> {
    if let Some(n) = ty.scalar_size() {
        let scalar = r.take(n, "metadata value")?;
        if ty == ValueType::Bool && scalar[0] > 1 {
            return Err(invalid(format!("{key}: bool value {}", scalar[0])));
        }
        return Ok(Value {
            ty,
            elem: None,
            len: 1,
            scalar,
        });
    }
    if ty == ValueType::String {
        let s = r.bytes("metadata string")?;
        return Ok(Value {
            ty,
            elem: None,
            len: s.len() as u64,
            scalar: s,
        });
    }
    let et = r.u32("array type")?;
    let elem = ValueType::from_u32(et)
        .ok_or_else(|| invalid(format!("{key}: unknown array element type {et}")))?;
    let n = r.u64("array length")?;
    match elem {
        ValueType::Array => return Err(invalid(format!("{key}: arrays of arrays"))),
        ValueType::String => {
            r.check_count(n, 8, "metadata array")?;
            for _ in 0..n {
                r.bytes("metadata array string")?;
            }
        }
        _ => {
            let size = elem.scalar_size().unwrap();
            r.check_count(n, size, "metadata array")?;
            r.take(n * size, "metadata array")?;
        }
    }
    Ok(Value {
        ty,
        elem: Some(elem),
        len: n,
        scalar: &[],
    })
}

/// Block size and bytes per block of a ggml type, from the llama.cpp this build links, so new
/// types are known without a table here; `None` for unknown or removed types.
fn ggml_type(t: u32) -> Option<(u64, u64)> {
    // `ggml_type` is u32 or i32 depending on the platform's enum type.
    if u64::from(t) >= llama_cpp_sys_2::GGML_TYPE_COUNT as u64 {
        return None;
    }
    // SAFETY: both read ggml's static type table, indexed by a value checked against its length.
    let (blck, size) = unsafe {
        (
            llama_cpp_sys_2::ggml_blck_size(t as _),
            llama_cpp_sys_2::ggml_type_size(t as _),
        )
    };
    (blck > 0 && size > 0).then_some((blck as u64, size as u64))
}

/// Validates GGUF bytes (see the module's comment for what is checked).
pub fn validate(b: &[u8]) -> std::result::Result<GgufInfo, FormatError> {
    let mut r = Reader { b, pos: 0 };
    let magic = r.take(4, "GGUF header")?;
    if magic != MAGIC {
        let mut found = [0u8; 8];
        found[..4].copy_from_slice(magic);
        let mut expected = [0u8; 8];
        expected[..4].copy_from_slice(MAGIC);
        return Err(FormatError::BadMagic { expected, found });
    }
    let version = r.u32("GGUF header")?;
    if !VERSIONS.contains(&version) {
        return Err(FormatError::UnsupportedVersion {
            found: version,
            supported: VERSIONS.to_vec(),
        });
    }
    let tensors = r.u64("GGUF header")?;
    let metadata = r.u64("GGUF header")?;
    // Smallest metadata entry: key length, empty key, type, one byte; smallest tensor entry: name
    // length, n_dims, one dimension, type, offset.
    r.check_count(metadata, 8 + 4 + 1, "metadata")?;
    r.check_count(tensors, 8 + 4 + 8 + 4 + 8, "tensor infos")?;

    let mut keys = HashSet::new();
    let mut alignment = DEFAULT_ALIGNMENT;
    let mut architecture = None;
    let mut array_len = std::collections::HashMap::new();
    for _ in 0..metadata {
        let key = r.text("metadata key")?;
        // ggml looks keys up as C strings: a NUL would make this key another one.
        if key.is_empty() || key.contains('\0') {
            return Err(invalid(format!(
                "metadata key {key:?} is empty or holds a NUL"
            )));
        }
        if !keys.insert(key) {
            return Err(invalid(format!("duplicate metadata key {key}")));
        }
        let t = r.u32("metadata type")?;
        let ty = ValueType::from_u32(t)
            .ok_or_else(|| invalid(format!("{key}: unknown value type {t}")))?;
        let v = read_value(&mut r, ty, key)?;
        if let Some((_, want, elems)) = TYPED_KEYS.iter().find(|(k, ..)| *k == key) {
            let elem_ok = elems.is_empty() || v.elem.is_some_and(|e| elems.contains(&e));
            if v.ty != *want || !elem_ok {
                return Err(invalid(format!(
                    "{key} is {:?}{} (llama.cpp reads it as {want:?}{})",
                    v.ty,
                    v.elem.map(|e| format!(" of {e:?}")).unwrap_or_default(),
                    if elems.is_empty() {
                        String::new()
                    } else {
                        format!(" of {elems:?}")
                    }
                )));
            }
            array_len.insert(key, v.len);
        }
        match key {
            "general.alignment" => {
                let a = u32::from_le_bytes(v.scalar.try_into().unwrap()) as u64;
                if !a.is_power_of_two() {
                    return Err(invalid(format!(
                        "general.alignment {a} is not a power of two"
                    )));
                }
                alignment = a;
            }
            "general.architecture" => {
                let a = std::str::from_utf8(v.scalar)
                    .map_err(|_| invalid("general.architecture is not UTF-8"))?;
                architecture = Some(a.to_string());
            }
            _ => {}
        }
    }
    // llama.cpp's vocabulary indexes scores and token types by the token id.
    if let Some(&n) = array_len.get("tokenizer.ggml.tokens") {
        for k in ["tokenizer.ggml.scores", "tokenizer.ggml.token_type"] {
            if let Some(&m) = array_len.get(k) {
                if m < n {
                    return Err(invalid(format!("{k} has {m} entries for {n} tokens")));
                }
            }
        }
    }

    let mut names = HashSet::new();
    let mut expected_offset = 0u64;
    // End of the last tensor's bytes (the padding after it need not be in the file).
    let mut data_end = 0u64;
    for i in 0..tensors {
        let name = r.text("tensor name")?;
        if name.contains('\0') {
            return Err(invalid(format!(
                "tensor {i}: a name holding a NUL ({name:?})"
            )));
        }
        if name.len() >= MAX_NAME {
            return Err(invalid(format!(
                "tensor {i}: a name of {} bytes (at most {})",
                name.len(),
                MAX_NAME - 1
            )));
        }
        if !names.insert(name) {
            return Err(invalid(format!("duplicate tensor {name}")));
        }
        let n_dims = r.u32("tensor dimensions")?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(invalid(format!("tensor {name}: {n_dims} dimensions")));
        }
        let mut dims = [1u64; MAX_DIMS as usize];
        for d in dims.iter_mut().take(n_dims as usize) {
            *d = r.u64("tensor shape")?;
        }
        let t = r.u32("tensor type")?;
        let (blck, type_size) =
            ggml_type(t).ok_or_else(|| invalid(format!("tensor {name}: unknown ggml type {t}")))?;
        let offset = r.u64("tensor offset")?;
        // Elements must fit an i64 (ggml's int64_t ne), rows whole blocks.
        let elements = dims
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .filter(|&n| n <= i64::MAX as u64)
            .ok_or_else(|| invalid(format!("tensor {name}: shape {dims:?} overflows")))?;
        if dims[0] % blck != 0 {
            return Err(invalid(format!(
                "tensor {name}: row of {} elements is not whole blocks of {blck}",
                dims[0]
            )));
        }
        let bytes = (elements / blck)
            .checked_mul(type_size)
            .ok_or_else(|| invalid(format!("tensor {name}: size overflows")))?;
        // llama.cpp requires tensors in file order, each at the previous end rounded up.
        if offset != expected_offset {
            return Err(invalid(format!(
                "tensor {name}: data offset {offset} (expected {expected_offset})"
            )));
        }
        data_end = offset
            .checked_add(bytes)
            .ok_or_else(|| invalid(format!("tensor {name}: size overflows")))?;
        expected_offset = bytes
            .checked_add(alignment - 1)
            .map(|x| x / alignment * alignment)
            .and_then(|x| x.checked_add(offset))
            .ok_or_else(|| invalid(format!("tensor {name}: size overflows")))?;
    }
    let data_offset = (r.pos as u64).div_ceil(alignment) * alignment;
    let have = b.len() as u64;
    let need = data_offset.saturating_add(data_end);
    // With tensors, the data section must start inside the file even when they hold no bytes.
    if tensors > 0 && have < need {
        return Err(FormatError::Truncated {
            what: "tensor data",
            need,
            have,
        });
    }
    Ok(GgufInfo {
        version,
        metadata,
        tensors,
        alignment,
        data_offset,
        data_bytes: expected_offset,
        architecture,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A GGUF written by hand: metadata entries (already encoded), tensors (name, shape, type).
    struct Gguf {
        version: u32,
        kv: Vec<Vec<u8>>,
        tensors: Vec<(String, Vec<u64>, u32)>,
        alignment: u64,
        /// Added to every tensor's offset after the first (to misplace one).
        skew: u64,
    }

    fn string(s: &str) -> Vec<u8> {
        let mut v = (s.len() as u64).to_le_bytes().to_vec();
        v.extend_from_slice(s.as_bytes());
        v
    }

    fn kv(key: &str, ty: u32, value: &[u8]) -> Vec<u8> {
        let mut v = string(key);
        v.extend_from_slice(&ty.to_le_bytes());
        v.extend_from_slice(value);
        v
    }

    fn array(elem: u32, n: u64, items: &[u8]) -> Vec<u8> {
        let mut v = elem.to_le_bytes().to_vec();
        v.extend_from_slice(&n.to_le_bytes());
        v.extend_from_slice(items);
        v
    }

    fn strings(words: &[&str]) -> Vec<u8> {
        array(
            8,
            words.len() as u64,
            &words.iter().flat_map(|w| string(w)).collect::<Vec<_>>(),
        )
    }

    impl Gguf {
        fn new() -> Self {
            Gguf {
                version: 3,
                kv: vec![
                    kv("general.architecture", 8, &string("llama")),
                    kv("tokenizer.ggml.tokens", 9, &strings(&["a", "b", "c"])),
                    kv("tokenizer.ggml.scores", 9, &array(6, 3, &[0u8; 12])),
                ],
                // f32 [4, 2]: 32 bytes; q8_0 [64]: 2 blocks of 34 bytes.
                tensors: vec![("w".into(), vec![4, 2], 0), ("q".into(), vec![64], 8)],
                alignment: 32,
                skew: 0,
            }
        }

        fn bytes(&self) -> Vec<u8> {
            let mut b = b"GGUF".to_vec();
            b.extend_from_slice(&self.version.to_le_bytes());
            b.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
            b.extend_from_slice(&(self.kv.len() as u64).to_le_bytes());
            for e in &self.kv {
                b.extend_from_slice(e);
            }
            let mut offset = 0u64;
            let mut total = 0;
            for (i, (name, dims, ty)) in self.tensors.iter().enumerate() {
                b.extend_from_slice(&string(name));
                b.extend_from_slice(&(dims.len() as u32).to_le_bytes());
                for d in dims {
                    b.extend_from_slice(&d.to_le_bytes());
                }
                b.extend_from_slice(&ty.to_le_bytes());
                let skewed = offset + if i > 0 { self.skew } else { 0 };
                b.extend_from_slice(&skewed.to_le_bytes());
                let (blck, size) = ggml_type(*ty).unwrap_or((1, 1));
                let n = dims.iter().fold(1u64, |a, d| a.wrapping_mul(*d)) / blck * size;
                total = offset + n;
                offset += n.div_ceil(self.alignment) * self.alignment;
            }
            b.resize(
                (b.len() as u64).div_ceil(self.alignment) as usize * self.alignment as usize,
                0,
            );
            b.resize(b.len() + total as usize, 7);
            b
        }
    }

    fn refused(g: &Gguf, says: &str) {
        let e = validate(&g.bytes()).expect_err(says);
        assert!(e.to_string().contains(says), "{e} (expected {says:?})");
    }

    #[test]
    fn a_well_formed_file_is_described() {
        let b = Gguf::new().bytes();
        let info = validate(&b).unwrap();
        assert_eq!(info.tensors, 2);
        assert_eq!(info.metadata, 3);
        assert_eq!(info.data_offset % 32, 0);
        assert_eq!(info.data_bytes, 32 + 96);
        assert_eq!(info.architecture.as_deref(), Some("llama"));
        assert_eq!(b.len() as u64, info.data_offset + 32 + 68);
    }

    #[test]
    fn every_truncation_is_refused() {
        let b = Gguf::new().bytes();
        for n in 0..b.len() {
            assert!(
                validate(&b[..n]).is_err(),
                "accepted the first {n} of {} bytes",
                b.len()
            );
        }
    }

    #[test]
    fn malformed_headers_are_refused_with_a_reason() {
        let mut g = Gguf::new();
        g.version = 1;
        refused(&g, "version 1");
        let mut b = Gguf::new().bytes();
        b[0] = b'X';
        assert!(matches!(validate(&b), Err(FormatError::BadMagic { .. })));
        let mut b = Gguf::new().bytes();
        b[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(validate(&b), Err(FormatError::Truncated { .. })));

        let mut g = Gguf::new();
        g.kv.push(kv("general.architecture", 8, &string("bert")));
        refused(&g, "duplicate metadata key");
        let mut g = Gguf::new();
        g.kv[1] = kv("tokenizer.ggml.tokens", 9, &array(5, 3, &[0u8; 12]));
        refused(&g, "tokenizer.ggml.tokens is Array of I32");
        let mut g = Gguf::new();
        g.kv[2] = kv("tokenizer.ggml.scores", 9, &array(6, 2, &[0u8; 8]));
        refused(&g, "2 entries for 3 tokens");
        let mut g = Gguf::new();
        g.kv.push(kv("x", 9, &array(9, 1, &array(4, 0, &[]))));
        refused(&g, "arrays of arrays");
        let mut g = Gguf::new();
        g.kv.push(kv("x", 13, &[0; 8]));
        refused(&g, "unknown value type 13");
        let mut g = Gguf::new();
        g.kv.push(kv("x", 7, &[2]));
        refused(&g, "bool value 2");
        let mut g = Gguf::new();
        g.kv.push(kv("general.alignment", 4, &24u32.to_le_bytes()));
        refused(&g, "not a power of two");
        let mut g = Gguf::new();
        g.kv.push(kv("bad", 8, &{
            let mut v = 2u64.to_le_bytes().to_vec();
            v.extend_from_slice(&[0xff, 0xfe]);
            v
        }));
        g.kv.push(kv("\u{fffd}", 8, &string("")));
        assert!(
            validate(&g.bytes()).is_ok(),
            "a non-UTF-8 value is llama.cpp's business"
        );
        let mut key = string("k");
        key[8] = 0xff;
        let mut g = Gguf::new();
        g.kv.push([key, 8u32.to_le_bytes().to_vec(), string("")].concat());
        refused(&g, "metadata key is not UTF-8");
        // ggml compares keys as C strings: this one would be read as general.alignment (found by
        // the fuzz target's comparison with ggml's reader).
        let mut g = Gguf::new();
        g.kv.push(kv("general.alignment\0x", 3, &[1, 0]));
        refused(&g, "holds a NUL");
        let mut g = Gguf::new();
        g.tensors[1].0 = "w\0".into();
        refused(&g, "a name holding a NUL");
    }

    #[test]
    fn malformed_tensors_are_refused_with_a_reason() {
        let mut g = Gguf::new();
        g.tensors[1].1 = vec![1, 1, 1, 1, 1];
        refused(&g, "5 dimensions");
        let mut g = Gguf::new();
        g.tensors[1].2 = 4; // Q4_2, removed from ggml
        refused(&g, "unknown ggml type 4");
        let mut g = Gguf::new();
        g.tensors[1].2 = 9999;
        refused(&g, "unknown ggml type 9999");
        let mut g = Gguf::new();
        g.tensors[1].1 = vec![33];
        refused(&g, "not whole blocks of 32");
        let mut g = Gguf::new();
        g.tensors[0].1 = vec![1 << 32, 1 << 32];
        refused(&g, "overflows");
        let mut g = Gguf::new();
        g.tensors[1].0 = "w".into();
        refused(&g, "duplicate tensor w");
        let mut g = Gguf::new();
        g.tensors[1].0 = "n".repeat(64);
        refused(&g, "a name of 64 bytes");
        let mut g = Gguf::new();
        g.skew = 32;
        refused(&g, "data offset 64 (expected 32)");
        // A shape that claims more data than the file holds.
        let mut b = Gguf::new().bytes();
        b.truncate(b.len() - 1);
        let e = validate(&b).unwrap_err();
        assert!(e.to_string().contains("tensor data"), "{e}");
        // Tensors of no bytes still need the data section to start inside the file (found by the
        // fuzz target's comparison with ggml's reader).
        let mut g = Gguf::new();
        g.tensors = vec![("empty".into(), vec![0], 0)];
        let mut b = g.bytes();
        let info = validate(&b).unwrap();
        b.truncate(info.data_offset as usize - 1);
        assert!(validate(&b).is_err());
        g.tensors.clear();
        assert!(validate(&g.bytes()).is_ok());
    }
}
