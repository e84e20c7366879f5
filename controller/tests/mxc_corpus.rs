//! The MXC compatibility corpus: the 33 example documents of Microsoft's Execution Containers
//! (tests/mxc-corpus, all full ContainerConfig documents, schema 0.6 to 0.8) through
//! `palisade::mxc::import` and through the `palisade policy check` / `policy import` CLI.
//!
//! * `CORPUS` states, for every file, the expected outcome: a refusal (field and message
//!   substrings) or the exact grants of the imported AgentPolicy; for a document only the egress
//!   gateway can enforce (host names blocked under allow-all egress), a refusal without it and
//!   the grants with it (`ImportOptions { gateway: true }`, `policy import --gateway`), checked
//!   by compiling the import with the gateway as a cluster fact.
//! * `never_grants_more` is a property computed from the raw MXC JSON, independently of the
//!   importer: the imported policy grants nothing the document does not grant (paths, egress
//!   rules, blocked hosts, DNS, ingress, proxies, time limits, runtime, capabilities, ui).
//! * Documents the corpus lacks (bare SandboxPolicy documents, blocked hosts the allowed hosts
//!   may reach, malformed or huge timeouts, directional ingress allow, proxies) are written inline.
//!
//! The analysis behind the table is in the MXC import notes (sections 2 and 3); rows where the
//! library differs from those notes say so.

use std::collections::BTreeSet;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use palisade::api::AgentPolicy;
use palisade::api::policy::{
    AgentPolicySpec, Clipboard, DefaultAction, DnsMode, EgressPeer, EgressRule, PortRule, Runtime,
};
use palisade::api::report::EnforcementReport;
use palisade::mxc::{self, ImportOptions, Imported};
use serde_json::{Value, json};

const CORPUS_SIZE: usize = 33;

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/mxc-corpus")
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// The `.json` file names of the corpus, sorted.
fn corpus_files() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(corpus_dir())
        .expect("read tests/mxc-corpus")
        .map(|e| e.expect("directory entry").file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".json"))
        .collect();
    names.sort();
    names
}

fn load(name: &str) -> Value {
    let path = corpus_dir().join(name);
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parse {}: {e}", path.display()))
}

// ---------------------------------------------------------------------------------------------
// The expectation table
// ---------------------------------------------------------------------------------------------

/// One egress rule: its destinations (`cidr`, `cidr except a,b`, `fqdn`, or `*` for an omitted
/// `to`) and its ports (`tcp/443`, `udp/8000-8010`, `any`); no ports = every protocol and port.
type Rule = (&'static [&'static str], &'static [&'static str]);

/// The expected AgentPolicy of an imported document.
#[derive(Clone, Copy, Debug)]
struct Expect {
    /// `filesystem.readwritePaths`, as a set.
    rw: &'static [&'static str],
    /// `filesystem.readonlyPaths`, as a set.
    ro: &'static [&'static str],
    /// `filesystem.deniedPaths`, as a set.
    denied: &'static [&'static str],
    /// Effective `network.egress.default`.
    egress_default: DefaultAction,
    /// `network.egress.allow`, as a multiset of rules.
    allow: &'static [Rule],
    /// `network.egress.deny`, as a multiset of rules.
    deny: &'static [Rule],
    /// `network.ingress` `(default, hostLoopback)` when the policy has an ingress section.
    ingress: Option<(Option<DefaultAction>, Option<DefaultAction>)>,
    /// Sources (`cidr` strings) of `network.ingress.allow`, as a set; empty = no ingress rule.
    ingress_from: &'static [&'static str],
    /// `timeoutMs`.
    timeout_ms: Option<i64>,
    /// `isolation.runtime: kata` (VM containments); otherwise no isolation section (gVisor).
    kata: bool,
    /// `network.dns`; `None` = unset (`auto`).
    dns: Option<DnsMode>,
    /// `runtimeConfig.networkProxy`.
    proxy: Option<&'static str>,
    /// `ui` as `(allowWindows, clipboard)`, when the policy has a ui section.
    ui: Option<(Option<bool>, Option<Clipboard>)>,
    /// Entries the importer's report must contain: `na:FIELD` (not applicable) or
    /// `narrowed:FIELD`.
    report: &'static [&'static str],
    /// Host names blocked under allow-all egress, which only the egress gateway enforces (an
    /// import with the gateway). The policy is then in the legacy form (`allowOutbound: true`,
    /// `blockedHosts`), and egress and ingress are compared as the compiler reads that form.
    blocked_names: &'static [&'static str],
}

/// No filesystem grant, no egress, no ingress, no DNS, no timeout, default runtime.
const NOTHING: Expect = Expect {
    rw: &[],
    ro: &[],
    denied: &[],
    egress_default: DefaultAction::Deny,
    allow: &[],
    deny: &[],
    ingress: None,
    ingress_from: &[],
    timeout_ms: None,
    kata: false,
    dns: Some(DnsMode::None),
    proxy: None,
    ui: None,
    report: &[],
    blocked_names: &[],
};

#[derive(Clone, Copy, Debug)]
enum Outcome {
    /// Refused: substrings of the refusal's field and message.
    Refused(&'static str, &'static str),
    Imported(Expect),
    /// Refused without the egress gateway (substrings of the refusal's field and message; the
    /// message must point to `--gateway`), imported as this with it.
    NeedsGateway(&'static str, &'static str, Expect),
}
use Outcome::{Imported as Imports, NeedsGateway, Refused};

/// The importer's options: without and with the egress gateway.
const WITHOUT_GATEWAY: ImportOptions = ImportOptions { gateway: false };
const WITH_GATEWAY: ImportOptions = ImportOptions { gateway: true };

const DENY: DefaultAction = DefaultAction::Deny;
const ALLOW: DefaultAction = DefaultAction::Allow;

/// Every corpus document and its expected outcome.
const CORPUS: &[(&str, Outcome)] = &[
    // No network section: legacy format, default block.
    (
        "01_hello_world.json",
        Imports(Expect {
            report: &["na:containment", "na:process"],
            ..NOTHING
        }),
    ),
    // Windows readwrite paths cannot be granted in a Linux pod.
    (
        "02_filesystem_access.json",
        Refused("filesystem.readwritePaths[0]", "Windows path"),
    ),
    // Block + allowedHosts = an allowlist (no ports = every port, as in MXC). The host name needs
    // DNS: dns stays auto (the compiler reports it as added). `internetClient` is not a grant.
    (
        "03_network_restricted.json",
        Imports(Expect {
            allow: &[(&["api.github.com"], &[]), (&["140.82.121.0/24"], &[])],
            dns: None,
            timeout_ms: Some(30000),
            report: &[
                "na:network.enforcementMode",
                "na:processContainer.capabilities",
            ],
            ..NOTHING
        }),
    ),
    (
        "04_combined_restrictions.json",
        Refused("filesystem.readwritePaths[0]", "Windows path"),
    ),
    (
        "05_custom_python.json",
        Refused("filesystem.readonlyPaths[0]", "Windows path"),
    ),
    // defaultPolicy allow: allow-all egress, as written.
    (
        "06_network_capabilities_only.json",
        Imports(Expect {
            egress_default: ALLOW,
            dns: None,
            timeout_ms: Some(30000),
            report: &["na:network.enforcementMode"],
            ..NOTHING
        }),
    ),
    (
        "07_test_delete.json",
        Refused("filesystem.readwritePaths[0]", "Windows path"),
    ),
    (
        "08_pwsh.json",
        Refused("filesystem.readwritePaths[0]", "Windows path"),
    ),
    // windows_sandbox is hardware-VM isolation: Kata.
    (
        "09_windows_sandbox_hello_world.json",
        Imports(Expect {
            kata: true,
            timeout_ms: Some(60000),
            report: &["na:containment"],
            ..NOTHING
        }),
    ),
    (
        "10_windows_sandbox_network_isolated.json",
        Imports(Expect {
            kata: true,
            timeout_ms: Some(30000),
            report: &["na:containment"],
            ..NOTHING
        }),
    ),
    // The legacy localhost proxy becomes runtimeConfig.networkProxy: a proxy on the pod's own
    // loopback, no direct egress at all.
    (
        "11_localhost_proxy_processcontainer.json",
        Imports(Expect {
            proxy: Some("http://127.0.0.1:8080"),
            timeout_ms: Some(45000),
            report: &["na:processContainer.capabilities", "na:containment"],
            ..NOTHING
        }),
    ),
    (
        "11_lxc_hello_world.json",
        Imports(Expect {
            report: &["na:lxc", "na:lifecycle"],
            ..NOTHING
        }),
    ),
    // MXC's built-in test proxy does not exist on Kubernetes: no proxy, egress stays denied.
    (
        "12_builtin_test_proxy_processcontainer.json",
        Imports(Expect {
            timeout_ms: Some(45000),
            report: &[
                "na:network.proxy.builtinTestServer",
                "na:processContainer.capabilities",
            ],
            ..NOTHING
        }),
    ),
    // deniedPaths `/etc/shadow` is a file; Palisade masks directories, and a pod whose image has
    // a file there fails to start (fails closed, never readable). Reported as narrowed, as every
    // imported POSIX denied path is.
    (
        "12_lxc_filesystem_access.json",
        Imports(Expect {
            rw: &["/mnt/output"],
            ro: &["/mnt/shared"],
            denied: &["/etc/shadow"],
            report: &["na:lxc", "narrowed:filesystem.deniedPaths[0]"],
            ..NOTHING
        }),
    ),
    (
        "13_lxc_network_restricted.json",
        Imports(Expect {
            allow: &[(&["api.github.com"], &[])],
            dns: None,
            report: &["na:network.enforcementMode"],
            ..NOTHING
        }),
    ),
    (
        "15_mac_hello_world.json",
        Imports(Expect {
            rw: &["/tmp"],
            timeout_ms: Some(10000),
            ..NOTHING
        }),
    ),
    (
        "16_mac_deny_network.json",
        Imports(Expect {
            rw: &["/tmp"],
            timeout_ms: Some(10000),
            ..NOTHING
        }),
    ),
    (
        "17_mac_deny_filesystem.json",
        Imports(Expect {
            rw: &["/tmp"],
            denied: &["/Users"],
            timeout_ms: Some(10000),
            report: &["narrowed:filesystem.deniedPaths[0]"],
            ..NOTHING
        }),
    ),
    (
        "18_mac_filesystem_access.json",
        Imports(Expect {
            rw: &["/tmp"],
            denied: &["/Users"],
            timeout_ms: Some(15000),
            report: &["narrowed:filesystem.deniedPaths[0]"],
            ..NOTHING
        }),
    ),
    (
        "19_mac_network_restricted.json",
        Imports(Expect {
            rw: &["/tmp"],
            timeout_ms: Some(30000),
            ..NOTHING
        }),
    ),
    (
        "20_mac_combined_restrictions.json",
        Imports(Expect {
            rw: &["/tmp"],
            denied: &["/Users"],
            egress_default: ALLOW,
            dns: None,
            timeout_ms: Some(45000),
            report: &["narrowed:filesystem.deniedPaths[0]"],
            ..NOTHING
        }),
    ),
    (
        "21_mac_python_info.json",
        Imports(Expect {
            rw: &["/tmp"],
            ro: &["/opt/homebrew"],
            timeout_ms: Some(10000),
            ..NOTHING
        }),
    ),
    (
        "22_mac_network_allow_all.json",
        Imports(Expect {
            rw: &["/tmp"],
            egress_default: ALLOW,
            dns: None,
            timeout_ms: Some(30000),
            ..NOTHING
        }),
    ),
    // A host name cannot be cut out of allow-all egress by a NetworkPolicy; the egress gateway
    // can: all egress goes through it (no direct egress, no DNS), and it refuses the name and
    // the names under it.
    (
        "23_mac_blocked_hosts_unsupported.json",
        NeedsGateway(
            "network.blockedHosts[0]",
            "evil.example.com",
            Expect {
                egress_default: ALLOW,
                blocked_names: &["evil.example.com"],
                timeout_ms: Some(10000),
                report: &[
                    "narrowed:network.blockedHosts[0]",
                    "na:containment",
                    "na:process",
                ],
                ..NOTHING
            },
        ),
    ),
    (
        "24_mac_ui_disabled.json",
        Imports(Expect {
            timeout_ms: Some(10000),
            ui: Some((Some(false), None)),
            ..NOTHING
        }),
    ),
    // ui is carried over (MXC `all`); a pod has no desktop, so nothing is granted.
    (
        "25_mac_ui_clipboard_enabled.json",
        Imports(Expect {
            timeout_ms: Some(10000),
            ui: Some((Some(true), Some(Clipboard::All))),
            ..NOTHING
        }),
    ),
    (
        "26_mac_gui_access.json",
        Imports(Expect {
            ui: Some((Some(true), Some(Clipboard::All))),
            report: &["na:seatbelt"],
            ..NOTHING
        }),
    ),
    // `~` paths are relative to the host user's home.
    (
        "27_mac_terminal_sandboxed.json",
        Refused("filesystem.readwritePaths[1]", "home directory"),
    ),
    // No version: read as current with the legacy network format; no network = block.
    (
        "28_telemetry_enabled.json",
        Imports(Expect {
            report: &["na:version", "na:experimental"],
            ..NOTHING
        }),
    ),
    // 0.8 without network: directional deny defaults. captureDenials block is not an audit mode.
    (
        "29_capture_denials.json",
        Imports(Expect {
            report: &["na:processContainer.capabilities", "na:processContainer"],
            ..NOTHING
        }),
    ),
    // A loopback networkProxy is the pod's own loopback: no direct egress at all.
    (
        "30_mac_network_schema_v2.json",
        Imports(Expect {
            rw: &["/tmp"],
            ingress: Some((Some(DENY), Some(DENY))),
            proxy: Some("http://127.0.0.1:8080"),
            timeout_ms: Some(30000),
            ..NOTHING
        }),
    ),
    // CIDR-only allow: no DNS (MXC grants none of its own).
    (
        "30_network_0_8_directional.json",
        Imports(Expect {
            allow: &[(&["192.0.2.0/24"], &["tcp/443"])],
            ingress: Some((Some(DENY), Some(DENY))),
            ..NOTHING
        }),
    ),
    // wslc (a container in the WSL2 utility VM) is not a VM boundary of its own: default runtime.
    (
        "wslc_hello_world.json",
        Imports(Expect {
            report: &["na:experimental"],
            ..NOTHING
        }),
    ),
];

// ---------------------------------------------------------------------------------------------
// Canonical views of an AgentPolicy, for comparison
// ---------------------------------------------------------------------------------------------

fn port_str(p: &PortRule) -> String {
    let proto = serde_json::to_value(p.protocol.unwrap_or_default()).expect("protocol");
    let mut s = proto.as_str().expect("protocol string").to_string();
    if let Some(port) = p.port {
        s.push_str(&format!("/{port}"));
    }
    if let Some(end) = p.end_port {
        s.push_str(&format!("-{end}"));
    }
    s
}

fn peer_str(p: &EgressPeer) -> String {
    match (&p.cidr, &p.fqdn) {
        (Some(c), _) => match &p.except {
            Some(ex) => format!("{c} except {}", ex.join(",")),
            None => c.clone(),
        },
        (None, Some(f)) => f.clone(),
        (None, None) => "selector".into(),
    }
}

/// A rule as (sorted destinations, sorted ports).
fn rule_view(r: &EgressRule) -> (Vec<String>, Vec<String>) {
    let mut to: Vec<String> = match &r.to {
        None => vec!["*".into()],
        Some(peers) => peers.iter().map(peer_str).collect(),
    };
    to.sort();
    let mut ports: Vec<String> = r.ports.iter().flatten().map(port_str).collect();
    ports.sort();
    (to, ports)
}

fn rules_view(rules: &[EgressRule]) -> Vec<(Vec<String>, Vec<String>)> {
    let mut v: Vec<_> = rules.iter().map(rule_view).collect();
    v.sort();
    v
}

fn expected_rules(rules: &[Rule]) -> Vec<(Vec<String>, Vec<String>)> {
    let mut v: Vec<_> = rules
        .iter()
        .map(|(to, ports)| {
            let mut to: Vec<String> = to.iter().map(|s| s.to_string()).collect();
            to.sort();
            let mut ports: Vec<String> = ports.iter().map(|s| s.to_string()).collect();
            ports.sort();
            (to, ports)
        })
        .collect();
    v.sort();
    v
}

fn path_set(paths: &[palisade::api::policy::SandboxPath]) -> BTreeSet<String> {
    paths.iter().map(|p| p.0.clone()).collect()
}

fn str_set(s: &[&str]) -> BTreeSet<String> {
    s.iter().map(|s| s.to_string()).collect()
}

fn report_has(report: &EnforcementReport, tag: &str) -> bool {
    let (kind, field) = tag.split_once(':').expect("report tag kind:field");
    let list = match kind {
        "na" => &report.not_applicable,
        "narrowed" => &report.narrowed,
        "added" => &report.added,
        "not_enforced" => &report.not_enforced,
        other => panic!("unknown report kind {other}"),
    };
    list.iter().any(|e| e.field == field)
}

/// Differences between an imported spec and its expectation.
fn compare(imported: &Imported, e: &Expect) -> Vec<String> {
    let spec = &imported.spec;
    let mut out = Vec::new();
    let mut check = |what: &str, ok: bool, detail: String| {
        if !ok {
            out.push(format!("{what}: {detail}"));
        }
    };
    let fs = spec.filesystem.clone().unwrap_or_default();
    for (what, got, want) in [
        ("readwritePaths", &fs.readwrite_paths, e.rw),
        ("readonlyPaths", &fs.readonly_paths, e.ro),
        ("deniedPaths", &fs.denied_paths, e.denied),
    ] {
        let (got, want) = (path_set(got), str_set(want));
        check(what, got == want, format!("got {got:?}, want {want:?}"));
    }
    check(
        "filesystem",
        spec.filesystem.is_some() != (e.rw.is_empty() && e.ro.is_empty() && e.denied.is_empty()),
        format!("section presence: {:?}", spec.filesystem),
    );

    let net = spec.network.clone().unwrap_or_default();
    // The legacy form (host names blocked under allow-all, for the egress gateway) as the
    // compiler reads it; the directional form as written.
    let (egress, ingress, names) = if e.blocked_names.is_empty() {
        (
            net.egress.clone().unwrap_or_default(),
            net.ingress.clone(),
            Vec::new(),
        )
    } else {
        match palisade::render::check_policy(spec) {
            Ok(c) => (
                c.network.egress.clone(),
                c.network.ingress.clone(),
                c.network.blocked_names.clone(),
            ),
            Err(err) => {
                check("policy", false, format!("not a valid policy: {err}"));
                return out;
            }
        }
    };
    check(
        "blocked names (egress gateway)",
        names == e.blocked_names,
        format!("got {names:?}, want {:?}", e.blocked_names),
    );
    let default = egress.default.unwrap_or_default();
    check(
        "egress.default",
        default == e.egress_default,
        format!("got {default:?}, want {:?}", e.egress_default),
    );
    for (what, got, want) in [
        ("egress.allow", &egress.allow, e.allow),
        ("egress.deny", &egress.deny, e.deny),
    ] {
        let (got, want) = (rules_view(got), expected_rules(want));
        check(what, got == want, format!("got {got:?}, want {want:?}"));
    }
    check(
        "egress.allowMetadataAccess",
        egress.allow_metadata_access.is_none(),
        format!("{:?}", egress.allow_metadata_access),
    );
    check(
        "ingress",
        ingress.as_ref().map(|i| (i.default, i.host_loopback)) == e.ingress,
        format!("got {ingress:?}, want {:?}", e.ingress),
    );
    let from: BTreeSet<String> = ingress
        .iter()
        .flat_map(|i| i.allow.iter())
        .flat_map(|r| r.from.iter().flatten())
        .map(|p| p.cidr.clone().unwrap_or_else(|| "selector".into()))
        .collect();
    check(
        "ingress.allow",
        from == str_set(e.ingress_from),
        format!("got {from:?}, want {:?}", e.ingress_from),
    );
    check(
        "network.dns",
        net.dns == e.dns,
        format!("got {:?}, want {:?}", net.dns, e.dns),
    );
    check(
        "network legacy fields",
        if e.blocked_names.is_empty() {
            net.allow_outbound.is_none()
                && net.allow_local_network.is_none()
                && net.allowed_hosts.is_none()
                && net.blocked_hosts.is_none()
                && net.proxy.is_none()
        } else {
            // Only the legacy form carries names blocked under allow-all egress.
            net.allow_outbound == Some(true)
                && net.blocked_hosts.is_some()
                && net.egress.is_none()
                && net.ingress.is_none()
                && net.allowed_hosts.is_none()
                && net.proxy.is_none()
        },
        format!("{net:?}"),
    );
    let proxy = spec
        .runtime_config
        .as_ref()
        .and_then(|r| r.network_proxy.as_deref());
    check(
        "runtimeConfig.networkProxy",
        proxy == e.proxy,
        format!("got {proxy:?}, want {:?}", e.proxy),
    );
    check(
        "timeoutMs",
        spec.timeout_ms == e.timeout_ms,
        format!("got {:?}, want {:?}", spec.timeout_ms, e.timeout_ms),
    );
    let runtime = spec.isolation.as_ref().and_then(|i| i.runtime);
    check(
        "isolation",
        if e.kata {
            runtime == Some(Runtime::Kata)
        } else {
            spec.isolation.is_none()
        },
        format!("got {:?}, want kata={}", spec.isolation, e.kata),
    );
    let ui = spec.ui.as_ref().map(|u| (u.allow_windows, u.clipboard));
    check("ui", ui == e.ui, format!("got {ui:?}, want {:?}", e.ui));
    check(
        "ui.allowInputInjection",
        spec.ui
            .as_ref()
            .and_then(|u| u.allow_input_injection)
            .is_none(),
        format!("{:?}", spec.ui),
    );
    for tag in e.report {
        check(
            "report",
            report_has(&imported.report, tag),
            format!("missing {tag} in {:?}", imported.report),
        );
    }
    check(
        "container_config",
        imported.container_config,
        "every corpus document is a ContainerConfig".into(),
    );
    out
}

// ---------------------------------------------------------------------------------------------
// "Never grants more": an independent reading of the MXC document
// ---------------------------------------------------------------------------------------------

/// A POSIX path normalized the way MXC's Seatbelt backend does (`//`, `.` and a trailing `/`
/// collapsed); `None` for anything that is not an absolute POSIX path or has a `..` segment.
fn norm_posix(p: &str) -> Option<String> {
    if !p.starts_with('/') || p.contains('\\') {
        return None;
    }
    let segs: Vec<&str> = p
        .split('/')
        .filter(|s| !s.is_empty() && *s != ".")
        .collect();
    if segs.contains(&"..") {
        return None;
    }
    Some(format!("/{}", segs.join("/")))
}

fn doc_paths(doc: &Value, key: &str) -> BTreeSet<String> {
    doc["filesystem"][key]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .filter_map(norm_posix)
        .collect()
}

fn is_under(path: &str, dir: &str) -> bool {
    dir == "/" || path == dir || path.starts_with(&format!("{dir}/"))
}

/// A legacy host entry as MXC means it: an IP address is a single-address CIDR.
fn norm_host(h: &str) -> String {
    match h.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => format!("{ip}/32"),
        Ok(IpAddr::V6(ip)) => format!("{ip}/128"),
        Err(_) => h.to_string(),
    }
}

/// MXC `ports` as a set of `proto[/port[-end]]`; `None` = every protocol and port.
fn doc_ports(ports: &Value) -> Option<BTreeSet<String>> {
    let list = ports.as_array()?;
    Some(
        list.iter()
            .map(|p| {
                let mut s = p["protocol"].as_str().unwrap_or("any").to_string();
                if let Some(port) = p["port"].as_i64() {
                    s.push_str(&format!("/{port}"));
                }
                if let Some(end) = p["endPort"].as_i64() {
                    s.push_str(&format!("-{end}"));
                }
                s
            })
            .collect(),
    )
}

/// One destination the document allows: a host/CIDR (or `*` for an omitted `to`), the CIDRs it
/// excludes, and its ports.
struct DocAllow {
    dest: String,
    except: BTreeSet<String>,
    ports: Option<BTreeSet<String>>,
}

fn doc_allows(doc: &Value) -> Vec<DocAllow> {
    let net = &doc["network"];
    let mut out: Vec<DocAllow> = net["allowedHosts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(|h| DocAllow {
            dest: norm_host(h),
            except: BTreeSet::new(),
            ports: None,
        })
        .collect();
    for rule in net["egress"]["allow"].as_array().into_iter().flatten() {
        let ports = doc_ports(&rule["ports"]);
        match rule["to"].as_array() {
            None => out.push(DocAllow {
                dest: "*".into(),
                except: BTreeSet::new(),
                ports,
            }),
            Some(peers) => {
                for p in peers {
                    out.push(DocAllow {
                        dest: p["cidr"].as_str().unwrap_or("").to_string(),
                        except: p["except"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(Value::as_str)
                            .map(str::to_string)
                            .collect(),
                        ports: ports.clone(),
                    });
                }
            }
        }
    }
    out
}

/// The document's time limits in ms: `timeoutMs` (SandboxPolicy) and `process.timeout`
/// (ContainerConfig), whichever are present. A number (or a numeric string) is `Ok`; anything
/// else is `Err` with the raw value, which no import can be checked against. 0 = no limit and is
/// left out, as are absent and `null` values.
fn doc_timeouts(doc: &Value) -> Vec<Result<f64, String>> {
    [&doc["timeoutMs"], &doc["process"]["timeout"]]
        .into_iter()
        .filter(|t| !t.is_null())
        .map(|t| {
            t.as_f64()
                .or_else(|| t.as_str().and_then(|s| s.trim().parse().ok()))
                .filter(|ms: &f64| ms.is_finite())
                .ok_or_else(|| t.to_string())
        })
        .filter(|t| *t != Ok(0.0))
        .collect()
}

/// A CIDR or a bare IP address as `(address bits, address width, prefix length)`.
fn parse_cidr(s: &str) -> Option<(u128, u32, u32)> {
    let (ip, len) = match s.split_once('/') {
        Some((ip, len)) => (ip.parse::<IpAddr>().ok()?, Some(len.parse::<u32>().ok()?)),
        None => (s.parse::<IpAddr>().ok()?, None),
    };
    let (bits, width) = match ip {
        IpAddr::V4(a) => (u128::from(u32::from(a)), 32),
        IpAddr::V6(a) => (u128::from(a), 128),
    };
    let len = len.unwrap_or(width);
    (len <= width).then_some((bits, width, len))
}

/// Whether CIDR `outer` holds every address of CIDR `inner`.
fn cidr_contains(outer: (u128, u32, u32), inner: (u128, u32, u32)) -> bool {
    let ((ob, ow, ol), (ib, iw, il)) = (outer, inner);
    let shift = ow - ol;
    ow == iw && ol <= il && (shift >= 128 || ob >> shift == ib >> shift)
}

fn cidrs_overlap(a: (u128, u32, u32), b: (u128, u32, u32)) -> bool {
    cidr_contains(a, b) || cidr_contains(b, a)
}

/// Whether some host name matches both `a` and `b`, each a name or a `*.` wildcard, ignoring
/// case and a final dot. A wildcard is read at any depth (`*.example.com` matches
/// `a.b.example.com`), a superset of Palisade's one-level wildcards.
fn names_overlap(a: &str, b: &str) -> bool {
    let norm = |s: &str| s.trim_end_matches('.').to_ascii_lowercase();
    let (a, b) = (norm(a), norm(b));
    if a == "*" || b == "*" {
        return true;
    }
    let under = |name: &str, suffix: &str| name.ends_with(&format!(".{suffix}"));
    match (a.strip_prefix("*."), b.strip_prefix("*.")) {
        (None, None) => a == b,
        (Some(s), None) => under(&b, s),
        (None, Some(t)) => under(&a, t),
        (Some(s), Some(t)) => s == t || under(s, t) || under(t, s),
    }
}

/// The proxies the document names: `runtimeConfig.networkProxy`, and the legacy
/// `network.proxy` (`localhost: PORT` is `http://127.0.0.1:PORT`; `url`).
fn doc_proxies(doc: &Value) -> Vec<String> {
    let mut out: Vec<String> = doc["runtimeConfig"]["networkProxy"]
        .as_str()
        .map(str::to_string)
        .into_iter()
        .collect();
    let legacy = &doc["network"]["proxy"];
    if let Some(port) = legacy["localhost"].as_u64() {
        out.push(format!("http://127.0.0.1:{port}"));
    }
    if let Some(url) = legacy["url"].as_str() {
        out.push(url.to_string());
    }
    out
}

/// Whether a proxy URL's host is this machine's loopback (`localhost`, 127.0.0.0/8, `::1`): MXC
/// proxies listen there, and in a pod that is the pod itself. Any other host is direct egress.
fn loopback_proxy(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or_default();
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

const PRIVATE_RANGES: &[&str] = &["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"];

/// Every way `spec` grants more than the MXC document `doc`.
fn never_grants_more(doc: &Value, spec: &AgentPolicySpec) -> Vec<String> {
    let mut v = Vec::new();
    let net = &doc["network"];

    // Filesystem.
    let fs = spec.filesystem.clone().unwrap_or_default();
    let (doc_rw, doc_ro, doc_denied) = (
        doc_paths(doc, "readwritePaths"),
        doc_paths(doc, "readonlyPaths"),
        doc_paths(doc, "deniedPaths"),
    );
    for p in path_set(&fs.readwrite_paths) {
        if !doc_rw.contains(&p) {
            v.push(format!(
                "readwrite `{p}` is not a readwrite path of the document"
            ));
        }
        if doc_ro.contains(&p) {
            v.push(format!(
                "`{p}` is both readwrite and readonly in the document: MXC makes it readonly"
            ));
        }
    }
    for p in path_set(&fs.readonly_paths) {
        if !doc_ro.contains(&p) {
            v.push(format!(
                "readonly `{p}` is not a readonly path of the document"
            ));
        }
    }
    for p in path_set(&fs.readwrite_paths)
        .iter()
        .chain(&path_set(&fs.readonly_paths))
    {
        if let Some(d) = doc_denied.iter().find(|d| is_under(p, d)) {
            v.push(format!("`{p}` is granted but lies under denied `{d}`"));
        }
    }
    let denied = path_set(&fs.denied_paths);
    for d in &doc_denied {
        if !denied.contains(d) {
            v.push(format!("denied `{d}` of the document is not denied"));
        }
    }

    // Egress. The legacy form (`allowOutbound` with host names in `blockedHosts`, which the
    // egress gateway alone enforces: all egress through it) is read as the compiler reads it:
    // allow-all with the blocked addresses as deny rules, and the names the gateway refuses.
    let netr = spec.network.clone().unwrap_or_default();
    let legacy = netr.allow_outbound.is_some()
        || netr.allow_local_network.is_some()
        || netr.allowed_hosts.is_some()
        || netr.blocked_hosts.is_some();
    let (egress, ingress, gateway_blocked) = if legacy {
        match palisade::render::check_policy(spec) {
            Ok(c) => (
                c.network.egress.clone(),
                c.network.ingress.clone(),
                c.network.blocked_names.clone(),
            ),
            Err(e) => {
                v.push(format!(
                    "the legacy network form is not a valid policy: {e}"
                ));
                (Default::default(), None, Vec::new())
            }
        }
    } else {
        (
            netr.egress.clone().unwrap_or_default(),
            netr.ingress.clone(),
            Vec::new(),
        )
    };
    // Whether the gateway refuses host name `b` (and every name it stands for): a blocked
    // name refuses itself and the names under it, a `*.` wildcard its base too.
    let gateway_refuses = |b: &str| {
        let b = b.trim_end_matches('.').to_ascii_lowercase();
        let b = b.strip_prefix("*.").unwrap_or(&b);
        gateway_blocked.iter().any(|d| {
            let d = d.strip_prefix("*.").unwrap_or(d);
            b == d || b.ends_with(&format!(".{d}"))
        })
    };
    let doc_allow_all = net["defaultPolicy"] == "allow"
        || net["allowOutbound"] == true
        || net["egress"]["default"] == "allow";
    if egress.default == Some(DefaultAction::Allow) && !doc_allow_all {
        v.push("egress default allow, but the document does not allow all outbound".into());
    }
    if egress.allow_metadata_access == Some(true) {
        v.push("allowMetadataAccess: MXC has no such grant".into());
    }
    let allows = doc_allows(doc);
    for (i, rule) in egress.allow.iter().enumerate() {
        let got_ports: Option<BTreeSet<String>> = rule
            .ports
            .as_ref()
            .map(|ps| ps.iter().map(port_str).collect());
        let ports_ok = |want: &Option<BTreeSet<String>>| match (want, &got_ports) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(w), Some(g)) => g.is_subset(w),
        };
        let peers: Vec<Option<&EgressPeer>> = match &rule.to {
            None => vec![None],
            Some(ps) => ps.iter().map(Some).collect(),
        };
        for peer in peers {
            let granted = allows.iter().any(|a| {
                ports_ok(&a.ports)
                    && match peer {
                        None => a.dest == "*",
                        Some(p) if p.pod_selector.is_some() || p.namespace_selector.is_some() => {
                            false
                        }
                        Some(p) => {
                            let except: BTreeSet<String> =
                                p.except.iter().flatten().cloned().collect();
                            a.dest == "*"
                                || (p.cidr.as_deref() == Some(a.dest.as_str())
                                    && a.except.is_subset(&except))
                                || p.fqdn.as_deref() == Some(a.dest.as_str())
                        }
                    }
            });
            if !granted {
                v.push(format!(
                    "egress.allow[{i}] {} on {got_ports:?} is not allowed by the document",
                    peer.map_or("*".into(), peer_str)
                ));
            }
        }
    }
    let has_fqdn = egress
        .allow
        .iter()
        .flat_map(|r| r.to.iter().flatten())
        .any(|p| p.fqdn.is_some());
    if netr.dns != Some(DnsMode::None) && !has_fqdn && egress.default != Some(DefaultAction::Allow)
    {
        v.push(format!(
            "cluster DNS ({:?}) without a host name to resolve or allow-all egress: MXC grants no DNS",
            netr.dns
        ));
    }

    // Blocked hosts: in MXC a blocked host stays unreachable whatever else is allowed, so no
    // allow rule (nor an allow-all default) may reach one. A name is reached by a rule for every
    // destination, an fqdn that can match it, or any address peer (a CIDR of any length, a
    // selector): a name may resolve to any address, so no address allow is safe next to it. An
    // address or CIDR is reached, unless a deny rule for every port covers it, by any
    // overlapping allow.
    let default_allow = egress.default == Some(DefaultAction::Allow);
    let peer_cidr = |p: &EgressPeer| p.cidr.as_deref().and_then(parse_cidr);
    for b in net["blockedHosts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        match parse_cidr(b) {
            None => {
                if default_allow && !gateway_refuses(b) {
                    v.push(format!("egress default allow reaches blocked host `{b}`"));
                }
                for (i, rule) in egress.allow.iter().enumerate() {
                    let reaches = rule.to.as_ref().is_none_or(|peers| {
                        peers.iter().any(|p| match p.fqdn.as_deref() {
                            Some(f) => names_overlap(f, b),
                            None => true,
                        })
                    });
                    if reaches {
                        v.push(format!("egress.allow[{i}] reaches blocked host `{b}`"));
                    }
                }
            }
            Some(blocked) => {
                let reachable = default_allow
                    || egress.allow.iter().any(|r| {
                        r.to.as_ref().is_none_or(|peers| {
                            peers
                                .iter()
                                .any(|p| peer_cidr(p).is_some_and(|c| cidrs_overlap(c, blocked)))
                        })
                    });
                let denied = egress.deny.iter().any(|r| {
                    r.ports.is_none()
                        && r.to.as_ref().is_none_or(|peers| {
                            peers.iter().any(|p| {
                                p.except.is_none()
                                    && peer_cidr(p).is_some_and(|c| cidr_contains(c, blocked))
                            })
                        })
                });
                if reachable && !denied {
                    v.push(format!(
                        "blocked `{b}` is reachable through egress allow and no deny rule covers it"
                    ));
                }
            }
        }
    }

    // Ingress: MXC's inbound allow (directional `default: allow`, legacy allowLocalNetwork) is
    // the local network, read as the private ranges; never every source.
    let doc_inbound = net["ingress"]["default"] == "allow" || net["allowLocalNetwork"] == true;
    if let Some(ing) = &ingress {
        if ing.default == Some(DefaultAction::Allow) {
            v.push("ingress default allow: MXC's inbound allow is the private network only".into());
        }
        if ing.host_loopback == Some(DefaultAction::Allow)
            && net["ingress"]["hostLoopback"] != "allow"
        {
            v.push("ingress hostLoopback allow, but the document does not allow it".into());
        }
        if !ing.allow.is_empty() && !doc_inbound {
            v.push(
                "ingress allow rules, but the document has neither ingress allow nor allowLocalNetwork"
                    .into(),
            );
        }
        for r in &ing.allow {
            let private = r.from.as_ref().is_some_and(|from| {
                from.iter().all(|p| {
                    p.pod_selector.is_none()
                        && p.namespace_selector.is_none()
                        && p.cidr
                            .as_deref()
                            .is_some_and(|c| PRIVATE_RANGES.contains(&c))
                })
            });
            if !private {
                v.push(format!("ingress admits more than private ranges: {r:?}"));
            }
        }
    }

    // Legacy Palisade fields and the proxy: only the form for the egress gateway (allow-all
    // with blocked host names, read above) is expected.
    if netr.allowed_hosts.is_some() || (legacy && gateway_blocked.is_empty()) {
        v.push("legacy AgentPolicy grant fields are set: their meaning differs from MXC's".into());
    }
    if netr.proxy.is_some() && net.get("proxy").is_none() {
        v.push("network.proxy without a proxy in the document".into());
    }
    if let Some(p) = spec
        .runtime_config
        .as_ref()
        .and_then(|r| r.network_proxy.as_deref())
    {
        if !doc_proxies(doc).iter().any(|d| d == p) {
            v.push(format!(
                "runtimeConfig.networkProxy `{p}` is not the document's"
            ));
        }
        if !loopback_proxy(p) {
            v.push(format!(
                "runtimeConfig.networkProxy `{p}` is not on the loopback: direct egress to another host"
            ));
        }
    }

    // Timeout: a document with a time limit keeps one, never longer.
    for t in doc_timeouts(doc) {
        match (t, spec.timeout_ms) {
            (Err(raw), got) => v.push(format!(
                "the document's timeout {raw} is not a number of milliseconds; imported as {got:?}"
            )),
            (Ok(t), None) => v.push(format!("no timeout, but the document has {t} ms")),
            (Ok(t), Some(ms)) if ms <= 0 || ms as f64 > t => v.push(format!(
                "timeout {ms} ms is not within the document's {t} ms"
            )),
            (Ok(_), Some(_)) => {}
        }
    }

    // Identity, capabilities, runtime, extras.
    if let Some(p) = &spec.privileges
        && p.capabilities.as_ref().is_some_and(|c| !c.add.is_empty())
    {
        v.push(format!("capabilities added: {p:?}"));
    }
    if let Some(iso) = &spec.isolation
        && (iso.runtime == Some(Runtime::Runc) || iso.runtime_class_name.is_some())
    {
        v.push(format!("isolation weakened or overridden: {iso:?}"));
    }
    if spec.workspace.is_some() {
        v.push("a workspace volume the document does not grant".into());
    }
    if spec.identity.is_some() {
        v.push("identity settings (API token) the document does not grant".into());
    }
    if spec.resources.is_some() || spec.syscalls.is_some() || spec.images.is_some() {
        v.push("resources/syscalls/images set by the importer".into());
    }

    // UI (never granted in a pod, but never stated more loosely than the document).
    if let Some(ui) = &spec.ui {
        let doc_windows = doc["ui"]["disable"] == false || doc["ui"]["allowWindows"] == true;
        if ui.allow_windows == Some(true) && !doc_windows {
            v.push("ui.allowWindows without the document allowing windows".into());
        }
        if ui.allow_input_injection == Some(true)
            && doc["ui"]["injection"] != true
            && doc["ui"]["allowInputInjection"] != true
        {
            v.push("ui.allowInputInjection without the document allowing it".into());
        }
        if ui.clipboard.is_some_and(|c| c != Clipboard::None) && doc["ui"]["clipboard"].is_null() {
            v.push("ui.clipboard without the document granting a clipboard".into());
        }
    }
    v
}

// ---------------------------------------------------------------------------------------------
// The CLI
// ---------------------------------------------------------------------------------------------

struct Run {
    stdout: String,
    stderr: String,
    ok: bool,
}

fn palisade(args: &[&str], stdin: Option<&str>) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_palisade"))
        .current_dir(workspace_root())
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run palisade");
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(text.as_bytes())
            .expect("write stdin");
    }
    let out = child.wait_with_output().expect("wait for palisade");
    Run {
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        ok: out.status.success(),
    }
}

/// The manifest printed by `policy import`, without its `#` comment lines.
fn parse_import_output(stdout: &str) -> (Value, AgentPolicy) {
    let yaml: String = stdout
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect();
    let raw: Value = serde_yaml::from_str(&yaml)
        .unwrap_or_else(|e| panic!("import output is not YAML: {e}\n{stdout}"));
    let policy: AgentPolicy = serde_yaml::from_str(&yaml)
        .unwrap_or_else(|e| panic!("import output is not an AgentPolicy: {e}\n{stdout}"));
    (raw, policy)
}

/// Checks `policy check` and `policy import --name corpus` on one document (a file path or
/// `-` with `stdin`), with `--gateway` when `options` says so, against the library's outcome;
/// returns the failures.
fn cli_agrees(
    label: &str,
    file: &str,
    stdin: Option<&str>,
    doc: &Value,
    options: ImportOptions,
) -> Vec<String> {
    let mut v = Vec::new();
    let gateway: &[&str] = if options.gateway { &["--gateway"] } else { &[] };
    let check = palisade(&[&["policy", "check", file], gateway].concat(), stdin);
    let import = palisade(
        &[&["policy", "import", file, "--name", "corpus"], gateway].concat(),
        stdin,
    );
    match mxc::import_with(doc, options) {
        Ok(imported) => {
            if !check.ok {
                v.push(format!("{label}: policy check failed: {}", check.stderr));
            } else {
                let kind = if imported.container_config {
                    "valid MXC ContainerConfig"
                } else {
                    "valid MXC SandboxPolicy"
                };
                if !check.stdout.contains(kind) {
                    v.push(format!(
                        "{label}: check does not say `{kind}`:\n{}",
                        check.stdout
                    ));
                }
            }
            if !import.ok {
                v.push(format!("{label}: policy import failed: {}", import.stderr));
                return v;
            }
            if !import
                .stdout
                .starts_with("# Imported by palisade policy import")
            {
                v.push(format!("{label}: import output lacks its header comment"));
            }
            let (raw, policy) = parse_import_output(&import.stdout);
            if raw["apiVersion"] != "palisade.dev/v1alpha1" || raw["kind"] != "AgentPolicy" {
                v.push(format!("{label}: not an AgentPolicy: {raw}"));
            }
            if policy.metadata.name.as_deref() != Some("corpus")
                || policy.metadata.namespace.is_some()
            {
                v.push(format!("{label}: metadata {:?}", policy.metadata));
            }
            if policy.spec != imported.spec {
                v.push(format!(
                    "{label}: CLI spec differs from the library's\n  cli: {:?}\n  lib: {:?}",
                    policy.spec, imported.spec
                ));
            }
        }
        Err(refused) => {
            let reason = refused.to_string();
            for (cmd, run) in [("check", &check), ("import", &import)] {
                if run.ok {
                    v.push(format!(
                        "{label}: policy {cmd} succeeded on a refused document"
                    ));
                }
                if !run.stderr.contains("refused") || !run.stderr.contains(&reason) {
                    v.push(format!(
                        "{label}: policy {cmd} stderr lacks the refusal `{reason}`: {}",
                        run.stderr
                    ));
                }
                if !run.stdout.is_empty() {
                    v.push(format!(
                        "{label}: policy {cmd} printed on a refusal: {}",
                        run.stdout
                    ));
                }
            }
        }
    }
    v
}

// ---------------------------------------------------------------------------------------------
// Inline bare SandboxPolicy documents
// ---------------------------------------------------------------------------------------------

/// A valid 0.8 SandboxPolicy with directional network fields.
fn bare_directional() -> Value {
    json!({
        "version": "0.8.0-alpha",
        "filesystem": {
            "readwritePaths": ["/work/out/"],
            "readonlyPaths": ["/data", "/work/out"],
            "deniedPaths": ["/data/secrets"],
            "clearPolicyOnExit": true
        },
        "network": {
            "egress": {
                "default": "deny",
                "allow": [{
                    "to": [{"cidr": "203.0.113.0/24", "except": ["203.0.113.128/25"]}],
                    "ports": [
                        {"protocol": "tcp", "port": 443},
                        {"protocol": "udp", "port": 8000, "endPort": 8010}
                    ]
                }],
                "deny": [{"to": [{"cidr": "203.0.113.64/26"}]}]
            },
            "ingress": {"default": "deny", "hostLoopback": "deny"}
        },
        "ui": {"allowWindows": false, "clipboard": "none"},
        "timeoutMs": 60000
    })
}

/// A legacy SandboxPolicy: `allowOutbound` with `allowedHosts` ("ONLY these hosts"), and a
/// blocked address inside an allowed CIDR (a blocked name next to address allows is refused).
fn bare_legacy_allowlist() -> Value {
    json!({
        "version": "0.7.0-alpha",
        "network": {
            "allowOutbound": true,
            "allowedHosts": ["api.github.com", "140.82.112.0/20", "1.1.1.1"],
            "blockedHosts": ["140.82.113.3"]
        },
        "timeoutMs": 5000
    })
}

/// A legacy allowlist whose blocked address lies inside an allowed CIDR. (It blocks no name: a
/// name may resolve into the allowed CIDR, so a blocked name here is refused.)
fn bare_legacy_blocked_inside_allowed() -> Value {
    json!({
        "version": "0.7.0-alpha",
        "network": {
            "allowOutbound": true,
            "allowedHosts": ["*.example.com", "198.51.100.0/24"],
            "blockedHosts": ["198.51.100.7"]
        },
        "timeoutMs": 1500
    })
}

/// A 0.8 ContainerConfig whose inbound default is allow (the local network, in MXC).
fn directional_ingress_allow() -> Value {
    let mut doc = load("30_network_0_8_directional.json");
    doc["network"]["ingress"]["default"] = json!("allow");
    doc
}

/// A legacy ContainerConfig with a loopback proxy `url`.
fn legacy_proxy_url() -> Value {
    json!({
        "version": "0.7.0-alpha",
        "process": {"commandLine": "true", "timeout": 20000},
        "network": {"defaultPolicy": "block", "proxy": {"url": "http://[::1]:3128"}}
    })
}

/// Documents written here that must import (the corpus has no bare SandboxPolicy).
fn inline_documents() -> Vec<(&'static str, Value)> {
    vec![
        ("bare 0.8 directional", bare_directional()),
        ("bare legacy allowlist", bare_legacy_allowlist()),
        (
            "bare legacy blocked inside allowed",
            bare_legacy_blocked_inside_allowed(),
        ),
        ("0.8 ingress allow", directional_ingress_allow()),
        ("legacy proxy url", legacy_proxy_url()),
    ]
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[test]
fn corpus_has_33_documents_each_named_in_the_table() {
    let files = corpus_files();
    assert_eq!(
        files.len(),
        CORPUS_SIZE,
        "tests/mxc-corpus should hold {CORPUS_SIZE} .json documents, found {}: {files:?}",
        files.len()
    );
    let table: Vec<&str> = CORPUS.iter().map(|(n, _)| *n).collect();
    let unique: BTreeSet<&str> = table.iter().copied().collect();
    assert_eq!(
        unique.len(),
        table.len(),
        "a file is listed twice in CORPUS"
    );
    let files: BTreeSet<&str> = files.iter().map(String::as_str).collect();
    let untested: Vec<_> = files.difference(&unique).collect();
    let missing: Vec<_> = unique.difference(&files).collect();
    assert!(
        untested.is_empty() && missing.is_empty(),
        "CORPUS and tests/mxc-corpus disagree: files without a row {untested:?}, rows without a file {missing:?}"
    );
}

#[test]
fn corpus_outcomes_match_the_table() {
    let mut failures = Vec::new();
    for options in [WITHOUT_GATEWAY, WITH_GATEWAY] {
        for (name, outcome) in CORPUS {
            let doc = load(name);
            let label = format!("{name} (gateway: {})", options.gateway);
            // Without the gateway, a document that needs it is refused, and says what would
            // make it enforceable; with it, every other document imports as without.
            let want = match (outcome, options.gateway) {
                (NeedsGateway(field, message, _), false) => {
                    if let Err(r) = mxc::import_with(&doc, options)
                        && !r.message.contains("--gateway")
                    {
                        failures.push(format!(
                            "{label}: the refusal `{r}` does not name --gateway"
                        ));
                    }
                    Refused(field, message)
                }
                (NeedsGateway(_, _, e), true) => Imports(*e),
                (other, _) => *other,
            };
            match (want, mxc::import_with(&doc, options)) {
                (Outcome::Refused(field, message), Err(r)) => {
                    if !r.field.contains(field) || !r.message.contains(message) {
                        failures.push(format!(
                            "{label}: refused as `{r}`, want field ~ `{field}` and message ~ `{message}`"
                        ));
                    }
                }
                (Outcome::Refused(..), Ok(i)) => {
                    failures.push(format!("{label}: imported, want a refusal: {:?}", i.spec));
                }
                (Outcome::Imported(_), Err(r)) => {
                    failures.push(format!("{label}: refused `{r}`, want an import"));
                }
                (Outcome::Imported(e), Ok(i)) => {
                    failures.extend(compare(&i, &e).into_iter().map(|d| format!("{label}: {d}")));
                    if let (Imports(_), Ok(without)) = (outcome, mxc::import(&doc))
                        && without != i
                    {
                        failures.push(format!(
                            "{label}: the gateway changes an import that does not need it"
                        ));
                    }
                }
                (Outcome::NeedsGateway(..), _) => unreachable!("resolved above"),
            }
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn imports_never_grant_more_than_the_document() {
    let mut failures = Vec::new();
    // 33 corpus documents minus 7 refusals; the egress gateway takes one of them.
    for (options, want) in [(WITHOUT_GATEWAY, 26), (WITH_GATEWAY, 27)] {
        let mut imported = 0;
        for name in corpus_files() {
            let doc = load(&name);
            let Ok(i) = mxc::import_with(&doc, options) else {
                continue;
            };
            imported += 1;
            failures.extend(
                never_grants_more(&doc, &i.spec)
                    .into_iter()
                    .map(|d| format!("{name} (gateway: {}): {d}", options.gateway)),
            );
        }
        assert_eq!(
            imported, want,
            "number of imported corpus documents changed (gateway: {})",
            options.gateway
        );
        for (name, doc) in inline_documents() {
            match mxc::import_with(&doc, options) {
                Ok(i) => failures.extend(
                    never_grants_more(&doc, &i.spec)
                        .into_iter()
                        .map(|d| format!("{name} (gateway: {}): {d}", options.gateway)),
                ),
                Err(r) => failures.push(format!("{name}: refused `{r}`, want an import")),
            }
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

/// The property itself must catch over-grants, or a passing run proves nothing. Each widening
/// is checked against a document it exceeds, and must be caught by the part of the property
/// that models it (the failure contains the needle).
#[test]
fn never_grants_more_catches_over_grants() {
    let doc = load("30_network_0_8_directional.json");
    let base = mxc::import(&doc).expect("import").spec;
    assert!(never_grants_more(&doc, &base).is_empty());
    // A timeout grant only shows against a document that has one.
    let timed = json!({"version": "0.8.0", "timeoutMs": 1500});
    let timed_base = mxc::import(&timed).expect("import").spec;
    assert!(never_grants_more(&timed, &timed_base).is_empty());
    // What a wildcard allowlist grants; the blocked host documents below take some of it back.
    let allowlist = json!({
        "version": "0.7.0-alpha",
        "network": {
            "allowOutbound": true,
            "allowedHosts": ["*.example.com", "198.51.100.0/24"]
        }
    });
    let allowlist_base = mxc::import(&allowlist).expect("import").spec;
    assert!(never_grants_more(&allowlist, &allowlist_base).is_empty());
    let blocking = |blocked: &[&str]| {
        let mut d = allowlist.clone();
        d["network"]["blockedHosts"] = json!(blocked);
        d
    };
    let remote_proxy = json!({
        "version": "0.8.0",
        "runtimeConfig": {"networkProxy": "http://192.0.2.10:3128"}
    });
    // Allow-all with a blocked name and a blocked range, through the egress gateway.
    let gated = json!({
        "version": "0.7.0",
        "network": {"allowOutbound": true, "blockedHosts": ["evil.example.com", "203.0.113.0/24"]}
    });
    let gated_base = mxc::import_with(&gated, WITH_GATEWAY).expect("import").spec;
    assert!(never_grants_more(&gated, &gated_base).is_empty());
    let set_blocked = |hosts: Option<&[&str]>| -> Widen {
        let hosts = hosts.map(|h| h.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        Box::new(move |s| s.network.as_mut().unwrap().blocked_hosts = hosts.clone())
    };

    type Widen = Box<dyn Fn(&mut AgentPolicySpec)>;
    let set_egress_allow = |peer: EgressPeer| -> Widen {
        Box::new(move |s| {
            let e = s.network.as_mut().unwrap().egress.as_mut().unwrap();
            e.allow = vec![EgressRule {
                to: Some(vec![peer.clone()]),
                ports: None,
            }];
        })
    };
    let fqdn = |f: &str| EgressPeer {
        fqdn: Some(f.into()),
        ..Default::default()
    };
    let cidr = |c: &str| EgressPeer {
        cidr: Some(c.into()),
        ..Default::default()
    };
    let cases: Vec<(&str, Value, &AgentPolicySpec, &str, Widen)> = vec![
        (
            "readwrite path",
            doc.clone(),
            &base,
            "readwrite `/etc`",
            Box::new(|s| {
                s.filesystem.get_or_insert_default().readwrite_paths =
                    vec![palisade::api::policy::SandboxPath("/etc".into())];
            }),
        ),
        (
            "egress default",
            doc.clone(),
            &base,
            "egress default allow",
            Box::new(|s| {
                let e = s.network.as_mut().unwrap().egress.as_mut().unwrap();
                e.default = Some(DefaultAction::Allow);
            }),
        ),
        (
            "every port",
            doc.clone(),
            &base,
            "egress.allow[0]",
            Box::new(|s| {
                let e = s.network.as_mut().unwrap().egress.as_mut().unwrap();
                e.allow[0].ports = None;
            }),
        ),
        (
            "other destination",
            doc.clone(),
            &base,
            "egress.allow[0]",
            Box::new(|s| {
                let e = s.network.as_mut().unwrap().egress.as_mut().unwrap();
                e.allow[0].to.as_mut().unwrap()[0].cidr = Some("0.0.0.0/0".into());
            }),
        ),
        (
            "ingress",
            doc.clone(),
            &base,
            "ingress default allow",
            Box::new(|s| {
                let ing = s.network.as_mut().unwrap().ingress.as_mut().unwrap();
                ing.default = Some(DefaultAction::Allow);
            }),
        ),
        (
            "ingress from everywhere",
            directional_ingress_allow(),
            &base,
            "ingress admits more than private ranges",
            Box::new(|s| {
                let ing = s.network.as_mut().unwrap().ingress.as_mut().unwrap();
                ing.allow = vec![palisade::api::policy::IngressRule {
                    from: None,
                    ports: None,
                }];
            }),
        ),
        (
            "host loopback",
            doc.clone(),
            &base,
            "hostLoopback",
            Box::new(|s| {
                let ing = s.network.as_mut().unwrap().ingress.as_mut().unwrap();
                ing.host_loopback = Some(DefaultAction::Allow);
            }),
        ),
        (
            "dns",
            doc.clone(),
            &base,
            "cluster DNS",
            Box::new(|s| s.network.as_mut().unwrap().dns = Some(DnsMode::Cluster)),
        ),
        (
            "longer timeout",
            timed.clone(),
            &timed_base,
            "not within the document's 1500",
            Box::new(|s| s.timeout_ms = Some(2000)),
        ),
        (
            "no timeout",
            timed.clone(),
            &timed_base,
            "no timeout",
            Box::new(|s| s.timeout_ms = None),
        ),
        (
            "no timeout for a process timeout",
            json!({"version": "0.8.0", "process": {"commandLine": "true", "timeout": 1500}}),
            &timed_base,
            "no timeout",
            Box::new(|s| s.timeout_ms = None),
        ),
        (
            "any timeout for a fractional one",
            json!({"version": "0.8.0", "timeoutMs": 1500.5}),
            &timed_base,
            "no timeout",
            Box::new(|s| s.timeout_ms = None),
        ),
        (
            "any timeout for a negative one",
            json!({"version": "0.8.0", "process": {"commandLine": "true", "timeout": -1}}),
            &timed_base,
            "not within the document's -1",
            Box::new(|_| {}),
        ),
        (
            "any timeout for an unreadable one",
            json!({"version": "0.8.0", "timeoutMs": true}),
            &timed_base,
            "not a number of milliseconds",
            Box::new(|_| {}),
        ),
        (
            "blocked name under an allowed wildcard",
            blocking(&["evil.example.com"]),
            &allowlist_base,
            "egress.allow[0] reaches blocked host `evil.example.com`",
            Box::new(|_| {}),
        ),
        (
            "blocked name in another case",
            blocking(&["EVIL.example.com"]),
            &allowlist_base,
            "reaches blocked host `EVIL.example.com`",
            set_egress_allow(fqdn("evil.example.com")),
        ),
        (
            "blocked wildcard over an allowed name",
            blocking(&["*.example.com"]),
            &allowlist_base,
            "reaches blocked host `*.example.com`",
            set_egress_allow(fqdn("api.example.com")),
        ),
        (
            "blocked name behind a /0 allow",
            blocking(&["evil.example.org"]),
            &allowlist_base,
            "reaches blocked host `evil.example.org`",
            set_egress_allow(cidr("0.0.0.0/0")),
        ),
        (
            // What the importer used to produce: the name is outside the wildcard, but it may
            // resolve into the allowed CIDR.
            "blocked name next to an allowed CIDR",
            blocking(&["evil.example.org"]),
            &allowlist_base,
            "egress.allow[1] reaches blocked host `evil.example.org`",
            Box::new(|_| {}),
        ),
        (
            "blocked name behind a single-address allow",
            blocking(&["evil.example.org"]),
            &allowlist_base,
            "egress.allow[0] reaches blocked host `evil.example.org`",
            set_egress_allow(cidr("192.0.2.1/32")),
        ),
        (
            "blocked name behind an IPv6 allow",
            blocking(&["evil.example.org"]),
            &allowlist_base,
            "egress.allow[0] reaches blocked host `evil.example.org`",
            set_egress_allow(cidr("2001:db8::/32")),
        ),
        (
            "blocked name behind a selector allow",
            blocking(&["evil.example.org"]),
            &allowlist_base,
            "egress.allow[0] reaches blocked host `evil.example.org`",
            set_egress_allow(EgressPeer {
                pod_selector: Some(Default::default()),
                ..Default::default()
            }),
        ),
        (
            "blocked name behind allow-all",
            json!({"version": "0.7.0", "network": {"allowOutbound": true, "blockedHosts": ["evil.example.com"]}}),
            &allowlist_base,
            "egress default allow reaches blocked host",
            Box::new(|s| {
                let e = s.network.as_mut().unwrap().egress.as_mut().unwrap();
                e.allow.clear();
                e.default = Some(DefaultAction::Allow);
            }),
        ),
        (
            "blocked address inside an allowed CIDR",
            blocking(&["198.51.100.7"]),
            &allowlist_base,
            "blocked `198.51.100.7` is reachable",
            Box::new(|_| {}),
        ),
        (
            "blocked address denied on some ports only",
            blocking(&["198.51.100.7"]),
            &allowlist_base,
            "blocked `198.51.100.7` is reachable",
            Box::new(|s| {
                let e = s.network.as_mut().unwrap().egress.as_mut().unwrap();
                e.deny = vec![EgressRule {
                    to: Some(vec![EgressPeer {
                        cidr: Some("198.51.100.7/32".into()),
                        ..Default::default()
                    }]),
                    ports: Some(vec![PortRule {
                        port: Some(443),
                        ..Default::default()
                    }]),
                }];
            }),
        ),
        (
            "remote proxy",
            remote_proxy,
            &base,
            "not on the loopback",
            Box::new(|s| {
                s.runtime_config = Some(palisade::api::policy::RuntimeConfig {
                    network_proxy: Some("http://192.0.2.10:3128".into()),
                })
            }),
        ),
        (
            "proxy the document does not name",
            load("11_localhost_proxy_processcontainer.json"),
            &base,
            "is not the document's",
            Box::new(|s| {
                s.runtime_config = Some(palisade::api::policy::RuntimeConfig {
                    network_proxy: Some("http://127.0.0.1:9999".into()),
                })
            }),
        ),
        (
            "runc",
            doc.clone(),
            &base,
            "isolation weakened",
            Box::new(|s| {
                s.isolation = Some(palisade::api::policy::IsolationPolicy {
                    runtime: Some(Runtime::Runc),
                    runtime_class_name: None,
                })
            }),
        ),
        (
            "capability",
            doc.clone(),
            &base,
            "capabilities added",
            Box::new(|s| {
                s.privileges = Some(palisade::api::policy::PrivilegesPolicy {
                    capabilities: Some(palisade::api::policy::CapabilitiesPolicy {
                        add: vec![palisade::api::policy::Capability::NetBindService],
                    }),
                    ..Default::default()
                })
            }),
        ),
        (
            "gateway: another name blocked",
            gated.clone(),
            &gated_base,
            "egress default allow reaches blocked host `evil.example.com`",
            set_blocked(Some(&["203.0.113.0/24", "evil.example.org"])),
        ),
        (
            "gateway: only a name under the blocked one blocked",
            gated.clone(),
            &gated_base,
            "egress default allow reaches blocked host `evil.example.com`",
            set_blocked(Some(&["203.0.113.0/24", "a.evil.example.com"])),
        ),
        (
            "gateway: the blocked range dropped",
            gated.clone(),
            &gated_base,
            "blocked `203.0.113.0/24` is reachable",
            set_blocked(Some(&["evil.example.com"])),
        ),
        (
            "gateway: nothing blocked",
            gated.clone(),
            &gated_base,
            "legacy AgentPolicy grant fields",
            set_blocked(None),
        ),
        (
            "gateway: allow-all for a document that blocks by default",
            json!({"version": "0.7.0", "network": {"allowOutbound": false, "blockedHosts": ["evil.example.com"]}}),
            &gated_base,
            "egress default allow, but the document does not allow all outbound",
            Box::new(|_| {}),
        ),
        (
            "gateway: the local network without the document allowing it",
            gated.clone(),
            &gated_base,
            "ingress allow rules, but the document has neither",
            Box::new(|s| s.network.as_mut().unwrap().allow_local_network = Some(true)),
        ),
    ];
    let mut missed = Vec::new();
    for (what, against, start, needle, widen) in cases {
        let mut spec = start.clone();
        widen(&mut spec);
        let found = never_grants_more(&against, &spec);
        if !found.iter().any(|f| f.contains(needle)) {
            missed.push(format!(
                "the property misses {what} (want `{needle}`), found {found:?}"
            ));
        }
    }
    assert!(missed.is_empty(), "\n{}", missed.join("\n"));

    // The narrowings the importer makes pass: a deny rule for the blocked address, no proxy
    // for MXC's test proxy, private ingress sources for an ingress allow.
    for (name, doc) in [
        (
            "blocked inside allowed",
            bare_legacy_blocked_inside_allowed(),
        ),
        ("ingress allow", directional_ingress_allow()),
        (
            "test proxy",
            load("12_builtin_test_proxy_processcontainer.json"),
        ),
    ] {
        let spec = mxc::import(&doc).expect(name).spec;
        let found = never_grants_more(&doc, &spec);
        assert!(found.is_empty(), "{name}: {found:?}");
    }
}

#[test]
fn cli_check_and_import_agree_with_the_library() {
    let mut failures = Vec::new();
    for (options, want) in [(WITHOUT_GATEWAY, 7), (WITH_GATEWAY, 6)] {
        let mut refused = 0;
        for name in corpus_files() {
            let doc = load(&name);
            refused += usize::from(mxc::import_with(&doc, options).is_err());
            let path = corpus_dir().join(&name);
            failures.extend(cli_agrees(
                &name,
                path.to_str().expect("utf-8 path"),
                None,
                &doc,
                options,
            ));
        }
        for (name, doc) in inline_documents() {
            let text = serde_json::to_string_pretty(&doc).expect("json");
            failures.extend(cli_agrees(name, "-", Some(&text), &doc, options));
        }
        assert_eq!(
            refused, want,
            "number of refused corpus documents changed (gateway: {})",
            options.gateway
        );
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn bare_sandbox_policy_0_8_directional() {
    let i = mxc::import(&bare_directional()).unwrap_or_else(|r| panic!("refused: {r}"));
    assert!(!i.container_config);
    let e = Expect {
        // `/work/out` is both readwrite and readonly: MXC makes it readonly.
        rw: &[],
        ro: &["/data", "/work/out"],
        denied: &["/data/secrets"],
        allow: &[(
            &["203.0.113.0/24 except 203.0.113.128/25"],
            &["tcp/443", "udp/8000-8010"],
        )],
        deny: &[(&["203.0.113.64/26"], &[])],
        ingress: Some((Some(DENY), Some(DENY))),
        timeout_ms: Some(60000),
        ui: Some((Some(false), Some(Clipboard::None))),
        report: &[
            "na:filesystem.clearPolicyOnExit",
            "narrowed:filesystem.deniedPaths[0]",
        ],
        ..NOTHING
    };
    let mut diffs = compare(&i, &e);
    diffs.retain(|d| !d.starts_with("container_config"));
    assert!(diffs.is_empty(), "\n{}", diffs.join("\n"));
    assert_eq!(i.spec.version.as_deref(), Some("0.8.0-alpha"));
    assert_eq!(
        i.spec.filesystem.as_ref().unwrap().clear_policy_on_exit,
        None
    );

    // Without `/work/out` in readonlyPaths the trailing slash is normalized away and it is
    // writable.
    let mut doc = bare_directional();
    doc["filesystem"]["readonlyPaths"] = json!(["/data"]);
    let i = mxc::import(&doc).unwrap_or_else(|r| panic!("refused: {r}"));
    let fs = i.spec.filesystem.unwrap();
    assert_eq!(path_set(&fs.readwrite_paths), str_set(&["/work/out"]));
}

#[test]
fn bare_legacy_allow_outbound_with_allowed_hosts_becomes_an_allowlist() {
    let i = mxc::import(&bare_legacy_allowlist()).unwrap_or_else(|r| panic!("refused: {r}"));
    assert!(!i.container_config);
    let e = Expect {
        allow: &[
            (&["api.github.com"], &[]),
            (&["140.82.112.0/20"], &[]),
            (&["1.1.1.1/32"], &[]),
        ],
        // The blocked address inside the allowed CIDR becomes a deny rule.
        deny: &[(&["140.82.113.3/32"], &[])],
        // The host name needs DNS: auto (reported as added by the compiler).
        dns: None,
        timeout_ms: Some(5000),
        report: &["narrowed:network.allowOutbound"],
        ..NOTHING
    };
    let mut diffs = compare(&i, &e);
    diffs.retain(|d| !d.starts_with("container_config"));
    assert!(diffs.is_empty(), "\n{}", diffs.join("\n"));
    // Deny by default, stated or implied; never allow-all.
    let egress = i.spec.network.unwrap().egress.unwrap();
    assert_ne!(egress.default, Some(DefaultAction::Allow));

    // A blocked name next to the allowed addresses is refused: it may resolve into them.
    let mut named = bare_legacy_allowlist();
    named["network"]["blockedHosts"] = json!(["140.82.113.3", "evil.example.com"]);
    assert_refused(
        "blocked name next to allowed addresses",
        &named,
        "network.blockedHosts[1]",
        "may be reached through allowedHosts",
    );

    // Without allowedHosts, allowOutbound is allow-all.
    let doc = json!({"version": "0.7.0-alpha", "network": {"allowOutbound": true}});
    let i = mxc::import(&doc).unwrap_or_else(|r| panic!("refused: {r}"));
    let net = i.spec.network.unwrap();
    assert_eq!(net.egress.unwrap().default, Some(DefaultAction::Allow));
    assert!(i.report.narrowed.is_empty());
}

#[test]
fn bare_policy_mixing_legacy_and_directional_network_is_refused() {
    let doc = json!({
        "version": "0.8.0-alpha",
        "network": {"allowOutbound": true, "egress": {"default": "deny"}}
    });
    let r = mxc::import(&doc).expect_err("mixed network formats must be refused");
    assert_eq!(r.field, "network");
    assert!(r.message.contains("cannot be mixed"), "{r}");
}

// ---------------------------------------------------------------------------------------------
// Importer fixes, on inline documents
// ---------------------------------------------------------------------------------------------

/// Asserts that `doc` is refused on exactly `field` with `message` in the reason, by the library
/// and by the CLI.
fn assert_refused(label: &str, doc: &Value, field: &str, message: &str) {
    assert_refused_with(label, doc, field, message, WITHOUT_GATEWAY);
}

/// [`assert_refused`] with these importer options (and the CLI flags that give them).
fn assert_refused_with(
    label: &str,
    doc: &Value,
    field: &str,
    message: &str,
    options: ImportOptions,
) {
    match mxc::import_with(doc, options) {
        Ok(i) => panic!("{label}: imported, want a refusal: {:?}", i.spec),
        Err(r) => assert!(
            r.field == field && r.message.contains(message),
            "{label}: refused as `{r}`, want field `{field}` and message ~ `{message}`"
        ),
    }
    let text = serde_json::to_string(doc).expect("json");
    let failures = cli_agrees(label, "-", Some(&text), doc, options);
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

/// Asserts that `doc` imports as `e` (a ContainerConfig when it has `process`), grants nothing
/// more than the document, and that the CLI agrees; returns the import.
fn assert_imports(label: &str, doc: &Value, e: &Expect) -> Imported {
    assert_imports_with(label, doc, e, WITHOUT_GATEWAY)
}

/// [`assert_imports`] with these importer options (and the CLI flags that give them).
fn assert_imports_with(label: &str, doc: &Value, e: &Expect, options: ImportOptions) -> Imported {
    let i = mxc::import_with(doc, options).unwrap_or_else(|r| panic!("{label}: refused `{r}`"));
    let mut failures: Vec<String> = compare(&i, e)
        .into_iter()
        .filter(|d| !d.starts_with("container_config"))
        .chain(never_grants_more(doc, &i.spec))
        .map(|d| format!("{label}: {d}"))
        .collect();
    if i.container_config != doc.get("process").is_some() {
        failures.push(format!("{label}: container_config {}", i.container_config));
    }
    let text = serde_json::to_string(doc).expect("json");
    failures.extend(cli_agrees(label, "-", Some(&text), doc, options));
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
    i
}

/// The refusal of a blocked host name that the allowed hosts may reach.
const REACHABLE: &str = "may be reached through allowedHosts";

#[test]
fn blocked_host_matched_by_an_allowed_wildcard_is_refused() {
    // Bare legacy allowlist: the wildcard allow would reach the blocked name.
    let bare = json!({
        "version": "0.7.0-alpha",
        "network": {
            "allowOutbound": true,
            "allowedHosts": ["*.example.com"],
            "blockedHosts": ["evil.example.com"]
        }
    });
    assert_refused("bare wildcard", &bare, "network.blockedHosts[0]", REACHABLE);
    // ContainerConfig, block by default; a deeper name and a later index. The blocked address
    // before it is fine (a deny rule).
    let container = json!({
        "version": "0.6.0-alpha",
        "process": {"commandLine": "true", "timeout": 10000},
        "network": {
            "defaultPolicy": "block",
            "allowedHosts": ["api.github.com", "*.example.com"],
            "blockedHosts": ["192.0.2.1", "a.evil.example.com"]
        }
    });
    assert_refused(
        "container wildcard",
        &container,
        "network.blockedHosts[1]",
        REACHABLE,
    );
    // The same name allowed and blocked.
    let mut same = bare.clone();
    same["network"]["allowedHosts"] = json!(["evil.example.com"]);
    assert_refused("same name", &same, "network.blockedHosts[0]", REACHABLE);

    // A blocked name the wildcard does not match stays unreachable: imported, reported.
    let mut apart = bare.clone();
    apart["network"]["blockedHosts"] = json!(["example.org", "evil.example.net"]);
    let e = Expect {
        allow: &[(&["*.example.com"], &[])],
        dns: None,
        report: &[
            "narrowed:network.allowOutbound",
            "na:network.blockedHosts[0]",
            "na:network.blockedHosts[1]",
        ],
        ..NOTHING
    };
    assert_imports("blocked name outside the wildcard", &apart, &e);
    // A blocked address inside an allowed CIDR becomes a deny rule.
    let e = Expect {
        allow: &[(&["*.example.com"], &[]), (&["198.51.100.0/24"], &[])],
        deny: &[(&["198.51.100.7/32"], &[])],
        dns: None,
        timeout_ms: Some(1500),
        report: &["narrowed:network.allowOutbound"],
        ..NOTHING
    };
    assert_imports(
        "blocked address inside an allowed CIDR",
        &bare_legacy_blocked_inside_allowed(),
        &e,
    );
}

#[test]
fn blocked_host_name_next_to_an_allowed_address_is_refused() {
    // A name may resolve to any address: any address allow may reach it, whatever its size,
    // however unrelated the name looks, in either legacy document kind.
    let bare = |allowed: Value, blocked: Value| {
        json!({
            "version": "0.7.0-alpha",
            "network": {"allowOutbound": true, "allowedHosts": allowed, "blockedHosts": blocked}
        })
    };
    for (label, allowed) in [
        ("allowed CIDR", json!(["*.example.com", "198.51.100.0/24"])),
        ("allowed /32 CIDR", json!(["192.0.2.1/32"])),
        ("allowed bare IPv4 address", json!(["1.1.1.1"])),
        ("allowed IPv6 address", json!(["2001:db8::1"])),
        (
            "allowed IPv6 CIDR",
            json!(["api.github.com", "2001:db8::/32"]),
        ),
    ] {
        assert_refused(
            label,
            &bare(allowed, json!(["evil.example.org"])),
            "network.blockedHosts[0]",
            REACHABLE,
        );
    }
    // Blocked addresses before the name are deny rules; the name is refused at its index.
    assert_refused(
        "blocked name after blocked addresses",
        &bare(
            json!(["198.51.100.0/24"]),
            json!(["198.51.100.7", "2001:db8::1", "evil.example.org"]),
        ),
        "network.blockedHosts[2]",
        REACHABLE,
    );
    let container = json!({
        "version": "0.6.0-alpha",
        "process": {"commandLine": "true", "timeout": 10000},
        "network": {
            "defaultPolicy": "block",
            "allowedHosts": ["api.github.com", "140.82.121.0/24"],
            "blockedHosts": ["evil.example.org"]
        }
    });
    assert_refused(
        "container CIDR",
        &container,
        "network.blockedHosts[0]",
        REACHABLE,
    );

    // Only blocked addresses next to address allows: deny rules, imported.
    let e = Expect {
        allow: &[(&["198.51.100.0/24"], &[]), (&["2001:db8::/32"], &[])],
        deny: &[(&["198.51.100.7/32"], &[]), (&["2001:db8::1/128"], &[])],
        report: &["narrowed:network.allowOutbound"],
        ..NOTHING
    };
    assert_imports(
        "blocked addresses only",
        &bare(
            json!(["198.51.100.0/24", "2001:db8::/32"]),
            json!(["198.51.100.7", "2001:db8::1"]),
        ),
        &e,
    );
}

#[test]
fn blocked_host_names_match_in_any_case_and_either_way_round() {
    let bare = |allowed: &[&str], blocked: &[&str]| {
        json!({
            "version": "0.7.0-alpha",
            "network": {"allowOutbound": true, "allowedHosts": allowed, "blockedHosts": blocked}
        })
    };
    for (label, allowed, blocked) in [
        // A blocked wildcard over an allowed name.
        (
            "blocked wildcard over an allowed name",
            &["api.example.com"][..],
            &["*.example.com"][..],
        ),
        // The same name in another case.
        (
            "blocked name in upper case",
            &["api.example.com"],
            &["API.example.com"],
        ),
        (
            "allowed name in upper case",
            &["API.EXAMPLE.COM"],
            &["api.example.com"],
        ),
        (
            "allowed wildcard in another case",
            &["*.Example.Com"],
            &["evil.EXAMPLE.com"],
        ),
        (
            "blocked wildcard in another case over an allowed name",
            &["api.example.com"],
            &["*.EXAMPLE.COM"],
        ),
        // Two wildcards, one under the other.
        (
            "blocked wildcard under an allowed wildcard",
            &["*.example.com"],
            &["*.api.example.com"],
        ),
        (
            "blocked wildcard over an allowed wildcard",
            &["*.api.example.com"],
            &["*.example.com"],
        ),
    ] {
        assert_refused(
            label,
            &bare(allowed, blocked),
            "network.blockedHosts[0]",
            REACHABLE,
        );
    }
    let container = json!({
        "version": "0.6.0-alpha",
        "process": {"commandLine": "true", "timeout": 10000},
        "network": {
            "defaultPolicy": "block",
            "allowedHosts": ["api.github.com", "api.example.com"],
            "blockedHosts": ["example.org", "*.example.com"]
        }
    });
    assert_refused(
        "container blocked wildcard over an allowed name",
        &container,
        "network.blockedHosts[1]",
        REACHABLE,
    );

    // Names that match nothing allowed, in any case, are accepted as already unreachable; a
    // wildcard does not match its own apex.
    let e = Expect {
        allow: &[(&["api.example.com"], &[]), (&["*.example.net"], &[])],
        dns: None,
        report: &[
            "narrowed:network.allowOutbound",
            "na:network.blockedHosts[0]",
            "na:network.blockedHosts[1]",
            "na:network.blockedHosts[2]",
        ],
        ..NOTHING
    };
    assert_imports(
        "non-matching names",
        &bare(
            &["api.example.com", "*.example.net"],
            &["WWW.example.com", "example.net", "*.api.example.org"],
        ),
        &e,
    );
}

#[test]
fn timeouts_that_are_not_whole_milliseconds_are_refused() {
    let message = "not a whole number of milliseconds";
    assert_refused(
        "fractional timeoutMs",
        &json!({"version": "0.8.0", "timeoutMs": 1500.5}),
        "timeoutMs",
        message,
    );
    assert_refused(
        "string timeoutMs",
        &json!({"version": "0.8.0", "timeoutMs": "30000"}),
        "timeoutMs",
        message,
    );
    assert_refused(
        "negative process.timeout",
        &json!({"version": "0.8.0", "process": {"commandLine": "true", "timeout": -1}}),
        "process.timeout",
        message,
    );
    // More than a year: refused, not clamped (a shorter limit would change the run) nor
    // dropped (no limit would grant more).
    let year = "more than a year";
    assert_refused(
        "huge process.timeout",
        &json!({
            "version": "0.8.0",
            "process": {"commandLine": "true", "timeout": 99999999999999_u64}
        }),
        "process.timeout",
        year,
    );
    assert_refused(
        "huge timeoutMs",
        &json!({"version": "0.8.0", "timeoutMs": 99999999999999_u64}),
        "timeoutMs",
        year,
    );
    assert_refused(
        "timeoutMs a millisecond over a year",
        &json!({"version": "0.8.0", "timeoutMs": 31_536_000_001_u64}),
        "timeoutMs",
        year,
    );
    assert_refused(
        "timeoutMs beyond i64",
        &json!({"version": "0.8.0", "timeoutMs": u64::MAX}),
        "timeoutMs",
        year,
    );

    // Whole numbers import as they are; 0 is no limit.
    let e = Expect {
        timeout_ms: Some(1501),
        ..NOTHING
    };
    assert_imports(
        "whole timeoutMs",
        &json!({"version": "0.8.0", "timeoutMs": 1501}),
        &e,
    );
    // Exactly a year is the longest accepted.
    let e = Expect {
        timeout_ms: Some(31_536_000_000),
        ..NOTHING
    };
    assert_imports(
        "a year of timeoutMs",
        &json!({"version": "0.8.0", "timeoutMs": 31_536_000_000_u64}),
        &e,
    );
    let doc = json!({"version": "0.8.0", "process": {"commandLine": "true", "timeout": 0}});
    let i = assert_imports(
        "zero process.timeout",
        &doc,
        &Expect {
            report: &["na:containment", "na:process"],
            ..NOTHING
        },
    );
    assert_eq!(i.spec.timeout_ms, None);
}

#[test]
fn directional_ingress_allow_is_narrowed_to_the_private_ranges() {
    let bare = json!({
        "version": "0.8.0-alpha",
        "network": {"ingress": {"default": "allow", "hostLoopback": "deny"}}
    });
    let e = Expect {
        ingress: Some((Some(DENY), Some(DENY))),
        ingress_from: PRIVATE_RANGES,
        report: &["narrowed:network.ingress.default"],
        ..NOTHING
    };
    let i = assert_imports("bare ingress allow", &bare, &e);
    // One rule, from exactly the private ranges, on every port.
    let ingress = i.spec.network.unwrap().ingress.unwrap();
    assert_eq!(ingress.allow.len(), 1, "{ingress:?}");
    let rule = &ingress.allow[0];
    assert_eq!(rule.ports, None);
    let from: Vec<(Option<&str>, bool)> = rule
        .from
        .iter()
        .flatten()
        .map(|p| {
            (
                p.cidr.as_deref(),
                p.except.is_none() && p.pod_selector.is_none() && p.namespace_selector.is_none(),
            )
        })
        .collect();
    let want: Vec<(Option<&str>, bool)> = PRIVATE_RANGES.iter().map(|c| (Some(*c), true)).collect();
    assert_eq!(from, want);

    // In a ContainerConfig, next to egress rules, which stay as they are.
    let e = Expect {
        allow: &[(&["192.0.2.0/24"], &["tcp/443"])],
        ingress: Some((Some(DENY), Some(DENY))),
        ingress_from: PRIVATE_RANGES,
        report: &["narrowed:network.ingress.default"],
        ..NOTHING
    };
    assert_imports("container ingress allow", &directional_ingress_allow(), &e);
}

#[test]
fn proxies_are_loopback_only_and_never_mixed_with_direct_egress() {
    let loopback_only = "MXC proxies are loopback proxies";
    let mixed = "cannot be combined";
    let field = "runtimeConfig.networkProxy";
    assert_refused(
        "remote networkProxy",
        &json!({"version": "0.8.0", "runtimeConfig": {"networkProxy": "http://192.0.2.10:3128"}}),
        field,
        loopback_only,
    );
    assert_refused(
        "unspecified-address networkProxy",
        &json!({"version": "0.8.0", "runtimeConfig": {"networkProxy": "http://0.0.0.0:3128"}}),
        field,
        loopback_only,
    );
    assert_refused(
        "remote legacy proxy.url",
        &json!({
            "version": "0.7.0-alpha",
            "process": {"commandLine": "true"},
            "network": {"defaultPolicy": "block", "proxy": {"url": "http://192.0.2.10:3128"}}
        }),
        field,
        loopback_only,
    );
    let proxied = |network: Value| {
        json!({
            "version": "0.8.0",
            "runtimeConfig": {"networkProxy": "http://127.0.0.1:3128"},
            "network": network
        })
    };
    assert_refused(
        "proxy with an egress allow rule",
        &proxied(json!({"egress": {"allow": [{"to": [{"cidr": "192.0.2.0/24"}]}]}})),
        field,
        mixed,
    );
    assert_refused(
        "proxy with egress default allow",
        &proxied(json!({"egress": {"default": "allow"}})),
        field,
        mixed,
    );
    assert_refused(
        "legacy proxy with defaultPolicy allow",
        &json!({
            "version": "0.6.0-alpha",
            "process": {"commandLine": "true"},
            "network": {"defaultPolicy": "allow", "proxy": {"localhost": 8080}}
        }),
        field,
        mixed,
    );
    assert_refused(
        "legacy proxy with allowedHosts",
        &json!({
            "version": "0.6.0-alpha",
            "process": {"commandLine": "true"},
            "network": {"allowedHosts": ["api.github.com"], "proxy": {"localhost": 8080}}
        }),
        field,
        mixed,
    );

    // Loopback proxies alone import, as written.
    let e = Expect {
        egress_default: DENY,
        proxy: Some("http://localhost:3128"),
        ..NOTHING
    };
    let mut doc = proxied(json!({"egress": {"default": "deny"}}));
    doc["runtimeConfig"]["networkProxy"] = json!("http://localhost:3128");
    assert_imports("localhost networkProxy", &doc, &e);
    let e = Expect {
        proxy: Some("http://[::1]:3128"),
        timeout_ms: Some(20000),
        report: &["na:containment", "na:process"],
        ..NOTHING
    };
    assert_imports("legacy loopback proxy.url", &legacy_proxy_url(), &e);
}

// ---------------------------------------------------------------------------------------------
// Host names blocked under allow-all egress, through the egress gateway
// ---------------------------------------------------------------------------------------------

/// The egress gateway as the operator finds it: its Service address, namespace, pods and port.
fn gateway_facts() -> palisade::render::facts::GatewayFacts {
    palisade::render::facts::GatewayFacts {
        address: "10.96.0.50:3128".parse().expect("address"),
        namespace_labels: [(
            "kubernetes.io/metadata.name".to_string(),
            "palisade-system".to_string(),
        )]
        .into(),
        pod_labels: [(
            "app.kubernetes.io/name".to_string(),
            "palisade-gateway".to_string(),
        )]
        .into(),
        target_port: 3128,
        key: None,
    }
}

/// A cluster with (or without) the egress gateway, and without Cilium.
fn cluster(gateway: bool) -> palisade::render::ClusterFacts {
    palisade::render::ClusterFacts {
        gateway: gateway.then(gateway_facts),
        cluster_cidrs: vec![
            palisade::policy::net::Cidr::parse("10.96.0.0/12").expect("cidr"),
            palisade::policy::net::Cidr::parse("10.244.0.0/16").expect("cidr"),
        ],
        ..palisade::render::ClusterFacts::default()
    }
}

/// Compiles an imported spec for one sandbox.
fn compile_imported(
    spec: &AgentPolicySpec,
    facts: &palisade::render::ClusterFacts,
) -> Result<palisade::render::Plan, palisade::render::Blocked> {
    let mut policy = AgentPolicy::new("imported", spec.clone());
    policy.metadata.namespace = Some("team".into());
    let sandbox: palisade::api::AgentSandbox = serde_json::from_value(json!({
        "apiVersion": "palisade.dev/v1alpha1", "kind": "AgentSandbox",
        "metadata": {"namespace": "team", "name": "s", "uid": "6b1c1a3e-0000-4000-8000-000000000001"},
        "spec": {"policyRef": {"name": "imported"}, "image": "registry.example.com/agent:1"}
    }))
    .expect("sandbox");
    palisade::render::compile(&policy, &sandbox, facts, 0)
}

/// Asserts that the imported spec is enforced exactly through the gateway: the NetworkPolicy
/// lets the pod reach the gateway and nothing else (no direct egress, no DNS), the proxy
/// variables point at the gateway with no CIDR going around it, the gateway's rules refuse
/// every name in `refused` and allow every name in `allowed` and no address in
/// `refused_addresses`; and that without the gateway the sandbox is blocked.
fn assert_enforced_through_gateway(
    label: &str,
    spec: &AgentPolicySpec,
    refused: &[&str],
    allowed: &[&str],
    refused_addresses: &[&str],
) {
    use palisade::gateway::host::Host;
    use palisade::gateway::rules::{Denial, GatewayRules};

    let plan = compile_imported(spec, &cluster(true))
        .unwrap_or_else(|b| panic!("{label}: blocked with the gateway: {b:?}"));
    let np = serde_json::to_value(&plan.network_policy).expect("NetworkPolicy");
    assert_eq!(
        np["spec"]["egress"],
        json!([
            {"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "palisade-system"}},
                     "podSelector": {"matchLabels": {"app.kubernetes.io/name": "palisade-gateway"}}}],
             "ports": [{"port": 3128, "protocol": "TCP"}]},
            {"to": [{"ipBlock": {"cidr": "10.96.0.50/32"}}],
             "ports": [{"port": 3128, "protocol": "TCP"}]}
        ]),
        "{label}: egress other than to the gateway"
    );
    assert_eq!(plan.fqdn_policy, None, "{label}");
    let env: std::collections::BTreeMap<String, String> =
        plan.pod.spec.as_ref().expect("pod").containers[0]
            .env
            .iter()
            .flatten()
            .filter_map(|e| Some((e.name.clone(), e.value.clone()?)))
            .collect();
    assert!(
        env["HTTPS_PROXY"].ends_with("@10.96.0.50:3128"),
        "{label}: {env:?}"
    );
    assert!(
        !env["NO_PROXY"].contains('/'),
        "{label}: a CIDR goes around the gateway: {}",
        env["NO_PROXY"]
    );
    let report = serde_json::to_string(&plan.report).expect("report");
    assert!(
        report.contains("all egress goes through the egress gateway"),
        "{label}: {report}"
    );

    // What the gateway enforces for the same policy.
    let checked = palisade::render::check_policy(spec).expect("valid");
    let rules = GatewayRules::for_network(
        &checked.network,
        palisade::policy::egress::ClusterRanges::default(),
    )
    .expect("gateway rules");
    for name in refused {
        for port in [443, 80] {
            assert_eq!(
                rules.check_host(&Host::Name((*name).into()), port),
                Err(Denial::NameDenied),
                "{label}: {name}:{port}"
            );
        }
    }
    for name in allowed {
        assert_eq!(
            rules.check_host(&Host::Name((*name).into()), 443),
            Ok(()),
            "{label}: {name}"
        );
    }
    for addr in refused_addresses {
        let ip: IpAddr = addr.parse().expect("address");
        assert_eq!(
            rules.check_addresses(&[ip], 443),
            Err(Denial::DeniedAddress),
            "{label}: a name resolving to {addr}"
        );
        assert!(
            rules.check_host(&Host::Ip(ip), 443).is_err(),
            "{label}: {addr} asked for directly"
        );
    }

    // Without the gateway (Cilium alone cannot cut a name out), the sandbox is blocked.
    let mut cilium = cluster(false);
    cilium.cilium = true;
    for facts in [cluster(false), cilium] {
        let b = compile_imported(spec, &facts).expect_err("blocked without the gateway");
        assert_eq!(
            b.reason,
            palisade::render::BlockReason::FqdnBackendMissing,
            "{label}"
        );
    }
}

#[test]
fn blocked_host_names_under_allow_all_import_through_the_gateway() {
    // The corpus document: refused without the gateway, and the refusal says what helps.
    let doc = load("23_mac_blocked_hosts_unsupported.json");
    let r = mxc::import(&doc).expect_err("refused without the gateway");
    assert_eq!(r.field, "network.blockedHosts[0]");
    assert!(
        r.message.contains("evil.example.com") && r.message.contains("--gateway"),
        "{r}"
    );
    // With it: allow-all in the legacy form with the blocked name, DNS closed, narrowed.
    let i = mxc::import_with(&doc, WITH_GATEWAY).unwrap_or_else(|r| panic!("refused: {r}"));
    let net = i.spec.network.clone().expect("network");
    assert_eq!(net.allow_outbound, Some(true));
    assert_eq!(
        net.blocked_hosts,
        Some(vec!["evil.example.com".to_string()])
    );
    assert_eq!(net.dns, Some(DnsMode::None));
    assert!(net.egress.is_none() && net.ingress.is_none());
    let narrowed = i
        .report
        .narrowed
        .iter()
        .find(|e| e.field == "network.blockedHosts[0]")
        .unwrap_or_else(|| panic!("not narrowed: {:?}", i.report));
    for words in [
        "egress gateway",
        "all egress goes through the gateway",
        "direct egress is dropped",
        "DNS is closed",
    ] {
        assert!(narrowed.message.contains(words), "{}", narrowed.message);
    }
    assert!(never_grants_more(&doc, &i.spec).is_empty());
    assert_enforced_through_gateway(
        "corpus 23",
        &i.spec,
        &[
            "evil.example.com",
            "x.evil.example.com",
            "a.b.evil.example.com",
        ],
        &["example.com", "notevil.example.com", "pypi.org"],
        &[],
    );

    // The CLI: refused without --gateway (naming it), imported with it, narrowed in the
    // report comments.
    let path = corpus_dir().join("23_mac_blocked_hosts_unsupported.json");
    let path = path.to_str().expect("utf-8 path");
    let without = palisade(&["policy", "import", path, "--name", "corpus"], None);
    assert!(
        !without.ok && without.stderr.contains("--gateway"),
        "{}",
        without.stderr
    );
    let with = palisade(
        &["policy", "import", path, "--name", "corpus", "--gateway"],
        None,
    );
    assert!(with.ok, "{}", with.stderr);
    assert!(
        with.stdout
            .lines()
            .any(|l| l.starts_with("#   narrowed: network.blockedHosts[0]: `evil.example.com`")),
        "{}",
        with.stdout
    );
    assert!(
        !with.stdout.contains("(sandboxes)") && !with.stdout.contains("0.0.0.0"),
        "the report assumes the gateway, at no made-up address: {}",
        with.stdout
    );
    let (_, policy) = parse_import_output(&with.stdout);
    assert_eq!(policy.spec, i.spec);
}

#[test]
fn blocked_names_and_addresses_under_allow_all_through_the_gateway() {
    // A bare SandboxPolicy: names in any case, with a final dot, a wildcard; addresses stay
    // deny rules; the local network stays inbound from the private ranges only.
    let bare = json!({
        "version": "0.7.0-alpha",
        "network": {
            "allowOutbound": true,
            "allowLocalNetwork": true,
            "blockedHosts": ["203.0.113.0/24", "Evil.Example.COM.", "*.bad.example.org", "192.0.2.7"]
        },
        "timeoutMs": 5000
    });
    assert_refused(
        "bare names under allow-all",
        &bare,
        "network.blockedHosts[1]",
        "--gateway",
    );
    let e = Expect {
        egress_default: ALLOW,
        deny: &[(&["203.0.113.0/24"], &[]), (&["192.0.2.7/32"], &[])],
        blocked_names: &["evil.example.com", "*.bad.example.org"],
        ingress: Some((None, None)),
        ingress_from: &["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"],
        timeout_ms: Some(5000),
        report: &[
            "narrowed:network.blockedHosts[1]",
            "narrowed:network.blockedHosts[2]",
            "narrowed:network.allowLocalNetwork",
        ],
        ..NOTHING
    };
    let i = assert_imports_with("bare names under allow-all", &bare, &e, WITH_GATEWAY);
    assert!(!i.container_config);
    let net = i.spec.network.clone().expect("network");
    assert_eq!(
        net.blocked_hosts,
        Some(vec![
            "203.0.113.0/24".to_string(),
            "evil.example.com".into(),
            "*.bad.example.org".into(),
            "192.0.2.7".into(),
        ])
    );
    assert_eq!(net.allow_local_network, Some(true));
    assert_enforced_through_gateway(
        "bare",
        &i.spec,
        &[
            "evil.example.com",
            "www.evil.example.com",
            "bad.example.org",
            "x.bad.example.org",
        ],
        &["example.org", "good.example.org", "example.com"],
        &["203.0.113.9", "192.0.2.7"],
    );
    let plan = compile_imported(&i.spec, &cluster(true)).expect("compiles");
    let np = serde_json::to_value(&plan.network_policy).expect("NetworkPolicy");
    let sources: BTreeSet<String> = np["spec"]["ingress"][0]["from"]
        .as_array()
        .expect("ingress from")
        .iter()
        .map(|p| p["ipBlock"]["cidr"].as_str().expect("cidr").to_string())
        .collect();
    assert_eq!(sources, str_set(PRIVATE_RANGES));

    // A ContainerConfig: its allowedHosts add nothing under allow-all and are left out (in the
    // legacy form they would be an allowlist).
    let container = json!({
        "version": "0.6.0-alpha",
        "process": {"commandLine": "true", "timeout": 10000},
        "network": {
            "defaultPolicy": "allow",
            "allowedHosts": ["api.github.com"],
            "blockedHosts": ["evil.example.com"]
        }
    });
    let e = Expect {
        egress_default: ALLOW,
        blocked_names: &["evil.example.com"],
        timeout_ms: Some(10000),
        report: &[
            "na:network.allowedHosts",
            "narrowed:network.blockedHosts[0]",
        ],
        ..NOTHING
    };
    let i = assert_imports_with(
        "container names under allow-all",
        &container,
        &e,
        WITH_GATEWAY,
    );
    assert_eq!(
        i.spec.network.as_ref().expect("network").allowed_hosts,
        None
    );

    // What the gateway cannot match is refused at its index, with the gateway too.
    let mut odd = container.clone();
    odd["network"]["blockedHosts"] = json!(["192.0.2.1", "evil_host.example.com"]);
    assert_refused_with(
        "a blocked name the gateway cannot match",
        &odd,
        "network.blockedHosts[1]",
        "not a host name",
        WITH_GATEWAY,
    );
    // A proxy is not combined with allow-all egress, through the gateway or not.
    let mut proxied = container.clone();
    proxied["network"]["proxy"] = json!({"localhost": 3128});
    assert_refused_with(
        "a proxy next to allow-all through the gateway",
        &proxied,
        "runtimeConfig.networkProxy",
        "cannot be combined",
        WITH_GATEWAY,
    );
    // Blocked names that egress does not reach anyway do not need the gateway: the import is
    // the same with and without it.
    let mut blocking = container.clone();
    blocking["network"]["defaultPolicy"] = json!("block");
    let without = mxc::import(&blocking).expect("imports without the gateway");
    assert_eq!(mxc::import_with(&blocking, WITH_GATEWAY), Ok(without));
}
