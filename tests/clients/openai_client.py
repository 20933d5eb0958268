"""Drives wick's OpenAI-compatible API with the official `openai` Python SDK and prints what it
saw as JSON lines that tests/openai.rs checks (`KIND {json}`).

usage: openai_client.py BASE_URL MODE [API_KEY]
  MODE  main    models, chat and completions (whole and streamed), stop, max_tokens, refusals
        abort   a long streamed chat abandoned after 3 chunks, then a short request
        ids     every listed model id retrieved and used (the server runs --model-path)
        auth    a wrong key, a foreign Origin and a body too large (refused), then API_KEY
                (served)
        three   three completions, one streamed, printing their usage
        metrics /metrics parsed with prometheus_client's own parser
        logprobs  log-probabilities on both endpoints, whole and streamed, and their refusals
        json    structured output: `parse` with a Pydantic model, schemas sampled at temperature
                1 (N per schema, default 40) checked with `jsonschema`, a bad schema, a mixed batch
        tools   tool calls: whole and streamed for each tool_choice, required calls sampled at
                temperature 1 and checked with `jsonschema`, a call and its result sent back,
                refusals
"""

import concurrent.futures
import json
import os
import sys
import urllib.request

import jsonschema
import pydantic

import openai
from prometheus_client.parser import text_string_to_metric_families

BASE, MODE = sys.argv[1], sys.argv[2]
KEY = sys.argv[3] if len(sys.argv) > 3 else "unused"
CHAT = [{"role": "user", "content": "What is the capital of France?"}]
# The SDK requires a model; wick takes a registry name, a tier (`small`) or `tier/backend`.
MODEL = "smollm2-135m-instruct-q4_1"


def emit(kind, value):
    print(kind, json.dumps(value), flush=True)


def client(key=KEY):
    return openai.OpenAI(base_url=f"{BASE}/v1", api_key=key, max_retries=0, timeout=300)


def streamed_chat(api, **args):
    chunks = list(api.chat.completions.create(model=MODEL, messages=CHAT, stream=True, **args))
    return {
        "roles": [c.choices[0].delta.role for c in chunks if c.choices],
        "deltas": [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content],
        "finish": [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason],
        "usage": [c.usage.model_dump() for c in chunks if c.usage],
        "usage_chunk_choices": [len(c.choices) for c in chunks if c.usage],
        "ids": sorted({c.id for c in chunks}),
        "objects": sorted({c.object for c in chunks}),
    }


def refusal(call):
    try:
        call()
    except openai.APIStatusError as e:
        return {"status": e.status_code, "param": e.param, "type": e.type, "message": e.message}
    return {"status": 200}


def main():
    api = client()
    emit("MODELS", [m.id for m in api.models.list()])

    whole = api.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=24, temperature=0)
    emit("CHAT", whole.model_dump())
    emit("CHAT_STREAM", streamed_chat(
        api, max_tokens=24, temperature=0, stream_options={"include_usage": True}))
    emit("CHAT_STREAM_NO_USAGE", streamed_chat(api, max_tokens=24, temperature=0))

    prompt = "The capital of France is"
    text = api.completions.create(model="small", prompt=prompt, max_tokens=24, temperature=0)
    emit("COMPLETION", text.model_dump())
    pieces = [c.choices[0].text for c in api.completions.create(
        model="small", prompt=prompt, max_tokens=24, temperature=0, stream=True) if c.choices]
    emit("COMPLETION_STREAM", pieces)

    # A stop text taken from the middle of the greedy text ends the same text right before it.
    greedy = text.choices[0].text
    stop = greedy[len(greedy) // 2:len(greedy) // 2 + 3]
    stopped = api.completions.create(model=MODEL, prompt=prompt, max_tokens=24, temperature=0, stop=[stop, "\u2603"])
    emit("STOP", {"stop": stop, "greedy": greedy, "text": stopped.choices[0].text,
                  "finish": stopped.choices[0].finish_reason})
    length = api.completions.create(model=MODEL, prompt=prompt, max_tokens=5, temperature=0,
                                    extra_body={"ignore_eos": True, "top_k": 40, "repeat_penalty": 1.0})
    emit("LENGTH", {"finish": length.choices[0].finish_reason, "usage": length.usage.model_dump()})

    emit("REFUSED_N", refusal(lambda: api.chat.completions.create(model=MODEL, messages=CHAT, n=2)))
    emit("REFUSED_ECHO", refusal(lambda: api.chat.completions.create(
        model=MODEL, messages=CHAT, extra_body={"echo": True})))
    emit("REFUSED_UNKNOWN", refusal(lambda: api.chat.completions.create(
        model=MODEL, messages=CHAT, extra_body={"mirostat": 2})))
    emit("REFUSED_TYPE", refusal(lambda: api.completions.create(model=MODEL, prompt=prompt, max_tokens=-1)))
    emit("REFUSED_CONTEXT", refusal(lambda: api.completions.create(model=MODEL, prompt=prompt, max_tokens=100000)))
    emit("REFUSED_MODEL", refusal(lambda: api.completions.create(model="no-such-model", prompt=prompt)))
    emit("REFUSED_TEMPERATURE", refusal(lambda: api.completions.create(model=MODEL, prompt=prompt, temperature=2.5)))
    emit("REFUSED_STREAM_OPTIONS", refusal(lambda: api.completions.create(
        model=MODEL, prompt=prompt, stream_options={"include_usage": True})))
    emit("REFUSED_PROMPT", refusal(lambda: api.post("/completions", body={"model": MODEL}, cast_to=object)))


def ids():
    """Every id /v1/models lists is retrievable, and so are the names `model` accepts."""
    api = client()
    listed = [m.id for m in api.models.list()]
    emit("LISTED", listed)
    for name in listed + ["small", "small/gguf"]:
        emit("RETRIEVED", {"asked": name, "id": api.models.retrieve(name).id})
    emit("RETRIEVE_UNKNOWN", refusal(lambda: api.models.retrieve("no-such-model")))
    loaded = [name for name in listed if name.endswith(".gguf")]
    done = api.completions.create(model=loaded[0], prompt="The capital of France is", max_tokens=2, temperature=0)
    emit("BY_LISTED_ID", {"model": done.model, "finish": done.choices[0].finish_reason})


def abort():
    api = client()
    stream = api.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Count from 1 to 1000, one number per line."}],
        max_tokens=2000, temperature=0, stream=True)
    seen = 0
    for chunk in stream:
        seen += 1
        if seen == 3:
            break
    stream.close()
    emit("ABORTED", seen)
    after = api.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=8, temperature=0)
    emit("AFTER", {"finish": after.choices[0].finish_reason, "usage": after.usage.model_dump()})


def auth():
    emit("WRONG_KEY", refusal(lambda: client("wrong").models.list()))
    emit("FOREIGN_ORIGIN", refusal(lambda: client().with_options(
        default_headers={"Origin": "http://elsewhere.example"}).models.list()))
    emit("TOO_LARGE", refusal(lambda: client().completions.create(
        model=MODEL, prompt="many words " * 20000, max_tokens=1)))
    served = client().completions.create(model=MODEL, prompt="The capital of France is", max_tokens=4, temperature=0)
    emit("RIGHT_KEY", {"finish": served.choices[0].finish_reason})


def three():
    api = client()
    for n in (5, 7):
        done = api.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=n, temperature=0)
        emit("USAGE", done.usage.model_dump())
    for chunk in api.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=9, temperature=0, stream=True,
                                             stream_options={"include_usage": True}):
        if chunk.usage:
            emit("USAGE", chunk.usage.model_dump())


def logprobs():
    api = client()
    greedy = dict(model=MODEL, max_tokens=12, temperature=0)
    whole = api.chat.completions.create(messages=CHAT, logprobs=True, top_logprobs=5, **greedy)
    emit("CHAT", {"text": whole.choices[0].message.content,
                  "content": [t.model_dump() for t in whole.choices[0].logprobs.content]})
    streamed = []
    for chunk in api.chat.completions.create(messages=CHAT, logprobs=True, top_logprobs=5, stream=True, **greedy):
        if chunk.choices and chunk.choices[0].logprobs and chunk.choices[0].logprobs.content:
            streamed += [t.model_dump() for t in chunk.choices[0].logprobs.content]
    emit("CHAT_STREAM", streamed)
    sampled = api.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=12, temperature=1, seed=7,
                                          logprobs=True, top_logprobs=3)
    emit("SAMPLED", [t.model_dump() for t in sampled.choices[0].logprobs.content])
    plain = api.chat.completions.create(messages=CHAT, **greedy)
    emit("PLAIN", {"logprobs": plain.choices[0].logprobs})

    prompt = "The capital of France is"
    text = api.completions.create(prompt=prompt, logprobs=3, **greedy)
    emit("COMPLETION", {"text": text.choices[0].text, "logprobs": text.choices[0].logprobs.model_dump()})
    tokens = []
    for chunk in api.completions.create(prompt=prompt, logprobs=3, stream=True, **greedy):
        if chunk.choices and chunk.choices[0].logprobs:
            tokens += chunk.choices[0].logprobs.tokens
    emit("COMPLETION_STREAM", tokens)

    # The prompt scored alone (max_tokens 0), and the prompt with its greedy continuation, whose
    # tokens the echo scores as the generation did.
    echo = api.completions.create(model=MODEL, prompt=prompt, echo=True, logprobs=2, max_tokens=0)
    emit("ECHO", {"text": echo.choices[0].text, "logprobs": echo.choices[0].logprobs.model_dump(),
                  "usage": echo.usage.model_dump()})
    both = api.completions.create(model=MODEL, prompt=prompt + text.choices[0].text, echo=True, logprobs=3,
                                  max_tokens=0)
    emit("ECHO_CONTINUED", {"text": both.choices[0].text, "logprobs": both.choices[0].logprobs.model_dump()})
    emit("REFUSED_ECHO_STREAM", refusal(lambda: list(api.completions.create(
        model=MODEL, prompt=prompt, echo=True, stream=True))))
    emit("REFUSED_TOP", refusal(lambda: api.chat.completions.create(
        model=MODEL, messages=CHAT, logprobs=True, top_logprobs=21)))
    emit("REFUSED_TOP_ALONE", refusal(lambda: api.chat.completions.create(
        model=MODEL, messages=CHAT, top_logprobs=2)))
    emit("REFUSED_COMPLETION", refusal(lambda: api.completions.create(model=MODEL, prompt=prompt, logprobs=30)))


class City(pydantic.BaseModel):
    name: str
    country: str
    population: int


# Nested objects, arrays, enums, bounded numbers, required and optional fields; strings, arrays
# and a number's decimals (`multipleOf`) bounded so that a sampled text always ends within
# max_tokens: a plain `number` may take digits until max_tokens runs out at temperature 1.
SCHEMAS = {
    "nested": {"type": "object", "properties": {
        "person": {"type": "object", "properties": {
            "name": {"type": "string", "maxLength": 12},
            "address": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12}},
                        "required": ["city"], "additionalProperties": False}},
            "required": ["name", "address"], "additionalProperties": False}},
        "required": ["person"], "additionalProperties": False},
    "array": {"type": "object", "properties": {
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 8}, "minItems": 1, "maxItems": 3}},
        "required": ["tags"], "additionalProperties": False},
    "enum": {"type": "object", "properties": {
        "color": {"enum": ["red", "green", "blue"]},
        "size": {"type": "string", "enum": ["S", "M", "L"]}},
        "required": ["color", "size"], "additionalProperties": False},
    "bounds": {"type": "object", "properties": {
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "score": {"type": "number", "minimum": -1, "maximum": 1, "multipleOf": 0.01}},
        "required": ["age", "score"], "additionalProperties": False},
    "optional": {"type": "object", "properties": {
        "id": {"type": "integer", "minimum": 1, "maximum": 999},
        "note": {"type": "string", "maxLength": 10},
        "done": {"type": "boolean"}},
        "required": ["id"], "additionalProperties": False},
}


def structured():
    api = client()
    ask = [{"role": "user", "content": "Describe Paris as JSON: name, country, population."}]
    parsed = api.chat.completions.parse(model=MODEL, messages=ask, response_format=City, max_tokens=100,
                                        temperature=0)
    message = parsed.choices[0].message
    emit("PARSED", {"parsed": message.parsed.model_dump(), "content": message.content})

    per_schema = int(os.environ.get("WICK_JSON_SAMPLES", "40"))

    def sample(name, i):
        reply = api.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": f"Write a JSON example ({name}, {i})."}],
            max_tokens=160, temperature=1, seed=i,
            response_format={"type": "json_schema", "json_schema": {"name": name, "schema": SCHEMAS[name]}})
        text = reply.choices[0].message.content
        try:
            jsonschema.validate(json.loads(text), SCHEMAS[name])
            return None
        except (ValueError, jsonschema.ValidationError) as e:
            return {"schema": name, "text": text, "finish": reply.choices[0].finish_reason, "error": str(e)[:200]}

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(sample, name, i) for name in SCHEMAS for i in range(per_schema)]
        invalid = [f.result() for f in futures if f.result() is not None]
    emit("SAMPLED", {"generations": len(futures), "invalid": invalid})

    any_object = api.completions.create(model=MODEL, prompt="A JSON object describing a cat:", max_tokens=80,
                                        temperature=0, extra_body={"response_format": {"type": "json_object"}})
    emit("JSON_OBJECT", {"text": any_object.choices[0].text, "finish": any_object.choices[0].finish_reason})
    emit("REFUSED_SCHEMA", refusal(lambda: api.chat.completions.create(
        model=MODEL, messages=CHAT, response_format={"type": "json_schema", "json_schema": {
            "name": "bad", "schema": {"type": "object", "properties": {"a": {"$ref": "#/nowhere"}}}}})))
    emit("REFUSED_FORMAT", refusal(lambda: api.chat.completions.create(
        model=MODEL, messages=CHAT, response_format={"type": "yaml"})))

    # A constrained and a free request alone, then at once: the same texts.
    constrained = dict(model=MODEL, messages=ask, max_tokens=60, temperature=0,
                       response_format={"type": "json_schema", "json_schema": {"name": "e", "schema": SCHEMAS["enum"]}})
    free = dict(model=MODEL, messages=CHAT, max_tokens=60, temperature=0)
    alone = [api.chat.completions.create(**args).choices[0].message.content for args in (constrained, free)]
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        together = [f.result().choices[0].message.content
                    for f in [pool.submit(api.chat.completions.create, **args) for args in (constrained, free)]]
    emit("MIXED", {"alone": alone, "together": together})


TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "The current weather in a city",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string", "maxLength": 40},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city"], "additionalProperties": False}}},
    {"type": "function", "function": {
        "name": "get_time", "description": "The time now in a time zone",
        "parameters": {"type": "object", "properties": {"zone": {"type": "string", "maxLength": 40}},
                       "required": ["zone"], "additionalProperties": False}}},
]
SCHEMA_OF = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}


def assembled(chunks):
    """A streamed reply put together as the SDK's users do: text, calls by index, finish."""
    text, calls, finish = "", {}, None
    for chunk in chunks:
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        text += choice.delta.content or ""
        for part in choice.delta.tool_calls or []:
            call = calls.setdefault(part.index, {"id": None, "name": "", "arguments": ""})
            call["id"] = call["id"] or part.id
            call["name"] += part.function.name or ""
            call["arguments"] += part.function.arguments or ""
        finish = choice.finish_reason or finish
    return {"text": text or None, "finish": finish,
            "calls": [[c["name"], c["arguments"]] for _, c in sorted(calls.items())],
            "ids": [c["id"] for _, c in sorted(calls.items())]}


def tools():
    api = client()
    ask = [{"role": "user", "content": "What is the weather in Paris?"}]
    choices = {"required": "required", "named": {"type": "function", "function": {"name": "get_time"}},
               "auto": "auto", "none": "none"}
    for label, choice in choices.items():
        args = dict(model=MODEL, messages=ask, tools=TOOLS, tool_choice=choice, temperature=0, max_tokens=60)
        whole = api.chat.completions.create(**args).choices[0]
        calls = whole.message.tool_calls or []
        streamed = assembled(api.chat.completions.create(stream=True, **args))
        emit("TOOLS", {"choice": label,
                       "whole": {"text": whole.message.content, "finish": whole.finish_reason,
                                 "calls": [[c.function.name, c.function.arguments] for c in calls]},
                       "ids": [c.id for c in calls], "streamed_ids": streamed.pop("ids"),
                       "streamed": streamed})

    per_tool = int(os.environ.get("WICK_TOOL_SAMPLES", "20"))

    def sample(i):
        reply = api.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": f"Help me plan day {i} of a trip."}],
            tools=TOOLS, tool_choice="required", temperature=1, seed=i, max_tokens=120).choices[0]
        calls = reply.message.tool_calls or []
        try:
            assert reply.finish_reason == "tool_calls", reply.finish_reason
            assert calls, "no call"
            for call in calls:
                jsonschema.validate(json.loads(call.function.arguments), SCHEMA_OF[call.function.name])
            return None
        except (AssertionError, KeyError, ValueError, jsonschema.ValidationError) as e:
            return {"reply": reply.model_dump(), "error": str(e)[:200]}

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(sample, range(per_tool)))
    emit("REQUIRED_SAMPLED", {"generations": len(results), "invalid": [r for r in results if r]})

    # The call and its result go back into the history, rendered through the template.
    first = api.chat.completions.create(model=MODEL, messages=ask, tools=TOOLS, tool_choice="required",
                                        temperature=0, max_tokens=60).choices[0].message
    history = ask + [first.model_dump(exclude_none=True)] + [
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"celsius": 21})}
        for call in first.tool_calls]
    after = api.chat.completions.create(model=MODEL, messages=history, tools=TOOLS, temperature=0,
                                        max_tokens=30)
    usage = api.chat.completions.create(model=MODEL, messages=ask, tools=TOOLS, temperature=0,
                                        max_tokens=1).usage
    emit("HISTORY", {"finish": after.choices[0].finish_reason, "prompt_tokens": after.usage.prompt_tokens,
                     "ask_prompt_tokens": usage.prompt_tokens})

    emit("REFUSED_UNKNOWN_FUNCTION", refusal(lambda: api.chat.completions.create(
        model=MODEL, messages=ask, tools=TOOLS, tool_choice={"type": "function", "function": {"name": "fly"}})))
    emit("REFUSED_NO_TOOLS", refusal(lambda: api.chat.completions.create(
        model=MODEL, messages=ask, tool_choice="required")))
    emit("REFUSED_TOOL_TYPE", refusal(lambda: api.chat.completions.create(
        model=MODEL, messages=ask, tools=[{"type": "retrieval"}])))
    emit("REFUSED_WITH_FORMAT", refusal(lambda: api.chat.completions.create(
        model=MODEL, messages=ask, tools=TOOLS, tool_choice="required",
        response_format={"type": "json_object"})))
    emit("REFUSED_ON_COMPLETIONS", refusal(lambda: api.completions.create(
        model=MODEL, prompt="x", extra_body={"tools": TOOLS})))


def metrics():
    request = urllib.request.Request(f"{BASE}/metrics")
    if KEY != "unused":
        request.add_header("Authorization", f"Bearer {KEY}")
    with urllib.request.urlopen(request) as response:
        content_type = response.headers["Content-Type"]
        text = response.read().decode()
    samples = []
    families = {}
    for family in text_string_to_metric_families(text):
        families[family.name] = family.type
        for sample in family.samples:
            samples.append({"name": sample.name, "labels": sample.labels, "value": sample.value})
    emit("METRICS", {"content_type": content_type, "families": families, "samples": samples})


{"main": main, "ids": ids, "abort": abort, "auth": auth, "three": three, "metrics": metrics,
 "logprobs": logprobs, "json": structured, "tools": tools}[MODE]()
