//! The clients people use against a live gateway: the official OpenAI SDKs (Python and
//! Node), Anthropic's Python SDK (the Messages front), the Vercel AI SDK (the Responses
//! API), LangChain and LiteLLM as a client. They are the independent judges of
//! compatibility: if they are happy, applications will be.
//!
//! `.ci/run` installs them (tests/sdk/requirements.txt, tests/sdk/node/package.json). Where
//! they are missing these tests say so and pass, except under CI, where they must run.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;
use switchyard::mock::MockHandle;

/// How the upstreams behind a check speak: their dialect, and how they are sent
/// Responses API requests (`responses = "…"`).
#[derive(Clone, Copy)]
struct Upstream {
    dialect: &'static str,
    responses: &'static str,
}

const OPENAI: Upstream = Upstream {
    dialect: "openai",
    responses: "translate",
};

/// OpenAI-dialect upstreams that serve the Responses API themselves.
const NATIVE: Upstream = Upstream {
    dialect: "openai",
    responses: "native",
};

const ANTHROPIC: Upstream = Upstream {
    dialect: "anthropic",
    responses: "translate",
};

/// A gateway with a healthy region serving everything and a region whose streams break
/// after three tokens, serving only `chat-broken`; both upstreams speak as `upstream`.
async fn sdk_gateway(upstream: Upstream) -> (MockHandle, MockHandle, TestGateway) {
    let good = quick_mock()
        .answer_tokens(12)
        .embeddings_floats_only()
        .spawn_local()
        .await
        .unwrap();
    let broken = quick_mock()
        .answer_tokens(12)
        .fail_after_tokens(3)
        .spawn_local()
        .await
        .unwrap();
    let toml = format!(
        r#"
[server]
listen = "127.0.0.1:0"
data_dir = "{data}"

[health]
interval = "1h"

[tiers.pro]

[[tenants]]
name = "tenant-a"
tier = "pro"
keys = ["{key}"]

[[regions]]
name = "us-east"
  [[regions.instances]]
  name = "us-east-a"
  url = "{good}"
  dialect = "{dialect}"
  responses = "{responses}"

[[regions]]
name = "broken"
order = 1
  [[regions.instances]]
  name = "broken-a"
  url = "{broken}"
  dialect = "{dialect}"
  responses = "{responses}"

[[models]]
alias = "gpt-4o-mini"
regions = ["us-east"]

[[models]]
alias = "chat-broken"
upstream = "gpt-4o-mini"
regions = ["broken"]

[[models]]
alias = "text-embedding-3-small"
kind = "embeddings"
regions = ["us-east"]
"#,
        data = std::env::temp_dir().join("switchyard-tests").display(),
        key = switchyard::auth::hash_key(KEY_A),
        good = good.url(),
        broken = broken.url(),
        dialect = upstream.dialect,
        responses = upstream.responses,
    );
    let gw = TestGateway::from_toml(&toml).await;
    (good, broken, gw)
}

/// Whether `program args` runs successfully; under CI a missing tool is a failure.
fn available(program: &str, args: &[&str], install: &str) -> bool {
    let ok = std::process::Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false");
        assert!(
            !ci,
            "CI must run the SDK checks; install them with: {install}"
        );
        eprintln!("SKIPPED: the SDK is not installed; run `{install}` to check it");
    }
    ok
}

async fn run_check(program: &str, script: &str) {
    run_check_at(program, script, "/v1", OPENAI).await;
}

/// Runs `script` with the gateway's URL at `base` (Anthropic's SDK adds `/v1` itself),
/// in front of upstreams that speak as `upstream` (which the script reads in
/// `SWITCHYARD_RESPONSES`).
async fn run_check_at(program: &str, script: &str, base: &str, upstream: Upstream) {
    let (_good, _broken, gw) = sdk_gateway(upstream).await;
    let child = tokio::process::Command::new(program)
        .arg(script)
        .env("SWITCHYARD_RESPONSES", upstream.responses)
        .env("SWITCHYARD_BASE_URL", gw.url(base))
        .env_remove("ANTHROPIC_API_KEY")
        .env_remove("ANTHROPIC_BASE_URL")
        .env("SWITCHYARD_KEY", KEY_A)
        .env_remove("OPENAI_API_KEY")
        .env_remove("OPENAI_BASE_URL")
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(120), child)
        .await
        .expect("the SDK check finishes within two minutes")
        .expect("the SDK check starts");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{script} failed\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    );
    assert!(stdout.contains("passed, 0 failed"), "{stdout}");
    println!("{}", stdout.trim());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_python_sdk_works_through_the_gateway() {
    if available(
        "python3",
        &["-c", "import openai"],
        "pip install -r tests/sdk/requirements.txt",
    ) {
        run_check("python3", "tests/sdk/openai_python.py").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_node_sdk_works_through_the_gateway() {
    if available(
        "node",
        &[
            "-e",
            "require.resolve('openai', { paths: ['tests/sdk/node'] })",
        ],
        "npm ci --prefix tests/sdk/node",
    ) {
        run_check("node", "tests/sdk/node/check.mjs").await;
    }
}

/// The same checks in front of upstreams that serve the Responses API themselves: the
/// requests pass as they are, and follow-ups go to the instance that stores them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_python_sdk_works_through_the_gateway_to_native_responses_upstreams() {
    if available(
        "python3",
        &["-c", "import openai"],
        "pip install -r tests/sdk/requirements.txt",
    ) {
        run_check_at("python3", "tests/sdk/openai_python.py", "/v1", NATIVE).await;
    }
}

/// LiteLLM as a client: its `openai/` and `anthropic/` providers pointed at the gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn litellm_works_through_the_gateway() {
    if available(
        "python3",
        &["-c", "import litellm"],
        "pip install -r tests/sdk/requirements.txt",
    ) {
        run_check("python3", "tests/sdk/litellm_python.py").await;
    }
}

/// LangChain's ChatOpenAI, over chat completions and the Responses API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn langchain_works_through_the_gateway() {
    if available(
        "python3",
        &["-c", "import langchain_openai"],
        "pip install -r tests/sdk/requirements.txt",
    ) {
        run_check("python3", "tests/sdk/langchain_python.py").await;
    }
}

/// Anthropic's SDK speaks the Messages API, translated to chat for these upstreams.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_anthropic_sdk_works_through_the_gateway() {
    if available(
        "python3",
        &["-c", "import anthropic"],
        "pip install -r tests/sdk/requirements.txt",
    ) {
        run_check_at("python3", "tests/sdk/anthropic_python.py", "", OPENAI).await;
    }
}

/// The same checks in front of Anthropic-dialect upstreams: Messages in, chat through
/// the pipeline, Messages upstream, and back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_anthropic_sdk_works_through_the_gateway_to_anthropic_upstreams() {
    if available(
        "python3",
        &["-c", "import anthropic"],
        "pip install -r tests/sdk/requirements.txt",
    ) {
        run_check_at("python3", "tests/sdk/anthropic_python.py", "", ANTHROPIC).await;
    }
}

/// The Vercel AI SDK's default provider speaks the Responses API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_vercel_ai_sdk_default_provider_works_through_the_gateway() {
    if available(
        "node",
        &[
            "-e",
            "require.resolve('@ai-sdk/openai', { paths: ['tests/sdk/node'] })",
        ],
        "npm ci --prefix tests/sdk/node",
    ) {
        run_check("node", "tests/sdk/node/vercel.mjs").await;
        run_check_at("node", "tests/sdk/node/vercel.mjs", "/v1", NATIVE).await;
    }
}

/// When every upstream answers 429 with `retry-after: 2`, the gateway says 429 with that
/// wait, the official SDK waits it out and retries, and succeeds once the upstream has
/// stopped refusing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_sdk_waits_out_upstream_rate_limits_and_succeeds() {
    if !available(
        "python3",
        &["-c", "import openai"],
        "pip install -r tests/sdk/requirements.txt",
    ) {
        return;
    }
    let mock = quick_mock().errors(1.0, 429).spawn_local().await.unwrap();
    mock.update_knobs(|k| k.retry_after_secs = 2);
    let gw = TestGateway::with_regions(&[("us-east", &mock)]).await;
    let script = r#"
import os, time, openai
client = openai.OpenAI(base_url=os.environ["SWITCHYARD_BASE_URL"], api_key=os.environ["SWITCHYARD_KEY"], max_retries=2)
started = time.monotonic()
answer = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hello"}])
print("waited", round(time.monotonic() - started, 2))
print("answer", answer.choices[0].message.content)
"#;
    let child = tokio::process::Command::new("python3")
        .args(["-c", script])
        .env("SWITCHYARD_BASE_URL", gw.url("/v1"))
        .env("SWITCHYARD_KEY", KEY_A)
        .kill_on_drop(true)
        .output();
    let stop_refusing = async {
        mock.wait_for(Duration::from_secs(30), |s| s.errors_injected >= 1)
            .await;
        mock.update_knobs(|k| k.error_rate = 0.0);
    };
    let (output, ()) = tokio::join!(
        tokio::time::timeout(Duration::from_secs(60), child),
        stop_refusing
    );
    let output = output.expect("the SDK finishes").expect("python runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let waited: f64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("waited "))
        .and_then(|w| w.parse().ok())
        .unwrap();
    assert!(
        waited >= 1.9,
        "the SDK honoured retry-after: 2 ({waited} s)"
    );
    assert!(stdout.contains("answer "), "{stdout}");
    assert_eq!(mock.stats().errors_injected, 1, "one refusal, then success");
}
