"""The official `anthropic` Python SDK against Wharf: messages, streaming, tools, token counts,
errors in Anthropic's envelope."""

from __future__ import annotations

import anthropic
import pytest

from conftest import BAD_KEY

MODEL = "claude-sdk"
PROMPT = [{"role": "user", "content": "Say hello in a few words."}]
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Get the current weather in a given city",
    "input_schema": {
        "type": "object",
        "properties": {
            "city": {"type": "string", "description": "The city, e.g. Paris"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        },
        "required": ["city"],
    },
}


@pytest.fixture(scope="module")
def client(wharf):
    with anthropic.Anthropic(base_url=wharf.url, api_key=wharf.key) as c:
        yield c


def test_messages_unary(client, wharf, ledger):
    ledger.count()
    m = client.messages.create(model=MODEL, max_tokens=256, messages=PROMPT)
    assert m.type == "message"
    assert m.role == "assistant"
    assert m.model == wharf.upstream_claude
    texts = [b.text for b in m.content if b.type == "text"]
    assert texts and "".join(texts).strip()
    assert m.stop_reason in {"end_turn", "max_tokens"}
    assert m.usage.input_tokens > 0
    assert m.usage.output_tokens > 0


def test_messages_stream(client, wharf, ledger):
    ledger.count()
    with client.messages.stream(model=MODEL, max_tokens=256, messages=PROMPT) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
        request_id = stream.response.headers.get("x-request-id")
    assert text.strip()
    assert "".join(b.text for b in final.content if b.type == "text") == text
    assert final.usage.input_tokens > 0
    assert final.usage.output_tokens > 0

    rec = ledger.record(request_id)
    assert rec["endpoint"] == "/v1/messages"
    assert (rec["model"], rec["upstream_model"]) == (MODEL, wharf.upstream_claude)
    assert (rec["status"], rec["outcome"], rec["stream"]) == (200, "success", True)
    assert rec["usage_source"] == "provider"
    assert rec["tokens"]["input"] == final.usage.input_tokens
    assert rec["tokens"]["output"] == final.usage.output_tokens


def test_messages_create_stream_events(client, ledger):
    ledger.count()
    events = list(client.messages.create(model=MODEL, max_tokens=256, messages=PROMPT, stream=True))
    types = [e.type for e in events]
    assert types[0] == "message_start"
    assert types[-1] == "message_stop"
    assert "content_block_delta" in types
    delta = [e for e in events if e.type == "message_delta"]
    assert delta and delta[-1].usage.output_tokens > 0


def test_tool_use(client, ledger):
    ledger.count()
    m = client.messages.create(
        model=MODEL,
        max_tokens=256,
        tools=[WEATHER_TOOL],
        messages=[{"role": "user", "content": "What is the weather like in Paris today?"}],
    )
    assert m.stop_reason == "tool_use"
    calls = [b for b in m.content if b.type == "tool_use"]
    assert len(calls) == 1
    call = calls[0]
    assert call.name == "get_weather"
    assert call.id
    assert isinstance(call.input, dict) and "city" in call.input

    # The tool result goes back in the next turn; the model answers in text.
    ledger.count()
    m2 = client.messages.create(
        model=MODEL,
        max_tokens=256,
        tools=[WEATHER_TOOL],
        messages=[
            {"role": "user", "content": "What is the weather like in Paris today?"},
            {"role": "assistant", "content": m.content},
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": call.id, "content": "18 C, sunny"}
                ],
            },
        ],
    )
    assert m2.content


def test_tool_use_streaming(client, ledger):
    ledger.count()
    with client.messages.stream(
        model=MODEL,
        max_tokens=256,
        tools=[WEATHER_TOOL],
        messages=[{"role": "user", "content": "What is the weather like in Paris today?"}],
    ) as stream:
        final = stream.get_final_message()
    calls = [b for b in final.content if b.type == "tool_use"]
    assert len(calls) == 1 and calls[0].name == "get_weather"
    assert isinstance(calls[0].input, dict) and "city" in calls[0].input
    assert final.stop_reason == "tool_use"


def test_count_tokens(client, ledger):
    ledger.count()
    r = client.messages.count_tokens(model=MODEL, messages=PROMPT)
    assert r.input_tokens > 0


def test_unknown_model_is_bad_request(client, ledger):
    ledger.count()
    with pytest.raises(anthropic.BadRequestError) as info:
        client.messages.create(model="no-such-model", max_tokens=16, messages=PROMPT)
    err = info.value
    assert err.status_code == 400
    # Anthropic's envelope: {"type":"error","error":{"type":...,"message":...}}
    assert isinstance(err.body, dict)
    assert err.body.get("type") == "error"
    assert err.body["error"]["type"] == "invalid_request_error"
    assert err.body["error"]["message"]
    rec = ledger.record(err.response.headers.get("x-request-id"))
    assert (rec["status"], rec["outcome"], rec["error_code"]) == (400, "denied", "model_not_found")


def test_auth_token_is_accepted(wharf, ledger):
    # Claude Code and other agents send the key as a bearer token (ANTHROPIC_AUTH_TOKEN).
    with anthropic.Anthropic(base_url=wharf.url, api_key=None, auth_token=wharf.key) as c:
        ledger.count()
        m = c.messages.create(model=MODEL, max_tokens=64, messages=PROMPT)
    assert m.content and m.usage.output_tokens > 0


def test_bad_key_is_authentication_error(wharf, ledger):
    with anthropic.Anthropic(base_url=wharf.url, api_key=BAD_KEY) as bad:
        with pytest.raises(anthropic.AuthenticationError) as info:
            bad.messages.create(model=MODEL, max_tokens=16, messages=PROMPT)
    err = info.value
    assert err.status_code == 401
    assert err.body["error"]["type"] == "authentication_error"
    ledger.expect_request_id(err.response.headers.get("x-request-id"))
