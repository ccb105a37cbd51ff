//! A batch file checked line by line as its bytes arrive: each line one request, a JSON
//! object with a `custom_id` unique in the file, `method` POST, a `url` the gateway
//! serves, and a `body` naming a configured model of the kind that URL serves. Errors
//! name the line and what is wrong with it.

use std::collections::HashMap;

use serde_json::Value;

use crate::domain::ModelKind;

/// The most requests one file may hold (OpenAI's limit for a batch).
pub const MAX_REQUESTS: u64 = 50_000;

/// Invalid lines listed in an error at most; the rest are counted.
const LISTED: usize = 10;

/// The endpoints a batch line may name, and the kind of request each is.
pub const ENDPOINTS: [(&str, ModelKind); 4] = [
    ("/v1/chat/completions", ModelKind::Chat),
    ("/v1/embeddings", ModelKind::Embeddings),
    ("/v1/completions", ModelKind::Completions),
    ("/v1/responses", ModelKind::Responses),
];

pub struct LineCheck {
    /// Every configured model alias, and its kind.
    models: HashMap<String, ModelKind>,
    partial: Vec<u8>,
    line: u64,
    requests: u64,
    /// Each `custom_id` seen, and its line.
    seen: HashMap<String, u64>,
    errors: Vec<String>,
    invalid: u64,
}

impl LineCheck {
    pub fn new(models: HashMap<String, ModelKind>) -> LineCheck {
        LineCheck {
            models,
            partial: Vec::new(),
            line: 0,
            requests: 0,
            seen: HashMap::new(),
            errors: Vec::new(),
            invalid: 0,
        }
    }

    /// Checks the lines `bytes` complete.
    pub fn push(&mut self, mut bytes: &[u8]) {
        while let Some(end) = bytes.iter().position(|b| *b == b'\n') {
            if self.partial.is_empty() {
                self.check(&bytes[..end]);
            } else {
                self.partial.extend_from_slice(&bytes[..end]);
                let whole = std::mem::take(&mut self.partial);
                self.check(&whole);
            }
            bytes = &bytes[end + 1..];
        }
        self.partial.extend_from_slice(bytes);
    }

    /// Checks the last line; the number of requests, or why the file is refused.
    pub fn finish(mut self) -> Result<u64, String> {
        if !self.partial.is_empty() {
            let last = std::mem::take(&mut self.partial);
            self.check(&last);
        }
        if self.invalid > 0 {
            let mut message = format!(
                "the file has {} invalid line{}: {}",
                self.invalid,
                if self.invalid == 1 { "" } else { "s" },
                self.errors.join("; ")
            );
            let unlisted = self.invalid - self.errors.len() as u64;
            if unlisted > 0 {
                message.push_str(&format!("; and {unlisted} more"));
            }
            return Err(message);
        }
        if self.requests == 0 {
            return Err("the file holds no requests: one JSON object a line".into());
        }
        Ok(self.requests)
    }

    fn check(&mut self, line: &[u8]) {
        self.line += 1;
        let at = self.line;
        let line = line.trim_ascii();
        if line.is_empty() {
            return;
        }
        self.requests += 1;
        if self.requests == MAX_REQUESTS + 1 {
            self.fail(at, format!("a file holds at most {MAX_REQUESTS} requests"));
        }
        if let Err(why) = self.request(at, line) {
            self.fail(at, why);
        }
    }

    fn fail(&mut self, at: u64, why: String) {
        self.invalid += 1;
        if self.errors.len() < LISTED {
            self.errors.push(format!("line {at}: {why}"));
        }
    }

    /// What is wrong with one request line, if anything.
    fn request(&mut self, at: u64, line: &[u8]) -> Result<(), String> {
        let value: Value = serde_json::from_slice(line).map_err(|e| format!("not JSON ({e})"))?;
        let Value::Object(request) = value else {
            return Err("must be a JSON object".into());
        };
        let custom_id = match request.get("custom_id") {
            Some(Value::String(id)) if !id.is_empty() => id.clone(),
            _ => return Err("custom_id must be a non-empty string".into()),
        };
        if let Some(first) = self.seen.get(&custom_id) {
            return Err(format!(
                "custom_id \"{custom_id}\" appears twice (first on line {first}); each must be unique in the file"
            ));
        }
        self.seen.insert(custom_id, at);
        if request.get("method").and_then(Value::as_str) != Some("POST") {
            return Err("method must be \"POST\"".into());
        }
        let url = request.get("url").and_then(Value::as_str).unwrap_or("");
        let Some((_, kind)) = ENDPOINTS.iter().find(|(path, _)| *path == url) else {
            let served: Vec<&str> = ENDPOINTS.iter().map(|(path, _)| *path).collect();
            return Err(format!(
                "url \"{url}\" is not one the gateway serves; use one of {}",
                served.join(", ")
            ));
        };
        let Some(Value::Object(body)) = request.get("body") else {
            return Err("body must be a JSON object: the request as it would be sent".into());
        };
        let Some(model) = body.get("model").and_then(Value::as_str) else {
            return Err("body.model is missing".into());
        };
        match self.models.get(model) {
            None => Err(format!("body.model \"{model}\" is not a configured model")),
            Some(served) if *served != kind.served_by() => Err(format!(
                "body.model \"{model}\" is for {served} requests, not {url}"
            )),
            Some(_) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn check(text: &str, piece: usize) -> Result<u64, String> {
        let models = HashMap::from([
            ("gpt-4o-mini".to_string(), ModelKind::Chat),
            ("text-embedding-3-small".to_string(), ModelKind::Embeddings),
        ]);
        let mut lines = LineCheck::new(models);
        for chunk in text.as_bytes().chunks(piece) {
            lines.push(chunk);
        }
        lines.finish()
    }

    fn line(id: &str, url: &str, model: &str) -> String {
        format!(
            "{{\"custom_id\":\"{id}\",\"method\":\"POST\",\"url\":\"{url}\",\"body\":{{\"model\":\"{model}\",\"messages\":[]}}}}\n"
        )
    }

    #[test]
    fn good_lines_are_counted_however_the_bytes_arrive() {
        let text = [
            line("a", "/v1/chat/completions", "gpt-4o-mini"),
            "\n".into(),
            line("b", "/v1/embeddings", "text-embedding-3-small"),
            line("c", "/v1/responses", "gpt-4o-mini").trim_end().into(),
        ]
        .concat();
        for piece in [1, 3, 7, 1000] {
            assert_eq!(check(&text, piece), Ok(3), "in pieces of {piece}");
        }
    }

    #[test]
    fn bad_lines_are_named_by_number_and_reason() {
        let text = [
            line("a", "/v1/chat/completions", "gpt-4o-mini"),
            line("a", "/v1/chat/completions", "gpt-4o-mini"),
            "not json\n".into(),
            line("c", "/v1/images", "gpt-4o-mini"),
            line("d", "/v1/chat/completions", "nope"),
            line("e", "/v1/chat/completions", "text-embedding-3-small"),
            "{\"custom_id\":\"f\",\"method\":\"GET\",\"url\":\"/v1/embeddings\",\"body\":{}}\n"
                .into(),
        ]
        .concat();
        let error = check(&text, 5).unwrap_err();
        assert!(
            error.starts_with("the file has 6 invalid lines: "),
            "{error}"
        );
        for expected in [
            "line 2: custom_id \"a\" appears twice (first on line 1)",
            "line 3: not JSON",
            "line 4: url \"/v1/images\" is not one the gateway serves",
            "line 5: body.model \"nope\" is not a configured model",
            "line 6: body.model \"text-embedding-3-small\" is for embeddings requests, not /v1/chat/completions",
            "line 7: method must be \"POST\"",
        ] {
            assert!(error.contains(expected), "{expected} in {error}");
        }
        assert_eq!(
            check("\n\n", 1),
            Err("the file holds no requests: one JSON object a line".into())
        );
    }

    #[test]
    fn only_the_first_errors_are_listed() {
        let text = "x\n".repeat(25);
        let error = check(&text, 64).unwrap_err();
        assert!(error.ends_with("; and 15 more"), "{error}");
        assert_eq!(error.matches("not JSON").count(), 10);
    }
}
