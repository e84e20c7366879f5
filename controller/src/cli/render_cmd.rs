//! `palisade render`: the objects that would be created, as multi-document YAML in apply order.

use std::path::PathBuf;

use clap::Args;

use crate::api::{AgentSandbox, AgentSandboxPool};
use crate::render::template::merge;
use crate::render::{self, check_policy};

use super::documents::{Document, classify, collect_files, parse_values, read_text};
use super::facts_args::{FactsArgs, OfflineFactsArgs};

#[derive(Args, Debug)]
pub struct RenderArgs {
    /// Files or directories of AgentPolicy and AgentSandbox documents (YAML or JSON; `-` reads
    /// standard input). Directories contribute their .yaml, .yml and .json files.
    #[arg(
        short = 'f',
        long = "filename",
        value_name = "FILE_OR_DIR",
        required = true
    )]
    pub files: Vec<PathBuf>,
    /// Recurse into subdirectories of directories given with -f.
    #[arg(short = 'R', long)]
    pub recursive: bool,
    /// Namespace of the documents that name none (as `kubectl apply -n`).
    #[arg(short = 'n', long, value_name = "NAMESPACE", default_value = "default")]
    pub namespace: String,
    #[command(flatten)]
    pub facts: FactsArgs,
    #[command(flatten)]
    pub offline: OfflineFactsArgs,
}

/// Everything read from the inputs, validated.
pub struct Loaded {
    pub documents: Vec<Document>,
    pub notes: Vec<String>,
}

/// Reads and validates every document; all errors are collected. Documents without a namespace
/// are put in `default`.
pub fn load(files: &[PathBuf], recursive: bool) -> Result<Loaded, Vec<String>> {
    load_into(files, recursive, "default")
}

/// [`load`], putting documents that name no namespace in `namespace`.
pub fn load_into(
    files: &[PathBuf],
    recursive: bool,
    namespace: &str,
) -> Result<Loaded, Vec<String>> {
    let paths = collect_files(files, recursive).map_err(|e| vec![e])?;
    let mut documents = Vec::new();
    let mut notes = Vec::new();
    let mut errors = Vec::new();
    for path in paths {
        let text = match read_text(&path) {
            Ok(t) => t,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        let values = match parse_values(&path, &text) {
            Ok(v) => v,
            Err(e) => {
                errors.push(e.to_string());
                continue;
            }
        };
        for (origin, mut value) in values {
            if let Some(meta) = value
                .get_mut("metadata")
                .and_then(|m| m.as_object_mut())
                .filter(|m| !m.contains_key("namespace"))
            {
                meta.insert("namespace".into(), namespace.into());
            }
            match classify(origin, value) {
                Ok(Ok(doc)) => {
                    let problem = match &doc {
                        Document::Policy(o, p) => check_policy(&p.spec).err().map(|e| {
                            format!(
                                "{o}: AgentPolicy {}: {e}",
                                p.metadata.name.clone().unwrap_or_default()
                            )
                        }),
                        // A sandbox of a pool is checked once merged with the pool's template.
                        Document::Sandbox(_, s) if s.spec.pool_ref.is_some() => None,
                        Document::Pool(o, p) => {
                            let t = &p.spec.template;
                            let named_pool =
                                (t.pool_ref.is_some() || t.pool.is_some()).then(|| {
                                    "spec.template: a template cannot name a pool".to_string()
                                });
                            named_pool
                                .or_else(|| {
                                    crate::policy::validate::validate_sandbox(t)
                                        .err()
                                        .map(|e| format!("spec.template: {e}"))
                                })
                                .map(|e| {
                                    format!(
                                        "{o}: AgentSandboxPool {}: {e}",
                                        p.metadata.name.clone().unwrap_or_default()
                                    )
                                })
                        }
                        Document::Sandbox(o, s) => {
                            crate::policy::validate::validate_sandbox(&s.spec)
                                .err()
                                .map(|e| {
                                    format!(
                                        "{o}: AgentSandbox {}: {e}",
                                        s.metadata.name.clone().unwrap_or_default()
                                    )
                                })
                        }
                    };
                    match problem {
                        Some(p) => errors.push(p),
                        None => documents.push(doc),
                    }
                }
                Ok(Err(skipped)) => notes.push(format!(
                    "{}: skipping {} {} ({}): not a palisade.dev document",
                    skipped.origin, skipped.kind, skipped.name, skipped.api_version
                )),
                Err(e) => errors.push(e.to_string()),
            }
        }
    }
    if errors.is_empty() {
        Ok(Loaded { documents, notes })
    } else {
        Err(errors)
    }
}

pub fn run(args: RenderArgs) -> Result<(), String> {
    let loaded =
        load_into(&args.files, args.recursive, &args.namespace).map_err(|errs| errs.join("\n"))?;
    for n in &loaded.notes {
        eprintln!("note: {n}");
    }
    let mut facts = args.offline.apply(args.facts.facts());
    facts.gateway = args.offline.gateway.map(|address| {
        args.facts
            .gateway_placement("palisade-system")
            .at(address, None)
    });
    let mut out = String::new();
    let mut errors = Vec::new();
    for item in renderable(&loaded.documents) {
        let (origin, sandbox, header) = match item {
            Ok(r) => r,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        let sandbox = &sandbox;
        let ns = sandbox.metadata.namespace.clone().unwrap_or_default();
        let name = sandbox.metadata.name.clone().unwrap_or_default();
        let policy = loaded.documents.iter().find_map(|d| match d {
            Document::Policy(_, p)
                if p.metadata.name.as_deref() == Some(sandbox.spec.policy_ref.name.as_str())
                    && p.metadata.namespace.as_deref() == Some(ns.as_str()) =>
            {
                Some(p)
            }
            _ => None,
        });
        let Some(policy) = policy else {
            errors.push(format!(
                "{origin}: AgentSandbox {ns}/{name}: spec.policyRef.name: AgentPolicy {ns}/{} is not among the inputs",
                sandbox.spec.policy_ref.name
            ));
            continue;
        };
        match render::compile(policy, sandbox, &facts, 0) {
            Ok(plan) => {
                out.push_str(&format!(
                    "# AgentSandbox {ns}/{name} under AgentPolicy {ns}/{}\n",
                    sandbox.spec.policy_ref.name
                ));
                if let Some(note) = header {
                    out.push_str(&note);
                }
                out.push_str(&plan.report.as_comments());
                let paused = sandbox.spec.paused == Some(true);
                if paused {
                    out.push_str("# paused: the pod is not created; the workspace is kept\n");
                }
                for obj in plan
                    .objects()
                    .into_iter()
                    .filter(|o| !(paused && o["kind"] == "Pod"))
                {
                    out.push_str("---\n");
                    out.push_str(&serde_yaml::to_string(&obj).map_err(|e| e.to_string())?);
                }
            }
            Err(blocked) => errors.push(format!(
                "{origin}: AgentSandbox {ns}/{name} is blocked: {blocked}"
            )),
        }
    }
    super::output::emit(&out)?;
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("\n"))
    }
}

/// What `render` compiles, in input order: each sandbox (one of a pool with the pool's
/// template), and one warm sandbox of each pool, with a note for the header.
#[allow(clippy::type_complexity)]
pub fn renderable(
    documents: &[Document],
) -> Vec<Result<(&super::documents::Origin, AgentSandbox, Option<String>), String>> {
    documents
        .iter()
        .filter_map(|doc| match doc {
            Document::Policy(..) => None,
            Document::Sandbox(origin, sandbox) => Some(match of_pool(documents, sandbox) {
                Ok(Some((view, note))) => Ok((origin, view, Some(note))),
                Ok(None) => Ok((origin, (**sandbox).clone(), None)),
                Err(e) => Err(format!("{origin}: {e}")),
            }),
            Document::Pool(origin, pool) => {
                let (view, note) = warm_of(pool);
                Some(Ok((origin, view, Some(note))))
            }
        })
        .collect()
}

/// A sandbox of a pool (`poolRef`) as it would start cold: the pool's template (among the
/// inputs) with its own fields on top. `None` for a sandbox of no pool.
fn of_pool(
    documents: &[Document],
    sandbox: &AgentSandbox,
) -> Result<Option<(AgentSandbox, String)>, String> {
    let Some(pool_ref) = &sandbox.spec.pool_ref else {
        return Ok(None);
    };
    let ns = sandbox.metadata.namespace.clone().unwrap_or_default();
    let name = sandbox.metadata.name.clone().unwrap_or_default();
    let pool = documents
        .iter()
        .find_map(|d| match d {
            Document::Pool(_, p)
                if p.metadata.name.as_deref() == Some(pool_ref.name.as_str())
                    && p.metadata.namespace.as_deref() == Some(ns.as_str()) =>
            {
                Some(p)
            }
            _ => None,
        })
        .ok_or_else(|| {
            format!(
                "AgentSandbox {ns}/{name}: spec.poolRef.name: AgentSandboxPool {ns}/{} is not among the inputs",
                pool_ref.name
            )
        })?;
    let merged = merge(&pool.spec.template, &sandbox.spec)
        .map_err(|e| format!("AgentSandbox {ns}/{name}: {e}"))?;
    let note = if merged.custom.is_empty() {
        format!(
            "# of pool {}: takes a ready warm sandbox (its objects then keep the warm sandbox's name), else starts cold with these\n",
            pool_ref.name
        )
    } else {
        format!(
            "# of pool {}: sets {} beyond the template, so starts cold with these\n",
            pool_ref.name,
            merged.custom.join(", ")
        )
    };
    let mut view = sandbox.clone();
    view.spec = merged.spec;
    Ok(Some((view, note)))
}

/// One warm sandbox of a pool (its name is generated: `<pool>-xxxxx` stands for it).
fn warm_of(pool: &AgentSandboxPool) -> (AgentSandbox, String) {
    let name = pool.metadata.name.clone().unwrap_or_default();
    let prefix: String = name.chars().take(40).collect();
    let mut view = AgentSandbox::new(
        &format!("{}-xxxxx", prefix.trim_end_matches(['-', '.'])),
        pool.spec.template.clone(),
    );
    view.metadata.namespace = pool.metadata.namespace.clone();
    let note = format!(
        "# one of the {} warm sandboxes of AgentSandboxPool {name} (names generated)\n",
        pool.spec.replicas
    );
    (view, note)
}
