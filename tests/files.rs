//! The Files API for batch input: uploads streamed to disk and checked line by line,
//! each tenant's files its own, records that survive a restart.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use serde_json::{Value, json};

const BOUNDARY: &str = "switchyard-test-boundary";

/// A `multipart/form-data` body with these text fields and one file.
fn multipart(fields: &[(&str, &str)], file: Option<(&str, &[u8])>) -> Vec<u8> {
    let mut body = Vec::new();
    for (name, value) in fields {
        body.extend_from_slice(
            format!(
                "--{BOUNDARY}\r\ncontent-disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
            )
            .as_bytes(),
        );
    }
    if let Some((filename, contents)) = file {
        body.extend_from_slice(
            format!("--{BOUNDARY}\r\ncontent-disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\ncontent-type: application/jsonl\r\n\r\n")
                .as_bytes(),
        );
        body.extend_from_slice(contents);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    body
}

async fn upload(gw: &TestGateway, key: &str, body: Vec<u8>) -> reqwest::Response {
    gw.client
        .post(gw.url("/v1/files"))
        .bearer_auth(key)
        .header(
            "content-type",
            format!("multipart/form-data; boundary={BOUNDARY}"),
        )
        .body(body)
        .send()
        .await
        .unwrap()
}

fn request(id: &str, model: &str) -> String {
    json!({"custom_id": id, "method": "POST", "url": "/v1/chat/completions",
        "body": {"model": model, "messages": [{"role": "user", "content": "hi"}]}})
    .to_string()
}

fn jsonl(lines: &[String]) -> Vec<u8> {
    lines
        .iter()
        .map(|l| format!("{l}\n"))
        .collect::<String>()
        .into_bytes()
}

#[tokio::test]
async fn a_file_is_uploaded_listed_read_and_deleted_by_its_tenant_only() {
    let mock = quick_mock().spawn_local().await.unwrap();
    let gw = TestGateway::with_regions(&[("us-east", &mock)]).await;
    let contents = jsonl(&[request("a", "gpt-4o-mini"), request("b", "chat-small")]);
    let response = upload(
        &gw,
        KEY_A,
        multipart(&[("purpose", "batch")], Some(("in.jsonl", &contents))),
    )
    .await;
    assert_eq!(response.status(), 200);
    let file: Value = response.json().await.unwrap();
    let id = file["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("file-"), "{file}");
    assert_eq!(file["object"], "file");
    assert_eq!(file["bytes"], contents.len());
    assert_eq!(file["filename"], "in.jsonl");
    assert_eq!(file["purpose"], "batch");

    let listed: Value = gw.get(KEY_A, "/v1/files").await.json().await.unwrap();
    assert_eq!(listed["object"], "list");
    assert_eq!(listed["data"][0]["id"], json!(id));
    let read = gw.get(KEY_A, &format!("/v1/files/{id}/content")).await;
    assert_eq!(read.status(), 200);
    assert_eq!(read.bytes().await.unwrap(), contents);

    // Another tenant finds nothing, by list, by id, by content, or to delete.
    let theirs: Value = gw.get(KEY_B, "/v1/files").await.json().await.unwrap();
    assert_eq!(theirs["data"], json!([]));
    for path in [format!("/v1/files/{id}"), format!("/v1/files/{id}/content")] {
        let response = gw.get(KEY_B, &path).await;
        assert_eq!(response.status(), 404);
        assert_eq!(error_of(response).await["code"], "file_not_found");
    }
    let delete = |key: &'static str| {
        gw.client
            .delete(gw.url(&format!("/v1/files/{id}")))
            .bearer_auth(key)
            .send()
    };
    assert_eq!(delete(KEY_B).await.unwrap().status(), 404);

    // Kept across a restart, then deleted with its contents.
    let data = gw.stop().await;
    let gw = TestGateway::from_toml_in(&config_for(&[("us-east", mock.url())], ""), data).await;
    let again: Value = gw
        .get(KEY_A, &format!("/v1/files/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(again, file);
    let deleted = gw
        .client
        .delete(gw.url(&format!("/v1/files/{id}")))
        .bearer_auth(KEY_A)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.json::<Value>().await.unwrap()["deleted"], true);
    assert_eq!(
        gw.get(KEY_A, &format!("/v1/files/{id}")).await.status(),
        404
    );
    let left: Vec<_> = std::fs::read_dir(gw.data.path().join("files"))
        .unwrap()
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test]
async fn a_bad_file_is_refused_with_its_lines_named_and_nothing_kept() {
    let mock = quick_mock().spawn_local().await.unwrap();
    let gw = TestGateway::with_regions(&[("us-east", &mock)]).await;
    let contents = jsonl(&[
        request("a", "gpt-4o-mini"),
        request("a", "gpt-4o-mini"),
        request("c", "text-embedding-3-small"),
        "{\"custom_id\": \"d\"".into(),
    ]);
    let response = upload(
        &gw,
        KEY_A,
        multipart(&[("purpose", "batch")], Some(("bad.jsonl", &contents))),
    )
    .await;
    assert_eq!(response.status(), 400);
    let error = error_of(response).await;
    assert_eq!(error["code"], "invalid_file");
    assert_eq!(error["param"], "file");
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("line 2: custom_id \"a\" appears twice (first on line 1)"),
        "{message}"
    );
    assert!(
        message
            .contains("line 3: body.model \"text-embedding-3-small\" is for embeddings requests"),
        "{message}"
    );
    assert!(message.contains("line 4: not JSON"), "{message}");

    let response = upload(
        &gw,
        KEY_A,
        multipart(
            &[("purpose", "fine-tune")],
            Some(("in.jsonl", &jsonl(&[request("a", "gpt-4o-mini")]))),
        ),
    )
    .await;
    assert_eq!(response.status(), 400);
    assert_eq!(error_of(response).await["param"], "purpose");
    let response = upload(&gw, KEY_A, multipart(&[("purpose", "batch")], None)).await;
    assert_eq!(response.status(), 400);
    assert_eq!(error_of(response).await["param"], "file");

    let listed: Value = gw.get(KEY_A, "/v1/files").await.json().await.unwrap();
    assert_eq!(listed["data"], json!([]));
    let left = std::fs::read_dir(gw.data.path().join("files"))
        .unwrap()
        .count();
    assert_eq!(left, 0, "no partial upload is left behind");
}

#[tokio::test]
async fn files_beyond_the_configured_sizes_are_refused() {
    let mock = quick_mock().spawn_local().await.unwrap();
    let one = jsonl(&[request("a", "gpt-4o-mini")]);
    let extra = format!(
        "[files]\nmax_file_size = \"{}B\"\nmax_tenant_size = \"{}B\"",
        one.len() + 20,
        one.len() * 3 / 2
    );
    let config = config_for(&[("us-east", mock.url())], "")
        .replace("[health]", &format!("{extra}\n\n[health]"));
    let gw = TestGateway::from_toml(&config).await;
    let two = jsonl(&[request("a", "gpt-4o-mini"), request("b", "gpt-4o-mini")]);
    let response = upload(
        &gw,
        KEY_A,
        multipart(&[("purpose", "batch")], Some(("two.jsonl", &two))),
    )
    .await;
    assert_eq!(response.status(), 413);
    assert_eq!(error_of(response).await["code"], "file_too_large");
    let response = upload(
        &gw,
        KEY_A,
        multipart(&[("purpose", "batch")], Some(("one.jsonl", &one))),
    )
    .await;
    assert_eq!(response.status(), 200);
    let response = upload(
        &gw,
        KEY_A,
        multipart(&[("purpose", "batch")], Some(("one.jsonl", &one))),
    )
    .await;
    assert_eq!(response.status(), 413);
    let error = error_of(response).await;
    assert_eq!(error["code"], "tenant_files_full");
    assert!(
        error["message"].as_str().unwrap().contains("delete files"),
        "{error}"
    );
    // Another tenant has its own room.
    let response = upload(
        &gw,
        KEY_B,
        multipart(&[("purpose", "batch")], Some(("one.jsonl", &one))),
    )
    .await;
    assert_eq!(response.status(), 200);
}
