//! The OpenAI wire format: a borrowed peek of what routing needs, and the few body rewrites the
//! gateway must make before forwarding (model prefix, `fallbacks`, usage in streams).

use std::borrow::Cow;

use bytes::Bytes;
use serde::Deserialize;

use crate::error::GatewayError;

/// What the request path needs from a chat or embeddings body. Everything else stays unparsed.
#[derive(Debug)]
pub struct Peek<'a> {
    pub model: Cow<'a, str>,
    pub stream: bool,
    /// The client asked for a usage chunk at the end of its stream.
    pub include_usage: bool,
    pub max_tokens: Option<u64>,
    pub fallbacks: Vec<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct RawPeek<'a> {
    #[serde(borrow)]
    model: Option<Text<'a>>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
    #[serde(default, borrow)]
    fallbacks: Option<Vec<Text<'a>>>,
}

/// A JSON string borrowed from the body unless it has escapes. (`Cow<str>`'s own `Deserialize`
/// always copies, and serde's `borrow` attribute does not reach through `Option`.)
struct Text<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(s.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

/// Reads `model`, `stream`, `max_tokens` and `fallbacks` without building the whole document.
pub fn peek(body: &[u8]) -> Result<Peek<'_>, GatewayError> {
    let raw: RawPeek<'_> = serde_json::from_slice(body)
        .map_err(|e| GatewayError::InvalidRequest(format!("request body is not valid JSON: {e}")))?;
    let model = match raw.model {
        Some(Text(m)) if !m.is_empty() => m,
        _ => return Err(GatewayError::InvalidRequest("missing `model`".into())),
    };
    Ok(Peek {
        model,
        stream: raw.stream.unwrap_or(false),
        include_usage: raw.stream_options.is_some_and(|o| o.include_usage),
        max_tokens: raw.max_completion_tokens.or(raw.max_tokens),
        fallbacks: raw.fallbacks.map(|f| f.into_iter().map(|t| t.0).collect()).unwrap_or_default(),
    })
}

/// The body to send an OpenAI-kind provider. Untouched bytes when nothing needs changing (the
/// common case); otherwise one parse and one serialisation.
pub fn prepare(original: &Bytes, peek: &Peek<'_>, upstream_model: &str) -> Result<Bytes, GatewayError> {
    let ask_usage = peek.stream && !peek.include_usage;
    if upstream_model == peek.model && peek.fallbacks.is_empty() && !ask_usage {
        return Ok(original.clone());
    }
    let mut doc: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(original)
        .map_err(|e| GatewayError::InvalidRequest(format!("request body must be a JSON object: {e}")))?;
    doc.insert("model".into(), upstream_model.into());
    doc.remove("fallbacks");
    if ask_usage {
        // The gateway needs usage to account for the stream; the extra chunk is removed before the client sees it.
        doc.insert("stream_options".into(), serde_json::json!({ "include_usage": true }));
    }
    serde_json::to_vec(&doc).map(Bytes::from).map_err(|e| GatewayError::Internal(e.to_string()))
}

/// What one streamed chunk says about usage.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ChunkInfo {
    pub usage: Option<super::Usage>,
    /// The chunk exists only to carry usage (`"choices": []`).
    pub usage_only: bool,
}

#[derive(Deserialize)]
struct RawUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
}

/// Inspects a chunk's `data` payload (or a whole response body). Only the `usage` object is
/// parsed, found from the end: the rest of the document (the completion) is never walked.
pub fn inspect_chunk(data: &[u8]) -> ChunkInfo {
    match usage_of(data) {
        Some(usage) => ChunkInfo { usage: Some(usage), usage_only: choices_empty(data) },
        None => ChunkInfo::default(),
    }
}

/// The `usage` object, found from the end.
fn usage_of(data: &[u8]) -> Option<super::Usage> {
    let at = rfind(data, b"\"usage\"")?;
    let rest = data[at + 7..].trim_ascii_start().strip_prefix(b":")?;
    if let Some(usage) = compact_usage(rest) {
        return Some(usage);
    }
    let mut values = serde_json::Deserializer::from_slice(rest).into_iter::<Option<RawUsage>>();
    match values.next() {
        Some(Ok(Some(u))) => {
            Some(super::Usage { prompt_tokens: u.prompt_tokens, completion_tokens: u.completion_tokens })
        }
        _ => None,
    }
}

/// The usage object in the exact shape OpenAI-compatible servers write it, `{"prompt_tokens":N,
/// "completion_tokens":M` then `,` or `}`, read without a JSON parser (that parse was 1.4% of a
/// core). Anything else (spaces, another key order) is `None`, and the caller parses it.
fn compact_usage(rest: &[u8]) -> Option<super::Usage> {
    let rest = rest.strip_prefix(br#"{"prompt_tokens":"#)?;
    let (prompt_tokens, rest) = leading_u64(rest)?;
    let rest = rest.strip_prefix(br#","completion_tokens":"#)?;
    let (completion_tokens, rest) = leading_u64(rest)?;
    matches!(rest.first(), Some(b',' | b'}')).then_some(super::Usage { prompt_tokens, completion_tokens })
}

/// A JSON non-negative integer at the front of `s` (no sign, no leading zero, no fraction), and
/// what follows it.
fn leading_u64(s: &[u8]) -> Option<(u64, &[u8])> {
    let digits = s.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || (digits > 1 && s[0] == b'0') || matches!(s.get(digits), Some(b'.' | b'e' | b'E')) {
        return None;
    }
    let mut n: u64 = 0;
    for &d in &s[..digits] {
        n = n.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    Some((n, &s[digits..]))
}

/// `"choices"` absent or `[]`.
fn choices_empty(data: &[u8]) -> bool {
    let Some(at) = find(data, b"\"choices\"") else { return true };
    let rest = data[at + 9..].trim_ascii_start();
    let Some(rest) = rest.strip_prefix(b":") else { return false };
    let Some(rest) = rest.trim_ascii_start().strip_prefix(b"[") else { return false };
    rest.trim_ascii_start().starts_with(b"]")
}

/// Usage of a whole (non-streamed) response body.
pub fn body_usage(body: &[u8]) -> Option<super::Usage> {
    usage_of(body)
}

// The needles are short and found near where the search starts: a scan for their first byte
// beats building a memmem searcher for every call.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    let (&first, _) = needle.split_first()?;
    let mut from = 0;
    while let Some(i) = memchr::memchr(first, &hay[from..]) {
        if hay[from + i..].starts_with(needle) {
            return Some(from + i);
        }
        from += i + 1;
    }
    None
}

fn rfind(hay: &[u8], needle: &[u8]) -> Option<usize> {
    let (&first, _) = needle.split_first()?;
    let mut end = hay.len();
    while let Some(i) = memchr::memrchr(first, &hay[..end]) {
        if hay[i..].starts_with(needle) {
            return Some(i);
        }
        end = i;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peek_reads_routing_fields_and_ignores_the_rest() {
        let body = br#"{"messages":[{"role":"user","content":"hi"}],"model":"gpt-4o","stream":true,"max_tokens":7,"fallbacks":["anthropic/claude"]}"#;
        let p = peek(body).unwrap();
        assert_eq!(p.model, "gpt-4o");
        assert!(p.stream && !p.include_usage);
        assert_eq!(p.max_tokens, Some(7));
        assert_eq!(p.fallbacks, vec!["anthropic/claude"]);
    }

    #[test]
    fn peek_borrows_plain_strings_and_unescapes_the_rest() {
        let p = peek(br#"{"model":"gpt-4o","fallbacks":["a\u002fb","c"]}"#).unwrap();
        assert!(matches!(p.model, Cow::Borrowed("gpt-4o")));
        assert!(matches!(&p.fallbacks[0], Cow::Owned(s) if s == "a/b"));
        assert!(matches!(p.fallbacks[1], Cow::Borrowed("c")));
        assert!(matches!(peek(br#"{"model":7}"#), Err(GatewayError::InvalidRequest(_))));
        assert!(matches!(peek(br#"{"model":null}"#), Err(GatewayError::InvalidRequest(m)) if m.contains("model")));
    }

    #[test]
    fn peek_refuses_malformed_json_and_missing_model() {
        assert!(matches!(peek(b"{not json"), Err(GatewayError::InvalidRequest(_))));
        assert!(matches!(peek(br#"{"messages":[]}"#), Err(GatewayError::InvalidRequest(m)) if m.contains("model")));
        assert!(matches!(peek(br#"[1,2]"#), Err(GatewayError::InvalidRequest(_))));
    }

    #[test]
    fn prepare_forwards_untouched_bytes_when_nothing_changes() {
        let body = Bytes::from_static(br#"{"model":"gpt-4o","messages":[]}"#);
        let p = peek(&body).unwrap();
        let out = prepare(&body, &p, "gpt-4o").unwrap();
        assert_eq!(out.as_ptr(), body.as_ptr());
    }

    #[test]
    fn prepare_strips_prefix_and_fallbacks_and_asks_for_stream_usage() {
        let body = Bytes::from_static(br#"{"model":"openai/gpt-4o","stream":true,"fallbacks":["x"],"messages":[]}"#);
        let p = peek(&body).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&prepare(&body, &p, "gpt-4o").unwrap()).unwrap();
        assert_eq!(v["model"], "gpt-4o");
        assert!(v.get("fallbacks").is_none());
        assert_eq!(v["stream_options"]["include_usage"], true);
    }

    #[test]
    fn usage_only_chunks_are_recognised() {
        let info = inspect_chunk(
            br#"{"id":"x","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}"#,
        );
        assert_eq!(info.usage, Some(super::super::Usage { prompt_tokens: 3, completion_tokens: 4 }));
        assert!(info.usage_only);
        let info = inspect_chunk(br#"{"choices":[{"delta":{"content":"the word \"usage\""}}],"usage":null}"#);
        assert_eq!(info, ChunkInfo::default());
        let info = inspect_chunk(
            br#"{"choices":[{"delta":{"content":"x"}}],"usage":{"prompt_tokens":1,"completion_tokens":2}}"#,
        );
        assert!(info.usage.is_some() && !info.usage_only);
        let info = inspect_chunk(br#"{"choices" : [ ] , "usage" : {"prompt_tokens":1}}"#);
        assert!(info.usage_only);
        assert_eq!(info.usage.unwrap().completion_tokens, 0);
    }
    #[test]
    fn usage_in_the_compact_shape_and_in_any_other_reads_the_same() {
        let usage = |s: &str| body_usage(s.as_bytes()).map(|u| (u.prompt_tokens, u.completion_tokens));
        assert_eq!(usage(r#"{"usage":{"prompt_tokens":12,"completion_tokens":7,"total_tokens":19}}"#), Some((12, 7)));
        assert_eq!(usage(r#"{"usage":{"prompt_tokens":0,"completion_tokens":5}}"#), Some((0, 5)));
        // Not the compact shape: the JSON parser reads these.
        assert_eq!(usage(r#"{"usage": {"completion_tokens": 7, "prompt_tokens": 12}}"#), Some((12, 7)));
        assert_eq!(usage(r#"{"usage":{"prompt_tokens":12,"completion_tokens":7.0}}"#), None);
        assert_eq!(usage(r#"{"usage":{"prompt_tokens":012,"completion_tokens":7}}"#), None);
        assert_eq!(usage(r#"{"usage":{"prompt_tokens":1,"completion_tokens":99999999999999999999}}"#), None);
        assert_eq!(usage(r#"{"usage":{"prompt_tokens":1,"completion_tokens":2x}}"#), None);
        assert_eq!(
            usage(r#"{"usage":{"prompt_tokens":3,"completion_tokens":4,"prompt_tokens_details":{"cached_tokens":1}}}"#),
            Some((3, 4))
        );
        assert_eq!(leading_u64(b"18446744073709551615}"), Some((u64::MAX, &b"}"[..])));
        assert_eq!(leading_u64(b"18446744073709551616}"), None);
    }

    #[test]
    fn searches_find_the_first_and_the_last_match_past_near_misses() {
        let hay = br#""usag" "usage" "usage!" "usage""#;
        assert_eq!(find(hay, b"\"usage\""), Some(7));
        assert_eq!(rfind(hay, b"\"usage\""), Some(hay.len() - 7));
        assert_eq!(find(b"\"usag", b"\"usage\""), None);
        assert_eq!(rfind(b"", b"\"usage\""), None);
        assert_eq!(
            body_usage(br#"{"usage":{"prompt_tokens":2,"completion_tokens":9}}"#).map(|u| u.completion_tokens),
            Some(9)
        );
    }
}

/// Passes an OpenAI event stream through event by event, reading usage on the way and removing
/// the usage-only chunk when the gateway (not the client) asked for it.
pub struct StreamFilter {
    pending: bytes::BytesMut,
    client_wants_usage: bool,
    usage: Option<super::Usage>,
    saw_done: bool,
}

/// Longest event kept while waiting for its end; a provider that never ends one is cut off.
const MAX_EVENT: usize = 4 * 1024 * 1024;

impl StreamFilter {
    pub fn new(client_wants_usage: bool) -> Self {
        Self { pending: bytes::BytesMut::new(), client_wants_usage, usage: None, saw_done: false }
    }

    pub fn usage(&self) -> Option<super::Usage> {
        self.usage
    }

    /// Appends every complete event in `bytes` (after what was pending) to `out`, as it came.
    pub fn feed(&mut self, bytes: &[u8], out: &mut bytes::BytesMut) {
        self.pending.extend_from_slice(bytes);
        while let Some(end) = event_end(&self.pending) {
            let event = self.pending.split_to(end);
            self.pass(&event, out);
        }
        if self.pending.len() > MAX_EVENT {
            self.pending.clear();
        }
    }

    /// The provider closed the stream cleanly: flush what is left and make sure `[DONE]` ends it.
    pub fn finish(&mut self, out: &mut bytes::BytesMut) {
        if !self.pending.is_empty() {
            let rest = self.pending.split();
            self.pass(&rest, out);
            if !out.ends_with(b"\n\n") {
                out.extend_from_slice(b"\n\n");
            }
        }
        if !self.saw_done {
            self.saw_done = true;
            out.extend_from_slice(b"data: [DONE]\n\n");
        }
    }

    fn pass(&mut self, event: &[u8], out: &mut bytes::BytesMut) {
        for line in event.split(|b| *b == b'\n') {
            let Some(data) = line.strip_prefix(b"data:") else { continue };
            let data = data.trim_ascii();
            if data == b"[DONE]" {
                self.saw_done = true;
                continue;
            }
            let info = inspect_chunk(data);
            if let Some(u) = info.usage {
                self.usage = Some(u);
                if info.usage_only && !self.client_wants_usage {
                    return;
                }
            }
        }
        out.extend_from_slice(event);
    }
}

/// End (exclusive, including the blank line) of the first complete event.
fn event_end(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i + 1 < buf.len() {
        if buf[i] == b'\n' {
            if buf[i + 1] == b'\n' {
                return Some(i + 2);
            }
            if buf[i + 1] == b'\r' && buf.get(i + 2) == Some(&b'\n') {
                return Some(i + 3);
            }
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod stream_tests {
    use super::*;

    const STREAM: &str = "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n\
data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n\
data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":2}}\n\n\
data: [DONE]\n\n";

    fn run(filter: &mut StreamFilter, step: usize) -> String {
        let mut out = bytes::BytesMut::new();
        for piece in STREAM.as_bytes().chunks(step) {
            filter.feed(piece, &mut out);
        }
        filter.finish(&mut out);
        String::from_utf8(out.to_vec()).unwrap()
    }

    #[test]
    fn usage_chunk_is_captured_and_hidden_when_the_client_did_not_ask() {
        let mut f = StreamFilter::new(false);
        let out = run(&mut f, 7);
        assert_eq!(f.usage(), Some(super::super::Usage { prompt_tokens: 5, completion_tokens: 2 }));
        assert!(!out.contains("usage"), "{out}");
        assert!(out.ends_with("data: [DONE]\n\n"));
        assert_eq!(out.matches("[DONE]").count(), 1);
    }

    #[test]
    fn usage_chunk_is_kept_when_the_client_asked() {
        let mut f = StreamFilter::new(true);
        assert_eq!(run(&mut f, 1), STREAM);
    }

    #[test]
    fn a_stream_without_done_gets_one() {
        let mut f = StreamFilter::new(true);
        let mut out = bytes::BytesMut::new();
        f.feed(b"data: {\"choices\":[]}\n\n", &mut out);
        f.finish(&mut out);
        assert!(out.ends_with(b"data: [DONE]\n\n"));
    }
}
