//! Registering a new item: its text's CID in the catalog's CID space.

use std::sync::Arc;

use super::{Engine, Registration, TakenBy};
use crate::bundle::Manifest;
use crate::cid::Cid;
use crate::embedding::TextEmbedder;
use crate::error::{Error, Result};

impl Engine {
    /// Gives a text that is not in the catalog its CID: the bundle's embedder embeds it on llama.cpp
    /// and the memory-mapped codebooks quantise it, exactly as the trainer did for the catalog. Reports
    /// whether a catalog item already holds that CID and the nearest free one.
    pub fn register_item(&self, text: &str) -> Result<Registration> {
        let cb = self.codebooks.as_ref().ok_or_else(|| {
            Error::NotSupported("registering items needs a bundle with codebooks".into())
        })?;
        let embedder = self.embedder()?;
        // Fused codebooks predict the collaborative half from the text (format::codebooks::Fusion).
        let v = cb.fuse(&embedder.embed(text)?)?;
        let k_last = *cb.sizes().last().expect("codebooks have a level");
        let ranked = cb.quantize_ranked(&v, k_last)?;
        let prefix = &ranked[..cb.levels() - 1];
        let cid_of = |last: u16| -> Cid {
            let mut c = prefix.to_vec();
            c.push(last);
            Cid::new(&c).expect("levels checked at open")
        };
        let cid = cid_of(ranked[cb.levels() - 1]);
        let taken_by = self
            .catalog
            .find_cid(&cid)
            .and_then(|i| self.catalog.item(i))
            .map(|it| TakenBy {
                id: it.id.to_string(),
                title: it.title.to_string(),
            });
        let free_cid = ranked[cb.levels() - 1..]
            .iter()
            .map(|&c| cid_of(c))
            .find(|c| self.catalog.find_cid(c).is_none())
            .map(|c| c.to_text());
        let (_, distance) = cb.quantize(&v)?;
        Ok(Registration {
            cid: cid.to_text(),
            taken_by,
            free_cid,
            distance,
        })
    }

    /// The bundle's embedder, opened once; it must be the file the codebooks were built with.
    fn embedder(&self) -> Result<Arc<TextEmbedder>> {
        let mut slot = self.embedder.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = slot.as_ref() {
            return Ok(e.clone());
        }
        let entry = self.manifest.embedder.as_ref().ok_or_else(|| Error::NotSupported("this bundle has no embedder.gguf: re-export it with a current trainer to register items".into()))?;
        let built_with = self
            .codebooks
            .as_ref()
            .and_then(|cb| cb.info().get("embedder_sha256"))
            .and_then(|v| v.as_str())
            .unwrap_or_default();
        if built_with != entry.sha256 {
            return Err(Error::Mismatch(format!(
                "{} (sha256 {}) is not the embedder the codebooks were built with ({built_with:?})",
                entry.name, entry.sha256
            )));
        }
        let e = Arc::new(TextEmbedder::open(
            &Manifest::path(&self.dir, entry),
            self.params.threads,
        )?);
        *slot = Some(e.clone());
        Ok(e)
    }
}
