//! Semantic validation of policies and sandboxes: every rule the CRD schema states (so offline
//! tools refuse what the API server would), and the cross-field rules it cannot state.

use std::collections::BTreeSet;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::api::policy::{
    AgentPolicySpec, EgressPeer, EgressRule, IngressPeer, PortRule, Protocol, Runtime, SandboxPath,
    SeccompKind,
};
use crate::api::sandbox::AgentSandboxSpec;

use super::pod_keys::{always_refused, annotation_refused};

use super::net::Cidr;
use super::paths::under;
use super::{Invalid, PolicyError, hosts, image, quantity};

/// Collects errors instead of stopping at the first.
#[derive(Default)]
struct Errors(Vec<PolicyError>);

impl Errors {
    fn check(&mut self, ok: bool, field: impl Into<String>, message: impl Into<String>) {
        if !ok {
            self.0.push(PolicyError::new(field, message));
        }
    }

    fn done(self) -> Result<(), Invalid> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(Invalid(self.0))
        }
    }
}

/// Mount points a writable or masking volume may not cover.
const UNMOUNTABLE: &[&str] = &["/proc", "/sys", "/dev"];

fn check_path(e: &mut Errors, field: &str, p: &SandboxPath) {
    let s = p.0.as_str();
    if !s.starts_with('/') {
        e.check(
            false,
            field,
            format!("`{s}` is not an absolute POSIX path (it must start with '/')"),
        );
        return;
    }
    e.check(
        s.len() <= 4096,
        field,
        "path is longer than 4096 characters",
    );
    e.check(
        !s.split('/').any(|seg| seg == "." || seg == ".."),
        field,
        format!("`{s}` contains a '.' or '..' segment"),
    );
    e.check(
        s == "/" || !s.ends_with('/'),
        field,
        format!("`{s}` must not end with '/'"),
    );
    e.check(!s.contains("//"), field, format!("`{s}` contains '//'"));
    e.check(!s.contains('\0'), field, "path contains a NUL byte");
}

fn check_quantity(e: &mut Errors, field: &str, q: &Quantity) {
    match quantity::nanos(q) {
        Some(n) => e.check(n > 0, field, format!("`{}` must be greater than zero", q.0)),
        None => e.check(
            false,
            field,
            format!("`{}` is not a resource quantity (e.g. 500m, 2Gi)", q.0),
        ),
    }
}

fn check_cidr(e: &mut Errors, field: &str, cidr: &str) -> Option<Cidr> {
    match Cidr::parse(cidr) {
        Ok(c) => Some(c),
        Err(err) => {
            e.check(false, field, err.to_string());
            None
        }
    }
}

fn check_except(e: &mut Errors, field: &str, base: Option<Cidr>, except: &Option<Vec<String>>) {
    let Some(except) = except else { return };
    e.check(
        !except.is_empty(),
        field,
        "except must not be empty when present",
    );
    for (j, x) in except.iter().enumerate() {
        let f = format!("{field}[{j}]");
        if let (Some(inner), Some(outer)) = (check_cidr(e, &f, x), base) {
            e.check(
                outer.contains_cidr(&inner) && inner.prefix > outer.prefix,
                f,
                format!("`{x}` must lie strictly inside {outer}, in the same address family"),
            );
        }
    }
}

fn check_ports(e: &mut Errors, field: &str, ports: &Option<Vec<PortRule>>) {
    let Some(ports) = ports else { return };
    e.check(
        !ports.is_empty(),
        field,
        "ports must not be empty when present (omit it to mean every port)",
    );
    for (i, p) in ports.iter().enumerate() {
        let f = format!("{field}[{i}]");
        if let Some(port) = p.port {
            e.check(
                (1..=65535).contains(&port),
                format!("{f}.port"),
                format!("port {port} is outside 1-65535"),
            );
            e.check(
                p.protocol != Some(Protocol::Icmp),
                format!("{f}.port"),
                "icmp takes no port",
            );
        }
        if let Some(end) = p.end_port {
            e.check(
                (1..=65535).contains(&end),
                format!("{f}.endPort"),
                format!("endPort {end} is outside 1-65535"),
            );
            match p.port {
                Some(port) => e.check(
                    end >= port,
                    format!("{f}.endPort"),
                    format!("endPort {end} is smaller than port {port}"),
                ),
                None => e.check(false, format!("{f}.endPort"), "endPort needs port"),
            }
        }
    }
}

fn check_egress_peer(e: &mut Errors, field: &str, p: &EgressPeer, deny: bool) {
    let selector = p.pod_selector.is_some() || p.namespace_selector.is_some();
    let kinds = [p.cidr.is_some(), p.fqdn.is_some(), selector]
        .iter()
        .filter(|x| **x)
        .count();
    e.check(
        kinds == 1,
        field,
        "a peer sets exactly one of cidr, fqdn, or podSelector/namespaceSelector",
    );
    e.check(
        !deny || p.cidr.is_some() || kinds != 1,
        field,
        "deny rules take cidr peers only",
    );
    let base = p
        .cidr
        .as_deref()
        .and_then(|c| check_cidr(e, &format!("{field}.cidr"), c));
    if p.except.is_some() && p.cidr.is_none() {
        e.check(false, format!("{field}.except"), "except needs cidr");
    } else {
        check_except(e, &format!("{field}.except"), base, &p.except);
    }
    if let Some(name) = &p.fqdn {
        e.check(
            hosts::is_domain(name),
            format!("{field}.fqdn"),
            format!("`{name}` is not a lower-case domain name or *.wildcard"),
        );
    }
}

fn check_egress_rule(e: &mut Errors, field: &str, r: &EgressRule, deny: bool) {
    if let Some(to) = &r.to {
        e.check(
            !to.is_empty(),
            format!("{field}.to"),
            "to must not be empty when present (omit it to mean every destination)",
        );
        for (i, p) in to.iter().enumerate() {
            check_egress_peer(e, &format!("{field}.to[{i}]"), p, deny);
        }
    }
    check_ports(e, &format!("{field}.ports"), &r.ports);
}

fn check_ingress_peer(e: &mut Errors, field: &str, p: &IngressPeer) {
    let selector = p.pod_selector.is_some() || p.namespace_selector.is_some();
    e.check(
        p.cidr.is_some() != selector,
        field,
        "a peer sets exactly one of cidr or podSelector/namespaceSelector",
    );
    let base = p
        .cidr
        .as_deref()
        .and_then(|c| check_cidr(e, &format!("{field}.cidr"), c));
    if p.except.is_some() && p.cidr.is_none() {
        e.check(false, format!("{field}.except"), "except needs cidr");
    } else {
        check_except(e, &format!("{field}.except"), base, &p.except);
    }
}

/// Validates a policy spec; errors name fields below `spec`.
pub fn validate_policy(spec: &AgentPolicySpec) -> Result<(), Invalid> {
    let mut e = Errors::default();
    if let Some(v) = &spec.version {
        e.check(
            v.len() <= 64,
            "version",
            "version is longer than 64 characters",
        );
    }
    if let Some(fs) = &spec.filesystem {
        let lists = [
            ("readwritePaths", &fs.readwrite_paths),
            ("readonlyPaths", &fs.readonly_paths),
            ("deniedPaths", &fs.denied_paths),
        ];
        let mut seen: BTreeSet<&str> = BTreeSet::new();
        for (name, list) in lists {
            for (i, p) in list.iter().enumerate() {
                let f = format!("filesystem.{name}[{i}]");
                check_path(&mut e, &f, p);
                e.check(
                    seen.insert(&p.0),
                    &f,
                    format!("`{}` is listed more than once", p.0),
                );
                if name != "readonlyPaths" {
                    e.check(
                        p.0 != "/",
                        &f,
                        "the root filesystem cannot be made writable or masked",
                    );
                    e.check(
                        !UNMOUNTABLE.iter().any(|d| under(&p.0, d)),
                        &f,
                        format!(
                            "`{}` is under /proc, /sys or /dev, which a volume cannot cover",
                            p.0
                        ),
                    );
                }
            }
        }
        for (i, rw) in fs.readwrite_paths.iter().enumerate() {
            for d in &fs.denied_paths {
                e.check(
                    !under(&rw.0, &d.0),
                    format!("filesystem.readwritePaths[{i}]"),
                    format!("`{}` lies under denied path `{}`", rw.0, d.0),
                );
            }
        }
        for (i, ro) in fs.readonly_paths.iter().enumerate() {
            for d in &fs.denied_paths {
                e.check(
                    !under(&ro.0, &d.0),
                    format!("filesystem.readonlyPaths[{i}]"),
                    format!("`{}` lies under denied path `{}`", ro.0, d.0),
                );
            }
        }
    }
    if let Some(net) = &spec.network {
        let directional = net.egress.is_some() || net.ingress.is_some();
        let legacy = net.allow_outbound.is_some()
            || net.allow_local_network.is_some()
            || net.allowed_hosts.is_some()
            || net.blocked_hosts.is_some()
            || net.proxy.is_some();
        e.check(
            !(directional && legacy),
            "network",
            "legacy network fields (allowOutbound, allowLocalNetwork, allowedHosts, blockedHosts, proxy) cannot be mixed with egress/ingress",
        );
        if let Some(eg) = &net.egress {
            e.check(
                eg.allow.len() <= 32,
                "network.egress.allow",
                "at most 32 allow rules",
            );
            e.check(
                eg.deny.len() <= 32,
                "network.egress.deny",
                "at most 32 deny rules",
            );
            for (i, r) in eg.allow.iter().enumerate() {
                check_egress_rule(&mut e, &format!("network.egress.allow[{i}]"), r, false);
            }
            for (i, r) in eg.deny.iter().enumerate() {
                check_egress_rule(&mut e, &format!("network.egress.deny[{i}]"), r, true);
            }
        }
        if let Some(ing) = &net.ingress {
            e.check(
                ing.allow.len() <= 32,
                "network.ingress.allow",
                "at most 32 allow rules",
            );
            for (i, r) in ing.allow.iter().enumerate() {
                let f = format!("network.ingress.allow[{i}]");
                if let Some(from) = &r.from {
                    e.check(
                        !from.is_empty(),
                        format!("{f}.from"),
                        "from must not be empty when present (omit it to mean every source)",
                    );
                    for (j, p) in from.iter().enumerate() {
                        check_ingress_peer(&mut e, &format!("{f}.from[{j}]"), p);
                    }
                }
                check_ports(&mut e, &format!("{f}.ports"), &r.ports);
            }
        }
        for (name, list) in [
            ("allowedHosts", &net.allowed_hosts),
            ("blockedHosts", &net.blocked_hosts),
        ] {
            for (i, h) in list.iter().flatten().enumerate() {
                let ok = hosts::is_domain(h)
                    || h.parse::<std::net::IpAddr>().is_ok()
                    || Cidr::parse(h).is_ok();
                e.check(
                    ok,
                    format!("network.{name}[{i}]"),
                    format!("`{h}` is not a lower-case host name, IP address or CIDR"),
                );
            }
        }
        if let Some(p) = &net.proxy {
            let set = [
                p.localhost.is_some(),
                p.builtin_test_server.is_some(),
                p.url.is_some(),
            ]
            .iter()
            .filter(|x| **x)
            .count();
            e.check(
                set == 1,
                "network.proxy",
                "set exactly one of localhost, builtinTestServer or url",
            );
            if let Some(port) = p.localhost {
                e.check(
                    (1..=65535).contains(&port),
                    "network.proxy.localhost",
                    format!("port {port} is outside 1-65535"),
                );
            }
            e.check(
                p.builtin_test_server != Some(false),
                "network.proxy.builtinTestServer",
                "builtinTestServer must be true when set",
            );
            if let Some(url) = &p.url
                && let Err(msg) = hosts::parse_proxy(url)
            {
                e.check(false, "network.proxy.url", msg);
            }
        }
    }
    if let Some(p) = spec
        .runtime_config
        .as_ref()
        .and_then(|r| r.network_proxy.as_ref())
    {
        if let Err(msg) = hosts::parse_proxy(p) {
            e.check(false, "runtimeConfig.networkProxy", msg);
        }
        e.check(
            spec.network
                .as_ref()
                .and_then(|n| n.proxy.as_ref())
                .is_none(),
            "runtimeConfig.networkProxy",
            "set either runtimeConfig.networkProxy or the legacy network.proxy, not both",
        );
    }
    if let Some(t) = spec.timeout_ms {
        e.check(
            (1000..=31_536_000_000).contains(&t),
            "timeoutMs",
            format!("timeoutMs {t} is outside 1000 (1 s) to 31536000000 (1 year)"),
        );
    }
    if let Some(iso) = &spec.isolation {
        if iso.runtime == Some(Runtime::Runc) {
            e.check(
                iso.runtime_class_name.is_none(),
                "isolation.runtimeClassName",
                "runtime runc takes no runtimeClassName",
            );
        }
        if let Some(name) = &iso.runtime_class_name {
            e.check(
                is_dns_subdomain(name),
                "isolation.runtimeClassName",
                format!("`{name}` is not a valid RuntimeClass name"),
            );
        }
    }
    if let Some(p) = &spec.privileges {
        for (name, id) in [
            ("runAsUser", p.run_as_user),
            ("runAsGroup", p.run_as_group),
            ("fsGroup", p.fs_group),
        ] {
            if let Some(id) = id {
                e.check(
                    id != 0,
                    format!("privileges.{name}"),
                    "0 (root) is not allowed",
                );
                e.check(
                    (1..=2_147_483_647).contains(&id),
                    format!("privileges.{name}"),
                    format!("{id} is outside 1-2147483647"),
                );
            }
        }
    }
    if let Some(s) = &spec.syscalls {
        let kind = s.profile.unwrap_or_default();
        e.check(
            (kind == SeccompKind::Localhost) == s.localhost_profile.is_some(),
            "syscalls.localhostProfile",
            "localhostProfile is required with profile Localhost and only allowed with it",
        );
        if let Some(lp) = &s.localhost_profile {
            e.check(
                !lp.starts_with('/') && !lp.split('/').any(|x| x == ".."),
                "syscalls.localhostProfile",
                "localhostProfile is a relative path without '..'",
            );
        }
        e.check(
            s.block.is_empty() || kind != SeccompKind::RuntimeDefault,
            "syscalls.block",
            "block needs profile Localhost or Generated",
        );
        e.check(
            kind != SeccompKind::Generated || !s.block.is_empty(),
            "syscalls.block",
            "profile Generated needs at least one syscall in block",
        );
        for (i, name) in s.block.iter().enumerate() {
            let ok = !name.is_empty()
                && name.len() <= 64
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
            e.check(
                ok,
                format!("syscalls.block[{i}]"),
                format!("`{name}` is not a syscall name"),
            );
        }
    }
    if let Some(r) = &spec.resources {
        for (name, q) in [
            ("cpu", &r.cpu),
            ("memory", &r.memory),
            ("ephemeralStorage", &r.ephemeral_storage),
        ] {
            if let Some(q) = q {
                check_quantity(&mut e, &format!("resources.{name}"), q);
            }
        }
        for (name, q) in r.default_requests.iter().flat_map(|d| {
            [
                ("cpu", &d.cpu),
                ("memory", &d.memory),
                ("ephemeralStorage", &d.ephemeral_storage),
            ]
        }) {
            if let Some(q) = q {
                check_quantity(&mut e, &format!("resources.defaultRequests.{name}"), q);
            }
        }
    }
    if let Some(w) = &spec.workspace {
        if let Some(p) = &w.path {
            check_path(&mut e, "workspace.path", p);
            e.check(
                p.0 != "/" && !UNMOUNTABLE.iter().any(|d| under(&p.0, d)),
                "workspace.path",
                format!("`{}` cannot hold a volume", p.0),
            );
        }
        let path = w.path.as_ref().map_or("/workspace", |p| p.0.as_str());
        for d in spec.filesystem.iter().flat_map(|f| &f.denied_paths) {
            e.check(
                !under(path, &d.0),
                "workspace.path",
                format!("`{path}` lies under denied path `{}`", d.0),
            );
        }
        for r in spec.filesystem.iter().flat_map(|f| &f.readonly_paths) {
            e.check(
                r.0 != path,
                "workspace.path",
                format!("`{path}` is also a read-only path; the workspace is writable"),
            );
        }
        if let Some(q) = &w.size {
            check_quantity(&mut e, "workspace.size", q);
        }
        e.check(
            w.storage_class_name.is_none() || w.persistent == Some(true),
            "workspace.storageClassName",
            "storageClassName needs persistent: true",
        );
    }
    if let Some(id) = &spec.identity
        && let Some(s) = id.token_expiry_seconds
    {
        e.check(
            (600..=86400).contains(&s),
            "identity.tokenExpirySeconds",
            format!("{s} is outside 600-86400"),
        );
    }
    if let Some(img) = &spec.images {
        for (i, r) in img.allowed_registries.iter().enumerate() {
            e.check(
                !r.is_empty() && !r.contains("://") && !r.contains(char::is_whitespace),
                format!("images.allowedRegistries[{i}]"),
                format!("`{r}` is not a registry or repository prefix (e.g. ghcr.io/acme)"),
            );
        }
    }
    e.done()
}

fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

fn is_label_key(k: &str) -> bool {
    let (prefix, name) = match k.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    prefix.is_none_or(is_dns_subdomain)
        && !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// Validates a sandbox spec on its own (its fit with the policy is checked when compiling).
pub fn validate_sandbox(spec: &AgentSandboxSpec) -> Result<(), Invalid> {
    let mut e = Errors::default();
    e.check(
        !spec.policy_ref.name.is_empty(),
        "policyRef.name",
        if spec.pool_ref.is_some() {
            "policyRef.name is required: a sandbox of a pool (poolRef) takes it from the pool's template"
        } else {
            "policyRef.name is required (or poolRef, to take it from a pool's template)"
        },
    );
    e.check(
        is_dns_subdomain(&spec.policy_ref.name) || spec.policy_ref.name.is_empty(),
        "policyRef.name",
        format!("`{}` is not a valid object name", spec.policy_ref.name),
    );
    e.check(
        !spec.image.is_empty(),
        "image",
        "image is required (or poolRef, to take it from a pool's template)",
    );
    e.check(
        spec.image.is_empty() || image::is_reference(&spec.image),
        "image",
        format!("`{}` is not an image reference", spec.image),
    );
    let mut names = BTreeSet::new();
    for (i, v) in spec.env.iter().enumerate() {
        let f = format!("env[{i}]");
        let ok = !v.name.is_empty()
            && v.name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
            && !v.name.starts_with(|c: char| c.is_ascii_digit());
        e.check(
            ok,
            format!("{f}.name"),
            format!("`{}` is not a valid environment variable name", v.name),
        );
        e.check(
            names.insert(v.name.as_str()),
            format!("{f}.name"),
            format!("`{}` is set more than once", v.name),
        );
        e.check(
            !(v.value.is_some() && v.value_from.is_some()),
            &f,
            "set value or valueFrom, not both",
        );
        if let Some(src) = &v.value_from {
            e.check(
                src.secret_key_ref.is_some() != src.config_map_key_ref.is_some(),
                format!("{f}.valueFrom"),
                "set exactly one of secretKeyRef or configMapKeyRef",
            );
        }
    }
    if let Some(w) = &spec.working_dir {
        e.check(
            w.starts_with('/'),
            "workingDir",
            format!("`{w}` is not an absolute path"),
        );
    }
    let mut ports = BTreeSet::new();
    for (i, p) in spec.ports.iter().enumerate() {
        e.check(
            (1..=65535).contains(&p.container_port),
            format!("ports[{i}].containerPort"),
            format!("port {} is outside 1-65535", p.container_port),
        );
        e.check(
            ports.insert((p.container_port, p.protocol.unwrap_or_default() as u8)),
            format!("ports[{i}]"),
            "port listed more than once",
        );
    }
    if let Some(r) = &spec.resources {
        for (kind, map) in [("requests", &r.requests), ("limits", &r.limits)] {
            for (k, q) in map {
                let f = format!("resources.{kind}.{k}");
                e.check(
                    ["cpu", "memory", "ephemeral-storage"].contains(&k.as_str()),
                    &f,
                    format!("only cpu, memory and ephemeral-storage may be set, not `{k}`"),
                );
                check_quantity(&mut e, &f, q);
            }
        }
    }
    if let Some(t) = spec.ttl_seconds_after_finished {
        e.check(
            (0..=31_536_000).contains(&t),
            "ttlSecondsAfterFinished",
            format!("{t} is outside 0-31536000"),
        );
    }
    for k in spec.pod_labels.keys() {
        let f = format!("podLabels[{k}]");
        e.check(
            is_label_key(k),
            &f,
            format!("`{k}` is not a valid label key"),
        );
        e.check(
            !always_refused(k),
            &f,
            format!("label `{k}` is refused: Kubernetes, Palisade, network plugins, meshes or runtimes act on it"),
        );
    }
    for (k, v) in &spec.pod_labels {
        let ok = v.len() <= 63
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        e.check(
            ok,
            format!("podLabels[{k}]"),
            format!("`{v}` is not a valid label value"),
        );
    }
    for k in spec.pod_annotations.keys() {
        let f = format!("podAnnotations[{k}]");
        e.check(
            is_label_key(k),
            &f,
            format!("`{k}` is not a valid annotation key"),
        );
        e.check(
            !annotation_refused(k),
            &f,
            format!("annotation `{k}` is refused: Kubernetes, Palisade, network plugins, meshes or runtimes act on it"),
        );
    }
    for k in spec.node_selector.keys() {
        e.check(
            is_label_key(k),
            format!("nodeSelector[{k}]"),
            format!("`{k}` is not a valid label key"),
        );
    }
    e.done()
}
