//! The small template language of flow steps: text with `{{ name }}` or
//! `{{ name.field.0 }}` holes, where `name` is one of the run's inputs or an earlier
//! step's output. Strings go in as they are; other values as compact JSON. Parsed once,
//! when the flow is loaded, so a hole naming nothing is a load-time error.

use serde_json::Value;

/// A parsed template: literal text and holes, in order.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Text(String),
    /// A name and the path within its value.
    Hole(String, Vec<String>),
}

impl Template {
    pub fn parse(text: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find("{{") {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_string()));
            }
            let after = &rest[open + 2..];
            let close = after.find("}}").ok_or_else(|| {
                format!(
                    "\"{{{{\" at byte {} is never closed with \"}}}}\"",
                    text.len() - rest.len() + open
                )
            })?;
            let inside = after[..close].trim();
            let mut path = inside.split('.').map(str::to_string);
            let name = path.next().unwrap_or_default();
            let valid = |s: &str| {
                !s.is_empty()
                    && s.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            };
            let path: Vec<String> = path.collect();
            if !valid(&name) || !path.iter().all(|p| valid(p)) {
                return Err(format!(
                    "\"{{{{ {inside} }}}}\" is not a name (write {{{{ name }}}} or {{{{ name.field }}}})"
                ));
            }
            parts.push(Part::Hole(name, path));
            rest = &after[close + 2..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        Ok(Template { parts })
    }

    /// The names the holes read.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Hole(name, _) => Some(name.as_str()),
            Part::Text(_) => None,
        })
    }

    /// The text with every hole filled from `lookup`; a value or field that is not
    /// there is an error naming it.
    pub fn render<'v>(&self, lookup: impl Fn(&str) -> Option<&'v Value>) -> Result<String, String> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(text) => out.push_str(text),
                Part::Hole(name, path) => match resolve(name, path, &lookup)? {
                    Value::String(text) => out.push_str(text),
                    other => out.push_str(&other.to_string()),
                },
            }
        }
        Ok(out)
    }

    /// The value itself when the template is one hole and nothing else (a list stays a
    /// list), else the rendered text.
    pub fn value<'v>(&self, lookup: impl Fn(&str) -> Option<&'v Value>) -> Result<Value, String> {
        match self.parts.as_slice() {
            [Part::Hole(name, path)] => resolve(name, path, &lookup).cloned(),
            _ => self.render(lookup).map(Value::String),
        }
    }
}

/// The value at `name` and then `path` (object fields, list indexes).
fn resolve<'v>(
    name: &str,
    path: &[String],
    lookup: &impl Fn(&str) -> Option<&'v Value>,
) -> Result<&'v Value, String> {
    let mut value = lookup(name).ok_or_else(|| format!("{name} has no value"))?;
    for (depth, key) in path.iter().enumerate() {
        let next = match value {
            Value::Array(items) => key.parse::<usize>().ok().and_then(|i| items.get(i)),
            Value::Object(fields) => fields.get(key),
            _ => None,
        };
        value = next.ok_or_else(|| {
            let within: String = path[..depth].iter().map(|p| format!(".{p}")).collect();
            format!("{name}{within} has no field {key}")
        })?;
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn holes_are_filled_with_strings_as_they_are_and_the_rest_as_json() {
        let template =
            Template::parse("Q: {{ question }} ({{meta.lang}}, {{ tags.1 }}) {{ meta }}").unwrap();
        assert_eq!(
            template.names().collect::<Vec<_>>(),
            ["question", "meta", "tags", "meta"]
        );
        let values = json!({"question": "why?", "meta": {"lang": "en"}, "tags": ["a", "b"]});
        let text = template.render(|name| values.get(name)).unwrap();
        assert_eq!(text, r#"Q: why? (en, b) {"lang":"en"}"#);
        let whole = Template::parse("{{ tags }}").unwrap();
        assert_eq!(
            whole.value(|name| values.get(name)).unwrap(),
            json!(["a", "b"])
        );
        let mixed = Template::parse("tags: {{ tags }}").unwrap();
        assert_eq!(
            mixed.value(|name| values.get(name)).unwrap(),
            json!(r#"tags: ["a","b"]"#)
        );
    }

    #[test]
    fn bad_holes_and_missing_values_are_named() {
        assert!(
            Template::parse("{{ open")
                .unwrap_err()
                .contains("never closed")
        );
        assert!(
            Template::parse("{{ a b }}")
                .unwrap_err()
                .contains("is not a name")
        );
        let template = Template::parse("{{ meta.lang }}").unwrap();
        let values = json!({"meta": {}});
        assert_eq!(
            template.render(|name| values.get(name)).unwrap_err(),
            "meta has no field lang"
        );
        assert_eq!(template.render(|_| None).unwrap_err(), "meta has no value");
    }
}
