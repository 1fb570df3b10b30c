//! The stats consumer: live counters per campaign.
//!
//! For every issued coupon it adds 1 to `issued`, the coupon's value to `revenue` (the
//! estimated revenue the replaced system showed), and 1 to `gender.{g}` and `age_group.{a}`
//! (`unknown` when the user has none), then asks the host to publish the campaign's snapshot.
//! The host keeps the counters (and derives `remaining` from the capacity), applies them
//! once per event, and streams the snapshot to subscribers.
//!
//! The counting is in [`count_issued`], plain Rust over a [`Sink`], so that the same logic
//! runs natively in the benchmark harness; the component glue is in `component.rs`.

#[cfg(target_arch = "wasm32")]
mod component;

/// The part of an issued coupon the counters need.
#[derive(Debug, Clone, Copy)]
pub struct Issued<'a> {
    pub value: i64,
    pub gender: Option<&'a str>,
    pub age_group: Option<&'a str>,
}

/// Where counts go: the host's stats capability, or a map in the native harness.
pub trait Sink {
    fn increment(&mut self, name: &str, delta: i64);
}

/// Counts one issued coupon.
pub fn count_issued(event: &Issued<'_>, sink: &mut impl Sink) {
    sink.increment("issued", 1);
    sink.increment("revenue", event.value);
    sink.increment(&format!("gender.{}", label(event.gender)), 1);
    sink.increment(&format!("age_group.{}", label(event.age_group)), 1);
}

/// A counter-name-safe label: lowercase `a-z 0-9 - _`, at most 32 bytes, `unknown` if empty.
fn label(value: Option<&str>) -> String {
    let cleaned: String = value
        .unwrap_or_default()
        .trim()
        .chars()
        .filter_map(|c| {
            let c = c.to_ascii_lowercase();
            (c.is_ascii_alphanumeric() || c == '-' || c == '_').then_some(c)
        })
        .take(32)
        .collect();
    if cleaned.is_empty() {
        "unknown".to_owned()
    } else {
        cleaned
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    impl Sink for BTreeMap<String, i64> {
        fn increment(&mut self, name: &str, delta: i64) {
            *self.entry(name.to_owned()).or_default() += delta;
        }
    }

    #[test]
    fn counts_issued_revenue_gender_and_age_group() {
        let mut counts = BTreeMap::new();
        let a = Issued {
            value: 500,
            gender: Some("F"),
            age_group: Some("20s"),
        };
        let b = Issued {
            value: 500,
            gender: None,
            age_group: Some(" 30s "),
        };
        count_issued(&a, &mut counts);
        count_issued(&b, &mut counts);
        assert_eq!(counts["issued"], 2);
        assert_eq!(counts["revenue"], 1000);
        assert_eq!(counts["gender.f"], 1);
        assert_eq!(counts["gender.unknown"], 1);
        assert_eq!(counts["age_group.20s"], 1);
        assert_eq!(counts["age_group.30s"], 1);
    }

    #[test]
    fn labels_are_safe_counter_names() {
        assert_eq!(label(Some("Non-Binary")), "non-binary");
        assert_eq!(label(Some("../x y")), "xy");
        assert_eq!(label(Some("   ")), "unknown");
        assert_eq!(label(Some(&"z".repeat(100))).len(), 32);
    }
}
