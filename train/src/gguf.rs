//! The one GGUF writer of the trainer: the element types of exported tensors, their quantisation and the
//! atomic file write. The model export (`model::gguf`) and the embedder export (`embed::export`) both
//! write through it.

use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};

/// Element type of exported matrices (norms always stay f32).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportDtype {
    F32,
    F16,
    Q8_0,
}

impl std::str::FromStr for ExportDtype {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "f32" => ExportDtype::F32,
            "f16" => ExportDtype::F16,
            "q8_0" => ExportDtype::Q8_0,
            _ => bail!("unknown dtype {s:?} (f32, f16 or q8_0)"),
        })
    }
}

impl ExportDtype {
    fn ggml(self) -> GgmlDType {
        match self {
            ExportDtype::F32 => GgmlDType::F32,
            ExportDtype::F16 => GgmlDType::F16,
            ExportDtype::Q8_0 => GgmlDType::Q8_0,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            ExportDtype::F32 => "f32",
            ExportDtype::F16 => "f16",
            ExportDtype::Q8_0 => "q8_0",
        }
    }
    /// llama.cpp's `general.file_type` (LLAMA_FTYPE_*).
    pub fn file_type(self) -> u32 {
        match self {
            ExportDtype::F32 => 0,
            ExportDtype::F16 => 1,
            ExportDtype::Q8_0 => 7,
        }
    }
}

/// A tensor in the file's element type: vectors (norms, biases) always f32, matrices in `dtype`.
pub fn quantize(name: &str, t: &Tensor, dtype: ExportDtype) -> Result<QTensor> {
    let t = t.to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
    if t.rank() == 1 {
        return Ok(QTensor::quantize(&t, GgmlDType::F32)?);
    }
    let d = dtype.ggml();
    if t.dims()[1] % d.block_size() != 0 {
        bail!(
            "{name}: row length {} is not a multiple of the {d:?} block size",
            t.dims()[1]
        );
    }
    Ok(QTensor::quantize(&t, d)?)
}

/// Writes a GGUF file atomically (temporary file, fsync, rename).
pub fn write(
    path: &Path,
    meta: &[(String, gguf_file::Value)],
    tensors: &[(String, QTensor)],
) -> Result<()> {
    let tmp = path.with_extension("gguf.part");
    {
        let mut f = std::io::BufWriter::new(
            std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?,
        );
        let meta_refs: Vec<(&str, &gguf_file::Value)> =
            meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let t_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
        gguf_file::write(&mut f, &meta_refs, &t_refs)?;
        use std::io::Write;
        f.flush()?;
        f.get_ref().sync_all()?;
    }
    std::fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} into place", tmp.display()))?;
    Ok(())
}
