//! The codebooks file: the centroids of every residual level, so that a device can give a new item a
//! CID (embed, then quantise) exactly as the trainer did.
//!
//! Version 2 adds an optional `FUSE` section: codebooks trained on the text embedding fused with a
//! collaborative vector (docs/method.md, section 2). Its map predicts the collaborative half of a new
//! item from its text, so the device quantises `fuse(text)` ([`Codebooks::fuse`]).

use std::path::Path;

use half::f16;

use super::bytes::FileBytes;
use super::container::{cast_records, Container, ContainerWriter, Tag};
use crate::cid::{Cid, MAX_LEVELS};
use crate::error::{Error, FormatError, Result};

pub const MAGIC: &[u8; 8] = b"NAVIGCB\0";
pub const VERSION: u32 = 2;
/// Conventional file name inside a bundle or a prepared data folder.
pub const FILE_NAME: &str = "codebooks.nvcb";

const META: Tag = Tag::new(b"META");
const CENT: Tag = Tag::new(b"CENT");
const INFO: Tag = Tag::new(b"INFO");
const FUSE: Tag = Tag::new(b"FUSE");

/// How a text embedding becomes the vector the codebooks quantise, when they were trained on text
/// fused with collaborative vectors: `[sqrt(1-w) t, sqrt(w) c]` with `t` the unit text vector and `c`
/// the unit collaborative vector, predicted as `map @ t` for an item the trainer saw no behaviour of.
#[derive(Clone, Debug, PartialEq)]
pub struct Fusion {
    pub text_dim: usize,
    pub collab_dim: usize,
    /// Share of the squared norm given to the collaborative half, in (0, 1).
    pub weight: f32,
    /// `collab_dim x text_dim`, row-major.
    pub map: Vec<f32>,
}

impl Fusion {
    /// The fused vector of a text vector and a collaborative one (`None`: predicted from the text).
    /// Trainer and device both call this, so catalog items and new items meet the codebooks alike.
    pub fn fuse(&self, text: &[f32], collab: Option<&[f32]>) -> Result<Vec<f32>> {
        if text.len() != self.text_dim || collab.is_some_and(|c| c.len() != self.collab_dim) {
            return Err(Error::InvalidArgument(format!(
                "fusion expects a {}-value text vector and a {}-value collaborative one",
                self.text_dim, self.collab_dim
            )));
        }
        let t = unit(text);
        let c = match collab {
            Some(c) => unit(c),
            None => unit(
                &self
                    .map
                    .chunks_exact(self.text_dim)
                    .map(|row| row.iter().zip(&t).map(|(w, x)| w * x).sum::<f32>())
                    .collect::<Vec<_>>(),
            ),
        };
        let (a, b) = ((1.0 - self.weight).sqrt(), self.weight.sqrt());
        Ok(t.iter()
            .map(|x| a * x)
            .chain(c.iter().map(|x| b * x))
            .collect())
    }

    fn parse(raw: &[u8], dim: usize) -> Result<Self, FormatError> {
        let words: &[u32] = cast_records("FUSE", raw)?;
        if words.len() < 4 {
            return Err(FormatError::Invalid("FUSE section too short".into()));
        }
        let (text_dim, collab_dim) = (words[0] as usize, words[1] as usize);
        let weight = f32::from_bits(words[2]);
        if text_dim == 0 || collab_dim == 0 || text_dim + collab_dim != dim {
            return Err(FormatError::Invalid(format!(
                "FUSE dimensions {text_dim} + {collab_dim} do not make the codebooks' {dim}"
            )));
        }
        if !(weight > 0.0 && weight < 1.0) {
            return Err(FormatError::Invalid(format!(
                "FUSE weight {weight} is not in (0, 1)"
            )));
        }
        let map: &[f32] = cast_records("FUSE", &raw[16..])?;
        if map.len() != text_dim * collab_dim || map.iter().any(|v| !v.is_finite()) {
            return Err(FormatError::Invalid(
                "FUSE map has the wrong size or a non-finite value".into(),
            ));
        }
        Ok(Fusion {
            text_dim,
            collab_dim,
            weight,
            map: map.to_vec(),
        })
    }

    fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + 4 * self.map.len());
        for w in [
            self.text_dim as u32,
            self.collab_dim as u32,
            self.weight.to_bits(),
            0,
        ] {
            out.extend_from_slice(&w.to_le_bytes());
        }
        for v in &self.map {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out
    }
}

/// `x / |x|` (a zero vector stays zero). The trainer's collaborative vectors use it too.
pub fn unit(x: &[f32]) -> Vec<f32> {
    let norm = x.iter().map(|v| v * v).sum::<f32>().sqrt();
    if norm > 0.0 {
        x.iter().map(|v| v / norm).collect()
    } else {
        x.to_vec()
    }
}

/// Element type of the stored centroids.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    F32,
    F16,
}

impl Dtype {
    fn code(self) -> u32 {
        match self {
            Dtype::F32 => 0,
            Dtype::F16 => 1,
        }
    }
    fn size(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::F16 => 2,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "f32",
            Dtype::F16 => "f16",
        }
    }
}

/// Residual codebooks, used in place from a memory map.
#[derive(Clone, Debug)]
pub struct Codebooks {
    bytes: FileBytes,
    dtype: Dtype,
    dim: usize,
    sizes: Vec<usize>,
    /// Byte range of the centroid section.
    cent: std::ops::Range<usize>,
    /// CRC-32 of the centroid section: a catalog records it to prove it was made with these codebooks.
    cent_crc: u32,
    info: serde_json::Value,
    fusion: Option<Fusion>,
}

impl Codebooks {
    pub fn open(path: &Path) -> Result<Self> {
        let bytes = FileBytes::map(path)?;
        Self::from_file_bytes(bytes).map_err(|e| Error::format(path, e))
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, FormatError> {
        Self::from_file_bytes(FileBytes::copy(bytes))
    }

    fn from_file_bytes(bytes: FileBytes) -> Result<Self, FormatError> {
        let all = bytes.as_slice();
        let c = Container::parse(all, MAGIC, &[1, VERSION])?;
        let meta: &[u32] = cast_records("META", c.section(META)?)?;
        if meta.len() < 4 {
            return Err(FormatError::Invalid("META section too short".into()));
        }
        let (levels, dim, dtype) = (meta[0] as usize, meta[1] as usize, meta[2]);
        let dtype = match dtype {
            0 => Dtype::F32,
            1 => Dtype::F16,
            d => return Err(FormatError::Invalid(format!("unknown centroid dtype {d}"))),
        };
        if levels == 0 || levels > MAX_LEVELS {
            return Err(FormatError::Invalid(format!(
                "{levels} levels (1..={MAX_LEVELS} allowed)"
            )));
        }
        if dim == 0 || dim > 1 << 16 {
            return Err(FormatError::Invalid(format!(
                "dimension {dim} out of range"
            )));
        }
        if meta.len() != 4 + levels {
            return Err(FormatError::Invalid(format!(
                "META has {} words, expected {}",
                meta.len(),
                4 + levels
            )));
        }
        let sizes: Vec<usize> = meta[4..].iter().map(|&k| k as usize).collect();
        if let Some(k) = sizes.iter().find(|&&k| k == 0 || k > u16::MAX as usize + 1) {
            return Err(FormatError::Invalid(format!(
                "codebook size {k} out of range 1..=65536"
            )));
        }
        let cent = c.section(CENT)?;
        let expected = sizes.iter().sum::<usize>() * dim * dtype.size();
        if cent.len() != expected {
            return Err(FormatError::Invalid(format!(
                "CENT has {} bytes, expected {expected}",
                cent.len()
            )));
        }
        // Alignment is guaranteed by the container; this also proves it for the typed views below.
        match dtype {
            Dtype::F32 => drop(cast_records::<f32>("CENT", cent)?),
            Dtype::F16 => drop(cast_records::<f16>("CENT", cent)?),
        }
        if cent
            .chunks_exact(dtype.size())
            .any(|v| !value_is_finite(dtype, v))
        {
            return Err(FormatError::Invalid("CENT holds a non-finite value".into()));
        }
        let info = super::container::info_json(&c)?;
        let fusion = c
            .optional_section(FUSE)
            .map(|raw| Fusion::parse(raw, dim))
            .transpose()?;
        let start = cent.as_ptr() as usize - all.as_ptr() as usize;
        let cent_crc = c
            .sections()
            .iter()
            .find(|s| s.tag == CENT)
            .map(|s| s.crc32)
            .unwrap_or(0);
        Ok(Codebooks {
            dtype,
            dim,
            sizes,
            cent: start..start + cent.len(),
            cent_crc,
            info,
            bytes,
            fusion,
        })
    }

    pub fn levels(&self) -> usize {
        self.sizes.len()
    }
    pub fn dim(&self) -> usize {
        self.dim
    }
    pub fn dtype(&self) -> Dtype {
        self.dtype
    }
    /// Codebook size (K) of every level.
    pub fn sizes(&self) -> &[usize] {
        &self.sizes
    }
    pub fn centroid_crc(&self) -> u32 {
        self.cent_crc
    }
    pub fn info(&self) -> &serde_json::Value {
        &self.info
    }
    /// The fusion rule, for codebooks trained on text fused with collaborative vectors.
    pub fn fusion(&self) -> Option<&Fusion> {
        self.fusion.as_ref()
    }
    /// Length of the embedder vector these codebooks take (through [`Self::fuse`]).
    pub fn input_dim(&self) -> usize {
        self.fusion.as_ref().map_or(self.dim, |f| f.text_dim)
    }
    /// The vector to quantise for an item known only by its text embedding: the embedding itself, or
    /// its fusion with a collaborative half predicted from it.
    pub fn fuse(&self, text: &[f32]) -> Result<Vec<f32>> {
        match &self.fusion {
            Some(f) => f.fuse(text, None),
            None => Ok(text.to_vec()),
        }
    }

    fn level_offset(&self, level: usize) -> usize {
        self.sizes[..level].iter().sum::<usize>() * self.dim
    }

    /// Copies centroid `k` of `level` into `out` as f32. Panics only on out-of-range arguments.
    pub fn centroid_into(&self, level: usize, k: usize, out: &mut [f32]) {
        assert!(
            level < self.levels() && k < self.sizes[level] && out.len() == self.dim,
            "centroid index out of range"
        );
        let start = self.level_offset(level) + k * self.dim;
        let raw = &self.bytes.as_slice()[self.cent.clone()];
        match self.dtype {
            Dtype::F32 => {
                out.copy_from_slice(&bytemuck::cast_slice::<u8, f32>(raw)[start..start + self.dim])
            }
            Dtype::F16 => {
                for (o, v) in out
                    .iter_mut()
                    .zip(&bytemuck::cast_slice::<u8, f16>(raw)[start..start + self.dim])
                {
                    *o = v.to_f32();
                }
            }
        }
    }

    /// All centroids of one level as f32, row-major K x dim.
    pub fn level_f32(&self, level: usize) -> Vec<f32> {
        let mut out = vec![0f32; self.sizes[level] * self.dim];
        for (k, row) in out.chunks_exact_mut(self.dim).enumerate() {
            self.centroid_into(level, k, row);
        }
        out
    }

    /// Residual quantisation: at each level the nearest centroid of the remaining residual.
    /// Returns the CID and the squared reconstruction error.
    pub fn quantize(&self, x: &[f32]) -> Result<(Cid, f32)> {
        let codes = self.quantize_ranked(x, 1)?;
        let mut residual = x.to_vec();
        let mut c = vec![0f32; self.dim];
        for (l, &code) in codes.iter().enumerate() {
            self.centroid_into(l, code as usize, &mut c);
            residual.iter_mut().zip(&c).for_each(|(r, c)| *r -= c);
        }
        let err = residual.iter().map(|r| r * r).sum();
        Ok((Cid::new(&codes).expect("levels checked at open"), err))
    }

    /// Like [`Self::quantize`] but also ranks the last level: returns the greedy codes of the first
    /// levels followed by the `last_candidates` nearest last-level codes (nearest first).
    pub fn quantize_ranked(&self, x: &[f32], last_candidates: usize) -> Result<Vec<u16>> {
        let (mut codes, dists) = self.last_level_distances(x)?;
        let mut order: Vec<usize> = (0..dists.len()).collect();
        // Ties go to the lower code, here and in the trainer's collision resolution.
        order.sort_by(|&a, &b| dists[a].total_cmp(&dists[b]).then(a.cmp(&b)));
        codes.extend(order.iter().take(last_candidates.max(1)).map(|&k| k as u16));
        Ok(codes)
    }

    /// Greedy residual quantisation of all but the last level, then the squared distance of what is
    /// left to every last-level centroid. This is the one place where items meet codes: the trainer
    /// assigns the catalog's CIDs with it and the device registers new items with it.
    pub fn last_level_distances(&self, x: &[f32]) -> Result<(Vec<u16>, Vec<f32>)> {
        if x.len() != self.dim {
            return Err(Error::InvalidArgument(format!(
                "vector has {} values, codebooks expect {}",
                x.len(),
                self.dim
            )));
        }
        if x.iter().any(|v| !v.is_finite()) {
            return Err(Error::InvalidArgument(
                "vector holds a non-finite value".into(),
            ));
        }
        let mut residual = x.to_vec();
        let mut codes = Vec::with_capacity(self.levels());
        let mut c = vec![0f32; self.dim];
        for l in 0..self.levels() {
            let dists: Vec<f32> = (0..self.sizes[l])
                .map(|k| {
                    self.centroid_into(l, k, &mut c);
                    residual
                        .iter()
                        .zip(&c)
                        .map(|(r, c)| (r - c) * (r - c))
                        .sum::<f32>()
                })
                .collect();
            if l + 1 == self.levels() {
                return Ok((codes, dists));
            }
            let best = (0..dists.len())
                .min_by(|&a, &b| dists[a].total_cmp(&dists[b]).then(a.cmp(&b)))
                .expect("K >= 1");
            codes.push(best as u16);
            self.centroid_into(l, best, &mut c);
            residual.iter_mut().zip(&c).for_each(|(r, c)| *r -= c);
        }
        unreachable!("codebooks have at least one level (checked at open)")
    }
}

fn value_is_finite(dtype: Dtype, v: &[u8]) -> bool {
    match dtype {
        Dtype::F32 => f32::from_le_bytes(v.try_into().expect("4 bytes")).is_finite(),
        Dtype::F16 => f16::from_le_bytes(v.try_into().expect("2 bytes")).is_finite(),
    }
}

/// Serialises codebooks. `levels[l]` is K_l x dim, row-major.
pub fn write_codebooks(
    levels: &[Vec<f32>],
    dim: usize,
    dtype: Dtype,
    info: &serde_json::Value,
) -> Result<Vec<u8>> {
    write_codebooks_fused(levels, dim, dtype, None, info)
}

/// [`write_codebooks`] for codebooks trained on fused vectors (`fusion.text_dim + collab_dim == dim`).
pub fn write_codebooks_fused(
    levels: &[Vec<f32>],
    dim: usize,
    dtype: Dtype,
    fusion: Option<&Fusion>,
    info: &serde_json::Value,
) -> Result<Vec<u8>> {
    if let Some(f) = fusion {
        // The reader's rules (`Fusion::parse`): both halves non-empty.
        if f.text_dim == 0
            || f.collab_dim == 0
            || f.text_dim + f.collab_dim != dim
            || f.map.len() != f.text_dim * f.collab_dim
            || !(f.weight > 0.0 && f.weight < 1.0)
            || f.map.iter().any(|v| !v.is_finite())
        {
            return Err(Error::InvalidArgument(format!(
                "fusion {} + {} (weight {}) does not fit codebooks of dimension {dim}",
                f.text_dim, f.collab_dim, f.weight
            )));
        }
    }
    if levels.is_empty() || levels.len() > MAX_LEVELS || dim == 0 {
        return Err(Error::InvalidArgument(format!(
            "{} levels of dimension {dim}",
            levels.len()
        )));
    }
    let mut meta = vec![levels.len() as u32, dim as u32, dtype.code(), 0];
    let mut cent = Vec::new();
    for (l, level) in levels.iter().enumerate() {
        if level.is_empty() || level.len() % dim != 0 || level.len() / dim > u16::MAX as usize + 1 {
            return Err(Error::InvalidArgument(format!(
                "level {l} has {} values for dimension {dim}",
                level.len()
            )));
        }
        if level.iter().any(|v| !v.is_finite()) {
            return Err(Error::InvalidArgument(format!(
                "level {l} holds a non-finite value"
            )));
        }
        meta.push((level.len() / dim) as u32);
        for &v in level {
            match dtype {
                Dtype::F32 => cent.extend_from_slice(&v.to_le_bytes()),
                Dtype::F16 => {
                    // A finite f32 beyond f16's range would be stored as infinity, which the
                    // reader refuses.
                    let h = f16::from_f32(v);
                    if !h.is_finite() {
                        return Err(Error::InvalidArgument(format!(
                            "level {l} holds {v}, outside the f16 range"
                        )));
                    }
                    cent.extend_from_slice(&h.to_le_bytes())
                }
            }
        }
    }
    let mut w = ContainerWriter::new(MAGIC, VERSION);
    w.section(META, bytemuck::cast_slice(&meta).to_vec());
    w.section(CENT, cent);
    if let Some(f) = fusion {
        w.section(FUSE, f.to_bytes());
    }
    w.section(
        INFO,
        serde_json::to_vec(info).expect("JSON value serialises"),
    );
    Ok(w.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(dtype: Dtype) -> Vec<u8> {
        let l0 = vec![1.0, 0.0, 0.0, 1.0, -1.0, 0.0];
        let l1 = vec![0.1, 0.0, 0.0, 0.1];
        write_codebooks(
            &[l0, l1],
            2,
            dtype,
            &serde_json::json!({"embedder": "test"}),
        )
        .unwrap()
    }

    #[test]
    fn round_trip_and_quantize() {
        for dtype in [Dtype::F32, Dtype::F16] {
            let cb = Codebooks::from_bytes(&sample(dtype)).unwrap();
            assert_eq!(cb.sizes(), &[3, 2]);
            assert_eq!(cb.dim(), 2);
            let (cid, err) = cb.quantize(&[0.05, 1.1]).unwrap();
            assert_eq!(cid.codes(), &[1, 1]);
            assert!(err < 0.01, "{err}");
            assert_eq!(cb.quantize_ranked(&[-0.9, 0.0], 2).unwrap(), vec![2, 0, 1]);
            assert!(cb.quantize(&[1.0]).is_err());
            assert!(cb.quantize(&[f32::NAN, 0.0]).is_err());
        }
    }

    fn sample_fused() -> Vec<u8> {
        // 2 text values + 1 collaborative value.
        let fusion = Fusion {
            text_dim: 2,
            collab_dim: 1,
            weight: 0.36,
            map: vec![0.0, -2.0],
        };
        write_codebooks_fused(
            &[vec![0.8, 0.0, 0.6, 0.0, 0.8, -0.6]],
            3,
            Dtype::F32,
            Some(&fusion),
            &serde_json::json!({}),
        )
        .unwrap()
    }

    #[test]
    fn fused_codebooks_predict_the_collaborative_half_from_text() {
        let cb = Codebooks::from_bytes(&sample_fused()).unwrap();
        assert_eq!((cb.dim(), cb.input_dim()), (3, 2));
        // t = (0, 1) -> map gives -2 -> unit -1: fused (0, 0.8, -0.6), centroid 1.
        let v = cb.fuse(&[0.0, 5.0]).unwrap();
        assert!(
            (v[1] - 0.8).abs() < 1e-6 && (v[2] + 0.6).abs() < 1e-6,
            "{v:?}"
        );
        assert_eq!(cb.quantize(&v).unwrap().0.codes(), &[1]);
        let known = cb
            .fusion()
            .unwrap()
            .fuse(&[1.0, 0.0], Some(&[3.0]))
            .unwrap();
        assert_eq!(cb.quantize(&known).unwrap().0.codes(), &[0]);
        assert!(cb.fuse(&[1.0, 0.0, 0.0]).is_err());
        // Plain codebooks pass text through unchanged.
        let plain = Codebooks::from_bytes(&sample(Dtype::F32)).unwrap();
        assert_eq!(plain.fuse(&[0.3, 4.0]).unwrap(), vec![0.3, 4.0]);
        assert!(plain.fusion().is_none());
    }

    /// Found by the `codebooks` fuzz target: the writer took an empty collaborative half that the
    /// reader refuses, so the trainer could write codebooks no device opens.
    #[test]
    fn the_writer_refuses_what_the_reader_refuses() {
        for (text_dim, collab_dim) in [(1, 0), (0, 1)] {
            let fusion = Fusion {
                text_dim,
                collab_dim,
                weight: 0.5,
                map: vec![],
            };
            let r = write_codebooks_fused(
                &[vec![1.0]],
                1,
                Dtype::F32,
                Some(&fusion),
                &serde_json::json!({}),
            );
            assert!(r.is_err(), "{text_dim} + {collab_dim} was written");
        }
    }

    /// Found by the `codebooks` fuzz target: a finite f32 beyond f16's range was written as
    /// infinity, which the reader refuses.
    #[test]
    fn f16_codebooks_refuse_values_beyond_f16() {
        let r = write_codebooks(&[vec![1.0e6, 0.0]], 2, Dtype::F16, &serde_json::json!({}));
        assert!(r.is_err());
        let ok = write_codebooks(&[vec![6.0e4, 0.0]], 2, Dtype::F16, &serde_json::json!({}));
        assert!(Codebooks::from_bytes(&ok.unwrap()).is_ok());
    }

    #[test]
    fn damaged_files_are_errors() {
        for bytes in [sample(Dtype::F32), sample_fused()] {
            damaged_is_error(&bytes);
        }
    }

    fn damaged_is_error(bytes: &[u8]) {
        let bytes = bytes.to_vec();
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 1;
            assert!(Codebooks::from_bytes(&b).is_err(), "flipped byte {i}");
        }
        for n in 0..bytes.len() {
            assert!(
                Codebooks::from_bytes(&bytes[..n]).is_err(),
                "truncated to {n}"
            );
        }
    }
}
