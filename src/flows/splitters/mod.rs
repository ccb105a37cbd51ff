//! Splitters: a document cut into the chunks that are embedded, each small enough for
//! the embedding model and for a prompt. Each is a `Splitter` in a file of its own,
//! registered in `SPLITTERS`, chosen by name (`split = { by = "..." }`).
//!
//! - `tokens`: pieces of `size` tokens, each starting `overlap` tokens before the last
//!   one ended, cut between words; tokens are counted with the model's tokenizer (the
//!   caller's `count`), word by word, which is how a BPE tokenizer splits text first.
//! - `headings`: one chunk per markdown section, titled with its heading path
//!   (`Refunds > Late returns`); a section larger than `size` tokens is cut by tokens.

mod headings;
mod tokens;

use serde::Deserialize;

/// A way to cut documents.
pub trait Splitter: Sync {
    /// What a step's `split.by` calls it.
    fn name(&self) -> &'static str;
    /// `text` cut into chunks of at most `limits.0` tokens (counted with `count`),
    /// repeating `limits.1` where it cuts by tokens; `markdown` says the text is
    /// markdown.
    fn split(
        &self,
        text: &str,
        markdown: bool,
        limits: (usize, usize),
        count: &dyn Fn(&str) -> u64,
    ) -> Vec<Chunk>;
}

/// Every splitter.
pub static SPLITTERS: &[&dyn Splitter] = &[&tokens::Tokens, &headings::Headings];

/// How documents are cut, as a step writes it: `{ by = "tokens", size = 200,
/// overlap = 20 }` or `{ by = "headings" }`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Split {
    /// A splitter's name.
    pub by: String,
    /// The most tokens a chunk holds. Default 400.
    #[serde(default = "default_size")]
    pub size: usize,
    /// Tokens a `tokens` chunk repeats from the end of the one before. Default 40.
    #[serde(default = "default_overlap")]
    pub overlap: usize,
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
        if self.splitter().is_none() {
            let names: Vec<&str> = SPLITTERS.iter().map(|s| s.name()).collect();
            return Err(format!(
                "\"{}\" is not a splitter; splitters: {}",
                self.by,
                names.join(", ")
            ));
        }
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

    fn splitter(&self) -> Option<&'static dyn Splitter> {
        SPLITTERS.iter().copied().find(|s| s.name() == self.by)
    }
}

/// A chunk: its text, and the heading path it sits under (headings only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub text: String,
    pub heading: Option<String>,
}

/// Cuts `text` as `split` says (a split that failed its check cuts nothing).
pub fn split(text: &str, markdown: bool, split: &Split, count: &dyn Fn(&str) -> u64) -> Vec<Chunk> {
    split.splitter().map_or_else(Vec::new, |splitter| {
        splitter.split(text, markdown, (split.size, split.overlap), count)
    })
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
            by: "tokens".into(),
            size: 10,
            overlap: 3,
        };
        let chunks = split(&text, false, &cut, &by_words);
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
        let huge = split(
            "a b ccccccccccccccccccccccccc d",
            false,
            &cut,
            &|w: &str| w.trim().len() as u64,
        );
        assert!(huge.iter().any(|c| c.text == "ccccccccccccccccccccccccc"));
    }

    #[test]
    fn markdown_sections_carry_their_heading_path() {
        let text = "Intro line.\n# Refunds\nWithin 30 days.\n## Late returns\nStore credit only.\n```\n# not a heading\n```\n# Shipping\nFree over $50.\n";
        let cut = Split {
            by: "headings".into(),
            size: 400,
            overlap: 0,
        };
        let chunks = split(text, true, &cut, &by_words);
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
        // Text that is not markdown is cut by tokens.
        let plain = split(text, false, &cut, &by_words);
        assert!(plain.iter().all(|c| c.heading.is_none()));
    }

    #[test]
    fn a_split_that_cannot_work_says_why() {
        let bad = Split {
            by: "tokens".into(),
            size: 10,
            overlap: 10,
        };
        assert_eq!(
            bad.check().unwrap_err(),
            "overlap (10) must be smaller than size (10)"
        );
        let unknown = Split {
            by: "pages".into(),
            size: 10,
            overlap: 0,
        };
        assert_eq!(
            unknown.check().unwrap_err(),
            "\"pages\" is not a splitter; splitters: tokens, headings"
        );
    }
}
