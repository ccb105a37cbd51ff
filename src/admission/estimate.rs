//! Token counts for reservations: the prompt counted with the model family's real BPE
//! (o200k_base or cl100k_base, held compactly by `bpe`), plus OpenAI's framing overhead
//! per message. Models of unknown vocabulary use the heuristic of one token per four
//! characters.

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
pub fn chat_prompt(kind: TokenizerKind, messages: Option<&RawValue>) -> u64 {
    let Some(Ok(Value::Array(messages))) = messages.map(|m| serde_json::from_str(m.get())) else {
        return REPLY_PRIMING;
    };
    let mut total = REPLY_PRIMING;
    for message in &messages {
        total += PER_MESSAGE;
        if let Some(role) = message.get("role").and_then(Value::as_str) {
            total += count(kind, role);
        }
        if let Some(name) = message.get("name").and_then(Value::as_str) {
            total += 1 + count(kind, name);
        }
        match message.get("content") {
            Some(Value::String(text)) => total += count(kind, text),
            Some(Value::Array(parts)) => {
                for part in parts {
                    match part.get("text").and_then(Value::as_str) {
                        Some(text) => total += count(kind, text),
                        // Images, audio and files: OpenAI's floor for a low-detail image.
                        None => total += 85,
                    }
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
