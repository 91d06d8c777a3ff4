//! The claims token-core puts in an access token and reads back out of one.

use std::time::Duration;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::reason::Reason;

/// Claim names token-core sets itself; [`AccessRequest::extra`] may not use them.
pub const RESERVED_CLAIMS: [&str; 12] = [
    "iss",
    "sub",
    "aud",
    "exp",
    "iat",
    "nbf",
    "jti",
    "username",
    "roles",
    "client_id",
    "scope",
    "sid",
];

/// What to put in a new access token. Issuer, audience, times and `jti` come from the
/// service.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AccessRequest {
    pub subject: String,
    pub username: Option<String>,
    pub roles: Vec<String>,
    pub client_id: Option<String>,
    /// Space-separated OAuth scopes (RFC 6749 §3.3).
    pub scope: Option<String>,
    /// The refresh family this token belongs to (claim `sid`), so that revoking the
    /// family also ends its access tokens.
    pub session_id: Option<String>,
    /// Shorter lifetime than `TokenConfig::access_ttl`; a longer one is refused, so
    /// revocation entries sized by `access_ttl` always outlive the token.
    pub ttl: Option<Duration>,
    /// Additional claims; names in [`RESERVED_CLAIMS`] are refused.
    pub extra: Map<String, Value>,
}

impl AccessRequest {
    /// A request for `subject` with nothing else set.
    pub fn new(subject: impl Into<String>) -> Self {
        AccessRequest {
            subject: subject.into(),
            ..Self::default()
        }
    }
}

/// The claims of a verified (or freshly issued) access token.
///
/// `aud` is a single string: when a token carries an audience array, it is the
/// configured audience that matched.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub exp: i64,
    pub iat: i64,
    pub nbf: i64,
    pub jti: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    pub roles: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A claim that could not be read: the reason code and a message naming the claim
/// (never its value, which may be attacker-chosen or personal).
pub(crate) type ClaimError = (Reason, String);

fn missing(name: &str) -> ClaimError {
    (
        Reason::MissingClaim,
        format!("required claim `{name}` is missing"),
    )
}

fn wrong_type(name: &str, want: &str) -> ClaimError {
    (Reason::Malformed, format!("claim `{name}` must be {want}"))
}

fn take_string(m: &mut Map<String, Value>, name: &str) -> Result<Option<String>, ClaimError> {
    match m.remove(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(wrong_type(name, "a string")),
    }
}

fn require_string(m: &mut Map<String, Value>, name: &str) -> Result<String, ClaimError> {
    match take_string(m, name) {
        Ok(Some(s)) if !s.is_empty() => Ok(s),
        Ok(_) => Err(missing(name)),
        // A wrongly-typed required claim counts as missing (e.g. `iss: 5`), the same
        // answer jsonwebtoken gives for `exp`, `iss`, `aud` and `sub`.
        Err(_) => Err(missing(name)),
    }
}

/// The latest NumericDate accepted: 9999-12-31T23:59:59Z. Anything later (`1e300`)
/// is not a date any issuer meant; saturating it would make it look valid forever.
const MAX_NUMERIC_DATE: f64 = 253_402_300_799.0;

/// RFC 7519 NumericDate: integer or fractional seconds, from 0 to
/// [`MAX_NUMERIC_DATE`]. Fractions are dropped. A negative, absurd or non-numeric
/// value is present but invalid: `malformed`, naming the claim, never `missing_claim`.
fn numeric_date(value: &Value, name: &str) -> Result<i64, ClaimError> {
    let invalid = || {
        (
            Reason::Malformed,
            format!(
                "claim `{name}` is not a valid NumericDate \
                 (seconds since 1970, from 0 to 253402300799)"
            ),
        )
    };
    let secs = value
        .as_f64()
        .filter(|f| f.is_finite())
        .ok_or_else(invalid)?;
    if !(0.0..=MAX_NUMERIC_DATE).contains(&secs) {
        return Err(invalid());
    }
    // In range, so the conversion is exact for integers and floors fractions.
    Ok(value.as_i64().unwrap_or(secs.floor() as i64))
}

fn take_numeric_date(m: &mut Map<String, Value>, name: &str) -> Result<Option<i64>, ClaimError> {
    match m.remove(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => numeric_date(&v, name).map(Some),
    }
}

/// Why a date claim that jsonwebtoken reported as missing was refused: `None` when
/// it really is absent, else the `malformed` refusal naming it.
pub(crate) fn present_date_claim_error(
    payload: &Map<String, Value>,
    name: &str,
) -> Option<ClaimError> {
    match payload.get(name) {
        None | Some(Value::Null) => None,
        Some(v) => numeric_date(v, name).err(),
    }
}

impl Claims {
    /// Reads claims out of a signature-verified payload. `exp`, `iss`, `aud`, `sub`,
    /// `iat` and `jti` are required; a missing `nbf` means "valid from `iat`".
    /// `expected_aud` is recorded when `aud` is an array (it has already been checked
    /// to be a member).
    pub(crate) fn from_payload(
        mut m: Map<String, Value>,
        expected_aud: &str,
    ) -> Result<Claims, ClaimError> {
        let iss = require_string(&mut m, "iss")?;
        let sub = require_string(&mut m, "sub")?;
        let aud = match m.remove("aud") {
            Some(Value::String(s)) if !s.is_empty() => s,
            Some(Value::Array(items))
                if items.iter().all(Value::is_string) && !items.is_empty() =>
            {
                expected_aud.to_owned()
            }
            _ => return Err(missing("aud")),
        };
        let exp = take_numeric_date(&mut m, "exp")?.ok_or_else(|| missing("exp"))?;
        let iat = take_numeric_date(&mut m, "iat")?.ok_or_else(|| missing("iat"))?;
        let nbf = take_numeric_date(&mut m, "nbf")?.unwrap_or(iat);
        // jti is required because revocation works by jti: a token that cannot be
        // revoked individually is not accepted.
        let jti = require_string(&mut m, "jti")?;
        let username = take_string(&mut m, "username")?;
        let client_id = take_string(&mut m, "client_id")?;
        let scope = take_string(&mut m, "scope")?;
        let sid = take_string(&mut m, "sid")?;
        let roles = match m.remove("roles") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items
                .into_iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s),
                    _ => Err(wrong_type("roles", "an array of strings")),
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(wrong_type("roles", "an array of strings")),
        };
        Ok(Claims {
            iss,
            sub,
            aud,
            exp,
            iat,
            nbf,
            jti,
            username,
            roles,
            client_id,
            scope,
            sid,
            extra: m,
        })
    }

    /// The scopes as a list (RFC 6749 §3.3 space-separated form split).
    pub fn scopes(&self) -> Vec<&str> {
        self.scope
            .as_deref()
            .map(|s| s.split(' ').filter(|x| !x.is_empty()).collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn payload(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    fn base() -> Value {
        json!({"iss":"i","sub":"s","aud":"a","exp":10,"iat":1,"jti":"j"})
    }

    #[test]
    fn nbf_defaults_to_iat_and_extra_keeps_the_rest() {
        let mut v = base();
        v["tenant"] = json!("acme");
        let c = Claims::from_payload(payload(v), "a").expect("valid");
        assert_eq!(c.nbf, 1);
        assert_eq!(c.extra.get("tenant"), Some(&json!("acme")));
        assert!(c.roles.is_empty());
    }

    #[test]
    fn audience_array_records_the_expected_audience_and_fractions_floor() {
        let mut v = base();
        v["aud"] = json!(["other", "a"]);
        v["exp"] = json!(10.9);
        let c = Claims::from_payload(payload(v), "a").expect("valid");
        assert_eq!(c.aud, "a");
        assert_eq!(c.exp, 10);
    }

    #[test]
    fn missing_or_mistyped_claims_are_refused_with_the_claim_name() {
        for (claim, value, reason) in [
            ("jti", Value::Null, Reason::MissingClaim),
            ("iat", Value::Null, Reason::MissingClaim),
            ("iss", json!(5), Reason::MissingClaim),
            ("aud", Value::Null, Reason::MissingClaim),
            ("exp", json!("tomorrow"), Reason::Malformed),
            ("exp", json!(-1), Reason::Malformed),
            ("exp", json!(1e300), Reason::Malformed),
            ("iat", json!(-0.5), Reason::Malformed),
            ("nbf", json!(253_402_300_800u64), Reason::Malformed),
            ("roles", json!("admin"), Reason::Malformed),
            ("username", json!(["a"]), Reason::Malformed),
        ] {
            let mut v = base();
            v[claim] = value;
            let err = Claims::from_payload(payload(v), "a").expect_err(claim);
            assert_eq!(err.0, reason, "{claim}");
            assert!(err.1.contains(claim), "{}", err.1);
        }
    }
}
