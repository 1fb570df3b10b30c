//! Text from outside the process (a plugin's error or log line, a client's input echoed in an
//! error) is cut to a size before it is logged, stored or sent on, so that one bad input cannot
//! fill a log, a column or a message. [`cut`] keeps the start of the text, ends on a UTF-8
//! character boundary and says how much it left out.

use std::borrow::Cow;

/// Longest error text the host keeps (a plugin's `retryable`/`permanent` message, a trap, a
/// dead letter's `dlt.error` header), in bytes, marker included.
pub const MAX_ERROR_BYTES: usize = 4 * 1024;

/// `text` if it is at most `max` bytes; otherwise its first bytes (ending on a character
/// boundary) and a marker `… [cut N bytes]`, together at most `max` bytes (`max` ≥ 64).
pub fn cut(text: &str, max: usize) -> Cow<'_, str> {
    if text.len() <= max {
        return Cow::Borrowed(text);
    }
    // The marker's length depends on the number in it; 32 bytes always hold it.
    let mut end = max.saturating_sub(32);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!(
        "{}… [cut {} bytes]",
        &text[..end],
        text.len() - end
    ))
}

/// [`cut`] to [`MAX_ERROR_BYTES`], owned.
pub fn error_text(text: impl AsRef<str>) -> String {
    cut(text.as_ref(), MAX_ERROR_BYTES).into_owned()
}

/// Hides the password of `scheme://user:password@host/...`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((userinfo, host)) = rest.rsplit_once('@') else {
        return url.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_is_kept() {
        assert!(matches!(cut("abc", 64), Cow::Borrowed("abc")));
    }

    #[test]
    fn long_text_is_cut_within_the_bound_with_a_marker() {
        let text = "x".repeat(70 * 1024);
        let out = cut(&text, MAX_ERROR_BYTES);
        assert!(out.len() <= MAX_ERROR_BYTES, "{}", out.len());
        assert!(out.ends_with(&format!(
            "[cut {} bytes]",
            text.len() - (MAX_ERROR_BYTES - 32)
        )));
    }

    #[test]
    fn cuts_on_a_character_boundary() {
        let text = "é".repeat(100);
        for max in 64..100 {
            let out = cut(&text, max);
            assert!(out.len() <= max);
            assert!(out.starts_with('é'));
        }
    }
}
