//! OpenAI chat completions ⇄ Anthropic Messages API: request bodies, response bodies, error bodies and SSE streams.
//! Plain functions over bytes and JSON: knows no sockets, no runtime, no database, and sets no HTTP headers itself.

use std::borrow::Cow;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{BufMut, BytesMut};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Number, Value};

use super::Usage;
use super::sse::{SseEvent, SseParser};

/// Value of the `anthropic-version` header the caller must send with every request.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

/// Raw error bodies can be whole HTML pages from a proxy; keep log lines and client messages short.
const ERROR_SNIPPET_BYTES: usize = 500;

#[derive(Debug, thiserror::Error)]
pub enum TranslateError {
    /// The client's request cannot be expressed for Anthropic; the message is safe to return with a 400.
    #[error("{0}")]
    InvalidRequest(String),
    /// Anthropic answered with something that is not a usable message; warrants a 502.
    #[error("{0}")]
    BadUpstream(String),
}

fn invalid(message: impl Into<String>) -> TranslateError {
    TranslateError::InvalidRequest(message.into())
}

fn bad_upstream(message: impl Into<String>) -> TranslateError {
    TranslateError::BadUpstream(message.into())
}

// ---------------------------------------------------------------------------------------------
// Request: OpenAI chat completion → Anthropic /v1/messages
// ---------------------------------------------------------------------------------------------

// Borrowing from the client's parsed request keeps large payloads (base64 images, long prompts) from being copied.
#[derive(Serialize)]
struct MessagesRequest<'a> {
    model: &'a str,
    max_tokens: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    system: Option<String>,
    messages: Vec<Message<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<&'a Number>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<&'a Number>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stop_sequences: Option<Vec<&'a str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<Metadata<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tools: Option<Vec<Tool<'a>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<ToolChoice<'a>>,
}

#[derive(Serialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Role {
    User,
    Assistant,
}

#[derive(Serialize)]
struct Message<'a> {
    role: Role,
    content: Vec<Block<'a>>,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Block<'a> {
    Text {
        text: &'a str,
    },
    Image {
        source: ImageSource<'a>,
    },
    ToolUse {
        id: &'a str,
        name: &'a str,
        input: Cow<'a, Value>,
    },
    ToolResult {
        tool_use_id: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        content: Option<ToolResultContent<'a>>,
    },
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ImageSource<'a> {
    Base64 { media_type: &'a str, data: &'a str },
    Url { url: &'a str },
}

#[derive(Serialize)]
#[serde(untagged)]
enum ToolResultContent<'a> {
    Text(&'a str),
    Blocks(Vec<Block<'a>>),
}

#[derive(Serialize)]
struct Metadata<'a> {
    user_id: &'a str,
}

#[derive(Serialize)]
struct Tool<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
    input_schema: Cow<'a, Value>,
}

#[derive(Serialize)]
struct ToolChoice<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    disable_parallel_tool_use: bool,
}

enum OpenAiToolChoice<'a> {
    Auto,
    None,
    Required,
    Named(&'a str),
}

/// OpenAI chat request (already parsed) → Anthropic /v1/messages request body bytes.
/// `model` is the upstream model name to send (provider prefix already stripped).
/// `default_max_tokens` is used when the request has neither `max_tokens` nor `max_completion_tokens` (Anthropic requires max_tokens).
pub fn request_to_anthropic(req: &Value, model: &str, default_max_tokens: u64) -> Result<Vec<u8>, TranslateError> {
    let req = req.as_object().ok_or_else(|| invalid("request body must be a JSON object"))?;

    if present(req, "n").and_then(Value::as_f64).is_some_and(|n| n > 1.0) {
        return Err(invalid("n > 1 is not supported by anthropic"));
    }

    let (system, messages) = translate_messages(req)?;

    let max_tokens = match present(req, "max_completion_tokens").or_else(|| present(req, "max_tokens")) {
        None => default_max_tokens,
        Some(v) => v
            .as_u64()
            .filter(|&n| n > 0)
            .ok_or_else(|| invalid("max_tokens / max_completion_tokens must be a positive integer"))?,
    };

    let stop_sequences = match present(req, "stop") {
        None => None,
        Some(Value::String(s)) => Some(vec![s.as_str()]),
        Some(Value::Array(items)) => {
            let stops = items
                .iter()
                .map(|s| s.as_str().ok_or_else(|| invalid("stop must be a string or an array of strings")))
                .collect::<Result<Vec<_>, _>>()?;
            (!stops.is_empty()).then_some(stops)
        }
        Some(_) => return Err(invalid("stop must be a string or an array of strings")),
    };

    let stream = match present(req, "stream") {
        None => None,
        Some(v) => Some(v.as_bool().ok_or_else(|| invalid("stream must be a boolean"))?),
    };

    let (tools, tool_choice) = translate_tools(req)?;

    let body = MessagesRequest {
        model,
        max_tokens,
        system,
        messages,
        temperature: number_field(req, "temperature")?,
        top_p: number_field(req, "top_p")?,
        stop_sequences,
        stream,
        metadata: string_field(req, "user")?.map(|user_id| Metadata { user_id }),
        tools,
        tool_choice,
    };
    serde_json::to_vec(&body).map_err(|e| invalid(format!("request cannot be encoded: {e}")))
}

/// A JSON `null` means "not set" in OpenAI requests, so it must not trip type checks.
fn present<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.get(key).filter(|v| !v.is_null())
}

fn number_field<'a>(obj: &'a Map<String, Value>, key: &str) -> Result<Option<&'a Number>, TranslateError> {
    match present(obj, key) {
        None => Ok(None),
        Some(Value::Number(n)) => Ok(Some(n)),
        Some(_) => Err(invalid(format!("{key} must be a number"))),
    }
}

fn string_field<'a>(obj: &'a Map<String, Value>, key: &str) -> Result<Option<&'a str>, TranslateError> {
    match present(obj, key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(invalid(format!("{key} must be a string"))),
    }
}

type Translated<'a> = (Option<String>, Vec<Message<'a>>);

fn translate_messages(req: &Map<String, Value>) -> Result<Translated<'_>, TranslateError> {
    let input = present(req, "messages")
        .and_then(Value::as_array)
        .filter(|m| !m.is_empty())
        .ok_or_else(|| invalid("messages must be a non-empty array"))?;

    let mut system: Vec<&str> = Vec::new();
    let mut messages: Vec<Message<'_>> = Vec::with_capacity(input.len());
    for (i, msg) in input.iter().enumerate() {
        let msg = msg.as_object().ok_or_else(|| invalid(format!("messages[{i}] must be an object")))?;
        let role = msg
            .get("role")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid(format!("messages[{i}].role must be a string")))?;
        let content = present(msg, "content");
        match role {
            // Anthropic has no system turns, only one top-level prompt, so every instruction message is hoisted there.
            "system" | "developer" => system_texts(content, i, &mut system)?,
            "user" => push_merged(&mut messages, Role::User, content_blocks(content, i)?),
            "assistant" => {
                let mut blocks = content_blocks(content, i)?;
                tool_use_blocks(msg, i, &mut blocks)?;
                push_merged(&mut messages, Role::Assistant, blocks);
            }
            "tool" => {
                let tool_use_id = string_field(msg, "tool_call_id")?
                    .ok_or_else(|| invalid(format!("messages[{i}].tool_call_id must be a string")))?;
                let content = match content {
                    None => None,
                    Some(Value::String(s)) => Some(ToolResultContent::Text(s)),
                    Some(other) => Some(ToolResultContent::Blocks(content_blocks(Some(other), i)?)),
                };
                // Anthropic carries tool results inside the next user turn.
                let block = Block::ToolResult { tool_use_id, content };
                push_merged(&mut messages, Role::User, vec![block]);
            }
            other => {
                return Err(invalid(format!("messages[{i}].role \"{other}\" is not supported by anthropic")));
            }
        }
    }
    if messages.is_empty() {
        return Err(invalid("messages must contain at least one non-empty user or assistant message"));
    }
    for message in messages.iter_mut().filter(|m| m.role == Role::User) {
        // Anthropic rejects a user turn whose tool_result blocks do not come first; the sort is stable.
        message.content.sort_by_key(|b| !matches!(b, Block::ToolResult { .. }));
    }
    let system = (!system.is_empty()).then(|| system.join("\n\n"));
    Ok((system, messages))
}

/// Anthropic requires strict user/assistant alternation, so same-role neighbours become one turn.
fn push_merged<'a>(messages: &mut Vec<Message<'a>>, role: Role, blocks: Vec<Block<'a>>) {
    if blocks.is_empty() {
        // Anthropic rejects empty turns; an empty OpenAI message carries nothing to keep.
        return;
    }
    match messages.last_mut() {
        Some(last) if last.role == role => last.content.extend(blocks),
        _ => messages.push(Message { role, content: blocks }),
    }
}

fn system_texts<'a>(content: Option<&'a Value>, i: usize, out: &mut Vec<&'a str>) -> Result<(), TranslateError> {
    match content {
        None => {}
        Some(Value::String(s)) if s.is_empty() => {}
        Some(Value::String(s)) => out.push(s),
        Some(Value::Array(parts)) => {
            for (j, part) in parts.iter().enumerate() {
                match part_type(part) {
                    Some("text") => match part.get("text").and_then(Value::as_str) {
                        Some("") => {}
                        Some(text) => out.push(text),
                        None => {
                            return Err(invalid(format!("messages[{i}].content[{j}].text must be a string")));
                        }
                    },
                    _ => {
                        return Err(invalid(format!(
                            "messages[{i}].content[{j}]: system messages may only contain text parts"
                        )));
                    }
                }
            }
        }
        Some(_) => {
            return Err(invalid(format!("messages[{i}].content must be a string or an array of parts")));
        }
    }
    Ok(())
}

fn part_type(part: &Value) -> Option<&str> {
    part.get("type").and_then(Value::as_str)
}

fn content_blocks(content: Option<&Value>, i: usize) -> Result<Vec<Block<'_>>, TranslateError> {
    let parts = match content {
        None => return Ok(Vec::new()),
        // Anthropic rejects empty text blocks, and assistant tool-call turns routinely send "".
        Some(Value::String(s)) if s.is_empty() => return Ok(Vec::new()),
        Some(Value::String(s)) => return Ok(vec![Block::Text { text: s }]),
        Some(Value::Array(parts)) => parts,
        Some(_) => {
            return Err(invalid(format!("messages[{i}].content must be a string, an array of parts, or null")));
        }
    };
    let mut blocks = Vec::with_capacity(parts.len());
    for (j, part) in parts.iter().enumerate() {
        let text_field = |key: &str| {
            part.get(key)
                .and_then(Value::as_str)
                .ok_or_else(|| invalid(format!("messages[{i}].content[{j}].{key} must be a string")))
        };
        match part_type(part) {
            Some("text") => {
                let text = text_field("text")?;
                if !text.is_empty() {
                    blocks.push(Block::Text { text });
                }
            }
            Some("refusal") => {
                let text = text_field("refusal")?;
                if !text.is_empty() {
                    blocks.push(Block::Text { text });
                }
            }
            Some("image_url") => {
                let image = part.get("image_url");
                let url = image
                    .and_then(|v| v.as_str().or_else(|| v.get("url").and_then(Value::as_str)))
                    .ok_or_else(|| invalid(format!("messages[{i}].content[{j}].image_url.url must be a string")))?;
                blocks.push(Block::Image { source: image_source(url, i, j)? });
            }
            Some(other) => {
                return Err(invalid(format!(
                    "messages[{i}].content[{j}]: content part type \"{other}\" is not supported by anthropic"
                )));
            }
            None => {
                return Err(invalid(format!("messages[{i}].content[{j}].type must be a string")));
            }
        }
    }
    Ok(blocks)
}

fn image_source(url: &str, i: usize, j: usize) -> Result<ImageSource<'_>, TranslateError> {
    let Some(rest) = url.strip_prefix("data:") else {
        return Ok(ImageSource::Url { url });
    };
    let not_base64 = || {
        invalid(format!("messages[{i}].content[{j}]: image data URLs must look like data:<media type>;base64,<data>"))
    };
    let (meta, data) = rest.split_once(',').ok_or_else(not_base64)?;
    let mut params = meta.split(';');
    let media_type = params.next().filter(|m| !m.is_empty()).ok_or_else(not_base64)?;
    if !params.any(|p| p.eq_ignore_ascii_case("base64")) {
        return Err(not_base64());
    }
    Ok(ImageSource::Base64 { media_type, data })
}

fn tool_use_blocks<'a>(msg: &'a Map<String, Value>, i: usize, out: &mut Vec<Block<'a>>) -> Result<(), TranslateError> {
    let Some(calls) = present(msg, "tool_calls") else {
        return Ok(());
    };
    let calls = calls.as_array().ok_or_else(|| invalid(format!("messages[{i}].tool_calls must be an array")))?;
    for (j, call) in calls.iter().enumerate() {
        let at = || format!("messages[{i}].tool_calls[{j}]");
        let id =
            call.get("id").and_then(Value::as_str).ok_or_else(|| invalid(format!("{}.id must be a string", at())))?;
        if part_type(call).is_some_and(|t| t != "function") {
            return Err(invalid(format!("{}: only function tool calls are supported by anthropic", at())));
        }
        let function = call.get("function");
        let name = function
            .and_then(|f| f.get("name"))
            .and_then(Value::as_str)
            .ok_or_else(|| invalid(format!("{}.function.name must be a string", at())))?;
        let input = match function.and_then(|f| f.get("arguments")) {
            None | Some(Value::Null) => Cow::Owned(Value::Object(Map::new())),
            // Some clients send "" for argument-less calls; Anthropic still wants an object.
            Some(Value::String(s)) if s.trim().is_empty() => Cow::Owned(Value::Object(Map::new())),
            Some(Value::String(s)) => {
                let parsed: Value = serde_json::from_str(s)
                    .map_err(|e| invalid(format!("{}.function.arguments is not valid JSON: {e}", at())))?;
                Cow::Owned(parsed)
            }
            Some(v) => Cow::Borrowed(v),
        };
        if !input.is_object() {
            return Err(invalid(format!("{}.function.arguments must encode a JSON object", at())));
        }
        out.push(Block::ToolUse { id, name, input });
    }
    Ok(())
}

type TranslatedTools<'a> = (Option<Vec<Tool<'a>>>, Option<ToolChoice<'a>>);

fn translate_tools(req: &Map<String, Value>) -> Result<TranslatedTools<'_>, TranslateError> {
    let choice = match present(req, "tool_choice") {
        None => None,
        Some(Value::String(s)) => Some(match s.as_str() {
            "auto" => OpenAiToolChoice::Auto,
            "none" => OpenAiToolChoice::None,
            "required" => OpenAiToolChoice::Required,
            other => return Err(invalid(format!("tool_choice \"{other}\" is not supported"))),
        }),
        Some(v) => {
            let name = v
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .filter(|_| part_type(v) == Some("function"))
                .ok_or_else(|| {
                    invalid("tool_choice must be \"auto\", \"none\", \"required\" or {\"type\":\"function\",\"function\":{\"name\":…}}")
                })?;
            Some(OpenAiToolChoice::Named(name))
        }
    };

    let Some(list) = present(req, "tools") else {
        return Ok((None, None));
    };
    let list = list.as_array().ok_or_else(|| invalid("tools must be an array"))?;
    if list.is_empty() || matches!(choice, Some(OpenAiToolChoice::None)) {
        // Anthropic's closest equivalent of "never call a tool" is not offering any.
        return Ok((None, None));
    }

    let mut tools = Vec::with_capacity(list.len());
    for (k, tool) in list.iter().enumerate() {
        if part_type(tool).is_some_and(|t| t != "function") {
            return Err(invalid(format!("tools[{k}]: only function tools are supported by anthropic")));
        }
        let function = tool
            .get("function")
            .and_then(Value::as_object)
            .ok_or_else(|| invalid(format!("tools[{k}].function must be an object")))?;
        let name = string_field(function, "name")?
            .ok_or_else(|| invalid(format!("tools[{k}].function.name must be a string")))?;
        let input_schema = match present(function, "parameters") {
            Some(schema) => Cow::Borrowed(schema),
            // Anthropic requires a schema even for argument-less tools; OpenAI lets it be omitted.
            None => Cow::Owned(serde_json::json!({"type": "object", "properties": {}})),
        };
        tools.push(Tool { name, description: string_field(function, "description")?, input_schema });
    }

    let disable_parallel_tool_use = present(req, "parallel_tool_calls").and_then(Value::as_bool) == Some(false);
    let (kind, name) = match choice {
        Some(OpenAiToolChoice::Required) => ("any", None),
        Some(OpenAiToolChoice::Named(name)) => ("tool", Some(name)),
        _ => ("auto", None),
    };
    let tool_choice =
        (choice.is_some() || disable_parallel_tool_use).then_some(ToolChoice { kind, name, disable_parallel_tool_use });
    Ok((Some(tools), tool_choice))
}

// ---------------------------------------------------------------------------------------------
// Response: Anthropic message → OpenAI chat.completion
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
struct MessagesResponse<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    content: Vec<ContentBlock<'a>>,
    #[serde(borrow)]
    stop_reason: Option<Cow<'a, str>>,
    usage: Option<AnthropicUsage>,
}

/// One struct for every block type: a tagged enum would buffer its fields and lose the borrowed `RawValue`.
#[derive(Deserialize)]
struct ContentBlock<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow)]
    input: Option<&'a RawValue>,
}

#[derive(Debug, Deserialize, Default, Clone, Copy)]
struct AnthropicUsage {
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
    cache_read_input_tokens: Option<u64>,
}

impl AnthropicUsage {
    /// Later events repeat only the counters they changed.
    fn update(&mut self, newer: &AnthropicUsage) {
        self.input_tokens = newer.input_tokens.or(self.input_tokens);
        self.output_tokens = newer.output_tokens.or(self.output_tokens);
        self.cache_creation_input_tokens = newer.cache_creation_input_tokens.or(self.cache_creation_input_tokens);
        self.cache_read_input_tokens = newer.cache_read_input_tokens.or(self.cache_read_input_tokens);
    }

    fn to_usage(self) -> Usage {
        // Cached prompt tokens are still prompt tokens for the client and for budgets; Anthropic reports them apart.
        let prompt_tokens = self
            .input_tokens
            .unwrap_or(0)
            .saturating_add(self.cache_read_input_tokens.unwrap_or(0))
            .saturating_add(self.cache_creation_input_tokens.unwrap_or(0));
        Usage { prompt_tokens, completion_tokens: self.output_tokens.unwrap_or(0) }
    }
}

#[derive(Serialize)]
struct UsageOut {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
}

impl From<Usage> for UsageOut {
    fn from(u: Usage) -> Self {
        UsageOut {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            total_tokens: u.prompt_tokens.saturating_add(u.completion_tokens),
        }
    }
}

#[derive(Serialize)]
struct ChatCompletion<'a> {
    id: String,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: [CompletionChoice<'a>; 1],
    usage: UsageOut,
}

#[derive(Serialize)]
struct CompletionChoice<'a> {
    index: u32,
    message: CompletionMessage<'a>,
    finish_reason: &'static str,
}

#[derive(Serialize)]
struct CompletionMessage<'a> {
    role: &'static str,
    content: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<ToolCallOut<'a>>,
}

#[derive(Serialize)]
struct ToolCallOut<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    function: FunctionOut<'a>,
}

#[derive(Serialize)]
struct FunctionOut<'a> {
    name: &'a str,
    arguments: &'a str,
}

fn finish_reason(stop_reason: &str) -> &'static str {
    match stop_reason {
        "max_tokens" | "model_context_window_exceeded" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        // end_turn, stop_sequence, pause_turn and reasons added later all mean "the model stopped on its own".
        _ => "stop",
    }
}

fn response_id(anthropic_id: Option<&str>) -> String {
    format!("chatcmpl-{}", anthropic_id.unwrap_or("anthropic"))
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Anthropic non-streamed response body → OpenAI `chat.completion` JSON bytes, plus usage.
/// `client_model` is the model name to report back to the client.
pub fn response_from_anthropic(body: &[u8], client_model: &str) -> Result<(Vec<u8>, Usage), TranslateError> {
    response_from_anthropic_at(body, client_model, unix_now())
}

fn response_from_anthropic_at(
    body: &[u8],
    client_model: &str,
    created: u64,
) -> Result<(Vec<u8>, Usage), TranslateError> {
    let response: MessagesResponse<'_> =
        serde_json::from_slice(body).map_err(|e| bad_upstream(format!("unreadable anthropic response: {e}")))?;
    if response.kind.as_deref() == Some("error") {
        return Err(bad_upstream(error_message(body)));
    }

    let mut text: Option<String> = None;
    let mut tool_calls = Vec::new();
    for block in &response.content {
        match block.kind.as_ref() {
            "text" => {
                if let Some(t) = &block.text {
                    text.get_or_insert_with(String::new).push_str(t);
                }
            }
            "tool_use" => {
                let (Some(id), Some(name)) = (&block.id, &block.name) else {
                    return Err(bad_upstream("anthropic tool_use block without id or name"));
                };
                tool_calls.push(ToolCallOut {
                    id,
                    kind: "function",
                    function: FunctionOut { name, arguments: block.input.map_or("{}", RawValue::get) },
                });
            }
            // Thinking and server-tool blocks have no chat-completions equivalent.
            _ => {}
        }
    }

    let usage = response.usage.unwrap_or_default().to_usage();
    let completion = ChatCompletion {
        id: response_id(response.id.as_deref()),
        object: "chat.completion",
        created,
        model: client_model,
        choices: [CompletionChoice {
            index: 0,
            message: CompletionMessage { role: "assistant", content: text, tool_calls },
            finish_reason: finish_reason(response.stop_reason.as_deref().unwrap_or("end_turn")),
        }],
        usage: usage.into(),
    };
    let bytes =
        serde_json::to_vec(&completion).map_err(|e| bad_upstream(format!("response cannot be encoded: {e}")))?;
    Ok((bytes, usage))
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
struct ErrorEnvelope<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    error: ErrorDetail<'a>,
}

#[derive(Deserialize)]
struct ErrorDetail<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow)]
    message: Option<Cow<'a, str>>,
}

impl ErrorDetail<'_> {
    fn describe(&self) -> Option<String> {
        let message = self.message.as_deref()?;
        Some(match self.kind.as_deref() {
            Some(kind) if !kind.is_empty() => format!("{kind}: {message}"),
            _ => message.to_owned(),
        })
    }
}

/// Anthropic error body (`{"type":"error","error":{"type":"…","message":"…"}}`) → a human message; falls back to the raw text (truncated to 500 bytes) when it is not that shape.
pub fn error_message(body: &[u8]) -> String {
    if let Ok(envelope) = serde_json::from_slice::<ErrorEnvelope<'_>>(body)
        && envelope.kind == "error"
        && let Some(message) = envelope.error.describe()
    {
        return message;
    }
    let mut end = body.len().min(ERROR_SNIPPET_BYTES);
    // Back off to a character boundary so the cut never shows up as a replacement character.
    while end < body.len() && end > 0 && body[end] & 0xC0 == 0x80 {
        end -= 1;
    }
    let text = String::from_utf8_lossy(&body[..end]);
    let text = text.trim();
    if text.is_empty() { "anthropic returned an empty error body".to_owned() } else { text.to_owned() }
}

// ---------------------------------------------------------------------------------------------
// Streaming: Anthropic SSE → OpenAI chat.completion.chunk SSE
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
struct StreamEvent<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow)]
    message: Option<StreamMessage<'a>>,
    index: Option<u64>,
    #[serde(borrow)]
    content_block: Option<ContentBlock<'a>>,
    #[serde(borrow)]
    delta: Option<StreamDelta<'a>>,
    usage: Option<AnthropicUsage>,
    #[serde(borrow)]
    error: Option<ErrorDetail<'a>>,
}

#[derive(Deserialize)]
struct StreamMessage<'a> {
    #[serde(borrow)]
    id: Option<Cow<'a, str>>,
    usage: Option<AnthropicUsage>,
}

#[derive(Deserialize)]
struct StreamDelta<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow)]
    partial_json: Option<Cow<'a, str>>,
    #[serde(borrow)]
    stop_reason: Option<Cow<'a, str>>,
}

#[derive(Serialize)]
struct Chunk<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: [ChunkChoice<'a>; 1],
}

#[derive(Serialize)]
struct ChunkChoice<'a> {
    index: u32,
    delta: ChunkDelta<'a>,
    finish_reason: Option<&'static str>,
}

#[derive(Serialize, Default)]
struct ChunkDelta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_calls: Option<[ToolCallDelta<'a>; 1]>,
}

#[derive(Serialize)]
struct ToolCallDelta<'a> {
    index: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
    function: FunctionDelta<'a>,
}

#[derive(Serialize)]
struct FunctionDelta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    arguments: &'a str,
}

#[derive(Serialize)]
struct UsageChunk<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: [(); 0],
    usage: UsageOut,
}

#[derive(Serialize)]
struct ErrorChunk<'a> {
    error: ErrorChunkBody<'a>,
}

#[derive(Serialize)]
struct ErrorChunkBody<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    message: &'a str,
}

const DONE: &[u8] = b"data: [DONE]\n\n";

/// Streaming: Anthropic SSE events in, OpenAI `chat.completion.chunk` SSE bytes out, chunk by chunk (never buffer the whole stream).
#[derive(Debug)]
pub struct StreamTranslator {
    parser: SseParser,
    /// Reused across `feed` calls so steady-state streaming does not allocate a vector per read.
    events: Vec<SseEvent>,
    id: String,
    model: String,
    created: u64,
    include_usage: bool,
    role_sent: bool,
    /// Anthropic content-block index → OpenAI tool-call index; OpenAI numbers tool calls only.
    tool_blocks: Vec<(u64, u32)>,
    usage: Option<AnthropicUsage>,
    done: bool,
    done_sent: bool,
}

impl StreamTranslator {
    /// `include_usage`: whether the client asked for `stream_options.include_usage` (then emit a final chunk with `"choices":[]` and `usage`, like OpenAI does).
    pub fn new(client_model: &str, include_usage: bool) -> Self {
        Self::new_at(client_model, include_usage, unix_now())
    }

    fn new_at(client_model: &str, include_usage: bool, created: u64) -> Self {
        Self {
            parser: SseParser::new(),
            events: Vec::new(),
            id: response_id(None),
            model: client_model.to_owned(),
            created,
            include_usage,
            role_sent: false,
            tool_blocks: Vec::new(),
            usage: None,
            done: false,
            done_sent: false,
        }
    }

    /// Feed raw upstream bytes (arbitrary splits); append translated SSE bytes (`data: {json}\n\n` lines) to `out`.
    pub fn feed(&mut self, bytes: &[u8], out: &mut BytesMut) {
        if self.done {
            return;
        }
        let mut events = std::mem::take(&mut self.events);
        self.parser.push_into(bytes, &mut events);
        for event in events.drain(..) {
            if self.done {
                break;
            }
            self.handle(&event, out);
        }
        self.events = events;
    }

    /// Upstream ended: make sure the client sees a terminal `data: [DONE]\n\n` exactly once (idempotent).
    pub fn finish(&mut self, out: &mut BytesMut) {
        if !self.done
            && let Some(event) = self.parser.finish()
        {
            self.handle(&event, out);
        }
        if !self.done {
            // Without message_stop the answer is truncated; saying so beats a clean-looking [DONE].
            self.fail("anthropic stream ended before message_stop", out);
        }
        self.send_done(out);
    }

    /// Usage once known (input tokens from message_start, output tokens from message_delta).
    pub fn usage(&self) -> Option<Usage> {
        self.usage.map(AnthropicUsage::to_usage)
    }

    /// True once message_stop (or an error event) was seen.
    pub fn is_done(&self) -> bool {
        self.done
    }

    fn handle(&mut self, event: &SseEvent, out: &mut BytesMut) {
        let parsed: StreamEvent<'_> = match serde_json::from_str(&event.data) {
            Ok(parsed) => parsed,
            Err(e) => {
                // Skipping a garbled event could silently drop text, so the stream is declared broken.
                self.fail(&format!("unreadable anthropic stream event: {e}"), out);
                return;
            }
        };
        let kind = parsed.kind.as_deref().or(event.event.as_deref()).unwrap_or("");
        match kind {
            "message_start" => {
                if let Some(message) = &parsed.message {
                    if let Some(id) = &message.id
                        && !self.role_sent
                    {
                        self.id = response_id(Some(id));
                    }
                    if let Some(usage) = &message.usage {
                        self.record_usage(usage);
                    }
                }
                self.send_role(out);
            }
            "content_block_start" => {
                self.send_role(out);
                if let Some(block) = &parsed.content_block {
                    self.on_block_start(block, parsed.index.unwrap_or(0), out);
                }
            }
            "content_block_delta" => {
                self.send_role(out);
                if let Some(delta) = &parsed.delta {
                    self.on_block_delta(delta, parsed.index.unwrap_or(0), out);
                }
            }
            "message_delta" => {
                if let Some(usage) = &parsed.usage {
                    self.record_usage(usage);
                }
                if let Some(reason) = parsed.delta.as_ref().and_then(|d| d.stop_reason.as_deref()) {
                    self.send_role(out);
                    self.send_chunk(out, ChunkDelta::default(), Some(finish_reason(reason)));
                }
            }
            "message_stop" => self.on_message_stop(out),
            "error" => {
                let message = parsed
                    .error
                    .as_ref()
                    .and_then(ErrorDetail::describe)
                    .unwrap_or_else(|| "anthropic stream reported an error".to_owned());
                self.fail(&message, out);
            }
            // ping, content_block_stop, and event types Anthropic may add later carry nothing for the client.
            _ => {}
        }
    }

    fn on_block_start(&mut self, block: &ContentBlock<'_>, block_index: u64, out: &mut BytesMut) {
        match block.kind.as_ref() {
            "tool_use" => {
                let tool_index = u32::try_from(self.tool_blocks.len()).unwrap_or(u32::MAX);
                self.tool_blocks.push((block_index, tool_index));
                let delta = ChunkDelta {
                    tool_calls: Some([ToolCallDelta {
                        index: tool_index,
                        id: Some(block.id.as_deref().unwrap_or("")),
                        kind: Some("function"),
                        function: FunctionDelta { name: Some(block.name.as_deref().unwrap_or("")), arguments: "" },
                    }]),
                    ..ChunkDelta::default()
                };
                self.send_chunk(out, delta, None);
            }
            "text" => {
                if let Some(text) = block.text.as_deref().filter(|t| !t.is_empty()) {
                    self.send_text(out, text);
                }
            }
            // Thinking and server-tool blocks have no chat-completions equivalent.
            _ => {}
        }
    }

    fn on_block_delta(&mut self, delta: &StreamDelta<'_>, block_index: u64, out: &mut BytesMut) {
        match delta.kind.as_deref() {
            Some("text_delta") => {
                if let Some(text) = delta.text.as_deref().filter(|t| !t.is_empty()) {
                    self.send_text(out, text);
                }
            }
            Some("input_json_delta") => {
                let tool_index = self.tool_blocks.iter().rev().find(|(b, _)| *b == block_index).map(|&(_, t)| t);
                // Anthropic opens every tool block with an empty fragment; it adds nothing for the client.
                let json = delta.partial_json.as_deref().filter(|j| !j.is_empty());
                if let (Some(tool_index), Some(json)) = (tool_index, json) {
                    let delta = ChunkDelta {
                        tool_calls: Some([ToolCallDelta {
                            index: tool_index,
                            id: None,
                            kind: None,
                            function: FunctionDelta { name: None, arguments: json },
                        }]),
                        ..ChunkDelta::default()
                    };
                    self.send_chunk(out, delta, None);
                }
            }
            // thinking_delta / signature_delta have no chat-completions equivalent.
            _ => {}
        }
    }

    fn on_message_stop(&mut self, out: &mut BytesMut) {
        self.send_role(out);
        if self.include_usage {
            let usage = self.usage().unwrap_or_default();
            write_data(
                out,
                &UsageChunk {
                    id: &self.id,
                    object: "chat.completion.chunk",
                    created: self.created,
                    model: &self.model,
                    choices: [],
                    usage: usage.into(),
                },
            );
        }
        self.done = true;
        self.send_done(out);
    }

    fn record_usage(&mut self, newer: &AnthropicUsage) {
        self.usage.get_or_insert_default().update(newer);
    }

    fn send_role(&mut self, out: &mut BytesMut) {
        if self.role_sent {
            return;
        }
        self.role_sent = true;
        let delta = ChunkDelta { role: Some("assistant"), content: Some(""), tool_calls: None };
        self.send_chunk(out, delta, None);
    }

    fn send_text(&self, out: &mut BytesMut, text: &str) {
        let delta = ChunkDelta { content: Some(text), ..ChunkDelta::default() };
        self.send_chunk(out, delta, None);
    }

    fn send_chunk(&self, out: &mut BytesMut, delta: ChunkDelta<'_>, finish_reason: Option<&'static str>) {
        write_data(
            out,
            &Chunk {
                id: &self.id,
                object: "chat.completion.chunk",
                created: self.created,
                model: &self.model,
                choices: [ChunkChoice { index: 0, delta, finish_reason }],
            },
        );
    }

    fn fail(&mut self, message: &str, out: &mut BytesMut) {
        write_data(out, &ErrorChunk { error: ErrorChunkBody { kind: "upstream_error", message } });
        self.done = true;
        self.send_done(out);
    }

    fn send_done(&mut self, out: &mut BytesMut) {
        if !self.done_sent {
            self.done_sent = true;
            out.extend_from_slice(DONE);
        }
    }
}

fn write_data<T: Serialize>(out: &mut BytesMut, value: &T) {
    let start = out.len();
    out.extend_from_slice(b"data: ");
    if serde_json::to_writer((&mut *out).writer(), value).is_err() {
        // Never leave a half-written event on the wire.
        out.truncate(start);
        return;
    }
    out.extend_from_slice(b"\n\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const CREATED: u64 = 1_700_000_000;
    const MODEL: &str = "anthropic/claude-sonnet";

    fn translate(req: Value) -> Value {
        let bytes = request_to_anthropic(&req, "claude-sonnet-4-5", 1024).unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    fn translate_err(req: Value) -> String {
        match request_to_anthropic(&req, "claude-sonnet-4-5", 1024) {
            Err(TranslateError::InvalidRequest(message)) => message,
            other => panic!("expected InvalidRequest, got {other:?}"),
        }
    }

    fn messages_of(req: Value) -> Value {
        translate(req)["messages"].clone()
    }

    // ---- request ------------------------------------------------------------------------------

    #[test]
    fn full_request_maps_every_supported_field() {
        let req = json!({
            "model": "anthropic/claude-sonnet",
            "messages": [
                {"role": "system", "content": "Be terse."},
                {"role": "user", "content": "Weather in Paris?"}
            ],
            "max_tokens": 200,
            "temperature": 0.25,
            "top_p": 0.9,
            "stop": ["END", "STOP"],
            "stream": true,
            "user": "user-42",
            "tools": [{
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "description": "Current weather",
                    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
                }
            }],
            "tool_choice": "auto"
        });
        assert_eq!(
            translate(req),
            json!({
                "model": "claude-sonnet-4-5",
                "max_tokens": 200,
                "system": "Be terse.",
                "messages": [{"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"}]}],
                "temperature": 0.25,
                "top_p": 0.9,
                "stop_sequences": ["END", "STOP"],
                "stream": true,
                "metadata": {"user_id": "user-42"},
                "tools": [{
                    "name": "get_weather",
                    "description": "Current weather",
                    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
                }],
                "tool_choice": {"type": "auto"}
            })
        );
    }

    #[test]
    fn minimal_request_gets_default_max_tokens_and_nothing_else() {
        let req = json!({"messages": [{"role": "user", "content": "hi"}]});
        assert_eq!(
            translate(req),
            json!({
                "model": "claude-sonnet-4-5",
                "max_tokens": 1024,
                "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
            })
        );
    }

    #[test]
    fn openai_only_fields_are_dropped() {
        let req = json!({
            "messages": [{"role": "user", "content": "hi"}],
            "n": 1,
            "stream_options": {"include_usage": true},
            "fallbacks": ["openai/gpt-4o"],
            "frequency_penalty": 0.5,
            "presence_penalty": 0.5,
            "logit_bias": {"50256": -100},
            "seed": 7,
            "logprobs": true,
            "response_format": {"type": "json_object"}
        });
        assert_eq!(
            translate(req),
            json!({
                "model": "claude-sonnet-4-5",
                "max_tokens": 1024,
                "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
            })
        );
    }

    #[test]
    fn null_fields_count_as_absent() {
        let req = json!({
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": null, "temperature": null, "top_p": null, "stop": null,
            "stream": null, "user": null, "tools": null, "tool_choice": null, "n": null
        });
        assert_eq!(
            translate(req),
            json!({
                "model": "claude-sonnet-4-5",
                "max_tokens": 1024,
                "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
            })
        );
    }

    #[test]
    fn system_and_developer_messages_are_hoisted_and_joined() {
        let out = translate(json!({"messages": [
            {"role": "system", "content": "Rule one."},
            {"role": "user", "content": "hi"},
            {"role": "developer", "content": [{"type": "text", "text": "Rule two."}, {"type": "text", "text": "Rule three."}]},
            {"role": "system", "content": ""}
        ]}));
        assert_eq!(out["system"], json!("Rule one.\n\nRule two.\n\nRule three."));
        assert_eq!(out["messages"], json!([{"role": "user", "content": [{"type": "text", "text": "hi"}]}]));
    }

    #[test]
    fn system_message_with_image_is_rejected() {
        let message = translate_err(json!({"messages": [
            {"role": "system", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]},
            {"role": "user", "content": "hi"}
        ]}));
        assert_eq!(message, "messages[0].content[0]: system messages may only contain text parts");
    }

    #[test]
    fn content_parts_become_text_and_image_blocks() {
        let messages = messages_of(json!({"messages": [{"role": "user", "content": [
            {"type": "text", "text": "What is in these?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "high"}},
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
            {"type": "text", "text": ""}
        ]}]}));
        assert_eq!(
            messages,
            json!([{"role": "user", "content": [
                {"type": "text", "text": "What is in these?"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
                {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}}
            ]}])
        );
    }

    #[test]
    fn data_url_without_base64_is_rejected() {
        let message = translate_err(json!({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/svg+xml,<svg/>"}}
        ]}]}));
        assert_eq!(message, "messages[0].content[0]: image data URLs must look like data:<media type>;base64,<data>");
    }

    #[test]
    fn unsupported_content_part_is_rejected() {
        let message = translate_err(json!({"messages": [{"role": "user", "content": [
            {"type": "input_audio", "input_audio": {"data": "AAA", "format": "wav"}}
        ]}]}));
        assert_eq!(message, "messages[0].content[0]: content part type \"input_audio\" is not supported by anthropic");
    }

    #[test]
    fn consecutive_same_role_messages_are_merged() {
        let messages = messages_of(json!({"messages": [
            {"role": "user", "content": "one"},
            {"role": "user", "content": [{"type": "text", "text": "two"}]},
            {"role": "assistant", "content": "three"},
            {"role": "assistant", "content": "four"},
            {"role": "user", "content": "five"}
        ]}));
        assert_eq!(
            messages,
            json!([
                {"role": "user", "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "three"}, {"type": "text", "text": "four"}]},
                {"role": "user", "content": [{"type": "text", "text": "five"}]}
            ])
        );
    }

    #[test]
    fn empty_messages_are_dropped_so_neighbours_merge() {
        let messages = messages_of(json!({"messages": [
            {"role": "user", "content": "one"},
            {"role": "assistant", "content": ""},
            {"role": "user", "content": "two"}
        ]}));
        assert_eq!(
            messages,
            json!([{"role": "user", "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]}])
        );
    }

    #[test]
    fn tool_round_trip_maps_to_tool_use_and_tool_result() {
        let messages = messages_of(json!({"messages": [
            {"role": "user", "content": "Weather in Paris and Rome?"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                {"id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Rome\"}"}}
            ]},
            {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
            {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "21C"}]},
            {"role": "user", "content": "Thanks"}
        ]}));
        assert_eq!(
            messages,
            json!([
                {"role": "user", "content": [{"type": "text", "text": "Weather in Paris and Rome?"}]},
                {"role": "assistant", "content": [
                    {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
                    {"type": "tool_use", "id": "call_2", "name": "get_weather", "input": {"city": "Rome"}}
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "call_1", "content": "18C"},
                    {"type": "tool_result", "tool_use_id": "call_2", "content": [{"type": "text", "text": "21C"}]},
                    {"type": "text", "text": "Thanks"}
                ]}
            ])
        );
    }

    #[test]
    fn assistant_text_comes_before_its_tool_use() {
        let messages = messages_of(json!({"messages": [
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": "Let me look.", "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "noop", "arguments": ""}}
            ]}
        ]}));
        assert_eq!(
            messages[1],
            json!({"role": "assistant", "content": [
                {"type": "text", "text": "Let me look."},
                {"type": "tool_use", "id": "call_1", "name": "noop", "input": {}}
            ]})
        );
    }

    #[test]
    fn tool_results_are_moved_before_user_text_in_a_merged_turn() {
        let messages = messages_of(json!({"messages": [
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
            ]},
            {"role": "user", "content": "also this"},
            {"role": "tool", "tool_call_id": "call_1", "content": "done"}
        ]}));
        assert_eq!(
            messages[1],
            json!({"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "call_1", "content": "done"},
                {"type": "text", "text": "also this"}
            ]})
        );
    }

    #[test]
    fn invalid_tool_call_arguments_are_rejected() {
        let message = translate_err(json!({"messages": [
            {"role": "user", "content": "q"},
            {"role": "assistant", "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{\"city\": "}}
            ]}
        ]}));
        assert!(message.starts_with("messages[1].tool_calls[0].function.arguments is not valid JSON: "), "{message}");
    }

    #[test]
    fn non_object_tool_call_arguments_are_rejected() {
        let message = translate_err(json!({"messages": [
            {"role": "user", "content": "q"},
            {"role": "assistant", "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "[1,2]"}}
            ]}
        ]}));
        assert_eq!(message, "messages[1].tool_calls[0].function.arguments must encode a JSON object");
    }

    #[test]
    fn tool_message_without_call_id_is_rejected() {
        let message = translate_err(json!({"messages": [
            {"role": "user", "content": "q"},
            {"role": "tool", "content": "x"}
        ]}));
        assert_eq!(message, "messages[1].tool_call_id must be a string");
    }

    #[test]
    fn unknown_role_is_rejected() {
        let message = translate_err(json!({"messages": [{"role": "function", "name": "f", "content": "x"}]}));
        assert_eq!(message, "messages[0].role \"function\" is not supported by anthropic");
    }

    #[test]
    fn tools_without_parameters_get_an_empty_object_schema() {
        let out = translate(json!({
            "messages": [{"role": "user", "content": "q"}],
            "tools": [{"type": "function", "function": {"name": "now"}}]
        }));
        assert_eq!(out["tools"], json!([{"name": "now", "input_schema": {"type": "object", "properties": {}}}]));
        assert_eq!(out.get("tool_choice"), None);
    }

    #[test]
    fn non_function_tools_are_rejected() {
        let message = translate_err(json!({
            "messages": [{"role": "user", "content": "q"}],
            "tools": [{"type": "code_interpreter"}]
        }));
        assert_eq!(message, "tools[0]: only function tools are supported by anthropic");
    }

    fn with_tool_choice(choice: Value) -> Value {
        translate(json!({
            "messages": [{"role": "user", "content": "q"}],
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
            "tool_choice": choice
        }))
    }

    #[test]
    fn tool_choice_maps_to_anthropic_equivalents() {
        assert_eq!(with_tool_choice(json!("auto"))["tool_choice"], json!({"type": "auto"}));
        assert_eq!(with_tool_choice(json!("required"))["tool_choice"], json!({"type": "any"}));
        assert_eq!(
            with_tool_choice(json!({"type": "function", "function": {"name": "f"}}))["tool_choice"],
            json!({"type": "tool", "name": "f"})
        );
    }

    #[test]
    fn tool_choice_none_omits_tools_entirely() {
        let out = with_tool_choice(json!("none"));
        assert_eq!(out.get("tools"), None);
        assert_eq!(out.get("tool_choice"), None);
    }

    #[test]
    fn invalid_tool_choice_is_rejected() {
        let message = translate_err(json!({
            "messages": [{"role": "user", "content": "q"}],
            "tools": [{"type": "function", "function": {"name": "f"}}],
            "tool_choice": "sometimes"
        }));
        assert_eq!(message, "tool_choice \"sometimes\" is not supported");
    }

    #[test]
    fn tool_choice_without_tools_is_dropped() {
        let out = translate(json!({"messages": [{"role": "user", "content": "q"}], "tool_choice": "required"}));
        assert_eq!(out.get("tool_choice"), None);
        assert_eq!(out.get("tools"), None);
    }

    #[test]
    fn parallel_tool_calls_false_disables_parallel_tool_use() {
        let out = translate(json!({
            "messages": [{"role": "user", "content": "q"}],
            "tools": [{"type": "function", "function": {"name": "f"}}],
            "parallel_tool_calls": false
        }));
        assert_eq!(out["tool_choice"], json!({"type": "auto", "disable_parallel_tool_use": true}));
    }

    #[test]
    fn max_completion_tokens_wins_over_max_tokens() {
        let base = |extra: Value| {
            let mut req = json!({"messages": [{"role": "user", "content": "q"}]});
            if let (Some(obj), Some(extra)) = (req.as_object_mut(), extra.as_object()) {
                obj.extend(extra.clone());
            }
            translate(req)["max_tokens"].clone()
        };
        assert_eq!(base(json!({"max_tokens": 10})), json!(10));
        assert_eq!(base(json!({"max_completion_tokens": 20})), json!(20));
        assert_eq!(base(json!({"max_tokens": 10, "max_completion_tokens": 20})), json!(20));
        assert_eq!(base(json!({})), json!(1024));
    }

    #[test]
    fn non_positive_max_tokens_is_rejected() {
        for bad in [json!(0), json!(-5), json!(1.5), json!("100")] {
            let message = translate_err(json!({"messages": [{"role": "user", "content": "q"}], "max_tokens": bad}));
            assert_eq!(message, "max_tokens / max_completion_tokens must be a positive integer");
        }
    }

    #[test]
    fn stop_string_becomes_single_stop_sequence() {
        let out = translate(json!({"messages": [{"role": "user", "content": "q"}], "stop": "\n\n"}));
        assert_eq!(out["stop_sequences"], json!(["\n\n"]));
        let out = translate(json!({"messages": [{"role": "user", "content": "q"}], "stop": []}));
        assert_eq!(out.get("stop_sequences"), None);
        let message = translate_err(json!({"messages": [{"role": "user", "content": "q"}], "stop": [1]}));
        assert_eq!(message, "stop must be a string or an array of strings");
    }

    #[test]
    fn stream_false_is_forwarded() {
        let out = translate(json!({"messages": [{"role": "user", "content": "q"}], "stream": false}));
        assert_eq!(out["stream"], json!(false));
    }

    #[test]
    fn wrongly_typed_scalars_are_rejected() {
        let msgs = json!([{"role": "user", "content": "q"}]);
        assert_eq!(translate_err(json!({"messages": msgs, "temperature": "hot"})), "temperature must be a number");
        assert_eq!(translate_err(json!({"messages": msgs, "stream": "yes"})), "stream must be a boolean");
        assert_eq!(translate_err(json!({"messages": msgs, "user": 7})), "user must be a string");
    }

    #[test]
    fn missing_or_empty_messages_are_rejected() {
        assert_eq!(translate_err(json!({})), "messages must be a non-empty array");
        assert_eq!(translate_err(json!({"messages": []})), "messages must be a non-empty array");
        assert_eq!(translate_err(json!({"messages": "hi"})), "messages must be a non-empty array");
        assert_eq!(translate_err(json!([1])), "request body must be a JSON object");
    }

    #[test]
    fn only_system_messages_are_rejected() {
        assert_eq!(
            translate_err(json!({"messages": [{"role": "system", "content": "x"}]})),
            "messages must contain at least one non-empty user or assistant message"
        );
    }

    #[test]
    fn n_greater_than_one_is_rejected() {
        assert_eq!(
            translate_err(json!({"messages": [{"role": "user", "content": "q"}], "n": 2})),
            "n > 1 is not supported by anthropic"
        );
    }

    #[test]
    fn invalid_request_displays_as_its_bare_message() {
        assert_eq!(TranslateError::InvalidRequest("boom".into()).to_string(), "boom");
    }

    // ---- response -----------------------------------------------------------------------------

    fn respond(body: Value) -> (Value, Usage) {
        let bytes = serde_json::to_vec(&body).unwrap();
        let (out, usage) = response_from_anthropic_at(&bytes, MODEL, CREATED).unwrap();
        (serde_json::from_slice(&out).unwrap(), usage)
    }

    #[test]
    fn text_response_becomes_chat_completion() {
        let (out, usage) = respond(json!({
            "id": "msg_01", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
            "content": [{"type": "text", "text": "Hello"}, {"type": "text", "text": ", world"}],
            "stop_reason": "end_turn", "stop_sequence": null,
            "usage": {"input_tokens": 12, "output_tokens": 5}
        }));
        assert_eq!(
            out,
            json!({
                "id": "chatcmpl-msg_01",
                "object": "chat.completion",
                "created": CREATED,
                "model": MODEL,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello, world"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17}
            })
        );
        assert_eq!(usage, Usage { prompt_tokens: 12, completion_tokens: 5 });
    }

    #[test]
    fn tool_use_response_becomes_tool_calls() {
        let (out, _) = respond(json!({
            "id": "msg_02", "type": "message", "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris", "units": ["c"]}},
                {"type": "tool_use", "id": "toolu_2", "name": "now", "input": {}}
            ],
            "stop_reason": "tool_use",
            "usage": {"input_tokens": 30, "output_tokens": 20}
        }));
        let message = &out["choices"][0]["message"];
        assert_eq!(message["content"], json!("Checking."));
        assert_eq!(out["choices"][0]["finish_reason"], json!("tool_calls"));
        let calls = message["tool_calls"].as_array().unwrap();
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0]["id"], json!("toolu_1"));
        assert_eq!(calls[0]["type"], json!("function"));
        assert_eq!(calls[0]["function"]["name"], json!("get_weather"));
        let args: Value = serde_json::from_str(calls[0]["function"]["arguments"].as_str().unwrap()).unwrap();
        assert_eq!(args, json!({"city": "Paris", "units": ["c"]}));
        assert_eq!(calls[1]["function"], json!({"name": "now", "arguments": "{}"}));
    }

    #[test]
    fn response_without_text_has_null_content() {
        let (out, _) = respond(json!({
            "id": "msg_03", "type": "message",
            "content": [{"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}],
            "stop_reason": "tool_use", "usage": {"input_tokens": 1, "output_tokens": 1}
        }));
        assert_eq!(out["choices"][0]["message"]["content"], Value::Null);
        assert!(out["choices"][0]["message"].as_object().unwrap().contains_key("content"));
    }

    #[test]
    fn stop_reasons_map_to_finish_reasons() {
        for (stop, finish) in [
            ("end_turn", "stop"),
            ("stop_sequence", "stop"),
            ("max_tokens", "length"),
            ("tool_use", "tool_calls"),
            ("refusal", "content_filter"),
        ] {
            let (out, _) = respond(json!({
                "id": "m", "type": "message", "content": [{"type": "text", "text": "x"}],
                "stop_reason": stop, "usage": {"input_tokens": 1, "output_tokens": 1}
            }));
            assert_eq!(out["choices"][0]["finish_reason"], json!(finish), "{stop}");
        }
    }

    #[test]
    fn cached_input_tokens_count_as_prompt_tokens() {
        let (out, usage) = respond(json!({
            "id": "m", "type": "message", "content": [{"type": "text", "text": "x"}], "stop_reason": "end_turn",
            "usage": {"input_tokens": 10, "cache_read_input_tokens": 100, "cache_creation_input_tokens": 1000, "output_tokens": 7}
        }));
        assert_eq!(usage, Usage { prompt_tokens: 1110, completion_tokens: 7 });
        assert_eq!(out["usage"], json!({"prompt_tokens": 1110, "completion_tokens": 7, "total_tokens": 1117}));
    }

    #[test]
    fn error_shaped_response_is_bad_upstream() {
        let body = br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
        match response_from_anthropic(body, MODEL) {
            Err(TranslateError::BadUpstream(message)) => {
                assert_eq!(message, "overloaded_error: Overloaded")
            }
            other => panic!("expected BadUpstream, got {other:?}"),
        }
    }

    #[test]
    fn unreadable_response_is_bad_upstream() {
        for body in [&b"<html>502</html>"[..], b"", br#"{"content": 5}"#] {
            assert!(matches!(response_from_anthropic(body, MODEL), Err(TranslateError::BadUpstream(_))));
        }
    }

    #[test]
    fn created_timestamp_is_current_unix_time() {
        let body = br#"{"id":"m","type":"message","content":[],"stop_reason":"end_turn","usage":{"input_tokens":1,"output_tokens":0}}"#;
        let (out, _) = response_from_anthropic(body, MODEL).unwrap();
        let out: Value = serde_json::from_slice(&out).unwrap();
        let created = out["created"].as_u64().unwrap();
        assert!(created.abs_diff(unix_now()) < 60);
    }

    // ---- error bodies -------------------------------------------------------------------------

    #[test]
    fn error_body_yields_type_and_message() {
        let body =
            br#"{"type":"error","error":{"type":"invalid_request_error","message":"max_tokens: Field required"}}"#;
        assert_eq!(error_message(body), "invalid_request_error: max_tokens: Field required");
    }

    #[test]
    fn non_anthropic_error_body_falls_back_to_raw_text() {
        assert_eq!(error_message(b"  upstream connect error\n"), "upstream connect error");
        assert_eq!(error_message(br#"{"error":"nope"}"#), r#"{"error":"nope"}"#);
        assert_eq!(error_message(b""), "anthropic returned an empty error body");
    }

    #[test]
    fn raw_error_text_is_cut_at_500_bytes_on_a_char_boundary() {
        let body = format!("{}é{}", "a".repeat(499), "b".repeat(1000));
        let message = error_message(body.as_bytes());
        assert_eq!(message, "a".repeat(499));
        let long = "x".repeat(2000);
        assert_eq!(error_message(long.as_bytes()).len(), 500);
    }

    // ---- streaming ----------------------------------------------------------------------------

    /// Every frame must be exactly `data: <payload>\n\n`; `[DONE]` comes back as the string "[DONE]".
    fn frames(out: &[u8]) -> Vec<Value> {
        let text = std::str::from_utf8(out).unwrap();
        assert!(text.is_empty() || text.ends_with("\n\n"), "unterminated frame: {text:?}");
        text.split_terminator("\n\n")
            .map(|frame| {
                let payload = frame.strip_prefix("data: ").unwrap();
                assert!(!payload.contains('\n'));
                if payload == "[DONE]" { json!("[DONE]") } else { serde_json::from_str(payload).unwrap() }
            })
            .collect()
    }

    fn chunk(id: &str, delta: Value, finish_reason: Value) -> Value {
        json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": CREATED,
            "model": MODEL,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]
        })
    }

    fn sse(events: &[(&str, Value)]) -> String {
        events.iter().map(|(name, data)| format!("event: {name}\ndata: {data}\n\n")).collect()
    }

    fn text_stream() -> String {
        sse(&[
            (
                "message_start",
                json!({"type": "message_start", "message": {
                    "id": "msg_1", "type": "message", "role": "assistant", "content": [], "model": "claude-sonnet-4-5",
                    "stop_reason": null, "stop_sequence": null,
                    "usage": {"input_tokens": 25, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 5, "output_tokens": 1}
                }}),
            ),
            (
                "content_block_start",
                json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            ),
            ("ping", json!({"type": "ping"})),
            (
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello"}}),
            ),
            (
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": ", héllo"}}),
            ),
            (
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": " wörld ✓"}}),
            ),
            ("content_block_stop", json!({"type": "content_block_stop", "index": 0})),
            (
                "message_delta",
                json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": {"output_tokens": 15}}),
            ),
            ("message_stop", json!({"type": "message_stop"})),
        ])
    }

    fn expected_text_frames(include_usage: bool) -> Vec<Value> {
        let id = "chatcmpl-msg_1";
        let mut frames = vec![
            chunk(id, json!({"role": "assistant", "content": ""}), Value::Null),
            chunk(id, json!({"content": "Hello"}), Value::Null),
            chunk(id, json!({"content": ", héllo"}), Value::Null),
            chunk(id, json!({"content": " wörld ✓"}), Value::Null),
            chunk(id, json!({}), json!("stop")),
        ];
        if include_usage {
            frames.push(json!({
                "id": id,
                "object": "chat.completion.chunk",
                "created": CREATED,
                "model": MODEL,
                "choices": [],
                "usage": {"prompt_tokens": 30, "completion_tokens": 15, "total_tokens": 45}
            }));
        }
        frames.push(json!("[DONE]"));
        frames
    }

    fn run(input: &[u8], include_usage: bool, split: impl Fn(&[u8]) -> Vec<&[u8]>) -> (Vec<Value>, StreamTranslator) {
        let mut t = StreamTranslator::new_at(MODEL, include_usage, CREATED);
        let mut out = BytesMut::new();
        for piece in split(input) {
            t.feed(piece, &mut out);
        }
        t.finish(&mut out);
        (frames(&out), t)
    }

    fn whole(input: &[u8]) -> Vec<&[u8]> {
        vec![input]
    }

    #[test]
    fn full_text_stream_translates_to_openai_chunks_usage_and_done() {
        let (frames, t) = run(text_stream().as_bytes(), true, whole);
        assert_eq!(frames, expected_text_frames(true));
        assert_eq!(t.usage(), Some(Usage { prompt_tokens: 30, completion_tokens: 15 }));
        assert!(t.is_done());
    }

    #[test]
    fn usage_chunk_is_omitted_unless_requested() {
        let (frames, t) = run(text_stream().as_bytes(), false, whole);
        assert_eq!(frames, expected_text_frames(false));
        assert_eq!(t.usage(), Some(Usage { prompt_tokens: 30, completion_tokens: 15 }));
    }

    #[test]
    fn stream_fed_one_byte_at_a_time_translates_identically() {
        let (frames, _) = run(text_stream().as_bytes(), true, |b| b.chunks(1).collect());
        assert_eq!(frames, expected_text_frames(true));
    }

    #[test]
    fn stream_split_mid_utf8_char_keeps_text_intact() {
        let input = text_stream();
        let bytes = input.as_bytes();
        let e_acute = input.find('é').unwrap();
        let (frames, _) = run(bytes, true, |b| vec![&b[..e_acute + 1], &b[e_acute + 1..]]);
        assert_eq!(frames, expected_text_frames(true));
    }

    #[test]
    fn stream_split_at_every_position_translates_identically() {
        let input = text_stream();
        let bytes = input.as_bytes();
        let expected = expected_text_frames(true);
        for at in 0..=bytes.len() {
            let (frames, _) = run(bytes, true, |b| vec![&b[..at], &b[at..]]);
            assert_eq!(frames, expected, "split at {at}");
        }
    }

    #[test]
    fn output_is_produced_incrementally_per_event() {
        let input = text_stream();
        let mut t = StreamTranslator::new_at(MODEL, false, CREATED);
        let mut out = BytesMut::new();
        let first_delta_end = input.find("Hello").unwrap();
        let first_delta_end = first_delta_end + input[first_delta_end..].find("\n\n").unwrap() + 2;
        t.feed(&input.as_bytes()[..first_delta_end], &mut out);
        assert_eq!(frames(&out), expected_text_frames(false)[..2].to_vec());
        assert!(!t.is_done());
    }

    #[test]
    fn usage_is_known_from_message_start_and_completed_by_message_delta() {
        let input = text_stream();
        let mut t = StreamTranslator::new_at(MODEL, false, CREATED);
        let mut out = BytesMut::new();
        assert_eq!(t.usage(), None);
        let start_end = input.find("\n\n").unwrap() + 2;
        t.feed(&input.as_bytes()[..start_end], &mut out);
        assert_eq!(t.usage(), Some(Usage { prompt_tokens: 30, completion_tokens: 1 }));
        t.feed(&input.as_bytes()[start_end..], &mut out);
        assert_eq!(t.usage(), Some(Usage { prompt_tokens: 30, completion_tokens: 15 }));
    }

    #[test]
    fn tool_use_stream_becomes_indexed_tool_call_deltas() {
        let input = sse(&[
            (
                "message_start",
                json!({"type": "message_start", "message": {"id": "msg_t", "usage": {"input_tokens": 50, "output_tokens": 1}}}),
            ),
            (
                "content_block_start",
                json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            ),
            (
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Checking."}}),
            ),
            ("content_block_stop", json!({"type": "content_block_stop", "index": 0})),
            (
                "content_block_start",
                json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "toolu_a", "name": "get_weather", "input": {}}}),
            ),
            (
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": ""}}),
            ),
            (
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"city\":"}}),
            ),
            (
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": " \"Paris\"}"}}),
            ),
            ("content_block_stop", json!({"type": "content_block_stop", "index": 1})),
            (
                "content_block_start",
                json!({"type": "content_block_start", "index": 2, "content_block": {"type": "tool_use", "id": "toolu_b", "name": "now", "input": {}}}),
            ),
            (
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": "{}"}}),
            ),
            ("content_block_stop", json!({"type": "content_block_stop", "index": 2})),
            (
                "message_delta",
                json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null}, "usage": {"output_tokens": 40}}),
            ),
            ("message_stop", json!({"type": "message_stop"})),
        ]);
        let (frames, t) = run(input.as_bytes(), false, whole);
        let id = "chatcmpl-msg_t";
        assert_eq!(
            frames,
            vec![
                chunk(id, json!({"role": "assistant", "content": ""}), Value::Null),
                chunk(id, json!({"content": "Checking."}), Value::Null),
                chunk(
                    id,
                    json!({"tool_calls": [{"index": 0, "id": "toolu_a", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]}),
                    Value::Null
                ),
                chunk(id, json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"city\":"}}]}), Value::Null),
                chunk(id, json!({"tool_calls": [{"index": 0, "function": {"arguments": " \"Paris\"}"}}]}), Value::Null),
                chunk(
                    id,
                    json!({"tool_calls": [{"index": 1, "id": "toolu_b", "type": "function", "function": {"name": "now", "arguments": ""}}]}),
                    Value::Null
                ),
                chunk(id, json!({"tool_calls": [{"index": 1, "function": {"arguments": "{}"}}]}), Value::Null),
                chunk(id, json!({}), json!("tool_calls")),
                json!("[DONE]"),
            ]
        );
        assert_eq!(t.usage(), Some(Usage { prompt_tokens: 50, completion_tokens: 40 }));
    }

    #[test]
    fn max_tokens_stop_becomes_length_finish_reason() {
        let input = sse(&[
            (
                "message_start",
                json!({"type": "message_start", "message": {"id": "m", "usage": {"input_tokens": 1, "output_tokens": 1}}}),
            ),
            (
                "message_delta",
                json!({"type": "message_delta", "delta": {"stop_reason": "max_tokens"}, "usage": {"output_tokens": 9}}),
            ),
            ("message_stop", json!({"type": "message_stop"})),
        ]);
        let (frames, _) = run(input.as_bytes(), false, whole);
        assert_eq!(frames[1], chunk("chatcmpl-m", json!({}), json!("length")));
    }

    #[test]
    fn error_event_emits_error_then_done_and_stops() {
        let mut input = sse(&[
            (
                "message_start",
                json!({"type": "message_start", "message": {"id": "msg_e", "usage": {"input_tokens": 3, "output_tokens": 1}}}),
            ),
            (
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}}),
            ),
            ("error", json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})),
        ]);
        input.push_str(&sse(&[(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "late"}}),
        )]));
        let mut t = StreamTranslator::new_at(MODEL, true, CREATED);
        let mut out = BytesMut::new();
        t.feed(input.as_bytes(), &mut out);
        assert!(t.is_done());
        t.feed(b"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n", &mut out);
        t.finish(&mut out);
        assert_eq!(
            frames(&out),
            vec![
                chunk("chatcmpl-msg_e", json!({"role": "assistant", "content": ""}), Value::Null),
                chunk("chatcmpl-msg_e", json!({"content": "Hi"}), Value::Null),
                json!({"error": {"type": "upstream_error", "message": "overloaded_error: Overloaded"}}),
                json!("[DONE]"),
            ]
        );
        assert_eq!(t.usage(), Some(Usage { prompt_tokens: 3, completion_tokens: 1 }));
    }

    #[test]
    fn finish_is_idempotent_after_message_stop() {
        let mut t = StreamTranslator::new_at(MODEL, false, CREATED);
        let mut out = BytesMut::new();
        t.feed(text_stream().as_bytes(), &mut out);
        let before = out.len();
        t.finish(&mut out);
        t.finish(&mut out);
        assert_eq!(out.len(), before);
        assert_eq!(frames(&out), expected_text_frames(false));
    }

    #[test]
    fn truncated_stream_ends_with_error_and_single_done() {
        let input = text_stream();
        let cut = input.find("event: message_delta").unwrap();
        let mut t = StreamTranslator::new_at(MODEL, true, CREATED);
        let mut out = BytesMut::new();
        t.feed(&input.as_bytes()[..cut], &mut out);
        t.finish(&mut out);
        t.finish(&mut out);
        let mut expected = expected_text_frames(false)[..4].to_vec();
        expected.push(
            json!({"error": {"type": "upstream_error", "message": "anthropic stream ended before message_stop"}}),
        );
        expected.push(json!("[DONE]"));
        assert_eq!(frames(&out), expected);
        assert!(t.is_done());
        assert_eq!(t.usage(), Some(Usage { prompt_tokens: 30, completion_tokens: 1 }));
    }

    #[test]
    fn final_event_without_blank_line_is_still_translated_at_finish() {
        let input = text_stream();
        let trimmed = input.trim_end_matches('\n');
        let (frames, t) = run(trimmed.as_bytes(), true, whole);
        assert_eq!(frames, expected_text_frames(true));
        assert!(t.is_done());
    }

    #[test]
    fn finish_on_empty_stream_reports_truncation() {
        let (frames, t) = run(b"", false, whole);
        assert_eq!(
            frames,
            vec![
                json!({"error": {"type": "upstream_error", "message": "anthropic stream ended before message_stop"}}),
                json!("[DONE]"),
            ]
        );
        assert_eq!(t.usage(), None);
    }

    #[test]
    fn garbled_event_data_breaks_the_stream_with_an_error() {
        let mut t = StreamTranslator::new_at(MODEL, false, CREATED);
        let mut out = BytesMut::new();
        t.feed(b"event: content_block_delta\ndata: {not json\n\n", &mut out);
        assert!(t.is_done());
        let frames = frames(&out);
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0]["error"]["type"], json!("upstream_error"));
        assert!(frames[0]["error"]["message"].as_str().unwrap().starts_with("unreadable anthropic stream event: "));
        assert_eq!(frames[1], json!("[DONE]"));
    }

    #[test]
    fn unknown_events_and_thinking_deltas_are_ignored() {
        let input = sse(&[
            (
                "message_start",
                json!({"type": "message_start", "message": {"id": "m", "usage": {"input_tokens": 1, "output_tokens": 1}}}),
            ),
            (
                "content_block_start",
                json!({"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": ""}}),
            ),
            (
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "hmm"}}),
            ),
            (
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "s"}}),
            ),
            ("future_event", json!({"type": "future_event", "x": 1})),
            ("message_stop", json!({"type": "message_stop"})),
        ]);
        let (frames, _) = run(input.as_bytes(), false, whole);
        assert_eq!(
            frames,
            vec![chunk("chatcmpl-m", json!({"role": "assistant", "content": ""}), Value::Null), json!("[DONE]"),]
        );
    }

    #[test]
    fn anthropic_version_is_the_documented_one() {
        assert_eq!(ANTHROPIC_VERSION, "2023-06-01");
    }
}
