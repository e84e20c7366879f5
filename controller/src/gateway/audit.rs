//! One JSON line per gateway decision, named after OCSF's Network Activity (class 4001) and
//! HTTP Activity (class 4002) events, and the gateway's Prometheus metrics.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use serde::Serialize;
use serde_json::Value;

use super::directory::Source;
use super::rules::Denial;

/// What happened to a request or a tunnel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activity {
    /// A CONNECT tunnel was opened (or refused).
    Open,
    /// A tunnel ended.
    Close,
    /// A plain HTTP request was forwarded (or refused).
    Http,
}

/// One decision, as the audit line and the metrics see it.
#[derive(Clone, Debug)]
pub struct Decision {
    pub activity: Activity,
    pub source: SocketAddr,
    pub sandbox: Option<Source>,
    pub host: String,
    pub port: u16,
    pub address: Option<SocketAddr>,
    /// `None`: allowed.
    pub denial: Option<Denial>,
    pub method: Option<String>,
    pub bytes_out: u64,
    pub bytes_in: u64,
    pub duration: Duration,
}

impl Decision {
    pub fn new(activity: Activity, source: SocketAddr, host: String, port: u16) -> Self {
        Decision {
            activity,
            source,
            sandbox: None,
            host,
            port,
            address: None,
            denial: None,
            method: None,
            bytes_out: 0,
            bytes_in: 0,
            duration: Duration::ZERO,
        }
    }

    /// The OCSF-named JSON object.
    pub fn to_json(&self, now: SystemTime) -> Value {
        serde_json::to_value(self.line(now)).unwrap_or(Value::Null)
    }

    /// The audit line, typed: serialised straight to the output, with the fields in the order
    /// a `Value` prints them (sorted).
    fn line(&self, now: SystemTime) -> Line<'_> {
        let (class_uid, class_name, activity_id, activity_name) = match (self.activity, self.denial)
        {
            (Activity::Http, _) => (4002, "HTTP Activity", 99, "Other"),
            (Activity::Open, None) => (4001, "Network Activity", 1, "Open"),
            (Activity::Open, Some(_)) => (4001, "Network Activity", 5, "Refuse"),
            (Activity::Close, _) => (4001, "Network Activity", 2, "Close"),
        };
        let allowed = self.denial.is_none() || self.activity == Activity::Close;
        let passed = self.denial.is_none();
        Line {
            action: if passed { "Allowed" } else { "Denied" },
            action_id: if passed { 1 } else { 2 },
            activity_id,
            activity_name,
            actor: self.sandbox.as_ref().map(|s| Actor {
                user: User {
                    name: &s.sandbox,
                    uid: &s.sandbox_uid,
                },
            }),
            category_name: "Network Activity",
            category_uid: 4,
            class_name,
            class_uid,
            disposition: if passed { "Allowed" } else { "Blocked" },
            dst_endpoint: Dst {
                hostname: &self.host,
                ip: self.address.map(|a| a.ip()),
                port: self.port,
            },
            duration: self.duration.as_millis() as u64,
            http_request: self.method.as_deref().map(|m| HttpRequest {
                http_method: m,
                url: Url {
                    hostname: &self.host,
                    port: self.port,
                },
            }),
            metadata: Metadata {
                product: Product {
                    name: "Palisade gateway",
                    vendor_name: "Palisade",
                },
                version: "1.3.0",
            },
            severity_id: if allowed { 1 } else { 3 },
            src_endpoint: Src {
                ip: self.source.ip(),
                name: self
                    .sandbox
                    .as_ref()
                    .map(|s| format!("{}/{}", s.namespace, s.pod)),
                port: self.source.port(),
            },
            status: if passed { "Success" } else { "Failure" },
            status_detail: self.denial.map_or("Allowed", Denial::as_str),
            time: now
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis() as u64,
            traffic: Traffic {
                bytes: self.bytes_out + self.bytes_in,
                bytes_in: self.bytes_in,
                bytes_out: self.bytes_out,
            },
            type_uid: class_uid * 100 + activity_id,
            unmapped: self.sandbox.as_ref().map(|s| Unmapped {
                namespace: &s.namespace,
                pod: &s.pod,
                sandbox: &s.sandbox,
            }),
        }
    }
}

#[derive(Serialize)]
struct Line<'a> {
    action: &'static str,
    action_id: u8,
    activity_id: u32,
    activity_name: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    actor: Option<Actor<'a>>,
    category_name: &'static str,
    category_uid: u8,
    class_name: &'static str,
    class_uid: u32,
    disposition: &'static str,
    dst_endpoint: Dst<'a>,
    duration: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    http_request: Option<HttpRequest<'a>>,
    metadata: Metadata,
    severity_id: u8,
    src_endpoint: Src,
    status: &'static str,
    status_detail: &'static str,
    time: u64,
    traffic: Traffic,
    type_uid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    unmapped: Option<Unmapped<'a>>,
}

#[derive(Serialize)]
struct Actor<'a> {
    user: User<'a>,
}

#[derive(Serialize)]
struct User<'a> {
    name: &'a str,
    uid: &'a str,
}

#[derive(Serialize)]
struct Dst<'a> {
    hostname: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    ip: Option<std::net::IpAddr>,
    port: u16,
}

#[derive(Serialize)]
struct Src {
    ip: std::net::IpAddr,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    port: u16,
}

#[derive(Serialize)]
struct HttpRequest<'a> {
    http_method: &'a str,
    url: Url<'a>,
}

#[derive(Serialize)]
struct Url<'a> {
    hostname: &'a str,
    port: u16,
}

#[derive(Serialize)]
struct Metadata {
    product: Product,
    version: &'static str,
}

#[derive(Serialize)]
struct Product {
    name: &'static str,
    vendor_name: &'static str,
}

#[derive(Serialize)]
struct Traffic {
    bytes: u64,
    bytes_in: u64,
    bytes_out: u64,
}

#[derive(Serialize)]
struct Unmapped<'a> {
    namespace: &'a str,
    pod: &'a str,
    sandbox: &'a str,
}

/// Where audit lines go: standard output in the gateway, memory in tests.
#[derive(Clone)]
pub enum AuditSink {
    Stdout,
    /// Metrics only (benchmarks that measure the audit line's cost).
    Discard,
    Memory(Arc<Mutex<Vec<Value>>>),
}

/// The gateway's metrics, in their own registry.
#[derive(Clone)]
pub struct GatewayMetrics {
    pub registry: Registry,
    /// `palisade_gateway_decisions_total{outcome,reason}`.
    pub decisions: IntCounterVec,
    /// `palisade_gateway_open_tunnels`.
    pub open_tunnels: IntGauge,
    /// `palisade_gateway_bytes_total{direction}` (`out`: sandbox to upstream).
    pub bytes: IntCounterVec,
    /// `palisade_gateway_decision_seconds`: from the request to the decision (resolving and
    /// connecting included).
    pub decision_seconds: Histogram,
    /// `palisade_gateway_tunnels_closed_by_policy_total`.
    pub closed_by_policy: IntCounter,
}

impl GatewayMetrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let decisions = IntCounterVec::new(
            Opts::new(
                "palisade_gateway_decisions_total",
                "Gateway decisions by outcome (allowed, denied) and reason",
            ),
            &["outcome", "reason"],
        )
        .expect("valid metric");
        let open_tunnels =
            IntGauge::new("palisade_gateway_open_tunnels", "CONNECT tunnels open now")
                .expect("valid metric");
        let bytes = IntCounterVec::new(
            Opts::new(
                "palisade_gateway_bytes_total",
                "Bytes carried, by direction (out: from sandboxes, in: to sandboxes)",
            ),
            &["direction"],
        )
        .expect("valid metric");
        let decision_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "palisade_gateway_decision_seconds",
                "Time from a request to its decision, resolving and connecting included",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
        )
        .expect("valid metric");
        let closed_by_policy = IntCounter::new(
            "palisade_gateway_tunnels_closed_by_policy_total",
            "Open tunnels closed because the sandbox's policy no longer allows them",
        )
        .expect("valid metric");
        for c in [
            Box::new(decisions.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(open_tunnels.clone()),
            Box::new(bytes.clone()),
            Box::new(decision_seconds.clone()),
            Box::new(closed_by_policy.clone()),
        ] {
            registry.register(c).expect("metric registered once");
        }
        decisions.with_label_values(&["allowed", "Allowed"]);
        for d in Denial::ALL {
            decisions.with_label_values(&["denied", d.as_str()]);
        }
        GatewayMetrics {
            registry,
            decisions,
            open_tunnels,
            bytes,
            decision_seconds,
            closed_by_policy,
        }
    }

    pub fn render(&self) -> String {
        prometheus::TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_default()
    }
}

impl Default for GatewayMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Writes audit lines and counts decisions; refusals of a known sandbox also go to `denials`
/// (its status summary and events), when set.
#[derive(Clone)]
pub struct Auditor {
    pub sink: AuditSink,
    pub metrics: GatewayMetrics,
    pub denials: Option<Arc<Mutex<super::denials::DenialLog>>>,
}

impl Auditor {
    pub fn record(&self, d: &Decision) {
        if let (Some(log), Some(source), Some(reason), false) = (
            &self.denials,
            &d.sandbox,
            d.denial,
            d.activity == Activity::Close,
        ) && let Ok(mut log) = log.lock()
        {
            log.record(
                source,
                &d.host,
                d.port,
                reason,
                jiff::Timestamp::now(),
                std::time::Instant::now(),
            );
        }
        match d.activity {
            Activity::Close => {
                self.metrics
                    .bytes
                    .with_label_values(&["out"])
                    .inc_by(d.bytes_out);
                self.metrics
                    .bytes
                    .with_label_values(&["in"])
                    .inc_by(d.bytes_in);
                if d.denial == Some(Denial::PolicyChanged) {
                    self.metrics.closed_by_policy.inc();
                }
            }
            Activity::Open | Activity::Http => {
                let (outcome, reason) = match d.denial {
                    None => ("allowed", "Allowed"),
                    Some(r) => ("denied", r.as_str()),
                };
                self.metrics
                    .decisions
                    .with_label_values(&[outcome, reason])
                    .inc();
                if d.activity == Activity::Http {
                    self.metrics
                        .bytes
                        .with_label_values(&["out"])
                        .inc_by(d.bytes_out);
                    self.metrics
                        .bytes
                        .with_label_values(&["in"])
                        .inc_by(d.bytes_in);
                }
            }
        }
        if matches!(self.sink, AuditSink::Discard) {
            return;
        }
        match &self.sink {
            AuditSink::Stdout => {
                // One write per line: the line is built first, then written whole.
                let mut buf = Vec::with_capacity(768);
                if serde_json::to_writer(&mut buf, &d.line(SystemTime::now())).is_ok() {
                    buf.push(b'\n');
                    let _ = std::io::stdout().lock().write_all(&buf);
                }
            }
            AuditSink::Memory(lines) => {
                if let Ok(mut l) = lines.lock() {
                    l.push(d.to_json(SystemTime::now()));
                }
            }
            AuditSink::Discard => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_reads_as_an_ocsf_refuse_event() {
        let mut d = Decision::new(
            Activity::Open,
            "10.0.0.1:40000".parse().unwrap(),
            "evil.example.com".into(),
            443,
        );
        d.denial = Some(Denial::NoMatchingRule);
        d.sandbox = Some(Source {
            namespace: "a".into(),
            sandbox: "s1".into(),
            sandbox_uid: "u1".into(),
            credential: "u1".into(),
            pod: "s1".into(),
        });
        let v = d.to_json(UNIX_EPOCH + Duration::from_secs(1));
        assert_eq!(v["class_uid"], 4001);
        assert_eq!(v["activity_id"], 5);
        assert_eq!(v["type_uid"], 400105);
        assert_eq!(v["action"], "Denied");
        assert_eq!(v["status_detail"], "NoMatchingRule");
        assert_eq!(v["time"], 1000);
        assert_eq!(v["dst_endpoint"]["hostname"], "evil.example.com");
        assert_eq!(v["unmapped"]["sandbox"], "s1");
        assert_eq!(v["src_endpoint"]["name"], "a/s1");
    }

    #[test]
    fn a_forwarded_request_line_has_every_field_in_order() {
        let mut d = Decision::new(
            Activity::Http,
            "10.0.0.1:40000".parse().unwrap(),
            "plain.example.com".into(),
            80,
        );
        d.sandbox = Some(Source {
            namespace: "a".into(),
            sandbox: "s1".into(),
            sandbox_uid: "u1".into(),
            credential: "u1".into(),
            pod: "s1".into(),
        });
        d.address = Some("192.0.2.20:80".parse().unwrap());
        d.method = Some("GET".into());
        d.bytes_out = 10;
        d.bytes_in = 32;
        d.duration = Duration::from_millis(7);
        let line = serde_json::to_string(&d.line(UNIX_EPOCH + Duration::from_secs(2))).unwrap();
        assert_eq!(
            line,
            concat!(
                r#"{"action":"Allowed","action_id":1,"activity_id":99,"activity_name":"Other","#,
                r#""actor":{"user":{"name":"s1","uid":"u1"}},"category_name":"Network Activity","#,
                r#""category_uid":4,"class_name":"HTTP Activity","class_uid":4002,"#,
                r#""disposition":"Allowed","dst_endpoint":{"hostname":"plain.example.com","#,
                r#""ip":"192.0.2.20","port":80},"duration":7,"http_request":{"http_method":"GET","#,
                r#""url":{"hostname":"plain.example.com","port":80}},"metadata":{"product":"#,
                r#"{"name":"Palisade gateway","vendor_name":"Palisade"},"version":"1.3.0"},"#,
                r#""severity_id":1,"src_endpoint":{"ip":"10.0.0.1","name":"a/s1","port":40000},"#,
                r#""status":"Success","status_detail":"Allowed","time":2000,"traffic":{"bytes":42,"#,
                r#""bytes_in":32,"bytes_out":10},"type_uid":400299,"unmapped":{"namespace":"a","#,
                r#""pod":"s1","sandbox":"s1"}}"#
            )
        );
        // The same object as the one tests and the memory sink see.
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v, d.to_json(UNIX_EPOCH + Duration::from_secs(2)));
    }

    #[test]
    fn every_reason_is_exported_from_the_start() {
        let m = GatewayMetrics::new();
        let text = m.render();
        for d in Denial::ALL {
            assert!(
                text.contains(&format!("reason=\"{}\"", d.as_str())),
                "{d} missing"
            );
        }
    }
}
