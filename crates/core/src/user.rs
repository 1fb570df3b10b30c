//! Users: the user id, parsed once where it enters the process ([`UserId::parse`]), and the
//! rules of a user's profile fields. The OpenAPI document states the same rules from these
//! constants ([`crate::schema`]).

use std::fmt;

/// The longest user id, in characters (the database columns are `VARCHAR(128)`).
pub const USER_ID_MAX_CHARS: usize = 128;

/// [`UserId::parse`]'s rule as a regular expression, for the OpenAPI document: no control
/// characters (Unicode `Cc`) or format characters (`Cf`: zero-width spaces and joiners, bidi
/// marks, overrides and isolates, the byte-order mark, ...), and neither first nor last a
/// white-space character (Unicode `White_Space`, what `str::trim` removes). Written with
/// explicit ranges so that JavaScript's and Python's regex engines read it alike, which limits
/// it to the Basic Multilingual Plane: the format characters above it (tags U+E0001 and
/// U+E0020-E007F, and a few script-specific controls) are refused by the check alone.
pub const USER_ID_PATTERN: &str = concat!(
    r"^[^\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000",
    r"\xad\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891\u08e2\u180e\u200b-\u200f\u202a-\u202e",
    r"\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb]",
    r"(?:[^\x00-\x1f\x7f-\x9f",
    r"\xad\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891\u08e2\u180e\u200b-\u200f\u202a-\u202e",
    r"\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb]*",
    r"[^\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000",
    r"\xad\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891\u08e2\u180e\u200b-\u200f\u202a-\u202e",
    r"\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb])?$",
);

/// The longest e-mail address of a profile, in characters (RFC 5321's path limit).
pub const EMAIL_MAX_CHARS: usize = 254;
/// The longest FCM registration token of a profile, in characters.
pub const FCM_TOKEN_MAX_CHARS: usize = 4096;
/// The FCM token rule for the OpenAPI document: no control characters.
pub const FCM_TOKEN_PATTERN: &str = r"^[^\x00-\x1f\x7f-\x9f]*$";
/// The address rule: something, `@`, then a domain with a dot; no control or white-space
/// characters (the same classes as the user id's pattern).
pub const EMAIL_PATTERN: &str = concat!(
    r"^[^@\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+@",
    r"[^\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*\.",
    r"[^\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*$",
);
/// The genders a profile may state.
pub const GENDERS: &[&str] = &["female", "male", "other"];
/// The age groups a profile may state.
pub const AGE_GROUPS: &[&str] = &["under_20", "20s", "30s", "40s", "50s", "60_plus"];

/// A user's id, checked: 1-128 characters, no control or format characters, no surrounding
/// white space. Ids are otherwise compared exactly as sent: no Unicode normalisation, so
/// `jürgen` in NFC and in NFD are two users (a storefront that wants them to be one normalises
/// before it calls).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UserId(String);

/// Why a text is not a [`UserId`]; its `Display` is the message a client sees
/// (`user_id must ...`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidUserId(String);

impl UserId {
    /// Checks `text` against the rule above.
    pub fn parse(text: &str) -> Result<Self, InvalidUserId> {
        let problem = if text.is_empty() {
            "must not be empty"
        } else if text.chars().count() > USER_ID_MAX_CHARS {
            "must be at most 128 characters"
        } else if text.chars().any(char::is_control) {
            "must not contain control characters"
        } else if let Some(c) = text.chars().find(|c| is_format(*c)) {
            return Err(InvalidUserId(format!(
                "user_id must not contain Unicode format characters (found U+{:04X}): \
                 zero-width and bidi control characters make different ids look alike",
                c as u32
            )));
        } else if text.trim() != text {
            "must not start or end with whitespace"
        } else {
            return Ok(Self(text.to_owned()));
        };
        Err(InvalidUserId(format!("user_id {problem}")))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl AsRef<str> for UserId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether `c` is a Unicode format character (general category `Cf`): invisible, or
/// changing how the text around it is shown (U+200B zero-width space, U+202E right-to-left
/// override, U+2066-2069 bidi isolates, ...). Two ids that differ only by one look the same.
fn is_format(c: char) -> bool {
    use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};
    c.general_category() == GeneralCategory::Format
}

/// Checks a profile's e-mail address ([`EMAIL_PATTERN`], at most [`EMAIL_MAX_CHARS`]).
pub fn is_email(email: &str) -> bool {
    email.chars().count() <= EMAIL_MAX_CHARS
        && !email.chars().any(|c| c.is_control() || c.is_whitespace())
        && email
            .split_once('@')
            .is_some_and(|(l, d)| !l.is_empty() && d.contains('.'))
}

/// Checks a profile's FCM token: 1 to [`FCM_TOKEN_MAX_CHARS`] characters, no control ones.
pub fn is_fcm_token(token: &str) -> bool {
    !token.is_empty()
        && token.chars().count() <= FCM_TOKEN_MAX_CHARS
        && !token.chars().any(char::is_control)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> bool {
        UserId::parse(s).is_ok()
    }

    /// The document's pattern and the check agree, so that a client that validates against
    /// the document is never refused, and never sends what is refused.
    #[test]
    fn user_id_pattern_matches_the_check() {
        let pattern = regex::Regex::new(USER_ID_PATTERN).unwrap();
        let samples = [
            "u",
            "user-42",
            "김민준",
            "a b",
            "é",
            "\u{feff}x",
            "x\u{200b}",
            "🦀",
            "a/b",
            "%2F",
            "..",
            "",
            " ",
            " a",
            "a ",
            "\ta",
            "a\n",
            "a\u{0}b",
            "a\u{7f}",
            "\u{85}a",
            "a\u{a0}",
            "\u{3000}a",
            "a\u{2028}",
            "a\u{9f}b",
            "\u{1680}",
            "a\u{202f}",
            "\u{205f}a",
        ];
        for s in samples {
            let by_pattern = pattern.is_match(s) && s.chars().count() <= USER_ID_MAX_CHARS;
            assert_eq!(ok(s), by_pattern, "{s:?}");
        }
        // Every character of the Basic Multilingual Plane, alone and between two letters.
        for c in (0..=0xffff).filter_map(char::from_u32) {
            for s in [c.to_string(), format!("a{c}b")] {
                assert_eq!(ok(&s), pattern.is_match(&s), "{s:?}");
            }
        }
        let long = "x".repeat(USER_ID_MAX_CHARS);
        assert!(ok(&long));
        assert!(!ok(&format!("{long}x")));
        assert!(ok(&"é".repeat(USER_ID_MAX_CHARS)));
    }

    #[test]
    fn format_characters_are_refused_and_ids_are_not_normalised() {
        for s in [
            "a\u{200b}b",
            "a\u{202e}b",
            "a\u{2066}b",
            "a\u{feff}",
            "a\u{e0041}b",
            "a\u{ad}b",
        ] {
            let e = UserId::parse(s).unwrap_err();
            assert!(e.to_string().contains("format characters"), "{e}");
        }
        // NFC and NFD are both accepted, as two different ids.
        assert!(ok("j\u{fc}rgen"));
        assert!(ok("ju\u{308}rgen"));
    }

    /// The document's address pattern and the check agree.
    #[test]
    fn email_pattern_matches_the_check() {
        let pattern = regex::Regex::new(EMAIL_PATTERN).unwrap();
        let samples = [
            "kim@example.com",
            "a@b.c",
            "a@.",
            "a@b@c.d",
            "@b.c",
            "a@bc",
            "a b@c.d",
            "a@b.c ",
            "ü@ß.de",
            "a@b\u{a0}.c",
            "a\u{7f}@b.c",
            "a@b.c\u{2028}",
            "a@b.\u{feff}",
            "",
        ];
        for s in samples {
            let by_pattern = pattern.is_match(s) && s.chars().count() <= EMAIL_MAX_CHARS;
            assert_eq!(is_email(s), by_pattern, "{s:?}");
        }
        let long = format!("{}@example.com", "x".repeat(EMAIL_MAX_CHARS - 12));
        assert_eq!(long.chars().count(), EMAIL_MAX_CHARS);
        assert!(is_email(&long));
        assert!(!is_email(&format!("x{long}")));
    }
}
