"""Drives Heimdall with the official OpenAI Python SDK, unchanged but for base_url and api_key.

Prints one JSON line with what it saw; exits non-zero on any mismatch.
"""
import json
import os
import sys

import openai

client = openai.OpenAI(base_url=os.environ["HEIMDALL_BASE_URL"], api_key=os.environ["HEIMDALL_KEY"], max_retries=0)

chat = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hello sdk"}])
assert chat.choices[0].message.content == "mock reply to: hello sdk", chat
assert chat.usage.total_tokens > 0, chat.usage

parts = []
for chunk in client.chat.completions.create(
    model="claude-3-5-sonnet-20241022", messages=[{"role": "user", "content": "stream please"}], stream=True
):
    if chunk.choices and chunk.choices[0].delta.content:
        parts.append(chunk.choices[0].delta.content)
streamed = "".join(parts)
assert streamed.startswith("mock reply to: stream please"), streamed

try:
    client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    raise SystemExit("expected a 404")
except openai.NotFoundError as e:
    not_found = e.body
bad = openai.OpenAI(base_url=os.environ["HEIMDALL_BASE_URL"], api_key="vk-wrong", max_retries=0)
try:
    bad.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
    raise SystemExit("expected a 403")
except openai.PermissionDeniedError as e:
    denied = e.body

print(json.dumps({"chat": chat.choices[0].message.content, "streamed": streamed, "not_found": not_found, "denied": denied}))
sys.exit(0)
