//! Making attacker-controlled strings safe to put in a log line or audit row.

/// Placeholder recorded instead of an identifier that is not plainly safe to log.
pub const INVALID_ID: &str = "<invalid>";

const MAX_ID_LEN: usize = 64;

/// Returns `raw` when it is 1..=64 characters of `[A-Za-z0-9._-]`, else [`INVALID_ID`].
///
/// Used for header values (`kid`, `alg`) seen before the signature is checked: the
/// audit trail records them "as seen", so they must not be able to forge log lines,
/// smuggle markup, or bloat a row.
pub fn log_safe_id(raw: &str) -> String {
    if is_safe_id(raw) {
        raw.to_owned()
    } else {
        INVALID_ID.to_owned()
    }
}

/// True when `raw` is 1..=64 characters of `[A-Za-z0-9._-]`. Key ids must satisfy this
/// because they also name key files on disk.
pub fn is_safe_id(raw: &str) -> bool {
    !raw.is_empty()
        && raw.len() <= MAX_ID_LEN
        && raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Truncates to `max` characters and replaces control characters, for values that
/// come from a signature-verified token but were chosen by its issuer (`sub`, `jti`).
pub fn log_safe_text(raw: &str, max: usize) -> String {
    raw.chars()
        .take(max)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_outside_the_charset_are_replaced() {
        assert_eq!(log_safe_id("es256-1a2b"), "es256-1a2b");
        assert_eq!(log_safe_id("../../dev/null"), INVALID_ID);
        assert_eq!(log_safe_id("' OR 1=1 --"), INVALID_ID);
        assert_eq!(log_safe_id(""), INVALID_ID);
        assert_eq!(log_safe_id(&"a".repeat(65)), INVALID_ID);
        assert_eq!(log_safe_id(&"a".repeat(64)), "a".repeat(64));
    }

    #[test]
    fn text_loses_control_characters_and_length() {
        assert_eq!(log_safe_text("alice\nFAKE LINE", 100), "alice?FAKE LINE");
        assert_eq!(log_safe_text("abcdef", 3), "abc");
    }
}
