//! OpenAI wire format: `/v1/chat/completions` and `/v1/embeddings`.

use http::{Request, StatusCode};
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};

use crate::body::SseEvent;
use crate::server::{
    Api, Ctx, HandlerResult, api_key, before_inference, check_key, error, is_slow_stream, json_ok, now_secs, read_body,
    sse_data,
};
use crate::text::{
    Str, Text, apply_max_tokens, char_count, embedding_for, prefix_chars, split_even, tokens, tokens_for_chars,
};

#[derive(Deserialize)]
pub struct ChatRequest<'a> {
    #[serde(borrow)]
    pub model: Str<'a>,
    #[serde(borrow, default)]
    pub messages: Vec<ChatMessage<'a>>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub max_tokens: Option<u64>,
    #[serde(default)]
    pub max_completion_tokens: Option<u64>,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
}

#[derive(Deserialize)]
pub struct ChatMessage<'a> {
    #[serde(borrow)]
    pub role: Str<'a>,
    #[serde(borrow, default)]
    pub content: Text<'a>,
}

#[derive(Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: Option<bool>,
}

/// The deterministic answer to a chat request.
#[derive(Debug, PartialEq, Eq)]
pub struct ChatReply {
    pub content: String,
    pub finish_reason: &'static str,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

pub fn chat_reply(req: &ChatRequest<'_>) -> ChatReply {
    let prompt_chars: usize = req.messages.iter().map(|m| char_count(m.content.as_str())).sum();
    let last_user = req.messages.iter().rev().find(|m| m.role.as_str() == "user").map_or("", |m| m.content.as_str());
    let full = format!("mock reply to: {}", prefix_chars(last_user, 64));
    let limit = req.max_completion_tokens.or(req.max_tokens);
    let (content, truncated) = apply_max_tokens(&full, limit);
    let content = content.to_owned();
    ChatReply {
        completion_tokens: tokens(&content),
        content,
        finish_reason: if truncated { "length" } else { "stop" },
        prompt_tokens: tokens_for_chars(prompt_chars),
    }
}

#[derive(Serialize, Clone, Copy)]
struct Usage {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
}

impl From<&ChatReply> for Usage {
    fn from(r: &ChatReply) -> Self {
        Self {
            prompt_tokens: r.prompt_tokens,
            completion_tokens: r.completion_tokens,
            total_tokens: r.prompt_tokens + r.completion_tokens,
        }
    }
}

#[derive(Serialize)]
struct Completion<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: [Choice<'a>; 1],
    usage: Usage,
}

#[derive(Serialize)]
struct Choice<'a> {
    index: u32,
    message: Message<'a>,
    logprobs: Option<()>,
    finish_reason: &'static str,
}

#[derive(Serialize)]
struct Message<'a> {
    role: &'static str,
    content: &'a str,
}

#[derive(Serialize)]
struct Chunk<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: &'a [ChunkChoice<'a>],
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Usage>,
}

#[derive(Serialize)]
struct ChunkChoice<'a> {
    index: u32,
    delta: Delta<'a>,
    logprobs: Option<()>,
    finish_reason: Option<&'static str>,
}

#[derive(Serialize, Default)]
struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
}

pub async fn chat(ctx: &Ctx, req: Request<Incoming>) -> HandlerResult {
    if let Some(resp) = check_key(ctx, Api::OpenAi, api_key(req.headers(), Api::OpenAi)) {
        return Ok(resp);
    }
    let Ok(body) = read_body(req).await else {
        return Ok(error(Api::OpenAi, StatusCode::BAD_REQUEST, "could not read request body"));
    };
    let parsed: ChatRequest<'_> = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => {
            return Ok(error(Api::OpenAi, StatusCode::BAD_REQUEST, &format!("invalid request body: {e}")));
        }
    };
    let model = parsed.model.as_str();
    if let Some(resp) = before_inference(ctx, Api::OpenAi, model).await {
        return Ok(resp);
    }
    let reply = chat_reply(&parsed);
    let id = ctx.new_id("chatcmpl-");
    let created = now_secs();
    if parsed.stream != Some(true) {
        return json_ok(&Completion {
            id: &id,
            object: "chat.completion",
            created,
            model,
            choices: [Choice {
                index: 0,
                message: Message { role: "assistant", content: &reply.content },
                logprobs: None,
                finish_reason: reply.finish_reason,
            }],
            usage: Usage::from(&reply),
        });
    }
    let include_usage = parsed.stream_options.as_ref().and_then(|o| o.include_usage).unwrap_or(false);
    let events = chat_stream_events(&id, created, model, &reply, ctx.cfg().stream_chunks, include_usage)?;
    Ok(ctx.sse(events, is_slow_stream(model)))
}

fn chat_stream_events(
    id: &str,
    created: u64,
    model: &str,
    reply: &ChatReply,
    chunks: usize,
    include_usage: bool,
) -> serde_json::Result<Vec<SseEvent>> {
    let chunk = |delta: Delta<'_>, finish_reason: Option<&'static str>| {
        sse_data(&Chunk {
            id,
            object: "chat.completion.chunk",
            created,
            model,
            choices: &[ChunkChoice { index: 0, delta, logprobs: None, finish_reason }],
            usage: None,
        })
    };
    let pieces = split_even(&reply.content, chunks);
    let mut events = Vec::with_capacity(pieces.len() + 4);
    events.push(SseEvent::now(chunk(Delta { role: Some("assistant"), content: Some("") }, None)?));
    for piece in pieces {
        events.push(SseEvent::after_delay(chunk(Delta { role: None, content: Some(piece) }, None)?));
    }
    events.push(SseEvent::now(chunk(Delta::default(), Some(reply.finish_reason))?));
    if include_usage {
        events.push(SseEvent::now(sse_data(&Chunk {
            id,
            object: "chat.completion.chunk",
            created,
            model,
            choices: &[],
            usage: Some(Usage::from(reply)),
        })?));
    }
    events.push(SseEvent::now(&b"data: [DONE]\n\n"[..]));
    Ok(events)
}

#[derive(Deserialize)]
struct EmbeddingsRequest<'a> {
    #[serde(borrow)]
    model: Str<'a>,
    input: serde_json::Value,
    #[serde(borrow, default)]
    encoding_format: Option<Str<'a>>,
}

#[derive(Serialize)]
struct EmbeddingList<'a> {
    object: &'static str,
    data: Vec<EmbeddingItem>,
    model: &'a str,
    usage: EmbeddingUsage,
}

#[derive(Serialize)]
struct EmbeddingItem {
    object: &'static str,
    index: usize,
    embedding: EmbeddingValue,
}

#[derive(Serialize)]
#[serde(untagged)]
enum EmbeddingValue {
    Floats([f64; 8]),
    Base64(String),
}

#[derive(Serialize)]
struct EmbeddingUsage {
    prompt_tokens: u64,
    total_tokens: u64,
}

/// One embeddings input: its bytes (for the vector) and its token count.
fn embedding_inputs(input: &serde_json::Value) -> Option<Vec<(Vec<u8>, u64)>> {
    use serde_json::Value;
    fn tokens_of(arr: &[Value]) -> Option<(Vec<u8>, u64)> {
        let mut bytes = Vec::with_capacity(arr.len() * 8);
        for v in arr {
            bytes.extend_from_slice(&v.as_i64()?.to_le_bytes());
        }
        Some((bytes, arr.len() as u64))
    }
    match input {
        Value::String(s) => Some(vec![(s.as_bytes().to_vec(), tokens(s))]),
        Value::Array(arr) if arr.is_empty() => None,
        Value::Array(arr) if arr.iter().all(Value::is_number) => Some(vec![tokens_of(arr)?]),
        Value::Array(arr) => arr
            .iter()
            .map(|v| match v {
                Value::String(s) => Some((s.as_bytes().to_vec(), tokens(s))),
                Value::Array(a) => tokens_of(a),
                _ => None,
            })
            .collect(),
        _ => None,
    }
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk.first().copied().unwrap_or(0),
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

pub async fn embeddings(ctx: &Ctx, req: Request<Incoming>) -> HandlerResult {
    if let Some(resp) = check_key(ctx, Api::OpenAi, api_key(req.headers(), Api::OpenAi)) {
        return Ok(resp);
    }
    let Ok(body) = read_body(req).await else {
        return Ok(error(Api::OpenAi, StatusCode::BAD_REQUEST, "could not read request body"));
    };
    let parsed: EmbeddingsRequest<'_> = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => {
            return Ok(error(Api::OpenAi, StatusCode::BAD_REQUEST, &format!("invalid request body: {e}")));
        }
    };
    let Some(inputs) = embedding_inputs(&parsed.input) else {
        return Ok(error(
            Api::OpenAi,
            StatusCode::BAD_REQUEST,
            "'input' must be a string, an array of strings, or token arrays",
        ));
    };
    let model = parsed.model.as_str();
    if let Some(resp) = before_inference(ctx, Api::OpenAi, model).await {
        return Ok(resp);
    }
    let as_base64 = parsed.encoding_format.as_ref().is_some_and(|f| f.as_str() == "base64");
    let mut prompt_tokens = 0;
    let data = inputs
        .iter()
        .enumerate()
        .map(|(index, (bytes, toks))| {
            prompt_tokens += toks;
            let floats = embedding_for(bytes);
            let embedding = if as_base64 {
                let raw: Vec<u8> = floats.iter().flat_map(|f| (*f as f32).to_le_bytes()).collect();
                EmbeddingValue::Base64(base64(&raw))
            } else {
                EmbeddingValue::Floats(floats)
            };
            EmbeddingItem { object: "embedding", index, embedding }
        })
        .collect();
    json_ok(&EmbeddingList {
        object: "list",
        data,
        model,
        usage: EmbeddingUsage { prompt_tokens, total_tokens: prompt_tokens },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> ChatRequest<'_> {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn reply_is_deterministic() {
        let req = parse(
            r#"{"model":"gpt-4o-mini","messages":[
                {"role":"system","content":"Be brief."},
                {"role":"user","content":"Say hello in one short sentence."}]}"#,
        );
        let r = chat_reply(&req);
        assert_eq!(r.content, "mock reply to: Say hello in one short sentence.");
        assert_eq!(r.finish_reason, "stop");
        // 9 + 32 chars -> ceil(41 / 4)
        assert_eq!(r.prompt_tokens, 11);
        assert_eq!(r.completion_tokens, 12);
    }

    #[test]
    fn last_user_message_is_cut_to_64_chars_and_parts_count() {
        let long = "x".repeat(100);
        let json = format!(
            r#"{{"model":"m","messages":[
                {{"role":"user","content":"first"}},
                {{"role":"assistant","content":null}},
                {{"role":"user","content":[{{"type":"text","text":"{long}"}}]}}]}}"#
        );
        let r = chat_reply(&parse(&json));
        assert_eq!(r.content, format!("mock reply to: {}", "x".repeat(64)));
        assert_eq!(r.prompt_tokens, 27); // ceil(105 / 4)
    }

    #[test]
    fn max_tokens_truncates_with_length() {
        let req = parse(r#"{"model":"m","max_tokens":2,"messages":[{"role":"user","content":"hello"}]}"#);
        let r = chat_reply(&req);
        assert_eq!(r.content, "mock rep");
        assert_eq!(r.finish_reason, "length");
        assert_eq!(r.completion_tokens, 2);
        let req = parse(
            r#"{"model":"m","max_completion_tokens":1,"max_tokens":50,"messages":[{"role":"user","content":"hello"}]}"#,
        );
        assert_eq!(chat_reply(&req).content, "mock");
    }

    #[test]
    fn stream_deltas_concatenate_to_the_content() {
        let req = parse(r#"{"model":"m","messages":[{"role":"user","content":"héllo wörld"}]}"#);
        let reply = chat_reply(&req);
        let events = chat_stream_events("id", 1, "m", &reply, 5, true).unwrap();
        // role, 5 deltas, finish, usage, [DONE]
        assert_eq!(events.len(), 9);
        let mut text = String::new();
        let mut finish = None;
        let mut usage = None;
        for ev in &events {
            let s = std::str::from_utf8(&ev.bytes).unwrap();
            assert!(s.starts_with("data: ") && s.ends_with("\n\n"));
            let payload = &s[6..s.len() - 2];
            if payload == "[DONE]" {
                continue;
            }
            let v: serde_json::Value = serde_json::from_str(payload).unwrap();
            if let Some(c) = v["choices"][0]["delta"]["content"].as_str() {
                text.push_str(c);
            }
            if let Some(f) = v["choices"][0]["finish_reason"].as_str() {
                finish = Some(f.to_owned());
            }
            if !v["usage"].is_null() {
                assert_eq!(v["choices"].as_array().unwrap().len(), 0);
                usage = Some(v["usage"]["completion_tokens"].as_u64().unwrap());
            }
        }
        assert_eq!(text, reply.content);
        assert_eq!(finish.as_deref(), Some("stop"));
        assert_eq!(usage, Some(reply.completion_tokens));
        assert_eq!(&events.last().unwrap().bytes[..], b"data: [DONE]\n\n");
        let without = chat_stream_events("id", 1, "m", &reply, 5, false).unwrap();
        assert_eq!(without.len(), 8);
    }

    #[test]
    fn embedding_inputs_forms() {
        let v = serde_json::json!("abcde");
        assert_eq!(embedding_inputs(&v).unwrap()[0].1, 2);
        let v = serde_json::json!(["a", "bb"]);
        assert_eq!(embedding_inputs(&v).unwrap().len(), 2);
        let v = serde_json::json!([1, 2, 3]);
        assert_eq!(embedding_inputs(&v).unwrap()[0].1, 3);
        let v = serde_json::json!([[1, 2], [3]]);
        assert_eq!(embedding_inputs(&v).unwrap()[1].1, 1);
        assert!(embedding_inputs(&serde_json::json!([])).is_none());
        assert!(embedding_inputs(&serde_json::json!({})).is_none());
    }

    #[test]
    fn base64_matches_reference() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }
}
