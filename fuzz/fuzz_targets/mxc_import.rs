//! `palisade policy import` on arbitrary bytes: the bytes are the MXC document file, read as
//! `policy_cmd::load` reads it (one document, not a Kubernetes object), then imported with
//! `palisade::mxc::import_with`, without and with the egress gateway (`policy import
//! --gateway`, which imports host names blocked under allow-all egress).
//!
//! Oracle, for every document that imports:
//! * the imported policy grants nothing the document does not grant: `never_grants_more` of
//!   controller/tests/mxc_corpus.rs, the corpus test's independent reading of the document
//!   (taken from the test file by build.rs);
//! * `policy import` can finish: `explain` accepts the spec, and the AgentPolicy manifest it
//!   prints reads back through `palisade render`'s reader as the same, valid policy.
//!
//! A violation panics, so libFuzzer reports it. No panic and no hang for any input.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use palisade::api::AgentPolicy;
use palisade::cli::documents::{Document, classify, parse_values};
use palisade::mxc;
use palisade::render::check_policy;
use palisade::render::explain::explain;
use serde_json::Value;

#[allow(dead_code, unused_imports, clippy::all)]
mod oracle {
    include!(concat!(env!("OUT_DIR"), "/mxc_oracle.rs"));
}

fn import(file: &Path, text: &str, options: mxc::ImportOptions) {
    // policy_cmd::load: exactly one document, and not a Kubernetes object.
    let Ok(docs) = parse_values(file, text) else {
        return;
    };
    let [(origin, doc)] = docs.as_slice() else {
        return;
    };
    if doc.get("apiVersion").is_some() || doc.get("kind").is_some() {
        return;
    }
    let Ok(imported) = mxc::import_with(doc, options) else {
        return;
    };

    let over = oracle::over_grants(doc, &imported.spec);
    assert!(
        over.is_empty(),
        "the imported policy grants more than the MXC document:\n  {}\ndocument: {doc}\nimported: {:?}",
        over.join("\n  "),
        imported.spec
    );

    if let Err(e) = explain(&imported.spec) {
        panic!("imported, but `policy import` fails in explain: {e}\ndocument: {doc}");
    }
    // The manifest `policy import` prints, read back as `palisade render` reads it.
    let policy = AgentPolicy::new("imported", imported.spec.clone());
    let mut value = serde_json::to_value(&policy).expect("AgentPolicy serializes");
    if let Some(Value::Object(m)) = value.get_mut("metadata") {
        m.retain(|_, v| !v.is_null());
    }
    let yaml = serde_yaml::to_string(&value).expect("AgentPolicy prints as YAML");
    let back = parse_values(Path::new("imported.yaml"), &yaml)
        .unwrap_or_else(|e| panic!("the printed manifest does not parse: {e}\n{yaml}"));
    let [(o, v)] = back.as_slice() else {
        panic!("the printed manifest is not one document\n{yaml}");
    };
    match classify(o.clone(), v.clone()) {
        Ok(Ok(Document::Policy(_, p))) => {
            assert_eq!(
                p.spec, imported.spec,
                "{origin}: the printed manifest reads back as another policy\n{yaml}"
            );
            if let Err(e) = check_policy(&p.spec) {
                panic!("the printed manifest is not a valid AgentPolicy: {e}\n{yaml}");
            }
        }
        Ok(Ok(Document::Sandbox(..))) => panic!("the printed manifest reads as an AgentSandbox"),
        Ok(Ok(Document::Pool(..))) => panic!("the printed manifest reads as an AgentSandboxPool"),
        Ok(Err(s)) => panic!("the printed manifest is skipped as {}", s.api_version),
        Err(e) => panic!("the printed manifest is refused: {e}\n{yaml}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // MXC documents are JSON files; `policy import` reads other names as YAML.
    for gateway in [false, true] {
        let options = mxc::ImportOptions { gateway };
        import(Path::new("policy.json"), text, options);
        import(Path::new("policy.yaml"), text, options);
    }
});
