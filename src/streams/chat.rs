//! What one event of a chat-completions stream says, for whatever renders a chat stream
//! in another API's events (the Responses and Messages fronts, the Responses translation
//! of a chat upstream).

use serde_json::Value;

/// One thing a chat stream says.
pub enum ChatEvent<'a> {
    Text(&'a str),
    /// A piece of tool call `index` (its id and name come with its first piece).
    Call {
        index: u64,
        id: Option<&'a Value>,
        name: Option<&'a Value>,
        arguments: &'a str,
    },
    Finish(&'a str),
    Usage(&'a Value),
    /// `[DONE]`: the answer is complete.
    Done,
    /// An error in place of a chunk: the upstream's, or the gateway's when the stream
    /// broke or was cut.
    Error(&'a Value),
}

/// Reads the `data` of one chat stream event into `on`.
pub fn read_chat_data(data: &str, mut on: impl FnMut(ChatEvent<'_>)) {
    if data == "[DONE]" {
        on(ChatEvent::Done);
        return;
    }
    let Ok(chunk) = serde_json::from_str::<Value>(data) else {
        return;
    };
    if let Some(error) = chunk.get("error") {
        on(ChatEvent::Error(error));
        return;
    }
    if let Some(usage) = chunk.get("usage").filter(|u| u.is_object()) {
        on(ChatEvent::Usage(usage));
    }
    let Some(choice) = chunk.get("choices").and_then(|c| c.get(0)) else {
        return;
    };
    let delta = choice.get("delta");
    if let Some(text) = delta
        .and_then(|d| d.get("content"))
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
    {
        on(ChatEvent::Text(text));
    }
    if let Some(Value::Array(calls)) = delta.and_then(|d| d.get("tool_calls")) {
        for call in calls {
            let function = call.get("function");
            on(ChatEvent::Call {
                index: call.get("index").and_then(Value::as_u64).unwrap_or(0),
                id: call.get("id"),
                name: function.and_then(|f| f.get("name")),
                arguments: function
                    .and_then(|f| f.get("arguments"))
                    .and_then(Value::as_str)
                    .unwrap_or(""),
            });
        }
    }
    if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
        on(ChatEvent::Finish(reason));
    }
}
