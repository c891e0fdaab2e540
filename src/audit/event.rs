//! The audit record as persisted: one taxonomy for requests, admin changes and security events,
//! and its canonical bytes for the hash chain. Carries no prompt or completion text.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{Outcome, RequestRecord};

/// Field order is the canonical order hashed into the chain: never reorder, only append.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditEvent {
    pub id: String,
    pub timestamp_ms: i64,
    /// access | usage | data | security
    pub category: String,
    pub r#type: String,
    /// success | failure | denied
    pub outcome: String,
    /// virtual_key | admin_token | user | system | anonymous
    pub actor_type: String,
    pub actor_id: Option<String>,
    pub client_ip: Option<String>,
    pub target_type: Option<String>,
    pub target_id: Option<String>,
    pub customer_id: Option<String>,
    pub team_id: Option<String>,
    pub user_id: Option<String>,
    pub virtual_key_id: Option<String>,
    pub request_id: Option<String>,
    /// JSON text, hashed and stored exactly as written (never re-serialized, so a row read back
    /// hashes the same whatever its key order).
    pub details: Box<RawValue>,
}

/// `value` as details JSON (a `Value` always serializes; `null` is the unreachable fallback).
pub fn details(value: &impl Serialize) -> Box<RawValue> {
    serde_json::value::to_raw_value(value).unwrap_or_default()
}

/// A request's details, serialized straight from the record (no intermediate JSON tree): as
/// JSON for the API, in the binary layout for the store.
#[derive(Serialize, Deserialize)]
struct RequestDetails<'a> {
    route: &'a str,
    status: u16,
    #[serde(borrow)]
    error_type: Option<&'a str>,
    ended: &'a str,
    #[serde(borrow)]
    provider: Option<&'a str>,
    #[serde(borrow)]
    model: Option<&'a str>,
    stream: bool,
    attempts: u32,
    prompt_tokens: u64,
    completion_tokens: u64,
    cost_micros: Option<u64>,
    latency_us: u64,
    ttfb_us: Option<u64>,
    core: u16,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// A UUIDv7 from the clock and a thread-local generator: no syscall per record.
fn new_id() -> String {
    new_uuid().to_string()
}

fn new_uuid() -> uuid::Uuid {
    let mut random = [0u8; 10];
    fastrand::fill(&mut random);
    uuid::Builder::from_unix_timestamp_millis(now_ms() as u64, &random).into_uuid()
}

impl AuditEvent {
    /// The bytes the chain hashes: the record's JSON with its fields in declaration order and
    /// `details` verbatim, so a row read back from the store hashes the same.
    pub fn canonical(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// An event raised by the control plane itself (admin changes, reloads, alerts).
    pub fn system(category: &str, r#type: &str, outcome: &str, details: serde_json::Value) -> Self {
        let details = self::details(&details);
        AuditEvent {
            id: new_id(),
            timestamp_ms: now_ms(),
            category: category.into(),
            r#type: r#type.into(),
            outcome: outcome.into(),
            actor_type: "system".into(),
            actor_id: None,
            client_ip: None,
            target_type: None,
            target_id: None,
            customer_id: None,
            team_id: None,
            user_id: None,
            virtual_key_id: None,
            request_id: None,
            details,
        }
    }

    /// A `data_modification` (or deletion) of a governed entity through the management API.
    pub fn data_change(action: &str, actor_type: &str, client_ip: &str, target_type: &str, target_id: &str) -> Self {
        let r#type = if action == "delete" { "data_deletion" } else { "data_modification" };
        AuditEvent {
            actor_type: actor_type.into(),
            client_ip: Some(client_ip.into()),
            target_type: Some(target_type.into()),
            target_id: Some(target_id.into()),
            ..AuditEvent::system("data", r#type, "success", serde_json::json!({ "action": action }))
        }
    }
}

/// How a request ended, in the trail's taxonomy: (category, type, outcome).
fn classify(r: &RequestRecord) -> (&'static str, &'static str, &'static str) {
    let (category, r#type, denied) = match r.error_type {
        Some("rate_limited" | "request_limited" | "token_limited") => ("usage", "rate_limit_violation", true),
        Some("budget_exceeded") => ("usage", "budget_exceeded", true),
        Some("model_blocked" | "provider_blocked") => ("usage", "model_denied", true),
        Some("virtual_key_not_found" | "virtual_key_blocked" | "authentication_required" | "invalid_token") => {
            ("security", "invalid_credential", true)
        }
        _ => ("usage", "api_request", false),
    };
    let outcome = if denied {
        "denied"
    } else if r.status < 400 && r.outcome == Outcome::Completed && r.error_type.is_none() {
        "success"
    } else {
        "failure"
    };
    (category, r#type, outcome)
}

/// The values of a record the store's index knows it by.
#[derive(Debug, Clone, Copy)]
pub struct IndexValues<'a> {
    pub user: Option<&'a str>,
    pub team: Option<&'a str>,
    pub customer: Option<&'a str>,
    pub virtual_key: Option<&'a str>,
    pub category: &'a str,
    pub r#type: &'a str,
    pub outcome: &'a str,
}

/// What the store needs of a record to chain, keep and index it.
pub trait Auditable {
    fn timestamp_ms(&self) -> i64;
    /// Appends the record's canonical bytes: what is hashed, stored, and parsed back as an
    /// [`AuditEvent`].
    fn write_canonical(&self, out: &mut Vec<u8>);
    fn index_values(&self) -> IndexValues<'_>;
}

impl Auditable for AuditEvent {
    fn timestamp_ms(&self) -> i64 {
        self.timestamp_ms
    }

    fn write_canonical(&self, out: &mut Vec<u8>) {
        let e = self;
        write_binary(
            out,
            &StoredRecord {
                id: StoredId::of(&e.id),
                timestamp_ms: e.timestamp_ms,
                category: &e.category,
                r#type: &e.r#type,
                outcome: &e.outcome,
                actor_type: &e.actor_type,
                actor_id: e.actor_id.as_deref(),
                client_ip: e.client_ip.as_deref(),
                target_type: e.target_type.as_deref(),
                target_id: e.target_id.as_deref(),
                customer_id: e.customer_id.as_deref(),
                team_id: e.team_id.as_deref(),
                user_id: e.user_id.as_deref(),
                virtual_key_id: e.virtual_key_id.as_deref(),
                request_id: e.request_id.as_deref().map(StoredId::of),
                details: StoredDetails::Json(e.details.get()),
            },
        );
    }

    fn index_values(&self) -> IndexValues<'_> {
        IndexValues {
            user: self.user_id.as_deref(),
            team: self.team_id.as_deref(),
            customer: self.customer_id.as_deref(),
            virtual_key: self.virtual_key_id.as_deref(),
            category: &self.category,
            r#type: &self.r#type,
            outcome: &self.outcome,
        }
    }
}

/// One data-plane request on its way to the store: the ring's record, the event's id and its
/// class. It is written straight from the record into the store's buffer (no owned
/// [`AuditEvent`] in between: this runs once per request) and parses back as an `AuditEvent`.
#[derive(Debug)]
pub struct RequestEvent {
    id: uuid::Uuid,
    class: (&'static str, &'static str, &'static str),
    record: RequestRecord,
}

impl RequestEvent {
    pub fn new(record: RequestRecord) -> Self {
        RequestEvent { id: new_uuid(), class: classify(&record), record }
    }

    fn details(&self) -> RequestDetails<'_> {
        let r = &self.record;
        let usage = r.usage.unwrap_or_default();
        RequestDetails {
            route: r.route.as_str(),
            status: r.status,
            error_type: r.error_type,
            ended: match r.outcome {
                Outcome::Completed => "completed",
                Outcome::ClientClosed => "client_closed",
                Outcome::UpstreamBroken => "upstream_broken",
            },
            provider: r.provider.as_deref(),
            model: r.model.as_deref(),
            stream: r.stream,
            attempts: r.attempts.into(),
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
            cost_micros: r.cost_micros,
            latency_us: r.latency_us,
            ttfb_us: r.ttfb_us,
            core: r.core,
        }
    }
}

impl Auditable for RequestEvent {
    fn timestamp_ms(&self) -> i64 {
        self.record.at_unix_ms as i64
    }

    fn write_canonical(&self, out: &mut Vec<u8>) {
        let r = &self.record;
        let (category, r#type, outcome) = self.class;
        // The address's text on the stack: this runs once per request.
        let mut ip = [0u8; 48];
        let ip_len = ip_text(self.record.client_ip, &mut ip);
        write_binary(
            out,
            &StoredRecord {
                id: StoredId::Uuid(*self.id.as_bytes()),
                timestamp_ms: r.at_unix_ms as i64,
                category,
                r#type,
                outcome,
                actor_type: if r.virtual_key.is_some() { "virtual_key" } else { "anonymous" },
                actor_id: r.virtual_key.as_deref(),
                client_ip: std::str::from_utf8(&ip[..ip_len]).ok(),
                target_type: r.model.as_ref().map(|_| "model"),
                target_id: r.model.as_deref(),
                customer_id: r.customer.as_deref(),
                team_id: r.team.as_deref(),
                user_id: r.user.as_deref(),
                virtual_key_id: r.virtual_key.as_deref(),
                request_id: Some(StoredId::Uuid(*r.request_id.as_bytes())),
                details: StoredDetails::Request(self.details()),
            },
        );
    }

    fn index_values(&self) -> IndexValues<'_> {
        IndexValues {
            user: self.record.user.as_deref(),
            team: self.record.team.as_deref(),
            customer: self.record.customer.as_deref(),
            virtual_key: self.record.virtual_key.as_deref(),
            category: self.class.0,
            r#type: self.class.1,
            outcome: self.class.2,
        }
    }
}

/// Writes `ip` as text into `out` and returns its length. IPv4 digits by hand: core::fmt was 8% of
/// the audit writer's time, for the one address every request record carries.
fn ip_text(ip: std::net::IpAddr, out: &mut [u8; 48]) -> usize {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let mut n = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out[n] = b'.';
                    n += 1;
                }
                if octet >= 100 {
                    out[n] = b'0' + octet / 100;
                    n += 1;
                }
                if octet >= 10 {
                    out[n] = b'0' + octet / 10 % 10;
                    n += 1;
                }
                out[n] = b'0' + octet % 10;
                n += 1;
            }
            n
        }
        std::net::IpAddr::V6(v6) => {
            use std::io::Write;
            let mut cursor = std::io::Cursor::new(&mut out[..]);
            let _ = write!(cursor, "{v6}");
            cursor.position() as usize
        }
    }
}

/// First byte of a record in the binary layout. A record that starts with `{` is the JSON of
/// the first layout (a migrated store keeps the bytes its records were hashed over).
const BINARY_V1: u8 = 1;

/// A record's canonical bytes: `BINARY_V1`, then this struct in postcard's wire format (fields
/// in this order, strings length-prefixed, integers as varints: one encoding per value). About
/// 40% of the JSON's size and five times quicker to write, which is most of what the trail
/// costs a request. The API shows records as JSON, rendered from this when read.
#[derive(Serialize, Deserialize)]
struct StoredRecord<'a> {
    #[serde(borrow)]
    id: StoredId<'a>,
    timestamp_ms: i64,
    category: &'a str,
    r#type: &'a str,
    outcome: &'a str,
    actor_type: &'a str,
    #[serde(borrow)]
    actor_id: Option<&'a str>,
    #[serde(borrow)]
    client_ip: Option<&'a str>,
    #[serde(borrow)]
    target_type: Option<&'a str>,
    #[serde(borrow)]
    target_id: Option<&'a str>,
    #[serde(borrow)]
    customer_id: Option<&'a str>,
    #[serde(borrow)]
    team_id: Option<&'a str>,
    #[serde(borrow)]
    user_id: Option<&'a str>,
    #[serde(borrow)]
    virtual_key_id: Option<&'a str>,
    #[serde(borrow)]
    request_id: Option<StoredId<'a>>,
    #[serde(borrow)]
    details: StoredDetails<'a>,
}

/// An id: 16 bytes when it is a UUID in its usual text form (it reads back as that text), else
/// the text. Ids are random, so their bytes are what compression cannot shrink.
#[derive(Serialize, Deserialize)]
enum StoredId<'a> {
    Uuid([u8; 16]),
    Text(&'a str),
}

impl<'a> StoredId<'a> {
    fn of(text: &'a str) -> Self {
        match uuid::Uuid::try_parse(text) {
            // Only when it reads back as exactly this text.
            Ok(u) if u.hyphenated().encode_lower(&mut uuid::Uuid::encode_buffer()) == text => {
                StoredId::Uuid(*u.as_bytes())
            }
            _ => StoredId::Text(text),
        }
    }

    fn text(&self) -> String {
        match self {
            StoredId::Uuid(b) => uuid::Uuid::from_bytes(*b).hyphenated().to_string(),
            StoredId::Text(t) => t.to_string(),
        }
    }
}

#[derive(Serialize, Deserialize)]
enum StoredDetails<'a> {
    /// Any event's details, as JSON text.
    Json(&'a str),
    /// A request's details, in fields.
    #[serde(borrow)]
    Request(RequestDetails<'a>),
}

fn write_binary(out: &mut Vec<u8>, record: &StoredRecord<'_>) {
    out.push(BINARY_V1);
    // Serializing strings and numbers into a Vec cannot fail.
    if let Ok(buf) = postcard::to_extend(record, std::mem::take(out)) {
        *out = buf;
    }
}

/// The event whose canonical bytes these are (either layout).
pub fn parse_canonical(bytes: &[u8]) -> Result<AuditEvent, String> {
    let Some((&BINARY_V1, rest)) = bytes.split_first() else {
        return serde_json::from_slice(bytes).map_err(|e| e.to_string());
    };
    let r: StoredRecord<'_> = postcard::from_bytes(rest).map_err(|e| e.to_string())?;
    let own = |s: Option<&str>| s.map(str::to_string);
    Ok(AuditEvent {
        id: r.id.text(),
        timestamp_ms: r.timestamp_ms,
        category: r.category.into(),
        r#type: r.r#type.into(),
        outcome: r.outcome.into(),
        actor_type: r.actor_type.into(),
        actor_id: own(r.actor_id),
        client_ip: own(r.client_ip),
        target_type: own(r.target_type),
        target_id: own(r.target_id),
        customer_id: own(r.customer_id),
        team_id: own(r.team_id),
        user_id: own(r.user_id),
        virtual_key_id: own(r.virtual_key_id),
        request_id: r.request_id.map(|i| i.text()),
        details: match r.details {
            StoredDetails::Json(text) => RawValue::from_string(text.to_string()).map_err(|e| e.to_string())?,
            StoredDetails::Request(d) => details(&d),
        },
    })
}

/// The chain link of `event` after `prev` as the first layout computed it (over its JSON):
/// what tests use to build stores of that layout.
#[cfg(test)]
pub(crate) fn link(prev: &[u8], event: &AuditEvent, hmac_key: Option<&[u8]>) -> Vec<u8> {
    link_bytes(prev, &event.canonical(), hmac_key).to_vec()
}

/// The chain link of a record after `prev`, over its canonical bytes as stored (what the store
/// writes and verify reads): SHA-256, or HMAC-SHA256 when the chain is signed.
pub fn link_bytes(prev: &[u8], canonical: &[u8], hmac_key: Option<&[u8]>) -> [u8; 32] {
    use sha2::Digest;
    match hmac_key {
        Some(key) => {
            use hmac::Mac;
            match hmac::Hmac::<sha2::Sha256>::new_from_slice(key) {
                Ok(mut mac) => {
                    mac.update(prev);
                    mac.update(canonical);
                    mac.finalize().into_bytes().into()
                }
                // HMAC takes keys of any length; unreachable, and a zero hash never verifies.
                Err(_) => [0; 32],
            }
        }
        None => {
            let mut h = sha2::Sha256::new();
            h.update(prev);
            h.update(canonical);
            h.finalize().into()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_written_as_their_display_text() {
        let addrs = [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.100.255",
            "9.99.199.250",
            "::1",
            "2001:db8::8a2e:370:7334",
            "::ffff:1.2.3.4",
        ];
        for a in addrs {
            let ip: std::net::IpAddr = a.parse().unwrap();
            let mut out = [0u8; 48];
            let n = ip_text(ip, &mut out);
            assert_eq!(std::str::from_utf8(&out[..n]).unwrap(), ip.to_string(), "{a}");
        }
    }

    #[test]
    fn canonical_bytes_survive_a_round_trip_in_either_layout() {
        let e = AuditEvent::data_change("update", "admin_token", "127.0.0.1", "team", "t1");
        let back: AuditEvent = parse_canonical(&e.canonical()).unwrap();
        assert_eq!(back.canonical(), e.canonical());
        let mut bytes = Vec::new();
        e.write_canonical(&mut bytes);
        let back = parse_canonical(&bytes).unwrap();
        assert_eq!(back.canonical(), e.canonical());
        let mut again = Vec::new();
        back.write_canonical(&mut again);
        assert_eq!(again, bytes);
        // Ids that are no UUID in its usual form come back exactly as they were.
        for id in ["not-a-uuid", "0193ABCD-0000-7000-8000-000000000000"] {
            let mut odd = e.clone();
            odd.id = id.into();
            let mut bytes = Vec::new();
            odd.write_canonical(&mut bytes);
            assert_eq!(parse_canonical(&bytes).unwrap().id, id);
        }
    }

    #[test]
    fn a_request_record_hashes_the_same_after_a_trip_through_the_store_shape() {
        let r = RequestRecord {
            request_id: uuid::Uuid::nil(),
            at_unix_ms: 1_800_000_000_000,
            core: 1,
            route: crate::metrics::RouteLabel::ChatCompletions,
            status: 200,
            error_type: None,
            outcome: Outcome::Completed,
            client_ip: std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            virtual_key: Some("vk-a".into()),
            user: Some("u".into()),
            team: None,
            customer: None,
            provider: Some("openai".into()),
            model: Some("gpt-4o-mini".into()),
            stream: true,
            attempts: 2,
            usage: None,
            cost_micros: Some(42),
            latency_us: 900,
            ttfb_us: Some(300),
        };
        let e = RequestEvent::new(r);
        let mut bytes = Vec::new();
        e.write_canonical(&mut bytes);
        // Parsed back as the store does, it is the same record, shown as JSON; and the binary
        // layout is well under half the JSON's size.
        let back = parse_canonical(&bytes).unwrap();
        let json: serde_json::Value = serde_json::from_slice(&back.canonical()).unwrap();
        assert_eq!(json["details"]["route"], "/v1/chat/completions");
        assert!(bytes.len() < back.canonical().len() / 2, "{} vs {}", bytes.len(), back.canonical().len());
        let details: serde_json::Value = serde_json::from_str(back.details.get()).unwrap();
        assert_eq!((details["status"].as_u64(), details["ttfb_us"].as_u64()), (Some(200), Some(300)));
        assert_eq!(
            (back.category.as_str(), back.r#type.as_str(), back.outcome.as_str(), back.actor_id.as_deref()),
            ("usage", "api_request", "success", Some("vk-a"))
        );
        assert_eq!(
            (back.client_ip.as_deref(), back.request_id.as_deref()),
            (Some("127.0.0.1"), Some(&*uuid::Uuid::nil().to_string()))
        );
        let v = e.index_values();
        assert_eq!((v.user, v.team, v.r#type), (Some("u"), None, "api_request"));
    }

    #[test]
    fn a_changed_field_or_key_breaks_the_link() {
        let e = AuditEvent::system("security", "config_reload", "success", serde_json::json!({ "version": 2 }));
        let h = link(&[0; 32], &e, None);
        let mut tampered = e.clone();
        tampered.outcome = "failure".into();
        assert_ne!(link(&[0; 32], &tampered, None), h);
        assert_ne!(link(&[0; 32], &e, Some(b"k")), h);
        assert_eq!(link(&[0; 32], &e, None), h);
    }
}
