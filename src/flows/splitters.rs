//! Splitters: a document cut into the chunks that are embedded, each small enough for
//! the embedding model and for a prompt.
//!
//! - `tokens`: pieces of `size` tokens, each starting `overlap` tokens before the last
//!   one ended, cut between words; tokens are counted with the model's tokenizer (the
//!   caller's `count`), word by word, which is how a BPE tokenizer splits text first.
//! - `headings`: one chunk per markdown section, titled with its heading path
//!   (`Refunds > Late returns`); a section larger than `size` tokens is cut by tokens.

use serde::Deserialize;

/// How documents are cut, as a step writes it: `{ by = "tokens", size = 200,
/// overlap = 20 }` or `{ by = "headings" }`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Split {
    pub by: SplitBy,
    /// The most tokens a chunk holds. Default 400.
    #[serde(default = "default_size")]
    pub size: usize,
    /// Tokens a `tokens` chunk repeats from the end of the one before. Default 40.
    #[serde(default = "default_overlap")]
    pub overlap: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SplitBy {
    Tokens,
    Headings,
}

fn default_size() -> usize {
    400
}

fn default_overlap() -> usize {
    40
}

impl Split {
    /// What is wrong with it, if anything.
    pub fn check(&self) -> Result<(), String> {
        if self.size == 0 {
            return Err("size must be at least 1 token".into());
        }
        if self.overlap >= self.size {
            return Err(format!(
                "overlap ({}) must be smaller than size ({})",
                self.overlap, self.size
            ));
        }
        Ok(())
    }
}

/// A chunk: its text, and the heading path it sits under (headings only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub text: String,
    pub heading: Option<String>,
}

/// Cuts `text` as `split` says, counting tokens with `count`.
pub fn split(text: &str, split: &Split, count: &dyn Fn(&str) -> u64) -> Vec<Chunk> {
    match split.by {
        SplitBy::Tokens => by_tokens(text, split.size, split.overlap, count)
            .into_iter()
            .map(|text| Chunk {
                text,
                heading: None,
            })
            .collect(),
        SplitBy::Headings => by_headings(text)
            .into_iter()
            .flat_map(|(heading, body)| {
                by_tokens(&body, split.size, split.overlap, count)
                    .into_iter()
                    .map(move |text| Chunk {
                        text,
                        heading: heading.clone(),
                    })
            })
            .collect(),
    }
}

/// Pieces of at most `size` tokens (a single word larger than that is a piece of its
/// own), each repeating about `overlap` tokens of the one before.
fn by_tokens(text: &str, size: usize, overlap: usize, count: &dyn Fn(&str) -> u64) -> Vec<String> {
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

/// Markdown sections: (heading path, body with its heading line), in order. Text
/// before the first heading is a section without one. Fenced code is not read for
/// headings.
fn by_headings(text: &str) -> Vec<(Option<String>, String)> {
    let mut sections: Vec<(Option<String>, String)> = Vec::new();
    let mut path: Vec<(usize, String)> = Vec::new();
    let mut body = String::new();
    let mut heading: Option<String> = None;
    let mut fenced = false;
    for line in text.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("```") || trimmed.starts_with("~~~") {
            fenced = !fenced;
        }
        let level = trimmed.chars().take_while(|c| *c == '#').count();
        let is_heading = !fenced
            && (1..=6).contains(&level)
            && trimmed[level..].starts_with(' ')
            && line.len() - trimmed.len() < 4;
        if is_heading {
            if !body.trim().is_empty() {
                sections.push((heading.take(), std::mem::take(&mut body)));
            }
            body.clear();
            let title = trimmed[level..]
                .trim()
                .trim_end_matches('#')
                .trim()
                .to_string();
            path.retain(|(l, _)| *l < level);
            path.push((level, title));
            heading = Some(
                path.iter()
                    .map(|(_, t)| t.as_str())
                    .collect::<Vec<_>>()
                    .join(" > "),
            );
        }
        body.push_str(line);
        body.push('\n');
    }
    if !body.trim().is_empty() {
        sections.push((heading, body));
    }
    sections
}

#[cfg(test)]
mod tests {
    use super::*;

    fn by_words(text: &str) -> u64 {
        text.split_whitespace().count() as u64
    }

    #[test]
    fn token_chunks_hold_at_most_size_tokens_and_overlap_the_one_before() {
        let text: String = (0..100).map(|i| format!("w{i} ")).collect();
        let cut = Split {
            by: SplitBy::Tokens,
            size: 10,
            overlap: 3,
        };
        let chunks = split(&text, &cut, &by_words);
        assert!(chunks.iter().all(|c| by_words(&c.text) <= 10));
        assert_eq!(chunks[0].text, "w0 w1 w2 w3 w4 w5 w6 w7 w8 w9");
        assert!(
            chunks[1].text.starts_with("w7 w8 w9 w10"),
            "{}",
            chunks[1].text
        );
        assert!(chunks.last().unwrap().text.ends_with("w99"));
        // Every word is in some chunk, in order.
        let seen: Vec<&str> = chunks.iter().flat_map(|c| c.text.split(' ')).collect();
        for i in 0..100 {
            assert!(seen.contains(&format!("w{i}").as_str()));
        }
        // A word larger than a chunk is a chunk of its own, and the split still ends.
        let huge = split("a b ccccccccccccccccccccccccc d", &cut, &|w: &str| {
            w.trim().len() as u64
        });
        assert!(huge.iter().any(|c| c.text == "ccccccccccccccccccccccccc"));
    }

    #[test]
    fn markdown_sections_carry_their_heading_path() {
        let text = "Intro line.\n# Refunds\nWithin 30 days.\n## Late returns\nStore credit only.\n```\n# not a heading\n```\n# Shipping\nFree over $50.\n";
        let cut = Split {
            by: SplitBy::Headings,
            size: 400,
            overlap: 0,
        };
        let chunks = split(text, &cut, &by_words);
        let headings: Vec<Option<&str>> = chunks.iter().map(|c| c.heading.as_deref()).collect();
        assert_eq!(
            headings,
            [
                None,
                Some("Refunds"),
                Some("Refunds > Late returns"),
                Some("Shipping")
            ]
        );
        assert!(chunks[2].text.contains("# not a heading"));
        assert!(chunks[3].text.starts_with("# Shipping\nFree over $50."));
    }

    #[test]
    fn a_split_that_cannot_work_says_why() {
        let bad = Split {
            by: SplitBy::Tokens,
            size: 10,
            overlap: 10,
        };
        assert_eq!(
            bad.check().unwrap_err(),
            "overlap (10) must be smaller than size (10)"
        );
    }
}
