//! One JSON line per gateway decision, named after OCSF's Network Activity (class 4001) and
//! HTTP Activity (class 4002) events, and the gateway's Prometheus metrics.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use serde_json::{Value, json};

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
        let (class_uid, class_name, activity_id, activity_name) = match (self.activity, self.denial)
        {
            (Activity::Http, _) => (4002, "HTTP Activity", 99, "Other"),
            (Activity::Open, None) => (4001, "Network Activity", 1, "Open"),
            (Activity::Open, Some(_)) => (4001, "Network Activity", 5, "Refuse"),
            (Activity::Close, _) => (4001, "Network Activity", 2, "Close"),
        };
        let allowed = self.denial.is_none() || self.activity == Activity::Close;
        let mut v = json!({
            "time": now.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64,
            "category_uid": 4,
            "category_name": "Network Activity",
            "class_uid": class_uid,
            "class_name": class_name,
            "activity_id": activity_id,
            "activity_name": activity_name,
            "type_uid": class_uid * 100 + activity_id,
            "severity_id": if allowed { 1 } else { 3 },
            "action_id": if self.denial.is_none() { 1 } else { 2 },
            "action": if self.denial.is_none() { "Allowed" } else { "Denied" },
            "disposition": if self.denial.is_none() { "Allowed" } else { "Blocked" },
            "status": if self.denial.is_none() { "Success" } else { "Failure" },
            "status_detail": self.denial.map_or("Allowed", Denial::as_str),
            "src_endpoint": {"ip": self.source.ip().to_string(), "port": self.source.port()},
            "dst_endpoint": {"hostname": self.host, "port": self.port},
            "traffic": {"bytes_out": self.bytes_out, "bytes_in": self.bytes_in,
                        "bytes": self.bytes_out + self.bytes_in},
            "duration": self.duration.as_millis() as u64,
            "metadata": {"version": "1.3.0", "product": {"name": "Palisade gateway", "vendor_name": "Palisade"}},
        });
        if let Some(addr) = self.address {
            v["dst_endpoint"]["ip"] = json!(addr.ip().to_string());
        }
        if let Some(s) = &self.sandbox {
            v["src_endpoint"]["name"] = json!(format!("{}/{}", s.namespace, s.pod));
            v["actor"] = json!({"user": {"uid": s.sandbox_uid, "name": s.sandbox}});
            v["unmapped"] = json!({"namespace": s.namespace, "sandbox": s.sandbox, "pod": s.pod});
        }
        if let Some(m) = &self.method {
            v["http_request"] = json!({
                "http_method": m,
                "url": {"hostname": self.host, "port": self.port},
            });
        }
        v
    }
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
        let line = d.to_json(SystemTime::now());
        match &self.sink {
            AuditSink::Stdout => {
                let mut out = std::io::stdout().lock();
                let _ = serde_json::to_writer(&mut out, &line);
                let _ = out.write_all(b"\n");
            }
            AuditSink::Memory(lines) => {
                if let Ok(mut l) = lines.lock() {
                    l.push(line);
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
