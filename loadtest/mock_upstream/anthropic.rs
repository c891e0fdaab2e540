//! Anthropic Messages API: `/v1/messages`.

use http::{Request, StatusCode};
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};

use crate::body::SseEvent;
use crate::server::{
    Api, Ctx, HandlerResult, api_key, before_inference, check_key, error, is_slow_stream, json_ok, read_body, sse_event,
};
use crate::text::{
    Str, Text, apply_max_tokens, char_count, contains_ignore_ascii_case, prefix_chars, split_even, tokens,
    tokens_for_chars,
};

/// The tool call the mock makes, and its JSON arguments.
const TOOL_ID: &str = "toolu_mock1";
const TOOL_INPUT_JSON: &str = r#"{"city":"Paris"}"#;

#[derive(Deserialize)]
pub struct MessagesRequest<'a> {
    #[serde(borrow)]
    pub model: Str<'a>,
    #[serde(borrow, default)]
    pub messages: Vec<Message<'a>>,
    #[serde(borrow, default)]
    pub system: Text<'a>,
    #[serde(default)]
    pub max_tokens: Option<u64>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(borrow, default)]
    pub tools: Option<Vec<Tool<'a>>>,
}

#[derive(Deserialize)]
pub struct Message<'a> {
    #[serde(borrow)]
    pub role: Str<'a>,
    #[serde(borrow, default)]
    pub content: Text<'a>,
}

#[derive(Deserialize)]
pub struct Tool<'a> {
    #[serde(borrow)]
    pub name: Str<'a>,
}

/// What the mock answers: text, or a call of the named tool.
#[derive(Debug, PartialEq, Eq)]
pub enum ReplyContent {
    Text(String),
    ToolUse { name: String },
}

#[derive(Debug, PartialEq, Eq)]
pub struct Reply {
    pub content: ReplyContent,
    pub stop_reason: &'static str,
    pub input_tokens: u64,
    pub output_tokens: u64,
}

pub fn reply(req: &MessagesRequest<'_>, max_tokens: u64) -> Reply {
    let system = req.system.as_str();
    let input_chars: usize =
        char_count(system) + req.messages.iter().map(|m| char_count(m.content.as_str())).sum::<usize>();
    let input_tokens = tokens_for_chars(input_chars);
    let last_user = req.messages.iter().rev().find(|m| m.role.as_str() == "user").map_or("", |m| m.content.as_str());
    let first_tool = req.tools.as_ref().and_then(|t| t.first());
    if let Some(tool) = first_tool
        && contains_ignore_ascii_case(last_user, "weather")
    {
        return Reply {
            content: ReplyContent::ToolUse { name: tool.name.as_str().to_owned() },
            stop_reason: "tool_use",
            input_tokens,
            output_tokens: tokens(TOOL_INPUT_JSON),
        };
    }
    let full = format!(
        "mock reply to: {} | system={} | max_tokens={}",
        prefix_chars(last_user, 64),
        prefix_chars(system, 32),
        max_tokens
    );
    let (text, truncated) = apply_max_tokens(&full, Some(max_tokens));
    let text = text.to_owned();
    Reply {
        output_tokens: tokens(&text),
        content: ReplyContent::Text(text),
        stop_reason: if truncated { "max_tokens" } else { "end_turn" },
        input_tokens,
    }
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Block<'a> {
    Text { text: &'a str },
    ToolUse { id: &'static str, name: &'a str, input: ToolInput },
}

/// The tool call's arguments: `{"city":"Paris"}`, or `{}` at the start of a
/// streamed tool_use block (the arguments then arrive as input_json_delta).
#[derive(Serialize)]
#[serde(untagged)]
enum ToolInput {
    City { city: &'static str },
    Empty {},
}

#[derive(Serialize)]
struct Usage {
    input_tokens: u64,
    output_tokens: u64,
}

#[derive(Serialize)]
struct MessageOut<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    role: &'static str,
    model: &'a str,
    content: Vec<Block<'a>>,
    stop_reason: Option<&'static str>,
    stop_sequence: Option<()>,
    usage: Usage,
}

#[derive(Serialize)]
struct MessageStart<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    message: MessageOut<'a>,
}

#[derive(Serialize)]
struct BlockStart<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    index: u32,
    content_block: Block<'a>,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum DeltaBody<'a> {
    TextDelta { text: &'a str },
    InputJsonDelta { partial_json: &'a str },
}

#[derive(Serialize)]
struct BlockDelta<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    index: u32,
    delta: DeltaBody<'a>,
}

#[derive(Serialize)]
struct Typed {
    #[serde(rename = "type")]
    kind: &'static str,
}

#[derive(Serialize)]
struct BlockStop {
    #[serde(rename = "type")]
    kind: &'static str,
    index: u32,
}

#[derive(Serialize)]
struct MessageDeltaInner {
    stop_reason: &'static str,
    stop_sequence: Option<()>,
}

#[derive(Serialize)]
struct OutputUsage {
    output_tokens: u64,
}

#[derive(Serialize)]
struct MessageDelta {
    #[serde(rename = "type")]
    kind: &'static str,
    delta: MessageDeltaInner,
    usage: OutputUsage,
}

fn block(content: &ReplyContent) -> Block<'_> {
    match content {
        ReplyContent::Text(text) => Block::Text { text },
        ReplyContent::ToolUse { name } => {
            Block::ToolUse { id: TOOL_ID, name, input: ToolInput::City { city: "Paris" } }
        }
    }
}

pub async fn messages(ctx: &Ctx, req: Request<Incoming>) -> HandlerResult {
    let headers = req.headers();
    if !headers.contains_key("x-api-key") {
        if let Some(key) = api_key(headers, Api::Anthropic) {
            ctx.stats.count_key(key);
        }
        return Ok(error(Api::Anthropic, StatusCode::UNAUTHORIZED, "x-api-key header is required"));
    }
    if let Some(resp) = check_key(ctx, Api::Anthropic, api_key(headers, Api::Anthropic)) {
        return Ok(resp);
    }
    if !headers.contains_key("anthropic-version") {
        return Ok(error(Api::Anthropic, StatusCode::BAD_REQUEST, "anthropic-version: header is required"));
    }
    let Ok(body) = read_body(req).await else {
        return Ok(error(Api::Anthropic, StatusCode::BAD_REQUEST, "could not read request body"));
    };
    let parsed: MessagesRequest<'_> = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => {
            return Ok(error(Api::Anthropic, StatusCode::BAD_REQUEST, &format!("invalid request body: {e}")));
        }
    };
    let Some(max_tokens) = parsed.max_tokens else {
        return Ok(error(Api::Anthropic, StatusCode::BAD_REQUEST, "max_tokens: Field required"));
    };
    let model = parsed.model.as_str();
    if let Some(resp) = before_inference(ctx, Api::Anthropic, model).await {
        return Ok(resp);
    }
    let reply = reply(&parsed, max_tokens);
    let id = ctx.new_id("msg_");
    if parsed.stream != Some(true) {
        return json_ok(&MessageOut {
            id: &id,
            kind: "message",
            role: "assistant",
            model,
            content: vec![block(&reply.content)],
            stop_reason: Some(reply.stop_reason),
            stop_sequence: None,
            usage: Usage { input_tokens: reply.input_tokens, output_tokens: reply.output_tokens },
        });
    }
    let events = stream_events(&id, model, &reply, ctx.cfg().stream_chunks)?;
    Ok(ctx.sse(events, is_slow_stream(model)))
}

fn stream_events(id: &str, model: &str, reply: &Reply, chunks: usize) -> serde_json::Result<Vec<SseEvent>> {
    let mut events = Vec::with_capacity(chunks + 7);
    events.push(SseEvent::now(sse_event(
        "message_start",
        &MessageStart {
            kind: "message_start",
            message: MessageOut {
                id,
                kind: "message",
                role: "assistant",
                model,
                content: Vec::new(),
                stop_reason: None,
                stop_sequence: None,
                usage: Usage { input_tokens: reply.input_tokens, output_tokens: 0 },
            },
        },
    )?));
    let start_block = match &reply.content {
        ReplyContent::Text(_) => Block::Text { text: "" },
        ReplyContent::ToolUse { name } => Block::ToolUse { id: TOOL_ID, name, input: ToolInput::Empty {} },
    };
    let start = sse_event(
        "content_block_start",
        &BlockStart { kind: "content_block_start", index: 0, content_block: start_block },
    )?;
    events.push(SseEvent::now(start));
    events.push(SseEvent::now(sse_event("ping", &Typed { kind: "ping" })?));
    let (whole, is_text) = match &reply.content {
        ReplyContent::Text(t) => (t.as_str(), true),
        ReplyContent::ToolUse { .. } => (TOOL_INPUT_JSON, false),
    };
    for piece in split_even(whole, chunks) {
        let delta = if is_text {
            DeltaBody::TextDelta { text: piece }
        } else {
            DeltaBody::InputJsonDelta { partial_json: piece }
        };
        events.push(SseEvent::after_delay(sse_event(
            "content_block_delta",
            &BlockDelta { kind: "content_block_delta", index: 0, delta },
        )?));
    }
    events.push(SseEvent::now(sse_event("content_block_stop", &BlockStop { kind: "content_block_stop", index: 0 })?));
    events.push(SseEvent::now(sse_event(
        "message_delta",
        &MessageDelta {
            kind: "message_delta",
            delta: MessageDeltaInner { stop_reason: reply.stop_reason, stop_sequence: None },
            usage: OutputUsage { output_tokens: reply.output_tokens },
        },
    )?));
    events.push(SseEvent::now(sse_event("message_stop", &Typed { kind: "message_stop" })?));
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> MessagesRequest<'_> {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn text_reply_echoes_request() {
        let req = parse(
            r#"{"model":"claude","max_tokens":1024,"system":"You are terse.",
                "messages":[{"role":"user","content":[{"type":"text","text":"Hi there"}]}]}"#,
        );
        let r = reply(&req, 1024);
        assert_eq!(
            r.content,
            ReplyContent::Text("mock reply to: Hi there | system=You are terse. | max_tokens=1024".into())
        );
        assert_eq!(r.stop_reason, "end_turn");
        assert_eq!(r.input_tokens, 6); // ceil((14 + 8) / 4)
        assert_eq!(r.output_tokens, 17); // 65 chars
    }

    #[test]
    fn small_max_tokens_truncates() {
        let req = parse(r#"{"model":"c","max_tokens":2,"messages":[{"role":"user","content":"hi"}]}"#);
        let r = reply(&req, 2);
        assert_eq!(r.content, ReplyContent::Text("mock rep".into()));
        assert_eq!(r.stop_reason, "max_tokens");
        assert_eq!(r.output_tokens, 2);
    }

    #[test]
    fn weather_with_tools_calls_first_tool() {
        let req = parse(
            r#"{"model":"c","max_tokens":100,
                "tools":[{"name":"get_weather","input_schema":{"type":"object"}},{"name":"other"}],
                "messages":[{"role":"user","content":"What's the weather in Paris?"}]}"#,
        );
        let r = reply(&req, 100);
        assert_eq!(r.content, ReplyContent::ToolUse { name: "get_weather".into() });
        assert_eq!(r.stop_reason, "tool_use");
        let events = stream_events("msg_1", "c", &r, 3).unwrap();
        let mut json = String::new();
        for ev in &events {
            let s = std::str::from_utf8(&ev.bytes).unwrap();
            let data = s.split("data: ").nth(1).unwrap().trim_end();
            let v: serde_json::Value = serde_json::from_str(data).unwrap();
            if v["type"] == "content_block_start" {
                assert_eq!(v["content_block"]["input"], serde_json::json!({}));
                assert_eq!(v["content_block"]["name"], "get_weather");
            }
            if let Some(p) = v["delta"]["partial_json"].as_str() {
                json.push_str(p);
            }
        }
        assert_eq!(json, TOOL_INPUT_JSON);
    }

    #[test]
    fn stream_event_sequence() {
        let req = parse(r#"{"model":"c","max_tokens":100,"messages":[{"role":"user","content":"hello"}]}"#);
        let r = reply(&req, 100);
        let events = stream_events("msg_1", "c", &r, 4).unwrap();
        let names: Vec<String> = events
            .iter()
            .map(|e| {
                let s = std::str::from_utf8(&e.bytes).unwrap();
                s.lines().next().unwrap().trim_start_matches("event: ").to_owned()
            })
            .collect();
        assert_eq!(
            names,
            [
                "message_start",
                "content_block_start",
                "ping",
                "content_block_delta",
                "content_block_delta",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        let mut text = String::new();
        for ev in &events {
            let s = std::str::from_utf8(&ev.bytes).unwrap();
            let v: serde_json::Value = serde_json::from_str(s.split("data: ").nth(1).unwrap().trim_end()).unwrap();
            if let Some(t) = v["delta"]["text"].as_str() {
                text.push_str(t);
            }
            if v["type"] == "message_delta" {
                assert_eq!(v["delta"]["stop_reason"], "end_turn");
                assert_eq!(v["usage"]["output_tokens"], r.output_tokens);
            }
        }
        assert_eq!(ReplyContent::Text(text), r.content);
    }
}
