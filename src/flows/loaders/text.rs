//! Plain text: a file or page is one document.

use super::{Document, Loader, source_metadata};

pub struct Text;

impl Loader for Text {
    fn name(&self) -> &'static str {
        "text"
    }

    fn extensions(&self) -> &'static [&'static str] {
        &["txt", "text"]
    }

    fn content_types(&self) -> &'static [&'static str] {
        &["text/plain"]
    }

    fn documents(&self, source: &str, text: String) -> Result<Vec<Document>, String> {
        Ok(vec![Document {
            metadata: source_metadata(source),
            source: source.to_string(),
            text,
            markdown: false,
        }])
    }
}
