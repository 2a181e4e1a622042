//! The codebooks reader, read three ways as the catalog target does (raw, checksums fixed, and the
//! writer's own output edited and fixed); accepted codebooks fuse and quantise a vector.
#![no_main]
use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use navigen::format::codebooks::{write_codebooks_fused, Fusion};
use navigen::format::Dtype;
use navigen::Codebooks;

#[derive(Arbitrary, Debug)]
struct Input {
    raw: Vec<u8>,
    dim: u8,
    f16: bool,
    levels: Vec<Vec<f32>>,
    fusion: Option<(u8, f32, Vec<f32>)>,
    edits: Vec<(u32, u8)>,
}

fn walk(c: &Codebooks) {
    let _ = (c.levels(), c.dim(), c.dtype(), c.sizes(), c.centroid_crc(), c.info(), c.fusion());
    if c.input_dim() > 1 << 16 {
        return;
    }
    let x: Vec<f32> = (0..c.input_dim()).map(|i| ((i * 7919) % 13) as f32 - 6.0).collect();
    if let Ok(v) = c.fuse(&x) {
        let _ = c.quantize(&v);
        let _ = c.quantize_ranked(&v, 4);
        let _ = c.last_level_distances(&v);
    }
    let _ = c.quantize(&[f32::NAN; 3]);
}

fn read(bytes: &[u8]) {
    if let Ok(c) = Codebooks::from_bytes(bytes) {
        walk(&c);
    }
}

fuzz_target!(|input: Input| {
    read(&input.raw);
    read(&navigen_fuzz::fix_checksums(&input.raw));
    let dim = input.dim as usize % 16 + 1;
    let levels: Vec<Vec<f32>> = input
        .levels
        .iter()
        .take(4)
        .map(|l| {
            let n = (l.len() / dim).clamp(1, 64) * dim;
            (0..n).map(|i| l.get(i).copied().unwrap_or(0.5)).collect()
        })
        .collect();
    let fusion = input.fusion.as_ref().map(|(t, w, map)| {
        let text_dim = (*t as usize % dim).max(1).min(dim);
        let collab_dim = dim - text_dim;
        Fusion {
            text_dim,
            collab_dim,
            weight: *w,
            map: (0..text_dim * collab_dim).map(|i| map.get(i).copied().unwrap_or(0.1)).collect(),
        }
    });
    let dtype = if input.f16 { Dtype::F16 } else { Dtype::F32 };
    let Ok(mut bytes) =
        write_codebooks_fused(&levels, dim, dtype, fusion.as_ref(), &serde_json::Value::Null)
    else {
        return;
    };
    let written = Codebooks::from_bytes(&bytes).expect("the writer's own output reads back");
    walk(&written);
    drop(written);
    for &(at, v) in input.edits.iter().take(16) {
        let n = bytes.len();
        bytes[at as usize % n] = v;
    }
    read(&navigen_fuzz::fix_checksums(&bytes));
});
