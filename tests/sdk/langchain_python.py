"""Checks the gateway with LangChain's ChatOpenAI, over chat completions and over the
Responses API (`use_responses_api=True`).

Run by tests/sdk.rs against a live gateway; reads SWITCHYARD_BASE_URL, SWITCHYARD_KEY.
Exits non-zero, with the failing check named, when anything is off.
"""

import os
import sys

import langchain_core
from langchain_openai import ChatOpenAI

BASE = os.environ["SWITCHYARD_BASE_URL"]
KEY = os.environ["SWITCHYARD_KEY"]
PROMPT = "Describe a switchyard."
passed = 0


def check(name, condition, detail=""):
    global passed
    if not condition:
        print(f"FAILED: {name} {detail}", file=sys.stderr)
        sys.exit(1)
    passed += 1


def text_of(message):
    text = message.text
    return text() if callable(text) else text


def model(**kwargs):
    return ChatOpenAI(base_url=BASE, api_key=KEY, model="gpt-4o-mini", max_retries=0, timeout=30, **kwargs)


chat = model()
answer = chat.invoke(PROMPT)
text = text_of(answer)
check("chat: text", bool(text), repr(answer))
check("chat: usage", answer.usage_metadata["output_tokens"] == len(text.split(" ")), repr(answer.usage_metadata))
streamed = "".join(text_of(chunk) for chunk in chat.stream(PROMPT))
check("chat: stream", streamed == text, f"{streamed!r} != {text!r}")

# The mock's answer follows the request's bytes, which differ between LangChain's chat
# request and the gateway's translation; each path is checked against itself.
responses = model(use_responses_api=True)
answer = responses.invoke(PROMPT)
text = text_of(answer)
check("responses: text", bool(text), repr(answer))
check("responses: usage", answer.usage_metadata["output_tokens"] == len(text.split(" ")), repr(answer.usage_metadata))
streamed = "".join(text_of(chunk) for chunk in responses.stream(PROMPT))
check("responses: stream", streamed == text, f"{streamed!r} != {text!r}")
answer = responses.invoke([("system", "Be brief."), ("human", PROMPT)])
check("responses: with a system message", bool(text_of(answer)), repr(answer))

print(f"python langchain-core {langchain_core.__version__}: {passed} passed, 0 failed")
