//! Seccomp under gVisor, for real: with `runsc --oci-seccomp` (the node's RuntimeClass
//! `gvisor-seccomp`, handler `runsc-seccomp`) gVisor applies the pod's profile, and an operator
//! told so (`--runtime-class gvisor=gvisor-seccomp --seccomp-applied gvisor`) runs a sandbox
//! with the pod's profile there and does not report the runtime as ignoring it. The profile is a
//! Localhost one on the node (the Security Profiles Operator, which `Generated` needs, is not
//! part of the e2e cluster). Runs with its own operator, in e2e/run.sh's last phase (the shared
//! operator is stopped), on the real node.

use std::time::Duration;

use palisade_e2e::node::{self, CLUSTER_RANGES};
use palisade_e2e::operator::{Operator, Options, lease_of, reset_lease};
use palisade_e2e::unique;
use serde_json::json;

#[tokio::test]
async fn gvisor_with_oci_seccomp_applies_the_blocked_syscalls() {
    let ns = unique("iso-oci-seccomp");
    let client = node::namespace(&ns, false).await;
    node::gvisor_seccomp_runtime_class(&client).await;
    reset_lease(&client, &ns).await;
    let (lease_ns, lease_name) = lease_of(&ns);
    let mut args = vec![
        "--runtime-class=gvisor=gvisor-seccomp".to_string(),
        "--seccomp-applied=gvisor".to_string(),
    ];
    args.extend(CLUSTER_RANGES.iter().map(|c| format!("--cluster-cidr={c}")));
    let mut op = Operator::start(&Options {
        name: "isolation-oci-seccomp".into(),
        namespace: Some(ns.clone()),
        lease_namespace: Some(lease_ns),
        lease_name: Some(lease_name),
        identity: Some("isolation-oci-seccomp".into()),
        args,
        ..Options::default()
    });
    let policy = node::deny_personality_policy("gvisor");
    let lines = node::run_checks(
        &client,
        &ns,
        "agent",
        policy,
        json!({}),
        &["kernel".to_string(), "syscall:personality".to_string()],
    )
    .await;
    let s = node::sandbox(&client, &ns, "agent").await;
    let st = s.status.expect("status");
    assert_eq!(st.runtime_class_name.as_deref(), Some("gvisor-seccomp"));
    let kernel = node::result_of(&lines, "kernel").expect("kernel");
    assert_eq!(kernel.result, "gvisor", "{kernel:?}");
    let call = node::result_of(&lines, "syscall:personality").expect("personality");
    assert_eq!(
        call.result, "eperm",
        "gVisor let a blocked call through: {call:?}"
    );
    // The runtime applies the profile: nothing says otherwise. (That a Localhost profile
    // blocks what `block` lists is the node's file, reported under `syscalls.block`.)
    let report = st.enforcement.unwrap_or_default();
    let runtime: Vec<_> = report
        .not_enforced
        .iter()
        .filter(|e| e.field == "syscalls")
        .collect();
    assert!(
        runtime.is_empty(),
        "the syscall filter is applied, yet the report says it is not: {runtime:?}"
    );
    assert!(
        report
            .not_enforced
            .iter()
            .any(|e| e.field == "syscalls.block"),
        "a Localhost profile's block list is the node's to enforce, and the report should say so: {report:?}"
    );
    node::cleanup(&client, &ns).await;
    op.terminate(Duration::from_secs(30)).await;
    op.assert_no_panic();
}
