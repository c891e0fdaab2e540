//! Incremental Server-Sent-Events parsing and OpenAI usage extraction from stream chunks and bodies.
//! Plain functions over bytes and JSON: knows no sockets, no runtime, no database.

use serde::Deserialize;

use super::Usage;

/// Longest line kept; a longer one is dropped so an upstream that never sends a newline cannot grow memory forever.
pub const MAX_LINE_BYTES: usize = 1024 * 1024;

/// Largest joined `data` of one event; many in-bound lines with no blank line would otherwise grow memory the same way.
pub const MAX_EVENT_BYTES: usize = 4 * MAX_LINE_BYTES;

/// One dispatched event: the `event:` field if any, and its `data:` lines joined with `\n`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SseEvent {
    pub event: Option<String>,
    pub data: String,
}

/// Push-driven parser: keeps only the unfinished line and the event being assembled between calls.
#[derive(Debug)]
pub struct SseParser {
    line: Vec<u8>,
    /// The last byte seen was `\r`, so a leading `\n` in the next push belongs to the same line ending.
    after_cr: bool,
    /// The current line outgrew `MAX_LINE_BYTES`; skip bytes until its end.
    dropping_line: bool,
    /// The current event outgrew `MAX_EVENT_BYTES`; skip it until the blank line that ends it.
    dropping_event: bool,
    /// A byte-order mark may still appear; the spec strips one at the very start of the stream.
    at_stream_start: bool,
    event: Option<String>,
    data: String,
    has_data: bool,
}

impl Default for SseParser {
    fn default() -> Self {
        Self::new()
    }
}

impl SseParser {
    pub fn new() -> Self {
        Self {
            line: Vec::new(),
            after_cr: false,
            dropping_line: false,
            dropping_event: false,
            at_stream_start: true,
            event: None,
            data: String::new(),
            has_data: false,
        }
    }

    /// Feed bytes as they arrive (any split, even mid-line or mid-UTF-8 char); returns the complete events seen so far.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        let mut out = Vec::new();
        self.push_into(bytes, &mut out);
        out
    }

    /// Like [`SseParser::push`], appending to a caller-owned vector so a streaming loop can reuse its allocation.
    pub fn push_into(&mut self, mut bytes: &[u8], out: &mut Vec<SseEvent>) {
        if self.after_cr && !bytes.is_empty() {
            self.after_cr = false;
            if bytes[0] == b'\n' {
                bytes = &bytes[1..];
            }
        }
        while let Some(end) = bytes.iter().position(|&b| b == b'\n' || b == b'\r') {
            let (head, rest) = bytes.split_at(end);
            let terminator = rest[0];
            bytes = &rest[1..];
            if terminator == b'\r' {
                match bytes.first() {
                    Some(b'\n') => bytes = &bytes[1..],
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
            if self.dropping_line {
                self.dropping_line = false;
                self.line.clear();
                continue;
            }
            if self.line.len() + head.len() > MAX_LINE_BYTES {
                self.line.clear();
            } else if self.line.is_empty() {
                // Whole line inside this push: parse it in place instead of copying.
                self.end_line(head, out);
            } else {
                self.line.extend_from_slice(head);
                let line = std::mem::take(&mut self.line);
                self.end_line(&line, out);
                self.line = line;
                self.line.clear();
            }
        }
        if self.dropping_line {
            return;
        }
        if self.line.len() + bytes.len() > MAX_LINE_BYTES {
            self.line.clear();
            self.dropping_line = true;
        } else {
            self.line.extend_from_slice(bytes);
        }
    }

    /// At end of stream: an event not terminated by a blank line.
    pub fn finish(&mut self) -> Option<SseEvent> {
        let mut out = Vec::new();
        if !self.dropping_line && !self.line.is_empty() {
            let line = std::mem::take(&mut self.line);
            self.end_line(&line, &mut out);
        }
        // An empty line dispatches whatever the unterminated event holds.
        self.end_line(&[], &mut out);
        *self = Self::new();
        out.pop()
    }

    fn end_line(&mut self, mut line: &[u8], out: &mut Vec<SseEvent>) {
        if self.at_stream_start {
            self.at_stream_start = false;
            line = line.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(line);
        }
        if line.is_empty() {
            self.dispatch(out);
            return;
        }
        if line[0] == b':' || self.dropping_event {
            return;
        }
        let (name, value) = match line.iter().position(|&b| b == b':') {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &[][..]),
        };
        match name {
            b"data" => {
                if self.data.len() + value.len() + 1 > MAX_EVENT_BYTES {
                    self.dropping_event = true;
                    self.data = String::new();
                    self.has_data = false;
                    return;
                }
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(&String::from_utf8_lossy(value));
                self.has_data = true;
            }
            b"event" => {
                self.event = (!value.is_empty()).then(|| String::from_utf8_lossy(value).into_owned());
            }
            // `id` and `retry` only matter to reconnecting browsers; unknown fields are ignored by spec.
            _ => {}
        }
    }

    fn dispatch(&mut self, out: &mut Vec<SseEvent>) {
        let event = self.event.take();
        self.dropping_event = false;
        // Per spec an event without any data line is not dispatched.
        if std::mem::take(&mut self.has_data) {
            out.push(SseEvent { event, data: std::mem::take(&mut self.data) });
        }
    }
}

#[derive(Deserialize)]
struct UsageEnvelope {
    usage: Option<OpenAiUsage>,
}

#[derive(Deserialize)]
struct OpenAiUsage {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
}

impl From<OpenAiUsage> for Usage {
    fn from(u: OpenAiUsage) -> Self {
        Usage { prompt_tokens: u.prompt_tokens.unwrap_or(0), completion_tokens: u.completion_tokens.unwrap_or(0) }
    }
}

/// Usage from an OpenAI chat-completion stream chunk's JSON `data` payload, if it carries a non-null `usage` object.
pub fn openai_chunk_usage(data: &str) -> Option<Usage> {
    openai_body_usage(data.as_bytes())
}

/// Usage from a whole (non-streamed) OpenAI chat/embeddings response body.
pub fn openai_body_usage(body: &[u8]) -> Option<Usage> {
    // Most stream chunks carry no usage, or `"usage":null` when include_usage is on; skip the JSON parse for those.
    if !mentions_non_null_usage(body) {
        return None;
    }
    let envelope: UsageEnvelope = serde_json::from_slice(body).ok()?;
    envelope.usage.map(Usage::from)
}

fn mentions_non_null_usage(body: &[u8]) -> bool {
    const KEY: &[u8] = b"\"usage\"";
    let mut rest = body;
    while let Some(at) = find(rest, KEY) {
        rest = &rest[at + KEY.len()..];
        let after = rest.trim_ascii_start();
        let Some(value) = after.strip_prefix(b":") else {
            continue;
        };
        if !value.trim_ascii_start().starts_with(b"null") {
            return true;
        }
    }
    false
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(event: Option<&str>, data: &str) -> SseEvent {
        SseEvent { event: event.map(str::to_owned), data: data.to_owned() }
    }

    fn parse_all(input: &[u8]) -> Vec<SseEvent> {
        let mut p = SseParser::new();
        let mut events = p.push(input);
        events.extend(p.finish());
        events
    }

    fn parse_bytewise(input: &[u8]) -> Vec<SseEvent> {
        let mut p = SseParser::new();
        let mut events = Vec::new();
        for b in input {
            p.push_into(std::slice::from_ref(b), &mut events);
        }
        events.extend(p.finish());
        events
    }

    #[test]
    fn blank_line_dispatches_one_event() {
        let mut p = SseParser::new();
        assert_eq!(p.push(b"data: hello\n\n"), vec![ev(None, "hello")]);
        assert_eq!(p.finish(), None);
    }

    #[test]
    fn event_is_held_back_until_its_blank_line_arrives() {
        let mut p = SseParser::new();
        assert!(p.push(b"data: a\n").is_empty());
        assert_eq!(p.push(b"\n"), vec![ev(None, "a")]);
    }

    #[test]
    fn multiple_data_lines_join_with_newline() {
        assert_eq!(parse_all(b"data: one\ndata: two\ndata:\ndata: three\n\n"), vec![ev(None, "one\ntwo\n\nthree")]);
    }

    #[test]
    fn event_field_names_the_event_and_resets_after_dispatch() {
        assert_eq!(
            parse_all(b"event: message_start\ndata: {}\n\ndata: x\n\n"),
            vec![ev(Some("message_start"), "{}"), ev(None, "x")]
        );
    }

    #[test]
    fn comment_lines_are_ignored() {
        assert_eq!(parse_all(b": keep-alive\ndata: a\n: mid-event comment\ndata: b\n\n:\n\n"), vec![ev(None, "a\nb")]);
    }

    #[test]
    fn only_one_space_after_colon_is_stripped() {
        assert_eq!(
            parse_all(b"data:no-space\n\ndata:  two-spaces\n\n"),
            vec![ev(None, "no-space"), ev(None, " two-spaces")]
        );
    }

    #[test]
    fn colons_inside_the_value_are_kept() {
        assert_eq!(parse_all(b"data: {\"a\":\"b:c\"}\n\n"), vec![ev(None, "{\"a\":\"b:c\"}")]);
    }

    #[test]
    fn field_without_colon_is_a_field_with_empty_value() {
        assert_eq!(parse_all(b"data\n\n"), vec![ev(None, "")]);
    }

    #[test]
    fn blank_lines_without_data_dispatch_nothing() {
        assert_eq!(parse_all(b"\n\n\nevent: ping\n\n\n"), vec![]);
    }

    #[test]
    fn unknown_fields_id_and_retry_are_ignored() {
        assert_eq!(parse_all(b"id: 7\nretry: 100\nfoo: bar\ndata: x\n\n"), vec![ev(None, "x")]);
    }

    #[test]
    fn crlf_cr_and_lf_line_endings_are_equivalent() {
        let expected = vec![ev(Some("e"), "a\nb"), ev(None, "c")];
        assert_eq!(parse_all(b"event: e\ndata: a\ndata: b\n\ndata: c\n\n"), expected);
        assert_eq!(parse_all(b"event: e\r\ndata: a\r\ndata: b\r\n\r\ndata: c\r\n\r\n"), expected);
        assert_eq!(parse_all(b"event: e\rdata: a\rdata: b\r\rdata: c\r\r"), expected);
        assert_eq!(parse_all(b"event: e\r\ndata: a\rdata: b\n\r\ndata: c\r\r\n"), expected);
    }

    #[test]
    fn crlf_split_between_pushes_is_one_line_ending() {
        let mut p = SseParser::new();
        assert!(p.push(b"data: a\r").is_empty());
        assert!(p.push(b"\n").is_empty());
        assert_eq!(p.push(b"\r\n"), vec![ev(None, "a")]);
        assert!(p.push(b"\r").is_empty());
        assert!(p.push(b"").is_empty());
        assert!(p.push(b"\ndata: b\n\n").len() == 1);
    }

    #[test]
    fn byte_at_a_time_matches_whole_input() {
        let input: &[u8] = b"event: a\r\ndata: x\r\ndata: y\r\n\r\n: c\rdata: z\r\r\ndata: w\n\n";
        assert_eq!(parse_bytewise(input), parse_all(input));
        assert_eq!(parse_all(input).len(), 3);
    }

    #[test]
    fn utf8_split_mid_character_is_reassembled() {
        let input = "data: héllo wörld ✓\n\n".as_bytes();
        let e_acute = input.iter().position(|&b| b == 0xC3).unwrap_or(0);
        let mut p = SseParser::new();
        assert!(p.push(&input[..e_acute + 1]).is_empty());
        assert_eq!(p.push(&input[e_acute + 1..]), vec![ev(None, "héllo wörld ✓")]);
        assert_eq!(parse_bytewise(input), vec![ev(None, "héllo wörld ✓")]);
    }

    #[test]
    fn invalid_utf8_is_replaced_not_fatal() {
        assert_eq!(parse_all(b"data: a\xFFb\n\n"), vec![ev(None, "a\u{FFFD}b")]);
    }

    #[test]
    fn finish_returns_event_missing_its_blank_line() {
        let mut p = SseParser::new();
        assert!(p.push(b"event: e\ndata: tail\n").is_empty());
        assert_eq!(p.finish(), Some(ev(Some("e"), "tail")));
        assert_eq!(p.finish(), None);
    }

    #[test]
    fn finish_includes_a_last_line_missing_its_newline() {
        let mut p = SseParser::new();
        assert!(p.push(b"data: a\ndata: b").is_empty());
        assert_eq!(p.finish(), Some(ev(None, "a\nb")));
    }

    #[test]
    fn finish_with_nothing_pending_returns_none() {
        let mut p = SseParser::new();
        assert_eq!(p.push(b"data: a\n\n").len(), 1);
        assert_eq!(p.finish(), None);
    }

    #[test]
    fn leading_byte_order_mark_is_stripped() {
        assert_eq!(parse_bytewise(b"\xEF\xBB\xBFdata: a\n\n"), vec![ev(None, "a")]);
    }

    #[test]
    fn oversized_line_is_dropped_and_parsing_continues() {
        let mut input = b"data: ok1\n\ndata: ".to_vec();
        input.extend(std::iter::repeat_n(b'x', MAX_LINE_BYTES + 10));
        input.extend_from_slice(b"\ndata: ok2\n\n");
        let expected = vec![ev(None, "ok1"), ev(None, "ok2")];
        assert_eq!(parse_all(&input), expected);

        let mut p = SseParser::new();
        let mut events = Vec::new();
        for chunk in input.chunks(4096) {
            p.push_into(chunk, &mut events);
            assert!(p.line.capacity() <= 2 * MAX_LINE_BYTES);
        }
        assert_eq!(events, expected);
    }

    #[test]
    fn oversized_line_without_newline_does_not_grow_buffer() {
        let mut p = SseParser::new();
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..64 {
            assert!(p.push(&chunk).is_empty());
        }
        assert!(p.line.len() <= MAX_LINE_BYTES);
        assert_eq!(p.finish(), None);
    }

    #[test]
    fn oversized_event_is_dropped_and_next_event_parses() {
        let line = format!("data: {}\n", "y".repeat(MAX_LINE_BYTES - 100));
        let mut input = line.repeat(MAX_EVENT_BYTES / MAX_LINE_BYTES + 1).into_bytes();
        input.extend_from_slice(b"\ndata: after\n\n");
        assert_eq!(parse_all(&input), vec![ev(None, "after")]);
    }

    #[test]
    fn chunk_usage_is_read_when_present() {
        let data = r#"{"id":"c","object":"chat.completion.chunk","choices":[],"usage":{"prompt_tokens":12,"completion_tokens":34,"total_tokens":46}}"#;
        assert_eq!(openai_chunk_usage(data), Some(Usage { prompt_tokens: 12, completion_tokens: 34 }));
    }

    #[test]
    fn chunk_with_null_or_missing_usage_has_none() {
        assert_eq!(openai_chunk_usage(r#"{"choices":[{"delta":{"content":"hi"}}],"usage":null}"#), None);
        assert_eq!(openai_chunk_usage(r#"{"choices":[{"delta":{"content":"hi"}}],"usage" : null}"#), None);
        assert_eq!(openai_chunk_usage(r#"{"choices":[{"delta":{"content":"hi"}}]}"#), None);
        assert_eq!(openai_chunk_usage("[DONE]"), None);
    }

    #[test]
    fn usage_word_inside_content_is_not_mistaken_for_usage() {
        assert_eq!(
            openai_chunk_usage(r#"{"choices":[{"delta":{"content":"\"usage\": {\"prompt_tokens\": 1}"}}]}"#),
            None
        );
    }

    #[test]
    fn nested_usage_key_is_not_top_level_usage() {
        assert_eq!(openai_chunk_usage(r#"{"meta":{"usage":{"prompt_tokens":5}},"usage":null}"#), None);
    }

    #[test]
    fn malformed_json_yields_no_usage() {
        assert_eq!(openai_chunk_usage(r#"{"usage":{"prompt_tokens":1"#), None);
        assert_eq!(openai_chunk_usage(r#"{"usage":{"prompt_tokens":"many"}}"#), None);
    }

    #[test]
    fn chat_body_usage_is_read() {
        let body = br#"{"id":"x","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":1,"total_tokens":10,"prompt_tokens_details":{"cached_tokens":0}}}"#;
        assert_eq!(openai_body_usage(body), Some(Usage { prompt_tokens: 9, completion_tokens: 1 }));
    }

    #[test]
    fn embeddings_body_usage_has_zero_completion_tokens() {
        let body = br#"{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.1,0.2]}],"model":"m","usage":{"prompt_tokens":8,"total_tokens":8}}"#;
        assert_eq!(openai_body_usage(body), Some(Usage { prompt_tokens: 8, completion_tokens: 0 }));
    }

    #[test]
    fn body_without_usage_has_none() {
        assert_eq!(openai_body_usage(br#"{"choices":[]}"#), None);
        assert_eq!(openai_body_usage(b""), None);
        assert_eq!(openai_body_usage(b"\xFF\xFE\"usage\":1"), None);
    }
}
