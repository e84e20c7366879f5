//! Reading Palisade documents from files and directories, as kubectl does: multi-document
//! YAML, JSON, `-f DIR` (`.yaml`, `.yml`, `.json`), `-R` to recurse, `kind: List`.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::api::{API_VERSION, AgentPolicy, AgentSandbox, AgentSandboxPool, GROUP};

/// Where a document came from: file and 1-based position in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    pub file: PathBuf,
    pub index: usize,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}, document {}", self.file.display(), self.index)
    }
}

/// A document that cannot be used, with where and why.
#[derive(Debug, thiserror::Error)]
#[error("{origin}: {message}")]
pub struct DocumentError {
    pub origin: Origin,
    pub message: String,
}

/// A Palisade object read from a file.
#[derive(Clone, Debug)]
pub enum Document {
    Policy(Origin, Box<AgentPolicy>),
    Sandbox(Origin, Box<AgentSandbox>),
    Pool(Origin, Box<AgentSandboxPool>),
}

/// A document of another API group, passed over.
#[derive(Clone, Debug)]
pub struct Skipped {
    pub origin: Origin,
    pub api_version: String,
    pub kind: String,
    pub name: String,
}

/// The files named by `paths`: files as given, directories' `.yaml`/`.yml`/`.json` files in
/// name order (recursively with `recursive`).
pub fn collect_files(paths: &[PathBuf], recursive: bool) -> Result<Vec<PathBuf>, String> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            walk(p, recursive, &mut out).map_err(|e| format!("{}: {e}", p.display()))?;
        } else if p.exists() || p.as_os_str() == "-" {
            out.push(p.clone());
        } else {
            return Err(format!("{}: no such file or directory", p.display()));
        }
    }
    Ok(out)
}

fn walk(dir: &Path, recursive: bool, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    entries.sort();
    for e in entries {
        if e.is_dir() {
            if recursive {
                walk(&e, recursive, out)?;
            }
        } else if matches!(
            e.extension().and_then(|x| x.to_str()),
            Some("yaml" | "yml" | "json")
        ) {
            out.push(e);
        }
    }
    Ok(())
}

/// Reads a file (or `-` for standard input).
pub fn read_text(path: &Path) -> Result<String, String> {
    if path.as_os_str() == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
            .map_err(|e| format!("standard input: {e}"))?;
        return Ok(s);
    }
    std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// Splits a file's text into documents (JSON values). YAML and JSON alike; empty documents are
/// dropped; `kind: List` is flattened.
pub fn parse_values(file: &Path, text: &str) -> Result<Vec<(Origin, Value)>, DocumentError> {
    let mut out = Vec::new();
    let is_json = file.extension().and_then(|x| x.to_str()) == Some("json");
    let raw: Vec<Result<Value, String>> = if is_json {
        let stream = serde_json::Deserializer::from_str(text).into_iter::<Value>();
        stream
            .map(|r| r.map_err(|e| format!("invalid JSON: {e}")))
            .collect()
    } else {
        // serde_yaml's document iterator repeats a syntax error forever: stop at the first.
        let mut docs = Vec::new();
        for doc in serde_yaml::Deserializer::from_str(text) {
            let v: Result<serde_yaml::Value, _> = serde::Deserialize::deserialize(doc);
            let parsed = v.map_err(|e| format!("invalid YAML: {e}")).and_then(|y| {
                serde_json::to_value(y).map_err(|e| format!("not representable as JSON: {e}"))
            });
            let failed = parsed.is_err();
            docs.push(parsed);
            if failed {
                break;
            }
        }
        docs
    };
    for (i, doc) in raw.into_iter().enumerate() {
        let origin = Origin {
            file: file.to_path_buf(),
            index: i + 1,
        };
        let value = doc.map_err(|message| DocumentError {
            origin: origin.clone(),
            message,
        })?;
        match value {
            Value::Null => {}
            Value::Object(ref m) if m.get("kind").and_then(Value::as_str) == Some("List") => {
                for item in m
                    .get("items")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    out.push((origin.clone(), item.clone()));
                }
            }
            v => out.push((origin, v)),
        }
    }
    Ok(out)
}

fn typed<T: DeserializeOwned>(origin: &Origin, value: Value) -> Result<T, DocumentError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        let message = if path == "." {
            inner
        } else {
            format!("{path}: {inner}")
        };
        DocumentError {
            origin: origin.clone(),
            message,
        }
    })
}

/// Classifies one document: a Palisade object, another group's object (skipped), or an error.
pub fn classify(origin: Origin, value: Value) -> Result<Result<Document, Skipped>, DocumentError> {
    let err = |message: String| DocumentError {
        origin: origin.clone(),
        message,
    };
    let Value::Object(map) = &value else {
        return Err(err(
            "not a Kubernetes object: expected a mapping with apiVersion and kind".into(),
        ));
    };
    let api_version = map
        .get("apiVersion")
        .and_then(Value::as_str)
        .ok_or_else(|| err("not a Kubernetes object: apiVersion is missing".into()))?;
    let kind = map
        .get("kind")
        .and_then(Value::as_str)
        .ok_or_else(|| err("not a Kubernetes object: kind is missing".into()))?;
    let name = map
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let group = api_version.split_once('/').map_or("", |(g, _)| g);
    if group != GROUP {
        return Ok(Err(Skipped {
            origin,
            api_version: api_version.into(),
            kind: kind.into(),
            name,
        }));
    }
    if api_version != API_VERSION {
        return Err(err(format!(
            "unknown version {api_version}: this palisade understands {API_VERSION}"
        )));
    }
    if !matches!(kind, "AgentPolicy" | "AgentSandbox" | "AgentSandboxPool") {
        return Err(err(format!(
            "unknown kind {kind} in {API_VERSION}: expected AgentPolicy, AgentSandbox or AgentSandboxPool"
        )));
    }
    for key in map.keys() {
        if !matches!(
            key.as_str(),
            "apiVersion" | "kind" | "metadata" | "spec" | "status"
        ) {
            return Err(err(format!(
                "unknown field `{key}` (expected apiVersion, kind, metadata, spec, status)"
            )));
        }
    }
    if name.is_empty() {
        return Err(err(format!("{kind}: metadata.name is required")));
    }
    if map.get("spec").is_none() {
        return Err(err(format!("{kind} {name}: spec is required")));
    }
    let doc = if kind == "AgentPolicy" {
        let mut p: AgentPolicy = typed(&origin, value)?;
        p.metadata.namespace.get_or_insert_with(|| "default".into());
        Document::Policy(origin, Box::new(p))
    } else if kind == "AgentSandboxPool" {
        let mut p: AgentSandboxPool = typed(&origin, value)?;
        p.metadata.namespace.get_or_insert_with(|| "default".into());
        Document::Pool(origin, Box::new(p))
    } else {
        let mut s: AgentSandbox = typed(&origin, value)?;
        s.metadata.namespace.get_or_insert_with(|| "default".into());
        Document::Sandbox(origin, Box::new(s))
    };
    Ok(Ok(doc))
}
