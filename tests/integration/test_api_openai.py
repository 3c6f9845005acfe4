"""The official `openai` Python client against cairnd: chat completions (streaming and not),
completions, embeddings and models, n choices, log-probabilities, seeds and penalties, with
the real gemma-3-270m and all-MiniLM-L6-v2."""
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
                      "suffix": dict(suffix="!")}.items():
        try:
            c.completions.create(model="gemma-3-270m", prompt="x", max_tokens=2, **kw)
            raise AssertionError(f"completions {field} was accepted")
        except openai.BadRequestError as e:
            assert e.status_code == 400 and f"{field}:" in str(e), (field, str(e))
    # what changes nothing for the user is accepted
    r = c.chat.completions.create(model="gemma-3-270m", messages=msgs, max_tokens=2,
                                  user="u", response_format={"type": "text"}, temperature=0)
    assert r.choices[0].message.content is not None


def bad_request(fn, field, **kw):
    """fn(**kw) must fail with a 400 whose message names field."""
    try:
        fn(**kw)
    except openai.BadRequestError as e:
        assert e.status_code == 400 and f"{field}:" in str(e), (field, str(e))
        return str(e)
    raise AssertionError(f"{field}: {kw} was accepted")


def test_n_choices():
    c = client()
    msgs = [{"role": "user", "content": "Write a sentence about the sea."}]
    kw = dict(model="gemma-3-270m", messages=msgs, max_tokens=12, temperature=1.0)
    one = c.chat.completions.create(n=1, seed=7, **kw)
    r = c.chat.completions.create(n=3, seed=7, **kw)
    assert [ch.index for ch in r.choices] == [0, 1, 2]
    # choice i samples with seed + i: choice 0 is the n=1 answer, choice 1 the seed-8 one
    assert r.choices[0].message.content == one.choices[0].message.content
    eight = c.chat.completions.create(n=1, seed=8, **kw)
    assert r.choices[1].message.content == eight.choices[0].message.content
    assert len({ch.message.content for ch in r.choices}) >= 2, r.choices
    # the prompt is counted once; the choices' tokens add up
    assert r.usage.prompt_tokens == one.usage.prompt_tokens
    assert r.usage.completion_tokens >= 3
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    # streamed: chunks interleave by index, each choice ends with its finish reason, and the
    # texts are the non-streamed ones (same seed)
    texts, finish, usage = {}, {}, None
    for chunk in c.chat.completions.create(n=3, seed=7, stream=True,
                                           stream_options={"include_usage": True}, **kw):
        for ch in chunk.choices:
            texts[ch.index] = texts.get(ch.index, "") + (ch.delta.content or "")
            if ch.finish_reason:
                finish[ch.index] = ch.finish_reason
        if chunk.usage:
            usage = chunk.usage
    assert [texts[i] for i in range(3)] == [ch.message.content for ch in r.choices]
    assert sorted(finish) == [0, 1, 2]
    assert usage.completion_tokens == r.usage.completion_tokens
    # completions too; greedy choices are all the same
    g = c.completions.create(model="gemma-3-270m", prompt="One, two, three,", max_tokens=4,
                             temperature=0, n=2)
    assert [ch.index for ch in g.choices] == [0, 1]
    assert g.choices[0].text == g.choices[1].text and g.usage.completion_tokens == 8
    # the limit
    bad_request(c.chat.completions.create, "n", n=9, **kw)
    bad_request(c.completions.create, "n", model="gemma-3-270m", prompt="x", max_tokens=2, n=0)


def check_token_logprobs(entries, greedy):
    for e in entries:
        assert e.logprob <= 0
        assert bytes(e.bytes).decode(errors="replace") == e.token
        tops = [t.logprob for t in e.top_logprobs]
        assert len(tops) == 5 and tops == sorted(tops, reverse=True), tops
        assert all(t.logprob <= 0 for t in e.top_logprobs)
        same = [t for t in e.top_logprobs if t.token == e.token]
        if same:  # the chosen token's value is its entry's
            assert same[0].logprob == e.logprob, (e, same)
        if greedy:  # the greedy token is the likeliest
            assert e.top_logprobs[0].token == e.token and tops[0] == e.logprob


def test_chat_logprobs():
    c = client()
    msgs = [{"role": "user", "content": "Count to ten."}]
    kw = dict(model="gemma-3-270m", messages=msgs, max_tokens=8, logprobs=True, top_logprobs=5)
    r = c.chat.completions.create(temperature=0, **kw)
    content = r.choices[0].logprobs.content
    assert 1 <= len(content) <= r.usage.completion_tokens
    assert "".join(e.token for e in content) == r.choices[0].message.content
    check_token_logprobs(content, greedy=True)
    # streamed: each chunk carries its tokens' logprobs; together, the same list
    streamed = []
    for chunk in c.chat.completions.create(temperature=0, stream=True, **kw):
        for ch in chunk.choices:
            if ch.logprobs and ch.logprobs.content:
                streamed.extend(ch.logprobs.content)
    assert [(e.token, e.logprob) for e in streamed] == [(e.token, e.logprob) for e in content]
    # sampled: values of the model's distribution (not of the temperature's), so the sampled
    # token's value is its entry in the list whenever it is there
    s = c.chat.completions.create(temperature=1.5, seed=3, **kw)
    check_token_logprobs(s.choices[0].logprobs.content, greedy=False)
    first = s.choices[0].logprobs.content[0]
    ref = {t.token: t.logprob for t in content[0].top_logprobs}
    if first.token in ref:  # the same first position: the same distribution
        assert abs(ref[first.token] - first.logprob) < 1e-6
    # logprobs without alternatives; none asked: null
    r0 = c.chat.completions.create(model="gemma-3-270m", messages=msgs, max_tokens=3,
                                   temperature=0, logprobs=True)
    assert all(e.top_logprobs == [] for e in r0.choices[0].logprobs.content)
    rn = c.chat.completions.create(model="gemma-3-270m", messages=msgs, max_tokens=3,
                                   temperature=0)
    assert rn.choices[0].logprobs is None
    # validation
    base = dict(model="gemma-3-270m", messages=msgs, max_tokens=2)
    bad_request(c.chat.completions.create, "top_logprobs", logprobs=True, top_logprobs=21,
                **base)
    bad_request(c.chat.completions.create, "top_logprobs", top_logprobs=2, **base)
    bad_request(c.chat.completions.create, "logprobs", extra_body={"logprobs": 3}, **base)


def test_completion_logprobs():
    c = client()
    r = c.completions.create(model="gemma-3-270m", prompt="One, two, three,", max_tokens=6,
                             temperature=0, logprobs=3)
    lp = r.choices[0].logprobs
    assert "".join(lp.tokens) == r.choices[0].text
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset)
    assert lp.text_offset[0] == 0 and lp.text_offset == sorted(lp.text_offset)
    for tok, v, top, off in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, lp.text_offset):
        assert v <= 0 and 1 <= len(top) <= 4
        assert top[tok] == v and max(top.values()) == v  # greedy: the likeliest
        assert r.choices[0].text[off:off + len(tok)] == tok
    # streamed, the same tokens and values
    toks, vals = [], []
    for chunk in c.completions.create(model="gemma-3-270m", prompt="One, two, three,",
                                      max_tokens=6, temperature=0, logprobs=3, stream=True):
        for ch in chunk.choices:
            if ch.logprobs:
                toks += ch.logprobs.tokens
                vals += ch.logprobs.token_logprobs
    assert toks == lp.tokens and vals == lp.token_logprobs
    bad_request(c.completions.create, "logprobs", model="gemma-3-270m", prompt="x",
                max_tokens=2, logprobs=6)
    bad_request(c.completions.create, "top_logprobs", model="gemma-3-270m", prompt="x",
                max_tokens=2, extra_body={"top_logprobs": 2})


def test_max_tokens_absent_is_what_the_context_leaves():
    c = client()
    # The server's cap (32) binds a short prompt; a long one stops at the context (256)
    # first. End-of-generation tokens are banned so that only a limit ends the answer.
    ban = {"1": -100, "106": -100}
    r = c.completions.create(model="gemma-3-270m", prompt="One, two, three,", temperature=0,
                             logit_bias=ban)
    assert r.usage.completion_tokens == 32 and r.choices[0].finish_reason == "length"
    long = c.completions.create(model="gemma-3-270m", prompt="one two " * 120, temperature=0,
                                logit_bias=ban)
    assert long.usage.prompt_tokens > 230, long.usage
    assert long.usage.completion_tokens < 32, long.usage
    assert long.usage.prompt_tokens + long.usage.completion_tokens == 257  # the last is not fed
    assert long.choices[0].finish_reason == "length"
    # Asked for explicitly, max_tokens past what the context leaves is refused, naming the most
    # it could be; that much is served in full.
    room = 257 - long.usage.prompt_tokens
    msg = bad_request(c.completions.create, "max_tokens", model="gemma-3-270m",
                      prompt="one two " * 120, max_tokens=room + 1, temperature=0)
    assert f"at most {room} here" in msg, msg
    full = c.completions.create(model="gemma-3-270m", prompt="one two " * 120, temperature=0,
                                logit_bias=ban, max_tokens=room)
    assert full.usage.completion_tokens == room and full.choices[0].finish_reason == "length"


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
