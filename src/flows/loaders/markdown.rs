//! Markdown: one document, marked so the `headings` splitter can cut it by section.

use super::{Document, Loader, source_metadata};

pub struct Markdown;

impl Loader for Markdown {
    fn name(&self) -> &'static str {
        "markdown"
    }

    fn extensions(&self) -> &'static [&'static str] {
        &["md", "markdown"]
    }

    fn content_types(&self) -> &'static [&'static str] {
        &["text/markdown", "text/x-markdown"]
    }

    fn documents(&self, source: &str, text: String) -> Result<Vec<Document>, String> {
        Ok(vec![Document {
            metadata: source_metadata(source),
            source: source.to_string(),
            text,
            markdown: true,
        }])
    }
}
