//! Provider wire formats: OpenAI-compatible pass-through and Anthropic translation.
//! Plain functions over bytes and JSON; knows no sockets, no runtime, no store.

pub mod anthropic;
pub mod openai;
pub mod route;
pub mod sse;

/// Token counts reported by a provider for one request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}
