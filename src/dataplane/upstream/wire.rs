//! HTTP/1.1 as the gateway speaks it to providers, without IO: the request bytes, the response
//! head, and the body's framing (length, chunked or until close). Knows no sockets and no policy.

use bytes::{Bytes, BytesMut};
use http::StatusCode;

/// Largest response head accepted from a provider.
pub const MAX_HEAD: usize = 64 * 1024;
/// Header lines parsed in a response head; a provider sending more is refused.
const MAX_HEADERS: usize = 96;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("malformed response head: {0}")]
    Head(httparse::Error),
    #[error("response head over {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error("invalid content-length")]
    ContentLength,
    #[error("the provider answered with a protocol switch (101)")]
    Upgrade,
    #[error("malformed chunked body: {0}")]
    Chunk(&'static str),
    #[error("the connection closed {0}")]
    Closed(&'static str),
}

/// A POST with a JSON body, as one buffer (head and body) ready to write and to write again on
/// a fresh connection when a kept-alive one turned out to be closed.
/// Header values come from `HeaderValue`s, which hold no CR or LF.
pub fn post(path: &str, authority: &[u8], auth: &[(&str, &[u8])], body: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(160 + path.len() + body.len());
    out.extend_from_slice(b"POST ");
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    out.extend_from_slice(authority);
    out.extend_from_slice(b"\r\ncontent-type: application/json\r\ncontent-length: ");
    put_u64(&mut out, body.len() as u64);
    for (name, value) in auth {
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
    }
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(body);
    out.freeze()
}

/// Appends `n` in decimal (core::fmt costs several times more for the numbers of every response).
pub fn put_u64(out: &mut BytesMut, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// What the gateway needs of a response head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub status: StatusCode,
    /// `retry-after` in whole seconds, when the provider sent one in that form.
    pub retry_after: Option<u64>,
    pub framing: Framing,
    /// The provider allows another request on this connection after this response.
    pub keep_alive: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Length(u64),
    Chunked,
    /// The body ends when the provider closes the connection.
    UntilClose,
}

/// Parses a response head from the front of `buf`: `Ok(None)` until the whole head is there.
/// Interim (1xx) responses are skipped. Returns the head and its length in bytes.
pub fn parse_head(buf: &[u8]) -> Result<Option<(usize, Head)>, WireError> {
    let mut skipped = 0;
    loop {
        let rest = &buf[skipped..];
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut headers);
        let len = match resp.parse(rest).map_err(WireError::Head)? {
            httparse::Status::Complete(len) => len,
            httparse::Status::Partial if buf.len() >= MAX_HEAD => return Err(WireError::HeadTooLarge),
            httparse::Status::Partial => return Ok(None),
        };
        let code = resp.code.unwrap_or(0);
        if code == 101 {
            return Err(WireError::Upgrade);
        }
        if (100..200).contains(&code) {
            skipped += len;
            continue;
        }
        let status = StatusCode::from_u16(code).map_err(|_| WireError::Head(httparse::Error::Status))?;
        let head = head_of(status, resp.version == Some(1), resp.headers)?;
        return Ok(Some((skipped + len, head)));
    }
}

fn head_of(status: StatusCode, http11: bool, headers: &[httparse::Header<'_>]) -> Result<Head, WireError> {
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut close = !http11;
    let mut retry_after = None;
    for h in headers {
        let value = std::str::from_utf8(h.value).unwrap_or("").trim();
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = value.parse::<u64>().map_err(|_| WireError::ContentLength)?;
            // Repeated lengths must agree (RFC 9112 §6.3): anything else is a smuggling vector.
            if length.is_some_and(|l| l != n) {
                return Err(WireError::ContentLength);
            }
            length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            // Only the final coding frames the message.
            chunked = value.rsplit(',').next().is_some_and(|c| c.trim().eq_ignore_ascii_case("chunked"));
        } else if h.name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    close = true;
                } else if token.eq_ignore_ascii_case("keep-alive") && !http11 {
                    close = false;
                }
            }
        } else if h.name.eq_ignore_ascii_case("retry-after") {
            retry_after = value.parse::<u64>().ok();
        }
    }
    let framing = if status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        Framing::Length(0)
    } else if chunked {
        // A length next to chunked is ignored, and the connection is not trusted afterwards.
        if length.is_some() {
            close = true;
        }
        Framing::Chunked
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        close = true;
        Framing::UntilClose
    };
    Ok(Head { status, retry_after, framing, keep_alive: !close })
}

/// Takes a body's data out of the bytes read from the connection, as they arrive.
#[derive(Debug)]
pub struct Decoder {
    state: State,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Length(u64),
    ChunkSize,
    ChunkData(u64),
    ChunkEnd,
    Trailers,
    UntilClose,
    Done,
}

impl Decoder {
    pub fn new(framing: Framing) -> Self {
        let state = match framing {
            Framing::Length(0) => State::Done,
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::ChunkSize,
            Framing::UntilClose => State::UntilClose,
        };
        Self { state }
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Bytes of body still to come, when the framing says.
    pub fn remaining(&self) -> Option<u64> {
        match self.state {
            State::Length(n) => Some(n),
            State::Done => Some(0),
            _ => None,
        }
    }

    /// The next piece of body data at the front of `buf`, consumed from it. `Ok(None)` means more
    /// bytes are needed (or the body is done: see [`Decoder::is_done`]).
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, WireError> {
        loop {
            match self.state {
                State::Done => return Ok(None),
                State::Length(n) | State::ChunkData(n) => {
                    if buf.is_empty() {
                        return Ok(None);
                    }
                    let take = usize::try_from(n).unwrap_or(usize::MAX).min(buf.len());
                    let left = n - take as u64;
                    self.state = match self.state {
                        State::Length(_) if left == 0 => State::Done,
                        State::Length(_) => State::Length(left),
                        _ if left == 0 => State::ChunkEnd,
                        _ => State::ChunkData(left),
                    };
                    return Ok(Some(buf.split_to(take).freeze()));
                }
                State::UntilClose => {
                    return Ok((!buf.is_empty()).then(|| buf.split().freeze()));
                }
                State::ChunkSize => match httparse::parse_chunk_size(buf) {
                    Ok(httparse::Status::Complete((used, size))) => {
                        let _ = buf.split_to(used);
                        self.state = if size == 0 { State::Trailers } else { State::ChunkData(size) };
                    }
                    Ok(httparse::Status::Partial) if buf.len() > 1024 => {
                        return Err(WireError::Chunk("size line too long"));
                    }
                    Ok(httparse::Status::Partial) => return Ok(None),
                    Err(_) => return Err(WireError::Chunk("invalid chunk size")),
                },
                State::ChunkEnd => {
                    if buf.len() < 2 {
                        return Ok(None);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(WireError::Chunk("chunk not followed by CRLF"));
                    }
                    let _ = buf.split_to(2);
                    self.state = State::ChunkSize;
                }
                State::Trailers => {
                    let mut fields = [httparse::EMPTY_HEADER; 16];
                    match httparse::parse_headers(buf, &mut fields) {
                        Ok(httparse::Status::Complete((used, _))) => {
                            let _ = buf.split_to(used);
                            self.state = State::Done;
                        }
                        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
                            return Err(WireError::Chunk("trailers too large"));
                        }
                        Ok(httparse::Status::Partial) => return Ok(None),
                        Err(_) => return Err(WireError::Chunk("malformed trailers")),
                    }
                }
            }
        }
    }

    /// The provider closed the connection: the end of an until-close body, an error otherwise.
    pub fn closed(&mut self) -> Result<(), WireError> {
        match self.state {
            State::UntilClose | State::Done => {
                self.state = State::Done;
                Ok(())
            }
            _ => Err(WireError::Closed("before the end of the response body")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &str) -> Head {
        match parse_head(raw.as_bytes()) {
            Ok(Some((len, h))) => {
                assert_eq!(len, raw.len(), "the whole head is consumed");
                h
            }
            other => panic!("{other:?}"),
        }
    }

    /// Feeds `wire` to a decoder `step` bytes at a time; returns the body and whether it ended.
    fn decode_in_steps(framing: Framing, wire: &[u8], step: usize) -> Result<(Vec<u8>, bool), WireError> {
        let mut d = Decoder::new(framing);
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        for piece in wire.chunks(step) {
            buf.extend_from_slice(piece);
            while let Some(b) = d.decode(&mut buf)? {
                body.extend_from_slice(&b);
            }
        }
        Ok((body, d.is_done()))
    }

    #[test]
    fn a_request_is_one_buffer_with_length_host_and_auth() {
        let req = post("/v1/chat/completions", b"api.example.com", &[("authorization", b"Bearer sk-1")], b"{\"a\":1}");
        assert_eq!(
            &req[..],
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: api.example.com\r\ncontent-type: application/json\r\n\
              content-length: 7\r\nauthorization: Bearer sk-1\r\n\r\n{\"a\":1}"
        );
    }

    #[test]
    fn numbers_are_written_in_decimal() {
        for n in [0, 7, 10, 99, 1234567890, u64::MAX] {
            let mut out = BytesMut::new();
            put_u64(&mut out, n);
            assert_eq!(&out[..], n.to_string().as_bytes());
        }
    }

    #[test]
    fn a_head_gives_status_length_and_keep_alive() {
        let h = head("HTTP/1.1 200 OK\r\nContent-Length: 12\r\nContent-Type: application/json\r\n\r\n");
        assert_eq!(
            h,
            Head { status: StatusCode::OK, retry_after: None, framing: Framing::Length(12), keep_alive: true }
        );
    }

    #[test]
    fn a_partial_head_asks_for_more_bytes() {
        assert_eq!(parse_head(b"HTTP/1.1 200 OK\r\nContent-Len"), Ok(None));
    }

    #[test]
    fn interim_responses_are_skipped() {
        let h = head(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 429 Too Many Requests\r\nretry-after: 7\r\ncontent-length: 0\r\n\r\n",
        );
        assert_eq!(h.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(h.retry_after, Some(7));
        assert_eq!(h.framing, Framing::Length(0));
    }

    #[test]
    fn chunked_wins_over_a_length_and_the_connection_is_not_reused() {
        let h = head("HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: gzip, chunked\r\n\r\n");
        assert_eq!(h.framing, Framing::Chunked);
        assert!(!h.keep_alive);
    }

    #[test]
    fn conflicting_lengths_are_refused() {
        let raw = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n";
        assert_eq!(parse_head(raw), Err(WireError::ContentLength));
        assert_eq!(parse_head(b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n"), Err(WireError::ContentLength));
    }

    #[test]
    fn without_framing_the_body_runs_until_close_and_the_connection_ends() {
        let h = head("HTTP/1.1 200 OK\r\n\r\n");
        assert_eq!(h.framing, Framing::UntilClose);
        assert!(!h.keep_alive);
    }

    #[test]
    fn http10_closes_unless_asked_to_keep_alive() {
        assert!(!head("HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n").keep_alive);
        assert!(head("HTTP/1.0 200 OK\r\ncontent-length: 0\r\nconnection: keep-alive\r\n\r\n").keep_alive);
        assert!(!head("HTTP/1.1 200 OK\r\ncontent-length: 0\r\nConnection: Close\r\n\r\n").keep_alive);
    }

    #[test]
    fn no_content_has_no_body_whatever_it_claims() {
        assert_eq!(head("HTTP/1.1 204 No Content\r\ncontent-length: 9\r\n\r\n").framing, Framing::Length(0));
    }

    #[test]
    fn an_upgrade_and_a_huge_head_are_refused() {
        assert_eq!(parse_head(b"HTTP/1.1 101 Switching Protocols\r\n\r\n"), Err(WireError::Upgrade));
        let mut big = b"HTTP/1.1 200 OK\r\nx: ".to_vec();
        big.resize(MAX_HEAD + 10, b'a');
        assert_eq!(parse_head(&big), Err(WireError::HeadTooLarge));
        assert!(matches!(parse_head(b"HTTX/1.1 200 OK\r\n\r\n"), Err(WireError::Head(_))));
    }

    #[test]
    fn a_length_body_ends_at_its_length_and_leaves_what_follows() {
        let mut d = Decoder::new(Framing::Length(5));
        let mut buf = BytesMut::from(&b"hel"[..]);
        assert_eq!(d.decode(&mut buf), Ok(Some(Bytes::from_static(b"hel"))));
        assert_eq!(d.decode(&mut buf), Ok(None));
        assert!(!d.is_done());
        buf.extend_from_slice(b"loHTTP/1.1");
        assert_eq!(d.decode(&mut buf), Ok(Some(Bytes::from_static(b"lo"))));
        assert!(d.is_done());
        assert_eq!(&buf[..], b"HTTP/1.1");
    }

    #[test]
    fn chunked_bodies_decode_the_same_however_the_bytes_are_split() {
        let wire = b"5\r\nhello\r\n1;ext=1\r\n \r\n6\r\nworld!\r\n0\r\nx-trailer: 1\r\n\r\n";
        for step in 1..wire.len() {
            let (body, done) = decode_in_steps(Framing::Chunked, wire, step).unwrap_or_else(|e| panic!("{step}: {e}"));
            assert_eq!(body, b"hello world!", "step {step}");
            assert!(done, "step {step}");
        }
    }

    #[test]
    fn a_chunked_body_without_its_last_chunk_is_not_done() {
        let (body, done) = decode_in_steps(Framing::Chunked, b"3\r\nabc\r\n", 4).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(body, b"abc");
        assert!(!done);
        let mut d = Decoder::new(Framing::Chunked);
        assert!(d.closed().is_err(), "a close mid-body is an error");
    }

    #[test]
    fn malformed_chunks_are_errors() {
        assert!(decode_in_steps(Framing::Chunked, b"zz\r\nabc", 64).is_err());
        assert!(decode_in_steps(Framing::Chunked, b"3\r\nabcXY", 64).is_err());
    }

    #[test]
    fn an_until_close_body_ends_with_the_close() {
        let (body, done) = decode_in_steps(Framing::UntilClose, b"data: 1\n\n", 3).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(body, b"data: 1\n\n");
        assert!(!done);
        let mut d = Decoder::new(Framing::UntilClose);
        assert_eq!(d.closed(), Ok(()));
        assert!(d.is_done());
    }
}
