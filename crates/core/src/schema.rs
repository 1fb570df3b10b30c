//! OpenAPI schemas of the strings whose rules the core checks: the document states each rule
//! from the same constants the check uses, so that a client that validates against the
//! document is never refused for what it promises, and schemathesis can tell valid input from
//! invalid. (utoipa's attributes take only literals, hence these hand-written schemas.)

use std::borrow::Cow;

use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::{PartialSchema, ToSchema};

use crate::{campaign, user};

/// A string schema: `min`-`max` characters matching `pattern`.
pub fn text(
    description: &str,
    min: usize,
    max: usize,
    pattern: &str,
    example: &str,
) -> RefOr<Schema> {
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

impl PartialSchema for user::UserId {
    fn schema() -> RefOr<Schema> {
        text(
            "A user's id: 1-128 characters, no control characters, not starting or ending with \
             white space.",
            1,
            user::USER_ID_MAX_CHARS,
            user::USER_ID_PATTERN,
            "user-42",
        )
    }
}

impl ToSchema for user::UserId {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("UserId")
    }
}

rule! {
    /// An e-mail address of a user profile.
    Email => text(
        "An address: something, `@`, a domain with a dot; at most 254 characters, no control \
         or white-space characters.",
        3,
        user::EMAIL_MAX_CHARS,
        user::EMAIL_PATTERN,
        "kim@example.com",
    )
}

rule! {
    /// An FCM registration token of a user profile.
    FcmToken => text(
        "The device's FCM registration token: 1-4096 characters, no control characters.",
        1,
        user::FCM_TOKEN_MAX_CHARS,
        user::FCM_TOKEN_PATTERN,
        "dC1x...:APA91b...",
    )
}

rule! {
    /// A campaign's display name.
    CampaignName => text(
        "1-200 characters, not only white space, no control characters.",
        1,
        campaign::MAX_NAME_CHARS,
        campaign::NAME_PATTERN,
        "Spring sale",
    )
}
