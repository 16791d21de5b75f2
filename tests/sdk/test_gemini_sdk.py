"""The official Google Gen AI SDK (`google-genai`) against Wharf: generate_content, streaming,
errors with Google's status.

google-genai 3.x calls the Gemini Developer API's `v1` by default; Wharf serves the `v1beta`
surface, so the client selects it with `HttpOptions(api_version="v1beta")`.
"""

from __future__ import annotations

import pytest
from google import genai
from google.genai import errors, types

from conftest import BAD_KEY

MODEL = "gemini-sdk"
PROMPT = "Say hello in a few words."


def make_client(url: str, key: str) -> genai.Client:
    return genai.Client(
        api_key=key,
        http_options=types.HttpOptions(base_url=url, api_version="v1beta"),
    )


@pytest.fixture(scope="module")
def client(wharf):
    c = make_client(wharf.url, wharf.key)
    yield c
    c.close()


def test_generate_content(client, wharf, ledger):
    ledger.count()
    r = client.models.generate_content(model=MODEL, contents=PROMPT)
    assert r.text and r.text.strip()
    assert r.candidates and r.candidates[0].finish_reason == types.FinishReason.STOP
    u = r.usage_metadata
    assert u is not None
    assert u.prompt_token_count > 0
    assert u.candidates_token_count > 0
    assert u.total_token_count >= u.prompt_token_count + u.candidates_token_count

    rec = ledger.record(r.sdk_http_response.headers.get("x-request-id"))
    assert rec["endpoint"] == "/v1beta/models/{model}:generateContent"
    assert (rec["model"], rec["upstream_model"]) == (MODEL, wharf.upstream_gemini)
    assert (rec["status"], rec["outcome"], rec["stream"]) == (200, "success", False)
    assert rec["tokens"]["input"] == u.prompt_token_count
    assert rec["tokens"]["output"] == u.candidates_token_count


def test_generate_content_with_config(client, ledger):
    ledger.count()
    r = client.models.generate_content(
        model=MODEL,
        contents=[types.Content(role="user", parts=[types.Part(text=PROMPT)])],
        config=types.GenerateContentConfig(
            system_instruction="Answer briefly.",
            max_output_tokens=64,
            temperature=0.2,
        ),
    )
    assert r.text and r.text.strip()
    assert r.usage_metadata.candidates_token_count > 0


def test_generate_content_stream(client, ledger):
    ledger.count()
    chunks = list(client.models.generate_content_stream(model=MODEL, contents=PROMPT))
    assert len(chunks) > 1
    text = "".join(c.text or "" for c in chunks)
    assert text.strip()
    with_usage = [c for c in chunks if c.usage_metadata is not None]
    assert with_usage
    final = with_usage[-1].usage_metadata
    assert final.prompt_token_count > 0
    assert final.candidates_token_count > 0

    rec = ledger.record(chunks[0].sdk_http_response.headers.get("x-request-id"))
    assert rec["endpoint"] == "/v1beta/models/{model}:streamGenerateContent"
    assert (rec["status"], rec["outcome"], rec["stream"]) == (200, "success", True)
    assert rec["usage_source"] == "provider"
    assert rec["tokens"]["input"] == final.prompt_token_count
    assert rec["tokens"]["output"] == final.candidates_token_count


def test_function_calling(client, ledger):
    ledger.count()
    weather = types.FunctionDeclaration(
        name="get_weather",
        description="Get the current weather in a given city",
        parameters=types.Schema(
            type=types.Type.OBJECT,
            properties={"city": types.Schema(type=types.Type.STRING)},
            required=["city"],
        ),
    )
    r = client.models.generate_content(
        model=MODEL,
        contents="What is the weather like in Paris today?",
        config=types.GenerateContentConfig(
            tools=[types.Tool(function_declarations=[weather])],
            automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
        ),
    )
    assert r.function_calls
    assert r.function_calls[0].name == "get_weather"
    assert "city" in (r.function_calls[0].args or {})


def test_unknown_model_is_client_error(client, ledger):
    ledger.count()
    with pytest.raises(errors.ClientError) as info:
        client.models.generate_content(model="no-such-model", contents=PROMPT)
    err = info.value
    assert err.code == 400
    assert err.status == "INVALID_ARGUMENT"
    assert err.message
    # google.rpc.Status: the HTTP status as a number, Wharf's code in an ErrorInfo detail.
    body = err.details["error"]
    assert body["code"] == 400
    assert body["details"][0]["@type"] == "type.googleapis.com/google.rpc.ErrorInfo"
    assert (body["details"][0]["reason"], body["details"][0]["domain"]) == ("model_not_found", "wharf")
    rec = ledger.record(err.response.headers.get("x-request-id"))
    assert (rec["status"], rec["outcome"], rec["error_code"]) == (400, "denied", "model_not_found")


def test_bad_key_is_client_error(wharf, ledger):
    bad = make_client(wharf.url, BAD_KEY)
    try:
        with pytest.raises(errors.ClientError) as info:
            bad.models.generate_content(model=MODEL, contents=PROMPT)
    finally:
        bad.close()
    err = info.value
    assert err.code == 401
    assert err.status == "UNAUTHENTICATED"
    assert err.details["error"]["code"] == 401
    assert err.details["error"]["details"][0]["reason"] == "unauthorized"
    ledger.expect_request_id(err.response.headers.get("x-request-id"))


def test_client_with_default_api_version(wharf, ledger):
    # google-genai 3.x defaults to api_version v1 (POST /v1/models/{m}:generateContent);
    # Wharf serves Gemini under both /v1beta and /v1.
    # The README's snippet: base_url only, the SDK's default API version.
    c = genai.Client(api_key=wharf.key, http_options={"base_url": wharf.url})
    try:
        r = c.models.generate_content(model=MODEL, contents=PROMPT)
    except errors.ClientError as e:
        ledger.expect_request_id(e.response.headers.get("x-request-id"))
        raise
    finally:
        c.close()
    ledger.count()
    assert r.text
