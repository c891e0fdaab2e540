//! Bearer JWT access tokens: the signature against the issuer's published keys with the algorithm
//! pinned per issuer (never read from the token), then `iss`, `aud`, `exp`/`nbf`, and the MFA rule.
//! Pure functions over keys the control plane fetched: no fetching, no clock source, no runtime.

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use rustc_hash::FxHashMap;
use serde::Deserialize;

/// Why a token was refused. `UnknownKey` is the one the caller may cure by refreshing the JWKS.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("the bearer token is not a well-formed JWT")]
    Malformed,
    #[error("the token's issuer `{0}` is not a configured identity provider")]
    UnknownIssuer(String),
    #[error("the token is signed with `{got}`, but this issuer is pinned to `{pinned}`")]
    AlgorithmRefused { got: String, pinned: String },
    #[error("the token's signing key `{0}` is not in the issuer's published keys")]
    UnknownKey(String),
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token's audience is not this gateway's")]
    WrongAudience,
    #[error("the token's signature does not verify")]
    BadSignature,
    #[error("the token is invalid: {0}")]
    Invalid(String),
}

/// One identity provider's verification rules and current keys, as held in the snapshot.
#[derive(Clone)]
pub struct TokenIssuer {
    /// The identity provider's name in the config (`/login?provider=NAME`).
    pub provider: String,
    /// Exactly as the tokens' `iss` must read.
    pub issuer: String,
    /// `aud` of access tokens accepted on `/v1`; `None`: this provider serves browser login only.
    pub audience: Option<String>,
    pub algorithm: Algorithm,
    pub leeway_secs: u64,
    keys: FxHashMap<String, DecodingKey>,
}

impl std::fmt::Debug for TokenIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenIssuer")
            .field("provider", &self.provider)
            .field("issuer", &self.issuer)
            .field("kids", &self.keys.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// The algorithms an issuer may be pinned to: asymmetric only. `none` and the HMAC family are
/// refused outright, since an HS* "key" would be the issuer's public key, known to everyone.
pub fn parse_algorithm(name: &str) -> Option<Algorithm> {
    Some(match name {
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        _ => return None,
    })
}

impl TokenIssuer {
    pub fn new(provider: &str, issuer: &str, audience: Option<&str>, algorithm: Algorithm, leeway_secs: u64) -> Self {
        TokenIssuer {
            provider: provider.into(),
            issuer: issuer.into(),
            audience: audience.map(Into::into),
            algorithm,
            leeway_secs,
            keys: FxHashMap::default(),
        }
    }

    /// Replaces the keys with a JWKS document's. Keys without a `kid`, or of another family than
    /// the pinned algorithm, are skipped: they could never verify a token here.
    pub fn set_jwks(&mut self, jwks_json: &[u8]) -> Result<usize, String> {
        let set: JwkSet = serde_json::from_slice(jwks_json).map_err(|e| format!("not a JWKS document: {e}"))?;
        let mut keys = FxHashMap::default();
        for jwk in &set.keys {
            let Some(kid) = jwk.common.key_id.clone() else { continue };
            if let Ok(key) = DecodingKey::from_jwk(jwk)
                && key.family() == self.algorithm.family()
            {
                keys.insert(kid, key);
            }
        }
        self.keys = keys;
        Ok(self.keys.len())
    }

    pub fn has_key(&self, kid: &str) -> bool {
        self.keys.contains_key(kid)
    }
}

/// The claims the gateway reads from a verified access token; the rest stay in `extra`.
#[derive(Debug, Clone, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub exp: u64,
    #[serde(default)]
    pub amr: Vec<String>,
    /// Entra's authentication contexts satisfied by this sign-in.
    #[serde(default)]
    pub acrs: Vec<String>,
    #[serde(default)]
    pub tid: Option<String>,
    #[serde(default)]
    pub oid: Option<String>,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// A token that passed every check, and which issuer vouched for it.
#[derive(Debug, Clone)]
pub struct Verified {
    pub issuer: usize,
    pub claims: Claims,
}

/// A cheap shape test, so a virtual key that happens to contain dots is never parsed as a JWT.
pub fn looks_like_jwt(token: &str) -> bool {
    token.starts_with("eyJ") && token.bytes().filter(|b| *b == b'.').count() == 2
}

#[derive(Deserialize)]
struct IssOnly {
    iss: Option<String>,
}

/// Verifies a bearer access token against the issuer its (unverified) `iss` names, among those
/// that accept bearer tokens; `now` is Unix seconds.
pub fn verify(issuers: &[TokenIssuer], token: &str, now: u64) -> Result<Verified, JwtError> {
    // The unverified `iss` only picks which keys to try; the verified one is checked below.
    let iss = jsonwebtoken::dangerous::insecure_decode_claims::<IssOnly>(token)
        .map_err(|_| JwtError::Malformed)?
        .iss
        .unwrap_or_default();
    let (index, issuer) = issuers
        .iter()
        .enumerate()
        .find(|(_, i)| i.issuer == iss && i.audience.is_some())
        .ok_or(JwtError::UnknownIssuer(iss))?;
    let audience = issuer.audience.as_deref().unwrap_or_default();
    Ok(Verified { issuer: index, claims: verify_for(issuer, token, audience, now)? })
}

/// Verifies an ID token from the login flow: this issuer's keys, `aud` = the client id.
pub fn verify_id_token(issuer: &TokenIssuer, token: &str, client_id: &str, now: u64) -> Result<Claims, JwtError> {
    verify_for(issuer, token, client_id, now)
}

fn verify_for(issuer: &TokenIssuer, token: &str, audience: &str, now: u64) -> Result<Claims, JwtError> {
    let header = jsonwebtoken::decode_header(token).map_err(|_| JwtError::Malformed)?;
    if header.alg != issuer.algorithm {
        return Err(JwtError::AlgorithmRefused {
            got: format!("{:?}", header.alg),
            pinned: format!("{:?}", issuer.algorithm),
        });
    }
    let kid = header.kid.unwrap_or_default();
    let key = issuer.keys.get(&kid).ok_or(JwtError::UnknownKey(kid))?;
    let mut v = Validation::new(issuer.algorithm);
    v.set_issuer(&[&issuer.issuer]);
    v.set_audience(&[audience]);
    v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    v.validate_nbf = true;
    // jsonwebtoken reads the system clock itself; check expiry here against `now` instead, so
    // the gateway's (test-offsettable) clock decides, with the same leeway both ways.
    v.validate_exp = false;
    v.leeway = issuer.leeway_secs;
    let data = jsonwebtoken::decode::<Claims>(token, key, &v).map_err(|e| {
        use jsonwebtoken::errors::ErrorKind as K;
        match e.into_kind() {
            K::InvalidSignature => JwtError::BadSignature,
            K::ImmatureSignature => JwtError::NotYetValid,
            K::InvalidAudience => JwtError::WrongAudience,
            K::InvalidToken | K::Base64(_) | K::Json(_) | K::Utf8(_) => JwtError::Malformed,
            other => JwtError::Invalid(format!("{other:?}")),
        }
    })?;
    if data.claims.exp.saturating_add(issuer.leeway_secs) <= now {
        return Err(JwtError::Expired);
    }
    Ok(data.claims)
}

/// Which issuer a token claims to be from (unverified): to know whose keys to refresh.
pub fn verify_issuer_only(issuers: &[TokenIssuer], token: &str) -> Result<usize, JwtError> {
    let iss = jsonwebtoken::dangerous::insecure_decode_claims::<IssOnly>(token)
        .map_err(|_| JwtError::Malformed)?
        .iss
        .unwrap_or_default();
    issuers.iter().position(|i| i.issuer == iss && i.audience.is_some()).ok_or(JwtError::UnknownIssuer(iss))
}

/// How a provider shows that a sign-in used MFA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MfaEvidence {
    /// Okta and generic OIDC: `amr` contains `mfa`.
    Amr,
    /// Entra: the configured authentication context (`acrs`) is satisfied.
    EntraAcrs(String),
}

impl MfaEvidence {
    pub fn shown_by(&self, claims: &Claims) -> bool {
        match self {
            MfaEvidence::Amr => claims.amr.iter().any(|m| m == "mfa"),
            MfaEvidence::EntraAcrs(want) => claims.acrs.iter().any(|a| a == want),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;

    const PRIVATE: &[u8] = include_bytes!("testdata/rsa_private.pem");
    const PUBLIC: &[u8] = include_bytes!("testdata/rsa_public.pem");
    const OTHER_PRIVATE: &[u8] = include_bytes!("testdata/other_private.pem");
    const JWKS: &[u8] = include_bytes!("testdata/jwks.json");
    const ISS: &str = "https://idp.example.test/oauth2/default";
    const NOW: u64 = 1_800_000_000;

    fn issuer() -> TokenIssuer {
        let mut i = TokenIssuer::new("okta", ISS, Some("api://default"), Algorithm::RS256, 60);
        assert_eq!(i.set_jwks(JWKS).unwrap(), 1);
        i
    }

    fn claims() -> serde_json::Value {
        json!({ "iss": ISS, "aud": "api://default", "sub": "alice", "exp": NOW + 600, "iat": NOW, "amr": ["pwd", "mfa"] })
    }

    fn sign_with(key: &[u8], kid: &str, claims: &serde_json::Value) -> String {
        let mut h = Header::new(Algorithm::RS256);
        h.kid = Some(kid.into());
        encode(&h, claims, &EncodingKey::from_rsa_pem(key).unwrap()).unwrap()
    }

    fn sign(claims: &serde_json::Value) -> String {
        sign_with(PRIVATE, "test-key-1", claims)
    }

    #[test]
    fn a_valid_token_verifies_and_names_its_issuer() {
        let v = verify(&[issuer()], &sign(&claims()), NOW).unwrap();
        assert_eq!((v.issuer, v.claims.sub.as_str()), (0, "alice"));
        assert!(MfaEvidence::Amr.shown_by(&v.claims));
    }

    #[test]
    fn expiry_counts_with_leeway_against_the_given_clock() {
        let mut c = claims();
        c["exp"] = json!(NOW - 30);
        assert!(verify(&[issuer()], &sign(&c), NOW).is_ok(), "30 s past exp is inside the 60 s leeway");
        c["exp"] = json!(NOW - 61);
        assert_eq!(verify(&[issuer()], &sign(&c), NOW).unwrap_err(), JwtError::Expired);
    }

    #[test]
    fn a_future_nbf_is_refused() {
        let mut c = claims();
        c["nbf"] = json!(4_000_000_000u64);
        assert_eq!(verify(&[issuer()], &sign(&c), NOW).unwrap_err(), JwtError::NotYetValid);
    }

    #[test]
    fn wrong_audience_and_unknown_issuer_are_refused() {
        let mut c = claims();
        c["aud"] = json!("api://someone-else");
        assert_eq!(verify(&[issuer()], &sign(&c), NOW).unwrap_err(), JwtError::WrongAudience);
        let mut c = claims();
        c["iss"] = json!("https://evil.example.test");
        assert!(matches!(verify(&[issuer()], &sign(&c), NOW), Err(JwtError::UnknownIssuer(_))));
    }

    #[test]
    fn a_tampered_payload_fails_the_signature() {
        let token = sign(&claims());
        let parts: Vec<&str> = token.split('.').collect();
        let forged =
            serde_json::to_vec(&json!({ "iss": ISS, "aud": "api://default", "sub": "mallory", "exp": NOW + 600 }))
                .unwrap();
        use base64::Engine;
        let forged = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(forged);
        let tampered = format!("{}.{}.{}", parts[0], forged, parts[2]);
        assert_eq!(verify(&[issuer()], &tampered, NOW).unwrap_err(), JwtError::BadSignature);
    }

    #[test]
    fn alg_none_and_hs256_signed_with_the_public_key_are_refused() {
        use base64::Engine;
        let b64 = |v: serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(&v).unwrap())
        };
        let none = format!("{}.{}.", b64(json!({ "alg": "none", "kid": "test-key-1" })), b64(claims()));
        assert!(verify(&[issuer()], &none, NOW).is_err());
        // The classic confusion: HMAC keyed with the issuer's public key, which anyone can fetch.
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some("test-key-1".into());
        let hs = encode(&h, &claims(), &EncodingKey::from_secret(PUBLIC).unwrap()).unwrap();
        assert!(matches!(verify(&[issuer()], &hs, NOW), Err(JwtError::AlgorithmRefused { .. })));
        assert!(parse_algorithm("HS256").is_none() && parse_algorithm("none").is_none());
    }

    #[test]
    fn an_unknown_kid_asks_for_a_refresh_and_a_foreign_key_fails() {
        let t = sign_with(OTHER_PRIVATE, "rotated-key", &claims());
        assert_eq!(verify(&[issuer()], &t, NOW).unwrap_err(), JwtError::UnknownKey("rotated-key".into()));
        // Signed by another key under a known kid: the signature check catches it.
        let t = sign_with(OTHER_PRIVATE, "test-key-1", &claims());
        assert_eq!(verify(&[issuer()], &t, NOW).unwrap_err(), JwtError::BadSignature);
    }

    #[test]
    fn entra_mfa_is_the_configured_authentication_context() {
        let mut c = claims();
        c.as_object_mut().unwrap().remove("amr");
        c["acrs"] = json!(["c1"]);
        let v = verify(&[issuer()], &sign(&c), NOW).unwrap();
        assert!(!MfaEvidence::Amr.shown_by(&v.claims));
        assert!(MfaEvidence::EntraAcrs("c1".into()).shown_by(&v.claims));
        assert!(!MfaEvidence::EntraAcrs("c2".into()).shown_by(&v.claims));
    }

    #[test]
    fn only_jwt_shaped_bearers_are_treated_as_tokens() {
        assert!(looks_like_jwt(&sign(&claims())));
        assert!(!looks_like_jwt("vk-demo-key"));
        assert!(!looks_like_jwt("sk-hd-a.b.c"));
    }
}
