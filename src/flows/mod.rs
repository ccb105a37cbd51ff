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
pub mod tools;
pub mod vectors;

use std::collections::HashSet;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value};

pub use splitters::Split;
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
    /// The steps of the first case whose test `value` passes, else the default's; the
    /// output is the last of them's (empty text when none ran).
    Branch {
        value: Template,
        cases: Vec<(Test, Vec<Step>)>,
        default: Vec<Step>,
    },
    /// The steps again and again, at most `max` passes, until `until` passes after one.
    /// Inside, the loop's own name is the previous pass's output (empty text at first)
    /// and `pass` counts from 1. The output is the last pass's.
    Loop {
        max: u32,
        until: Option<(Template, Test)>,
        steps: Vec<Step>,
    },
    /// The steps once for every item of a list, at most `concurrency` at once, each
    /// reading its item as `item_name`; the output is the list of their outputs, in the
    /// list's order.
    Parallel {
        over: Template,
        item_name: String,
        concurrency: usize,
        steps: Vec<Step>,
    },
    /// A call of a declared tool (`[[flows.tools]]`) with these arguments; the output is
    /// its answer.
    Tool {
        tool: String,
        arguments: Vec<(String, Arg)>,
    },
    /// A model calling tools until it answers: at most `max_turns` model calls and
    /// `budget_tokens` tokens; with `memory`, the conversation of that session (per
    /// tenant) is carried from run to run, older turns folded into a summary.
    Agent {
        model: String,
        system: Option<Template>,
        prompt: Template,
        tools: Vec<String>,
        max_turns: u32,
        budget_tokens: u64,
        memory: Option<Template>,
        memory_window: usize,
    },
    /// A value the tenant kept under `key` (null when there is none).
    StoreGet { key: Template },
    /// Keeps `value` under `key` for the tenant's later runs; the output is the value.
    StorePut { key: Template, value: Template },
}

/// A tool argument: a template (one hole keeps its value's JSON type) or a literal.
#[derive(Debug, Clone, PartialEq)]
pub enum Arg {
    Template(Template),
    Literal(Value),
}

/// A test on a text: equal to, or containing, a string (case-insensitive).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Test {
    Equals(String),
    Contains(String),
}

impl Test {
    pub fn passes(&self, text: &str) -> bool {
        match self {
            Test::Equals(expected) => text.trim().eq_ignore_ascii_case(expected.trim()),
            Test::Contains(part) => text.to_lowercase().contains(&part.to_lowercase()),
        }
    }
}

/// What an `embed` step embeds.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// A file or folder under the documents directory (`loaders`).
    Files(String),
    /// A page under an allowed URL.
    Url(String),
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
            StepKind::Branch { .. } => "branch",
            StepKind::Loop { .. } => "loop",
            StepKind::Parallel { .. } => "parallel",
            StepKind::Tool { .. } => "tool",
            StepKind::Agent { .. } => "agent",
            StepKind::StoreGet { .. } => "store_get",
            StepKind::StorePut { .. } => "store_put",
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
    /// URL prefixes documents may be loaded from (`[flows] urls`).
    pub urls: &'a [&'a str],
    /// Declared tools' names (HTTP tools and MCP servers).
    pub tools: &'a [&'a str],
    /// Declared MCP servers' names, whose tools a `tool` step names as `server.tool`.
    pub mcp: &'a [&'a str],
}

/// The most chunks a `retrieve` step may ask for.
pub const MAX_TOP_K: usize = 100;
/// The most passes a `loop` may make, and branches a `parallel` step may run at once.
pub const MAX_PASSES: u32 = 100;
pub const MAX_CONCURRENCY: usize = 16;
/// How long a step holding other steps may take by default.
const DEFAULT_BLOCK_TIMEOUT: Duration = Duration::from_secs(600);

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
    value: Option<String>,
    #[serde(default)]
    cases: Vec<RawCase>,
    default: Option<RawBlock>,
    #[serde(default)]
    steps: Vec<RawStep>,
    max: Option<u32>,
    until: Option<RawUntil>,
    over: Option<String>,
    #[serde(rename = "as")]
    item_name: Option<String>,
    max_concurrency: Option<usize>,
    key: Option<String>,
    tool: Option<String>,
    arguments: Option<Map<String, Value>>,
    tools: Option<Vec<String>>,
    max_turns: Option<u32>,
    budget_tokens: Option<u64>,
    memory: Option<String>,
    memory_window: Option<usize>,
    timeout: Option<String>,
    #[serde(default)]
    retries: u32,
}

/// A `branch` case: a test and its steps.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCase {
    equals: Option<String>,
    contains: Option<String>,
    #[serde(default)]
    steps: Vec<RawStep>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBlock {
    #[serde(default)]
    steps: Vec<RawStep>,
}

/// A `loop`'s end: `{ value = "{{ review }}", contains = "APPROVED" }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUntil {
    value: String,
    equals: Option<String>,
    contains: Option<String>,
}

fn test_of(equals: Option<String>, contains: Option<String>) -> Result<Test, String> {
    match (equals, contains) {
        (Some(e), None) => Ok(Test::Equals(e)),
        (None, Some(c)) => Ok(Test::Contains(c)),
        _ => Err("a test is one of equals or contains".into()),
    }
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
    let steps = parse_steps(raw.steps, &at, &mut known, catalog)?;
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

/// Reads steps at `at` (`flows.rag` or, inside a step, `flows.rag.steps[1].steps`),
/// adding each one's name to what later ones may read.
fn parse_steps(
    raw_steps: Vec<RawStep>,
    at: &str,
    known: &mut HashSet<String>,
    catalog: &Catalog<'_>,
) -> Result<Vec<Step>, FlowError> {
    let error = |key: String, message: String| FlowError { key, message };
    let mut steps = Vec::with_capacity(raw_steps.len());
    for (i, step) in raw_steps.into_iter().enumerate() {
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
        // Steps held by this one: they read what this one may, plus `extra`; their
        // outputs stay inside.
        let block = |raw: Vec<RawStep>,
                     at: &str,
                     extra: Option<&str>,
                     known: &HashSet<String>|
         -> Result<Vec<Step>, FlowError> {
            if raw.is_empty() {
                return Err(error(
                    format!("{at}.steps"),
                    "needs at least one step".into(),
                ));
            }
            let mut inside = known.clone();
            inside.extend(extra.map(str::to_string));
            parse_steps(raw, at, &mut inside, catalog)
        };
        // A template the step may leave out.
        let optional = |key: &str, text: &Option<String>| {
            text.as_deref().map(|t| template(key, t)).transpose()
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
                    system: optional("system", &step.system)?,
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
                    (Some(url), None)
                        if url.starts_with("http://") || url.starts_with("https://") =>
                    {
                        loaders::check_url(url, catalog.urls)
                            .map_err(|m| error(field("load"), m))?;
                        Source::Url(url.clone())
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
            "branch" => {
                let value = template("value", &needs(step.value.clone(), "value")?)?;
                if step.cases.is_empty() {
                    return Err(error(
                        field("cases"),
                        "a branch needs at least one case".into(),
                    ));
                }
                let mut cases = Vec::with_capacity(step.cases.len());
                for (c, case) in step.cases.into_iter().enumerate() {
                    let at = format!("{at}.cases[{c}]");
                    let test =
                        test_of(case.equals, case.contains).map_err(|m| error(at.clone(), m))?;
                    cases.push((test, block(case.steps, &at, None, known)?));
                }
                let default = match step.default {
                    Some(default) => block(default.steps, &field("default"), None, known)?,
                    None => Vec::new(),
                };
                StepKind::Branch {
                    value,
                    cases,
                    default,
                }
            }
            "loop" => {
                let max = step
                    .max
                    .ok_or_else(|| error(field("max"), "a loop needs max (its bound)".into()))?;
                if !(1..=MAX_PASSES).contains(&max) {
                    return Err(error(
                        field("max"),
                        format!("must be between 1 and {MAX_PASSES}"),
                    ));
                }
                let mut inside = known.clone();
                inside.insert("pass".into());
                let steps = block(step.steps, &at, Some(&step.name), &inside)?;
                // The end is tested with what the last pass made.
                let mut after = inside;
                after.extend(step_names(&steps));
                let until = match step.until {
                    Some(until) => {
                        let test = test_of(until.equals, until.contains)
                            .map_err(|m| error(field("until"), m))?;
                        let value = Template::parse(&until.value)
                            .map_err(|m| error(field("until.value"), m))?;
                        if let Some(unknown) = value.names().find(|n| !after.contains(*n)) {
                            return Err(error(
                                field("until.value"),
                                format!("unknown output \"{unknown}\""),
                            ));
                        }
                        Some((value, test))
                    }
                    None => None,
                };
                StepKind::Loop { max, until, steps }
            }
            "parallel" => {
                let over = template("over", &needs(step.over.clone(), "over")?)?;
                let item_name = step.item_name.clone().unwrap_or_else(|| "item".into());
                if !valid_name(&item_name) {
                    return Err(error(
                        field("as"),
                        "a name is letters, digits, '_' or '-'".into(),
                    ));
                }
                let concurrency = step.max_concurrency.unwrap_or(4);
                if !(1..=MAX_CONCURRENCY).contains(&concurrency) {
                    return Err(error(
                        field("max_concurrency"),
                        format!("must be between 1 and {MAX_CONCURRENCY}"),
                    ));
                }
                let steps = block(step.steps, &at, Some(&item_name), known)?;
                StepKind::Parallel {
                    over,
                    item_name,
                    concurrency,
                    steps,
                }
            }
            "tool" => {
                let tool = needs(step.tool.clone(), "tool")?;
                match tool.split_once('.') {
                    // An MCP server's tool: the server is checked now, the tool when
                    // the server lists it.
                    Some((server, _)) if !catalog.mcp.contains(&server) => {
                        return Err(error(
                            field("tool"),
                            format!("no MCP server \"{server}\" is declared ([[flows.mcp]])"),
                        ));
                    }
                    Some(_) => {}
                    None if catalog.mcp.contains(&tool.as_str()) => {
                        return Err(error(
                            field("tool"),
                            format!(
                                "\"{tool}\" is an MCP server: name one of its tools, as {tool}.TOOL"
                            ),
                        ));
                    }
                    None => known_tool(&tool, catalog).map_err(|m| error(field("tool"), m))?,
                }
                let mut arguments = Vec::new();
                for (name, value) in step.arguments.clone().unwrap_or_default() {
                    let arg = match value {
                        Value::String(text) => {
                            Arg::Template(template(&format!("arguments.{name}"), &text)?)
                        }
                        literal => Arg::Literal(literal),
                    };
                    arguments.push((name, arg));
                }
                StepKind::Tool { tool, arguments }
            }
            "agent" => {
                let model = model_of("chat", catalog.chat)?;
                let tools = step.tools.clone().unwrap_or_default();
                for tool in &tools {
                    known_tool(tool, catalog).map_err(|m| error(field("tools"), m))?;
                }
                let max_turns = step.max_turns.unwrap_or(6);
                if !(1..=MAX_TURNS).contains(&max_turns) {
                    return Err(error(
                        field("max_turns"),
                        format!("must be between 1 and {MAX_TURNS}"),
                    ));
                }
                let memory_window = step.memory_window.unwrap_or(12);
                if memory_window < 2 {
                    return Err(error(
                        field("memory_window"),
                        "must keep at least 2 messages (a question and its answer)".into(),
                    ));
                }
                StepKind::Agent {
                    model,
                    system: optional("system", &step.system)?,
                    prompt: template("prompt", &needs(step.prompt.clone(), "prompt")?)?,
                    tools,
                    max_turns,
                    budget_tokens: step.budget_tokens.unwrap_or(20_000),
                    memory: optional("memory", &step.memory)?,
                    memory_window,
                }
            }
            "store_get" => StepKind::StoreGet {
                key: template("key", &needs(step.key.clone(), "key")?)?,
            },
            "store_put" => StepKind::StorePut {
                key: template("key", &needs(step.key.clone(), "key")?)?,
                value: template("value", &needs(step.value.clone(), "value")?)?,
            },
            other => {
                return Err(error(
                    field("kind"),
                    format!(
                        "\"{other}\" is not a step kind; kinds: {}",
                        KINDS.join(", ")
                    ),
                ));
            }
        };
        let timeout = match &step.timeout {
            Some(text) => crate::domain::units::parse_duration(text)
                .map_err(|m| error(field("timeout"), m))?,
            None if kind.holds_steps() => DEFAULT_BLOCK_TIMEOUT,
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
    Ok(steps)
}

/// Every step kind, as a step names it.
const KINDS: &[&str] = &[
    "llm",
    "template",
    "embed",
    "retrieve",
    "tool",
    "agent",
    "branch",
    "loop",
    "parallel",
    "store_get",
    "store_put",
];

/// The most model calls an agent step may make.
pub const MAX_TURNS: u32 = 20;

fn known_tool(name: &str, catalog: &Catalog<'_>) -> Result<(), String> {
    if catalog.tools.contains(&name) {
        return Ok(());
    }
    Err(format!(
        "no tool \"{name}\" is declared ([[flows.tools]]); declared: {}",
        if catalog.tools.is_empty() {
            "none".to_string()
        } else {
            catalog.tools.join(", ")
        }
    ))
}

fn step_names(steps: &[Step]) -> impl Iterator<Item = String> + '_ {
    steps.iter().map(|s| s.name.clone())
}

impl StepKind {
    /// Whether it runs other steps (and so may take longer by default).
    pub fn holds_steps(&self) -> bool {
        matches!(
            self,
            StepKind::Branch { .. } | StepKind::Loop { .. } | StepKind::Parallel { .. }
        )
    }
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
        urls: &["https://docs.example.com/"],
        tools: &["weather", "inventory"],
        mcp: &["inventory"],
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
                "[[steps]]\nname = \"a\"\nkind = \"teleport\"",
                "flows.rag.steps[0].kind: \"teleport\" is not a step kind; kinds: llm, template, embed, retrieve, tool, agent, branch, loop, parallel, store_get, store_put",
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
                "[[steps]]\nname = \"a\"\nkind = \"tool\"\ntool = \"nowhere.stock\"",
                "flows.rag.steps[0].tool: no MCP server \"nowhere\" is declared ([[flows.mcp]])",
            ),
            (
                "[[steps]]\nname = \"a\"\nkind = \"tool\"\ntool = \"inventory\"",
                "flows.rag.steps[0].tool: \"inventory\" is an MCP server: name one of its tools, as inventory.TOOL",
            ),
            (
                "[[steps]]\nname = \"a\"\nkind = \"loop\"\n[[steps.steps]]\nname = \"b\"\nkind = \"template\"\ntemplate = \"x\"",
                "flows.rag.steps[0].max: a loop needs max (its bound)",
            ),
            (
                "[[steps]]\nname = \"a\"\nkind = \"branch\"\nvalue = \"x\"",
                "flows.rag.steps[0].cases: a branch needs at least one case",
            ),
            (
                "[[steps]]\nname = \"a\"\nkind = \"branch\"\nvalue = \"x\"\n[[steps.cases]]\nequals = \"y\"\n[[steps.cases.steps]]\nname = \"b\"\nkind = \"template\"\ntemplate = \"{{ c }}\"",
                "flows.rag.steps[0].cases[0].steps[0].template: unknown output \"c\"; this step can read nothing yet",
            ),
            (
                "[[steps]]\nname = \"a\"\nkind = \"branch\"\nvalue = \"x\"\n[[steps.cases]]\n[[steps.cases.steps]]\nname = \"b\"\nkind = \"template\"\ntemplate = \"x\"",
                "flows.rag.steps[0].cases[0]: a test is one of equals or contains",
            ),
            (
                "[[steps]]\nname = \"a\"\nkind = \"parallel\"\nover = \"[]\"\n[[steps.steps]]\nname = \"b\"\nkind = \"template\"\ntemplate = \"{{ item }}\"\n[[steps]]\nname = \"c\"\nkind = \"template\"\ntemplate = \"{{ b }}\"",
                "flows.rag.steps[1].template: unknown output \"b\"; this step can read a",
            ),
            (
                "[[steps]]\nname = \"a\"\nkind = \"loop\"\nmax = 3\nuntil = { value = \"{{ zz }}\", equals = \"y\" }\n[[steps.steps]]\nname = \"b\"\nkind = \"template\"\ntemplate = \"{{ a }} {{ pass }}\"",
                "flows.rag.steps[0].until.value: unknown output \"zz\"",
            ),
            (
                "[[steps]]\nname = \"a\"\nkind = \"embed\"\nmodel = \"text-embedding-3-small\"\nload = \"https://evil.example.com/x.md\"",
                "flows.rag.steps[0].load: \"https://evil.example.com/x.md\" is not under an allowed URL ([flows] urls: https://docs.example.com/)",
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
                "flows.rag.steps[0].split: \"pages\" is not a splitter; splitters: tokens, headings",
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
