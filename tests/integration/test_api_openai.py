"""The official `openai` Python client against cairnd: chat completions (streaming and not),
completions, embeddings and models, with the real gemma-3-270m and all-MiniLM-L6-v2."""
import os

import openai

from harness import Daemon, run_tests

MODELS = os.environ.get("CAIRN_TEST_MODELS", "data/models")
KEY = "openai-test-key"
ARGS = [f"--model.path={MODELS}/gemma-3-270m-q4_k_m.gguf",
        f"--embed.model={MODELS}/all-minilm-l6-v2.gguf", f"--auth.api_keys={KEY}",
        "--workers.ctx=256", "--limits.max_tokens=32", "--model.name=gemma-3-270m"]

_d = None


def client(key=KEY):
    global _d
    if _d is None:
        _d = Daemon(*ARGS)
    return openai.OpenAI(base_url=_d.url + "/v1", api_key=key, max_retries=0, timeout=120)


def test_models():
    models = client().models.list()
    assert [m.id for m in models.data] == ["gemma-3-270m"]


def test_chat_completion_and_stream_agree():
    c = client()
    msgs = [{"role": "user", "content": "Name a fruit."}]
    r = c.chat.completions.create(model="gemma-3-270m", messages=msgs, max_tokens=6,
                                  temperature=0)
    assert r.object == "chat.completion"
    text = r.choices[0].message.content
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason in ("stop", "length")
    assert 1 <= r.usage.completion_tokens <= 6
    streamed = []
    finish = None
    for chunk in c.chat.completions.create(model="gemma-3-270m", messages=msgs, max_tokens=6,
                                           temperature=0, stream=True):
        if chunk.choices and chunk.choices[0].delta.content:
            streamed.append(chunk.choices[0].delta.content)
        if chunk.choices and chunk.choices[0].finish_reason:
            finish = chunk.choices[0].finish_reason
    assert "".join(streamed) == text, (streamed, text)
    assert finish == r.choices[0].finish_reason


def test_completion():
    r = client().completions.create(model="gemma-3-270m", prompt="One, two, three,",
                                    max_tokens=4, temperature=0)
    assert r.object == "text_completion"
    assert r.usage.completion_tokens == 4 and r.choices[0].finish_reason == "length"
    assert isinstance(r.choices[0].text, str) and r.choices[0].text


def test_embeddings():
    r = client().embeddings.create(model="all-minilm-l6-v2", input=["hello world", "goodbye"])
    assert len(r.data) == 2 and len(r.data[0].embedding) == 384
    assert r.data[1].index == 1


def test_errors_surface_as_openai_exceptions():
    try:
        client("wrong-key").models.list()
        raise AssertionError("a wrong key was accepted")
    except openai.AuthenticationError as e:
        assert e.status_code == 401
    try:
        client().completions.create(model="gemma-3-270m", prompt="x", max_tokens=33)
        raise AssertionError("max_tokens above the cap was accepted")
    except openai.BadRequestError as e:
        assert "max_tokens" in str(e)


def test_sampling_seed_and_penalties():
    c = client()
    msgs = [{"role": "user", "content": "Write a sentence about the sea."}]

    def chat(**kw):
        return c.chat.completions.create(model="gemma-3-270m", messages=msgs, max_tokens=24,
                                         temperature=1.0, **kw).choices[0].message.content

    # No seed: a fresh one per request, as OpenAI's and llama.cpp's servers do.
    unseeded = {chat() for _ in range(3)}
    assert len(unseeded) >= 2, unseeded
    # One seed: the same text.
    assert chat(seed=1234) == chat(seed=1234)
    # Penalties, min_p and logit_bias are honoured (their effect is unit-tested) and seeded
    # calls with them stay reproducible.
    kw = dict(seed=99, presence_penalty=1.5, frequency_penalty=1.0,
              extra_body={"min_p": 0.05, "repetition_penalty": 1.3},
              logit_bias={"1": -100})
    assert chat(**kw) == chat(**kw)
    r = c.completions.create(model="gemma-3-270m", prompt="One, two, three,", max_tokens=8,
                             temperature=0, frequency_penalty=2.0)
    assert r.usage.completion_tokens >= 1


def test_unsupported_fields_are_refused_by_name():
    c = client()
    msgs = [{"role": "user", "content": "hi"}]
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    cases = {
        "tools": dict(tools=[tool]),
        "tool_choice": dict(tool_choice="auto"),
        "response_format": dict(response_format={"type": "json_object"}),
        "logprobs": dict(logprobs=True),
        "top_logprobs": dict(top_logprobs=2),
        "n": dict(n=2),
        "audio": dict(audio={"voice": "alloy", "format": "wav"}),
        "modalities": dict(modalities=["text", "audio"]),
        "functions": dict(functions=[{"name": "f", "parameters": {"type": "object"}}]),
    }
    for field, kw in cases.items():
        try:
            c.chat.completions.create(model="gemma-3-270m", messages=msgs, max_tokens=2, **kw)
            raise AssertionError(f"{field} was accepted")
        except openai.BadRequestError as e:
            assert e.status_code == 400 and f"{field}:" in str(e), (field, str(e))
    for field, kw in {"echo": dict(echo=True), "best_of": dict(best_of=2),
                      "suffix": dict(suffix="!"), "logprobs": dict(logprobs=2)}.items():
        try:
            c.completions.create(model="gemma-3-270m", prompt="x", max_tokens=2, **kw)
            raise AssertionError(f"completions {field} was accepted")
        except openai.BadRequestError as e:
            assert e.status_code == 400 and f"{field}:" in str(e), (field, str(e))
    # what changes nothing for the user is accepted
    r = c.chat.completions.create(model="gemma-3-270m", messages=msgs, max_tokens=2,
                                  user="u", response_format={"type": "text"}, temperature=0)
    assert r.choices[0].message.content is not None


def test_zz_stop():
    global _d
    if _d is not None:
        assert _d.stop() == 0, _d.output()
        out = _d.output()
        assert "AddressSanitizer" not in out and "LeakSanitizer" not in out, out[-3000:]
        _d.__exit__()
        _d = None


if __name__ == "__main__":
    run_tests(globals())
