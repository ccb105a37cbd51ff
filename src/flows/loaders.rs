//! Loaders: documents read for an `embed` step from the directory the config allows
//! (`[flows] documents`), never outside it, or fetched from an http(s) URL that starts
//! with one of the config's `[flows] urls` (the fetch is the gateway's; `from_url`
//! makes the documents of what it fetched). Text (`.txt`), markdown (`.md`) and JSON
//! lines (`.jsonl`: an object per line with a `text` and any other fields, which become
//! the chunk's metadata, or a string per line). A folder is read whole, its files in name
//! order, those of other kinds skipped. Blocking file I/O: callers run it off the
//! runtime threads.

use std::path::{Component, Path, PathBuf};

use serde_json::{Map, Value};

/// The most a single load may read, so a wrong folder cannot fill the memory.
pub const MAX_LOAD_BYTES: u64 = 64 * 1024 * 1024;

/// A document: where it came from (relative to the allowed directory; `file:line` for
/// JSON lines), its text and its metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    pub source: String,
    pub text: String,
    pub metadata: Map<String, Value>,
    /// Markdown, which the `headings` splitter can cut by section.
    pub markdown: bool,
}

/// Whether a path a flow names may be read: relative, and never climbing out.
pub fn check_relative(path: &str) -> Result<(), String> {
    let path = Path::new(path);
    if path.is_absolute()
        || path
            .components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(format!(
            "\"{}\" must be a path inside the documents directory (relative, without \"..\")",
            path.display()
        ));
    }
    Ok(())
}

/// Reads `relative` (a file or a folder) under `root`.
pub fn load(root: &Path, relative: &str) -> Result<Vec<Document>, String> {
    check_relative(relative)?;
    let root = root.canonicalize().map_err(|e| {
        format!(
            "the documents directory {} cannot be read: {e}",
            root.display()
        )
    })?;
    let target = root
        .join(relative)
        .canonicalize()
        .map_err(|e| format!("{relative} cannot be read: {e}"))?;
    // A link inside may still point outside.
    if !target.starts_with(&root) {
        return Err(format!("{relative} leads outside the documents directory"));
    }
    let mut files = Vec::new();
    if target.is_dir() {
        walk(&target, &mut files).map_err(|e| format!("{relative} cannot be read: {e}"))?;
        files.sort();
    } else {
        files.push(target);
    }
    let mut documents = Vec::new();
    let mut read = 0u64;
    for file in files {
        let Some(kind) = Kind::of(&file) else {
            continue;
        };
        let source = file
            .strip_prefix(&root)
            .unwrap_or(&file)
            .to_string_lossy()
            .into_owned();
        read += std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
        if read > MAX_LOAD_BYTES {
            return Err(format!(
                "{relative} holds more than {} MiB; load a smaller folder",
                MAX_LOAD_BYTES / 1024 / 1024
            ));
        }
        let text =
            std::fs::read_to_string(&file).map_err(|e| format!("{source} cannot be read: {e}"))?;
        match kind {
            Kind::Text | Kind::Markdown => documents.push(Document {
                metadata: source_metadata(&source),
                source,
                text,
                markdown: kind == Kind::Markdown,
            }),
            Kind::JsonLines => documents.extend(json_lines(&source, &text)?),
        }
    }
    Ok(documents)
}

/// Whether `url` may be loaded: http(s), and starting with an allowed prefix.
pub fn check_url(url: &str, allowed: &[&str]) -> Result<(), String> {
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(format!("\"{url}\" is not an http(s) URL"));
    }
    if allowed.iter().any(|prefix| url.starts_with(prefix)) {
        return Ok(());
    }
    Err(format!(
        "\"{url}\" is not under an allowed URL ([flows] urls: {})",
        if allowed.is_empty() {
            "none".to_string()
        } else {
            allowed.join(", ")
        }
    ))
}

/// The documents of a page fetched from `url`: markdown, text or JSON lines by the
/// URL's extension, else by its content type (text when neither says).
pub fn from_url(url: &str, content_type: &str, text: String) -> Result<Vec<Document>, String> {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    let kind = Kind::of(Path::new(path)).unwrap_or(match content_type {
        t if t.starts_with("text/markdown") => Kind::Markdown,
        t if t.contains("jsonl") || t.contains("ndjson") => Kind::JsonLines,
        _ => Kind::Text,
    });
    match kind {
        Kind::JsonLines => json_lines(url, &text),
        _ => Ok(vec![Document {
            metadata: source_metadata(url),
            source: url.to_string(),
            text,
            markdown: kind == Kind::Markdown,
        }]),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Text,
    Markdown,
    JsonLines,
}

impl Kind {
    fn of(path: &Path) -> Option<Kind> {
        match path.extension()?.to_str()? {
            "txt" | "text" => Some(Kind::Text),
            "md" | "markdown" => Some(Kind::Markdown),
            "jsonl" => Some(Kind::JsonLines),
            _ => None,
        }
    }
}

fn walk(dir: &Path, files: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            walk(&entry.path(), files)?;
        } else if kind.is_file() {
            files.push(entry.path());
        }
    }
    Ok(())
}

fn source_metadata(source: &str) -> Map<String, Value> {
    let mut metadata = Map::new();
    metadata.insert("source".into(), Value::String(source.to_string()));
    metadata
}

fn json_lines(source: &str, text: &str) -> Result<Vec<Document>, String> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_is_read_in_name_order_with_json_lines_as_documents() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("kb/deep")).unwrap();
        std::fs::write(root.join("kb/b.md"), "# B\nbee").unwrap();
        std::fs::write(root.join("kb/a.txt"), "ay").unwrap();
        std::fs::write(root.join("kb/skip.png"), [0u8, 1, 2]).unwrap();
        std::fs::write(
            root.join("kb/deep/c.jsonl"),
            "{\"text\":\"sea\",\"lang\":\"en\"}\n\n\"plain\"\n",
        )
        .unwrap();
        let docs = load(root, "kb").unwrap();
        let sources: Vec<&str> = docs.iter().map(|d| d.source.as_str()).collect();
        assert_eq!(
            sources,
            [
                "kb/a.txt",
                "kb/b.md",
                "kb/deep/c.jsonl:1",
                "kb/deep/c.jsonl:3"
            ]
        );
        assert!(docs[1].markdown && !docs[0].markdown);
        assert_eq!(docs[2].text, "sea");
        assert_eq!(docs[2].metadata["lang"], "en");
        assert_eq!(docs[2].metadata["source"], "kb/deep/c.jsonl:1");
        assert_eq!(load(root, "kb/a.txt").unwrap()[0].text, "ay");
    }

    #[test]
    fn nothing_outside_the_directory_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("docs");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(dir.path().join("secret.txt"), "no").unwrap();
        for path in ["../secret.txt", "/etc/hostname", "a/../../secret.txt"] {
            let error = load(&root, path).unwrap_err();
            assert!(
                error.contains("inside the documents directory"),
                "{path}: {error}"
            );
        }
        std::os::unix::fs::symlink(dir.path().join("secret.txt"), root.join("link.txt")).unwrap();
        let error = load(&root, "link.txt").unwrap_err();
        assert!(error.contains("outside"), "{error}");
        let error = load(&root, "missing").unwrap_err();
        assert!(error.starts_with("missing cannot be read"), "{error}");
        std::fs::write(root.join("bad.jsonl"), "{\"title\":1}\n").unwrap();
        assert_eq!(
            load(&root, "bad.jsonl").unwrap_err(),
            "bad.jsonl:1: a line needs a \"text\" string"
        );
    }
}
