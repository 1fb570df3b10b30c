//! {name}: a firstcome consumer plugin.
//!
//! The logic is plain Rust (tested natively with `cargo test`); the component glue at the
//! bottom connects it to the host's capabilities (see wit/plugin.wit).

/// What the plugin logs for an issued coupon.
pub fn describe(user_id: &str, campaign_name: &str, position: i64) -> String {
    format!("{user_id} got coupon #{position} of {campaign_name}")
}

/// The kv counter the plugin keeps per age group.
pub fn counter_key(age_group: Option<&str>) -> String {
    format!("issued.{}", age_group.unwrap_or("unknown"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_an_issuance() {
        assert_eq!(describe("u1", "Spring", 3), "u1 got coupon #3 of Spring");
        assert_eq!(counter_key(None), "issued.unknown");
        assert_eq!(counter_key(Some("20s")), "issued.20s");
    }
}

#[cfg(target_arch = "wasm32")]
mod component {
    wit_bindgen::generate!({ path: "wit", world: "consumer" });

    use exports::firstcome::plugin::handler::Guest;
    use firstcome::plugin::log::{self, Level};
    use firstcome::plugin::kv;
    use firstcome::plugin::types::{Event, HandleError};

    struct Plugin;

    impl Guest for Plugin {
        fn handle(event: Event) -> Result<(), HandleError> {
            match event {
                Event::CouponIssued(c) => {
                    log::log(Level::Info, &crate::describe(&c.user_id, &c.campaign_name, c.position));
                    // Needs `grants = ["kv", "stats"]` in the campaign file: kv for the counter,
                    // stats for the age group (handed only to roles granted stats, email or
                    // push).
                    kv::increment(&crate::counter_key(c.age_group.as_deref()), 1);
                }
            }
            Ok(())
        }
    }

    export!(Plugin);
}
