//! Status writes the sandbox cache has not seen yet.
//!
//! A pass decides from the cached sandbox's status (what it remembers: `startedAt`,
//! `finishedAt`, `podUID`, ...). Right after a pass writes a status, an event (its pod's
//! deletion, say) can start the next pass before the sandbox watch has delivered that write;
//! deciding from the older status could run a finished agent again. Such a pass waits for the
//! cache instead, for a bounded time (a watch that never catches up relists).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a pass waits at most for the cache to show its own status write.
pub const PATIENCE: Duration = Duration::from_secs(30);

#[derive(Debug, Default)]
pub struct Written {
    /// Sandbox UID → the resource version the write was based on, and when it was written.
    by_uid: Mutex<HashMap<String, (String, Instant)>>,
    /// Sandbox UID → the resource version its last status write produced: the watch event of
    /// that version is the operator's own, and starts no pass.
    own: Mutex<HashMap<String, String>>,
}

impl Written {
    /// Notes a status write of sandbox `uid` based on the cached version `based_on` that the
    /// API server answered with version `now_at`.
    pub fn wrote(&self, uid: &str, based_on: Option<&str>, now_at: Option<&str>) {
        if let Some(version) = now_at {
            let mut own = self.own.lock().unwrap_or_else(|e| e.into_inner());
            own.insert(uid.to_string(), version.to_string());
        }
        let mut map = self.by_uid.lock().unwrap_or_else(|e| e.into_inner());
        match based_on {
            // A write that changed nothing leaves the version as it was: nothing to wait for.
            Some(before) if now_at != Some(before) => {
                map.insert(uid.to_string(), (before.to_string(), Instant::now()));
            }
            _ => {
                map.remove(uid);
            }
        }
    }

    /// Whether the cached sandbox `uid` at version `cached` predates this operator's last
    /// status write of it (then the pass should wait for the cache).
    pub fn behind(&self, uid: &str, cached: Option<&str>) -> bool {
        let mut map = self.by_uid.lock().unwrap_or_else(|e| e.into_inner());
        match map.get(uid) {
            Some((before, at)) if Some(before.as_str()) == cached && at.elapsed() < PATIENCE => {
                true
            }
            Some(_) => {
                map.remove(uid);
                false
            }
            None => false,
        }
    }

    /// Whether version `version` of sandbox `uid` is the one this operator's last status write
    /// produced.
    pub fn is_own(&self, uid: &str, version: Option<&str>) -> bool {
        let own = self.own.lock().unwrap_or_else(|e| e.into_inner());
        version.is_some() && own.get(uid).map(String::as_str) == version
    }

    /// Forgets every sandbox whose UID is not among `live` (deleted without a pass seeing it).
    pub fn retain(&self, live: &std::collections::HashSet<String>) {
        let mut map = self.by_uid.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|uid, _| live.contains(uid));
        let mut own = self.own.lock().unwrap_or_else(|e| e.into_inner());
        own.retain(|uid, _| live.contains(uid));
    }

    /// Forgets a sandbox (deleted).
    pub fn forget(&self, uid: &str) {
        let mut map = self.by_uid.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(uid);
        let mut own = self.own.lock().unwrap_or_else(|e| e.into_inner());
        own.remove(uid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pass_waits_until_the_cache_shows_its_own_write() {
        let w = Written::default();
        assert!(!w.behind("u", Some("10")));
        w.wrote("u", Some("10"), Some("11"));
        assert!(
            w.behind("u", Some("10")),
            "the cache still has the version written over"
        );
        assert!(w.behind("u", Some("10")));
        assert!(!w.behind("u", Some("11")), "the cache caught up");
        assert!(!w.behind("u", Some("10")), "forgotten once caught up");
        // A write that changed nothing: nothing to wait for.
        w.wrote("u", Some("12"), Some("12"));
        assert!(!w.behind("u", Some("12")));
        // Another sandbox is not held up.
        w.wrote("u", Some("13"), Some("14"));
        assert!(!w.behind("v", Some("13")));
        w.forget("u");
        assert!(!w.behind("u", Some("13")));
    }

    #[test]
    fn the_version_of_its_own_last_write_is_known() {
        let w = Written::default();
        assert!(!w.is_own("u", Some("11")));
        w.wrote("u", Some("10"), Some("11"));
        assert!(w.is_own("u", Some("11")));
        assert!(!w.is_own("u", Some("12")), "someone else's write");
        assert!(!w.is_own("u", None));
        w.forget("u");
        assert!(!w.is_own("u", Some("11")));
        // Sandboxes gone without a pass noticing are forgotten by the census.
        w.wrote("v", Some("1"), Some("2"));
        w.retain(&["w".to_string()].into());
        assert!(!w.is_own("v", Some("2")));
        assert!(!w.behind("v", Some("1")));
    }
}
