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

/// [`escaped`], then [`cut`] to [`MAX_ERROR_BYTES`], owned: what a plugin's error may put in a
/// log line, a dead letter's header or the CLI's output.
pub fn error_text(text: impl AsRef<str>) -> String {
    cut(&escaped(text.as_ref()), MAX_ERROR_BYTES).into_owned()
}

/// `text` with every control character (line breaks, the terminal's escape, C1 controls), the
/// Unicode line and paragraph separators and every bidirectional override written as a
/// `\u{..}` escape: text from outside can then
/// neither start a forged log line nor drive the terminal that shows it.
pub fn escaped(text: &str) -> Cow<'_, str> {
    let unsafe_char = |c: char| {
        c.is_control()
            || matches!(
                c,
                '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
            )
    };
    if !text.chars().any(unsafe_char) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if unsafe_char(c) {
            out.push_str(&c.escape_unicode().to_string());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Hides the password of `scheme://user:password@host/...`, and the value of every query
/// parameter that carries a secret (`?password=`, `sslpassword`, `token`, `secret`, `key`…).
pub fn redact_url(url: &str) -> String {
    // The password may hold a `?` (`u:p?ss@h`): the user part ends at the last `@`, and the
    // query starts after it.
    let (head, tail) = match url.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((userinfo, after)) => match userinfo.split_once(':') {
                Some((user, _)) => (format!("{scheme}://{user}:***@"), after),
                None => (format!("{scheme}://{userinfo}@"), after),
            },
            None => (format!("{scheme}://"), rest),
        },
        None => (String::new(), url),
    };
    let (base, query) = match tail.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (tail, None),
    };
    let mut out = format!("{head}{base}");
    if let Some(query) = query {
        let secret = |name: &str| {
            let name = name.to_ascii_lowercase();
            [
                "pass",
                "pwd",
                "secret",
                "token",
                "key",
                "credential",
                "auth",
            ]
            .iter()
            .any(|s| name.contains(s))
        };
        let params: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((name, _)) if secret(name) => format!("{name}=***"),
                _ => pair.to_owned(),
            })
            .collect();
        out.push('?');
        out.push_str(&params.join("&"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_in_urls_are_hidden() {
        assert_eq!(
            redact_url("postgres://u:pw@h/d?sslmode=require&password=hunter2"),
            "postgres://u:***@h/d?sslmode=require&password=***"
        );
        assert_eq!(
            redact_url("mysql://h/d?user=u&Password=x"),
            "mysql://h/d?user=u&Password=***"
        );
        assert_eq!(redact_url("redis://h:6379/0"), "redis://h:6379/0");
        assert_eq!(
            redact_url("postgres://u:p?ss@h/db"),
            "postgres://u:***@h/db"
        );
        assert_eq!(redact_url("sqlite:data/x.db"), "sqlite:data/x.db");
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(
            escaped("a\nINFO forged\u{1b}]0;title\u{7}\u{202e}b"),
            "a\\u{a}INFO forged\\u{1b}]0;title\\u{7}\\u{202e}b"
        );
        assert!(matches!(escaped("plain é"), Cow::Borrowed(_)));
        assert!(!error_text("x\r\ny").contains('\n'));
    }

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
