//! Credentials → principal: finds the caller's credential in the headers and resolves it against
//! the snapshot (virtual keys by SHA-256). Plain functions: no sockets, no runtime, no store.

pub mod jwt;
pub mod rbac;

use http::HeaderMap;
use sha2::{Digest, Sha256};

use rustc_hash::FxHashMap;

use crate::error::GatewayError;
use crate::snapshot::{Snapshot, SsoUser, VirtualKey};

/// SHA-256 of a key value: the only form in which keys are stored or compared.
pub fn hash_key(value: &str) -> [u8; 32] {
    Sha256::digest(value.as_bytes()).into()
}

/// Parses a hex SHA-256 (`value_sha256` in the config).
pub fn parse_hash(hex_str: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_str.trim(), &mut out).ok()?;
    Some(out)
}

/// The headers a virtual key may arrive in, in order of precedence (Bifrost's order).
/// Parsed once: a lookup by `&str` parses and lowercase-checks the name on every request.
const KEY_HEADERS: [http::HeaderName; 3] = [
    http::HeaderName::from_static("x-bf-vk"),
    http::HeaderName::from_static("x-api-key"),
    http::HeaderName::from_static("api-key"),
];

/// The credential a request carries, if any.
pub fn credential(headers: &HeaderMap) -> Option<&str> {
    if let Some(v) = headers.get(&KEY_HEADERS[0]).and_then(|v| v.to_str().ok()) {
        return non_empty(v);
    }
    if let Some(v) = headers.get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        let v = v.trim();
        let token = match v.split_once(' ') {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest,
            None if v.eq_ignore_ascii_case("bearer") => "",
            _ => v,
        };
        return non_empty(token);
    }
    KEY_HEADERS[1..].iter().find_map(|h| headers.get(h).and_then(|v| v.to_str().ok())).and_then(non_empty)
}

fn non_empty(s: &str) -> Option<&str> {
    let s = s.trim();
    (!s.is_empty()).then_some(s)
}

/// The system roles, lowest first, so the highest of several is `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    Viewer,
    Developer,
    Admin,
}

impl Role {
    pub fn parse(s: &str) -> Option<Role> {
        Some(match s {
            "viewer" => Role::Viewer,
            "developer" => Role::Developer,
            "admin" => Role::Admin,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Developer => "developer",
            Role::Admin => "admin",
        }
    }
}

/// Who is calling. `Anonymous` only when the snapshot does not require a credential.
#[derive(Debug, Clone, Copy)]
pub enum Principal<'s> {
    VirtualKey(&'s VirtualKey),
    /// A user proven by a bearer JWT (with a virtual key of theirs, when one was sent too).
    User {
        user: &'s SsoUser,
        role: Role,
        key: Option<&'s VirtualKey>,
    },
    Anonymous,
}

/// The chain a request is checked against and charged to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainRef {
    Key(usize),
    User(usize),
}

impl<'s> Principal<'s> {
    pub fn virtual_key(&self) -> Option<&'s VirtualKey> {
        match self {
            Principal::VirtualKey(k) => Some(k),
            Principal::User { key, .. } => *key,
            Principal::Anonymous => None,
        }
    }

    pub fn user(&self) -> Option<&'s SsoUser> {
        match self {
            Principal::User { user, .. } => Some(user),
            _ => None,
        }
    }

    /// A key sent with the user's token governs (its chain holds the user); else the user's own.
    pub fn chain(&self) -> Option<ChainRef> {
        match self {
            Principal::VirtualKey(k) | Principal::User { key: Some(k), .. } => Some(ChainRef::Key(k.index)),
            Principal::User { user, key: None, .. } => Some(ChainRef::User(user.index)),
            Principal::Anonymous => None,
        }
    }
}

impl Snapshot {
    pub fn chain(&self, c: ChainRef) -> &[usize] {
        match c {
            ChainRef::Key(k) => &self.virtual_keys[k].chain,
            ChainRef::User(u) => &self.identity.users[u].chain,
        }
    }
}

/// A verified token remembered by one core until it expires: RS256 costs ~90 µs, a hit well under 1 µs.
#[derive(Debug, Clone, Copy)]
struct CachedToken {
    snapshot_version: u64,
    expires_at: u64,
    user: usize,
    role: Role,
}

/// One core's verified tokens, keyed by the whole token (a hit compares every byte, so a fast
/// non-cryptographic hash is safe here), plus the issuers whose keys it found
/// stale (an unknown `kid`) for the caller to ask the control plane to refresh.
#[derive(Debug, Default)]
pub struct TokenCache {
    verified: FxHashMap<Box<str>, CachedToken>,
    pub refresh_wanted: Option<String>,
    /// Users seen with a valid token and no account yet, for the control plane to provision.
    pub provision_wanted: Vec<Provision>,
    /// Provisioning already asked for by this core (so a burst asks once).
    asked: rustc_hash::FxHashSet<String>,
}

/// A user to provision from a verified bearer token: what the control plane needs to create them.
#[derive(Debug, Clone)]
pub struct Provision {
    pub provider: String,
    pub subject: String,
    pub role: Role,
    pub groups: Vec<String>,
    pub email: Option<String>,
    pub name: Option<String>,
}

/// Entries one core keeps; when full, expired ones go, and if none has, all do.
const TOKEN_CACHE_MAX: usize = 4096;

impl TokenCache {
    fn remember(&mut self, token: &str, t: CachedToken, now: u64) {
        if self.verified.len() >= TOKEN_CACHE_MAX {
            self.verified.retain(|_, v| v.expires_at > now);
            if self.verified.len() >= TOKEN_CACHE_MAX {
                self.verified.clear();
            }
        }
        self.verified.insert(token.into(), t);
    }
}

/// The bearer value of `Authorization`, when there is one.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, rest) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
}

/// A virtual key from the key headers other than `Authorization` (sent beside a JWT).
fn key_header(headers: &HeaderMap) -> Option<&str> {
    KEY_HEADERS.iter().find_map(|h| headers.get(h).and_then(|v| v.to_str().ok())).and_then(non_empty)
}

/// Resolves the request's credential. Runs first on every `/v1` request; `now` is Unix seconds.
pub fn authenticate<'s>(
    snap: &'s Snapshot,
    headers: &HeaderMap,
    tokens: &mut TokenCache,
    now: u64,
) -> Result<Principal<'s>, GatewayError> {
    let jwt = if snap.identity.accepts_bearer { bearer(headers).filter(|t| jwt::looks_like_jwt(t)) } else { None };
    if let Some(token) = jwt {
        let (user, role) = sso_user(snap, token, tokens, now)?;
        let key = match key_header(headers) {
            Some(k) => Some(active_key(snap, k)?),
            None => None,
        };
        if let Some(k) = key
            && k.user.as_deref() != Some(&*user.id)
        {
            return Err(GatewayError::UserNotAuthorized(format!(
                "virtual key '{}' does not belong to user '{}'",
                k.id, user.id
            )));
        }
        return Ok(Principal::User { user, role, key });
    }
    let Some(cred) = credential(headers) else {
        return if snap.server.require_virtual_key {
            Err(GatewayError::AuthenticationRequired)
        } else {
            Ok(Principal::Anonymous)
        };
    };
    let key = active_key(snap, cred)?;
    if snap.identity.require_sso && key.user.is_some() {
        return Err(GatewayError::SsoRequired);
    }
    Ok(Principal::VirtualKey(key))
}

fn active_key<'s>(snap: &'s Snapshot, cred: &str) -> Result<&'s VirtualKey, GatewayError> {
    let key = snap.virtual_key_by_hash(&hash_key(cred)).ok_or(GatewayError::VirtualKeyNotFound)?;
    if !key.active {
        return Err(GatewayError::VirtualKeyBlocked(key.id.to_string()));
    }
    Ok(key)
}

/// The user a bearer JWT proves, from the core's cache or by verifying it.
fn sso_user<'s>(
    snap: &'s Snapshot,
    token: &str,
    tokens: &mut TokenCache,
    now: u64,
) -> Result<(&'s SsoUser, Role), GatewayError> {
    if let Some(t) = tokens.verified.get(token)
        && t.snapshot_version == snap.version
        && t.expires_at > now
    {
        return Ok((&snap.identity.users[t.user], t.role));
    }
    let verified = jwt::verify(&snap.identity.issuers, token, now).map_err(|e| {
        if let jwt::JwtError::UnknownKey(_) = &e
            && let Ok(v) = jwt::verify_issuer_only(&snap.identity.issuers, token)
        {
            tokens.refresh_wanted = Some(snap.identity.issuers[v].provider.clone());
        }
        GatewayError::InvalidToken(e.to_string())
    })?;
    let rules = &snap.identity.rules[verified.issuer];
    let claims = &verified.claims;
    if !rules.tenants.is_empty() && !claims.tid.as_ref().is_some_and(|t| rules.tenants.contains(t)) {
        return Err(GatewayError::InvalidToken("the token's tenant is not allowed".into()));
    }
    let subject = match (rules.kind, &claims.tid, &claims.oid) {
        (crate::config::IdpKind::Entra, Some(tid), Some(oid)) => format!("{tid}/{oid}"),
        _ => claims.sub.clone(),
    };
    let known = snap.identity.user(&rules.provider, &subject);
    // A token without the role claim at all (Entra group overage) keeps the role the user was
    // given at sign-in; a claim that is present but maps to nothing is a revocation.
    let stored = known.filter(|_| !claims.extra.contains_key(&rules.roles_claim)).and_then(|u| u.role);
    let role = mapped_role(rules, claims).or(stored).or(rules.default_role).ok_or_else(|| {
        GatewayError::UserNotAuthorized(format!("no role of provider '{}' maps from this token", rules.provider))
    })?;
    if rules.require_mfa.contains(&role) && !rules.mfa.shown_by(claims) {
        return Err(GatewayError::MfaRequired);
    }
    let user = match known {
        Some(u) => u,
        None => {
            let Some(slot) = snap.identity.unprovisioned.get(verified.issuer).copied().flatten() else {
                return Err(GatewayError::UserNotAuthorized(format!(
                    "no user has external_id '{}:{subject}'",
                    rules.provider
                )));
            };
            let external = format!("{}:{subject}", rules.provider);
            if tokens.asked.insert(external) {
                let text = |k: &str| claims.extra.get(k).and_then(|v| v.as_str()).map(String::from);
                let groups = match claims.extra.get(&rules.teams_claim) {
                    Some(serde_json::Value::Array(a)) => {
                        a.iter().filter_map(|v| v.as_str().map(String::from)).collect()
                    }
                    _ => Vec::new(),
                };
                tokens.provision_wanted.push(Provision {
                    provider: rules.provider.clone(),
                    subject: subject.clone(),
                    role,
                    groups,
                    email: text("email"),
                    name: text("name"),
                });
            }
            // Not cached: the next snapshot holds the provisioned user.
            return Ok((&snap.identity.users[slot], role));
        }
    };
    let cached = CachedToken { snapshot_version: snap.version, expires_at: claims.exp, user: user.index, role };
    tokens.remember(token, cached, now);
    Ok((user, role))
}

/// The highest role the token's role claim maps to.
pub fn mapped_role(rules: &crate::snapshot::IdpRules, claims: &jwt::Claims) -> Option<Role> {
    let values = claims.extra.get(&rules.roles_claim)?;
    let names: Vec<&str> = match values {
        serde_json::Value::Array(a) => a.iter().filter_map(|v| v.as_str()).collect(),
        serde_json::Value::String(s) => vec![s.as_str()],
        _ => return None,
    };
    names.iter().filter_map(|n| rules.role_map.get(*n).copied()).max()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn x_bf_vk_wins_over_authorization() {
        let h = headers(&[("x-bf-vk", "vk-a"), ("authorization", "Bearer vk-b")]);
        assert_eq!(credential(&h), Some("vk-a"));
    }

    #[test]
    fn bearer_prefix_is_stripped() {
        assert_eq!(credential(&headers(&[("authorization", "Bearer  vk-b ")])), Some("vk-b"));
    }

    #[test]
    fn anthropic_and_azure_style_headers_are_read() {
        assert_eq!(credential(&headers(&[("x-api-key", "vk-c")])), Some("vk-c"));
        assert_eq!(credential(&headers(&[("api-key", "vk-d")])), Some("vk-d"));
    }

    #[test]
    fn empty_credentials_count_as_none() {
        assert_eq!(credential(&headers(&[("authorization", "Bearer ")])), None);
        assert_eq!(credential(&HeaderMap::new()), None);
    }

    #[test]
    fn hex_hashes_round_trip() {
        let h = hash_key("abc");
        assert_eq!(parse_hash(&hex::encode(h)), Some(h));
        assert_eq!(parse_hash("zz"), None);
    }
}
