//! A secret of the configuration (the admin token, a signing key, a relay's password): held
//! in a [`secrecy::SecretString`], so that it is zeroed when dropped, and never printed — its
//! `Debug` and its serialized form are `[redacted]`. Reading it takes a deliberate
//! [`Secret::expose`].

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// What a secret prints and serializes as.
pub const REDACTED: &str = "[redacted]";

/// A secret string from the configuration.
#[derive(Clone)]
pub struct Secret(SecretString);

impl Secret {
    /// The secret's text, for the one place that uses it (a comparison, a key, a login).
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }

    /// Whether the secret is empty (unset, in effect).
    pub fn is_empty(&self) -> bool {
        self.expose().is_empty()
    }
}

impl From<&str> for Secret {
    fn from(text: &str) -> Self {
        Self(SecretString::from(text))
    }
}

impl From<String> for Secret {
    fn from(text: String) -> Self {
        Self(SecretString::from(text))
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(REDACTED)
    }
}

/// Equal when the texts are (for comparing configurations; credentials are compared in
/// constant time where they are checked).
impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        self.expose() == other.expose()
    }
}

impl Eq for Secret {}

impl Serialize for Secret {
    /// Always `[redacted]`: a configuration written out never carries its secrets.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(REDACTED)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Self::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_is_never_printed_or_written_out() {
        let s = Secret::from("hunter2-hunter2");
        assert_eq!(format!("{s:?}"), REDACTED);
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"[redacted]\"");
        let read: Secret = serde_json::from_str("\"hunter2-hunter2\"").unwrap();
        assert_eq!(read.expose(), "hunter2-hunter2");
        assert_eq!(read, s);
    }
}
