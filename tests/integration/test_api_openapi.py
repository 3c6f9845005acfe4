"""Holds cairnd to proto/openapi.yaml: every response of every documented endpoint (successes,
errors, SSE chunks) is validated against the schema the document gives for its path, method,
status and content type; every request sent is validated against the request schema; and
every documented operation must have been exercised."""
import json
import os
import re
import tempfile

import jsonschema
import yaml

from harness import Daemon, Redis, http, run_tests

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
SPEC = yaml.safe_load(open(os.path.join(ROOT, "proto", "openapi.yaml")))
MODELS = os.environ.get("CAIRN_TEST_MODELS", "data/models")
KEY = "spec-key"
AUTH = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}

exercised = set()
_state = {}


def validator(schema):
    # Resolve "#/components/..." against the whole document.
    return jsonschema.Draft202012Validator({**schema, "components": SPEC["components"]})


def spec_path(path):
    """The documented path template matching a concrete path."""
    for templ in SPEC["paths"]:
        rx = "^" + re.sub(r"\{[^}]+\}", "[^/]+", templ) + "$"
        if re.match(rx, path):
            return templ
    raise AssertionError(f"{path} is not documented")


def response_schema(templ, method, status, ctype):
    op = SPEC["paths"][templ][method.lower()]
    resp = op["responses"].get(str(status))
    assert resp is not None, f"{method} {templ}: status {status} is not documented"
    if "$ref" in resp:
        resp = SPEC["components"]["responses"][resp["$ref"].rsplit("/", 1)[1]]
    content = resp["content"]
    key = next((k for k in content if ctype.startswith(k)), None)
    assert key, f"{method} {templ} {status}: content type {ctype} is not documented"
    return content[key]["schema"]


def call(method, path, body=None, headers=AUTH, raw_body=None, invalid=False):
    """Sends the request, validates request and response against the spec, returns the
    response (status, decoded JSON or list of SSE payloads). invalid: the body is meant to be
    wrong, and the spec must say so too."""
    d = daemon()
    templ = spec_path(path)
    op = SPEC["paths"][templ][method.lower()]
    if body is not None and "requestBody" in op:
        req_schema = op["requestBody"]["content"]["application/json"]["schema"]
        ok = validator(req_schema).is_valid(body)
        assert ok != invalid, f"{method} {templ}: the spec {'accepts' if ok else 'rejects'} {body}"
    data = raw_body if raw_body is not None else (json.dumps(body) if body is not None else None)
    status, rh, raw = http(method, d.url + path, data, headers=headers, timeout=300)
    ctype = rh.get("Content-Type", "")
    schema = response_schema(templ, method, status, ctype)
    exercised.add((method.upper(), templ))
    if ctype.startswith("text/event-stream"):
        events = [b[len("data: "):] for b in raw.decode().split("\n\n") if b.strip()]
        assert events[-1] == "[DONE]"
        v = validator(schema)
        for e in events[:-1]:
            v.validate(json.loads(e))
        return status, events
    if ctype.startswith("text/plain"):
        return status, raw.decode()
    doc = json.loads(raw)
    validator(schema).validate(doc)
    return status, doc


def daemon():
    if "d" not in _state:
        tmp = tempfile.TemporaryDirectory(prefix="cairn-spec-")
        corpus = os.path.join(tmp.name, "c.jsonl")
        with open(corpus, "w") as f:
            for i, t in enumerate(["Cairns are piles of stones marking trails.",
                                   "Basalt is a volcanic rock.", "Otters eat fish and crabs."]):
                f.write(json.dumps({"id": i, "text": t}) + "\n")
        _state["tmp"] = tmp
        _state["redis"] = Redis()
        _state["d"] = Daemon(f"--redis.url={_state['redis'].url}", "--jobs.runners=0",f"--model.path={MODELS}/gemma-3-270m-q4_k_m.gguf",
                             f"--embed.model={MODELS}/all-minilm-l6-v2.gguf",
                             f"--auth.api_keys={KEY}", f"--rag.corpus={corpus}",
                             f"--rag.dir={tmp.name}/index", "--workers.ctx=384",
                             "--limits.max_tokens=16", "--http.max_body=16K")
    return _state["d"]


def test_open_endpoints():
    status, doc = call("GET", "/health", headers={})
    assert status == 200 and doc["status"] == "ok"
    status, text = call("GET", "/metrics", headers={})
    assert status == 200 and "cairn_http_requests_total" in text


def test_models_and_auth_errors():
    assert call("GET", "/v1/models")[0] == 200
    assert call("GET", "/v1/models", headers={})[0] == 401


def test_generation_endpoints():
    msgs = [{"role": "user", "content": "Hi"}]
    assert call("POST", "/v1/chat/completions", {"messages": msgs, "max_tokens": 3})[0] == 200
    status, events = call("POST", "/v1/chat/completions",
                          {"messages": msgs, "max_tokens": 3, "stream": True,
                           "stream_options": {"include_usage": True}})
    assert status == 200 and len(events) >= 2
    assert call("POST", "/v1/completions", {"prompt": "Hello", "max_tokens": 3})[0] == 200
    assert call("POST", "/v1/completions", {"prompt": "Hello", "max_tokens": 3,
                                            "stream": True})[0] == 200
    # Errors: bad field, unknown model, oversized body, missing key.
    assert call("POST", "/v1/completions", {"prompt": "x", "max_tokens": -17},
                invalid=True)[0] == 400
    assert call("POST", "/v1/completions", {"prompt": "x", "model": "other"})[0] == 404
    assert call("POST", "/v1/completions", raw_body="{" + " " * 20000 + "}")[0] == 413
    assert call("POST", "/v1/chat/completions", {"messages": msgs}, headers={})[0] == 401


def test_embeddings():
    assert call("POST", "/v1/embeddings", {"input": ["a", "b"]})[0] == 200
    assert call("POST", "/v1/embeddings", {"input": "a", "encoding_format": "base64"})[0] == 200
    assert call("POST", "/v1/embeddings", raw_body='{"input": 5}')[0] == 400


def test_retrieval_rag_and_documents():
    status, doc = call("POST", "/v1/retrieve", {"query": "volcanic rock", "k": 2})
    assert status == 200 and len(doc["data"]) == 2
    status, doc = call("POST", "/v1/rag", {"question": "What marks trails?", "k": 1,
                                           "max_tokens": 3})
    assert status == 200 and len(doc["sources"]) == 1
    status, events = call("POST", "/v1/rag", {"question": "What do otters eat?", "k": 1,
                                              "max_tokens": 3, "stream": True, "mode": "rewrite"})
    assert status == 200 and "sources" in json.loads(events[-2])
    status, doc = call("POST", "/v1/chat/completions",
                       {"messages": [{"role": "user", "content": "Basalt?"}], "max_tokens": 3,
                        "rag": {"k": 2, "mode": "none"}})
    assert status == 200 and len(doc["sources"]) == 2
    status, doc = call("POST", "/v1/documents",
                       {"documents": [{"text": "Granite is an intrusive rock.",
                                       "metadata": {"kind": "rock"}}]})
    assert status == 200
    new_id = doc["data"][0]["id"]
    assert call("DELETE", f"/v1/documents/{new_id}")[0] == 200
    assert call("DELETE", f"/v1/documents/{new_id}")[0] == 404
    assert call("DELETE", "/v1/documents/x1")[0] == 400
    assert call("POST", "/v1/retrieve", {"query": "q", "k": 0}, invalid=True)[0] == 400
    assert call("POST", "/v1/rag", {"question": "q", "mode": "x"}, invalid=True)[0] == 400
    assert call("POST", "/v1/documents", {"documents": []}, invalid=True)[0] == 400


def test_jobs():
    # Runners are off (--jobs.runners=0): the job stays queued, which is what is checked here;
    # tests/integration/test_jobs.py runs jobs.
    status, doc = call("POST", "/v1/jobs", {"type": "summarize", "payload": "A short text."})
    assert status == 202 and doc["status"] == "queued", doc
    status, got = call("GET", "/v1/jobs/" + doc["id"])
    assert status == 200 and got["status"] == "queued" and got["type"] == "summarize", got
    assert call("POST", "/v1/jobs", {"type": "dance", "payload": "x"}, invalid=True)[0] == 400
    assert call("POST", "/v1/jobs", {"type": "summarize"}, invalid=True)[0] == 400
    assert call("POST", "/v1/jobs", {"type": "summarize", "payload": "x"}, headers={})[0] == 401
    assert call("POST", "/v1/jobs", {"type": "summarize", "payload": "x" * 20000})[0] == 413
    assert call("GET", "/v1/jobs/" + "f" * 32)[0] == 404
    assert call("GET", "/v1/jobs/bad!id")[0] == 400


def test_zz_every_operation_exercised_and_clean_stop():
    documented = {(m.upper(), p) for p, ops in SPEC["paths"].items() for m in ops
                  if m in ("get", "post", "delete", "put")}
    missing = documented - exercised
    assert not missing, f"documented but not exercised: {sorted(missing)}"
    d = _state.pop("d")
    assert d.stop() == 0, d.output()
    assert "AddressSanitizer" not in d.output()
    d.__exit__()
    _state.pop("tmp").cleanup()
    _state.pop("redis").close()


if __name__ == "__main__":
    run_tests(globals())
