//! OAuth clients in `state.db`: what each may do (kind and grant types) and
//! where an authorization code may be sent (its registered redirect URIs).

use rusqlite::{params, OptionalExtension};

use crate::state::{now_secs, sha256_hex, validate_name, StateDb, StateError};

#[derive(Clone, Debug)]
pub struct Client {
    pub client_id: String,
    /// SHA-256 of the generated secret: client secrets are 256-bit random values,
    /// so a slow password hash adds latency to every introspection without adding
    /// safety. Empty for a public client, which has no secret.
    pub secret_sha256: String,
    pub kind: ClientKind,
    pub scope: Option<String>,
    pub grant_types: Vec<GrantType>,
    /// Compared with a request's `redirect_uri` character for character.
    pub redirect_uris: Vec<String>,
}

impl Client {
    pub fn allows(&self, grant: GrantType) -> bool {
        self.grant_types.contains(&grant)
    }

    /// Whether `uri` is one of this client's registered redirect URIs, exactly.
    pub fn has_redirect_uri(&self, uri: &str) -> bool {
        self.redirect_uris.iter().any(|r| r == uri)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientKind {
    /// Has a secret; may use the grants it was registered with.
    Confidential,
    /// A browser or mobile app: no secret, so only the authorization-code grant
    /// (always with PKCE) and refresh tokens.
    Public,
    /// A resource server: may only call introspection.
    ResourceServer,
}

impl ClientKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ClientKind::Confidential => "confidential",
            ClientKind::Public => "public",
            ClientKind::ResourceServer => "resource_server",
        }
    }

    fn parse(s: &str) -> ClientKind {
        match s {
            "resource_server" => ClientKind::ResourceServer,
            "public" => ClientKind::Public,
            _ => ClientKind::Confidential,
        }
    }

    /// The grants a client of this kind gets when none are given: what
    /// tokenwatch allowed before grants were configurable, and for a public
    /// client the only ones it may have.
    pub fn default_grants(self) -> Vec<GrantType> {
        match self {
            ClientKind::Confidential => vec![
                GrantType::Password,
                GrantType::ClientCredentials,
                GrantType::RefreshToken,
            ],
            ClientKind::Public => vec![GrantType::AuthorizationCode, GrantType::RefreshToken],
            ClientKind::ResourceServer => Vec::new(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrantType {
    AuthorizationCode,
    RefreshToken,
    Password,
    ClientCredentials,
}

impl GrantType {
    pub const ALL: [GrantType; 4] = [
        GrantType::AuthorizationCode,
        GrantType::RefreshToken,
        GrantType::Password,
        GrantType::ClientCredentials,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            GrantType::AuthorizationCode => "authorization_code",
            GrantType::RefreshToken => "refresh_token",
            GrantType::Password => "password",
            GrantType::ClientCredentials => "client_credentials",
        }
    }
}

impl std::str::FromStr for GrantType {
    type Err = StateError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        GrantType::ALL
            .into_iter()
            .find(|g| g.as_str() == s)
            .ok_or_else(|| {
                StateError::Invalid(format!(
                    "unknown grant type {s:?}: expected authorization_code, refresh_token, \
                     password or client_credentials"
                ))
            })
    }
}

/// A client to register.
#[derive(Clone, Debug)]
pub struct NewClient {
    pub client_id: String,
    pub kind: ClientKind,
    pub scope: Option<String>,
    /// `None`: the kind's [`ClientKind::default_grants`].
    pub grant_types: Option<Vec<GrantType>>,
    pub redirect_uris: Vec<String>,
}

impl NewClient {
    pub fn new(client_id: &str, kind: ClientKind) -> NewClient {
        NewClient {
            client_id: client_id.to_string(),
            kind,
            scope: None,
            grant_types: None,
            redirect_uris: Vec::new(),
        }
    }

    /// The grants after defaults, refused when they do not fit the kind or the
    /// redirect URIs.
    fn checked_grants(&self) -> Result<Vec<GrantType>, StateError> {
        let mut grants: Vec<GrantType> = Vec::new();
        for g in self
            .grant_types
            .clone()
            .unwrap_or_else(|| self.kind.default_grants())
        {
            if !grants.contains(&g) {
                grants.push(g);
            }
        }
        let invalid = |m: String| Err(StateError::Invalid(m));
        match self.kind {
            ClientKind::ResourceServer if !grants.is_empty() => {
                return invalid("a resource server only introspects; it has no grant types".into())
            }
            ClientKind::Public => {
                if let Some(g) = grants
                    .iter()
                    .find(|g| matches!(g, GrantType::Password | GrantType::ClientCredentials))
                {
                    return invalid(format!(
                        "a public client has no secret, so it may not use the {} grant",
                        g.as_str()
                    ));
                }
                if !grants.contains(&GrantType::AuthorizationCode) {
                    return invalid(
                        "a public client needs the authorization_code grant (with PKCE)".into(),
                    );
                }
            }
            _ => {}
        }
        let wants_code = grants.contains(&GrantType::AuthorizationCode);
        if wants_code && self.redirect_uris.is_empty() {
            return invalid(
                "the authorization_code grant needs at least one --redirect-uri".into(),
            );
        }
        if !wants_code && !self.redirect_uris.is_empty() {
            return invalid(
                "redirect URIs are used only by the authorization_code grant; add it to --grant-types"
                    .into(),
            );
        }
        Ok(grants)
    }
}

/// A redirect URI a client may register (RFC 8252, OAuth 2.1 §2.3.1): absolute,
/// no fragment; https, or http only to a loopback address, or a private-use
/// scheme of a native app (`com.example.app:/cb`, RFC 8252 §7.1).
pub fn validate_redirect_uri(uri: &str) -> Result<(), StateError> {
    let invalid = |why: &str| Err(StateError::Invalid(format!("redirect URI {uri:?} {why}")));
    let Ok(url) = url::Url::parse(uri) else {
        return invalid("is not an absolute URL");
    };
    if uri.len() > 2000 || uri.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return invalid("is too long or contains spaces or control characters");
    }
    if url.fragment().is_some() || uri.contains('#') {
        return invalid("must not contain a fragment (RFC 6749 §3.1.2)");
    }
    let loopback = matches!(
        url.host(),
        Some(url::Host::Ipv4(ip)) if ip.is_loopback()
    ) || matches!(url.host(), Some(url::Host::Ipv6(ip)) if ip.is_loopback())
        || url.host_str() == Some("localhost");
    match url.scheme() {
        "https" if url.host().is_some() => Ok(()),
        "http" if loopback => Ok(()),
        "http" => invalid("uses http to a host other than loopback; use https"),
        s if s.contains('.') => Ok(()),
        _ => invalid(
            "must be https, http to a loopback address, or a reverse-domain private-use scheme",
        ),
    }
}

impl StateDb {
    /// Registers a client; returns its generated secret (shown once), or `None`
    /// for a public client.
    pub fn add_client(&self, new: &NewClient) -> Result<Option<String>, StateError> {
        validate_name(&new.client_id, "client id")?;
        let grants = new.checked_grants()?;
        for uri in &new.redirect_uris {
            validate_redirect_uri(uri)?;
        }
        let secret = (new.kind != ClientKind::Public).then(|| crate::random_token(32));
        let secret_hash = secret
            .as_ref()
            .map(|s| sha256_hex(s.as_bytes()))
            .unwrap_or_default();
        let grant_text = grants
            .iter()
            .map(|g| g.as_str())
            .collect::<Vec<_>>()
            .join(" ");
        let uris = serde_json::to_string(&new.redirect_uris)
            .map_err(|e| StateError::Invalid(e.to_string()))?;
        let inserted = self.conn().execute(
            "INSERT OR IGNORE INTO clients (client_id, secret_sha256, kind, scope, created_at, grant_types, redirect_uris)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![new.client_id, secret_hash, new.kind.as_str(), new.scope, now_secs(), grant_text, uris],
        )?;
        if inserted == 0 {
            return Err(StateError::ClientExists(new.client_id.clone()));
        }
        Ok(secret)
    }

    pub fn find_client(&self, client_id: &str) -> Result<Option<Client>, StateError> {
        let conn = self.conn();
        let row = conn
            .query_row(
                "SELECT client_id, secret_sha256, kind, scope, grant_types, redirect_uris
                 FROM clients WHERE client_id = ?1",
                [client_id],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, Option<String>>(3)?,
                        r.get::<_, String>(4)?,
                        r.get::<_, String>(5)?,
                    ))
                },
            )
            .optional()?;
        let Some((client_id, secret_sha256, kind, scope, grants, uris)) = row else {
            return Ok(None);
        };
        // A grant this version does not know is ignored, never widened into another.
        let grant_types = grants
            .split_ascii_whitespace()
            .filter_map(|g| g.parse().ok())
            .collect();
        let redirect_uris = serde_json::from_str(&uris).map_err(|e| {
            StateError::Invalid(format!("client {client_id:?}: stored redirect URIs: {e}"))
        })?;
        Ok(Some(Client {
            client_id,
            secret_sha256,
            kind: ClientKind::parse(&kind),
            scope,
            grant_types,
            redirect_uris,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_uris_are_https_loopback_http_or_private_use() {
        for ok in [
            "https://app.example.com/cb",
            "http://127.0.0.1:53219/callback",
            "http://[::1]:8000/cb",
            "http://localhost/cb",
            "com.example.app:/oauth2redirect",
        ] {
            validate_redirect_uri(ok).expect(ok);
        }
        for bad in [
            "http://app.example.com/cb",
            "https://app.example.com/cb#x",
            "/relative/cb",
            "javascript:alert(1)",
            "https://app.example.com/c b",
        ] {
            assert!(validate_redirect_uri(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn grants_must_fit_the_kind_and_the_redirect_uris() {
        let mut c = NewClient::new("spa", ClientKind::Public);
        assert!(
            c.checked_grants().is_err(),
            "code grant without redirect URI"
        );
        c.redirect_uris = vec!["https://app.example.com/cb".into()];
        assert_eq!(
            c.checked_grants().unwrap(),
            vec![GrantType::AuthorizationCode, GrantType::RefreshToken]
        );
        c.grant_types = Some(vec![GrantType::AuthorizationCode, GrantType::Password]);
        assert!(c.checked_grants().is_err(), "public client with password");
        let mut rs = NewClient::new("api", ClientKind::ResourceServer);
        assert!(rs.checked_grants().unwrap().is_empty());
        rs.grant_types = Some(vec![GrantType::ClientCredentials]);
        assert!(rs.checked_grants().is_err());
        let mut conf = NewClient::new("web", ClientKind::Confidential);
        conf.redirect_uris = vec!["https://app.example.com/cb".into()];
        assert!(
            conf.checked_grants().is_err(),
            "redirect URI without the code grant"
        );
    }
}
