//! By tokens: pieces of `size` tokens, each starting `overlap` tokens before the last
//! one ended, cut between words; tokens are counted with the model's tokenizer (the
//! caller's `count`), word by word, which is how a BPE tokenizer splits text first.

use super::{Chunk, Splitter};

pub struct Tokens;

impl Splitter for Tokens {
    fn name(&self) -> &'static str {
        "tokens"
    }

    fn split(
        &self,
        text: &str,
        _markdown: bool,
        (size, overlap): (usize, usize),
        count: &dyn Fn(&str) -> u64,
    ) -> Vec<Chunk> {
        by_tokens(text, size, overlap, count)
            .into_iter()
            .map(|text| Chunk {
                text,
                heading: None,
            })
            .collect()
    }
}

/// Pieces of at most `size` tokens (a single word larger than that is a piece of its
/// own), each repeating about `overlap` tokens of the one before.
pub(super) fn by_tokens(
    text: &str,
    size: usize,
    overlap: usize,
    count: &dyn Fn(&str) -> u64,
) -> Vec<String> {
    // Words with the space before them, as BPE pre-tokenizers cut them.
    let words: Vec<(&str, usize)> = words(text).map(|w| (w, count(w).max(1) as usize)).collect();
    let mut chunks = Vec::new();
    let mut start = 0;
    while start < words.len() {
        let mut end = start;
        let mut tokens = 0;
        while end < words.len() && (end == start || tokens + words[end].1 <= size) {
            tokens += words[end].1;
            end += 1;
        }
        let chunk: String = words[start..end].iter().map(|(w, _)| *w).collect();
        let chunk = chunk.trim();
        if !chunk.is_empty() {
            chunks.push(chunk.to_string());
        }
        if end == words.len() {
            break;
        }
        // Step back over the overlap, but always move forward.
        let mut back = end;
        let mut repeated = 0;
        while back > start + 1 && repeated + words[back - 1].1 <= overlap {
            repeated += words[back - 1].1;
            back -= 1;
        }
        start = back;
    }
    chunks
}

/// The text cut before each word, the whitespace kept with the word after it.
fn words(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let word_start = rest
            .find(|c: char| !c.is_whitespace())
            .unwrap_or(rest.len());
        let end = rest[word_start..]
            .find(char::is_whitespace)
            .map_or(rest.len(), |e| word_start + e);
        let (word, after) = rest.split_at(end);
        rest = after;
        Some(word)
    })
}
