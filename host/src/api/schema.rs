//! Schemas of the strings whose rules the handlers check: the document states each rule from
//! the same constants the check uses, so that a client that validates against the document is
//! never refused for what it promises, and schemathesis can tell valid input from invalid.
//! (utoipa's attributes take only literals, hence these hand-written schemas.)

use std::borrow::Cow;

use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::{Ref, RefOr};
use utoipa::{PartialSchema, ToSchema};

use super::error::{USER_ID_MAX_CHARS, USER_ID_PATTERN};

fn text(description: &str, min: usize, max: usize, pattern: &str, example: &str) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some(description))
        .min_length(Some(min))
        .max_length(Some(max))
        .pattern(Some(pattern))
        .examples([example])
        .into()
}

macro_rules! rule {
    ($(#[$doc:meta])* $name:ident => $schema:expr) => {
        $(#[$doc])*
        #[derive(Debug)]
        pub struct $name;

        impl PartialSchema for $name {
            fn schema() -> RefOr<Schema> {
                $schema
            }
        }

        impl ToSchema for $name {
            fn name() -> Cow<'static, str> {
                Cow::Borrowed(stringify!($name))
            }
        }
    };
}

rule! {
    /// A user's id.
    UserId => text(
        "A user's id: 1-128 characters, no control characters, not starting or ending with \
         white space.",
        1,
        USER_ID_MAX_CHARS,
        USER_ID_PATTERN,
        "user-42",
    )
}

rule! {
    /// An e-mail address of a user profile.
    Email => text(
        "An address: something, `@`, a domain with a dot; at most 254 characters, no control \
         or white-space characters.",
        3,
        super::admin::EMAIL_MAX_CHARS,
        super::admin::EMAIL_PATTERN,
        "kim@example.com",
    )
}

rule! {
    /// An FCM registration token of a user profile.
    FcmToken => text(
        "The device's FCM registration token: 1-4096 characters, no control characters.",
        1,
        super::admin::FCM_TOKEN_MAX_CHARS,
        super::admin::FCM_TOKEN_PATTERN,
        "dC1x...:APA91b...",
    )
}

rule! {
    /// A campaign's display name.
    CampaignName => text(
        "1-200 characters, not only white space, no control characters.",
        1,
        crate::campaign::spec::MAX_NAME_CHARS,
        crate::campaign::spec::NAME_PATTERN,
        "Spring sale",
    )
}

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
    StatsEvent => "stats", crate::live::LiveStats,
        "A `stats` event: the campaign's statistics as a `LiveStats` document"
}

event! {
    /// An event of a request's stream.
    StatusEvent => "status", super::requests::Status,
        "A `status` event: the request's state as a `Status` document"
}

/// Where a request stands (the values of `Status.status`).
#[allow(dead_code)]
#[derive(Debug, ToSchema)]
#[schema(rename_all = "snake_case")]
pub enum RequestState {
    /// Admitted, waiting for its coupon.
    Queued,
    /// Its coupon was issued.
    Issued,
    /// The user has no request for this campaign.
    None,
}

/// Where a campaign stands (the values of `CampaignView.status`).
#[allow(dead_code)]
#[derive(Debug, ToSchema)]
#[schema(rename_all = "snake_case")]
pub enum CampaignState {
    NotOpen,
    Open,
    SoldOut,
    Closed,
}

/// The host's state (the values of `Health.status`): `ok` from liveness, `ready` or
/// `not_ready` from readiness.
#[allow(dead_code)]
#[derive(Debug, ToSchema)]
#[schema(rename_all = "snake_case")]
pub enum HealthState {
    Ok,
    Ready,
    NotReady,
}
