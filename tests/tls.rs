//! TLS on the public and the admin API: the certificates in tests/tls (a test CA, and a
//! server certificate it signed for localhost and 127.0.0.1), clients that trust only that
//! CA, and the errors an operator sees when trust, scheme or files are wrong.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;
use switchyard::admin::client::AdminClient;
use switchyard::config::Config;
use switchyard::control::{Control, Feed, Remote};
use switchyard::daemon::Daemon;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/tls")
        .join(name)
}

fn tls_settings(public: bool) -> String {
    let (cert, key) = (fixture("server.pem"), fixture("server.key"));
    let mut settings = format!(
        "admin_tls_cert = \"{}\"\nadmin_tls_key = \"{}\"\nheader_read_timeout = \"1s\"\n",
        cert.display(),
        key.display()
    );
    if public {
        settings.push_str(&format!(
            "tls_cert = \"{}\"\ntls_key = \"{}\"\n",
            cert.display(),
            key.display()
        ));
    }
    settings
}

/// A client that trusts the test CA and nothing else.
fn trusting(ca: &str) -> reqwest::Client {
    switchyard::tls::install_crypto();
    let pem = std::fs::read(fixture(ca)).unwrap();
    reqwest::Client::builder()
        .no_proxy()
        .tls_certs_only([reqwest::Certificate::from_pem(&pem).unwrap()])
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_public_api_speaks_https_and_http2_with_the_configured_certificate() {
    let mock = quick_mock().spawn_local().await.unwrap();
    let gw = TestGateway::with_regions_and(&[("us-east", &mock)], &tls_settings(true)).await;
    let url = gw.daemon.url();
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");

    let client = trusting("ca.pem");
    let reply = client
        .post(format!("{url}/v1/chat/completions"))
        .bearer_auth(KEY_A)
        .json(&hello("gpt-4o-mini"))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 200);
    // ALPN offers h2, so a client that speaks it gets it.
    assert_eq!(reply.version(), reqwest::Version::HTTP_2);
    let body: serde_json::Value = reply.json().await.unwrap();
    assert_eq!(body["object"], "chat.completion");

    let mut streamed = client
        .post(format!("{url}/v1/chat/completions"))
        .bearer_auth(KEY_A)
        .json(&hello_stream("gpt-4o-mini"))
        .send()
        .await
        .unwrap();
    let mut text = Vec::new();
    while let Some(chunk) = streamed.chunk().await.unwrap() {
        text.extend_from_slice(&chunk);
    }
    assert!(
        String::from_utf8_lossy(&text).ends_with("data: [DONE]\n\n"),
        "the stream ends as OpenAI's do"
    );

    // A client speaking plain HTTP to the TLS port gets nothing it could mistake for an
    // answer, and the listener carries on.
    let plain = gw
        .client
        .get(url.replace("https://", "http://") + "/healthz")
        .send()
        .await;
    assert!(plain.is_err(), "plain HTTP got an answer: {plain:?}");
    let health = client.get(format!("{url}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_over_https_trusts_only_the_given_ca_and_says_why_it_refuses() {
    let mock = quick_mock().spawn_local().await.unwrap();
    let gw = TestGateway::with_regions_and(&[("us-east", &mock)], &tls_settings(false)).await;
    assert!(gw.daemon.url().starts_with("http://"));
    let admin = gw.daemon.admin_url().unwrap();
    assert!(admin.starts_with("https://"), "{admin}");

    let trusted = AdminClient::new(&admin, ADMIN_TOKEN, "alice", Some(&fixture("ca.pem"))).unwrap();
    let tenants = trusted.get("/admin/tenants").await.unwrap();
    assert!(tenants.to_string().contains("tenant-a"), "{tenants}");

    let strangers =
        AdminClient::new(&admin, ADMIN_TOKEN, "alice", Some(&fixture("other-ca.pem"))).unwrap();
    let refused = strangers
        .get("/admin/tenants")
        .await
        .unwrap_err()
        .to_string();
    assert!(refused.contains("--ca-file"), "{refused}");

    let plain = admin.replace("https://", "http://");
    let wrong_scheme = AdminClient::new(&plain, ADMIN_TOKEN, "alice", None).unwrap();
    let refused = wrong_scheme
        .get("/admin/tenants")
        .await
        .unwrap_err()
        .to_string();
    assert!(refused.contains("use https://"), "{refused}");

    // The other way round: https:// to the plain public listener.
    let public = gw.daemon.url().replace("http://", "https://");
    let wrong_scheme =
        AdminClient::new(&public, ADMIN_TOKEN, "alice", Some(&fixture("ca.pem"))).unwrap();
    let refused = wrong_scheme.get("/healthz").await.unwrap_err().to_string();
    assert!(refused.contains("try http://"), "{refused}");

    let unreadable = AdminClient::new(&admin, ADMIN_TOKEN, "alice", Some(&fixture("server.key")));
    let message = unreadable.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(
        message.contains("server.key") && message.contains("no PEM certificate"),
        "{message}"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_attaches_and_acts_over_https() {
    let mock = quick_mock().spawn_local().await.unwrap();
    let gw = TestGateway::with_regions_and(&[("us-east", &mock)], &tls_settings(false)).await;
    let admin = gw.daemon.admin_url().unwrap();
    let remote = Remote::new(&admin, ADMIN_TOKEN, "alice", Some(&fixture("ca.pem"))).unwrap();

    let mut feed = remote.subscribe();
    let snapshot = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match feed.recv().await {
                Some(Feed::Snapshot(snapshot)) => return snapshot,
                Some(Feed::Link(_)) => continue,
                None => panic!("the feed ended"),
            }
        }
    })
    .await
    .expect("a snapshot over https");
    assert!(snapshot.tenants.iter().any(|t| t.name == "tenant-a"));

    let done = remote
        .act(switchyard::domain::snapshot::Action::PauseTenant {
            tenant: "tenant-a".into(),
        })
        .await
        .unwrap();
    assert!(done.contains("tenant-a"), "{done}");
    assert_eq!(gw.chat(KEY_A, &hello("gpt-4o-mini")).await.status(), 403);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_finishes_its_tls_hello_is_closed() {
    let mock = quick_mock().spawn_local().await.unwrap();
    let gw = TestGateway::with_regions_and(&[("us-east", &mock)], &tls_settings(true)).await;
    let mut socket = tokio::net::TcpStream::connect(gw.daemon.addr())
        .await
        .unwrap();
    // The first bytes of a TLS record header, then silence.
    socket.write_all(&[0x16, 0x03]).await.unwrap();
    let mut buffer = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(30), socket.read(&mut buffer))
        .await
        .expect("closed by the header-read timeout");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    gw.stop().await;
}

async fn start_error(extra: &str) -> String {
    let toml = config_for(&[("us-east", dead_url().await)], extra);
    let mut config = Config::from_toml(&toml).expect("the config itself is valid");
    let data = tempfile::tempdir().unwrap();
    config.server.data_dir = data.path().to_owned();
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    config.admin.listen = "127.0.0.1:0".parse().unwrap();
    match Daemon::start_with_admin_token(config, Some(ADMIN_TOKEN.into())).await {
        Ok(daemon) => {
            daemon.stop(Duration::from_secs(1)).await;
            panic!("started with {extra}")
        }
        Err(error) => error.to_string(),
    }
}

#[tokio::test]
async fn unusable_certificate_files_stop_the_start_naming_the_setting_and_file() {
    let (cert, key) = (fixture("server.pem"), fixture("server.key"));
    let missing = start_error(&format!(
        "tls_cert = \"/nonexistent/cert.pem\"\ntls_key = \"{}\"",
        key.display()
    ))
    .await;
    assert!(
        missing.contains("server.tls_cert") && missing.contains("/nonexistent/cert.pem"),
        "{missing}"
    );
    assert!(missing.contains("cannot be read"), "{missing}");

    let mismatched = start_error(&format!(
        "admin_tls_cert = \"{}\"\nadmin_tls_key = \"{}\"",
        fixture("ca.pem").display(),
        key.display()
    ))
    .await;
    assert!(
        mismatched.contains("server.admin_tls_key") && mismatched.contains("does not go with"),
        "{mismatched}"
    );

    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let unreadable = start_error(&format!(
        "tls_cert = \"{}\"\ntls_key = \"{}\"",
        garbage.display(),
        key.display()
    ))
    .await;
    assert!(unreadable.contains("no PEM certificate"), "{unreadable}");
    let no_key = start_error(&format!(
        "tls_cert = \"{}\"\ntls_key = \"{}\"",
        cert.display(),
        cert.display()
    ))
    .await;
    assert!(
        no_key.contains("server.tls_key") && no_key.contains("no PEM private key"),
        "{no_key}"
    );
}

#[test]
fn a_certificate_without_its_key_is_a_config_error() {
    let toml = config_for(
        &[("us-east", "http://127.0.0.1:9".to_string())],
        "admin_tls_cert = \"cert.pem\"",
    );
    let error = Config::from_toml(&toml).unwrap_err().to_string();
    assert!(
        error.contains("server.admin_tls_key") && error.contains("admin_tls_cert is set"),
        "{error}"
    );
    let toml = config_for(
        &[("us-east", "http://127.0.0.1:9".to_string())],
        "tls_key = \"key.pem\"\ntls_cert = \" \"",
    );
    let error = Config::from_toml(&toml).unwrap_err().to_string();
    assert!(
        error.contains("server.tls_cert: must not be empty"),
        "{error}"
    );
}

/// An HTTPS upstream is reached over TLS and its certificate checked against the
/// system's roots: one signed by a CA this machine does not trust is refused, and the
/// client is told why rather than getting an answer from an unverified server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_upstream_with_an_untrusted_certificate_is_refused_naming_the_certificate() {
    let mock = quick_mock().spawn_local().await.unwrap();
    // A real HTTPS server, certified by the test CA: another gateway in front of the mock.
    let upstream = TestGateway::with_regions_and(&[("us-east", &mock)], &tls_settings(true)).await;
    let url = format!("{}/v1", upstream.daemon.url());
    let gw = TestGateway::from_toml(&config_for(&[("us-east", url)], "")).await;

    let reply = gw.chat(KEY_A, &hello("gpt-4o-mini")).await;
    let status = reply.status();
    let error = error_of(reply).await;
    let message = error["message"].as_str().unwrap();
    assert_eq!(status, 503, "{error}");
    assert!(message.contains("certificate"), "{message}");
    assert!(
        mock.last_request().is_none(),
        "nothing reached the upstream behind TLS"
    );
    gw.stop().await;
    upstream.stop().await;
}
