//! Prometheus metrics of the operator.
//!
//! One [`Metrics`] value is created at start-up and cloned into every reconciler and into the
//! `/metrics` endpoint. It owns its own [`Registry`] rather than using the process-global default
//! one, so tests (and several operators in one process) never see each other's series.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Deref;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Every sandbox phase. Each one is always exported (as zero when no sandbox is in it), so a
/// dashboard or alert does not see a series vanish when its last sandbox leaves a phase.
pub const PHASES: [&str; 8] = [
    "Pending",
    "Starting",
    "Running",
    "Paused",
    "Succeeded",
    "Failed",
    "Blocked",
    "Expired",
];

/// Reconcile durations run from a cache hit (about a millisecond) to a slow API round trip
/// chain (seconds); past 10 s a reconcile is simply "too slow".
const RECONCILE_BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Sandbox start-up spans a warm node (sub-second) to a cold image pull (minutes).
const START_BUCKETS: [f64; 13] = [
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 180.0, 300.0,
];

/// A claim of a warm sandbox takes milliseconds; a cold start of a pool's sandbox, seconds.
const CLAIM_BUCKETS: [f64; 14] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0,
];

/// Cheap-to-clone handle on the operator's metrics: one `Arc` around [`MetricSet`], which it
/// dereferences to, so `metrics.start_latency.observe(..)` works directly.
#[derive(Clone)]
pub struct Metrics(Arc<MetricSet>);

/// The metrics themselves, all registered in `registry`.
pub struct MetricSet {
    /// Registry that `/metrics` gathers; holds every metric below.
    pub registry: Registry,
    /// `palisade_reconcile_total{controller}`: finished reconciles, successful or not.
    pub reconciles: IntCounterVec,
    /// `palisade_reconcile_errors_total{controller,reason}`: failed reconciles by cause.
    pub reconcile_errors: IntCounterVec,
    /// `palisade_reconcile_duration_seconds{controller}`: wall time of one reconcile.
    pub reconcile_duration: HistogramVec,
    /// `palisade_sandboxes{phase}`: current number of sandboxes in each phase.
    pub sandboxes: IntGaugeVec,
    /// `palisade_sandbox_start_latency_seconds`: from a sandbox's creation to it being Ready.
    pub start_latency: Histogram,
    /// `palisade_policy_compile_errors_total{reason}`: policies that failed to compile.
    pub compile_errors: IntCounterVec,
    /// `palisade_leader`: 1 while this replica runs the controllers (it holds the leader Lease,
    /// or leader election is off), else 0.
    pub leader: IntGauge,
    /// `palisade_pool_claim_seconds{start}`: from the creation of a sandbox of a pool to it
    /// being Ready, by how it started (`warm` or `cold`).
    pub claim_latency: HistogramVec,
    /// `palisade_pool_warm_sandboxes{pool}`: warm sandboxes not yet taken (`pool` is
    /// `<namespace>/<name>`).
    pub pool_replicas: IntGaugeVec,
    /// `palisade_pool_ready_warm_sandboxes{pool}`: of those, ready to be taken.
    pub pool_ready: IntGaugeVec,
    /// `palisade_pool_refill_seconds`: from a warm sandbox's creation to it being Ready.
    pub refill_latency: Histogram,
}

impl Deref for Metrics {
    type Target = MetricSet;

    fn deref(&self) -> &MetricSet {
        &self.0
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric in a fresh registry.
    ///
    /// # Panics
    /// Only if the static definitions above are invalid (a programming error that the unit tests
    /// catch); nothing external is involved.
    pub fn new() -> Metrics {
        const VALID: &str = "static metric definitions are valid and unique";
        let registry = Registry::new();
        let reconciles = IntCounterVec::new(
            Opts::new("palisade_reconcile_total", "Reconciles run, by controller."),
            &["controller"],
        )
        .expect(VALID);
        let reconcile_errors = IntCounterVec::new(
            Opts::new(
                "palisade_reconcile_errors_total",
                "Reconciles that failed, by controller and reason.",
            ),
            &["controller", "reason"],
        )
        .expect(VALID);
        let reconcile_duration = HistogramVec::new(
            HistogramOpts::new(
                "palisade_reconcile_duration_seconds",
                "Wall time of one reconcile, by controller.",
            )
            .buckets(RECONCILE_BUCKETS.to_vec()),
            &["controller"],
        )
        .expect(VALID);
        let sandboxes = IntGaugeVec::new(
            Opts::new("palisade_sandboxes", "Sandboxes currently in each phase."),
            &["phase"],
        )
        .expect(VALID);
        let start_latency = Histogram::with_opts(
            HistogramOpts::new(
                "palisade_sandbox_start_latency_seconds",
                "Time from a sandbox's creation until it is Ready.",
            )
            .buckets(START_BUCKETS.to_vec()),
        )
        .expect(VALID);
        let compile_errors = IntCounterVec::new(
            Opts::new(
                "palisade_policy_compile_errors_total",
                "Policies that failed to compile, by reason.",
            ),
            &["reason"],
        )
        .expect(VALID);

        registry
            .register(Box::new(reconciles.clone()))
            .expect(VALID);
        registry
            .register(Box::new(reconcile_errors.clone()))
            .expect(VALID);
        registry
            .register(Box::new(reconcile_duration.clone()))
            .expect(VALID);
        registry.register(Box::new(sandboxes.clone())).expect(VALID);
        registry
            .register(Box::new(start_latency.clone()))
            .expect(VALID);
        registry
            .register(Box::new(compile_errors.clone()))
            .expect(VALID);
        let leader = IntGauge::new(
            "palisade_leader",
            "1 while this replica runs the controllers (holds the leader Lease, or leader election is off).",
        )
        .expect(VALID);
        registry.register(Box::new(leader.clone())).expect(VALID);
        let claim_latency = HistogramVec::new(
            HistogramOpts::new(
                "palisade_pool_claim_seconds",
                "Time from the creation of a sandbox of a pool until it is Ready, by start (warm or cold).",
            )
            .buckets(CLAIM_BUCKETS.to_vec()),
            &["start"],
        )
        .expect(VALID);
        let pool_replicas = IntGaugeVec::new(
            Opts::new(
                "palisade_pool_warm_sandboxes",
                "Warm sandboxes of a pool not yet taken.",
            ),
            &["pool"],
        )
        .expect(VALID);
        let pool_ready = IntGaugeVec::new(
            Opts::new(
                "palisade_pool_ready_warm_sandboxes",
                "Warm sandboxes of a pool ready to be taken.",
            ),
            &["pool"],
        )
        .expect(VALID);
        let refill_latency = Histogram::with_opts(
            HistogramOpts::new(
                "palisade_pool_refill_seconds",
                "Time from a warm sandbox's creation until it is Ready.",
            )
            .buckets(START_BUCKETS.to_vec()),
        )
        .expect(VALID);
        for m in [
            Box::new(claim_latency.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(pool_replicas.clone()),
            Box::new(pool_ready.clone()),
            Box::new(refill_latency.clone()),
        ] {
            registry.register(m).expect(VALID);
        }

        let metrics = Metrics(Arc::new(MetricSet {
            registry,
            reconciles,
            reconcile_errors,
            reconcile_duration,
            sandboxes,
            start_latency,
            compile_errors,
            leader,
            claim_latency,
            pool_replicas,
            pool_ready,
            refill_latency,
        }));
        // Both starts are exported from the start.
        for start in ["warm", "cold"] {
            metrics.claim_latency.with_label_values(&[start]);
        }
        // Export every phase as zero from the start, before the first census.
        metrics.set_phase_counts(&BTreeMap::new());
        metrics
    }

    /// Renders every metric in the Prometheus text exposition format
    /// ([`prometheus::TEXT_FORMAT`]).
    pub fn encode(&self) -> String {
        match TextEncoder::new().encode_to_string(&self.registry.gather()) {
            Ok(text) => text,
            Err(error) => {
                // Cannot happen with the metrics defined here; an empty scrape plus a log line
                // is better than failing the endpoint.
                tracing::error!(%error, "could not encode metrics");
                String::new()
            }
        }
    }

    /// Starts timing one reconcile of `controller`. The returned timer records the duration and
    /// counts the reconcile when finished or dropped, so early returns (`?`) are counted too.
    pub fn observe_reconcile(&self, controller: &str) -> ReconcileTimer {
        ReconcileTimer {
            duration: self.reconcile_duration.with_label_values(&[controller]),
            count: self.reconciles.with_label_values(&[controller]),
            start: Instant::now(),
            recorded: false,
        }
    }

    /// Counts one failed reconcile of `controller`. `reason` should come from a small fixed set
    /// (an error variant name), never free text, to keep the series count bounded.
    pub fn reconcile_error(&self, controller: &str, reason: &str) {
        self.reconcile_errors
            .with_label_values(&[controller, reason])
            .inc();
    }

    /// Counts one policy that failed to compile; `reason` as for [`Self::reconcile_error`].
    pub fn compile_error(&self, reason: &str) {
        self.compile_errors.with_label_values(&[reason]).inc();
    }

    /// Records the time a sandbox took from creation to Ready.
    pub fn observe_start_latency(&self, latency: Duration) {
        self.start_latency.observe(latency.as_secs_f64());
    }

    /// Replaces the sandbox census with `counts` (phase → number of sandboxes).
    ///
    /// Every phase in [`PHASES`] is set, to zero when absent from `counts`. A phase not in
    /// [`PHASES`] is exported too (so a new phase is visible before this list learns it) and
    /// its series is removed again by the first census that no longer has it.
    pub fn set_phase_counts(&self, counts: &BTreeMap<String, i64>) {
        for phase in PHASES {
            let count = counts.get(phase).copied().unwrap_or(0);
            self.sandboxes.with_label_values(&[phase]).set(count);
        }
        for (phase, count) in counts {
            if !PHASES.contains(&phase.as_str()) {
                self.sandboxes
                    .with_label_values(&[phase.as_str()])
                    .set(*count);
            }
        }
        for stale in self.exported_phases() {
            if !PHASES.contains(&stale.as_str()) && !counts.contains_key(&stale) {
                // Absent already is the state we want, so an error here needs no handling.
                let _ = self.sandboxes.remove_label_values(&[stale.as_str()]);
            }
        }
    }

    /// The `phase` label values that `palisade_sandboxes` currently exports.
    fn exported_phases(&self) -> BTreeSet<String> {
        use prometheus::core::Collector;
        self.sandboxes
            .collect()
            .iter()
            .flat_map(|family| family.get_metric())
            .flat_map(|metric| metric.get_label())
            .filter(|label| label.name() == "phase")
            .map(|label| label.value().to_owned())
            .collect()
    }
}

/// Times one reconcile; see [`Metrics::observe_reconcile`].
#[must_use = "a reconcile is recorded when its timer is finished or dropped"]
pub struct ReconcileTimer {
    duration: Histogram,
    count: IntCounter,
    start: Instant,
    recorded: bool,
}

impl ReconcileTimer {
    /// Records the reconcile now and returns how long it took.
    pub fn finish(mut self) -> Duration {
        self.record()
    }

    fn record(&mut self) -> Duration {
        let elapsed = self.start.elapsed();
        if !self.recorded {
            self.recorded = true;
            self.duration.observe(elapsed.as_secs_f64());
            self.count.inc();
        }
        elapsed
    }
}

impl Drop for ReconcileTimer {
    fn drop(&mut self) {
        self.record();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line_value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
    }

    #[test]
    fn exports_every_metric_with_its_name() {
        let metrics = Metrics::new();
        metrics.observe_reconcile("sandbox").finish();
        metrics.reconcile_error("sandbox", "Kube");
        metrics.compile_error("InvalidPort");
        metrics.observe_start_latency(Duration::from_secs(3));
        let text = metrics.encode();
        for name in [
            "palisade_reconcile_total",
            "palisade_reconcile_errors_total",
            "palisade_reconcile_duration_seconds",
            "palisade_sandboxes",
            "palisade_sandbox_start_latency_seconds",
            "palisade_policy_compile_errors_total",
        ] {
            assert!(
                text.contains(&format!("# TYPE {name} ")),
                "{name} in\n{text}"
            );
        }
        assert_eq!(
            line_value(
                &text,
                r#"palisade_reconcile_errors_total{controller="sandbox",reason="Kube"}"#
            ),
            Some(1.0)
        );
        assert_eq!(
            line_value(
                &text,
                r#"palisade_policy_compile_errors_total{reason="InvalidPort"}"#
            ),
            Some(1.0)
        );
        assert_eq!(
            line_value(
                &text,
                r#"palisade_sandbox_start_latency_seconds_bucket{le="5"}"#
            ),
            Some(1.0)
        );
        assert_eq!(
            line_value(
                &text,
                r#"palisade_sandbox_start_latency_seconds_bucket{le="2.5"}"#
            ),
            Some(0.0)
        );
    }

    #[test]
    fn timer_counts_once_whether_finished_or_dropped() {
        let metrics = Metrics::new();
        metrics.observe_reconcile("policy").finish();
        {
            let _timer = metrics.observe_reconcile("policy");
        }
        let count = metrics.reconciles.with_label_values(&["policy"]).get();
        let observed = metrics
            .reconcile_duration
            .with_label_values(&["policy"])
            .get_sample_count();
        assert_eq!((count, observed), (2, 2));
    }

    #[test]
    fn phase_census_zero_fills_and_drops_stale_unknown_phases() {
        let metrics = Metrics::new();
        let text = metrics.encode();
        for phase in PHASES {
            let series = format!(r#"palisade_sandboxes{{phase="{phase}"}}"#);
            assert_eq!(line_value(&text, &series), Some(0.0), "{series}");
        }

        let census = BTreeMap::from([("Running".to_owned(), 3), ("Hibernating".to_owned(), 1)]);
        metrics.set_phase_counts(&census);
        let text = metrics.encode();
        assert_eq!(
            line_value(&text, r#"palisade_sandboxes{phase="Running"}"#),
            Some(3.0)
        );
        assert_eq!(
            line_value(&text, r#"palisade_sandboxes{phase="Hibernating"}"#),
            Some(1.0)
        );

        metrics.set_phase_counts(&BTreeMap::from([("Failed".to_owned(), 2)]));
        let text = metrics.encode();
        assert_eq!(
            line_value(&text, r#"palisade_sandboxes{phase="Running"}"#),
            Some(0.0)
        );
        assert_eq!(
            line_value(&text, r#"palisade_sandboxes{phase="Failed"}"#),
            Some(2.0)
        );
        assert!(!text.contains("Hibernating"), "{text}");
    }

    #[test]
    fn clones_share_one_registry() {
        let metrics = Metrics::new();
        let clone = metrics.clone();
        clone.reconcile_error("sandbox", "Conflict");
        assert!(metrics.encode().contains(r#"reason="Conflict""#));
    }
}
