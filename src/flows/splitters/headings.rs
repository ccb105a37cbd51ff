//! By markdown headings: one chunk per section, titled with its heading path
//! (`Refunds > Late returns`); a section larger than `size` tokens is cut by tokens, and
//! text that is not markdown is cut by tokens.

use super::tokens::by_tokens;
use super::{Chunk, Splitter};

pub struct Headings;

impl Splitter for Headings {
    fn name(&self) -> &'static str {
        "headings"
    }

    fn split(
        &self,
        text: &str,
        markdown: bool,
        (size, overlap): (usize, usize),
        count: &dyn Fn(&str) -> u64,
    ) -> Vec<Chunk> {
        let sections = if markdown {
            by_headings(text)
        } else {
            vec![(None, text.to_string())]
        };
        sections
            .into_iter()
            .flat_map(|(heading, body)| {
                by_tokens(&body, size, overlap, count)
                    .into_iter()
                    .map(move |text| Chunk {
                        text,
                        heading: heading.clone(),
                    })
            })
            .collect()
    }
}

/// Markdown sections: (heading path, body with its heading line), in order. Text
/// before the first heading is a section without one. Fenced code is not read for
/// headings.
fn by_headings(text: &str) -> Vec<(Option<String>, String)> {
    let mut sections: Vec<(Option<String>, String)> = Vec::new();
    let mut path: Vec<(usize, String)> = Vec::new();
    let mut body = String::new();
    let mut heading: Option<String> = None;
    let mut fenced = false;
    for line in text.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("```") || trimmed.starts_with("~~~") {
            fenced = !fenced;
        }
        let level = trimmed.chars().take_while(|c| *c == '#').count();
        let is_heading = !fenced
            && (1..=6).contains(&level)
            && trimmed[level..].starts_with(' ')
            && line.len() - trimmed.len() < 4;
        if is_heading {
            if !body.trim().is_empty() {
                sections.push((heading.take(), std::mem::take(&mut body)));
            }
            body.clear();
            let title = trimmed[level..]
                .trim()
                .trim_end_matches('#')
                .trim()
                .to_string();
            path.retain(|(l, _)| *l < level);
            path.push((level, title));
            heading = Some(
                path.iter()
                    .map(|(_, t)| t.as_str())
                    .collect::<Vec<_>>()
                    .join(" > "),
            );
        }
        body.push_str(line);
        body.push('\n');
    }
    if !body.trim().is_empty() {
        sections.push((heading, body));
    }
    sections
}
