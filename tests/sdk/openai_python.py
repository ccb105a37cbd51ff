"""Checks the gateway with the official `openai` Python package.

Run by tests/sdk.rs against a live gateway; reads SWITCHYARD_BASE_URL, SWITCHYARD_KEY.
Exits non-zero, with the failing check named, when anything is off.
"""

import os
import sys

import openai

BASE = os.environ["SWITCHYARD_BASE_URL"]
KEY = os.environ["SWITCHYARD_KEY"]
MESSAGES = [{"role": "user", "content": "Describe a switchyard."}]

client = openai.OpenAI(base_url=BASE, api_key=KEY, max_retries=0, timeout=30)
passed = 0


def check(name, condition, detail=""):
    global passed
    if not condition:
        print(f"FAILED: {name} {detail}", file=sys.stderr)
        sys.exit(1)
    passed += 1


# Plain chat.
reply = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
text = reply.choices[0].message.content
check("plain chat has content", bool(text), repr(reply))
check("plain chat usage matches the text", reply.usage.completion_tokens == len(text.split(" ")), repr(reply.usage))
check("plain chat finish_reason", reply.choices[0].finish_reason == "stop")

# The raw response carries the gateway's headers.
raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)
check("x-switchyard-region header", raw.headers.get("x-switchyard-region") == "us-east", dict(raw.headers))
check("x-request-id header", raw.headers.get("x-request-id", "").startswith("req_"))

# Streaming, with usage requested.
streamed, usage, finish = "", None, None
for chunk in client.chat.completions.create(
    model="gpt-4o-mini", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
):
    if chunk.choices:
        streamed += chunk.choices[0].delta.content or ""
        finish = chunk.choices[0].finish_reason or finish
    if chunk.usage:
        usage = chunk.usage
check("stream has content", bool(streamed))
check("stream text equals the plain answer for the same prompt", streamed == text, f"{streamed!r} != {text!r}")
check("stream usage chunk", usage is not None and usage.completion_tokens == len(streamed.split(" ")), repr(usage))
check("stream finish_reason", finish == "stop")

# max_tokens cuts the answer with finish_reason "length".
short = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=2)
check("max_tokens honoured", short.usage.completion_tokens == 2 and short.choices[0].finish_reason == "length")

# Embeddings: the SDK asks for base64 by default and decodes it.
emb = client.embeddings.create(model="text-embedding-3-small", input=["switch", "yard"])
check("two embeddings", len(emb.data) == 2)
vector = emb.data[0].embedding
check("embedding decoded to floats", len(vector) == 1536 and all(isinstance(x, float) for x in vector))
norm = sum(x * x for x in vector) ** 0.5
check("embedding is a unit vector", abs(norm - 1.0) < 1e-3, norm)

# Models.
ids = [m.id for m in client.models.list()]
check("models list", ids[:2] == ["gpt-4o-mini", "chat-broken"], ids)

# A wrong key.
try:
    openai.OpenAI(base_url=BASE, api_key="sy-wrong", max_retries=0).models.list()
    check("wrong key raises", False)
except openai.AuthenticationError as e:
    check("wrong key is 401 invalid_api_key", e.status_code == 401 and e.code == "invalid_api_key", repr(e))

# An unknown model.
try:
    client.chat.completions.create(model="gpt-9", messages=MESSAGES)
    check("unknown model raises", False)
except openai.NotFoundError as e:
    check("unknown model is 404 model_not_found", e.code == "model_not_found", repr(e))

# A stream that breaks upstream must raise, never end quietly as if complete.
got = ""
try:
    for chunk in client.chat.completions.create(model="chat-broken", messages=MESSAGES, stream=True):
        if chunk.choices:
            got += chunk.choices[0].delta.content or ""
    check("a broken stream raises", False, f"ended quietly after {got!r}")
except openai.APIError as e:
    check("a broken stream raises APIError", "failed mid-stream" in str(e.message), repr(e))
    check("a broken stream delivered what came before", len(got.split(" ")) == 3, repr(got))

# The Responses API, translated to chat completions for this upstream: the same prompt
# gives the same text, and usage comes back in the Responses API's names.
resp = client.responses.create(model="gpt-4o-mini", input="Describe a switchyard.")
check("responses: output_text", resp.output_text == text, f"{resp.output_text!r} != {text!r}")
check("responses: status", resp.status == "completed", resp.status)
check("responses: usage", resp.usage.output_tokens == len(text.split(" ")) and resp.usage.total_tokens == resp.usage.input_tokens + resp.usage.output_tokens, repr(resp.usage))
check("responses: id", resp.id.startswith("resp_"), resp.id)
short = client.responses.create(model="gpt-4o-mini", input="Describe a switchyard.", max_output_tokens=2)
check("responses: max_output_tokens makes it incomplete", short.status == "incomplete" and short.usage.output_tokens == 2, repr(short))

deltas, completed, kinds = "", None, []
for event in client.responses.create(model="gpt-4o-mini", input=[{"role": "user", "content": "Describe a switchyard."}], stream=True):
    kinds.append(event.type)
    if event.type == "response.output_text.delta":
        deltas += event.delta
    elif event.type == "response.completed":
        completed = event.response
check("responses stream: deltas", deltas == text, f"{deltas!r} != {text!r}")
check("responses stream: first and last events", kinds[0] == "response.created" and kinds[-1] == "response.completed", kinds)
check("responses stream: completed carries usage", completed is not None and completed.usage.output_tokens == len(text.split(" ")), repr(completed))

with client.responses.stream(model="gpt-4o-mini", input="Describe a switchyard.") as stream:
    final = stream.get_final_response()
check("responses stream helper: final text", final.output_text == text, repr(final.output_text))

# A follow-up by previous_response_id, read back, deleted.
follow = client.responses.create(model="gpt-4o-mini", input="And then?", previous_response_id=resp.id)
check("responses: follow-up", follow.previous_response_id == resp.id and follow.output_text, repr(follow))
check("responses: retrieve", client.responses.retrieve(follow.id).output_text == follow.output_text)
client.responses.delete(resp.id)
try:
    client.responses.create(model="gpt-4o-mini", input="x", previous_response_id=resp.id)
    check("a follow-up to a deleted response raises", False)
except openai.BadRequestError as e:
    check("a follow-up to a deleted response is previous_response_not_found", e.code == "previous_response_not_found", repr(e))
try:
    client.responses.retrieve(resp.id)
    check("a deleted response is gone", False)
except openai.NotFoundError as e:
    check("a deleted response is 404", e.code == "response_not_found", repr(e))

# A built-in tool: an upstream that serves the Responses API runs it; one that speaks
# only chat cannot, and the gateway says so.
if os.environ.get("SWITCHYARD_RESPONSES") == "native":
    tooled = client.responses.create(model="gpt-4o-mini", input="x", tools=[{"type": "web_search"}])
    check("a built-in tool passes to a native upstream", tooled.status == "completed", repr(tooled))
else:
    try:
        client.responses.create(model="gpt-4o-mini", input="x", tools=[{"type": "web_search"}])
        check("a built-in tool raises", False)
    except openai.BadRequestError as e:
        check("a built-in tool is 400 naming tools", e.status_code == 400 and e.param == "tools", repr(e))

got = ""
try:
    for event in client.responses.create(model="chat-broken", input="Describe a switchyard.", stream=True):
        if event.type == "response.output_text.delta":
            got += event.delta
    check("a broken responses stream raises", False, f"ended quietly after {got!r}")
except openai.APIError as e:
    check("a broken responses stream raises APIError", "failed mid-stream" in str(e.message), repr(e))

# The Files API, for batch input: upload, read back, list, delete; a bad file is refused
# with its lines named.
import io
import json as _json

lines = "".join(_json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
                             "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"q{i}"}]}}) + "\n"
                for i in range(3))
uploaded = client.files.create(file=("batch.jsonl", io.BytesIO(lines.encode())), purpose="batch")
check("files: created", uploaded.id.startswith("file-") and uploaded.bytes == len(lines.encode()) and uploaded.purpose == "batch", repr(uploaded))
check("files: retrieve", client.files.retrieve(uploaded.id).filename == "batch.jsonl")
check("files: content", client.files.content(uploaded.id).text == lines)
check("files: list", uploaded.id in [f.id for f in client.files.list()])
check("files: delete", client.files.delete(uploaded.id).deleted)
try:
    client.files.retrieve(uploaded.id)
    check("a deleted file is gone", False)
except openai.NotFoundError:
    check("a deleted file is 404", True)
try:
    client.files.create(file=("bad.jsonl", io.BytesIO(b'{"custom_id": "x"}\nnot json\n')), purpose="batch")
    check("a bad file raises", False)
except openai.BadRequestError as e:
    check("a bad file names its lines", "line 1: method" in e.message and "line 2: not JSON" in e.message, e.message)

# A batch, as the SDK's docs run one: upload, create, poll, read the output.
import time

batch_input = client.files.create(file=("batch.jsonl", io.BytesIO(lines.encode())), purpose="batch")
batch = client.batches.create(input_file_id=batch_input.id, endpoint="/v1/chat/completions", completion_window="24h")
check("batches: created", batch.status in ("validating", "in_progress") and batch.input_file_id == batch_input.id, repr(batch))
for _ in range(600):
    batch = client.batches.retrieve(batch.id)
    if batch.status in ("completed", "failed", "expired", "cancelled"):
        break
    time.sleep(0.05)
check("batches: completed", batch.status == "completed" and batch.request_counts.completed == 3, repr(batch))
results = [_json.loads(line) for line in client.files.content(batch.output_file_id).text.splitlines()]
check("batches: output lines", sorted(r["custom_id"] for r in results) == ["r0", "r1", "r2"], repr(results))
check("batches: answers", all(r["response"]["status_code"] == 200 and r["response"]["body"]["choices"] for r in results), repr(results))
check("batches: listed", batch.id in [b.id for b in client.batches.list()])

print(f"python openai {openai.__version__}: {passed} passed, 0 failed")
