//! Loaders: documents read for an `embed` step from the directory the config allows
//! (`[flows] documents`), never outside it, or fetched from an http(s) URL that starts
//! with one of the config's `[flows] urls` (the fetch is the gateway's; `from_url`
//! makes the documents of what it fetched). Text (`.txt`), markdown (`.md`) and JSON
//! lines (`.jsonl`: an object per line with a `text` and any other fields, which become
//! the chunk's metadata, or a string per line). A folder is read whole, its files in name
//! order, those of other kinds skipped. Blocking file I/O: callers run it off the
//! runtime threads.

mod json_lines;
mod markdown;
mod text;

use std::path::{Component, Path, PathBuf};

use serde_json::{Map, Value};

/// A kind of document: which files and pages it reads, and the documents a source's
/// text holds.
pub trait Loader: Sync {
    /// Its name, for messages.
    fn name(&self) -> &'static str;
    /// File (and URL path) extensions it reads.
    fn extensions(&self) -> &'static [&'static str];
    /// Content types it reads, for pages whose URL says nothing.
    fn content_types(&self) -> &'static [&'static str];
    /// The documents of `text`, read from `source`.
    fn documents(&self, source: &str, text: String) -> Result<Vec<Document>, String>;
}

/// Every loader, in the order they are asked.
pub static LOADERS: &[&dyn Loader] = &[&text::Text, &markdown::Markdown, &json_lines::JsonLines];

/// The loader of a file by its extension; none for other files (they are skipped).
fn by_extension(path: &Path) -> Option<&'static dyn Loader> {
    let extension = path.extension()?.to_str()?;
    LOADERS
        .iter()
        .copied()
        .find(|l| l.extensions().contains(&extension))
}

/// The loader of a page: by its URL's extension, else its content type, else text.
fn for_page(url: &str, content_type: &str) -> &'static dyn Loader {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    by_extension(Path::new(path))
        .or_else(|| {
            LOADERS.iter().copied().find(|l| {
                l.content_types()
                    .iter()
                    .any(|t| content_type.starts_with(t))
            })
        })
        .unwrap_or(&text::Text)
}

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
        let Some(loader) = by_extension(&file) else {
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
        documents.extend(loader.documents(&source, text)?);
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

/// The documents of a page fetched from `url`, by the loader its URL or content type
/// names (text when neither does).
pub fn from_url(url: &str, content_type: &str, text: String) -> Result<Vec<Document>, String> {
    for_page(url, content_type).documents(url, text)
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
    fn a_page_is_read_by_its_extension_else_its_content_type() {
        let docs = from_url("https://x/a.md?v=1", "text/plain", "# A\nb".into()).unwrap();
        assert!(docs[0].markdown);
        let docs = from_url(
            "https://x/feed",
            "application/x-ndjson",
            "\"one\"\n\"two\"".into(),
        )
        .unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[1].source, "https://x/feed:2");
        let docs = from_url("https://x/page", "text/html", "<p>hi</p>".into()).unwrap();
        assert!(!docs[0].markdown && docs[0].text == "<p>hi</p>");
        let names: Vec<&str> = LOADERS.iter().map(|l| l.name()).collect();
        assert_eq!(names, ["text", "markdown", "json lines"]);
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
