//! The enforcement report: how each policy field is enforced on Kubernetes.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One line of the enforcement report.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReportEntry {
    /// The policy field, as a path (`network.egress.allow[0].ports[1]`).
    pub field: String,
    /// What happens to it on Kubernetes, in a sentence.
    pub message: String,
}

impl ReportEntry {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Everything the compiler adds, narrows, cannot apply or cannot guarantee.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnforcementReport {
    /// Allowances the platform adds (e.g. cluster DNS).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub added: Vec<ReportEntry>,
    /// Fields enforced more strictly than written.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub narrowed: Vec<ReportEntry>,
    /// Fields accepted that have no meaning in a pod.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_applicable: Vec<ReportEntry>,
    /// Fields asked for that the platform cannot guarantee.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_enforced: Vec<ReportEntry>,
}

impl EnforcementReport {
    pub fn added(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.added.push(ReportEntry::new(field, message));
    }
    pub fn narrowed(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.narrowed.push(ReportEntry::new(field, message));
    }
    pub fn not_applicable(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.not_applicable.push(ReportEntry::new(field, message));
    }
    pub fn not_enforced(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.not_enforced.push(ReportEntry::new(field, message));
    }
    /// Every entry with the name of its list (`added`, `narrowed`, `notApplicable`,
    /// `notEnforced`), in that order.
    pub fn entries(&self) -> impl Iterator<Item = (&'static str, &ReportEntry)> {
        [
            ("added", &self.added),
            ("narrowed", &self.narrowed),
            ("notApplicable", &self.not_applicable),
            ("notEnforced", &self.not_enforced),
        ]
        .into_iter()
        .flat_map(|(title, list)| list.iter().map(move |e| (title, e)))
    }

    /// The report as YAML comment lines (`#   narrowed: field: message`).
    pub fn as_comments(&self) -> String {
        self.entries()
            .map(|(title, e)| format!("#   {title}: {}: {}\n", e.field, e.message))
            .collect()
    }

    /// Appends another report's entries.
    pub fn extend(&mut self, other: EnforcementReport) {
        self.added.extend(other.added);
        self.narrowed.extend(other.narrowed);
        self.not_applicable.extend(other.not_applicable);
        self.not_enforced.extend(other.not_enforced);
    }

    /// The report cut to at most `per_list` entries per list and `chars` characters per
    /// message (a last entry says how many were left out), for a status that must stay small.
    pub fn bounded(mut self, per_list: usize, chars: usize) -> Self {
        for list in [
            &mut self.added,
            &mut self.narrowed,
            &mut self.not_applicable,
            &mut self.not_enforced,
        ] {
            if list.len() > per_list {
                let left = list.len() - (per_list - 1);
                list.truncate(per_list - 1);
                list.push(ReportEntry::new(
                    "(more)",
                    format!(
                        "{left} more entries; `palisade render` of this sandbox lists those of its policy"
                    ),
                ));
            }
            for e in list.iter_mut() {
                if e.message.chars().count() > chars {
                    e.message = e.message.chars().take(chars - 1).collect::<String>() + "…";
                }
                if e.field.chars().count() > chars {
                    e.field = e.field.chars().take(chars - 1).collect::<String>() + "…";
                }
            }
        }
        self
    }

    pub fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.narrowed.is_empty()
            && self.not_applicable.is_empty()
            && self.not_enforced.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bounded_report_keeps_its_size_and_says_what_it_left_out() {
        let mut r = EnforcementReport::default();
        for i in 0..40 {
            r.narrowed(format!("f{i}"), "x".repeat(1000));
        }
        r.added("network.dns", "short");
        let b = r.bounded(16, 100);
        assert_eq!(b.narrowed.len(), 16);
        assert_eq!(b.narrowed[15].field, "(more)");
        assert!(b.narrowed[15].message.starts_with("25 more"));
        assert!(b.narrowed.iter().all(|e| e.message.chars().count() <= 100));
        assert_eq!(b.added, vec![ReportEntry::new("network.dns", "short")]);
    }
}
