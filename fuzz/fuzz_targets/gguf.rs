//! GGUF pre-validation (`navigen::format::gguf`), differentially against llama.cpp's own reader:
//! any bytes give a summary or an error, never a panic, and a file the validator accepts must be
//! accepted by ggml's `gguf_init_from_file` too (it is what `Model::load` hands over next). Inputs
//! are raw bytes, or a GGUF laid out from fuzzer-chosen metadata and tensors, then edited.
#![no_main]
use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use navigen::format::gguf;

#[derive(Arbitrary, Debug)]
struct Spec {
    v2: bool,
    metadata: Vec<(String, u8, Vec<u8>)>,
    tensors: Vec<(String, Vec<u16>, u8)>,
    align_log2: u8,
    edits: Vec<(u16, u8)>,
    cut: Option<u16>,
}

fn block(t: u32) -> (u64, u64) {
    if t >= llama_cpp_sys_2::GGML_TYPE_COUNT as u32 {
        return (1, 1);
    }
    // SAFETY: indexes ggml's static type table with a value below its length.
    unsafe {
        (
            llama_cpp_sys_2::ggml_blck_size(t as _).max(1) as u64,
            llama_cpp_sys_2::ggml_type_size(t as _) as u64,
        )
    }
}

fn structured(u: &mut Unstructured) -> arbitrary::Result<Vec<u8>> {
    let s = Spec::arbitrary(u)?;
    let alignment = 1u64 << (s.align_log2 % 7);
    let mut metadata: Vec<(String, u32, Vec<u8>)> = s
        .metadata
        .into_iter()
        .map(|(k, t, v)| (k, (t % 14) as u32, v))
        .collect();
    if alignment != 32 {
        metadata.push(("general.alignment".into(), 4, (alignment as u32).to_le_bytes().to_vec()));
    }
    let tensors: Vec<(String, Vec<u64>, u32)> = s
        .tensors
        .into_iter()
        .map(|(n, d, t)| (n, d.into_iter().map(u64::from).collect(), (t % 48) as u32))
        .collect();
    let mut b = navigen_fuzz::gguf_bytes(if s.v2 { 2 } else { 3 }, &metadata, &tensors, alignment, block);
    for (at, v) in s.edits {
        if let Some(x) = b.get_mut(at as usize) {
            *x = v;
        }
    }
    if let Some(n) = s.cut {
        b.truncate(n as usize);
    }
    Ok(b)
}

/// ggml's reader on the same bytes (metadata and tensor infos only, as llama.cpp's loader starts).
fn ggml_accepts(bytes: &[u8]) -> bool {
    let path = std::env::temp_dir().join(format!("navigen-fuzz-gguf-{}.gguf", std::process::id()));
    std::fs::write(&path, bytes).unwrap();
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    let params = llama_cpp_sys_2::gguf_init_params { no_alloc: true, ctx: std::ptr::null_mut() };
    // SAFETY: a valid NUL-terminated path; the context is freed right away.
    unsafe {
        let ctx = llama_cpp_sys_2::gguf_init_from_file(c.as_ptr(), params);
        let ok = !ctx.is_null();
        if ok {
            llama_cpp_sys_2::gguf_free(ctx);
        }
        ok
    }
}

fuzz_target!(|data: &[u8]| {
    let bytes = match data.split_first() {
        Some((m, rest)) if m & 1 == 1 => match structured(&mut Unstructured::new(rest)) {
            Ok(b) => b,
            Err(_) => return,
        },
        _ => data.to_vec(),
    };
    if let Ok(info) = gguf::validate(&bytes) {
        assert!(info.data_offset + info.data_bytes >= info.data_offset);
        assert!(ggml_accepts(&bytes), "the validator accepted a GGUF ggml refuses: {info:?}");
    }
});
