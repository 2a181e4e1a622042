//! bundle.json as the engine reads it: any bytes give a manifest or an error, never a panic, and an
//! accepted manifest only names files inside the bundle folder.
#![no_main]
use libfuzzer_sys::fuzz_target;
use navigen::bundle::{Manifest, MANIFEST};

fuzz_target!(|data: &[u8]| {
    let dir = std::env::temp_dir().join(format!("navigen-fuzz-manifest-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(MANIFEST), data).unwrap();
    if let Ok(m) = Manifest::read(&dir) {
        for e in [Some(&m.model), m.catalog.as_ref(), m.codebooks.as_ref(), m.embedder.as_ref()]
            .into_iter()
            .flatten()
        {
            let p = Manifest::path(&dir, e);
            assert_eq!(p.parent(), Some(dir.as_path()), "{p:?} escapes the bundle");
        }
    }
});
