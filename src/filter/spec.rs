//! Scripts and the serialisable description of a chain ([`ChainSpec`]).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{FilterError, Result};

/// The version of the [`ChainSpec`] JSON shape.
pub const SPEC_VERSION: u32 = 1;

/// One parameter value given to a script (as the read-only global `params`).
///
/// Serialised as the bare JSON value: `true`, `3`, `1.5`, `"/path"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Param {
    /// A boolean.
    Bool(bool),
    /// An integer (a Lua integer).
    Int(i64),
    /// A float (a Lua float).
    Float(f64),
    /// A string (a Lua string).
    Str(String),
}

impl From<&str> for Param {
    fn from(s: &str) -> Self {
        Param::Str(s.to_owned())
    }
}

impl From<String> for Param {
    fn from(s: String) -> Self {
        Param::Str(s)
    }
}

impl From<i64> for Param {
    fn from(n: i64) -> Self {
        Param::Int(n)
    }
}

impl From<bool> for Param {
    fn from(b: bool) -> Self {
        Param::Bool(b)
    }
}

/// A filter's parameters, by name.
pub type Params = BTreeMap<String, Param>;

/// A filter script: its name, its source text and the SHA-256 of that text.
///
/// Cheap to clone (the source is shared).
#[derive(Clone)]
pub struct Script {
    name: String,
    source: Arc<[u8]>,
    sha256: String,
}

impl std::fmt::Debug for Script {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Script")
            .field("name", &self.name)
            .field("sha256", &self.sha256)
            .field("len", &self.source.len())
            .finish()
    }
}

impl Script {
    /// A script from its text. `name` is what records and messages call it
    /// (`compress`, not `compress.lua`).
    pub fn new(name: impl Into<String>, source: impl Into<Vec<u8>>) -> Script {
        let source: Vec<u8> = source.into();
        let sha256 = hex::encode(Sha256::digest(&source));
        Script {
            name: name.into(),
            source: source.into(),
            sha256,
        }
    }

    /// Reads a script file; its name is the file name without `.lua`.
    pub fn from_file(path: &Path) -> Result<Script> {
        let source = std::fs::read(path).map_err(|e| FilterError::Unreadable {
            script: path.display().to_string(),
            why: e.to_string(),
        })?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default();
        let name = name.strip_suffix(".lua").unwrap_or(&name).to_owned();
        Ok(Script::new(name, source))
    }

    /// The script's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The SHA-256 of the source, lowercase hex.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// The source text.
    pub fn source(&self) -> &[u8] {
        &self.source
    }
}

/// One stage of a chain: a script and its parameters.
#[derive(Debug, Clone)]
pub struct Stage {
    /// The script.
    pub script: Script,
    /// Its parameters (the script sees them as the read-only global `params`).
    pub params: Params,
}

impl Stage {
    /// A stage without parameters.
    pub fn new(script: Script) -> Stage {
        Stage {
            script,
            params: Params::new(),
        }
    }

    /// Adds a parameter.
    #[must_use]
    pub fn param(mut self, name: &str, value: impl Into<Param>) -> Stage {
        self.params.insert(name.to_owned(), value.into());
        self
    }

    /// Parses what a user types after `--filter`: `SCRIPT[,NAME=VALUE…]`,
    /// for example `examples/filters/compress.lua,level=9` or
    /// `encrypt.lua,key_env=FK_KEY`. The script is read now; its name is
    /// the file name without `.lua`. A value that parses as an integer is
    /// an integer, `true`/`false` a boolean, anything else a string.
    /// (A script path containing a comma cannot be given this way.)
    pub fn from_arg(arg: &str) -> Result<Stage> {
        let mut parts = arg.split(',');
        let path = parts.next().unwrap_or_default();
        if path.is_empty() {
            return Err(FilterError::BadArg {
                arg: arg.to_owned(),
                why: "no script path before the parameters".into(),
            });
        }
        let mut stage = Stage::new(Script::from_file(Path::new(path))?);
        if !valid_name(stage.script.name()) {
            return Err(FilterError::BadArg {
                arg: arg.to_owned(),
                why: format!(
                    "{:?} is not a valid filter name (1-64 of A-Za-z0-9._-)",
                    stage.script.name()
                ),
            });
        }
        for kv in parts {
            let Some((k, v)) = kv.split_once('=').filter(|(k, _)| !k.is_empty()) else {
                return Err(FilterError::BadArg {
                    arg: arg.to_owned(),
                    why: format!("parameter {kv:?} is not NAME=VALUE"),
                });
            };
            let value = match v {
                "true" => Param::Bool(true),
                "false" => Param::Bool(false),
                _ => v
                    .parse::<i64>()
                    .map_or_else(|_| Param::Str(v.to_owned()), Param::Int),
            };
            stage.params.insert(k.to_owned(), value);
        }
        Ok(stage)
    }
}

/// Keeps each stage's script in `dir` as `<sha256>.lua` (what
/// [`ChainSpec::resolve`] looks for first), written atomically; a script
/// already there is left alone (same name, same text).
pub fn save_scripts(stages: &[Stage], dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for s in stages {
        let path = dir.join(format!("{}.lua", s.script.sha256()));
        if path.exists() {
            continue;
        }
        let tmp = dir.join(format!(
            ".tmp-{}-{}.lua",
            std::process::id(),
            s.script.sha256()
        ));
        std::fs::write(&tmp, s.script.source())?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, &path)?;
    }
    std::fs::File::open(dir)?.sync_all()
}

/// What a filtered object or volume records so the store stays
/// self-describing: each stage's script name, the SHA-256 of its text, and
/// its parameters, in encode order.
///
/// JSON (`serde_json`), for example:
///
/// ```json
/// {"version":1,"filters":[
///   {"name":"compress","sha256":"5d1c…","params":{"level":3}},
///   {"name":"encrypt","sha256":"a07e…","params":{"key_file":"/etc/fukastor/key"}}]}
/// ```
///
/// An empty `filters` list means "not filtered". Secrets are never in a
/// spec: the encrypt filter names where its key is (a file or an
/// environment variable), and each ciphertext carries the key's ID.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChainSpec {
    /// [`SPEC_VERSION`].
    pub version: u32,
    /// The stages, in encode order.
    pub filters: Vec<FilterSpec>,
}

/// One stage of a [`ChainSpec`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FilterSpec {
    /// The script's name (`compress`).
    pub name: String,
    /// The SHA-256 of the script's text, lowercase hex: the script's identity.
    pub sha256: String,
    /// The parameters.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub params: Params,
}

impl ChainSpec {
    /// The spec of no filter at all.
    pub fn empty() -> ChainSpec {
        ChainSpec {
            version: SPEC_VERSION,
            filters: Vec::new(),
        }
    }

    /// True when the spec has no stage.
    pub fn is_empty(&self) -> bool {
        self.filters.is_empty()
    }

    /// The spec as compact JSON (what records store).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Parses a spec; refuses unknown versions and malformed digests (FK0909).
    pub fn from_json(text: &str) -> Result<ChainSpec> {
        let spec: ChainSpec = serde_json::from_str(text).map_err(|e| FilterError::Spec {
            why: format!("not a filter chain spec: {e}"),
        })?;
        spec.check()?;
        Ok(spec)
    }

    /// The SHA-256 of [`ChainSpec::to_json`], lowercase hex: a short,
    /// stable name for the chain (for example to tag objects written
    /// through it, or to name a cache).
    pub fn digest(&self) -> String {
        hex::encode(Sha256::digest(self.to_json().as_bytes()))
    }

    fn check(&self) -> Result<()> {
        if self.version != SPEC_VERSION {
            return Err(FilterError::Spec {
                why: format!(
                    "chain spec version {} (this fukastor knows {SPEC_VERSION})",
                    self.version
                ),
            });
        }
        for f in &self.filters {
            let hex_ok = f.sha256.len() == 64
                && f.sha256
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
            if !hex_ok {
                return Err(FilterError::Spec {
                    why: format!("filter {:?}: {:?} is not a SHA-256", f.name, f.sha256),
                });
            }
            if !valid_name(&f.name) {
                return Err(FilterError::Spec {
                    why: format!("{:?} is not a valid filter name", f.name),
                });
            }
        }
        Ok(())
    }

    /// Finds each stage's script in `dir` — as `<sha256>.lua` (a
    /// content-addressed copy, what a store keeps) or else `<name>.lua` —
    /// and checks its SHA-256 against the spec (FK0909 on a mismatch: the
    /// script changed since the data was written).
    pub fn resolve(&self, dir: &Path) -> Result<Vec<Stage>> {
        self.check()?;
        let mut stages = Vec::with_capacity(self.filters.len());
        for f in &self.filters {
            let by_digest = dir.join(format!("{}.lua", f.sha256));
            let path = if by_digest.exists() {
                by_digest
            } else {
                dir.join(format!("{}.lua", f.name))
            };
            let source = std::fs::read(&path).map_err(|e| FilterError::Spec {
                why: format!("filter {:?}: {}", f.name, crate::error::io_at(&path, &e)),
            })?;
            let script = Script::new(f.name.clone(), source);
            if script.sha256() != f.sha256 {
                return Err(FilterError::Spec {
                    why: format!(
                        "filter {:?}: {} has SHA-256 {}, the chain was written with {}",
                        f.name,
                        path.display(),
                        script.sha256(),
                        f.sha256
                    ),
                });
            }
            stages.push(Stage {
                script,
                params: f.params.clone(),
            });
        }
        Ok(stages)
    }
}

/// Filter names: 1–64 characters from `A-Za-z0-9._-`, not starting with `.`.
pub(super) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

pub(super) fn spec_of(stages: &[Stage]) -> ChainSpec {
    ChainSpec {
        version: SPEC_VERSION,
        filters: stages
            .iter()
            .map(|s| FilterSpec {
                name: s.script.name().to_owned(),
                sha256: s.script.sha256().to_owned(),
                params: s.params.clone(),
            })
            .collect(),
    }
}
