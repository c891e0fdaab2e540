//! Deterministic text helpers shared by both wire formats: borrowed string and
//! message-content deserialization, token estimates, truncation and splitting.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// A JSON string that borrows from the request body when it has no escapes.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Str<'a>(pub Cow<'a, str>);

impl Str<'_> {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

struct StrVisitor;

impl<'de> Visitor<'de> for StrVisitor {
    type Value = Str<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Str(Cow::Borrowed(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Str(Cow::Owned(v.to_owned())))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Str(Cow::Owned(v)))
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Str<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(StrVisitor)
    }
}

/// The text of a message's `content` (or Anthropic's `system`): a plain
/// string, or an array of parts/blocks whose `text` fields are concatenated
/// (non-text parts such as images, tool_use or tool_result count as no text).
/// `null` and objects are empty text.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Text<'a>(pub Cow<'a, str>);

impl Text<'_> {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// One element of a content array; only its `text` matters here.
#[derive(Deserialize)]
struct Part<'a> {
    #[serde(borrow, default)]
    text: Option<Str<'a>>,
}

struct TextVisitor;

impl<'de> Visitor<'de> for TextVisitor {
    type Value = Text<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string, an array of content parts, or null")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Text(Cow::Borrowed(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Text(Cow::Owned(v.to_owned())))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Text(Cow::Owned(v)))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Text::default())
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Text::default())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut acc: Option<Cow<'de, str>> = None;
        while let Some(part) = seq.next_element::<Part<'de>>()? {
            let Some(Str(t)) = part.text else { continue };
            acc = Some(match acc {
                None => t,
                Some(prev) => {
                    let mut s = prev.into_owned();
                    s.push_str(&t);
                    Cow::Owned(s)
                }
            });
        }
        Ok(Text(acc.unwrap_or_default()))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Text::default())
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(TextVisitor)
    }
}

/// Number of Unicode scalar values in `s`.
pub fn char_count(s: &str) -> usize {
    s.chars().count()
}

/// The deterministic token estimate: ceil(chars / 4).
pub fn tokens_for_chars(chars: usize) -> u64 {
    chars.div_ceil(4) as u64
}

/// Token estimate of a text.
pub fn tokens(s: &str) -> u64 {
    tokens_for_chars(char_count(s))
}

/// The first `n` characters of `s` (all of it if shorter).
pub fn prefix_chars(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// The reply text after applying a `max_tokens` limit: when the limit is
/// smaller than the text's token estimate, the text is cut to `max_tokens * 4`
/// characters. Returns the (possibly cut) text and whether it was cut.
pub fn apply_max_tokens(content: &str, max_tokens: Option<u64>) -> (&str, bool) {
    match max_tokens {
        Some(max) if max < tokens(content) => {
            let limit = usize::try_from(max.saturating_mul(4)).unwrap_or(usize::MAX);
            (prefix_chars(content, limit), true)
        }
        _ => (content, false),
    }
}

/// Splits `s` into exactly `n` (at least 1) consecutive pieces of nearly equal
/// character length whose concatenation is `s`. Pieces may be empty when `s`
/// has fewer than `n` characters.
pub fn split_even(s: &str, n: usize) -> Vec<&str> {
    let n = n.max(1);
    let total = char_count(s);
    // Byte offset of every char boundary, plus the end.
    let mut bounds: Vec<usize> = s.char_indices().map(|(i, _)| i).collect();
    bounds.push(s.len());
    let mut out = Vec::with_capacity(n);
    let mut start = 0usize;
    for i in 1..=n {
        let end_char = total * i / n;
        let end = bounds.get(end_char).copied().unwrap_or(s.len());
        out.push(s.get(start..end).unwrap_or(""));
        start = end;
    }
    out
}

/// True if `haystack` contains `needle` (ASCII, case-insensitive).
pub fn contains_ignore_ascii_case(haystack: &str, needle: &str) -> bool {
    let (h, n) = (haystack.as_bytes(), needle.as_bytes());
    if n.is_empty() {
        return true;
    }
    h.windows(n.len()).any(|w| w.eq_ignore_ascii_case(n))
}

/// 8 deterministic floats in [-1, 1] derived from `bytes` (FNV-1a seed,
/// splitmix64 stream), rounded to 6 decimals.
pub fn embedding_for(bytes: &[u8]) -> [f64; 8] {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let mut out = [0.0f64; 8];
    for v in &mut out {
        h = h.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = h;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        // 53 high-quality bits -> [0, 1) -> [-1, 1)
        let unit = (z >> 11) as f64 / (1u64 << 53) as f64;
        *v = ((unit * 2.0 - 1.0) * 1e6).round() / 1e6;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_estimate_is_ceil_chars_over_4() {
        assert_eq!(tokens(""), 0);
        assert_eq!(tokens("a"), 1);
        assert_eq!(tokens("abcd"), 1);
        assert_eq!(tokens("abcde"), 2);
        // chars, not bytes
        assert_eq!(tokens("ééééé"), 2);
        assert_eq!(tokens_for_chars(31), 8);
    }

    #[test]
    fn prefix_is_char_based() {
        assert_eq!(prefix_chars("héllo", 2), "hé");
        assert_eq!(prefix_chars("abc", 64), "abc");
        assert_eq!(prefix_chars("abc", 0), "");
    }

    #[test]
    fn max_tokens_truncates_to_4_chars_per_token() {
        let content = "mock reply to: Say hello in one short sentence."; // 47 chars -> 12 tokens
        assert_eq!(tokens(content), 12);
        assert_eq!(apply_max_tokens(content, None), (content, false));
        assert_eq!(apply_max_tokens(content, Some(12)), (content, false));
        assert_eq!(apply_max_tokens(content, Some(100)), (content, false));
        let (cut, truncated) = apply_max_tokens(content, Some(3));
        assert!(truncated);
        assert_eq!(cut, "mock reply t");
        assert_eq!(tokens(cut), 3);
        assert_eq!(apply_max_tokens(content, Some(0)), ("", true));
    }

    #[test]
    fn split_even_concatenates_back() {
        for s in ["", "a", "abc", "mock reply to: hello", "ééé→x"] {
            for n in 0..8 {
                let parts = split_even(s, n);
                assert_eq!(parts.len(), n.max(1));
                assert_eq!(parts.concat(), s);
            }
        }
        assert_eq!(split_even("abcdef", 3), vec!["ab", "cd", "ef"]);
    }

    #[test]
    fn text_content_forms() {
        let t: Text<'_> = serde_json::from_str(r#""hello""#).unwrap();
        assert_eq!(t.as_str(), "hello");
        assert!(matches!(t.0, Cow::Borrowed(_)));
        let t: Text<'_> = serde_json::from_str(r#""he\"llo""#).unwrap();
        assert_eq!(t.as_str(), "he\"llo");
        let t: Text<'_> = serde_json::from_str(
            r#"[{"type":"text","text":"ab"},{"type":"image_url","image_url":{"url":"x"}},{"type":"text","text":"cd"}]"#,
        )
        .unwrap();
        assert_eq!(t.as_str(), "abcd");
        let t: Text<'_> = serde_json::from_str("null").unwrap();
        assert_eq!(t.as_str(), "");
        let t: Text<'_> = serde_json::from_str(r#"{"weird":1}"#).unwrap();
        assert_eq!(t.as_str(), "");
    }

    #[test]
    fn case_insensitive_contains() {
        assert!(contains_ignore_ascii_case("What's the Weather in Paris?", "weather"));
        assert!(!contains_ignore_ascii_case("sunny", "weather"));
    }

    #[test]
    fn embeddings_are_deterministic_and_bounded() {
        let a = embedding_for(b"hello");
        assert_eq!(a, embedding_for(b"hello"));
        assert_ne!(a, embedding_for(b"hellp"));
        assert!(a.iter().all(|v| (-1.0..=1.0).contains(v)));
    }
}
