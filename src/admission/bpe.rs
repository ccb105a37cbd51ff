//! OpenAI's byte-pair encodings (o200k_base, cl100k_base) held compactly, for counting
//! tokens only.
//!
//! The general-purpose tokenizer keeps each vocabulary as hash maps of owned byte
//! vectors in both directions, about 70 MB resident for the two; counting needs neither
//! decoding nor special tokens, so a vocabulary here is its tokens' bytes back to back in
//! rank order, where each rank starts, and an open-addressing index from a token's bytes
//! to its rank: 4 MB for o200k_base, 2 MB for cl100k_base. The vocabularies are OpenAI's
//! published files (`assets/tokenizers/`, checked against their SHA-256 in the tests) and
//! the counts equal tiktoken's (tested over a corpus and random text).
//!
//! Counting splits text with the vocabulary's pattern, then merges each piece's bytes
//! pairwise, lowest rank first (leftmost on ties), until no adjacent pair is a token; the
//! merges are kept in a heap over a linked list, so a megabyte of one repeated character
//! costs O(n log n), not O(n²).

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use base64::Engine as _;
use regex_automata::{Anchored, Input};

/// One vocabulary, ready to count with.
pub struct Vocabulary {
    /// Every token's bytes, back to back, in rank order.
    bytes: Vec<u8>,
    /// Where each rank's bytes start in `bytes`, and one more for the end.
    starts: Vec<u32>,
    /// Open addressing by a hash of a token's bytes: rank + 1, or 0 for an empty slot.
    slots: Vec<u32>,
    /// The pre-tokenizer: text is counted piece by piece, as the model's tokenizer
    /// splits it.
    pattern: regex_automata::meta::Regex,
    /// The pattern is one of OpenAI's two, which split the usual ASCII pieces alike:
    /// those are found by `ascii_piece` without a search.
    openai_pattern: bool,
}

/// The pattern o200k_base splits text with (GPT-4o, 4.1, o-series), as a DFA can run it.
///
/// OpenAI's patterns end in `\s+(?!\S)|\s+` (o200k) or `\s+(?!\S)|\s` (cl100k): a run of
/// whitespace followed by more text gives its last character to that text (" hello"
/// stays one piece). Look-ahead needs a backtracking matcher, several times slower on
/// every request; here both end in `\s+` and `count` gives the last character back
/// itself (see `pieces`). cl100k's possessive quantifiers are written plainly: in those
/// places they cannot change a match.
pub const O200K_PATTERN: &str = concat!(
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"|\p{N}{1,3}",
    r"| ?[^\s\p{L}\p{N}]+[\r\n/]*",
    r"|\s*[\r\n]+",
    r"|\s+",
);

/// The pattern cl100k_base splits text with (GPT-4, 3.5, text-embedding-3), likewise.
pub const CL100K_PATTERN: &str = r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s+$|\s*[\r\n]|\s+";

/// Pieces up to this many bytes are merged on the stack.
const SHORT: usize = 48;

/// A vocabulary file that cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("tokenizer vocabulary, line {line}: {why}")]
pub struct VocabularyError {
    line: usize,
    why: String,
}

impl Vocabulary {
    /// Reads a vocabulary in tiktoken's format (a line per token: its bytes in base64,
    /// a space, its rank, ranks counting up from 0) with the pattern that splits text.
    pub fn parse(text: &str, pattern: &str) -> Result<Vocabulary, VocabularyError> {
        let fail = |line: usize, why: String| VocabularyError { line, why };
        let lines = text.lines().filter(|l| !l.is_empty()).count();
        let mut bytes = Vec::with_capacity(lines * 7);
        let mut starts = Vec::with_capacity(lines + 1);
        let mut token = Vec::with_capacity(64);
        for (at, line) in text.lines().filter(|l| !l.is_empty()).enumerate() {
            let (encoded, rank) = line
                .split_once(' ')
                .ok_or_else(|| fail(at + 1, "not \"BASE64 RANK\"".into()))?;
            if rank.parse::<usize>().ok() != Some(at) {
                return Err(fail(at + 1, format!("rank {rank}, expected {at}")));
            }
            token.clear();
            base64::engine::general_purpose::STANDARD
                .decode_vec(encoded, &mut token)
                .map_err(|e| fail(at + 1, e.to_string()))?;
            starts.push(bytes.len() as u32);
            bytes.extend_from_slice(&token);
        }
        starts.push(bytes.len() as u32);
        bytes.shrink_to_fit();
        let capacity = (lines * 2).next_power_of_two().max(2);
        let mut vocabulary = Vocabulary {
            bytes,
            starts,
            slots: vec![0; capacity],
            pattern: regex_automata::meta::Regex::new(pattern)
                .map_err(|e| fail(0, e.to_string()))?,
            openai_pattern: pattern == O200K_PATTERN || pattern == CL100K_PATTERN,
        };
        for rank in 0..lines {
            let mut slot = vocabulary.home(vocabulary.token(rank as u32));
            while vocabulary.slots[slot] != 0 {
                slot = (slot + 1) & (capacity - 1);
            }
            vocabulary.slots[slot] = rank as u32 + 1;
        }
        Ok(vocabulary)
    }

    /// Tokens in the vocabulary.
    pub fn len(&self) -> usize {
        self.starts.len() - 1
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes this vocabulary keeps on the heap.
    pub fn heap_bytes(&self) -> usize {
        self.bytes.capacity() + self.starts.capacity() * 4 + self.slots.capacity() * 4
    }

    fn token(&self, rank: u32) -> &[u8] {
        let (from, to) = (self.starts[rank as usize], self.starts[rank as usize + 1]);
        &self.bytes[from as usize..to as usize]
    }

    /// The slot a token's probe starts at: FNV-1a over its bytes.
    fn home(&self, bytes: &[u8]) -> usize {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for b in bytes {
            hash = (hash ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
        (hash as usize) & (self.slots.len() - 1)
    }

    /// The rank of the token whose bytes these are.
    fn rank(&self, bytes: &[u8]) -> Option<u32> {
        let mask = self.slots.len() - 1;
        let mut slot = self.home(bytes);
        loop {
            match self.slots[slot] {
                0 => return None,
                found if self.token(found - 1) == bytes => return Some(found - 1),
                _ => slot = (slot + 1) & mask,
            }
        }
    }

    /// Tokens in `text`, as the model's tokenizer would encode it (special tokens count
    /// as the text they are written as).
    pub fn count(&self, text: &str) -> u64 {
        self.pieces(text)
            .map(|piece| self.piece(piece.as_bytes()) as u64)
            .sum()
    }

    /// `text` split as the model's tokenizer splits it. A piece of whitespace alone
    /// (without a line break) that more text follows gives its last character to that
    /// text, which is what OpenAI's look-ahead `\s+(?!\S)` does: earlier alternatives
    /// take every run with a line break, and every other piece holds a non-space.
    fn pieces<'t>(&self, text: &'t str) -> impl Iterator<Item = &'t str> {
        self.pieces_found(text, self.openai_pattern)
    }

    /// `pieces`, the usual ASCII ones found without a search when `ascii` says so (the
    /// tests compare the two).
    fn pieces_found<'t>(&self, text: &'t str, ascii: bool) -> impl Iterator<Item = &'t str> {
        let mut at = 0;
        std::iter::from_fn(move || {
            if at >= text.len() {
                return None;
            }
            if ascii && let Some(end) = ascii_piece(text.as_bytes(), at) {
                let piece = &text[at..end];
                at = end;
                return Some(piece);
            }
            // Anchored where the last piece ended: the patterns match every character,
            // so the leftmost match starts there, and the search needs no reverse pass
            // to find where it starts.
            let from = Input::new(text).range(at..).anchored(Anchored::Yes);
            let end = match self.pattern.search(&from) {
                Some(found) if found.start() == at && found.end() < text.len() => {
                    let piece = &text[found.range()];
                    let spaces =
                        piece.chars().all(char::is_whitespace) && !piece.contains(['\r', '\n']);
                    match piece.char_indices().last() {
                        Some((last, _)) if spaces && last > 0 => at + last,
                        _ => found.end(),
                    }
                }
                Some(found) if found.start() == at => found.end(),
                // The patterns match every character, so never in practice.
                _ => text.len(),
            };
            let piece = &text[at..end];
            at = end;
            Some(piece)
        })
    }

    /// Tokens one pre-tokenized piece becomes.
    fn piece(&self, piece: &[u8]) -> usize {
        if piece.len() <= 1 || self.rank(piece).is_some() {
            return piece.len().min(1);
        }
        if piece.len() <= SHORT {
            return self.short_piece(piece);
        }
        self.long_piece(piece)
    }

    /// A short piece, merged on the stack: after each merge only the merged part's pairs
    /// are looked up again, and the lowest is found by a scan of at most `SHORT` ranks.
    fn short_piece(&self, piece: &[u8]) -> usize {
        let n = piece.len();
        // starts[i] is where part i begins (starts[parts] == n); ranks[i] is the rank of
        // parts i and i + 1 joined, u32::MAX when that is no token.
        let mut starts = [0u8; SHORT + 1];
        let mut ranks = [u32::MAX; SHORT];
        for (i, start) in starts.iter_mut().enumerate().take(n + 1) {
            *start = i as u8;
        }
        let pair = |starts: &[u8], i: usize, parts: usize| -> u32 {
            if i + 2 > parts {
                return u32::MAX;
            }
            let bytes = &piece[starts[i] as usize..starts[i + 2] as usize];
            self.rank(bytes).unwrap_or(u32::MAX)
        };
        let mut parts = n;
        for (i, rank) in ranks.iter_mut().enumerate().take(parts - 1) {
            *rank = pair(&starts, i, parts);
        }
        loop {
            let Some((i, _)) = ranks[..parts - 1]
                .iter()
                .enumerate()
                .filter(|(_, rank)| **rank != u32::MAX)
                .min_by_key(|(_, rank)| **rank)
            else {
                return parts;
            };
            // Part i + 1 joins part i.
            starts.copy_within(i + 2..=parts, i + 1);
            ranks.copy_within(i + 2..parts, i + 1);
            parts -= 1;
            if parts == 1 {
                return 1;
            }
            ranks[i] = pair(&starts, i, parts);
            if i > 0 {
                ranks[i - 1] = pair(&starts, i - 1, parts);
            }
        }
    }

    /// A long piece: the merges kept in a heap over a linked list.
    fn long_piece(&self, piece: &[u8]) -> usize {
        // A part is named by the byte it starts at, which merging never moves: part i
        // spans piece[i..next[i]]. `pair[i]` is the rank of part i joined with the part
        // after it, u32::MAX when that is no token.
        let n = piece.len();
        let mut next: Vec<usize> = (1..=n).collect();
        let mut prev: Vec<usize> = (0..n).map(|i| i.wrapping_sub(1)).collect();
        let pair_rank = |next: &[usize], i: usize| -> u32 {
            match next[i] {
                j if j >= n => u32::MAX,
                j => self.rank(&piece[i..next[j]]).unwrap_or(u32::MAX),
            }
        };
        let mut pair: Vec<u32> = (0..n).map(|i| pair_rank(&next, i)).collect();
        let mut heap: BinaryHeap<Reverse<(u32, usize)>> = pair
            .iter()
            .enumerate()
            .filter(|(_, rank)| **rank != u32::MAX)
            .map(|(i, rank)| Reverse((*rank, i)))
            .collect();
        let mut alive = vec![true; n];
        let mut parts = n;
        while let Some(Reverse((rank, i))) = heap.pop() {
            // An entry goes stale when a neighbour merges; the current rank is in `pair`
            // (a rank names one string, so an equal rank is the same pair).
            if !alive[i] || pair[i] != rank {
                continue;
            }
            let j = next[i];
            alive[j] = false;
            next[i] = next[j];
            if next[i] < n {
                prev[next[i]] = i;
            }
            parts -= 1;
            for k in [i, prev[i]] {
                if k < n {
                    pair[k] = pair_rank(&next, k);
                    if pair[k] != u32::MAX {
                        heap.push(Reverse((pair[k], k)));
                    }
                }
            }
        }
        parts
    }
}

/// Where the piece that starts at `at` ends, for the usual ASCII shapes, which both
/// OpenAI patterns split alike; `None` for any other, which the pattern decides:
///
/// - up to three digits (`\p{N}{1,3}`);
/// - a word: one byte that is no letter, digit, line break or apostrophe, perhaps;
///   then a capital, perhaps; then lower case, up to a byte that is ASCII and no
///   letter or apostrophe (the first alternative of each pattern);
/// - punctuation: a space, perhaps; then bytes that are no space, letter, digit or
///   apostrophe, up to an ASCII byte that is not an apostrophe; then line breaks
///   (` ?[^\s\p{L}\p{N}]+[\r\n]*`), unless a `/` follows them, which o200k's pattern
///   takes and cl100k's does not;
/// - a space before a digit.
///
/// A non-ASCII character where the piece could go on, a mixed-case word or one that a
/// contraction could follow, and whitespace runs (whose last character may go to the
/// next piece) are left to the pattern.
fn ascii_piece(bytes: &[u8], at: usize) -> Option<usize> {
    let byte = |i: usize| bytes.get(i).copied();
    // Unicode's White_Space within ASCII (`\s`; `u8::is_ascii_whitespace` leaves out
    // the vertical tab).
    let space = |b: u8| matches!(b, b'\t' | b'\n' | 0x0b | 0x0c | b'\r' | b' ');
    // Where the piece ends if it may end before `end`'s byte.
    let ends_before = |end: usize, goes_on: &dyn Fn(u8) -> bool| match byte(end) {
        None => Some(end),
        Some(b) if b.is_ascii() && !goes_on(b) => Some(end),
        _ => None,
    };
    let first = byte(at)?;
    if first.is_ascii_digit() {
        let mut end = at + 1;
        while end < at + 3 && byte(end).is_some_and(|b| b.is_ascii_digit()) {
            end += 1;
        }
        // Three digits end the piece whatever follows.
        return if end == at + 3 {
            Some(end)
        } else {
            ends_before(end, &|b| b.is_ascii_digit())
        };
    }
    if !first.is_ascii() || matches!(first, b'\r' | b'\n' | b'\'') {
        return None;
    }
    let word = if first.is_ascii_alphabetic() {
        at
    } else {
        at + 1
    };
    match byte(word) {
        Some(b) if b.is_ascii_alphabetic() => {
            let mut end = word + usize::from(b.is_ascii_uppercase());
            let lower = end;
            while byte(end).is_some_and(|b| b.is_ascii_lowercase()) {
                end += 1;
            }
            if end == lower {
                return None;
            }
            return ends_before(end, &|b| b.is_ascii_alphabetic() || b == b'\'');
        }
        Some(b) if !b.is_ascii() => return None,
        _ => {}
    }
    let start = if first == b' ' { at + 1 } else { at };
    let punctuation = |b: u8| !space(b) && !b.is_ascii_alphanumeric() && b != b'\'';
    let mut end = start;
    while byte(end).is_some_and(|b| b.is_ascii() && punctuation(b)) {
        end += 1;
    }
    if end == start {
        // A space before a digit is a piece of its own (`\s+`, with nothing to give).
        let digit = byte(start).is_some_and(|b| b.is_ascii_digit());
        return (first == b' ' && digit).then_some(start);
    }
    ends_before(end, &|b| b == b'\'')?;
    while let Some(b'\r' | b'\n') = byte(end) {
        end += 1;
    }
    (byte(end) != Some(b'/')).then_some(end)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> Vocabulary {
        // a b c, then "ab" (3), "bc" (4), "abc" (5), "aa" (6), "aaaa" (7).
        let encode = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let text: String = ["a", "b", "c", "ab", "bc", "abc", "aa", "aaaa"]
            .iter()
            .enumerate()
            .map(|(rank, t)| format!("{} {rank}\n", encode(t)))
            .collect();
        Vocabulary::parse(&text, r"\S+|\s+").unwrap()
    }

    /// The usual ASCII pieces, found without a search, are where each pattern puts
    /// them: random text of letters of both cases, digits, punctuation, apostrophes,
    /// slashes, every kind of space and line break, and characters beyond ASCII
    /// (letters, a digit, a mark, spaces) where a piece could go on.
    #[test]
    fn ascii_pieces_are_split_as_each_pattern_splits_them() {
        let alphabet: Vec<char> =
            "aezAQZ059 \t\n\r\u{b}\u{c}\u{1f}\0.,!(-/'sdmtlrev’é中٣\u{301}\u{a0}\u{85}"
                .chars()
                .chain("     abcdefghijklmnopqrstuvwxyz".chars())
                .collect();
        let mut rng = fastrand::Rng::with_seed(7);
        for pattern in [O200K_PATTERN, CL100K_PATTERN] {
            let v = Vocabulary::parse("YQ== 0\n", pattern).unwrap();
            assert!(v.openai_pattern);
            let (mut pieces, mut found) = (0, 0);
            for _ in 0..20_000 {
                let text: String = (0..rng.usize(..24))
                    .map(|_| alphabet[rng.usize(..alphabet.len())])
                    .collect();
                let searched: Vec<&str> = v.pieces_found(&text, false).collect();
                let quick: Vec<&str> = v.pieces_found(&text, true).collect();
                assert_eq!(quick, searched, "{text:?} with {pattern}");
                pieces += searched.len();
                let mut at = 0;
                for piece in &searched {
                    found += usize::from(ascii_piece(text.as_bytes(), at).is_some());
                    at += piece.len();
                }
            }
            assert!(
                found * 3 > pieces,
                "only {found} of {pieces} pieces found without a search"
            );
        }
        // Prose is mostly found so.
        let v = Vocabulary::parse("YQ== 0\n", O200K_PATTERN).unwrap();
        let text = "Say hello in one short sentence, then (briefly) explain why 42 is 6*7.";
        let mut at = 0;
        for piece in v.pieces(text) {
            assert!(ascii_piece(text.as_bytes(), at).is_some(), "{piece:?}");
            at += piece.len();
        }
    }

    #[test]
    fn pairs_merge_lowest_rank_first_and_leftmost_on_ties() {
        let v = tiny();
        assert_eq!(v.len(), 8);
        assert_eq!(v.piece(b"abc"), 1, "a whole token");
        // "abcab": ab(3) merges before bc(4), twice: ab|c|ab; then ab|c is abc(5).
        assert_eq!(v.piece(b"abcab"), 2);
        // "aaaaa": aa merges leftmost first: aa|aa|a, then aaaa: aaaa|a.
        assert_eq!(v.piece(b"aaaaa"), 2);
        // Bytes outside the vocabulary stay one part each.
        assert_eq!(v.piece(b"xyz"), 3);
        assert_eq!(v.count("abc abcab"), 1 + 1 + 2);
        assert_eq!(v.count(""), 0);
    }

    #[test]
    fn short_and_long_pieces_merge_alike() {
        let v = tiny();
        // Every string of a, b, c and x up to seven long.
        let mut pieces = vec![Vec::new()];
        for _ in 0..7 {
            pieces = pieces
                .iter()
                .flat_map(|p: &Vec<u8>| b"abcx".iter().map(move |c| [p.as_slice(), &[*c]].concat()))
                .collect();
            for piece in &pieces {
                if piece.len() > 1 {
                    assert_eq!(v.short_piece(piece), v.long_piece(piece), "{piece:?}");
                }
            }
        }
    }

    #[test]
    fn a_long_run_of_one_character_is_not_quadratic() {
        let v = tiny();
        // 2^16 a's merge into aaaa tokens: 16,384 of them.
        let long = "a".repeat(1 << 16);
        assert_eq!(v.count(&long), 1 << 14);
    }

    #[test]
    fn a_malformed_vocabulary_names_its_line() {
        let err = Vocabulary::parse("YQ== 0\nYg== 2\n", r"\S+").err().unwrap();
        assert_eq!(
            err.to_string(),
            "tokenizer vocabulary, line 2: rank 2, expected 1"
        );
        let err = Vocabulary::parse("YQ==\n", r"\S+").err().unwrap();
        assert!(err.to_string().contains("line 1"), "{err}");
    }
}
