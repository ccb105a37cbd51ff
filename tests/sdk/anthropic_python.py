"""Checks the gateway's Messages API with the official `anthropic` Python package.

Run by tests/sdk.rs against a live gateway whose upstreams speak OpenAI chat
completions; reads SWITCHYARD_BASE_URL (the gateway's root, without /v1) and
SWITCHYARD_KEY. Exits non-zero, with the failing check named, when anything is off.
"""

import os
import sys

import anthropic

client = anthropic.Anthropic(
    base_url=os.environ["SWITCHYARD_BASE_URL"], api_key=os.environ["SWITCHYARD_KEY"], max_retries=0, timeout=30
)
MESSAGES = [{"role": "user", "content": "Describe a switchyard."}]
passed = 0


def check(name, condition, detail=""):
    global passed
    if not condition:
        print(f"FAILED: {name} {detail}", file=sys.stderr)
        sys.exit(1)
    passed += 1


message = client.messages.create(model="gpt-4o-mini", max_tokens=256, messages=MESSAGES)
text = message.content[0].text
check("a message with text", message.type == "message" and message.role == "assistant" and text, repr(message))
check("usage in Anthropic's names", message.usage.output_tokens == len(text.split(" ")) and message.usage.input_tokens > 0, repr(message.usage))
check("stop_reason end_turn", message.stop_reason == "end_turn", message.stop_reason)

short = client.messages.create(model="gpt-4o-mini", max_tokens=2, system="Be brief.", messages=MESSAGES)
check("max_tokens cuts with stop_reason max_tokens", short.stop_reason == "max_tokens" and short.usage.output_tokens == 2, repr(short))

streamed = ""
with client.messages.stream(model="gpt-4o-mini", max_tokens=256, messages=MESSAGES) as stream:
    for delta in stream.text_stream:
        streamed += delta
    final = stream.get_final_message()
check("stream text equals the whole answer", streamed == text, f"{streamed!r} != {text!r}")
check("stream's final message", final.content[0].text == text and final.usage.output_tokens == len(text.split(" ")), repr(final))

events = [e.type for e in client.messages.create(model="gpt-4o-mini", max_tokens=256, messages=MESSAGES, stream=True)]
check("raw stream events", events[0] == "message_start" and events[-2:] == ["message_delta", "message_stop"], events)

tools = [{"name": "look", "description": "Looks things up.", "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}}}]
conversation = MESSAGES + [
    {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "look", "input": {"q": "switchyard"}}]},
    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "a rail yard"}]},
]
with_tools = client.messages.create(model="gpt-4o-mini", max_tokens=256, messages=conversation, tools=tools)
check("a conversation with tools and tool results", with_tools.content[0].text, repr(with_tools))

count = client.messages.count_tokens(model="gpt-4o-mini", messages=MESSAGES)
check("count_tokens", count.input_tokens == message.usage.input_tokens, f"{count.input_tokens} != {message.usage.input_tokens}")

try:
    client.messages.create(model="gpt-9", max_tokens=10, messages=MESSAGES)
    check("an unknown model raises", False)
except anthropic.NotFoundError as e:
    check("an unknown model is not_found_error", e.body["error"]["type"] == "not_found_error", repr(e.body))

try:
    anthropic.Anthropic(base_url=os.environ["SWITCHYARD_BASE_URL"], api_key="sy-wrong", max_retries=0).messages.create(
        model="gpt-4o-mini", max_tokens=10, messages=MESSAGES
    )
    check("a wrong key raises", False)
except anthropic.AuthenticationError as e:
    check("a wrong key is authentication_error", e.body["error"]["type"] == "authentication_error", repr(e.body))

got = ""
try:
    with client.messages.stream(model="chat-broken", max_tokens=256, messages=MESSAGES) as stream:
        for delta in stream.text_stream:
            got += delta
    check("a broken stream raises", False, f"ended quietly after {got!r}")
except anthropic.APIError as e:
    check("a broken stream raises APIError", "failed mid-stream" in str(e), repr(e))

print(f"python anthropic {anthropic.__version__}: {passed} passed, 0 failed")
