//! What the gateway refused, per sandbox: counted between two writes of the sandbox's
//! `status.egressDenials` (added to what the status already says, so several gateway replicas
//! add up), and a Warning event the first time a host is refused, rate-limited.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::api::sandbox::{EgressDenial, EgressDenials};

use super::directory::Source;
use super::rules::Denial;

/// Hosts kept in a sandbox's status.
pub const MAX_HOSTS: usize = 8;
/// At most one event per sandbox in this time.
pub const EVENT_INTERVAL: Duration = Duration::from_secs(10);
/// Distinct hosts announced by event per sandbox (by one gateway replica), at most.
pub const MAX_ANNOUNCED: usize = 32;
/// Distinct hosts counted per sandbox between two writes; beyond, the one refused longest ago
/// is dropped (its refusals stay in the total): a sandbox asking for random names cannot grow
/// the gateway's memory.
pub const MAX_PENDING_HOSTS: usize = 64;
/// What was announced about a sandbox is forgotten once nothing was refused for this long
/// (the sandbox may be gone); a host refused after that is announced again.
pub const ANNOUNCED_FOR: Duration = Duration::from_secs(3600);

/// Refusals of one sandbox not yet written to its status.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Pending {
    pub namespace: String,
    pub name: String,
    pub total: i64,
    /// (host, port) → (last reason, count, last time).
    pub hosts: BTreeMap<(String, u16), (String, i64, Timestamp)>,
}

/// A Warning event to publish about a sandbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Announcement {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub note: String,
}

#[derive(Default)]
struct Announced {
    hosts: HashSet<(String, u16)>,
    /// The last event.
    last: Option<Instant>,
    /// The last refusal.
    seen: Option<Instant>,
}

/// Refusals seen since the last flush, and what was announced.
#[derive(Default)]
pub struct DenialLog {
    pending: HashMap<String, Pending>,
    announced: HashMap<String, Announced>,
    events: Vec<Announcement>,
}

impl DenialLog {
    /// Counts a refusal of a request from `source`.
    pub fn record(
        &mut self,
        source: &Source,
        host: &str,
        port: u16,
        reason: Denial,
        now: Timestamp,
        clock: Instant,
    ) {
        let host: String = host.chars().take(253).collect();
        let p = self
            .pending
            .entry(source.sandbox_uid.clone())
            .or_insert_with(|| Pending {
                namespace: source.namespace.clone(),
                name: source.sandbox.clone(),
                ..Pending::default()
            });
        p.total += 1;
        if p.hosts.len() >= MAX_PENDING_HOSTS
            && !p.hosts.contains_key(&(host.clone(), port))
            && let Some(oldest) = p
                .hosts
                .iter()
                .min_by_key(|(_, (_, _, time))| *time)
                .map(|(k, _)| k.clone())
        {
            p.hosts.remove(&oldest);
        }
        let e = p
            .hosts
            .entry((host.clone(), port))
            .or_insert_with(|| (String::new(), 0, now));
        e.0 = reason.as_str().to_string();
        e.1 += 1;
        e.2 = now;
        let a = self
            .announced
            .entry(source.sandbox_uid.clone())
            .or_default();
        a.seen = Some(clock);
        let new_host = !a.hosts.contains(&(host.clone(), port));
        let due = a
            .last
            .is_none_or(|t| clock.duration_since(t) >= EVENT_INTERVAL);
        if new_host && due && a.hosts.len() < MAX_ANNOUNCED {
            a.hosts.insert((host.clone(), port));
            a.last = Some(clock);
            self.events.push(Announcement {
                namespace: source.namespace.clone(),
                name: source.sandbox.clone(),
                uid: source.sandbox_uid.clone(),
                note: format!(
                    "the egress gateway refused {host}:{port} ({reason}); later refusals are counted in status.egressDenials"
                ),
            });
        }
    }

    /// Takes what is pending, by sandbox UID, and the events to publish; forgets what was
    /// announced about sandboxes refused nothing for ANNOUNCED_FOR.
    pub fn take(&mut self, clock: Instant) -> (HashMap<String, Pending>, Vec<Announcement>) {
        self.announced.retain(|_, a| {
            a.seen
                .is_some_and(|t| clock.duration_since(t) < ANNOUNCED_FOR)
        });
        (
            std::mem::take(&mut self.pending),
            std::mem::take(&mut self.events),
        )
    }

    /// Puts back what could not be written, to be added on the next flush.
    pub fn restore(&mut self, uid: String, p: Pending) {
        let mine = self.pending.entry(uid).or_insert_with(|| Pending {
            namespace: p.namespace.clone(),
            name: p.name.clone(),
            ..Pending::default()
        });
        mine.total += p.total;
        for (k, (reason, count, time)) in p.hosts {
            let e = mine
                .hosts
                .entry(k)
                .or_insert_with(|| (reason.clone(), 0, time));
            e.1 += count;
            if time > e.2 {
                e.2 = time;
                e.0 = reason;
            }
        }
    }

    /// Forgets a sandbox that no longer exists.
    pub fn forget(&mut self, uid: &str) {
        self.pending.remove(uid);
        self.announced.remove(uid);
    }
}

/// The status after adding `pending` to `current`: totals add up, hosts keep their counts,
/// the newest MAX_HOSTS first.
pub fn merge(current: Option<&EgressDenials>, pending: &Pending) -> EgressDenials {
    let mut hosts: Vec<EgressDenial> = current.map(|c| c.hosts.clone()).unwrap_or_default();
    for ((host, port), (reason, count, time)) in &pending.hosts {
        let time = Time(*time);
        match hosts
            .iter_mut()
            .find(|h| h.host == *host && h.port == i32::from(*port))
        {
            Some(h) => {
                h.count += count;
                h.reason = reason.clone();
                h.last_time = time;
            }
            None => hosts.push(EgressDenial {
                host: host.clone(),
                port: i32::from(*port),
                reason: reason.clone(),
                count: *count,
                last_time: time,
            }),
        }
    }
    hosts.sort_by(|a, b| b.last_time.0.cmp(&a.last_time.0).then(a.host.cmp(&b.host)));
    hosts.truncate(MAX_HOSTS);
    EgressDenials {
        total: current.map_or(0, |c| c.total) + pending.total,
        hosts,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(uid: &str) -> Source {
        Source {
            namespace: "team".into(),
            sandbox: format!("s-{uid}"),
            sandbox_uid: uid.into(),
            credential: uid.into(),
            pod: format!("s-{uid}"),
        }
    }

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    #[test]
    fn refusals_add_up_and_the_newest_hosts_are_kept() {
        let mut log = DenialLog::default();
        let t0 = Instant::now();
        for i in 0..10 {
            log.record(
                &source("u1"),
                &format!("h{i}.example.com"),
                443,
                Denial::NoMatchingRule,
                at(i),
                t0,
            );
        }
        log.record(
            &source("u1"),
            "h9.example.com",
            443,
            Denial::FloorAddress,
            at(20),
            t0,
        );
        let (pending, _) = log.take(Instant::now());
        let p = &pending["u1"];
        assert_eq!(p.total, 11);
        let current = EgressDenials {
            total: 5,
            hosts: vec![EgressDenial {
                host: "h9.example.com".into(),
                port: 443,
                reason: "PortNotAllowed".into(),
                count: 5,
                last_time: Time(at(-5)),
            }],
        };
        let merged = merge(Some(&current), p);
        assert_eq!(merged.total, 16);
        assert_eq!(merged.hosts.len(), MAX_HOSTS);
        assert_eq!(merged.hosts[0].host, "h9.example.com");
        assert_eq!(merged.hosts[0].count, 7);
        assert_eq!(merged.hosts[0].reason, "FloorAddress");
        assert!(
            !merged
                .hosts
                .iter()
                .any(|h| h.host == "h0.example.com" || h.host == "h1.example.com")
        );
    }

    #[test]
    fn events_are_announced_once_per_host_and_rate_limited() {
        let mut log = DenialLog::default();
        let t0 = Instant::now();
        log.record(
            &source("u1"),
            "a.example.com",
            443,
            Denial::NoMatchingRule,
            at(0),
            t0,
        );
        log.record(
            &source("u1"),
            "a.example.com",
            443,
            Denial::NoMatchingRule,
            at(1),
            t0 + EVENT_INTERVAL * 2,
        );
        // A new host within the interval: counted, not announced.
        log.record(
            &source("u1"),
            "b.example.com",
            443,
            Denial::NoMatchingRule,
            at(2),
            t0 + Duration::from_secs(1),
        );
        log.record(
            &source("u2"),
            "a.example.com",
            443,
            Denial::NoMatchingRule,
            at(3),
            t0,
        );
        let (_, events) = log.take(Instant::now());
        let notes: Vec<(&str, &str)> = events
            .iter()
            .map(|e| (e.uid.as_str(), e.note.as_str()))
            .collect();
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(notes[0].1.contains("a.example.com:443 (NoMatchingRule)"));
        assert_eq!(notes[1].0, "u2");
        // b is announced once the interval has passed.
        log.record(
            &source("u1"),
            "b.example.com",
            443,
            Denial::NoMatchingRule,
            at(4),
            t0 + EVENT_INTERVAL * 3,
        );
        assert_eq!(log.take(Instant::now()).1.len(), 1);
    }

    #[test]
    fn what_could_not_be_written_is_added_next_time() {
        let mut log = DenialLog::default();
        let t0 = Instant::now();
        log.record(
            &source("u1"),
            "a.example.com",
            443,
            Denial::NoMatchingRule,
            at(0),
            t0,
        );
        let (mut pending, _) = log.take(Instant::now());
        log.record(
            &source("u1"),
            "a.example.com",
            443,
            Denial::NoMatchingRule,
            at(1),
            t0,
        );
        log.restore("u1".into(), pending.remove("u1").unwrap());
        let (pending, _) = log.take(Instant::now());
        assert_eq!(pending["u1"].total, 2);
        assert_eq!(
            pending["u1"].hosts[&("a.example.com".to_string(), 443)].1,
            2
        );
        log.forget("u1");
        assert!(log.take(Instant::now()).0.is_empty());
    }

    #[test]
    fn a_sandbox_asking_for_random_names_cannot_grow_the_log() {
        let mut log = DenialLog::default();
        let t0 = Instant::now();
        for i in 0..1000 {
            log.record(
                &source("u1"),
                &format!("n{i}.example.com"),
                443,
                Denial::NoMatchingRule,
                at(i),
                t0,
            );
        }
        let (pending, _) = log.take(t0);
        assert_eq!(pending["u1"].total, 1000);
        assert_eq!(pending["u1"].hosts.len(), MAX_PENDING_HOSTS);
        // The newest are kept.
        assert!(
            pending["u1"]
                .hosts
                .contains_key(&("n999.example.com".to_string(), 443))
        );
        // What was announced is forgotten once the sandbox is quiet for ANNOUNCED_FOR.
        let later = t0 + ANNOUNCED_FOR + Duration::from_secs(1);
        let _ = log.take(later);
        log.record(
            &source("u1"),
            "n0.example.com",
            443,
            Denial::NoMatchingRule,
            at(2000),
            later,
        );
        assert_eq!(
            log.take(later).1.len(),
            1,
            "announced again after the quiet hour"
        );
    }
}
