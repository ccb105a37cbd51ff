//! JSON lines: a document per line, an object with a `text` (its other fields become
//! the document's metadata) or a string; blank lines skipped.

use serde_json::{Map, Value};

use super::{Document, Loader};

pub struct JsonLines;

impl Loader for JsonLines {
    fn name(&self) -> &'static str {
        "json lines"
    }

    fn extensions(&self) -> &'static [&'static str] {
        &["jsonl"]
    }

    fn content_types(&self) -> &'static [&'static str] {
        &[
            "application/jsonl",
            "application/x-ndjson",
            "application/ndjson",
        ]
    }

    fn documents(&self, source: &str, text: String) -> Result<Vec<Document>, String> {
        let mut documents = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let at = format!("{source}:{}", i + 1);
            let (text, mut metadata) = match serde_json::from_str::<Value>(line) {
                Ok(Value::String(text)) => (text, Map::new()),
                Ok(Value::Object(mut object)) => match object.remove("text") {
                    Some(Value::String(text)) => (text, object),
                    _ => return Err(format!("{at}: a line needs a \"text\" string")),
                },
                Ok(_) => return Err(format!("{at}: a line is an object or a string")),
                Err(e) => return Err(format!("{at}: not JSON ({e})")),
            };
            metadata.insert("source".into(), Value::String(at.clone()));
            documents.push(Document {
                source: at,
                text,
                metadata,
                markdown: false,
            });
        }
        Ok(documents)
    }
}
