//! What the gateway reads of a chunk: content, usage, whether it is the usage-only chunk,
//! an upstream error, a Responses or Messages event's type and delta.
//!
//! Every event of every stream is read, so the reading is done in one pass over the bytes
//! that picks out those fields, borrows their strings and builds nothing else (`skim`);
//! the members a stream's chunks all open with (id, object, created, model) are read once
//! a stream, not once a chunk (`Opening`).
//! serde_json remains the definition: whatever the pass is not sure of (an escaped key, a
//! number that is not a plain unsigned integer, a field given twice, a value of another
//! type, deep nesting, any syntax error) is handed to the derived reading below, whose
//! answer is taken as it is; escaped strings the pass reads are decoded by serde_json.
//! The two are compared on recorded and generated chunks in the tests.

use std::borrow::Cow;

use serde::Deserialize;

use crate::domain::Usage;

/// A chunk (or a whole chat answer), a Responses API event (or whole Response), or an
/// Anthropic Messages event (or whole Message), as far as the gateway reads it.
#[derive(Debug, Default, PartialEq)]
pub struct Chunk<'a> {
    /// The chat choices' texts; `None` when there is no `choices` array.
    choices: Option<Texts<'a>>,
    usage: Option<UsageView>,
    /// An `error` that is not null.
    error: bool,
    /// A Responses or Messages event's type (`response.output_text.delta`,
    /// `content_block_delta`, `response.completed`, `message_stop`…).
    kind: Option<Cow<'a, str>>,
    /// A delta event's delta as raw JSON: a Responses text, or a Messages block's delta
    /// (other deltas need not be text).
    delta: Option<&'a str>,
    /// The usage in the Response a Responses stream's last event carries, or else in the
    /// Message a Messages stream's first event carries (its input usage).
    nested: Option<UsageView>,
}

/// Each choice's text in order (a delta's or message's content, or a legacy completion's
/// text), kept inline for the usual single choice; and how many choices there were.
#[derive(Debug, Default, PartialEq)]
struct Texts<'a> {
    choices: usize,
    first: Option<Cow<'a, str>>,
    more: Vec<Cow<'a, str>>,
}

impl<'a> Texts<'a> {
    /// Adds one choice, with the text it carries if any.
    fn push(&mut self, text: Option<Cow<'a, str>>) {
        self.choices += 1;
        if let Some(text) = text {
            if self.first.is_none() {
                self.first = Some(text);
            } else {
                self.more.push(text);
            }
        }
    }

    fn iter(&self) -> impl Iterator<Item = &str> {
        self.first.iter().chain(&self.more).map(|t| &**t)
    }
}

/// Chat's usage, or the Responses and Messages APIs' (`input_tokens`, `output_tokens`;
/// Anthropic counts cache writes and reads apart from `input_tokens`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Deserialize)]
struct UsageView {
    #[serde(default, alias = "input_tokens")]
    prompt_tokens: Option<u64>,
    #[serde(default, alias = "output_tokens")]
    completion_tokens: Option<u64>,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
}

/// A nested Response or Message: only its usage.
#[derive(Debug, Default, Clone, Copy, PartialEq, Deserialize)]
struct Nested {
    #[serde(default)]
    usage: Option<UsageView>,
}

/// The members a stream's chunks open with and repeat (an id, an object name, a creation
/// time, a model), kept from the last chunk read: a chunk that opens with the same bytes
/// is read from where they end, as the same bytes read the same way. Only members the
/// gateway does not read are kept, so nothing read is skipped.
#[derive(Debug, Default)]
pub struct Opening(Vec<u8>);

impl Opening {
    /// How many of `data`'s bytes were read before: none, or the whole opening.
    fn shared(&self, data: &str) -> usize {
        if !self.0.is_empty() && data.as_bytes().starts_with(&self.0) {
            self.0.len()
        } else {
            0
        }
    }

    fn keep(&mut self, opening: &[u8]) {
        if self.0 != opening {
            self.0.clear();
            self.0.extend_from_slice(opening);
        }
    }
}

impl<'a> Chunk<'a> {
    /// The chunk in an event's data, when it is a JSON object.
    pub fn parse(data: &'a str) -> Option<Chunk<'a>> {
        skim::chunk(data, None).or_else(|| serde_view::chunk(data))
    }

    /// The chunk in the data of one of a stream's events, read from where `opening` (the
    /// stream's, from its chunks before) ends when it opens with it; `opening` is then
    /// this chunk's. Reads what `parse` reads.
    pub fn parse_next(data: &'a str, opening: &mut Opening) -> Option<Chunk<'a>> {
        skim::chunk(data, Some(opening)).or_else(|| serde_view::chunk(data))
    }

    /// The upstream's usage, when it reports one.
    pub fn usage(&self) -> Option<Usage> {
        reported(self.usage.as_ref(), self.nested.as_ref())
    }

    /// The chunk the gateway asked for on a client's behalf: no choices, only usage.
    pub fn is_usage_only(&self) -> bool {
        self.usage.is_some() && self.choices.as_ref().is_some_and(|c| c.choices == 0)
    }

    /// An error object the upstream sent in place of a chunk.
    pub fn is_error(&self) -> bool {
        self.error || self.kind.as_deref() == Some("error")
    }

    /// A Responses stream's last event (the response completed, stopped short or
    /// failed), or a Messages stream's (`message_stop`).
    pub fn ends_response(&self) -> bool {
        matches!(
            self.kind.as_deref(),
            Some("response.completed" | "response.incomplete" | "response.failed" | "message_stop")
        )
    }

    /// The text of every choice's delta (streams) or message (whole answers), or of a
    /// text completion; or a Responses or Messages text delta's.
    pub fn texts(&self) -> impl Iterator<Item = Cow<'_, str>> {
        let chat = self.choices.iter().flat_map(Texts::iter).map(Cow::Borrowed);
        let text = match (self.kind.as_deref(), self.delta) {
            (Some("response.output_text.delta"), Some(raw)) => serde_json::from_str(raw).ok(),
            (Some("content_block_delta"), Some(raw)) => serde_json::from_str::<TextDelta>(raw)
                .ok()
                .map(|delta| delta.text),
            _ => None,
        };
        chat.chain(text)
    }
}

/// A Messages `text_delta`.
#[derive(Deserialize)]
struct TextDelta<'a> {
    #[serde(borrow)]
    text: Cow<'a, str>,
}

/// Only where a whole answer (or an event) reports usage: the rest is skipped, not built.
#[derive(Deserialize)]
struct UsageOnly {
    #[serde(default)]
    usage: Option<UsageView>,
    #[serde(default)]
    response: Option<Nested>,
    #[serde(default)]
    message: Option<Nested>,
}

/// The usage an answer or event in `data` reports, read without building the rest of
/// it (whole answers are read for their usage on every request): in one pass that
/// skips the rest, or by serde_json when the pass is not sure.
pub fn usage_in(data: &str) -> Option<Usage> {
    skim::usage(data).unwrap_or_else(|| serde_usage(data))
}

/// The derived reading of a usage, which defines it.
fn serde_usage(data: &str) -> Option<Usage> {
    let only: UsageOnly = serde_json::from_str(data).ok()?;
    reported(
        only.usage.as_ref(),
        only.response
            .or(only.message)
            .and_then(|n| n.usage)
            .as_ref(),
    )
}

/// Usage as reported at the top level or in a nested Response or Message.
fn reported(direct: Option<&UsageView>, nested: Option<&UsageView>) -> Option<Usage> {
    let usage = direct.or(nested)?;
    if usage.prompt_tokens.is_none() && usage.completion_tokens.is_none() {
        return None;
    }
    let cached =
        usage.cache_creation_input_tokens.unwrap_or(0) + usage.cache_read_input_tokens.unwrap_or(0);
    Some(Usage {
        prompt_tokens: usage.prompt_tokens.unwrap_or(0) + cached,
        completion_tokens: usage.completion_tokens.unwrap_or(0),
        estimated: false,
    })
}

/// The derived reading, which defines what a chunk says.
mod serde_view {
    use std::borrow::Cow;

    use serde::Deserialize;

    use super::{Chunk, Nested, Texts, UsageView};

    #[derive(Deserialize)]
    struct View<'a> {
        #[serde(default, borrow)]
        choices: Option<Vec<Choice<'a>>>,
        #[serde(default)]
        usage: Option<UsageView>,
        #[serde(default)]
        error: Option<serde::de::IgnoredAny>,
        #[serde(default, borrow, rename = "type")]
        kind: Option<Cow<'a, str>>,
        #[serde(default, borrow)]
        delta: Option<&'a serde_json::value::RawValue>,
        #[serde(default)]
        response: Option<Nested>,
        #[serde(default)]
        message: Option<Nested>,
    }

    #[derive(Deserialize)]
    struct Choice<'a> {
        #[serde(default, borrow)]
        delta: Option<Text<'a>>,
        #[serde(default, borrow)]
        message: Option<Text<'a>>,
        /// Legacy text completions carry their text here, streamed or whole.
        #[serde(default, borrow)]
        text: Option<Cow<'a, str>>,
    }

    #[derive(Deserialize)]
    struct Text<'a> {
        #[serde(default, borrow)]
        content: Option<Cow<'a, str>>,
    }

    pub(super) fn chunk(data: &str) -> Option<Chunk<'_>> {
        let view: View = serde_json::from_str(data).ok()?;
        Some(Chunk {
            choices: view.choices.map(|choices| {
                let mut texts = Texts::default();
                for choice in choices {
                    texts.push(match choice.delta.or(choice.message) {
                        Some(text) => text.content,
                        None => choice.text,
                    });
                }
                texts
            }),
            usage: view.usage,
            error: view.error.is_some(),
            kind: view.kind,
            delta: view.delta.map(serde_json::value::RawValue::get),
            nested: view.response.or(view.message).and_then(|n| n.usage),
        })
    }
}

/// One pass over a chunk's bytes for the fields `Chunk` keeps. `None` means "not sure":
/// the caller then asks serde_json, so this must never accept what serde_json refuses
/// or read a field differently, but it may give up on anything unusual.
mod skim {
    use std::borrow::Cow;

    use super::{Chunk, Nested, Opening, Texts, Usage, UsageView, reported};

    /// A `content` or `text` field: absent or null, or a string.
    type Content<'a> = Option<Cow<'a, str>>;

    /// Nesting deeper than this in a skipped value is left to serde_json.
    const MAX_DEPTH: u32 = 64;

    struct Reader<'a> {
        text: &'a str,
        at: usize,
        /// Where the key handed to an object's `member` begins (its opening quote).
        key_at: usize,
    }

    /// Marks each known field of one object as seen: serde refuses a field given twice.
    struct Seen(u8);

    impl Seen {
        fn first(&mut self, field: u8) -> Option<()> {
            let bit = 1 << field;
            (self.0 & bit == 0).then(|| self.0 |= bit)
        }
    }

    /// The members of a chunk or answer that report usage: its own, a nested Response's
    /// or Message's.
    #[derive(Default)]
    struct Reports {
        usage: Option<UsageView>,
        response: Option<Nested>,
        message: Option<Nested>,
    }

    impl Reports {
        /// Reads `key`'s value when it is one that reports usage; false for any other
        /// key, whose value is then still to read.
        fn read(&mut self, r: &mut Reader<'_>, key: &[u8], seen: &mut Seen) -> Option<bool> {
            match key {
                b"usage" => {
                    seen.first(0)?;
                    self.usage = r.usage()?;
                }
                b"response" => {
                    seen.first(1)?;
                    self.response = r.nested()?;
                }
                b"message" => {
                    seen.first(2)?;
                    self.message = r.nested()?;
                }
                _ => return Some(false),
            }
            Some(true)
        }

        /// The usage a nested Response (else Message) reports.
        fn nested(&self) -> Option<UsageView> {
            self.response.or(self.message).and_then(|n| n.usage)
        }
    }

    /// `opening`, when given, is the stream's: the chunk is read from its end when it
    /// opens with it, and it is then this chunk's: up to the first member read, or the
    /// last member when none is read, so long as one member comes before.
    pub(super) fn chunk<'a>(data: &'a str, opening: Option<&mut Opening>) -> Option<Chunk<'a>> {
        let shared = opening.as_deref().map_or(0, |o| o.shared(data));
        let mut r = Reader {
            text: data,
            at: shared,
            key_at: 0,
        };
        let mut chunk = Chunk::default();
        let mut reports = Reports::default();
        let mut seen = Seen(0);
        // Where this chunk's opening ends: before its first member read (or its last).
        let mut opens = shared;
        let mut members = usize::from(shared > 0);
        let mut read_any = false;
        let member = |r: &mut Reader<'a>, key: &[u8]| {
            let key_at = r.key_at;
            let mut read = true;
            match key {
                b"choices" => {
                    seen.first(3)?;
                    chunk.choices = r.choices()?;
                }
                b"error" => {
                    seen.first(4)?;
                    chunk.error = !r.null()?;
                    if chunk.error {
                        r.skip_value()?;
                    }
                }
                b"type" => {
                    seen.first(5)?;
                    chunk.kind = r.optional_string()?;
                }
                b"delta" => {
                    seen.first(6)?;
                    if !r.null()? {
                        let start = r.at;
                        r.skip_value()?;
                        chunk.delta = Some(&r.text[start..r.at]);
                    }
                }
                _ if reports.read(r, key, &mut seen)? => {}
                _ => {
                    r.skip_value()?;
                    read = false;
                }
            }
            if !read_any && members > 0 {
                opens = key_at;
            }
            members += 1;
            read_any |= read;
            Some(())
        };
        if shared > 0 {
            r.members(member)?;
        } else {
            r.object(member)?;
        }
        r.whitespace();
        if r.at != data.len() {
            return None;
        }
        chunk.usage = reports.usage;
        chunk.nested = reports.nested();
        match opening {
            // The same opening again, as its length says.
            Some(_) if shared > 0 && opens == shared => {}
            Some(opening) => opening.keep(&data.as_bytes()[..opens]),
            None => {}
        }
        Some(chunk)
    }

    /// Only the usage `data` reports (`usage_in`), its other members skipped, not read;
    /// `None` when not sure.
    pub(super) fn usage(data: &str) -> Option<Option<Usage>> {
        let mut r = Reader {
            text: data,
            at: 0,
            key_at: 0,
        };
        let mut reports = Reports::default();
        let mut seen = Seen(0);
        r.object(|r, key| {
            if !reports.read(r, key, &mut seen)? {
                r.skip_value()?;
            }
            Some(())
        })?;
        r.whitespace();
        (r.at == data.len()).then(|| reported(reports.usage.as_ref(), reports.nested().as_ref()))
    }

    /// Where the first quote, backslash or control character in `bytes` is: eight bytes
    /// at a time, as most of a chunk is strings.
    pub(super) fn special(bytes: &[u8]) -> Option<usize> {
        const ONES: u64 = 0x0101_0101_0101_0101;
        const HIGH: u64 = 0x8080_8080_8080_8080;
        // The high bit of each byte that is zero (exact up to the first such byte,
        // which is the one wanted).
        let zero = |word: u64| word.wrapping_sub(ONES) & !word & HIGH;
        let mut words = bytes.chunks_exact(8);
        let mut at = 0;
        for word in &mut words {
            let word = u64::from_le_bytes(std::array::from_fn(|i| word[i]));
            let found = zero(word ^ (ONES * u64::from(b'"')))
                | zero(word ^ (ONES * u64::from(b'\\')))
                | (word.wrapping_sub(ONES * 0x20) & !word & HIGH);
            if found != 0 {
                return Some(at + found.trailing_zeros() as usize / 8);
            }
            at += 8;
        }
        let rest = words.remainder();
        rest.iter()
            .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
            .map(|i| at + i)
    }

    /// Past the escape at `at` (a backslash), or `None` for a control character or an
    /// escape serde_json refuses.
    #[cold]
    fn past_escape(bytes: &[u8], at: usize) -> Option<usize> {
        if bytes[at] != b'\\' {
            return None;
        }
        match bytes.get(at + 1)? {
            b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => Some(at + 2),
            b'u' => {
                let hex = bytes.get(at + 2..at + 6)?;
                hex.iter().all(u8::is_ascii_hexdigit).then_some(at + 6)
            }
            _ => None,
        }
    }

    impl<'a> Reader<'a> {
        fn bytes(&self) -> &'a [u8] {
            self.text.as_bytes()
        }

        fn whitespace(&mut self) {
            while let Some(b' ' | b'\n' | b'\t' | b'\r') = self.bytes().get(self.at) {
                self.at += 1;
            }
        }

        /// The next byte after whitespace, not consumed.
        fn peek(&mut self) -> Option<u8> {
            match self.bytes().get(self.at) {
                // Compact JSON, the usual case: no whitespace to pass.
                Some(&b) if b > b' ' => Some(b),
                _ => {
                    self.whitespace();
                    self.bytes().get(self.at).copied()
                }
            }
        }

        fn eat(&mut self, byte: u8) -> Option<()> {
            (self.peek()? == byte).then(|| self.at += 1)
        }

        /// `null`, consumed; or false with nothing consumed.
        fn null(&mut self) -> Option<bool> {
            if self.peek()? != b'n' {
                return Some(false);
            }
            self.literal(b"null")?;
            Some(true)
        }

        fn literal(&mut self, word: &[u8]) -> Option<()> {
            let end = self.at + word.len();
            (self.bytes().get(self.at..end)? == word).then(|| self.at = end)
        }

        /// An object's members, each key handed to `member`, which reads its value. A key
        /// with escapes is left to serde_json.
        fn object(&mut self, member: impl FnMut(&mut Self, &[u8]) -> Option<()>) -> Option<()> {
            self.eat(b'{')?;
            if self.peek()? == b'}' {
                self.at += 1;
                return Some(());
            }
            self.members(member)
        }

        /// An object's members from the key at hand to the closing brace.
        fn members(
            &mut self,
            mut member: impl FnMut(&mut Self, &[u8]) -> Option<()>,
        ) -> Option<()> {
            loop {
                if self.peek()? != b'"' {
                    return None;
                }
                self.key_at = self.at;
                let start = self.at + 1;
                if self.skip_string()? {
                    return None;
                }
                let key = &self.bytes()[start..self.at - 1];
                self.eat(b':')?;
                member(self, key)?;
                match self.peek()? {
                    b',' => self.at += 1,
                    b'}' => {
                        self.at += 1;
                        return Some(());
                    }
                    _ => return None,
                }
            }
        }

        /// An array's elements, each read by `element`.
        fn array(&mut self, mut element: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
            self.eat(b'[')?;
            if self.peek()? == b']' {
                self.at += 1;
                return Some(());
            }
            loop {
                element(self)?;
                match self.peek()? {
                    b',' => self.at += 1,
                    b']' => {
                        self.at += 1;
                        return Some(());
                    }
                    _ => return None,
                }
            }
        }

        /// A string (at its opening quote), borrowed unless it has escapes, which
        /// serde_json decodes (and checks, as it checks surrogates).
        fn string(&mut self) -> Option<Cow<'a, str>> {
            let start = self.at;
            let escaped = self.skip_string()?;
            let quoted = &self.text[start..self.at];
            if escaped {
                serde_json::from_str::<String>(quoted).ok().map(Cow::Owned)
            } else {
                Some(Cow::Borrowed(&quoted[1..quoted.len() - 1]))
            }
        }

        /// A string or null.
        fn optional_string(&mut self) -> Option<Content<'a>> {
            match self.peek()? {
                b'"' => self.string().map(Some),
                _ => self.null()?.then_some(None),
            }
        }

        /// Past a string (at its opening quote); whether it had escapes. Refuses what
        /// serde_json refuses even in a value it skips: control characters, unknown
        /// escapes, `\u` without four hex digits, no closing quote.
        fn skip_string(&mut self) -> Option<bool> {
            let bytes = self.bytes();
            let mut at = self.at + 1;
            let mut escaped = false;
            loop {
                at += special(bytes.get(at..)?)?;
                if bytes[at] == b'"' {
                    self.at = at + 1;
                    return Some(escaped);
                }
                escaped = true;
                at = past_escape(bytes, at)?;
            }
        }

        /// A plain unsigned integer that fits, or null. Anything else (a sign, a
        /// fraction, an exponent, too many digits) is left to serde_json.
        fn optional_u64(&mut self) -> Option<Option<u64>> {
            if self.null()? {
                return Some(None);
            }
            let bytes = self.bytes();
            let start = self.at;
            while let Some(b'0'..=b'9') = bytes.get(self.at) {
                self.at += 1;
            }
            let digits = &bytes[start..self.at];
            if digits.is_empty()
                || (digits.len() > 1 && digits[0] == b'0')
                || matches!(bytes.get(self.at), Some(b'.' | b'e' | b'E'))
            {
                return None;
            }
            digits
                .iter()
                .try_fold(0u64, |n, &d| {
                    n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
                })
                .map(Some)
        }

        /// Past a number, checked as serde_json checks one it skips.
        fn skip_number(&mut self) -> Option<()> {
            let bytes = self.bytes();
            let digits = |at: &mut usize| {
                let start = *at;
                while let Some(b'0'..=b'9') = bytes.get(*at) {
                    *at += 1;
                }
                *at > start
            };
            if bytes.get(self.at) == Some(&b'-') {
                self.at += 1;
            }
            match bytes.get(self.at)? {
                b'0' => self.at += 1,
                b'1'..=b'9' => {
                    digits(&mut self.at);
                }
                _ => return None,
            }
            if bytes.get(self.at) == Some(&b'.') {
                self.at += 1;
                if !digits(&mut self.at) {
                    return None;
                }
            }
            if let Some(b'e' | b'E') = bytes.get(self.at) {
                self.at += 1;
                if let Some(b'+' | b'-') = bytes.get(self.at) {
                    self.at += 1;
                }
                if !digits(&mut self.at) {
                    return None;
                }
            }
            // serde_json reads "01" as a bad number, not as 0 then 1.
            match bytes.get(self.at) {
                Some(b'0'..=b'9') => None,
                _ => Some(()),
            }
        }

        /// Past any one value, checked; without recursion, nesting kept as bits.
        fn skip_value(&mut self) -> Option<()> {
            // Most skipped values (ids, names, timestamps) are strings or numbers.
            match self.peek()? {
                b'"' => return self.skip_string().map(drop),
                b'-' | b'0'..=b'9' => return self.skip_number(),
                _ => {}
            }
            // Bit n set: the container at depth n + 1 is an object.
            let mut objects: u64 = 0;
            let mut depth: u32 = 0;
            loop {
                // A value.
                match self.peek()? {
                    open @ (b'{' | b'[') => {
                        self.at += 1;
                        let close = if open == b'{' { b'}' } else { b']' };
                        if self.peek()? == close {
                            self.at += 1;
                        } else {
                            if depth == MAX_DEPTH {
                                return None;
                            }
                            let object = open == b'{';
                            objects = (objects & !(1 << depth)) | (u64::from(object) << depth);
                            depth += 1;
                            if object {
                                self.key()?;
                            }
                            continue;
                        }
                    }
                    b'"' => {
                        self.skip_string()?;
                    }
                    b'-' | b'0'..=b'9' => self.skip_number()?,
                    b't' => self.literal(b"true")?,
                    b'f' => self.literal(b"false")?,
                    b'n' => self.literal(b"null")?,
                    _ => return None,
                }
                // After a value: the containers it closes, then a comma or the end.
                loop {
                    if depth == 0 {
                        return Some(());
                    }
                    let object = objects & (1 << (depth - 1)) != 0;
                    match self.peek()? {
                        b',' => {
                            self.at += 1;
                            if object {
                                self.key()?;
                            }
                            break;
                        }
                        b'}' if object => {}
                        b']' if !object => {}
                        _ => return None,
                    }
                    self.at += 1;
                    depth -= 1;
                }
            }
        }

        /// Past a skipped object's key and its colon.
        fn key(&mut self) -> Option<()> {
            if self.peek()? != b'"' {
                return None;
            }
            self.skip_string()?;
            self.eat(b':')
        }

        /// `choices`: null, or an array of choice objects.
        fn choices(&mut self) -> Option<Option<Texts<'a>>> {
            if self.null()? {
                return Some(None);
            }
            let mut texts = Texts::default();
            self.array(|r| {
                let (mut delta, mut message, mut text) = (None, None, None);
                let mut seen = Seen(0);
                r.object(|r, key| {
                    match key {
                        b"delta" => {
                            seen.first(0)?;
                            delta = r.text()?;
                        }
                        b"message" => {
                            seen.first(1)?;
                            message = r.text()?;
                        }
                        b"text" => {
                            seen.first(2)?;
                            text = r.optional_string()?;
                        }
                        _ => r.skip_value()?,
                    }
                    Some(())
                })?;
                texts.push(match delta.or(message) {
                    Some(content) => content,
                    None => text,
                });
                Some(())
            })?;
            Some(Some(texts))
        }

        /// A choice's `delta` or `message`: `None` for null, or an object's `content`
        /// (itself absent, null or a string).
        fn text(&mut self) -> Option<Option<Content<'a>>> {
            self.object_with(b"content", Self::optional_string)
        }

        /// Null (`None`), or an object whose field `name` (given once at most) `read`
        /// reads, its other fields skipped; the field absent is `T`'s default.
        fn object_with<T: Default>(
            &mut self,
            name: &[u8],
            mut read: impl FnMut(&mut Self) -> Option<T>,
        ) -> Option<Option<T>> {
            if self.null()? {
                return Some(None);
            }
            let mut value = T::default();
            let mut seen = Seen(0);
            self.object(|r, key| {
                if key == name {
                    seen.first(0)?;
                    value = read(r)?;
                } else {
                    r.skip_value()?;
                }
                Some(())
            })?;
            Some(Some(value))
        }

        /// `usage`: null, or an object of token counts.
        fn usage(&mut self) -> Option<Option<UsageView>> {
            if self.null()? {
                return Some(None);
            }
            let mut usage = UsageView::default();
            let mut seen = Seen(0);
            self.object(|r, key| {
                let field = match key {
                    b"prompt_tokens" | b"input_tokens" => (0, &mut usage.prompt_tokens),
                    b"completion_tokens" | b"output_tokens" => (1, &mut usage.completion_tokens),
                    b"cache_creation_input_tokens" => (2, &mut usage.cache_creation_input_tokens),
                    b"cache_read_input_tokens" => (3, &mut usage.cache_read_input_tokens),
                    _ => return r.skip_value(),
                };
                seen.first(field.0)?;
                *field.1 = r.optional_u64()?;
                Some(())
            })?;
            Some(Some(usage))
        }

        /// `response` or `message`: null, or an object with perhaps a usage.
        fn nested(&mut self) -> Option<Option<Nested>> {
            let usage = self.object_with(b"usage", Self::usage)?;
            Some(usage.map(|usage| Nested { usage }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The one pass either gives up or reads what serde_json reads.
    fn agrees(data: &str) -> Option<Chunk<'_>> {
        agrees_after(data, None)
    }

    /// The same, read as the next chunk of a stream whose opening so far is `opening`.
    fn agrees_after<'a>(data: &'a str, opening: Option<&mut Opening>) -> Option<Chunk<'a>> {
        let fast = skim::chunk(data, opening);
        let defined = serde_view::chunk(data);
        if let Some(fast) = &fast {
            assert_eq!(Some(fast), defined.as_ref(), "read differently: {data:?}");
        }
        // Its usage alone, read as serde_json reads it when read, and read when the
        // whole chunk is.
        let usage = skim::usage(data);
        if let Some(usage) = usage {
            assert_eq!(usage, serde_usage(data), "usage read differently: {data:?}");
        }
        assert!(
            fast.is_none() || usage.is_some(),
            "usage not read: {data:?}"
        );
        fast
    }

    /// Chunks as servers send them are read in the one pass, not handed on.
    #[test]
    fn recorded_streams_are_read_in_one_pass_as_serde_reads_them() {
        let (mut read, mut resumed) = (0, 0);
        for entry in std::fs::read_dir("tests/transcripts").unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "sse") {
                continue;
            }
            let bytes = std::fs::read(&path).unwrap();
            // Read alone, and as the stream's next chunk, after the opening it repeats.
            let mut opening = Opening::default();
            for event in crate::streams::parse_events(&bytes) {
                if event.is_done() {
                    continue;
                }
                assert!(
                    agrees(&event.data).is_some(),
                    "{}: {:?}",
                    path.display(),
                    event.data
                );
                resumed += usize::from(opening.shared(&event.data) > 0);
                assert_eq!(
                    agrees_after(&event.data, Some(&mut opening)),
                    agrees(&event.data)
                );
                read += 1;
            }
        }
        assert!(read > 100, "only {read} events in the transcripts");
        // Chat streams (OpenAI's, vLLM's, llama.cpp's...) repeat an id, a model and more
        // in every chunk; Responses and Messages events open with their type.
        assert!(
            resumed * 2 > read,
            "only {resumed} of {read} events read after an opening"
        );
    }

    /// An opening is kept only up to the first member read, so a chunk that repeats
    /// it and then differs is still read whole; one that does not repeat it is read
    /// from the start.
    #[test]
    fn a_stream_opening_is_read_once_and_nothing_read_is_passed_over() {
        let mut opening = Opening::default();
        let mut next = |data| {
            let shared = opening.shared(data);
            let chunk = agrees_after(data, Some(&mut opening));
            (shared, chunk, String::from_utf8(opening.0.clone()).unwrap())
        };
        let first = r#"{"id":"a", "model":"m","choices":[{"delta":{"content":"x"}}],"z":1}"#;
        let (shared, chunk, kept) = next(first);
        assert_eq!((shared, kept.as_str()), (0, r#"{"id":"a", "model":"m","#));
        assert_eq!(chunk.unwrap().texts().collect::<Vec<_>>(), ["x"]);
        // The same opening, then a field read where the first had choices.
        let usage = r#"{"id":"a", "model":"m","usage":{"prompt_tokens":1,"completion_tokens":2},"choices":[]}"#;
        let (shared, chunk, kept) = next(usage);
        assert_eq!((shared, kept.as_str()), (23, r#"{"id":"a", "model":"m","#));
        let chunk = chunk.unwrap();
        assert!(chunk.is_usage_only());
        assert_eq!(chunk.usage().map(|u| u.completion_tokens), Some(2));
        // A longer opening is kept, and a shorter one.
        let longer = r#"{"id":"a", "model":"m","created":5,"choices":[]}"#;
        assert_eq!(next(longer).2, r#"{"id":"a", "model":"m","created":5,"#);
        let other = r#"{"id":"b","model":"m","choices":[{"delta":{"content":"y"}}]}"#;
        let (shared, chunk, kept) = next(other);
        assert_eq!((shared, kept.as_str()), (0, r#"{"id":"b","model":"m","#));
        assert_eq!(chunk.unwrap().texts().collect::<Vec<_>>(), ["y"]);
        // Broken after the opening: left to serde_json, which refuses it; the opening
        // stays as it was.
        for broken in [r#"{"id":"b","model":"m",}"#, r#"{"id":"b","model":"m","#] {
            let (shared, chunk, kept) = next(broken);
            assert_eq!(
                (shared, chunk, kept.as_str()),
                (22, None, r#"{"id":"b","model":"m","#)
            );
            assert_eq!(Chunk::parse(broken), None);
        }
        // A first member read (a Messages event's type) leaves no opening; nor does an
        // object of one member.
        let event =
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"hi"}}"#;
        assert_eq!(next(event).2, "");
        assert_eq!(next(r#"{"id":"c"}"#).2, "");
        assert_eq!(next(r#"{"id":"c","n":1}"#).2, r#"{"id":"c","#);
    }

    #[test]
    fn what_a_chunk_says_is_read_the_same_both_ways() {
        let read = [
            r#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","system_fingerprint":null,"choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}"#,
            r#"{"choices":[{"delta":{"content":"a \"quoted\"\nline \u00e9 \ud83d\ude00"}}]}"#,
            r#"{"choices":[{"delta":{"content":"x"}},{"delta":{}},{"message":{"content":"y"}},{"text":"z"},{"delta":null,"text":"w"}]}"#,
            r#"{"choices":[{"delta":{"content":null},"message":{"content":"ignored: delta first"}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"content":"t"},"logprobs":{"content":[{"token":"t","logprob":-0.5,"bytes":[116],"top_logprobs":[]}]}}]}"#,
            r#"{"choices":[],"usage":{"prompt_tokens":12,"completion_tokens":3,"total_tokens":15,"prompt_tokens_details":{"cached_tokens":0}}}"#,
            r#"{"choices":null,"usage":null}"#,
            r#"{"type":"response.output_text.delta","item_id":"i","output_index":0,"delta":"Hel\"lo"}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"hi"}}"#,
            r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"a\":"}}"#,
            r#"{"type":"message_start","message":{"id":"m","usage":{"input_tokens":6,"output_tokens":1,"cache_read_input_tokens":4}}}"#,
            r#"{"type":"response.completed","response":{"id":"r","output":[{"content":[{"text":"a"}]}],"usage":{"input_tokens":3,"output_tokens":8}}}"#,
            r#"{"type":"message_stop"}"#,
            r#"{"error":{"message":"overloaded","type":"server_error","code":null}}"#,
            r#"{"error":null,"choices":[]}"#,
            r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
            r#"{"usage":{"prompt_tokens":0,"completion_tokens":18446744073709551615}}"#,
            r#"{"n":[-0,0.5,-1.25e+3,1E9,true,false,null,[],{},[[{"a":[{}]}]],"\\\/\b\f\n\r\t"]}"#,
            " \t\r\n{ \"choices\" : [ { \"delta\" : { \"content\" : \"spaced\" } } ] , \"usage\" : { \"input_tokens\" : 1 } } \n",
            "{}",
        ];
        for data in read {
            let chunk = agrees(data).unwrap_or_else(|| panic!("not read in one pass: {data}"));
            assert!(serde_view::chunk(data).is_some(), "{data}");
            let _ = chunk;
        }
        let texts = |data| {
            Chunk::parse(data)
                .unwrap()
                .texts()
                .map(String::from)
                .collect::<Vec<_>>()
        };
        assert_eq!(texts(read[1]), ["a \"quoted\"\nline é 😀"]);
        assert_eq!(texts(read[2]), ["x", "y", "z", "w"]);
        assert_eq!(texts(read[3]), Vec::<String>::new());
        assert_eq!(texts(read[7]), ["Hel\"lo"]);
        assert_eq!(texts(read[8]), ["hi"]);
        assert!(Chunk::parse(read[5]).unwrap().is_usage_only());
        assert!(!Chunk::parse(read[6]).unwrap().is_usage_only());
        assert!(Chunk::parse(read[13]).unwrap().is_error());
        assert!(!Chunk::parse(read[14]).unwrap().is_error());
        assert!(Chunk::parse(read[15]).unwrap().is_error());
        assert!(Chunk::parse(read[12]).unwrap().ends_response());
        let usage = |data| {
            Chunk::parse(data)
                .unwrap()
                .usage()
                .map(|u| (u.prompt_tokens, u.completion_tokens))
        };
        assert_eq!(usage(read[10]), Some((10, 1)));
        assert_eq!(usage(read[11]), Some((3, 8)));
        assert_eq!(usage(read[16]), Some((0, u64::MAX)));
        assert_eq!(usage(read[18]), Some((1, 0)));
    }

    /// What serde_json refuses, or reads in ways the pass does not follow, is handed on;
    /// the answer is then serde_json's, refusal included.
    #[test]
    fn the_unusual_is_left_to_serde() {
        let cases = [
            // Given twice (serde refuses), also through an alias.
            r#"{"choices":[],"choices":[]}"#,
            r#"{"usage":{"prompt_tokens":1,"input_tokens":2}}"#,
            r#"{"choices":[{"delta":{"content":"a","content":"b"}}]}"#,
            // Not plain unsigned integers.
            r#"{"usage":{"prompt_tokens":1.0}}"#,
            r#"{"usage":{"prompt_tokens":-1}}"#,
            r#"{"usage":{"prompt_tokens":18446744073709551616}}"#,
            r#"{"usage":{"prompt_tokens":"5"}}"#,
            // Wrong types where a field is read.
            r#"{"choices":{}}"#,
            r#"{"choices":[null]}"#,
            r#"{"choices":[[{"content":"a"}]]}"#,
            r#"{"choices":[{"delta":"text"}]}"#,
            r#"{"type":5}"#,
            r#"{"response":[]}"#,
            // Broken JSON.
            r#"{"a":01}"#,
            r#"{"a":1.}"#,
            r#"{"a":-}"#,
            r#"{"a":1e}"#,
            r#"{"a":[1,]}"#,
            r#"{"a":{,}}"#,
            r#"{"a":"\x"}"#,
            r#"{"a":"\u12g4"}"#,
            "{\"a\":\"tab\there\"}",
            r#"{"a":tru}"#,
            r#"{"a":1}x"#,
            r#"{"a":1"#,
            r#"{"a":"open"#,
            r#"{"a" 1}"#,
            r#"{"a":1 "b":2}"#,
            r#"{"a":[1}"#,
            r#"{"a":{"b":1]}"#,
            // An escaped key; a lone surrogate where a string is read.
            r#"{"cho\u0069ces":[{"text":"an escaped key"}]}"#,
            r#"{"choices":[{"delta":{"content":"\ud800"}}]}"#,
            // Not an object at the top.
            r#"[{"delta":{"content":"a"}}]"#,
            "[DONE]",
            "",
            "null",
        ];
        for data in cases {
            assert!(
                skim::chunk(data, None).is_none(),
                "read in one pass: {data}"
            );
            assert_eq!(Chunk::parse(data), serde_view::chunk(data), "{data}");
            assert_eq!(usage_in(data), serde_usage(data), "{data}");
        }
        // Where the usage itself is unusual, reading it alone is left to serde too.
        let twice = [
            r#"{"usage":{"prompt_tokens":1},"usage":{"prompt_tokens":2}}"#,
            r#"{"response":{"usage":{"input_tokens":1}},"response":null}"#,
            r#"{"message":null,"message":{"usage":{"input_tokens":1}}}"#,
        ];
        for data in [cases[1]].iter().chain(&cases[3..7]).chain(&twice) {
            assert_eq!(skim::usage(data), None, "usage read in one pass: {data}");
            assert_eq!(usage_in(data), None, "{data}");
        }
        let deep = format!("{{\"a\":{}1{}}}", "[".repeat(100), "]".repeat(100));
        assert!(skim::chunk(&deep, None).is_none());
        assert!(Chunk::parse(&deep).is_some(), "serde_json reads it");
        let deep = format!("{{\"a\":{}1{}}}", "[".repeat(64), "]".repeat(64));
        assert!(agrees(&deep).is_some());
    }

    /// Random chunks: built from the fields read and others, of every JSON type, with
    /// escapes and whitespace; then some bytes cut or changed. Whatever the pass reads,
    /// it reads as serde_json does; and most that serde_json reads it reads itself (not
    /// all: serde also takes `[]` for a struct, and the pass leaves arrays to it).
    #[test]
    fn random_chunks_are_read_as_serde_reads_them() {
        let mut rng = fastrand::Rng::with_seed(11);
        let (mut whole, mut read_whole) = (0, 0);
        for round in 0..20_000 {
            let mut data = String::new();
            value(&mut rng, &mut data, 0, true);
            if round % 3 == 0 && !data.is_empty() {
                let mut bytes = data.into_bytes();
                for _ in 0..rng.usize(1..4) {
                    let at = rng.usize(..bytes.len());
                    match rng.u8(..3) {
                        0 => {
                            bytes.remove(at);
                        }
                        1 => bytes.insert(at, NOISE[rng.usize(..NOISE.len())]),
                        _ => bytes[at] = NOISE[rng.usize(..NOISE.len())],
                    }
                    if bytes.is_empty() {
                        break;
                    }
                }
                if let Ok(data) = String::from_utf8(bytes) {
                    agrees(&data);
                }
                continue;
            }
            if serde_view::chunk(&data).is_some() {
                whole += 1;
                read_whole += usize::from(agrees(&data).is_some());
            } else {
                assert!(agrees(&data).is_none());
            }
        }
        assert!(
            read_whole * 10 > whole * 8,
            "the pass read only {read_whole} of the {whole} chunks serde_json reads"
        );
    }

    /// Random streams: each chunk after the first opens with the opening the chunks
    /// before left, and goes on with random members (some bytes cut or changed); read
    /// from the opening's end, it reads as serde_json reads it whole.
    #[test]
    fn random_chunks_after_an_opening_are_read_as_serde_reads_them() {
        let mut rng = fastrand::Rng::with_seed(23);
        let (mut resumed, mut read) = (0, 0);
        for _ in 0..2_000 {
            let mut opening = Opening::default();
            for _ in 0..8 {
                let mut data = String::from_utf8(opening.0.clone()).unwrap();
                let mut rest = String::new();
                value(&mut rng, &mut rest, 0, true);
                match rest.trim_start().strip_prefix('{') {
                    Some(members) if !data.is_empty() => data.push_str(members),
                    _ => data = rest,
                }
                if rng.u8(..4) == 0 {
                    let mut bytes = data.into_bytes();
                    let at = rng.usize(..bytes.len());
                    bytes[at] = NOISE[rng.usize(..NOISE.len())];
                    match String::from_utf8(bytes) {
                        Ok(changed) => data = changed,
                        Err(_) => continue,
                    }
                }
                let shared = opening.shared(&data);
                if agrees_after(&data, Some(&mut opening)).is_some() {
                    read += 1;
                    resumed += usize::from(shared > 0);
                }
            }
        }
        assert!(
            resumed * 3 > read,
            "only {resumed} of {read} chunks read were read after an opening"
        );
    }

    #[test]
    fn the_word_at_a_time_search_finds_what_a_byte_at_a_time_finds() {
        let mut rng = fastrand::Rng::with_seed(5);
        let plain = b"az AZ09{}:,\x7f\x80\xc3\xa9\xff";
        for _ in 0..20_000 {
            let mut bytes: Vec<u8> = (0..rng.usize(..40))
                .map(|_| plain[rng.usize(..plain.len())])
                .collect();
            for _ in 0..rng.usize(..3) {
                if !bytes.is_empty() {
                    let at = rng.usize(..bytes.len());
                    bytes[at] = [b'"', b'\\', 0, 0x1f, b'\n'][rng.usize(..5)];
                }
            }
            let expected = bytes
                .iter()
                .position(|&b| b == b'"' || b == b'\\' || b < 0x20);
            assert_eq!(skim::special(&bytes), expected, "{bytes:?}");
        }
    }

    /// Bytes that break JSON, put in at random.
    const NOISE: &[u8] = b"{}[]\",:\\ 0-.e\nnu";

    const KEYS: [&str; 22] = [
        "choices",
        "usage",
        "error",
        "type",
        "delta",
        "response",
        "message",
        "content",
        "text",
        "prompt_tokens",
        "input_tokens",
        "completion_tokens",
        "output_tokens",
        "cache_read_input_tokens",
        "cache_creation_input_tokens",
        "id",
        "index",
        "model",
        "logprobs",
        "finish_reason",
        "role",
        "cho\\u0069ces",
    ];

    fn space(rng: &mut fastrand::Rng, out: &mut String) {
        if rng.u8(..8) == 0 {
            out.push_str([" ", "\n", "\t", "\r\n ", "  "][rng.usize(..5)]);
        }
    }

    /// A JSON value; objects at the top and (mostly) under read keys, so the fields the
    /// pass reads get all kinds of values.
    fn value(rng: &mut fastrand::Rng, out: &mut String, depth: u32, top: bool) {
        space(rng, out);
        let pick = if top { 0 } else { rng.u8(..12) };
        match pick {
            0..=2 if depth < 6 => {
                out.push('{');
                let members = rng.usize(..5);
                for i in 0..members {
                    if i > 0 {
                        out.push(',');
                    }
                    space(rng, out);
                    let key = KEYS[rng.usize(..KEYS.len())];
                    out.push('"');
                    out.push_str(key);
                    out.push('"');
                    space(rng, out);
                    out.push(':');
                    value(rng, out, depth + 1, false);
                }
                space(rng, out);
                out.push('}');
            }
            3 | 4 if depth < 6 => {
                out.push('[');
                for i in 0..rng.usize(..4) {
                    if i > 0 {
                        out.push(',');
                    }
                    let object = rng.bool();
                    value(rng, out, depth + 1, object);
                }
                out.push(']');
            }
            5..=7 => {
                let strings = [
                    "",
                    "plain",
                    "with \\\"quotes\\\"",
                    "line\\nbreak",
                    "\\u00e9t\\u00E9",
                    "\\ud83d\\ude00",
                    "slash\\/",
                    "é ü 中",
                    "\\\\",
                    "response.output_text.delta",
                    "content_block_delta",
                    "message_stop",
                    "error",
                    "text_delta",
                ];
                out.push('"');
                out.push_str(strings[rng.usize(..strings.len())]);
                out.push('"');
            }
            8 | 9 => {
                let numbers = [
                    "0",
                    "7",
                    "42",
                    "18446744073709551615",
                    "18446744073709551616",
                    "-3",
                    "1.5",
                    "2e3",
                    "-0.0e-1",
                    "1E+2",
                ];
                out.push_str(numbers[rng.usize(..numbers.len())]);
            }
            _ => out.push_str(["null", "true", "false", "null"][rng.usize(..4)]),
        }
        space(rng, out);
    }
}
