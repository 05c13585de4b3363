"""The Responses API through the official openai SDK, the Messages API through the official
anthropic SDK, and an openai-agents agent in its default (Responses) mode, against a real
server on the real default model."""

import json
import os
import tempfile

import anthropic
import httpx
import openai
import pytest
from pydantic import BaseModel

from conftest import API_KEY, GEMMA, MODELS, QWEN, Server

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    "strict": True,
}
WEATHER_ANTHROPIC = {
    "name": "get_weather",
    "description": "Current weather in a city",
    "input_schema": WEATHER["parameters"],
}


@pytest.fixture(scope="module")
def claude(server):
    return anthropic.Anthropic(base_url=server.base, api_key=API_KEY, max_retries=0)


# --- OpenAI Responses -------------------------------------------------------------------


def test_responses_create_plain_and_streamed_agree(client):
    kw = dict(model=QWEN, input="Name three colors.", max_output_tokens=24, temperature=0)
    r = client.responses.create(**kw)
    assert r.id.startswith("resp_") and r.object == "response"
    assert r.status in ("completed", "incomplete") and r.output_text
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens
    with client.responses.stream(**kw) as s:
        types = [e.type for e in s]
        final = s.get_final_response()
    assert types[:2] == ["response.created", "response.in_progress"]
    assert types[-1] in ("response.completed", "response.incomplete")
    assert final.output_text == r.output_text


def test_responses_parse_with_a_pydantic_model(client):
    class City(BaseModel):
        name: str
        country: str

    r = client.responses.parse(
        model=QWEN,
        input="Give the capital of France as JSON with name and country.",
        text_format=City,
        max_output_tokens=60,
        temperature=0,
    )
    assert isinstance(r.output_parsed, City) and r.output_parsed.name


def test_function_tool_two_turn_loop(client):
    question = [{"role": "user", "content": "What is the weather in Paris?"}]
    r = client.responses.create(model=QWEN, input=question, tools=[WEATHER], tool_choice="required", temperature=0)
    calls = [o for o in r.output if o.type == "function_call"]
    assert calls and calls[0].name == "get_weather"
    city = json.loads(calls[0].arguments)["city"]
    result = {"type": "function_call_output", "call_id": calls[0].call_id, "output": f"Sunny, 24 C in {city}."}
    # Resending the whole conversation... (with tool_choice "auto" the 0.5B model calls the
    # tool again whatever the result says, so the answer turn turns tools off)
    again = client.responses.create(model=QWEN, input=question + list(r.output) + [result], tools=[WEATHER], tool_choice="none", temperature=0, max_output_tokens=60)
    assert "24" in again.output_text or "unny" in again.output_text
    # ... or only the tool result, continuing the stored response.
    cont = client.responses.create(model=QWEN, previous_response_id=r.id, input=[result], tools=[WEATHER], tool_choice="none", temperature=0, max_output_tokens=60)
    assert cont.output_text == again.output_text
    # A streamed call accumulates through the SDK's helpers.
    with client.responses.stream(model=QWEN, input=question, tools=[WEATHER], tool_choice="required", temperature=0) as s:
        events = list(s)
        final = s.get_final_response()
    assert any(e.type == "response.function_call_arguments.delta" for e in events)
    fc = [o for o in final.output if o.type == "function_call"][0]
    assert fc.arguments == calls[0].arguments


def test_previous_response_id_retrieve_input_items_delete(client):
    first = client.responses.create(model=QWEN, input="My name is Ada. Reply with OK.", max_output_tokens=8, temperature=0)
    second = client.responses.create(model=QWEN, input="What is my name?", previous_response_id=first.id, max_output_tokens=12, temperature=0)
    assert "Ada" in second.output_text
    got = client.responses.retrieve(second.id)
    assert got.id == second.id and got.output_text == second.output_text
    items = list(client.responses.input_items.list(first.id))
    assert items[0].content[0].text == "My name is Ada. Reply with OK."
    client.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(first.id)


def test_input_tokens_count(server):
    r = httpx.post(server.base + "/v1/responses/input_tokens", json={"model": QWEN, "input": "hello"}, headers={"Authorization": f"Bearer {API_KEY}"})
    assert r.status_code == 200 and r.json()["object"] == "response.input_tokens" and r.json()["input_tokens"] > 0


def test_responses_errors_are_the_sdks_exceptions(client, server):
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve("resp_does_not_exist")
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model=QWEN, input="hi", max_output_tokens=0)
    assert e.value.body["param"] == "max_output_tokens"
    with pytest.raises(openai.BadRequestError):
        client.responses.create(model=QWEN, input="word " * 40000)
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="no-such-model", input="hi")
    bad = openai.OpenAI(base_url=server.base + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.responses.create(model=QWEN, input="hi")


def test_stored_responses_survive_a_restart():
    with tempfile.TemporaryDirectory() as d:
        cfg = os.path.join(d, "slm.toml")
        with open(cfg, "w") as f:
            f.write(f'responses_db = "{d}/responses.sqlite"\n')
        args = ["--config", cfg, "--model", str(MODELS / f"{QWEN}.gguf")]
        s = Server(args)
        try:
            c = openai.OpenAI(base_url=s.base + "/v1", api_key=API_KEY, max_retries=0)
            r = c.responses.create(model=QWEN, input="Say OK.", max_output_tokens=4, temperature=0)
        finally:
            s.stop()
        s = Server(args)
        try:
            c = openai.OpenAI(base_url=s.base + "/v1", api_key=API_KEY, max_retries=0)
            assert c.responses.retrieve(r.id).output_text == r.output_text
        finally:
            s.stop()


# --- Anthropic Messages -----------------------------------------------------------------


def test_messages_create(claude):
    m = claude.messages.create(model=QWEN, max_tokens=24, messages=[{"role": "user", "content": "Name three colors."}], extra_body={"temperature": 0})
    assert m.id.startswith("msg_") and m.type == "message" and m.role == "assistant"
    assert m.content[0].type == "text" and m.content[0].text
    assert m.stop_reason in ("end_turn", "max_tokens")
    assert m.usage.input_tokens > 0 and m.usage.output_tokens > 0


def test_messages_stream_text(claude):
    kw = dict(model=QWEN, max_tokens=24, messages=[{"role": "user", "content": "Name three colors."}], extra_body={"temperature": 0}, system="Be brief.")
    whole = claude.messages.create(**kw)
    with claude.messages.stream(**kw) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text == whole.content[0].text == final.content[0].text
    assert final.stop_reason == whole.stop_reason


def test_messages_tool_use_and_tool_result(claude):
    question = {"role": "user", "content": "What is the weather in Paris?"}
    with claude.messages.stream(model=QWEN, max_tokens=80, messages=[question], tools=[WEATHER_ANTHROPIC], tool_choice={"type": "any"}, extra_body={"temperature": 0}) as s:
        final = s.get_final_message()
    assert final.stop_reason == "tool_use"
    use = [b for b in final.content if b.type == "tool_use"][0]
    assert use.name == "get_weather" and isinstance(use.input["city"], str)
    plain = claude.messages.create(model=QWEN, max_tokens=80, messages=[question], tools=[WEATHER_ANTHROPIC], tool_choice={"type": "any"}, extra_body={"temperature": 0})
    assert [b for b in plain.content if b.type == "tool_use"][0].input == use.input
    reply = claude.messages.create(
        model=QWEN,
        max_tokens=60,
        tools=[WEATHER_ANTHROPIC],
        tool_choice={"type": "none"},
        extra_body={"temperature": 0},
        messages=[
            question,
            {"role": "assistant", "content": [b.model_dump() for b in final.content]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "Sunny, 24 C."}]},
        ],
    )
    assert reply.content and reply.content[0].type == "text" and reply.content[0].text


def test_messages_structured_output(claude):
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "country": {"type": "string"}}, "required": ["name", "country"], "additionalProperties": False}
    m = claude.messages.create(
        model=QWEN,
        max_tokens=60,
        messages=[{"role": "user", "content": "The capital of France, as JSON with name and country."}],
        output_config={"format": {"type": "json_schema", "schema": schema}},
        extra_body={"temperature": 0},
    )
    city = json.loads(m.content[0].text)
    assert set(city) == {"name", "country"}


def test_messages_count_tokens(claude):
    n = claude.messages.count_tokens(model=QWEN, messages=[{"role": "user", "content": "hello"}])
    assert n.input_tokens > 0


def test_messages_errors_are_the_sdks_exceptions(claude, server):
    with pytest.raises(anthropic.BadRequestError):
        claude.messages.create(model=QWEN, max_tokens=10, messages=[])
    with pytest.raises(anthropic.NotFoundError):
        claude.messages.create(model="no-such-model", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    bad = anthropic.Anthropic(base_url=server.base, api_key="wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError):
        bad.messages.create(model=QWEN, max_tokens=10, messages=[{"role": "user", "content": "hi"}])


# --- openai-agents ----------------------------------------------------------------------


def test_an_agent_with_a_function_tool(server):
    from agents import Agent, ModelSettings, Runner, function_tool, set_default_openai_api, set_default_openai_client, set_tracing_disabled

    set_tracing_disabled(True)
    set_default_openai_client(openai.AsyncOpenAI(base_url=server.base + "/v1", api_key=API_KEY, max_retries=0), use_for_tracing=False)
    set_default_openai_api("responses")
    seen = []

    @function_tool
    def get_weather(city: str) -> str:
        """Current weather in a city."""
        seen.append(city)
        return f"Sunny, 24 C in {city}."

    # The tool's answer is the agent's answer: the 0.5B model, offered the tool again after
    # its result, calls it again rather than answering.
    agent = Agent(
        name="weather",
        instructions="Answer weather questions with the get_weather tool.",
        tools=[get_weather],
        model=QWEN,
        # (with parallel calls allowed, the 0.5B model repeats the same call until max_tokens)
        model_settings=ModelSettings(temperature=0, max_tokens=120, tool_choice="required", parallel_tool_calls=False),
        tool_use_behavior="stop_on_first_tool",
    )
    result = Runner.run_sync(agent, "What is the weather in Paris?", max_turns=3)
    assert seen == ["Paris"], seen
    assert result.final_output == "Sunny, 24 C in Paris."
    # (an answer cut at max_tokens is an error to the Agents SDK: leave room)
    plain = Agent(name="plain", instructions="Answer in one word.", model=QWEN, model_settings=ModelSettings(temperature=0, max_tokens=200))
    out = Runner.run_sync(plain, "Name a color.", max_turns=1).final_output
    assert isinstance(out, str) and out


def test_metrics_count_both_endpoints(client, claude, server):
    client.responses.create(model=QWEN, input="hi", max_output_tokens=2)
    claude.messages.create(model=QWEN, max_tokens=2, messages=[{"role": "user", "content": "hi"}])
    m = server.metrics()
    assert m['slm_http_requests_total{endpoint="/v1/responses",status="200"}'] >= 1
    assert m['slm_http_requests_total{endpoint="/v1/messages",status="200"}'] >= 1
