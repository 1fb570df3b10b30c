//! The component glue: the WIT handler calls [`crate::count_issued`] with the host's stats
//! capability as the sink.

wit_bindgen::generate!({ path: "../../wit", world: "consumer" });

use exports::firstcome::plugin::handler::Guest;
use firstcome::plugin::stats;
use firstcome::plugin::types::{Event, HandleError};

struct HostStats;

impl crate::Sink for HostStats {
    fn increment(&mut self, name: &str, delta: i64) {
        stats::increment(name, delta);
    }
}

struct Stats;

impl Guest for Stats {
    fn handle(event: Event) -> Result<(), HandleError> {
        match event {
            Event::CouponIssued(c) => {
                let issued = crate::Issued {
                    value: c.campaign_value,
                    gender: c.gender.as_deref(),
                    age_group: c.age_group.as_deref(),
                };
                crate::count_issued(&issued, &mut HostStats);
                stats::publish();
            }
        }
        Ok(())
    }
}

export!(Stats);
