//! Schemas of the strings whose rules the handlers check: the document states each rule from
//! the same constants the check uses, so that a client that validates against the document is
//! never refused for what it promises, and schemathesis can tell valid input from invalid.
//! (utoipa's attributes take only literals, hence these hand-written schemas.)

use std::borrow::Cow;

use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::{Ref, RefOr};
use utoipa::{PartialSchema, ToSchema};

pub use firstcome_core::schema::{CampaignName, Email, FcmToken};
pub use firstcome_core::user::UserId;

/// One server-sent event named `name` whose data is the JSON document `data` (the OpenAPI 3.2
/// convention for `text/event-stream`, which schemathesis validates each event against).
fn event<T: ToSchema>(name: &str, description: &str) -> RefOr<Schema> {
    let data = ObjectBuilder::new()
        .schema_type(Type::String)
        .content_media_type("application/json")
        .content_schema(Some(Ref::from_schema_name(T::name())));
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .description(Some(description))
        .property(
            "event",
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some([name])),
        )
        .property("data", data)
        .required("event")
        .required("data")
        .into()
}

macro_rules! event {
    ($(#[$doc:meta])* $name:ident => $event:literal, $data:ty, $description:literal) => {
        $(#[$doc])*
        #[derive(Debug)]
        pub struct $name;

        impl PartialSchema for $name {
            fn schema() -> RefOr<Schema> {
                event::<$data>($event, $description)
            }
        }

        impl ToSchema for $name {
            fn name() -> Cow<'static, str> {
                Cow::Borrowed(stringify!($name))
            }

            fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
                schemas.push((<$data>::name().into(), <$data>::schema()));
                <$data as ToSchema>::schemas(schemas);
            }
        }
    };
}

event! {
    /// An event of the statistics stream.
    StatsEvent => "stats", firstcome_platform::live::LiveStats,
        "A `stats` event: the campaign's statistics as a `LiveStats` document"
}

event! {
    /// An event of a request's stream.
    StatusEvent => "status", super::requests::Status,
        "A `status` event: the request's state as a `Status` document"
}
