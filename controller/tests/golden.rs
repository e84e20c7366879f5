//! Golden tests: `palisade render` of each example is compared with the checked-in output in
//! tests/golden/. Regenerate with `make golden` (PALISADE_UPDATE_GOLDEN=1) and review the diff.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn render(args: &[&str]) -> (String, String, bool) {
    let out = Command::new(env!("CARGO_BIN_EXE_palisade"))
        .current_dir(root())
        .arg("render")
        .args(args)
        .output()
        .expect("run palisade");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status.success(),
    )
}

fn check_golden(name: &str, actual: &str) {
    let path = root().join("tests/golden").join(name);
    if std::env::var_os("PALISADE_UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).expect("write golden file");
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("{} is missing: run `make golden`", path.display()));
    assert!(
        expected == actual,
        "{name} is stale: run `make golden` and review the diff\n--- expected\n{expected}\n--- actual\n{actual}"
    );
}

#[test]
fn each_example_renders_to_its_golden_output() {
    let examples = [
        "no-network.yaml",
        "coding-agent.yaml",
        "kata-agent.yaml",
        "package-registry.yaml",
        "agent-pool.yaml",
    ];
    for ex in examples {
        // Domain names need a backend: the egress gateway at a ClusterIP.
        let (stdout, stderr, ok) = render(&[
            "-f",
            &format!("examples/{ex}"),
            "--gateway",
            "10.96.0.50:3128",
        ]);
        assert!(ok, "render of {ex} failed: {stderr}");
        check_golden(&ex.replace(".yaml", ".out.yaml"), &stdout);
    }
}

#[test]
fn the_examples_directory_renders_with_notes_for_other_groups() {
    let (stdout, stderr, ok) = render(&["-f", "examples/", "--gateway", "10.96.0.50:3128"]);
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains("skipping RuntimeClass gvisor (node.k8s.io/v1)"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("sandbox-policy.json"),
        "examples/mxc must not be read without -R: {stderr}"
    );
    for sandbox in ["coder", "offline-analyst", "browser", "pip-installer"] {
        assert!(
            stdout.contains(&format!("palisade.dev/sandbox: {sandbox}")),
            "{sandbox} missing"
        );
    }
    check_golden("examples-dir.out.yaml", &stdout);
}

#[test]
fn crds_are_up_to_date() {
    let expected = std::fs::read_to_string(root().join("crds/palisade.dev_crds.yaml"))
        .expect("crds/palisade.dev_crds.yaml");
    let actual = palisade::api::crd::crds_yaml().expect("crds serialize");
    assert!(
        expected == actual,
        "crds/ is stale: run `make crds` and commit the result"
    );
}

#[test]
fn the_chart_and_config_carry_the_same_crds() {
    let crds = std::fs::read_to_string(root().join("crds/palisade.dev_crds.yaml"))
        .expect("crds/palisade.dev_crds.yaml");
    for copy in [
        "charts/palisade/crds/palisade.dev_crds.yaml",
        "config/crd/palisade.dev_crds.yaml",
    ] {
        let text =
            std::fs::read_to_string(root().join(copy)).unwrap_or_else(|e| panic!("{copy}: {e}"));
        assert!(
            text == crds,
            "{copy} differs from crds/: run `make generate` and commit the result"
        );
    }
}

#[test]
fn a_paused_sandbox_renders_without_its_pod() {
    let dir = std::env::temp_dir().join(format!("palisade-paused-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let text = std::fs::read_to_string(root().join("examples/coding-agent.yaml")).expect("example");
    let file = dir.join("paused.yaml");
    std::fs::write(&file, format!("{text}  paused: true\n")).expect("write");
    let (stdout, stderr, ok) = render(&["-f", file.to_str().expect("utf-8 path")]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("kind: PersistentVolumeClaim") && stdout.contains("kind: NetworkPolicy")
    );
    assert!(!stdout.contains("kind: Pod\n"), "{stdout}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn documents_without_a_namespace_render_into_the_one_given() {
    let (stdout, stderr, ok) = render(&["-n", "agents", "-f", "examples/no-network.yaml"]);
    assert!(ok, "render -n failed: {stderr}");
    let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&stdout)
        .map(|d| serde::Deserialize::deserialize(d).expect("rendered YAML"))
        .filter(|d: &serde_yaml::Value| !d.is_null())
        .collect();
    assert!(
        docs.len() >= 3,
        "expected the sandbox's objects, got {stdout}"
    );
    for doc in &docs {
        assert_eq!(
            doc["metadata"]["namespace"].as_str(),
            Some("agents"),
            "{doc:?}"
        );
    }
}
