//! The Grafana dashboard shipped with the chart (`charts/palisade/dashboards/palisade.json`)
//! queries only series that the operator really exports, with labels those series really have;
//! its panels have unique ids and it selects its Prometheus through a `datasource` variable.
//! `docs/metrics.md` names every exported metric.
//!
//! The exported metrics are read from [`Metrics::new`]'s registry, so renaming a metric (or
//! dropping one) without updating the dashboard fails here rather than in someone's Grafana.
//! The registry's `gather` omits a labelled metric that has no series yet, so
//! [`exported_families`] records one observation on each; a new labelled metric must be
//! touched there too before the dashboard can use it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use palisade::gateway::audit::GatewayMetrics;
use palisade::ops::metrics::Metrics;
use prometheus::proto::MetricType;
use serde_json::Value;

/// Labels that the scrape adds to every series (Prometheus itself, or the Prometheus operator's
/// ServiceMonitor relabelling), which the dashboard may filter and group on.
const TARGET_LABELS: [&str; 7] = [
    "job",
    "instance",
    "namespace",
    "pod",
    "service",
    "container",
    "endpoint",
];

/// The metric families of the operator and of the egress gateway: name → (type, label names).
fn exported_families() -> BTreeMap<String, (MetricType, BTreeSet<String>)> {
    let metrics = Metrics::new();
    metrics.observe_reconcile("agentsandbox").finish();
    metrics.reconcile_error("agentsandbox", "Conflict");
    metrics.compile_error("PolicyInvalid");
    metrics.observe_start_latency(Duration::from_secs(1));
    metrics.pool_replicas.with_label_values(&["ns/pool"]).set(2);
    metrics.pool_ready.with_label_values(&["ns/pool"]).set(1);
    let gateway = GatewayMetrics::new();
    gateway.bytes.with_label_values(&["out"]).inc();
    gateway.decision_seconds.observe(0.001);
    metrics
        .registry
        .gather()
        .iter()
        .chain(gateway.registry.gather().iter())
        .map(|family| {
            let labels = family
                .get_metric()
                .iter()
                .flat_map(|metric| metric.get_label())
                .map(|label| label.name().to_owned())
                .collect();
            (family.name().to_owned(), (family.get_field_type(), labels))
        })
        .collect()
}

/// Every series name a query can select, with the labels it carries: a histogram `h` exports
/// `h_bucket` (with `le`), `h_sum` and `h_count`, never `h` itself.
fn exported_series() -> BTreeMap<String, BTreeSet<String>> {
    let mut series = BTreeMap::new();
    for (name, (kind, labels)) in exported_families() {
        match kind {
            MetricType::HISTOGRAM => {
                let mut bucket = labels.clone();
                bucket.insert("le".to_owned());
                series.insert(format!("{name}_bucket"), bucket);
                series.insert(format!("{name}_sum"), labels.clone());
                series.insert(format!("{name}_count"), labels);
            }
            MetricType::SUMMARY => {
                let mut quantiles = labels.clone();
                quantiles.insert("quantile".to_owned());
                series.insert(name.clone(), quantiles);
                series.insert(format!("{name}_sum"), labels.clone());
                series.insert(format!("{name}_count"), labels);
            }
            _ => {
                series.insert(name, labels);
            }
        }
    }
    series
}

fn repo_file(relative: &str) -> (PathBuf, String) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(relative);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()));
    (path, text)
}

fn dashboard() -> Value {
    let (path, text) = repo_file("charts/palisade/dashboards/palisade.json");
    serde_json::from_str(&text)
        .unwrap_or_else(|error| panic!("{} is not valid JSON: {error}", path.display()))
}

// ---------------------------------------------------------------------------------------------
// A small PromQL reader: enough to find the metric selectors and grouping labels of a query.

/// One `metric{matchers}` of a query.
#[derive(Debug, PartialEq, Eq)]
struct Selector {
    metric: String,
    /// Label names of the matchers, in order.
    labels: Vec<String>,
}

/// What a query reads.
#[derive(Debug, Default, PartialEq, Eq)]
struct Query {
    selectors: Vec<Selector>,
    /// Labels of `by`, `without`, `on`, `ignoring`, `group_left` and `group_right` lists.
    grouping: Vec<String>,
}

/// Identifiers that are part of the language, not metric names, even when no `(` follows.
const KEYWORDS: [&str; 24] = [
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "atan2",
    "inf",
    "nan",
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
    "start",
    "end",
];

/// Keywords followed by a parenthesised list of label names.
const GROUPING: [&str; 6] = [
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// Index just past the string literal that opens at `start`.
fn skip_string(chars: &[char], start: usize) -> usize {
    let quote = chars[start];
    let mut i = start + 1;
    while i < chars.len() && chars[i] != quote {
        if chars[i] == '\\' && quote != '`' {
            i += 1;
        }
        i += 1;
    }
    i + 1
}

/// Index of the first `close` at or after `start` that is outside string literals.
fn find_close(chars: &[char], start: usize, close: char, expr: &str) -> usize {
    let mut i = start;
    while i < chars.len() {
        match chars[i] {
            '"' | '\'' | '`' => i = skip_string(chars, i),
            c if c == close => return i,
            _ => i += 1,
        }
    }
    panic!("unbalanced {close:?} in {expr}");
}

fn skip_space(chars: &[char], mut i: usize) -> usize {
    while i < chars.len() && chars[i].is_whitespace() {
        i += 1;
    }
    i
}

/// Label names of the matchers `a="x", b=~"y"` between `{` and `}`.
fn matcher_labels(chars: &[char], expr: &str) -> Vec<String> {
    let mut labels = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        i = skip_space(chars, i);
        if i >= chars.len() {
            break;
        }
        let start = i;
        while i < chars.len() && is_ident(chars[i]) {
            i += 1;
        }
        assert!(i > start, "expected a label name in the matchers of {expr}");
        labels.push(chars[start..i].iter().collect());
        // Operator, value, then an optional comma.
        while i < chars.len() && !matches!(chars[i], '"' | '\'' | '`') {
            i += 1;
        }
        assert!(i < chars.len(), "matcher without a value in {expr}");
        i = skip_string(chars, i);
        i = skip_space(chars, i);
        if i < chars.len() {
            assert_eq!(chars[i], ',', "expected ',' between matchers in {expr}");
            i += 1;
        }
    }
    labels
}

/// Reads the metric selectors and grouping labels of `expr`.
fn parse(expr: &str) -> Query {
    let chars: Vec<char> = expr.chars().collect();
    let mut query = Query::default();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if matches!(c, '"' | '\'' | '`') {
            i = skip_string(&chars, i);
        } else if c == '[' {
            // Range or subquery: durations and Grafana variables, no metrics.
            i = find_close(&chars, i, ']', expr) + 1;
        } else if c == '{' {
            panic!("selector without a metric name in {expr}");
        } else if c == '$' {
            i += 1;
            while i < chars.len() && (is_ident(chars[i]) || chars[i] == '{' || chars[i] == '}') {
                i += 1;
            }
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            // Number or duration, e.g. 0.99, 1e-9, 5m.
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                let exponent = matches!(chars[i], 'e' | 'E');
                i += 1;
                if exponent && i < chars.len() && matches!(chars[i], '+' | '-') {
                    i += 1;
                }
            }
        } else if is_ident_start(c) {
            let start = i;
            while i < chars.len() && is_ident(chars[i]) {
                i += 1;
            }
            let ident: String = chars[start..i].iter().collect();
            let next = skip_space(&chars, i);
            let following = chars.get(next).copied();
            if GROUPING.contains(&ident.as_str()) {
                if following == Some('(') {
                    let close = find_close(&chars, next, ')', expr);
                    let list: String = chars[next + 1..close].iter().collect();
                    query.grouping.extend(
                        list.split(',')
                            .map(str::trim)
                            .filter(|label| !label.is_empty())
                            .map(str::to_owned),
                    );
                    i = close + 1;
                }
            } else if following == Some('(') || KEYWORDS.contains(&ident.as_str()) {
                // A function or an aggregation: its arguments are read as the loop goes on.
            } else {
                let mut labels = Vec::new();
                if following == Some('{') {
                    let close = find_close(&chars, next, '}', expr);
                    labels = matcher_labels(&chars[next + 1..close], expr);
                    i = close + 1;
                }
                query.selectors.push(Selector {
                    metric: ident,
                    labels,
                });
            }
        } else {
            i += 1;
        }
    }
    query
}

/// What is wrong with the metrics and labels `expr` uses, given the exported `series`.
fn problems(expr: &str, series: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    let query = parse(expr);
    let mut problems = Vec::new();
    let mut known_labels: BTreeSet<&str> = TARGET_LABELS.into_iter().collect();
    if query.selectors.is_empty() {
        problems.push(format!("reads no metric: {expr}"));
    }
    for selector in &query.selectors {
        let Some(labels) = series.get(&selector.metric) else {
            problems.push(format!(
                "uses {}, which the operator does not export: {expr}",
                selector.metric
            ));
            continue;
        };
        known_labels.extend(labels.iter().map(String::as_str));
        for label in &selector.labels {
            if !labels.contains(label) && !TARGET_LABELS.contains(&label.as_str()) {
                problems.push(format!(
                    "matches on label {label}, which {} does not have: {expr}",
                    selector.metric
                ));
            }
        }
    }
    for label in &query.grouping {
        if !known_labels.contains(label.as_str()) {
            problems.push(format!(
                "groups by {label}, which none of its metrics has: {expr}"
            ));
        }
    }
    problems
}

/// Every panel, rows and the panels nested in collapsed rows included.
fn all_panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(panels: &'a Value, out: &mut Vec<&'a Value>) {
        for panel in panels.as_array().into_iter().flatten() {
            out.push(panel);
            if let Some(nested) = panel.get("panels") {
                walk(nested, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

fn title(panel: &Value) -> &str {
    panel["title"].as_str().unwrap_or("(untitled)")
}

/// Each PromQL query of the dashboard, with where it is.
fn queries(dashboard: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for panel in all_panels(dashboard) {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap_or_default();
            out.push((format!("panel {:?}", title(panel)), expr.to_owned()));
        }
    }
    for variable in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|variable| variable["type"] == "query")
    {
        let query = variable["query"]["query"]
            .as_str()
            .or_else(|| variable["query"].as_str())
            .unwrap_or_default();
        // label_values(selector, label) reads `selector`; label_values(label) reads no metric.
        let selector = query
            .strip_prefix("label_values(")
            .and_then(|rest| rest.rsplit_once(','))
            .map_or(query, |(selector, _label)| selector);
        out.push((
            format!("variable {}", variable["name"]),
            selector.to_owned(),
        ));
    }
    out
}

// ---------------------------------------------------------------------------------------------

#[test]
fn dashboard_uses_only_exported_metrics_and_labels() {
    let series = exported_series();
    let dashboard = dashboard();
    let queries = queries(&dashboard);
    assert!(queries.len() > 10, "too few queries found: {queries:?}");
    let mut wrong = Vec::new();
    let mut used = BTreeSet::new();
    for (place, expr) in &queries {
        assert!(!expr.trim().is_empty(), "{place} has an empty query");
        wrong.extend(
            problems(expr, &series)
                .into_iter()
                .map(|problem| format!("{place} {problem}")),
        );
        used.extend(parse(expr).selectors.into_iter().map(|s| s.metric));
    }
    assert!(
        wrong.is_empty(),
        "the dashboard does not match the operator's metrics:\n  {}\nexported series: {:?}",
        wrong.join("\n  "),
        series.keys().collect::<Vec<_>>()
    );
    // Every family of the operator shows up somewhere on the dashboard.
    for (name, (kind, _)) in exported_families() {
        let shown = used.iter().any(|metric| {
            metric == &name
                || (kind == MetricType::HISTOGRAM
                    && metric
                        .strip_prefix(name.as_str())
                        .is_some_and(|suffix| ["_bucket", "_sum", "_count"].contains(&suffix)))
        });
        assert!(shown, "{name} is exported but on no panel of the dashboard");
    }
}

#[test]
fn dashboard_has_unique_panel_ids_and_a_datasource_variable() {
    let dashboard = dashboard();
    assert_eq!(dashboard["uid"], "palisade-operator");
    assert_eq!(dashboard["title"], "Palisade operator");
    assert!(
        dashboard["schemaVersion"].as_u64().is_some_and(|v| v >= 36),
        "schemaVersion {}",
        dashboard["schemaVersion"]
    );

    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("templating.list");
    let datasource = variables
        .iter()
        .find(|variable| variable["type"] == "datasource")
        .expect("a datasource variable");
    assert_eq!(datasource["name"], "datasource");
    assert_eq!(datasource["query"], "prometheus");
    let mut names = BTreeSet::new();
    for variable in variables {
        let name = variable["name"].as_str().expect("variable name");
        assert!(names.insert(name), "variable {name} defined twice");
    }

    let mut ids = BTreeSet::new();
    let panels = all_panels(&dashboard);
    assert!(!panels.is_empty());
    for panel in panels {
        let id = panel["id"]
            .as_u64()
            .unwrap_or_else(|| panic!("panel {:?} has no numeric id", title(panel)));
        assert!(ids.insert(id), "panel id {id} used twice");
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(
            panel["datasource"]["uid"],
            "${datasource}",
            "panel {:?} does not use the datasource variable",
            title(panel)
        );
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {:?} has no query", title(panel));
        let mut ref_ids = BTreeSet::new();
        for target in targets {
            assert_eq!(target["datasource"]["uid"], "${datasource}");
            let ref_id = target["refId"].as_str().expect("refId");
            assert!(
                ref_ids.insert(ref_id),
                "refId {ref_id} twice in panel {:?}",
                title(panel)
            );
        }
    }
}

#[test]
fn metrics_doc_names_every_metric() {
    let (path, doc) = repo_file("docs/metrics.md");
    for name in exported_families().keys() {
        assert!(
            doc.contains(&format!("`{name}`")),
            "{} does not document {name}",
            path.display()
        );
    }
    assert!(doc.contains("charts/palisade/dashboards/palisade.json"));
}

#[test]
fn reader_finds_selectors_and_grouping_labels() {
    let query = parse(
        r#"histogram_quantile(0.99, sum by (le, controller) (rate(palisade_reconcile_duration_seconds_bucket{namespace=~"$namespace", job=~"a,}b"}[$__rate_interval]))) / clamp_min(sum(x:y{a!="1"} offset 5m), 1e-9) or vector(0)"#,
    );
    assert_eq!(
        query,
        Query {
            selectors: vec![
                Selector {
                    metric: "palisade_reconcile_duration_seconds_bucket".into(),
                    labels: vec!["namespace".into(), "job".into()],
                },
                Selector {
                    metric: "x:y".into(),
                    labels: vec!["a".into()],
                },
            ],
            grouping: vec!["le".into(), "controller".into()],
        }
    );
}

#[test]
fn unknown_metrics_and_labels_are_reported() {
    let series = exported_series();
    let ok = r#"sum by (phase) (palisade_sandboxes{namespace=~"$namespace", phase="Blocked"})"#;
    assert_eq!(problems(ok, &series), Vec::<String>::new());
    for wrong in [
        "sum(rate(palisade_sandbox_starts_total[5m]))",
        // A histogram exports _bucket, _sum and _count, not its bare name.
        "rate(palisade_reconcile_duration_seconds[5m])",
        "palisade_reconcile_total_bucket",
        "process_resident_memory_bytes",
        r#"palisade_sandboxes{state="Blocked"}"#,
        "sum by (reason) (rate(palisade_reconcile_total[5m]))",
        r#"palisade_reconcile_total{le="1"}"#,
        "vector(1)",
    ] {
        assert!(
            !problems(wrong, &series).is_empty(),
            "{wrong} should be refused"
        );
    }
}
