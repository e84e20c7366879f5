//! MXC documents (a bare SandboxPolicy or a full ContainerConfig, schema 0.6 to 0.9) turned into
//! an AgentPolicy spec. The policy part is mapped; everything else is reported as not applicable.
//! A document whose grants cannot be expressed in a Linux pod is refused; nothing is ever
//! granted that the document does not grant.

use serde_json::{Map, Value};

use crate::api::policy::{
    AgentPolicySpec, Clipboard, DefaultAction, DnsMode, EgressPolicy, EgressRule, FilesystemPolicy,
    IngressPeer, IngressPolicy, IngressRule, IsolationPolicy, NetworkRules, Runtime, RuntimeConfig,
    SandboxPath, UiPolicy,
};
use crate::api::report::EnforcementReport;
use crate::policy::legacy::{PRIVATE_CIDRS, blocked_name_reachable, dns_name, host_peer};
use crate::policy::paths::under;

/// An imported policy and what happened to each field.
#[derive(Clone, Debug, PartialEq)]
pub struct Imported {
    pub spec: AgentPolicySpec,
    pub report: EnforcementReport,
    pub container_config: bool,
}

/// What the importer cannot read from the document: what the cluster can enforce.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ImportOptions {
    /// The cluster runs the Palisade egress gateway (`--fqdn-backend auto` or `gateway`). Host
    /// names blocked under allow-all egress (`blockedHosts` with `defaultPolicy: allow` or
    /// `allowOutbound: true`) then import: the policy keeps the legacy form (`allowOutbound`,
    /// `blockedHosts`), which the compiler enforces by sending all egress through the gateway.
    /// Without it such a document is refused, since a NetworkPolicy cannot cut a name out.
    pub gateway: bool,
}

/// Why a document cannot be imported.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct Refused {
    pub field: String,
    pub message: String,
}

fn refuse<T>(field: impl Into<String>, message: impl Into<String>) -> Result<T, Refused> {
    Err(Refused {
        field: field.into(),
        message: message.into(),
    })
}

const CONTAINER_CONFIG_KEYS: &[&str] = &[
    "$schema",
    "_comment",
    "version",
    "containerId",
    "containment",
    "fallback",
    "filesystem",
    "lifecycle",
    "lxc",
    "network",
    "process",
    "processContainer",
    "appContainer",
    "runtimeConfig",
    "seatbelt",
    "ui",
    "experimental",
    "phase",
    "sandboxId",
    "correlationVector",
];
const SANDBOX_POLICY_KEYS: &[&str] = &[
    "$schema",
    "version",
    "filesystem",
    "network",
    "runtimeConfig",
    "ui",
    "timeoutMs",
    "captureDenials",
    "processContainer",
];

fn obj<'a>(v: &'a Value, field: &str) -> Result<Option<&'a Map<String, Value>>, Refused> {
    match v {
        Value::Null => Ok(None),
        Value::Object(m) => Ok(Some(m)),
        _ => refuse(field, "expected an object"),
    }
}

fn known_keys(m: &Map<String, Value>, field: &str, keys: &[&str]) -> Result<(), Refused> {
    for k in m.keys() {
        if !keys.contains(&k.as_str()) {
            return refuse(
                format!("{field}.{k}"),
                format!(
                    "unknown field (expected one of {}); a policy field Palisade does not know could be a restriction",
                    keys.join(", ")
                ),
            );
        }
    }
    Ok(())
}

fn strings(v: Option<&Value>, field: &str) -> Result<Vec<String>, Refused> {
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, x)| {
                x.as_str().map(str::to_string).ok_or_else(|| Refused {
                    field: format!("{field}[{i}]"),
                    message: "expected a string".into(),
                })
            })
            .collect(),
        Some(_) => refuse(field, "expected a list of strings"),
    }
}

fn version_minor(v: &Value) -> Result<Option<u64>, Refused> {
    let Some(s) = v.get("version").and_then(Value::as_str) else {
        return match v.get("version") {
            None | Some(Value::Null) => Ok(None),
            Some(_) => refuse("version", "expected a string"),
        };
    };
    let core = s.split(['-', '+']).next().unwrap_or(s);
    let parts: Vec<Option<u64>> = core.split('.').map(|p| p.parse().ok()).collect();
    match parts.as_slice() {
        [Some(0), Some(minor), Some(_)] if (6..=9).contains(minor) => Ok(Some(*minor)),
        _ => refuse(
            "version",
            format!("`{s}` is not an MXC schema version between 0.6 and 0.9"),
        ),
    }
}

/// A path as MXC wrote it, normalized (`/tmp/` → `/tmp`), or why it is not a POSIX path.
fn posix_path(p: &str) -> Result<String, &'static str> {
    if p.contains('\\') || (p.len() >= 2 && p.as_bytes()[1] == b':') {
        return Err("a Windows path, which cannot exist in a Linux pod");
    }
    if p.starts_with('~') {
        return Err("relative to the host user's home directory, which a pod does not have");
    }
    if !p.starts_with('/') {
        return Err("not an absolute POSIX path");
    }
    let mut norm = String::new();
    for seg in p.split('/').filter(|s| !s.is_empty() && *s != ".") {
        if seg == ".." {
            return Err("contains '..'");
        }
        norm.push('/');
        norm.push_str(seg);
    }
    Ok(if norm.is_empty() { "/".into() } else { norm })
}

fn import_filesystem(
    fs: &Map<String, Value>,
    report: &mut EnforcementReport,
    bare: bool,
) -> Result<Option<FilesystemPolicy>, Refused> {
    let mut keys = vec!["readwritePaths", "readonlyPaths", "deniedPaths"];
    if bare {
        keys.extend(["clearPolicyOnExit", "tempDir"]);
    }
    known_keys(fs, "filesystem", &keys)?;
    let mut denied = Vec::new();
    for (i, p) in strings(fs.get("deniedPaths"), "filesystem.deniedPaths")?
        .iter()
        .enumerate()
    {
        match posix_path(p) {
            Ok(norm) => {
                report.narrowed(
                    format!("filesystem.deniedPaths[{i}]"),
                    format!("`{norm}` is masked as a directory: if the image has a file there, the pod does not start"),
                );
                denied.push(norm)
            }
            Err(why) if why.starts_with("a Windows") => report.not_applicable(
                format!("filesystem.deniedPaths[{i}]"),
                format!("`{p}` is {why}: nothing to deny"),
            ),
            Err(why) => {
                return refuse(
                    format!("filesystem.deniedPaths[{i}]"),
                    format!("`{p}` is {why}; dropping it would lose a restriction"),
                );
            }
        }
    }
    let mut grant = |name: &str| -> Result<Vec<String>, Refused> {
        let mut out = Vec::new();
        for (i, p) in strings(fs.get(name), &format!("filesystem.{name}"))?
            .iter()
            .enumerate()
        {
            let norm = posix_path(p).or_else(|why| {
                refuse(
                    format!("filesystem.{name}[{i}]"),
                    format!("`{p}` is {why}; it cannot be granted"),
                )
            })?;
            // MXC: denied wins over a broader or equal grant.
            if let Some(d) = denied.iter().find(|d| under(&norm, d)) {
                report.narrowed(
                    format!("filesystem.{name}[{i}]"),
                    format!("`{norm}` lies under denied path `{d}`: not granted (deny wins)"),
                );
                continue;
            }
            out.push(norm);
        }
        Ok(out)
    };
    let readwrite = grant("readwritePaths")?;
    let readonly = grant("readonlyPaths")?;
    // MXC: a path both writable and read-only is read-only.
    let readwrite: Vec<String> = readwrite
        .into_iter()
        .filter(|p| !readonly.contains(p))
        .collect();
    if fs.contains_key("clearPolicyOnExit") {
        report.not_applicable(
            "filesystem.clearPolicyOnExit",
            "a pod's grants end with the pod",
        );
    }
    if fs.contains_key("tempDir") {
        report.not_applicable(
            "filesystem.tempDir",
            "MXC 0.7 temp directory sharing: list /tmp in readwritePaths to have a writable /tmp",
        );
    }
    let path = |v: Vec<String>| v.into_iter().map(SandboxPath).collect::<Vec<_>>();
    let out = FilesystemPolicy {
        readwrite_paths: path(readwrite),
        readonly_paths: path(readonly),
        denied_paths: path(denied),
        clear_policy_on_exit: None,
    };
    Ok(Some(out).filter(|f| *f != FilesystemPolicy::default()))
}

fn import_network(
    net: &Map<String, Value>,
    minor: Option<u64>,
    bare: bool,
    options: ImportOptions,
    report: &mut EnforcementReport,
) -> Result<NetworkRules, Refused> {
    let directional = ["egress", "ingress"].iter().any(|k| net.contains_key(*k));
    let legacy_keys: &[&str] = if bare {
        &[
            "allowOutbound",
            "allowLocalNetwork",
            "allowedHosts",
            "blockedHosts",
            "proxy",
        ]
    } else {
        &[
            "defaultPolicy",
            "enforcementMode",
            "allowLocalNetwork",
            "allowedHosts",
            "blockedHosts",
            "proxy",
        ]
    };
    let legacy = legacy_keys.iter().any(|k| net.contains_key(*k));
    if directional && legacy {
        return refuse(
            "network",
            "legacy network fields cannot be mixed with egress/ingress",
        );
    }
    if directional {
        if minor.is_some_and(|m| m < 8) || minor.is_none() {
            return refuse("network", "egress/ingress need schema version 0.8 or later");
        }
        known_keys(net, "network", &["egress", "ingress"])?;
        let egress: Option<EgressPolicy> = match net.get("egress") {
            None | Some(Value::Null) => None,
            Some(v) => Some(
                serde_json::from_value(v.clone())
                    .or_else(|e| refuse("network.egress", e.to_string()))?,
            ),
        };
        let ingress = match net
            .get("ingress")
            .map(|v| obj(v, "network.ingress"))
            .transpose()?
            .flatten()
        {
            None => None,
            Some(m) => {
                known_keys(m, "network.ingress", &["default", "hostLoopback"])?;
                let mut ingress: IngressPolicy =
                    serde_json::from_value(Value::Object(m.clone()))
                        .or_else(|e| refuse("network.ingress", e.to_string()))?;
                if ingress.default == Some(DefaultAction::Allow) {
                    report.narrowed(
                        "network.ingress.default",
                        "MXC's ingress allow means the local/private network: inbound connections are allowed from private address ranges only",
                    );
                    ingress.default = Some(DefaultAction::Deny);
                    ingress.allow = vec![private_sources()];
                }
                Some(ingress)
            }
        };
        return Ok(NetworkRules {
            egress,
            ingress,
            ..Default::default()
        });
    }
    known_keys(net, "network", legacy_keys)?;
    let allow = if bare {
        net.get("allowOutbound").and_then(Value::as_bool) == Some(true)
    } else {
        match net.get("defaultPolicy").and_then(Value::as_str) {
            Some("allow") => true,
            None | Some("block") => false,
            Some(other) => {
                return refuse(
                    "network.defaultPolicy",
                    format!("`{other}` is not allow or block"),
                );
            }
        }
    };
    if net.contains_key("enforcementMode") {
        report.not_applicable(
            "network.enforcementMode",
            "a Windows enforcement mechanism; the NetworkPolicy enforces the rules here",
        );
    }
    let allowed = strings(net.get("allowedHosts"), "network.allowedHosts")?;
    let blocked = strings(net.get("blockedHosts"), "network.blockedHosts")?;
    let mut egress = EgressPolicy::default();
    if allow && (!bare || allowed.is_empty()) {
        egress.default = Some(DefaultAction::Allow);
        if !allowed.is_empty() {
            report.not_applicable(
                "network.allowedHosts",
                "with defaultPolicy allow every host is reachable; the list adds nothing",
            );
        }
    } else if allow {
        report.narrowed(
            "network.allowOutbound",
            "with allowedHosts set, only the listed hosts are reachable",
        );
    }
    if egress.default != Some(DefaultAction::Allow) {
        for h in &allowed {
            egress.allow.push(EgressRule {
                to: Some(vec![host_peer(h)]),
                ports: None,
            });
        }
    }
    // Host names blocked under allow-all egress, for the egress gateway: (index, name).
    let mut through_gateway: Vec<(usize, String)> = Vec::new();
    for (i, h) in blocked.iter().enumerate() {
        let peer = host_peer(h);
        match (&peer.fqdn, egress.default == Some(DefaultAction::Allow)) {
            (Some(name), true) if options.gateway => {
                let name = dns_name(name);
                if !crate::policy::hosts::is_domain(&name) {
                    return refuse(
                        format!("network.blockedHosts[{i}]"),
                        format!(
                            "`{h}` is not a host name (or *.wildcard) the egress gateway can match, so it cannot be cut out of allow-all egress"
                        ),
                    );
                }
                through_gateway.push((i, name));
            }
            (Some(name), true) => {
                return refuse(
                    format!("network.blockedHosts[{i}]"),
                    format!(
                        "host name `{name}` cannot be cut out of allow-all egress by a NetworkPolicy; the Palisade egress gateway makes it enforceable (policy import --gateway: all egress then goes through the gateway, which refuses the name). Otherwise list its IP addresses, or block by default and list allowedHosts"
                    ),
                );
            }
            (Some(name), false) if blocked_name_reachable(name, &allowed) => {
                return refuse(
                    format!("network.blockedHosts[{i}]"),
                    format!(
                        "`{name}` may be reached through allowedHosts (a matching name, or an address range it may resolve into); a host name cannot be cut out of those"
                    ),
                );
            }
            (Some(_), false) => report.not_applicable(
                format!("network.blockedHosts[{i}]"),
                "egress is denied by default: already unreachable",
            ),
            (None, _) => egress.deny.push(EgressRule {
                to: Some(vec![peer]),
                ports: None,
            }),
        }
    }
    let local = net.get("allowLocalNetwork").and_then(Value::as_bool) == Some(true);
    if local {
        report.narrowed("network.allowLocalNetwork", "inbound connections are allowed from private address ranges only (10/8, 172.16/12, 192.168/16, fc00::/7)");
    }
    if !through_gateway.is_empty() {
        // Only the legacy form carries names blocked under allow-all (a deny rule takes CIDRs
        // only): the compiler sends all egress through the egress gateway, which refuses these
        // names and the names under them; the blocked addresses stay deny rules.
        for (i, name) in &through_gateway {
            report.narrowed(
                format!("network.blockedHosts[{i}]"),
                format!(
                    "`{name}` (and the names under it) is cut out of allow-all egress by the egress gateway: all egress goes through the gateway, which allows every other name over TLS or plain HTTP; direct egress is dropped and DNS is closed (the gateway resolves names). Without the gateway, sandboxes under this policy are blocked (FqdnBackendMissing)"
                ),
            );
        }
        let hosts = blocked
            .iter()
            .map(|h| match host_peer(h).fqdn {
                Some(name) => dns_name(&name),
                None => h.clone(),
            })
            .collect();
        return Ok(NetworkRules {
            allow_outbound: Some(true),
            blocked_hosts: Some(hosts),
            allow_local_network: local.then_some(true),
            ..Default::default()
        });
    }
    let ingress = local.then(|| IngressPolicy {
        allow: vec![private_sources()],
        ..Default::default()
    });
    Ok(NetworkRules {
        egress: Some(egress),
        ingress,
        ..Default::default()
    })
}

fn private_sources() -> IngressRule {
    IngressRule {
        from: Some(
            PRIVATE_CIDRS
                .iter()
                .map(|c| IngressPeer {
                    cidr: Some(c.to_string()),
                    ..Default::default()
                })
                .collect(),
        ),
        ports: None,
    }
}

/// The legacy `proxy` object as a `runtimeConfig.networkProxy` URL (None for MXC's test proxy).
fn legacy_proxy(
    net: &Map<String, Value>,
    report: &mut EnforcementReport,
) -> Result<Option<String>, Refused> {
    let Some(p) = net
        .get("proxy")
        .map(|v| obj(v, "network.proxy"))
        .transpose()?
        .flatten()
    else {
        return Ok(None);
    };
    known_keys(
        p,
        "network.proxy",
        &["localhost", "builtinTestServer", "url"],
    )?;
    if p.len() != 1 {
        return refuse(
            "network.proxy",
            "set exactly one of localhost, builtinTestServer or url",
        );
    }
    if let Some(port) = p.get("localhost") {
        let port = port
            .as_u64()
            .filter(|p| (1..=65535).contains(p))
            .ok_or_else(|| Refused {
                field: "network.proxy.localhost".into(),
                message: "expected a port 1-65535".into(),
            })?;
        return Ok(Some(format!("http://127.0.0.1:{port}")));
    }
    if p.contains_key("builtinTestServer") {
        report.not_applicable(
            "network.proxy.builtinTestServer",
            "MXC's built-in test proxy does not exist on Kubernetes; egress stays denied",
        );
        return Ok(None);
    }
    match p.get("url").and_then(Value::as_str) {
        Some(url) => Ok(Some(url.to_string())),
        None => refuse("network.proxy.url", "expected a URL string"),
    }
}

/// Imports an MXC document for a cluster without the egress gateway.
pub fn import(doc: &Value) -> Result<Imported, Refused> {
    import_with(doc, ImportOptions::default())
}

/// Imports an MXC document for a cluster that can enforce what `options` says.
pub fn import_with(doc: &Value, options: ImportOptions) -> Result<Imported, Refused> {
    let Value::Object(root) = doc else {
        return refuse("(document)", "an MXC document is a JSON object");
    };
    let container_config = root.contains_key("process");
    let bare = !container_config;
    known_keys(
        root,
        "(document)",
        if bare {
            SANDBOX_POLICY_KEYS
        } else {
            CONTAINER_CONFIG_KEYS
        },
    )?;
    let minor = version_minor(doc)?;
    let mut report = EnforcementReport::default();
    let mut spec = AgentPolicySpec {
        version: root
            .get("version")
            .and_then(Value::as_str)
            .map(str::to_string),
        ..Default::default()
    };
    if spec.version.is_none() {
        report.not_applicable(
            "version",
            "absent: read as the current MXC schema with the legacy network format",
        );
    }

    if let Some(fs) = root
        .get("filesystem")
        .map(|v| obj(v, "filesystem"))
        .transpose()?
        .flatten()
    {
        spec.filesystem = import_filesystem(fs, &mut report, bare)?;
    }

    let net = root
        .get("network")
        .map(|v| obj(v, "network"))
        .transpose()?
        .flatten();
    let mut network = match net {
        Some(n) => import_network(n, minor, bare, options, &mut report)?,
        None => NetworkRules::default(),
    };
    let mut proxy = match net {
        Some(n) if !n.contains_key("egress") && !n.contains_key("ingress") => {
            legacy_proxy(n, &mut report)?
        }
        _ => None,
    };
    if let Some(rc) = root
        .get("runtimeConfig")
        .map(|v| obj(v, "runtimeConfig"))
        .transpose()?
        .flatten()
    {
        known_keys(rc, "runtimeConfig", &["networkProxy"])?;
        if net.is_some_and(|n| {
            n.contains_key("defaultPolicy")
                || n.contains_key("proxy")
                || n.contains_key("allowOutbound")
        }) {
            return refuse(
                "runtimeConfig",
                "runtimeConfig needs the 0.8 directional network format",
            );
        }
        proxy = rc
            .get("networkProxy")
            .and_then(Value::as_str)
            .map(str::to_string);
    }
    if let Some(url) = &proxy {
        let addr = crate::policy::hosts::parse_proxy(url)
            .or_else(|m| refuse("runtimeConfig.networkProxy", m))?;
        if !addr.is_loopback() {
            return refuse(
                "runtimeConfig.networkProxy",
                format!(
                    "{url}: MXC proxies are loopback proxies; a remote proxy is not an MXC policy"
                ),
            );
        }
        let direct = network.allow_outbound == Some(true)
            || network.egress.as_ref().is_some_and(|e| {
                e.default == Some(DefaultAction::Allow) || !e.allow.is_empty() || !e.deny.is_empty()
            });
        if direct {
            return refuse(
                "runtimeConfig.networkProxy",
                "a proxy and direct egress rules are different connectivity models and cannot be combined",
            );
        }
        spec.runtime_config = Some(RuntimeConfig {
            network_proxy: Some(url.clone()),
        });
    }
    // MXC grants no DNS of its own: only names (which need it) and allow-all egress keep it.
    // Allow-all through the egress gateway (the legacy form, no `egress`) gets none either:
    // the gateway resolves names itself.
    let egress = network.egress.clone().unwrap_or_default();
    let names = egress
        .allow
        .iter()
        .flat_map(|r| r.to.iter().flatten())
        .any(|p| p.fqdn.is_some());
    if !names && egress.default != Some(DefaultAction::Allow) {
        network.dns = Some(DnsMode::None);
    }
    spec.network = Some(network);

    let ui = root.get("ui").map(|v| obj(v, "ui")).transpose()?.flatten();
    if let Some(ui) = ui {
        let keys: &[&str] = if bare {
            &["allowWindows", "clipboard", "allowInputInjection"]
        } else {
            &["disable", "clipboard", "injection"]
        };
        known_keys(ui, "ui", keys)?;
        let clipboard = match ui.get("clipboard").and_then(Value::as_str) {
            None => None,
            Some("none") => Some(Clipboard::None),
            Some("read") => Some(Clipboard::Read),
            Some("write") => Some(Clipboard::Write),
            Some("all" | "readwrite") => Some(Clipboard::All),
            Some(other) => {
                return refuse(
                    "ui.clipboard",
                    format!("`{other}` is not none, read, write or all"),
                );
            }
        };
        let (windows, injection) = if bare {
            (
                ui.get("allowWindows").and_then(Value::as_bool),
                ui.get("allowInputInjection").and_then(Value::as_bool),
            )
        } else {
            (
                ui.get("disable").and_then(Value::as_bool).map(|d| !d),
                ui.get("injection").and_then(Value::as_bool),
            )
        };
        spec.ui = Some(UiPolicy {
            allow_windows: windows,
            clipboard,
            allow_input_injection: injection,
        });
    }

    let timeout = if bare {
        root.get("timeoutMs")
    } else {
        root.get("process").and_then(|p| p.get("timeout"))
    };
    let timeout_field = if bare { "timeoutMs" } else { "process.timeout" };
    let timeout = match timeout {
        None | Some(Value::Null) => None,
        Some(v) => Some(v.as_u64().ok_or_else(|| Refused {
            field: timeout_field.into(),
            message: format!(
                "{v} is not a whole number of milliseconds; dropping it would remove the time limit"
            ),
        })?),
    };
    match timeout {
        None | Some(0) => {}
        Some(ms) if ms < 1000 => {
            return refuse(
                timeout_field,
                format!(
                    "{ms} ms is below Palisade's 1 s resolution; rounding up would grant more time"
                ),
            );
        }
        Some(ms) if ms > 31_536_000_000 => {
            return refuse(
                timeout_field,
                format!("{ms} ms is more than a year, the longest timeoutMs Palisade accepts"),
            );
        }
        Some(ms) => spec.timeout_ms = Some(ms as i64),
    }

    if container_config {
        let containment = root
            .get("containment")
            .and_then(Value::as_str)
            .unwrap_or("process");
        let vm = matches!(
            containment,
            "vm" | "microvm" | "windows_sandbox" | "hyperlight"
        );
        if vm {
            spec.isolation = Some(IsolationPolicy {
                runtime: Some(Runtime::Kata),
                runtime_class_name: None,
            });
            report.not_applicable(
                "containment",
                format!("`{containment}` is VM isolation: the sandbox runs on Kata Containers"),
            );
        } else {
            report.not_applicable(
                "containment",
                format!("`{containment}`: the sandbox runs on gVisor (the Palisade default)"),
            );
        }
        if let Some(pc) = root
            .get("processContainer")
            .or_else(|| root.get("appContainer"))
        {
            if pc.get("learningMode").and_then(Value::as_bool) == Some(true)
                || pc
                    .get("captureDenials")
                    .and_then(|c| c.get("mode"))
                    .and_then(Value::as_str)
                    == Some("allow")
            {
                return refuse(
                    "processContainer",
                    "an audit mode (learningMode or captureDenials allow) lets everything through: the document does not describe an enforced sandbox",
                );
            }
            if pc.get("capabilities").is_some() {
                report.not_applicable("processContainer.capabilities", "Windows AppContainer capabilities are not turned into grants; the network policy alone decides");
            }
        }
        if root
            .get("seatbelt")
            .and_then(|s| s.get("profileOverride"))
            .is_some()
        {
            return refuse(
                "seatbelt.profileOverride",
                "a hand-written Seatbelt profile replaces the policy: the document does not describe its sandbox",
            );
        }
        for key in root.keys() {
            if matches!(
                key.as_str(),
                "process"
                    | "containerId"
                    | "lifecycle"
                    | "lxc"
                    | "seatbelt"
                    | "fallback"
                    | "experimental"
                    | "processContainer"
                    | "appContainer"
                    | "phase"
                    | "sandboxId"
                    | "correlationVector"
            ) {
                report.not_applicable(
                    key.clone(),
                    "workload or backend setting of the MXC container: not part of the policy",
                );
            }
        }
    } else if root.contains_key("captureDenials") {
        if root
            .get("captureDenials")
            .and_then(|c| c.get("mode"))
            .and_then(Value::as_str)
            == Some("allow")
        {
            return refuse(
                "captureDenials",
                "audit mode lets everything through: the document does not describe an enforced sandbox",
            );
        }
        report.not_applicable("captureDenials", "denial logging is a Windows feature");
    }

    // The result must be a valid AgentPolicy.
    crate::render::check_policy(&spec).map_err(|e| Refused {
        field: "(policy)".into(),
        message: e.to_string(),
    })?;
    Ok(Imported {
        spec,
        report,
        container_config,
    })
}
