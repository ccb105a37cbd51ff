//! The configuration: the shipped example loads, and every bad config in
//! `tests/invalid_configs/` fails with exactly the message its first line promises.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use switchyard::auth::hash_key;
use switchyard::config::{Config, ConfigError};

#[test]
fn the_example_config_loads_and_matches_the_readme() {
    let config = Config::from_toml(&std::fs::read_to_string("config.toml.example").unwrap())
        .expect("config.toml.example is valid");
    assert_eq!(config.server.listen.to_string(), "127.0.0.1:8080");
    let regions: Vec<(&str, &str)> = config
        .regions
        .iter()
        .map(|r| (r.name.as_str(), r.instances[0].url.as_str()))
        .collect();
    assert_eq!(
        regions,
        [
            ("us-east", "http://127.0.0.1:9101/v1"),
            ("eu-west", "http://127.0.0.1:9102/v1"),
            ("ap-south", "http://127.0.0.1:9103/v1"),
        ]
    );
    for (name, tier) in [
        ("acme", "enterprise"),
        ("globex", "pro"),
        ("initech", "free"),
    ] {
        let tenant = config.tenants.iter().find(|t| t.name == name).unwrap();
        assert_eq!(tenant.tier, tier);
        assert_eq!(tenant.keys, [hash_key(&format!("sy-demo-{name}"))]);
    }
    assert!(config.model("gpt-4o-mini").is_some());
    assert!(config.model("text-embedding-3-small").is_some());
}

#[test]
fn defaults_fill_what_is_left_out() {
    let config = Config::from_toml(
        r#"
[tiers.free]
[[regions]]
name = "r"
  [[regions.instances]]
  name = "i"
  url = "http://127.0.0.1:1/v1/"
[[models]]
alias = "m"
"#,
    )
    .unwrap();
    assert_eq!(config.server.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(config.server.max_body, 4 << 20);
    assert_eq!(config.upstream.connect.as_secs(), 2);
    let instance = &config.regions[0].instances[0];
    assert_eq!(
        instance.url, "http://127.0.0.1:1/v1",
        "trailing slash trimmed"
    );
    assert_eq!(instance.max_concurrency, 64);
    assert_eq!(config.models[0].deployments[0].upstream_model, "m");
}

#[test]
fn regions_are_sorted_by_failover_order() {
    let config = Config::from_toml(
        r#"
[tiers.free]
[[regions]]
name = "second"
order = 5
  [[regions.instances]]
  name = "b"
  url = "http://127.0.0.1:2/v1"
[[regions]]
name = "first"
order = 1
  [[regions.instances]]
  name = "a"
  url = "http://127.0.0.1:1/v1"
[[models]]
alias = "m"
upstream_by_region = { second = "m-2" }
"#,
    )
    .unwrap();
    let names: Vec<_> = config.regions.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["first", "second"]);
    let deployments: Vec<_> = config.models[0]
        .deployments
        .iter()
        .map(|d| (d.region.as_str(), d.upstream_model.as_str()))
        .collect();
    assert_eq!(deployments, [("first", "m"), ("second", "m-2")]);
}

#[test]
fn every_invalid_config_fails_with_its_expected_message() {
    let dir = Path::new("tests/invalid_configs");
    let mut checked = 0;
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let expected = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{} must start with `# expect: MESSAGE`", path.display()));
        let error = Config::from_toml(&text).expect_err(&format!("{} must fail", path.display()));
        assert_eq!(error.to_string(), expected, "{}", path.display());
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} invalid configs found");
}

#[test]
fn a_missing_file_names_the_path() {
    let error = Config::load(Path::new("/nonexistent/switchyard.toml")).unwrap_err();
    assert!(matches!(error, ConfigError::Read { .. }));
    assert!(
        error
            .to_string()
            .starts_with("cannot read /nonexistent/switchyard.toml: ")
    );
}
