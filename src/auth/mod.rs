//! Credentials → principal: finds the caller's credential in the headers and resolves it against
//! the snapshot (virtual keys by SHA-256). Plain functions: no sockets, no runtime, no store.

pub mod jwt;

use http::HeaderMap;
use sha2::{Digest, Sha256};

use crate::error::GatewayError;
use crate::snapshot::{Snapshot, VirtualKey};

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
const KEY_HEADERS: [&str; 3] = ["x-bf-vk", "x-api-key", "api-key"];

/// The credential a request carries, if any.
pub fn credential(headers: &HeaderMap) -> Option<&str> {
    if let Some(v) = headers.get(KEY_HEADERS[0]).and_then(|v| v.to_str().ok()) {
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
    KEY_HEADERS[1..].iter().find_map(|h| headers.get(*h).and_then(|v| v.to_str().ok())).and_then(non_empty)
}

fn non_empty(s: &str) -> Option<&str> {
    let s = s.trim();
    (!s.is_empty()).then_some(s)
}

/// Who is calling. `Anonymous` only when the snapshot does not require a credential.
#[derive(Debug, Clone, Copy)]
pub enum Principal<'s> {
    VirtualKey(&'s VirtualKey),
    Anonymous,
}

impl<'s> Principal<'s> {
    pub fn virtual_key(&self) -> Option<&'s VirtualKey> {
        match self {
            Principal::VirtualKey(k) => Some(k),
            Principal::Anonymous => None,
        }
    }
}

/// Resolves the request's credential. Runs first on every `/v1` request.
pub fn authenticate<'s>(snap: &'s Snapshot, headers: &HeaderMap) -> Result<Principal<'s>, GatewayError> {
    let Some(cred) = credential(headers) else {
        return if snap.server.require_virtual_key {
            Err(GatewayError::AuthenticationRequired)
        } else {
            Ok(Principal::Anonymous)
        };
    };
    let key = snap.virtual_key_by_hash(&hash_key(cred)).ok_or(GatewayError::VirtualKeyNotFound)?;
    if !key.active {
        return Err(GatewayError::VirtualKeyBlocked(key.id.to_string()));
    }
    Ok(Principal::VirtualKey(key))
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
