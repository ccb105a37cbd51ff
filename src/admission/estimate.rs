//! Token counts for reservations: the prompt counted with the model family's real BPE
//! (o200k_base or cl100k_base, held compactly by `bpe`), plus OpenAI's framing overhead
//! per message. Models of unknown vocabulary use the heuristic of one token per four
//! characters.

use std::borrow::Cow;
use std::sync::OnceLock;

use serde_json::Value;
use serde_json::value::RawValue;

use super::bpe::{CL100K_PATTERN, O200K_PATTERN, Vocabulary};
use crate::domain::TokenizerKind;

/// Tokens framing each chat message (role and separators), and priming the reply.
const PER_MESSAGE: u64 = 3;
const REPLY_PRIMING: u64 = 3;

static O200K: OnceLock<Option<Vocabulary>> = OnceLock::new();
static CL100K: OnceLock<Option<Vocabulary>> = OnceLock::new();

/// OpenAI's published vocabularies (SHA-256 checked in the tests).
pub(crate) const O200K_FILE: &str = include_str!("../../assets/tokenizers/o200k_base.tiktoken");
pub(crate) const CL100K_FILE: &str = include_str!("../../assets/tokenizers/cl100k_base.tiktoken");

/// A vocabulary, read on first use (tens of milliseconds, on the blocking pool: see
/// `ready`), so an idle gateway holds none and a busy one only those its models use.
/// None only if the embedded file were broken, which the tests rule out; counting then
/// falls back to the heuristic rather than failing requests.
fn vocabulary(kind: TokenizerKind) -> Option<&'static Vocabulary> {
    let (cell, file, pattern) = match kind {
        TokenizerKind::O200kBase => (&O200K, O200K_FILE, O200K_PATTERN),
        TokenizerKind::Cl100kBase => (&CL100K, CL100K_FILE, CL100K_PATTERN),
        TokenizerKind::Heuristic => return None,
    };
    cell.get_or_init(|| match Vocabulary::parse(file, pattern) {
        Ok(vocabulary) => Some(vocabulary),
        Err(e) => {
            tracing::error!(error = %e, "a tokenizer vocabulary cannot be read; counting by characters");
            None
        }
    })
    .as_ref()
}

/// Whether counting with `kind` is ready now, without reading a vocabulary first.
pub fn ready(kind: TokenizerKind) -> bool {
    match kind {
        TokenizerKind::O200kBase => O200K.get().is_some(),
        TokenizerKind::Cl100kBase => CL100K.get().is_some(),
        TokenizerKind::Heuristic => true,
    }
}

/// Reads `kind`'s vocabulary on the blocking pool, once: callers that arrive while it
/// is read wait for that read instead of each starting one on a thread of its own (a
/// burst at start-up would otherwise hold hundreds of blocking threads, and the
/// pre-tokenizer keeps a matching cache for every thread that ever used it).
pub async fn load(kind: TokenizerKind) {
    static O200K_READ: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    static CL100K_READ: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    let read = match kind {
        TokenizerKind::O200kBase => &O200K_READ,
        TokenizerKind::Cl100kBase => &CL100K_READ,
        TokenizerKind::Heuristic => return,
    };
    read.get_or_init(|| async move {
        let _ = tokio::task::spawn_blocking(move || vocabulary(kind).is_some()).await;
    })
    .await;
}

/// Tokens in a piece of text.
pub fn count(kind: TokenizerKind, text: &str) -> u64 {
    if text.is_empty() {
        return 0;
    }
    match vocabulary(kind) {
        Some(vocabulary) => vocabulary.count(text),
        None => (text.chars().count() as u64).div_ceil(4),
    }
}

/// Prompt tokens of a chat request's `messages`.
///
/// Read in place: the text is counted where it lies in the body, without building a
/// JSON tree (this runs for every chat request). Parts of a message that are not what
/// OpenAI documents are skipped, as the upstream will refuse them anyway.
pub fn chat_prompt(kind: TokenizerKind, messages: Option<&RawValue>) -> u64 {
    let Some(Ok(entries)) = messages.map(|m| serde_json::from_str::<Vec<Entry<'_>>>(m.get()))
    else {
        return REPLY_PRIMING;
    };
    let mut total = REPLY_PRIMING;
    for entry in entries {
        total += PER_MESSAGE;
        let Entry::Message(message) = entry else {
            continue;
        };
        if let Some(role) = text_of(message.role) {
            total += role_tokens(kind, &role);
        }
        if let Some(name) = text_of(message.name) {
            total += 1 + count(kind, &name);
        }
        if let Some(text) = text_of(message.content) {
            total += count(kind, &text);
        } else if let Some(parts) = message.content.and_then(list_of) {
            for part in parts {
                let part = serde_json::from_str::<Part<'_>>(part.get()).ok();
                match part.and_then(|p| text_of(p.text)) {
                    Some(text) => total += count(kind, &text),
                    // Images, audio and files: OpenAI's floor for a low-detail image.
                    None => total += 85,
                }
            }
        }
        if let Some(calls) = message.tool_calls {
            // Counted as the compact JSON the model is shown.
            let compact = serde_json::from_str::<Value>(calls.get())
                .map_or_else(|_| calls.get().to_owned(), |calls| calls.to_string());
            total += count(kind, &compact);
        }
    }
    total
}

/// The fields of a chat message that hold tokens, borrowed from the body.
#[derive(Default)]
struct Message<'a> {
    role: Option<&'a RawValue>,
    name: Option<&'a RawValue>,
    content: Option<&'a RawValue>,
    tool_calls: Option<&'a RawValue>,
}

/// One item of a chat request's `messages`, read in the one pass over the list: a
/// message, or anything else (not an object, or an object naming a field twice), which
/// counts only as a message's framing. Reading the list into raw items and then each
/// item again cost a skip over every message more.
enum Entry<'a> {
    Message(Message<'a>),
    Other,
}

impl<'de> serde::Deserialize<'de> for Entry<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(EntryVisitor)
    }
}

/// The keys of a message that hold tokens.
#[derive(serde::Deserialize)]
#[serde(field_identifier, rename_all = "snake_case")]
enum Field {
    Role,
    Name,
    Content,
    ToolCalls,
    #[serde(other)]
    Other,
}

struct EntryVisitor;

impl<'de> serde::de::Visitor<'de> for EntryVisitor {
    type Value = Entry<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a chat message")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Entry<'de>, A::Error> {
        let mut message = Message::default();
        let (mut seen, mut twice) = (0u8, false);
        while let Some(field) = map.next_key::<Field>()? {
            let (slot, bit) = match field {
                Field::Role => (&mut message.role, 1),
                Field::Name => (&mut message.name, 2),
                Field::Content => (&mut message.content, 4),
                Field::ToolCalls => (&mut message.tool_calls, 8),
                Field::Other => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                    continue;
                }
            };
            twice |= seen & bit != 0;
            seen |= bit;
            // A null is no value, as it is for a field that is absent.
            *slot = map.next_value::<Option<&'de RawValue>>()?;
        }
        Ok(if twice {
            Entry::Other
        } else {
            Entry::Message(message)
        })
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Entry<'de>, A::Error> {
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Ok(Entry::Other)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Entry<'de>, E> {
        Ok(Entry::Other)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Entry<'de>, E> {
        Ok(Entry::Other)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Entry<'de>, E> {
        Ok(Entry::Other)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Entry<'de>, E> {
        Ok(Entry::Other)
    }

    fn visit_str<E>(self, _: &str) -> Result<Entry<'de>, E> {
        Ok(Entry::Other)
    }

    fn visit_unit<E>(self) -> Result<Entry<'de>, E> {
        Ok(Entry::Other)
    }
}

#[derive(serde::Deserialize)]
struct Part<'a> {
    #[serde(borrow, default)]
    text: Option<&'a RawValue>,
}

/// A JSON string, borrowed unless it has escapes; None for anything else.
fn text_of(raw: Option<&RawValue>) -> Option<Cow<'_, str>> {
    #[derive(serde::Deserialize)]
    struct Text<'a>(#[serde(borrow)] Cow<'a, str>);
    let raw = raw?.get();
    if !raw.starts_with('"') {
        return None;
    }
    // A string already checked as JSON, with no escape in it, is its text between the
    // quotes: most are, and reading them again with serde cost as much as counting.
    let inner = &raw[1..raw.len() - 1];
    if !inner.contains('\\') {
        return Some(Cow::Borrowed(inner));
    }
    serde_json::from_str::<Text<'_>>(raw)
        .ok()
        .map(|text| text.0)
}

/// Tokens in a message's role. The roles OpenAI documents are one token each in both
/// vocabularies (checked in the tests), so the BPE runs only for others.
fn role_tokens(kind: TokenizerKind, role: &str) -> u64 {
    let known = matches!(
        role,
        "system" | "user" | "assistant" | "tool" | "developer" | "function"
    );
    if known && kind != TokenizerKind::Heuristic {
        1
    } else {
        count(kind, role)
    }
}

/// A JSON list's items, unparsed; None for anything else.
fn list_of(raw: &RawValue) -> Option<Vec<&RawValue>> {
    raw.get()
        .starts_with('[')
        .then(|| serde_json::from_str(raw.get()).ok())
        .flatten()
}

/// Prompt tokens of a Responses API request: its `instructions` and its `input`, a text
/// or a list of items (messages are counted as chat counts them; function calls and
/// their outputs by their JSON).
pub fn responses_prompt(
    kind: TokenizerKind,
    instructions: Option<&RawValue>,
    input: Option<&RawValue>,
) -> u64 {
    let text = |raw: Option<&RawValue>| match raw.map(|r| serde_json::from_str::<Value>(r.get())) {
        Some(Ok(Value::String(text))) => Some(text),
        _ => None,
    };
    let mut total = text(instructions).map_or(0, |t| PER_MESSAGE + count(kind, &t));
    if let Some(single) = text(input) {
        return total + REPLY_PRIMING + PER_MESSAGE + count(kind, &single);
    }
    let Some(Ok(Value::Array(items))) = input.map(|i| serde_json::from_str::<Value>(i.get()))
    else {
        return total + REPLY_PRIMING;
    };
    let (messages, others): (Vec<&Value>, Vec<&Value>) =
        items.iter().partition(|item| item.get("content").is_some());
    if let Ok(messages) = serde_json::value::to_raw_value(&messages) {
        total += chat_prompt(kind, Some(&messages));
    }
    for item in others {
        let mut item = item.clone();
        if let Some(object) = item.as_object_mut() {
            object.remove("id");
            object.remove("status");
        }
        total += PER_MESSAGE + count(kind, &item.to_string());
    }
    total
}

/// Prompt tokens of an Anthropic Messages request: its `system` (a text or text blocks)
/// and its `messages`, counted as chat counts them (blocks by their text).
pub fn messages_prompt(
    kind: TokenizerKind,
    system: Option<&RawValue>,
    messages: Option<&RawValue>,
) -> u64 {
    let system = match system.map(|s| serde_json::from_str::<Value>(s.get())) {
        Some(Ok(Value::String(text))) => PER_MESSAGE + count(kind, &text),
        Some(Ok(Value::Array(blocks))) => {
            let text: Vec<&str> = blocks
                .iter()
                .filter_map(|b| b.get("text").and_then(Value::as_str))
                .collect();
            PER_MESSAGE + count(kind, &text.join("\n"))
        }
        _ => 0,
    };
    system + chat_prompt(kind, messages)
}

/// Input tokens of an embeddings request's `input`.
pub fn embeddings_input(kind: TokenizerKind, input: Option<&RawValue>) -> u64 {
    let Some(Ok(input)) = input.map(|i| serde_json::from_str::<Value>(i.get())) else {
        return 0;
    };
    let one = |item: &Value| match item {
        Value::String(text) => count(kind, text),
        Value::Array(ids) => ids.len() as u64,
        _ => 0,
    };
    match &input {
        Value::Array(items) if items.iter().all(Value::is_number) => items.len() as u64,
        Value::Array(items) => items.iter().map(one).sum(),
        other => one(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(json: &str) -> Box<RawValue> {
        RawValue::from_string(json.to_string()).unwrap()
    }

    #[test]
    fn the_documented_roles_are_one_token_in_both_vocabularies() {
        for kind in [TokenizerKind::O200kBase, TokenizerKind::Cl100kBase] {
            for role in [
                "system",
                "user",
                "assistant",
                "tool",
                "developer",
                "function",
            ] {
                assert_eq!(count(kind, role), 1, "{role} in {kind:?}");
                assert_eq!(role_tokens(kind, role), 1, "{role} in {kind:?}");
            }
            assert_eq!(role_tokens(kind, "narrator"), count(kind, "narrator"));
        }
        let heuristic = TokenizerKind::Heuristic;
        assert_eq!(role_tokens(heuristic, "assistant"), 3);
    }

    #[test]
    fn a_text_is_read_whole_with_or_without_escapes() {
        let plain = raw(r#""Say hello, in one short sentence.""#);
        let read = text_of(Some(&plain));
        assert!(matches!(
            read,
            Some(Cow::Borrowed("Say hello, in one short sentence."))
        ));
        let escaped = raw(r#""a \"quote\" and\na line \u00e9""#);
        assert_eq!(
            text_of(Some(&escaped)).as_deref(),
            Some("a \"quote\" and\na line \u{e9}")
        );
        assert_eq!(text_of(Some(&raw(r#""""#))).as_deref(), Some(""));
        assert_eq!(text_of(Some(&raw("42"))), None);
        assert_eq!(text_of(None), None);
    }

    #[test]
    fn a_responses_prompt_counts_instructions_and_every_input_item() {
        let k = TokenizerKind::O200kBase;
        let text = responses_prompt(
            k,
            Some(&raw(r#""Be brief.""#)),
            Some(&raw(r#""hello world""#)),
        );
        let as_chat = chat_prompt(
            k,
            Some(&raw(
                r#"[{"role":"system","content":"Be brief."},{"role":"user","content":"hello world"}]"#,
            )),
        );
        // The role names are the only difference.
        assert_eq!(text + count(k, "system") + count(k, "user"), as_chat);
        let items = raw(
            r#"[{"role":"user","content":"hello world"},{"type":"function_call_output","call_id":"call_1","output":"72 degrees and sunny"}]"#,
        );
        let with_output = responses_prompt(k, None, Some(&items));
        let without = responses_prompt(
            k,
            None,
            Some(&raw(r#"[{"role":"user","content":"hello world"}]"#)),
        );
        assert!(with_output > without + count(k, "72 degrees and sunny"));
        assert_eq!(responses_prompt(k, None, None), REPLY_PRIMING);
    }

    #[test]
    fn the_real_bpe_counts_known_strings() {
        // "hello world" is two tokens in both encodings.
        assert_eq!(count(TokenizerKind::O200kBase, "hello world"), 2);
        assert_eq!(count(TokenizerKind::Cl100kBase, "hello world"), 2);
        assert_eq!(count(TokenizerKind::Heuristic, "hello world"), 3);
    }

    #[test]
    fn chat_prompts_count_text_and_framing() {
        let messages = raw(r#"[{"role":"user","content":"hello world"}]"#);
        // 3 priming + 3 per message + "user" (1) + "hello world" (2)
        assert_eq!(chat_prompt(TokenizerKind::O200kBase, Some(&messages)), 9);
        let parts = raw(r#"[{"role":"user","content":[{"type":"text","text":"hello world"}]}]"#);
        assert_eq!(chat_prompt(TokenizerKind::O200kBase, Some(&parts)), 9);
        // A message naming a field twice counts as its framing only.
        let twice = raw(r#"[{"role":"user","content":"hello","content":"world"}]"#);
        assert_eq!(chat_prompt(TokenizerKind::O200kBase, Some(&twice)), 6);
    }

    #[test]
    fn chat_prompts_are_read_in_place_as_a_json_tree_would_count_them() {
        // The count as it was made from a whole JSON tree, before reading in place.
        fn from_tree(kind: TokenizerKind, messages: &str) -> u64 {
            let Ok(Value::Array(messages)) = serde_json::from_str(messages) else {
                return REPLY_PRIMING;
            };
            let text = |v: Option<&Value>| v.and_then(Value::as_str).map(|t| count(kind, t));
            let mut total = REPLY_PRIMING;
            for message in &messages {
                total += PER_MESSAGE;
                total += text(message.get("role")).unwrap_or(0);
                total += text(message.get("name")).map_or(0, |n| n + 1);
                match message.get("content") {
                    Some(Value::String(t)) => total += count(kind, t),
                    Some(Value::Array(parts)) => {
                        for part in parts {
                            total += text(part.get("text")).unwrap_or(85);
                        }
                    }
                    _ => {}
                }
                if let Some(calls) = message.get("tool_calls") {
                    total += count(kind, &calls.to_string());
                }
            }
            total
        }
        let bodies = [
            r#"[{"role":"system","content":"Answer in \"quotes\" \u00e9t\u00e9.\nTwo lines."}]"#,
            r#"[{"role":"user","name":"ada","content":[{"type":"text","text":"look"},{"type":"image_url","image_url":{"url":"https://x/y.png"}}]}]"#,
            r#"[ {"role" : "assistant", "content" : null, "tool_calls" : [ {"id":"call_1","type":"function","function":{"name":"f","arguments":"{\"a\": 1}"}} ] },
                {"role":"tool","tool_call_id":"call_1","content":"72 and sunny"} ]"#,
            r#"[{"role":"user","content":"hi"}, 7, "text", {"role": 3, "content": {"odd": true}}]"#,
            r#"[null, true, -1.5, [{"role":"user","content":"nested"}], {"role":null,"content":"x","extra":[1,{"a":2}]}]"#,
            r#"{"role":"user","content":"not a list"}"#,
            r#"[]"#,
        ];
        for kind in [TokenizerKind::O200kBase, TokenizerKind::Heuristic] {
            for body in bodies {
                let in_place = chat_prompt(kind, Some(&raw(body)));
                assert_eq!(in_place, from_tree(kind, body), "{kind:?}: {body}");
            }
        }
    }

    #[test]
    fn embeddings_inputs_of_every_shape() {
        let kind = TokenizerKind::Cl100kBase;
        assert_eq!(embeddings_input(kind, Some(&raw(r#""hello world""#))), 2);
        assert_eq!(
            embeddings_input(kind, Some(&raw(r#"["hello world","hello"]"#))),
            3
        );
        assert_eq!(embeddings_input(kind, Some(&raw("[1,2,3]"))), 3);
        assert_eq!(embeddings_input(kind, Some(&raw("[[1,2],[3]]"))), 3);
    }
}
