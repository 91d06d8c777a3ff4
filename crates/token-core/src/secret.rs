//! A wrapper that keeps bearer secrets out of logs and debug output.

use std::fmt;

use zeroize::Zeroize;

/// A token or refresh token handed to a client. `Debug` and `Display` print
/// `[redacted]`, so a stray `{:?}` cannot leak it; the memory is wiped on drop.
#[derive(Clone)]
pub struct SecretToken(String);

impl SecretToken {
    pub(crate) fn new(value: String) -> Self {
        SecretToken(value)
    }

    /// The raw value, for the one place that must send it to the client.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for SecretToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl Drop for SecretToken {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

#[cfg(test)]
mod tests {
    use super::SecretToken;

    #[test]
    fn formatting_never_shows_the_value() {
        let t = SecretToken::new("eyJhbGciOi.secret.value".into());
        assert_eq!(format!("{t:?}"), "[redacted]");
        assert_eq!(format!("{t}"), "[redacted]");
        assert_eq!(t.expose(), "eyJhbGciOi.secret.value");
    }
}
