"""Checks the gateway with LiteLLM as a client (its `openai/` provider): chat
completions plain and streamed with usage, embeddings, the Responses API, Anthropic's
Messages API (its `anthropic/` provider), and errors mapped to LiteLLM's exceptions.

Run by tests/sdk.rs against a live gateway; reads SWITCHYARD_BASE_URL, SWITCHYARD_KEY.
Exits non-zero, with the failing check named, when anything is off.
"""

import importlib.metadata
import os
import sys

# LiteLLM fetches its model price map from the internet on import unless told not to.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import litellm  # noqa: E402

BASE = os.environ["SWITCHYARD_BASE_URL"]
KEY = os.environ["SWITCHYARD_KEY"]
PROMPT = [{"role": "user", "content": "Describe a switchyard."}]
passed = 0


def check(name, condition, detail=""):
    global passed
    if not condition:
        print(f"FAILED: {name} {detail}", file=sys.stderr)
        sys.exit(1)
    passed += 1


common = {"api_base": BASE, "api_key": KEY, "num_retries": 0, "timeout": 30}

answer = litellm.completion(model="openai/gpt-4o-mini", messages=PROMPT, **common)
text = answer.choices[0].message.content
check("completion: text", bool(text), repr(answer))
check("completion: usage", answer.usage.completion_tokens == len(text.split(" ")), repr(answer.usage))

chunks = list(litellm.completion(model="openai/gpt-4o-mini", messages=PROMPT, stream=True,
                                 stream_options={"include_usage": True}, **common))
streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
check("stream: same text", streamed == text, f"{streamed!r} != {text!r}")
usage = [getattr(c, "usage", None) for c in chunks if getattr(c, "usage", None)]
check("stream: usage", usage and usage[-1].completion_tokens == len(text.split(" ")), repr(usage))

limited = litellm.completion(model="openai/gpt-4o-mini", messages=PROMPT, max_tokens=3, **common)
check("max_tokens: cut short", limited.choices[0].finish_reason == "length" and limited.usage.completion_tokens == 3, repr(limited))

vectors = litellm.embedding(model="openai/text-embedding-3-small", input=["a", "b"], **common)
check("embedding: two vectors", len(vectors.data) == 2 and len(vectors.data[0]["embedding"]) > 0, repr(vectors)[:200])

response = litellm.responses(model="openai/gpt-4o-mini", input="Describe a switchyard.", **common)
output = "".join(part.text for item in response.output if item.type == "message" for part in item.content)
check("responses: text", output == text, f"{output!r} != {text!r}")

# LiteLLM's Anthropic provider speaks the Messages API to the gateway's Messages front.
via_anthropic = litellm.completion(
    model="anthropic/gpt-4o-mini", messages=PROMPT, max_tokens=50,
    api_base=BASE.removesuffix("/v1"), api_key=KEY, num_retries=0, timeout=30,
)
said = via_anthropic.choices[0].message.content
# The mock's words follow the request's bytes, which LiteLLM writes as content blocks here.
check("anthropic provider: text", bool(said), repr(via_anthropic))
check("anthropic provider: usage", via_anthropic.usage.completion_tokens == len(said.split(" ")), repr(via_anthropic.usage))

try:
    litellm.completion(model="openai/no-such-model", messages=PROMPT, **common)
    check("an unknown model raises", False)
except litellm.NotFoundError as e:
    check("an unknown model is NotFoundError naming it", "no-such-model" in str(e), repr(e))

try:
    litellm.completion(model="openai/text-embedding-3-small", messages=PROMPT, **common)
    check("chat with an embeddings model raises", False)
except litellm.BadRequestError as e:
    check("chat with an embeddings model is BadRequestError naming the endpoint", "/v1/embeddings" in str(e), repr(e))

try:
    litellm.completion(model="openai/gpt-4o-mini", messages=PROMPT, **{**common, "api_key": "sk-wrong"})
    check("a wrong key raises", False)
except litellm.AuthenticationError as e:
    check("a wrong key is AuthenticationError", "401" in str(e) or "key" in str(e).lower(), repr(e))

got = ""
try:
    for chunk in litellm.completion(model="openai/chat-broken", messages=PROMPT, stream=True, **common):
        got += (chunk.choices[0].delta.content or "") if chunk.choices else ""
    check("a broken stream raises", False, f"ended quietly after {got!r}")
except litellm.APIError as e:
    check("a broken stream raises APIError", "failed mid-stream" in str(e), repr(e))
except Exception as e:  # LiteLLM may wrap it in a subclass it maps from the status
    check("a broken stream raises a LiteLLM error naming it", "failed mid-stream" in str(e), repr(e))

version = importlib.metadata.version("litellm")
print(f"python litellm {version}: {passed} passed, 0 failed")
