//! Flows: declared sequences of steps the gateway runs for a tenant (`POST
//! /v1/flows/{name}/runs`), each model call through the one pipeline. This module is the
//! definition: a flow file as written (TOML), checked whole when it is loaded, so a
//! flow that names an output no earlier step makes, a model that is not configured or a
//! broken template never starts. The runner is `gateway::flows`.
//!
//! ```toml
//! description = "Answers a question about a text."
//! inputs = ["text", "question"]
//!
//! [[steps]]
//! name = "summary"                 # what later steps call its output
//! kind = "llm"
//! model = "gpt-4o-mini"
//! system = "You summarize."
//! prompt = "Summarize: {{ text }}"
//! max_tokens = 200
//! timeout = "30s"
//! retries = 1
//!
//! [[steps]]
//! name = "answer"
//! kind = "template"
//! template = "{{ summary }}"
//! ```

pub mod loaders;
pub mod splitters;
pub mod template;
pub mod vectors;

use std::collections::HashSet;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value};

pub use splitters::{Split, SplitBy};
pub use template::Template;

/// A flow, checked and ready to run.
#[derive(Debug, Clone, PartialEq)]
pub struct Flow {
    pub name: String,
    pub description: String,
    /// Names the run's `input` must give.
    pub inputs: Vec<String>,
    pub steps: Vec<Step>,
    /// The step whose output is the run's.
    pub output: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// Also the name of its output.
    pub name: String,
    pub kind: StepKind,
    /// How long one attempt may take.
    pub timeout: Duration,
    /// Attempts after the first when it fails with something retrying can help.
    pub retries: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub enum StepKind {
    /// A chat completion through the pipeline: the answer's text is the output.
    Llm {
        model: String,
        system: Option<Template>,
        prompt: Template,
        max_tokens: Option<u64>,
    },
    /// Text made from inputs and earlier outputs.
    Template { template: Template },
    /// Texts embedded through the pipeline (batched), from documents loaded and split or
    /// from a template; put into one of the tenant's collections when it names one.
    Embed {
        model: String,
        source: Source,
        split: Option<Split>,
        collection: Option<String>,
    },
    /// The chunks of a collection nearest a query (embedded with `model`).
    Retrieve {
        model: String,
        collection: String,
        query: Template,
        top_k: usize,
        filter: Map<String, Value>,
    },
}

/// What an `embed` step embeds.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// A file or folder under the documents directory (`loaders`).
    Files(String),
    /// One text.
    Text(Template),
}

impl StepKind {
    pub fn name(&self) -> &'static str {
        match self {
            StepKind::Llm { .. } => "llm",
            StepKind::Template { .. } => "template",
            StepKind::Embed { .. } => "embed",
            StepKind::Retrieve { .. } => "retrieve",
        }
    }
}

/// What a flow may name, from the config: models by kind, and whether documents may be
/// loaded (`[flows] documents`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Catalog<'a> {
    pub chat: &'a [&'a str],
    pub embeddings: &'a [&'a str],
    pub documents: bool,
}

/// The most chunks a `retrieve` step may ask for.
pub const MAX_TOP_K: usize = 100;

/// What is wrong with a flow: the key (`flows.rag.steps[2].prompt`) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowError {
    pub key: String,
    pub message: String,
}

impl std::fmt::Display for FlowError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFlow {
    #[serde(default)]
    description: String,
    #[serde(default)]
    inputs: Vec<String>,
    #[serde(default)]
    steps: Vec<RawStep>,
    output: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    name: String,
    kind: String,
    model: Option<String>,
    system: Option<String>,
    prompt: Option<String>,
    max_tokens: Option<u64>,
    template: Option<String>,
    input: Option<String>,
    load: Option<String>,
    split: Option<Split>,
    collection: Option<String>,
    query: Option<String>,
    top_k: Option<usize>,
    filter: Option<Map<String, Value>>,
    timeout: Option<String>,
    #[serde(default)]
    retries: u32,
}

/// Reads flow `name` from its TOML `text` and checks it whole against what the config
/// offers.
pub fn parse(name: &str, text: &str, catalog: &Catalog<'_>) -> Result<Flow, FlowError> {
    let at = format!("flows.{name}");
    let error = |key: String, message: String| FlowError { key, message };
    let deserializer = toml::de::Deserializer::parse(text)
        .map_err(|e| error(at.clone(), e.message().trim().to_string()))?;
    let raw: RawFlow = serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let path = e.path().to_string();
        let key = if path == "." {
            at.clone()
        } else {
            format!("{at}.{path}")
        };
        error(key, e.inner().message().trim().to_string())
    })?;
    if raw.steps.is_empty() {
        return Err(error(
            format!("{at}.steps"),
            "a flow needs at least one step".into(),
        ));
    }
    // What a step may read: the inputs and the outputs of the steps before it.
    let mut known: HashSet<String> = HashSet::new();
    for input in &raw.inputs {
        if !known.insert(input.clone()) {
            return Err(error(
                format!("{at}.inputs"),
                format!("\"{input}\" is listed twice"),
            ));
        }
    }
    let mut steps = Vec::with_capacity(raw.steps.len());
    for (i, step) in raw.steps.into_iter().enumerate() {
        let at = format!("{at}.steps[{i}]");
        let field = |name: &str| format!("{at}.{name}");
        if !valid_name(&step.name) {
            return Err(error(
                field("name"),
                "a step's name is letters, digits, '_' or '-'".into(),
            ));
        }
        if known.contains(&step.name) {
            return Err(error(
                field("name"),
                format!(
                    "\"{}\" is already an input or an earlier step's output",
                    step.name
                ),
            ));
        }
        let template = |key: &str, text: &str| -> Result<Template, FlowError> {
            let template = Template::parse(text).map_err(|m| error(field(key), m))?;
            if let Some(unknown) = template.names().find(|n| !known.contains(*n)) {
                let mut offered: Vec<&str> = known.iter().map(String::as_str).collect();
                offered.sort_unstable();
                return Err(error(
                    field(key),
                    format!(
                        "unknown output \"{unknown}\"; this step can read {}",
                        if offered.is_empty() {
                            "nothing yet".to_string()
                        } else {
                            offered.join(", ")
                        }
                    ),
                ));
            }
            Ok(template)
        };
        let needs = |value: Option<String>, key: &str| {
            value.ok_or_else(|| error(field(key), format!("a {} step needs {key}", step.kind)))
        };
        let model_of = |kind: &str, offered: &[&str]| {
            let model = needs(step.model.clone(), "model")?;
            if offered.contains(&model.as_str()) {
                return Ok(model);
            }
            Err(error(
                field("model"),
                format!(
                    "no {kind} model \"{model}\" is configured; configured: {}",
                    if offered.is_empty() {
                        "none".to_string()
                    } else {
                        offered.join(", ")
                    }
                ),
            ))
        };
        let collection_name = |value: Option<String>| -> Result<Option<String>, FlowError> {
            match value {
                Some(c) if !valid_name(&c) => Err(error(
                    field("collection"),
                    "a collection's name is letters, digits, '_' or '-'".into(),
                )),
                other => Ok(other),
            }
        };
        let kind = match step.kind.as_str() {
            "llm" => {
                let model = model_of("chat", catalog.chat)?;
                StepKind::Llm {
                    model,
                    system: step
                        .system
                        .as_deref()
                        .map(|s| template("system", s))
                        .transpose()?,
                    prompt: template("prompt", &needs(step.prompt.clone(), "prompt")?)?,
                    max_tokens: step.max_tokens,
                }
            }
            "template" => StepKind::Template {
                template: template("template", &needs(step.template.clone(), "template")?)?,
            },
            "embed" => {
                let model = model_of("embeddings", catalog.embeddings)?;
                let source = match (&step.load, &step.input) {
                    (Some(_), Some(_)) => {
                        return Err(error(
                            field("input"),
                            "an embed step reads either load or input, not both".into(),
                        ));
                    }
                    (Some(path), None) => {
                        if !catalog.documents {
                            return Err(error(
                                field("load"),
                                "no documents directory is configured ([flows] documents)".into(),
                            ));
                        }
                        loaders::check_relative(path).map_err(|m| error(field("load"), m))?;
                        Source::Files(path.clone())
                    }
                    (None, Some(input)) => Source::Text(template("input", input)?),
                    (None, None) => {
                        return Err(error(
                            field("load"),
                            "an embed step needs load (documents) or input (a text)".into(),
                        ));
                    }
                };
                if let Some(split) = &step.split {
                    split.check().map_err(|m| error(field("split"), m))?;
                }
                StepKind::Embed {
                    model,
                    source,
                    split: step.split.clone(),
                    collection: collection_name(step.collection.clone())?,
                }
            }
            "retrieve" => {
                let model = model_of("embeddings", catalog.embeddings)?;
                let top_k = step.top_k.unwrap_or(4);
                if !(1..=MAX_TOP_K).contains(&top_k) {
                    return Err(error(
                        field("top_k"),
                        format!("must be between 1 and {MAX_TOP_K}"),
                    ));
                }
                StepKind::Retrieve {
                    model,
                    collection: collection_name(Some(needs(
                        step.collection.clone(),
                        "collection",
                    )?))?
                    .unwrap_or_default(),
                    query: template("query", &needs(step.query.clone(), "query")?)?,
                    top_k,
                    filter: step.filter.clone().unwrap_or_default(),
                }
            }
            other => {
                return Err(error(
                    field("kind"),
                    format!(
                        "\"{other}\" is not a step kind; kinds: llm, template, embed, retrieve"
                    ),
                ));
            }
        };
        let timeout = match &step.timeout {
            Some(text) => crate::domain::units::parse_duration(text)
                .map_err(|m| error(field("timeout"), m))?,
            None => DEFAULT_TIMEOUT,
        };
        if timeout.is_zero() {
            return Err(error(field("timeout"), "must be longer than zero".into()));
        }
        known.insert(step.name.clone());
        steps.push(Step {
            name: step.name,
            kind,
            timeout,
            retries: step.retries,
        });
    }
    let output = match raw.output {
        Some(output) if steps.iter().any(|s| s.name == output) => output,
        Some(output) => {
            return Err(error(
                format!("{at}.output"),
                format!("no step is named \"{output}\""),
            ));
        }
        None => steps.last().map(|s| s.name.clone()).unwrap_or_default(),
    };
    Ok(Flow {
        name: name.to_string(),
        description: raw.description,
        inputs: raw.inputs,
        steps,
        output,
    })
}

/// Letters, digits, '_' or '-', at least one.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

#[cfg(test)]
mod tests {
    use super::*;

    const MODELS: Catalog<'static> = Catalog {
        chat: &["gpt-4o-mini"],
        embeddings: &["text-embedding-3-small"],
        documents: true,
    };

    #[test]
    fn a_flow_is_read_with_its_steps_in_order() {
        let flow = parse(
            "qa",
            r#"
inputs = ["text", "question"]
[[steps]]
name = "summary"
kind = "llm"
model = "gpt-4o-mini"
prompt = "Summarize: {{ text }}"
timeout = "5s"
retries = 2
[[steps]]
name = "answer"
kind = "template"
template = "{{ summary }} / {{ question }}"
"#,
            &MODELS,
        )
        .unwrap();
        assert_eq!(flow.inputs, ["text", "question"]);
        assert_eq!(flow.output, "answer");
        assert_eq!(flow.steps[0].timeout, Duration::from_secs(5));
        assert_eq!(flow.steps[0].retries, 2);
        assert_eq!(flow.steps[1].kind.name(), "template");
    }

    #[test]
    fn every_mistake_names_the_flow_the_step_and_the_field() {
        let cases = [
            (
                "[[steps]]\nname = \"a\"\nkind = \"template\"\ntemplate = \"{{ chunks }}\"",
                "flows.rag.steps[0].template: unknown output \"chunks\"; this step can read nothing yet",
            ),
            (
                "inputs = [\"q\"]\n[[steps]]\nname = \"a\"\nkind = \"llm\"\nmodel = \"gpt-4o-mini\"\nprompt = \"{{ q }}\"\n[[steps]]\nname = \"b\"\nkind = \"template\"\ntemplate = \"{{ c }}\"",
                "flows.rag.steps[1].template: unknown output \"c\"; this step can read a, q",
            ),
            (
                "[[steps]]\nname = \"a\"\nkind = \"llm\"\nmodel = \"gpt-5\"\nprompt = \"x\"",
                "flows.rag.steps[0].model: no chat model \"gpt-5\" is configured; configured: gpt-4o-mini",
            ),
            (
                "[[steps]]\nname = \"a\"\nkind = \"llm\"\nmodel = \"gpt-4o-mini\"",
                "flows.rag.steps[0].prompt: a llm step needs prompt",
            ),
            (
                "[[steps]]\nname = \"a\"\nkind = \"loop\"",
                "flows.rag.steps[0].kind: \"loop\" is not a step kind; kinds: llm, template, embed, retrieve",
            ),
            (
                "[[steps]]\nname = \"a\"\nkind = \"template\"\ntemplate = \"x\"\ntimeout = \"soon\"",
                "flows.rag.steps[0].timeout: ",
            ),
            (
                "[[steps]]\nname = \"a\"\nkind = \"template\"\ntemplate = \"x\"\nprompts = \"y\"",
                "flows.rag.steps[0].prompts: unknown field `prompts`",
            ),
            (
                "inputs = [\"q\"]",
                "flows.rag.steps: a flow needs at least one step",
            ),
            (
                "[[steps]]\nname = \"a\"\nkind = \"embed\"\nmodel = \"text-embedding-3-small\"",
                "flows.rag.steps[0].load: an embed step needs load (documents) or input (a text)",
            ),
            (
                "[[steps]]\nname = \"a\"\nkind = \"embed\"\nmodel = \"text-embedding-3-small\"\nload = \"../etc\"",
                "flows.rag.steps[0].load: \"../etc\" must be a path inside the documents directory",
            ),
            (
                "[[steps]]\nname = \"a\"\nkind = \"embed\"\nmodel = \"text-embedding-3-small\"\nload = \"kb\"\nsplit = { by = \"tokens\", size = 10, overlap = 10 }",
                "flows.rag.steps[0].split: overlap (10) must be smaller than size (10)",
            ),
            (
                "[[steps]]\nname = \"a\"\nkind = \"embed\"\nmodel = \"text-embedding-3-small\"\nload = \"kb\"\nsplit = { by = \"pages\" }",
                "flows.rag.steps[0].split.by: unknown variant `pages`",
            ),
            (
                "inputs = [\"q\"]\n[[steps]]\nname = \"a\"\nkind = \"retrieve\"\nmodel = \"gpt-4o-mini\"\ncollection = \"kb\"\nquery = \"{{ q }}\"",
                "flows.rag.steps[0].model: no embeddings model \"gpt-4o-mini\" is configured; configured: text-embedding-3-small",
            ),
            (
                "inputs = [\"q\"]\n[[steps]]\nname = \"a\"\nkind = \"retrieve\"\nmodel = \"text-embedding-3-small\"\ncollection = \"kb\"\nquery = \"{{ q }}\"\ntop_k = 0",
                "flows.rag.steps[0].top_k: must be between 1 and 100",
            ),
            (
                "inputs = [\"q\"]\n[[steps]]\nname = \"a\"\nkind = \"retrieve\"\nmodel = \"text-embedding-3-small\"\ncollection = \"k b\"\nquery = \"{{ q }}\"",
                "flows.rag.steps[0].collection: a collection's name is letters, digits, '_' or '-'",
            ),
            (
                "output = \"z\"\n[[steps]]\nname = \"a\"\nkind = \"template\"\ntemplate = \"x\"",
                "flows.rag.output: no step is named \"z\"",
            ),
            (
                "inputs = [\"a\"]\n[[steps]]\nname = \"a\"\nkind = \"template\"\ntemplate = \"x\"",
                "flows.rag.steps[0].name: \"a\" is already an input or an earlier step's output",
            ),
        ];
        for (text, expected) in cases {
            let error = parse("rag", text, &MODELS).unwrap_err().to_string();
            assert!(
                error.starts_with(expected),
                "{text}\n  gave {error}\n  not {expected}"
            );
        }
    }
}
