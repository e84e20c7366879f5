//! `palisade policy check` and `palisade policy import`.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde_json::Value;

use crate::api::report::EnforcementReport;
use crate::api::{AgentPolicy, AgentPolicySpec};
use crate::mxc;
use crate::render::explain::explain;

use super::documents::{Document, classify, parse_values, read_text};

#[derive(Subcommand, Debug)]
pub enum PolicyCommand {
    /// Validate a policy and print what each field becomes on Kubernetes, and what is added,
    /// narrowed, not applicable or not enforced. Accepts an AgentPolicy, a bare MXC
    /// SandboxPolicy, or an MXC ContainerConfig document.
    Check(CheckArgs),
    /// Turn an MXC document (SandboxPolicy or ContainerConfig) into an AgentPolicy manifest.
    Import(ImportArgs),
}

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// The policy file (`-` for standard input).
    pub file: PathBuf,
}

#[derive(Args, Debug)]
pub struct ImportArgs {
    /// The MXC JSON document (`-` for standard input).
    pub file: PathBuf,
    /// Name of the AgentPolicy to create.
    #[arg(long)]
    pub name: String,
    /// Namespace of the AgentPolicy (omitted: none, so kubectl uses its current namespace).
    #[arg(long)]
    pub namespace: Option<String>,
}

/// A policy read from a file: either an AgentPolicy or an imported MXC document.
pub enum Loaded {
    Agent(Box<AgentPolicy>),
    Mxc(Box<mxc::Imported>),
}

pub fn load(file: &std::path::Path) -> Result<Loaded, String> {
    let text = read_text(file)?;
    let docs = parse_values(file, &text).map_err(|e| e.to_string())?;
    let [(origin, value)] = docs.as_slice() else {
        return Err(format!(
            "{}: expected exactly one document, found {}",
            file.display(),
            docs.len()
        ));
    };
    let is_k8s = value.get("apiVersion").is_some() || value.get("kind").is_some();
    if is_k8s {
        match classify(origin.clone(), value.clone()).map_err(|e| e.to_string())? {
            Ok(Document::Policy(_, p)) => Ok(Loaded::Agent(p)),
            Ok(Document::Sandbox(..)) => Err(format!(
                "{origin}: this is an AgentSandbox; policy check takes an AgentPolicy or an MXC document"
            )),
            Err(s) => Err(format!(
                "{origin}: {} {} is not a policy",
                s.api_version, s.kind
            )),
        }
    } else {
        mxc::import(value)
            .map(|i| Loaded::Mxc(Box::new(i)))
            .map_err(|r| format!("{origin}: refused: {r}"))
    }
}

fn write_report(out: &mut String, report: &EnforcementReport) {
    for (title, list) in [
        ("added", &report.added),
        ("narrowed", &report.narrowed),
        ("not applicable", &report.not_applicable),
        ("not enforced", &report.not_enforced),
    ] {
        out.push_str(&format!("\n{}:\n", title.to_uppercase()));
        if list.is_empty() {
            out.push_str("  (none)\n");
        }
        for e in list {
            out.push_str(&format!("  {}: {}\n", e.field, e.message));
        }
    }
}

fn merge(mut a: EnforcementReport, b: EnforcementReport) -> EnforcementReport {
    a.extend(b);
    a
}

pub fn run(cmd: PolicyCommand) -> Result<(), String> {
    match cmd {
        PolicyCommand::Check(args) => {
            let (spec, import_report, kind): (AgentPolicySpec, EnforcementReport, &str) =
                match load(&args.file)? {
                    Loaded::Agent(p) => (p.spec, EnforcementReport::default(), "AgentPolicy"),
                    Loaded::Mxc(i) => (
                        i.spec,
                        i.report,
                        if i.container_config {
                            "MXC ContainerConfig"
                        } else {
                            "MXC SandboxPolicy"
                        },
                    ),
                };
            let (mapping, report) =
                explain(&spec).map_err(|e| format!("{}: invalid: {e}", args.file.display()))?;
            let mut out = format!(
                "{}: valid {kind}\n\nFIELD -> ON KUBERNETES\n",
                args.file.display()
            );
            for m in mapping {
                out.push_str(&format!("  {} -> {}\n", m.field, m.becomes));
            }
            write_report(&mut out, &merge(import_report, report));
            super::output::emit(&out)
        }
        PolicyCommand::Import(args) => {
            let imported = match load(&args.file)? {
                Loaded::Mxc(i) => *i,
                Loaded::Agent(_) => {
                    return Err(format!(
                        "{}: already an AgentPolicy; nothing to import",
                        args.file.display()
                    ));
                }
            };
            let mut policy = AgentPolicy::new(&args.name, imported.spec.clone());
            policy.metadata.namespace = args.namespace.clone();
            let (_, report) = explain(&imported.spec).map_err(|e| e.to_string())?;
            let report = merge(imported.report, report);
            let mut out = format!(
                "# Imported by palisade policy import from {}\n",
                args.file.display()
            );
            out.push_str(&report.as_comments());
            let mut value = serde_json::to_value(&policy).map_err(|e| e.to_string())?;
            if let Some(Value::Object(m)) = value.get_mut("metadata") {
                m.retain(|_, v| !v.is_null());
            }
            out.push_str(&serde_yaml::to_string(&value).map_err(|e| e.to_string())?);
            super::output::emit(&out)
        }
    }
}
