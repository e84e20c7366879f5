//! `palisade policy check` and `palisade policy import`.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde_json::Value;

use crate::api::report::EnforcementReport;
use crate::api::{AgentPolicy, AgentPolicySpec};
use crate::mxc;
use crate::render::explain::explain_with;
use crate::render::facts::{ClusterFacts, GatewayFacts};

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
    #[command(flatten)]
    pub target: TargetArgs,
}

/// What the target cluster can enforce, for MXC documents that need it.
#[derive(Args, Debug, Clone, Copy, Default)]
pub struct TargetArgs {
    /// The cluster runs the Palisade egress gateway (palisade gateway, the chart's
    /// gateway.enabled, with --fqdn-backend auto or gateway). Host names blocked under allow-all
    /// egress (MXC blockedHosts with defaultPolicy allow or allowOutbound) are then imported:
    /// all egress goes through the gateway, which refuses those names and the names under them;
    /// direct egress and DNS are dropped (reported as narrowed). Without it such a document is
    /// refused.
    #[arg(long)]
    pub gateway: bool,
}

impl TargetArgs {
    fn options(self) -> mxc::ImportOptions {
        mxc::ImportOptions {
            gateway: self.gateway,
        }
    }

    /// The cluster the report describes: `explain`'s (Cilium and the SeccompProfile CRD
    /// installed), plus the egress gateway when there is one. Its address is a stand-in: only
    /// the report is used.
    fn facts(self) -> ClusterFacts {
        let mut facts = ClusterFacts {
            cilium: true,
            seccomp_profile_crd: true,
            ..ClusterFacts::default()
        };
        if self.gateway {
            facts.gateway = Some(GatewayFacts {
                address: GATEWAY_STAND_IN,
                namespace_labels: BTreeMap::from([(
                    "kubernetes.io/metadata.name".to_string(),
                    "palisade-system".to_string(),
                )]),
                pod_labels: BTreeMap::from([(
                    "app.kubernetes.io/name".to_string(),
                    "palisade-gateway".to_string(),
                )]),
                target_port: 3128,
                key: None,
            });
        }
        facts
    }
}

/// The egress gateway's address in the report of `--gateway` (its Service's ClusterIP is not
/// known offline).
const GATEWAY_STAND_IN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 3128);

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
    #[command(flatten)]
    pub target: TargetArgs,
}

/// A policy read from a file: either an AgentPolicy or an imported MXC document.
pub enum Loaded {
    Agent(Box<AgentPolicy>),
    Mxc(Box<mxc::Imported>),
}

pub fn load(file: &std::path::Path, options: mxc::ImportOptions) -> Result<Loaded, String> {
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
            Ok(Document::Pool(..)) => Err(format!(
                "{origin}: this is an AgentSandboxPool; policy check takes an AgentPolicy or an MXC document"
            )),
            Err(s) => Err(format!(
                "{origin}: {} {} is not a policy",
                s.api_version, s.kind
            )),
        }
    } else {
        mxc::import_with(value, options)
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

/// The import's report, then the compiler's. The compiler's entry for a field the import
/// already reports in the same list (a host name blocked under allow-all, which both explain)
/// is left out; the stand-in gateway address is named as what it stands for.
fn merge(mut a: EnforcementReport, mut b: EnforcementReport) -> EnforcementReport {
    for (mine, theirs) in [
        (&a.added, &mut b.added),
        (&a.narrowed, &mut b.narrowed),
        (&a.not_applicable, &mut b.not_applicable),
        (&a.not_enforced, &mut b.not_enforced),
    ] {
        theirs.retain(|e| !mine.iter().any(|m| m.field == e.field));
        for e in theirs.iter_mut() {
            e.message = e
                .message
                .replace(&GATEWAY_STAND_IN.to_string(), "its Service address");
        }
    }
    a.extend(b);
    a
}

pub fn run(cmd: PolicyCommand) -> Result<(), String> {
    match cmd {
        PolicyCommand::Check(args) => {
            let (spec, import_report, kind): (AgentPolicySpec, EnforcementReport, &str) =
                match load(&args.file, args.target.options())? {
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
            let (mapping, report) = explain_with(&spec, &args.target.facts())
                .map_err(|e| format!("{}: invalid: {e}", args.file.display()))?;
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
            let imported = match load(&args.file, args.target.options())? {
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
            let (_, report) =
                explain_with(&imported.spec, &args.target.facts()).map_err(|e| e.to_string())?;
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
