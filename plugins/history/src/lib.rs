//! The history consumer: one history row per issued coupon. The host keeps one row per event
//! id, so a re-delivered event never makes a second row (the replaced system's history had no
//! unique key), and it records which plugin version handled the event.

#[cfg(target_arch = "wasm32")]
mod component {
    wit_bindgen::generate!({ path: "../../wit", world: "consumer" });

    use exports::firstcome::plugin::handler::Guest;
    use firstcome::plugin::history::{self, Entry};
    use firstcome::plugin::types::{Event, HandleError};

    struct History;

    impl Guest for History {
        fn handle(event: Event) -> Result<(), HandleError> {
            match event {
                Event::CouponIssued(c) => history::record(&Entry {
                    event_id: c.event_id,
                    user_id: c.user_id,
                    coupon_id: c.coupon_id,
                    coupon_code: c.coupon_code,
                    issued_at_ms: c.issued_at_ms,
                }),
            }
            Ok(())
        }
    }

    export!(History);
}
