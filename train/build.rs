//! With the `cuda` feature: the decoder's fused training kernels (src/model/kernels/*.cu) to PTX,
//! loaded at run time by src/model/ops_cuda.rs. candle's own kernels are built the same way (cudaforge,
//! nvcc from scripts/cuda-toolkit.sh; no GPU needed to build).
fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-changed=src/model/kernels");
    #[cfg(feature = "cuda")]
    {
        let out = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
        cudaforge::KernelBuilder::new()
            .source_dir("src/model/kernels")
            .arg("-std=c++17")
            .arg("-O3")
            .build_ptx()
            .and_then(|p| p.write(out.join("ptx.rs")))
            .unwrap_or_else(|e| panic!("compiling the CUDA kernels: {e}"));
    }
}
