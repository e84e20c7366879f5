//! The chart, the image and the crate name one version: a release bumps them together.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn the_chart_app_version_is_the_crate_version() {
    let chart: serde_yaml::Value =
        serde_yaml::from_str(&read("charts/palisade/Chart.yaml")).expect("Chart.yaml");
    assert_eq!(
        chart["appVersion"].as_str(),
        Some(env!("CARGO_PKG_VERSION")),
        "charts/palisade/Chart.yaml appVersion must be the crate version"
    );
}

#[test]
fn the_image_is_labelled_with_the_crate_version() {
    let dockerfile = read("Dockerfile");
    let version = dockerfile
        .lines()
        .find_map(|l| l.trim().strip_prefix("ARG VERSION="))
        .expect("Dockerfile: ARG VERSION=");
    assert_eq!(version, env!("CARGO_PKG_VERSION"));
}
