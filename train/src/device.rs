//! `--device cpu|cuda:N` parsing. CUDA is only available in builds with the `cuda` feature.

use anyhow::{bail, Result};
use candle_core::Device;

pub fn parse(spec: &str) -> Result<Device> {
    match spec {
        "cpu" => Ok(Device::Cpu),
        s if s == "cuda" || s.starts_with("cuda:") => {
            let n: usize = s.strip_prefix("cuda:").unwrap_or("0").parse()?;
            if !candle_core::utils::cuda_is_available() {
                bail!("--device {s}: this build has no CUDA support (rebuild with `--features cuda` on a machine with the CUDA toolkit)");
            }
            Ok(Device::new_cuda(n)?)
        }
        s => bail!("unknown device {s:?} (use cpu or cuda:N)"),
    }
}
