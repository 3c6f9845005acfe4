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

import edgeproto
from harness import Daemon, Redis, http, run_tests
from pdfgen import make_pdf

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
    """The documented path template matching a concrete path (its query string dropped); the
    first in document order, so /v1/documents/upload is not taken for /v1/documents/{id}."""
    path = path.split("?", 1)[0]
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
    json_body = op.get("requestBody", {}).get("content", {}).get("application/json")
    if body is not None and json_body:
        req_schema = json_body["schema"]
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
    assert rh.get("X-Request-Id"), f"{method} {path}: no X-Request-Id"
    if not raw and status in (204, 304):
        return status, None
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
                             "--limits.max_tokens=16", "--http.max_body=16K",
                             "--http.max_upload=64K", "--edge.enrollment_token=spec-token",
                             f"--edge.models={os.path.join(ROOT, 'adapt', 'models')}")
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
    # n choices and logprobs, whole and streamed (the last event of n > 1 has no choices)
    for stream in (False, True):
        body = {"messages": msgs, "max_tokens": 3, "n": 2, "logprobs": True,
                "top_logprobs": 2, "stream": stream}
        if stream:
            body["stream_options"] = {"include_usage": True}
        status, out = call("POST", "/v1/chat/completions", body)
        assert status == 200, out
        status, out = call("POST", "/v1/completions", {"prompt": "Hello", "max_tokens": 3,
                                                       "n": 2, "logprobs": 2, "stream": stream})
        assert status == 200, out
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


def upload(name, data, ctype, expect, **query):
    from urllib.parse import urlencode
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": ctype}
    status, doc = call("POST", "/v1/documents/upload?" + urlencode({"filename": name, **query}),
                       headers=headers, raw_body=data)
    assert status == expect, (status, doc)
    return doc


def test_document_list_and_uploads():
    status, doc = call("GET", "/v1/documents?limit=2")
    assert status == 200 and len(doc["data"]) == 2 and doc["has_more"], doc
    status, page2 = call("GET", f"/v1/documents?limit=2&after={doc['next_after']}")
    assert status == 200 and page2["data"][0]["id"] > doc["data"][1]["id"]
    pdf = make_pdf(["Granite cliffs ring the northern fjord."], title="Fjords")
    got = upload("fjords.pdf", pdf, "application/pdf", 200, metadata='{"topic": "geology"}')
    assert got["kind"] == "pdf" and got["title"] == "Fjords" and got["passages"] == 1
    status, doc = call("GET", "/v1/documents?metadata.topic=geology&full=1")
    assert status == 200 and [d["id"] for d in doc["data"]] == [got["data"][0]["id"]]
    assert "Granite cliffs" in doc["data"][0]["text"]
    status, doc = call("GET", "/v1/documents?q=GRANITE+CLIFFS")
    assert status == 200 and len(doc["data"]) == 1
    upload("page.html", b"<html><body><p>Tides at Ostrand.</p></body></html>", "text/html", 200)
    upload("notes.md", b"# Notes\n\nBasalt columns.", "application/octet-stream", 200)
    # Refused, each with its reason: truncated, binary, unknown kind, mismatch, too large.
    upload("cut.pdf", pdf[: len(pdf) // 2], "application/pdf", 400)
    upload("bin.txt", b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR", "text/plain", 415)
    upload("a.zip", b"PK\x03\x04", "application/zip", 415)
    upload("a.pdf", b"hello", "text/html", 400)
    upload("big.txt", b"x " * 40000, "text/plain", 413)
    assert call("GET", "/v1/documents?limit=0")[0] == 400
    assert call("GET", "/v1/documents?nope=1")[0] == 400
    assert call("GET", "/v1/documents", headers={})[0] == 401
    assert call("POST", "/v1/documents/upload?filename=a.txt", headers={},
                raw_body=b"hi")[0] == 401


def test_edge_fleet():
    url = daemon().url
    dev, key = edgeproto.enroll(url, "spec-token", "spec-device")
    edgeproto.upload(url, dev, key, 4)
    status, doc = call("GET", "/v1/edge/fleet")
    assert status == 200 and doc["devices"][0]["id"] == dev and doc["devices"][0]["samples"] == 4
    assert doc["uploads"][0]["samples"] == 4
    assert call("GET", "/v1/edge/fleet", headers={"Authorization": f"Bearer {key}"})[0] == 401


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
