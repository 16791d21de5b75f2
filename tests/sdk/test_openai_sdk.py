"""The official `openai` Python SDK against Wharf: chat, responses, embeddings, models, errors."""

from __future__ import annotations

import openai
import pytest

from conftest import BAD_KEY

CHAT = "gpt-sdk"
EMBED = "embed-sdk"
GRANTED = {"gpt-sdk", "embed-sdk", "claude-sdk", "gemini-sdk"}
PROMPT = [{"role": "user", "content": "Say hello in a few words."}]


@pytest.fixture(scope="module")
def client(wharf):
    with openai.OpenAI(base_url=f"{wharf.url}/v1", api_key=wharf.key) as c:
        yield c


def test_chat_unary(client, wharf, ledger):
    ledger.count()
    r = client.chat.completions.create(model=CHAT, messages=PROMPT)
    assert r.choices, r
    assert r.choices[0].message.content
    assert r.choices[0].finish_reason in {"stop", "length"}
    assert r.usage is not None
    assert r.usage.prompt_tokens > 0
    assert r.usage.completion_tokens > 0
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.model == wharf.upstream_chat

    rec = ledger.record(r._request_id)
    assert rec["endpoint"] == "/v1/chat/completions"
    assert (rec["model"], rec["upstream_model"]) == (CHAT, wharf.upstream_chat)
    assert (rec["status"], rec["outcome"], rec["stream"]) == (200, "success", False)
    assert rec["usage_source"] == "provider"
    assert rec["tokens"]["input"] == r.usage.prompt_tokens
    assert rec["tokens"]["output"] == r.usage.completion_tokens
    assert rec["cost_nanos"] > 0


def test_chat_stream_without_usage(client, wharf, ledger):
    ledger.count()
    stream = client.chat.completions.create(model=CHAT, messages=PROMPT, stream=True)
    chunks = list(stream)
    assert chunks
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    # Wharf asks the provider for usage, but the client did not: no usage chunk reaches it.
    assert [c for c in chunks if c.usage is not None] == []
    assert all(c.choices for c in chunks)
    assert {c.model for c in chunks} == {wharf.upstream_chat}
    assert chunks[-1].choices[0].finish_reason in {"stop", "length"}

    # The usage the client did not see is still recorded, from the provider.
    rec = ledger.record(stream.response.headers.get("x-request-id"))
    assert (rec["status"], rec["outcome"], rec["stream"]) == (200, "success", True)
    assert rec["usage_source"] == "provider"
    assert rec["tokens"]["input"] > 0 and rec["tokens"]["output"] > 0


def test_chat_stream_with_usage(client, ledger):
    ledger.count()
    stream = client.chat.completions.create(
        model=CHAT,
        messages=PROMPT,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert last.usage.prompt_tokens > 0
    assert last.usage.completion_tokens > 0
    assert all(c.usage is None for c in chunks[:-1])

    rec = ledger.record(stream.response.headers.get("x-request-id"))
    assert rec["stream"] is True and rec["usage_source"] == "provider"
    assert rec["tokens"]["input"] == last.usage.prompt_tokens
    assert rec["tokens"]["output"] == last.usage.completion_tokens


def test_responses_unary(client, wharf, ledger):
    ledger.count()
    r = client.responses.create(model=CHAT, input="Say hello in a few words.")
    assert r.status == "completed"
    assert r.output_text.strip()
    assert r.usage is not None
    assert r.usage.input_tokens > 0
    assert r.usage.output_tokens > 0
    assert r.model == wharf.upstream_chat


def test_responses_stream(client, ledger):
    ledger.count()
    stream = client.responses.create(model=CHAT, input="Say hello in a few words.", stream=True)
    events = list(stream)
    types = [e.type for e in events]
    assert types[0] == "response.created"
    assert types.count("response.completed") == 1
    assert types[-1] == "response.completed"
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas.strip()
    completed = events[-1].response
    assert completed.output_text == deltas
    assert completed.usage is not None
    assert completed.usage.input_tokens > 0
    assert completed.usage.output_tokens > 0

    rec = ledger.record(stream.response.headers.get("x-request-id"))
    assert rec["endpoint"] == "/v1/responses"
    assert (rec["status"], rec["outcome"], rec["stream"]) == (200, "success", True)
    assert rec["tokens"]["input"] == completed.usage.input_tokens
    assert rec["tokens"]["output"] == completed.usage.output_tokens


def test_embeddings(client, ledger):
    ledger.count()
    r = client.embeddings.create(model=EMBED, input=["first text", "second text"])
    assert [d.index for d in r.data] == [0, 1]
    for d in r.data:
        assert len(d.embedding) > 0
        assert all(isinstance(x, float) for x in d.embedding)
    assert r.data[0].embedding != r.data[1].embedding
    assert r.usage.prompt_tokens > 0

    rec = ledger.record(r._request_id)
    assert (rec["endpoint"], rec["model"]) == ("/v1/embeddings", EMBED)
    assert rec["tokens"]["input"] == r.usage.prompt_tokens


def test_embeddings_float_format(client, ledger):
    ledger.count()
    r = client.embeddings.create(model=EMBED, input="one text", encoding_format="float")
    assert len(r.data) == 1
    assert len(r.data[0].embedding) > 0


def test_models_list_shows_exactly_the_granted_models(client, ledger):
    ledger.count()
    ids = [m.id for m in client.models.list()]
    assert sorted(ids) == sorted(GRANTED)


def test_unknown_model_is_bad_request(client, ledger):
    ledger.count()
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="no-such-model", messages=PROMPT)
    err = info.value
    assert err.status_code == 400
    assert err.code == "model_not_found"
    assert isinstance(err.body, dict) and err.body["code"] == "model_not_found"
    rec = ledger.record(err.response.headers.get("x-request-id"))
    assert (rec["status"], rec["outcome"], rec["error_code"]) == (400, "denied", "model_not_found")


def test_bad_key_is_authentication_error(wharf, ledger):
    with openai.OpenAI(base_url=f"{wharf.url}/v1", api_key=BAD_KEY) as bad:
        with pytest.raises(openai.AuthenticationError) as info:
            bad.chat.completions.create(model=CHAT, messages=PROMPT)
    err = info.value
    assert err.status_code == 401
    assert err.code == "unauthorized"
    ledger.expect_request_id(err.response.headers.get("x-request-id"))
