//! The Responses API front: requests translated to chat completions go through the one
//! pipeline, so limits, routing, streams and the audit log see them like chat.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use serde_json::{Value, json};
use switchyard::mock::{MockHandle, Outage};

/// The audit writer batches; wait (up to ten seconds) until the newest record is the one
/// for `request_id`.
async fn record_of(gw: &TestGateway, request_id: &str) -> Value {
    for _ in 0..500 {
        let record = gw.newest_record().await;
        if record["request_id"] == request_id {
            return record;
        }
        tokio::time::sleep(ms(20)).await;
    }
    panic!("no audit record for {request_id}");
}

#[tokio::test]
async fn a_response_is_served_through_the_pipeline_and_audited() {
    let mock = quick_mock().answer_tokens(8).spawn_local().await.unwrap();
    let gw = TestGateway::with_regions(&[("us-east", &mock)]).await;
    let body = json!({"model": "gpt-4o-mini", "instructions": "Be brief.", "input": "Describe a switchyard."});
    let response = gw.post("/v1/responses", KEY_A, &body).await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-switchyard-region"), "us-east");
    assert_eq!(header(&response, "x-switchyard-instance"), "us-east-a");
    let request_id = header(&response, "x-request-id").to_string();
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["object"], "response");
    assert_eq!(answer["status"], "completed");
    assert_eq!(answer["model"], "gpt-4o-mini");
    let text = answer["output"][0]["content"][0]["text"].as_str().unwrap();
    assert_eq!(text.split(' ').count(), 8, "{text}");
    assert_eq!(answer["usage"]["output_tokens"], 8);

    // Upstream it was a chat completion, limited by the pipeline like any other.
    let sent = mock.last_request().unwrap();
    assert_eq!(
        sent["messages"],
        json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Describe a switchyard."}])
    );
    assert!(sent["max_tokens"].as_u64().is_some(), "{sent}");

    let record = record_of(&gw, &request_id).await;
    assert_eq!(record["endpoint"], "/v1/responses");
    assert_eq!(record["tenant"], "tenant-a");
    assert_eq!(record["status"], 200);
    assert_eq!(record["completion_tokens"], 8);
}

#[tokio::test]
async fn a_streamed_response_is_relayed_through_the_hub() {
    let mock = quick_mock().answer_tokens(6).spawn_local().await.unwrap();
    let gw = TestGateway::with_regions(&[("us-east", &mock)]).await;
    let body = json!({"model": "gpt-4o-mini", "input": "Describe a switchyard.", "stream": true});
    let response = gw.post("/v1/responses", KEY_A, &body).await;
    assert_eq!(response.status(), 200);
    assert!(header(&response, "content-type").starts_with("text/event-stream"));
    assert!(header(&response, "x-switchyard-stream-id").starts_with("str_"));
    let request_id = header(&response, "x-request-id").to_string();
    let text = response.text().await.unwrap();
    let events: Vec<Value> = sse_data(&text)
        .iter()
        .map(|data| serde_json::from_str(data).unwrap())
        .collect();
    assert_eq!(events[0]["type"], "response.created");
    let last = events.last().unwrap();
    assert_eq!(last["type"], "response.completed");
    assert_eq!(last["response"]["usage"]["output_tokens"], 6);
    let deltas: String = events
        .iter()
        .filter(|e| e["type"] == "response.output_text.delta")
        .map(|e| e["delta"].as_str().unwrap())
        .collect();
    assert_eq!(deltas, last["response"]["output"][0]["content"][0]["text"]);
    assert!(
        !text.contains("[DONE]"),
        "the Responses API ends without [DONE]"
    );

    let record = record_of(&gw, &request_id).await;
    assert_eq!(record["endpoint"], "/v1/responses");
    assert_eq!(record["stream"], true);
    assert_eq!(record["completion_tokens"], 6);
}

#[tokio::test]
async fn a_request_the_gateway_cannot_translate_is_refused_and_audited() {
    let mock = quick_mock().spawn_local().await.unwrap();
    let gw = TestGateway::with_regions(&[("us-east", &mock)]).await;
    let body = json!({"model": "gpt-4o-mini", "input": "x", "tools": [{"type": "file_search"}]});
    let response = gw.post("/v1/responses", KEY_A, &body).await;
    assert_eq!(response.status(), 400);
    let request_id = header(&response, "x-request-id").to_string();
    let error = error_of(response).await;
    assert_eq!(error["param"], "tools");
    assert!(
        error["message"].as_str().unwrap().contains("file_search"),
        "{error}"
    );
    assert_eq!(mock.stats().chat_requests, 0, "nothing went upstream");
    let record = record_of(&gw, &request_id).await;
    assert_eq!(record["endpoint"], "/v1/responses");
    assert_eq!(record["status"], 400);

    // An unknown model is the pipeline's own refusal, as for chat.
    let body = json!({"model": "gpt-9", "input": "x"});
    let response = gw.post("/v1/responses", KEY_A, &body).await;
    assert_eq!(response.status(), 404);
    assert_eq!(error_of(response).await["code"], "model_not_found");
}

#[tokio::test]
async fn a_follow_up_names_the_previous_response_and_the_gateway_supplies_the_conversation() {
    let mock = quick_mock().answer_tokens(4).spawn_local().await.unwrap();
    let gw = TestGateway::with_regions(&[("us-east", &mock)]).await;
    let first: Value = gw
        .post(
            "/v1/responses",
            KEY_A,
            &json!({"model": "gpt-4o-mini", "input": "First question."}),
        )
        .await
        .json()
        .await
        .unwrap();
    let first_id = first["id"].as_str().unwrap();
    let first_text = first["output"][0]["content"][0]["text"].clone();

    // The follow-up streams; upstream it carries the whole conversation.
    let body = json!({"model": "gpt-4o-mini", "input": "Second question.", "previous_response_id": first_id, "stream": true});
    let response = gw.post("/v1/responses", KEY_A, &body).await;
    assert_eq!(response.status(), 200);
    let events = response.text().await.unwrap();
    let completed: Value = serde_json::from_str(sse_data(&events).last().unwrap()).unwrap();
    assert_eq!(completed["response"]["previous_response_id"], first_id);
    let second_id = completed["response"]["id"].as_str().unwrap().to_string();
    assert_eq!(
        mock.last_request().unwrap()["messages"],
        json!([
            {"role": "user", "content": "First question."},
            {"role": "assistant", "content": first_text},
            {"role": "user", "content": "Second question."},
        ])
    );

    // A third turn after the streamed one walks both back.
    let body =
        json!({"model": "gpt-4o-mini", "input": "Third.", "previous_response_id": second_id});
    assert_eq!(gw.post("/v1/responses", KEY_A, &body).await.status(), 200);
    let sent = mock.last_request().unwrap();
    assert_eq!(sent["messages"].as_array().unwrap().len(), 5, "{sent}");
    assert_eq!(sent["messages"][3]["role"], "assistant");

    // Read back by its tenant only.
    let read = gw
        .client
        .get(gw.url(&format!("/v1/responses/{first_id}")))
        .bearer_auth(KEY_A)
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 200);
    assert_eq!(read.json::<Value>().await.unwrap()["id"], first_id);
    let other = gw
        .client
        .get(gw.url(&format!("/v1/responses/{first_id}")))
        .bearer_auth(KEY_B)
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 404);
    assert_eq!(error_of(other).await["code"], "response_not_found");
    let body = json!({"model": "gpt-4o-mini", "input": "x", "previous_response_id": first_id});
    let response = gw.post("/v1/responses", KEY_B, &body).await;
    assert_eq!(response.status(), 400, "another tenant cannot continue it");

    // Only background responses can be cancelled; the gateway finishes every one first.
    let cancel = |id: String| {
        gw.client
            .post(gw.url(&format!("/v1/responses/{id}/cancel")))
            .bearer_auth(KEY_A)
            .send()
    };
    let finished = cancel(first_id.to_string()).await.unwrap();
    assert_eq!(finished.status(), 400);
    assert!(
        error_of(finished).await["message"]
            .as_str()
            .unwrap()
            .contains("background")
    );
    let unknown = cancel("resp_unknown".to_string()).await.unwrap();
    assert_eq!(unknown.status(), 404);

    // Deleted, a follow-up to it, or to a turn after it, is refused, never answered
    // without its context.
    let deleted = gw
        .client
        .delete(gw.url(&format!("/v1/responses/{first_id}")))
        .bearer_auth(KEY_A)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.json::<Value>().await.unwrap()["deleted"], true);
    let requests = mock.stats().chat_requests;
    let body = json!({"model": "gpt-4o-mini", "input": "x", "previous_response_id": second_id});
    let response = gw.post("/v1/responses", KEY_A, &body).await;
    assert_eq!(response.status(), 400);
    let error = error_of(response).await;
    assert_eq!(error["code"], "previous_response_not_found");
    assert_eq!(error["param"], "previous_response_id");
    assert!(
        error["message"].as_str().unwrap().contains(first_id),
        "{error}"
    );
    assert_eq!(
        mock.stats().chat_requests,
        requests,
        "nothing went upstream"
    );
}

#[tokio::test]
async fn a_response_sent_with_store_false_is_not_kept() {
    let mock = quick_mock().spawn_local().await.unwrap();
    let gw = TestGateway::with_regions(&[("us-east", &mock)]).await;
    let body = json!({"model": "gpt-4o-mini", "input": "x", "store": false});
    let answer: Value = gw
        .post("/v1/responses", KEY_A, &body)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(answer["store"], false);
    let id = answer["id"].as_str().unwrap();
    let read = gw
        .client
        .get(gw.url(&format!("/v1/responses/{id}")))
        .bearer_auth(KEY_A)
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 404);
}

/// `us-east` and `eu-west`, each one instance at these mocks, with `responses = "…"`.
fn responses_modes(east: (&MockHandle, &str), west: (&MockHandle, &str)) -> String {
    config_for(&[("us-east", east.0.url()), ("eu-west", west.0.url())], "")
        .replace(
            "name = \"us-east-a\"",
            &format!("name = \"us-east-a\"\n  responses = \"{}\"", east.1),
        )
        .replace(
            "name = \"eu-west-a\"",
            &format!("name = \"eu-west-a\"\n  responses = \"{}\"", west.1),
        )
}

async fn drain(gw: &TestGateway, region: &str, on: bool) {
    let action = if on { "drain" } else { "undrain" };
    gw.admin(
        reqwest::Method::POST,
        &format!("/admin/regions/{region}/{action}"),
        None,
    )
    .await;
}

#[tokio::test]
async fn a_native_instance_is_sent_the_responses_api_and_follow_ups_go_where_it_is_stored() {
    let east = quick_mock().answer_tokens(5).spawn_local().await.unwrap();
    let west = quick_mock().answer_tokens(5).spawn_local().await.unwrap();
    let gw = TestGateway::from_toml(&responses_modes((&east, "native"), (&west, "native"))).await;

    // Made in eu-west while us-east is drained.
    drain(&gw, "us-east", true).await;
    let body =
        json!({"model": "gpt-4o-mini", "instructions": "Be brief.", "input": "First question."});
    let response = gw.post("/v1/responses", KEY_A, &body).await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-switchyard-instance"), "eu-west-a");
    let first: Value = response.json().await.unwrap();
    let first_id = first["id"].as_str().unwrap().to_string();
    assert_eq!(first["object"], "response");
    assert_eq!(first["usage"]["output_tokens"], 5);
    // Sent as it came (the model rewritten, the completion limited), to `/responses`.
    assert_eq!(west.last_path().unwrap(), "/v1/responses");
    let sent = west.last_request().unwrap();
    assert_eq!(sent["input"], "First question.");
    assert_eq!(sent["instructions"], "Be brief.");
    assert!(sent["max_output_tokens"].as_u64().is_some(), "{sent}");
    assert!(sent.get("messages").is_none() && sent.get("stream_options").is_none());

    // us-east is back and first in line, but the follow-up goes where the first is
    // stored, as it is: the upstream holds the conversation (its input counts it).
    drain(&gw, "us-east", false).await;
    let body = json!({"model": "gpt-4o-mini", "input": "Second.", "previous_response_id": first_id, "stream": true});
    let response = gw.post("/v1/responses", KEY_A, &body).await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-switchyard-instance"), "eu-west-a");
    assert_eq!(
        header(&response, "x-switchyard-route"),
        "eu-west-a: holds the previous response"
    );
    let events = response.text().await.unwrap();
    assert!(events.starts_with("event: response.created\n"), "{events}");
    let completed: Value = serde_json::from_str(sse_data(&events).last().unwrap()).unwrap();
    assert_eq!(completed["type"], "response.completed");
    let second = &completed["response"];
    assert_eq!(second["previous_response_id"], json!(first_id));
    assert!(
        second["usage"]["input_tokens"].as_u64().unwrap()
            > first["usage"]["total_tokens"].as_u64().unwrap()
    );
    assert_eq!(
        west.last_request().unwrap()["previous_response_id"],
        json!(first_id)
    );
    assert_eq!(east.stats().chat_requests, 0, "nothing went to us-east");
    let second_id = second["id"].as_str().unwrap().to_string();

    // Usage is settled from the Responses API's own usage.
    let expected = first["usage"]["total_tokens"].as_u64().unwrap()
        + second["usage"]["total_tokens"].as_u64().unwrap();
    assert_eq!(gw.day_tokens_reaching(expected).await, expected);

    // Read back from the instance that stores it; another tenant finds nothing.
    let get = |id: String, key: &'static str| {
        gw.client
            .get(gw.url(&format!("/v1/responses/{id}")))
            .bearer_auth(key)
            .send()
    };
    let read = get(second_id.clone(), KEY_A).await.unwrap();
    assert_eq!(read.status(), 200);
    assert_eq!(read.json::<Value>().await.unwrap()["id"], json!(second_id));
    assert_eq!(
        west.last_path().unwrap(),
        format!("/v1/responses/{second_id}")
    );
    assert_eq!(get(second_id.clone(), KEY_B).await.unwrap().status(), 404);

    // Its instance drained: the follow-up waits for it rather than going elsewhere.
    drain(&gw, "eu-west", true).await;
    let body =
        json!({"model": "gpt-4o-mini", "input": "Third.", "previous_response_id": second_id});
    let response = gw.post("/v1/responses", KEY_A, &body).await;
    assert_eq!(response.status(), 503);
    let error = error_of(response).await;
    assert!(
        error["message"].as_str().unwrap().contains("eu-west-a"),
        "{error}"
    );
    drain(&gw, "eu-west", false).await;

    // Deleted there and forgotten here: a follow-up is refused without going upstream.
    let deleted = gw
        .client
        .delete(gw.url(&format!("/v1/responses/{second_id}")))
        .bearer_auth(KEY_A)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 200);
    assert_eq!(deleted.json::<Value>().await.unwrap()["deleted"], true);
    assert_eq!(get(second_id.clone(), KEY_A).await.unwrap().status(), 404);
    let requests = west.stats().chat_requests;
    let body = json!({"model": "gpt-4o-mini", "input": "x", "previous_response_id": second_id});
    let response = gw.post("/v1/responses", KEY_A, &body).await;
    assert_eq!(response.status(), 400);
    assert_eq!(
        error_of(response).await["code"],
        "previous_response_not_found"
    );
    assert_eq!(west.stats().chat_requests, requests);
}

#[tokio::test]
async fn one_alias_fails_over_from_a_native_instance_to_a_translated_one() {
    let east = quick_mock().answer_tokens(4).spawn_local().await.unwrap();
    let west = quick_mock().answer_tokens(4).spawn_local().await.unwrap();
    let gw =
        TestGateway::from_toml(&responses_modes((&east, "native"), (&west, "translate"))).await;
    east.start_outage(Outage::Error);
    for stream in [false, true] {
        let body = json!({"model": "gpt-4o-mini", "input": "Hello.", "stream": stream});
        let response = gw.post("/v1/responses", KEY_A, &body).await;
        assert_eq!(response.status(), 200);
        assert_eq!(header(&response, "x-switchyard-instance"), "eu-west-a");
        let answer: Value = if stream {
            let events = response.text().await.unwrap();
            let last: Value = serde_json::from_str(sse_data(&events).last().unwrap()).unwrap();
            assert_eq!(last["type"], "response.completed");
            last["response"].clone()
        } else {
            response.json().await.unwrap()
        };
        assert_eq!(answer["object"], "response");
        assert_eq!(answer["usage"]["output_tokens"], 4);
        // Translated for the chat upstream.
        assert_eq!(west.last_path().unwrap(), "/v1/chat/completions");
        assert!(west.last_request().unwrap()["messages"].is_array());
    }
    // A built-in tool cannot be translated, and one instance serves it natively: the
    // request is not refused up front; with that instance down, the attempt there fails.
    let body = json!({"model": "gpt-4o-mini", "input": "x", "tools": [{"type": "web_search"}]});
    let response = gw.post("/v1/responses", KEY_A, &body).await;
    assert_ne!(response.status(), 200);
    east.stop_outage();
    let response = gw.post("/v1/responses", KEY_A, &body).await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-switchyard-instance"), "us-east-a");
}

#[tokio::test]
async fn kept_responses_survive_a_restart_and_a_gone_instance_is_named() {
    let east = quick_mock().answer_tokens(4).spawn_local().await.unwrap();
    let west = quick_mock().answer_tokens(4).spawn_local().await.unwrap();
    let both = responses_modes((&east, "translate"), (&west, "native"));
    let gw = TestGateway::from_toml(&both).await;
    let ask = |input: &str, previous: Option<&str>| {
        let mut body = json!({"model": "gpt-4o-mini", "input": input});
        if let Some(previous) = previous {
            body["previous_response_id"] = json!(previous);
        }
        body
    };
    // One response translated in us-east, one stored by eu-west.
    let kept: Value = gw
        .post("/v1/responses", KEY_A, &ask("Kept here.", None))
        .await
        .json()
        .await
        .unwrap();
    drain(&gw, "us-east", true).await;
    let stored: Value = gw
        .post("/v1/responses", KEY_A, &ask("Stored there.", None))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(west.last_path().unwrap(), "/v1/responses");
    let data = gw.stop().await;

    // Back with the same data (the drain too): the kept conversation is put back
    // together.
    let gw = TestGateway::from_toml_in(&both, data).await;
    drain(&gw, "us-east", false).await;
    let kept_id = kept["id"].as_str().unwrap();
    let response = gw
        .post("/v1/responses", KEY_A, &ask("And now?", Some(kept_id)))
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-switchyard-instance"), "us-east-a");
    let sent = east.last_request().unwrap();
    assert_eq!(sent["messages"][0]["content"], "Kept here.");
    assert_eq!(sent["messages"].as_array().unwrap().len(), 3, "{sent}");
    let read = gw
        .client
        .get(gw.url(&format!("/v1/responses/{kept_id}")))
        .bearer_auth(KEY_A)
        .send()
        .await
        .unwrap();
    assert_eq!(read.json::<Value>().await.unwrap()["id"], json!(kept_id));
    let data = gw.stop().await;

    // Back without eu-west: a follow-up to what it stores says so, and goes nowhere.
    let east_only = config_for(&[("us-east", east.url())], "");
    let gw = TestGateway::from_toml_in(&east_only, data).await;
    let stored_id = stored["id"].as_str().unwrap();
    let requests = east.stats().chat_requests;
    let response = gw
        .post("/v1/responses", KEY_A, &ask("And now?", Some(stored_id)))
        .await;
    assert_eq!(response.status(), 400);
    let error = error_of(response).await;
    assert_eq!(error["code"], "previous_response_not_found");
    assert!(
        error["message"].as_str().unwrap().contains("eu-west-a"),
        "{error}"
    );
    assert_eq!(east.stats().chat_requests, requests);
}
