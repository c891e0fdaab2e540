//! Single sign-on pieces the control plane's login flow is made of: PKCE and random values, the
//! mapping of a provider's claims to teams, and the sealing of refresh tokens at rest.
//! Plain functions: no sockets, no store, never on a data-plane core.

use std::collections::HashSet;

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

use crate::config::{IdpConfig, IdpKind};

/// `n` random bytes as base64url: state, nonce, PKCE verifier, session ids.
pub fn random_token(n: usize) -> String {
    let mut buf = vec![0u8; n];
    // getrandom fails only without an OS entropy source; fall back to the thread RNG then.
    if getrandom::fill(&mut buf).is_err() {
        fastrand::fill(&mut buf);
    }
    URL_SAFE_NO_PAD.encode(buf)
}

/// A PKCE pair: (verifier, S256 challenge).
pub fn pkce() -> (String, String) {
    let verifier = random_token(48);
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    (verifier, challenge)
}

/// The identity a provider's token names: `sub`, or `tid/oid` for Entra (its stable user key).
pub fn subject(kind: IdpKind, sub: &str, tid: Option<&str>, oid: Option<&str>) -> String {
    match (kind, tid, oid) {
        (IdpKind::Entra, Some(tid), Some(oid)) => format!("{tid}/{oid}"),
        _ => sub.to_string(),
    }
}

/// The id a provisioned user gets: readable, stable, and safe in paths.
pub fn user_id_for(provider: &str, subject: &str) -> String {
    let clean: String =
        subject.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '.' { c } else { '-' }).collect();
    format!("{provider}-{clean}")
}

/// The string values of a claim (an array of strings, or one string).
pub fn claim_values(claims: &serde_json::Map<String, serde_json::Value>, name: &str) -> Vec<String> {
    match claims.get(name) {
        Some(serde_json::Value::Array(a)) => a.iter().filter_map(|v| v.as_str().map(String::from)).collect(),
        Some(serde_json::Value::String(s)) => vec![s.clone()],
        _ => Vec::new(),
    }
}

/// Where an Entra token says its groups are when there were too many to include (overage).
pub fn overage_endpoint(claims: &serde_json::Map<String, serde_json::Value>, claim: &str) -> Option<String> {
    let source = claims.get("_claim_names")?.get(claim)?.as_str()?;
    claims.get("_claim_sources")?.get(source)?.get("endpoint")?.as_str().map(String::from)
}

/// The teams a provider's groups map to: `team_map` entries first, else groups that start with
/// `team_prefix` name the team. Only teams that exist count; the rest are reported back.
pub fn teams_from_groups(p: &IdpConfig, groups: &[String], existing: &HashSet<String>) -> (Vec<String>, Vec<String>) {
    let mut teams = Vec::new();
    let mut unknown = Vec::new();
    for g in groups {
        let team = match p.team_map.get(g) {
            Some(t) => Some(t.clone()),
            None => p.team_prefix.as_deref().filter(|pre| g.starts_with(pre)).map(|_| g.clone()),
        };
        match team {
            Some(t) if existing.contains(&t) && !teams.contains(&t) => teams.push(t),
            Some(t) if !existing.contains(&t) => unknown.push(t),
            _ => {}
        }
    }
    (teams, unknown)
}

/// Seals refresh tokens with AES-256-GCM so a copy of the database does not hold usable tokens.
pub struct Sealer(Aes256Gcm);

impl Sealer {
    /// From a configured secret (any length: it is hashed to the key), or a random key.
    pub fn new(secret: Option<&str>) -> Self {
        let key: [u8; 32] = match secret {
            Some(s) => Sha256::digest(s.as_bytes()).into(),
            None => {
                let mut k = [0u8; 32];
                if getrandom::fill(&mut k).is_err() {
                    fastrand::fill(&mut k);
                }
                k
            }
        };
        Sealer(Aes256Gcm::new(&key.into()))
    }

    pub fn seal(&self, plain: &str) -> Option<Vec<u8>> {
        let mut nonce = [0u8; 12];
        getrandom::fill(&mut nonce).ok()?;
        let mut out = nonce.to_vec();
        out.extend(self.0.encrypt(Nonce::from_slice(&nonce), plain.as_bytes()).ok()?);
        Some(out)
    }

    pub fn open(&self, sealed: &[u8]) -> Option<String> {
        if sealed.len() < 12 {
            return None;
        }
        let (nonce, ct) = sealed.split_at(12);
        String::from_utf8(self.0.decrypt(Nonce::from_slice(nonce), ct).ok()?).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idp(prefix: Option<&str>, map: &[(&str, &str)]) -> IdpConfig {
        let mut text =
            String::from("name = \"okta\"\nkind = \"okta\"\nissuer = \"https://x.example\"\nclient_id = \"c\"\n");
        if let Some(p) = prefix {
            text.push_str(&format!("team_prefix = \"{p}\"\n"));
        }
        let mut c: IdpConfig = toml::from_str(&text).unwrap();
        c.team_map = map.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        c
    }

    #[test]
    fn groups_map_to_existing_teams_by_map_then_prefix() {
        let existing: HashSet<String> = ["team-alpha", "team-ml"].iter().map(|s| s.to_string()).collect();
        let groups: Vec<String> =
            ["gw-admins", "team-alpha", "team-beta", "5f1c-guid"].iter().map(|s| s.to_string()).collect();
        let (teams, unknown) = teams_from_groups(&idp(Some("team-"), &[("5f1c-guid", "team-ml")]), &groups, &existing);
        assert_eq!(teams, vec!["team-alpha", "team-ml"]);
        assert_eq!(unknown, vec!["team-beta"]);
        let (none, _) = teams_from_groups(&idp(None, &[]), &groups, &existing);
        assert!(none.is_empty());
    }

    #[test]
    fn sealed_tokens_open_only_with_the_same_key() {
        let a = Sealer::new(Some("k1"));
        let sealed = a.seal("refresh-token-value").unwrap();
        assert_eq!(a.open(&sealed).as_deref(), Some("refresh-token-value"));
        assert!(!String::from_utf8_lossy(&sealed).contains("refresh-token-value"));
        assert_eq!(Sealer::new(Some("k2")).open(&sealed), None);
    }

    #[test]
    fn pkce_challenge_is_the_s256_of_the_verifier() {
        let (v, c) = pkce();
        assert!(v.len() >= 43);
        assert_eq!(c, URL_SAFE_NO_PAD.encode(Sha256::digest(v.as_bytes())));
    }

    #[test]
    fn entra_users_are_named_by_tenant_and_object_id() {
        assert_eq!(subject(IdpKind::Entra, "s", Some("t"), Some("o")), "t/o");
        assert_eq!(subject(IdpKind::Okta, "s", Some("t"), Some("o")), "s");
        assert_eq!(user_id_for("entra", "t/o"), "entra-t-o");
    }
}
