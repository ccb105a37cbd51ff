//! The compact token counter counts exactly what tiktoken counts, for both of OpenAI's
//! encodings, over real text in many scripts and over generated text; and its
//! vocabularies are OpenAI's published files.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;
use proptest::test_runner::{Config as Cases, TestRunner};
use sha2::{Digest, Sha256};
use switchyard::admission::estimate::count;
use switchyard::domain::TokenizerKind;

fn reference(kind: TokenizerKind, text: &str) -> u64 {
    let bpe = match kind {
        TokenizerKind::O200kBase => tiktoken_rs::o200k_base_singleton(),
        TokenizerKind::Cl100kBase => tiktoken_rs::cl100k_base_singleton(),
        TokenizerKind::Heuristic => unreachable!(),
    };
    bpe.encode_ordinary(text).len() as u64
}

const KINDS: [TokenizerKind; 2] = [TokenizerKind::O200kBase, TokenizerKind::Cl100kBase];

/// Text as prompts come: prose, code, markup, numbers, many scripts, odd spacing.
fn corpus() -> Vec<String> {
    let mut texts: Vec<String> = [
        "assets/prompts.txt",
        "README.md",
        "ARCHITECTURE.md",
        "config.toml.example",
        "src/admission/bpe.rs",
        "assets/grafana/switchyard.json",
    ]
    .iter()
    .map(|path| std::fs::read_to_string(path).unwrap())
    .collect();
    texts.extend(
        [
            "hello world",
            "I'll've you'd THEY'RE we'VE it's",
            "1234567890 3.14159 -42 1e10 0x1F 2026-11-30T15:00:00Z",
            "日本語のテキストと漢字、カタカナ。中文句子，包括标点。한국어 문장입니다.",
            "Ελληνικά κείμενα· русский текст, ещё; العربية نص مكتوب؛ עברית כתובה",
            "emoji 👩‍👩‍👧‍👦 🇺🇸 👍🏽 ❤️‍🔥 and combining: e\u{301} a\u{308}\u{323} Z\u{335}\u{336}",
            "tabs\tand\t\ttabs   spaces    \n\n\n  \r\n\r\n trailing   ",
            "=========================================== ----- ******** ////// \\\\\\",
            "<|endoftext|> <|fim_prefix|> special tokens count as text",
            "fn main() { println!(\"{}\", x.iter().map(|v| v * 2).sum::<u64>()); }",
            "SELECT id, name FROM users WHERE created_at > NOW() - INTERVAL '7 days';",
            "\u{0}\u{1}\u{7f} control \u{200b}zero\u{200b}width\u{feff}bom",
        ]
        .map(String::from),
    );
    // Long runs, where merging order matters most.
    texts.push("a".repeat(5000));
    texts.push(" ".repeat(3000));
    texts.push("ab".repeat(2000) + &"!?".repeat(1500));
    texts.push("🙂".repeat(700));
    texts
}

#[test]
fn counts_equal_tiktoken_over_real_text() {
    for kind in KINDS {
        for text in corpus() {
            // Whole, and line by line (messages are often short).
            assert_eq!(
                count(kind, &text),
                reference(kind, &text),
                "{kind:?}: {:?}…",
                text.chars().take(60).collect::<String>()
            );
            for line in text.lines().take(400) {
                assert_eq!(
                    count(kind, line),
                    reference(kind, line),
                    "{kind:?}: {line:?}"
                );
            }
        }
    }
}

#[test]
fn counts_equal_tiktoken_over_generated_text() {
    // Words, digits, punctuation, whitespace and other scripts, mixed.
    let piece = prop_oneof![
        "[a-zA-Z]{1,12}",
        "[0-9]{1,8}",
        "[ \t\r\n\u{00a0}\u{2003}\u{3000}]{1,4}",
        "[!-/:-@\\[-`{-~]{1,6}",
        "'(s|t|re|ve|m|ll|d|S|LL)",
        "[\u{00c0}-\u{024f}\u{0370}-\u{03ff}\u{0400}-\u{04ff}]{1,8}",
        "[\u{3040}-\u{30ff}\u{4e00}-\u{4fff}\u{ac00}-\u{ad00}]{1,6}",
        "[\u{0300}-\u{036f}\u{1f300}-\u{1f64f}\u{200b}-\u{200d}]{1,3}",
        any::<char>().prop_map(String::from),
    ];
    let text = prop::collection::vec(piece, 0..40).prop_map(|p| p.concat());
    let mut runner = TestRunner::new(Cases {
        cases: 400,
        failure_persistence: None,
        ..Cases::default()
    });
    runner
        .run(&text, |text| {
            for kind in KINDS {
                prop_assert_eq!(count(kind, &text), reference(kind, &text), "{:?}", kind);
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn the_vocabularies_are_openais_published_files() {
    for (path, sha256) in [
        (
            "assets/tokenizers/o200k_base.tiktoken",
            "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
        ),
        (
            "assets/tokenizers/cl100k_base.tiktoken",
            "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
        ),
    ] {
        let digest = Sha256::digest(std::fs::read(path).unwrap());
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, sha256, "{path}");
    }
}

#[test]
fn a_vocabulary_is_small() {
    use switchyard::admission::bpe::{O200K_PATTERN, Vocabulary};
    let text = std::fs::read_to_string("assets/tokenizers/o200k_base.tiktoken").unwrap();
    let vocabulary = Vocabulary::parse(&text, O200K_PATTERN).unwrap();
    assert_eq!(vocabulary.len(), 199_998);
    // Tokens, their starts and the index: a few megabytes, not the tens a general
    // tokenizer's maps take.
    assert!(
        vocabulary.heap_bytes() < 5 << 20,
        "{} bytes",
        vocabulary.heap_bytes()
    );
}
