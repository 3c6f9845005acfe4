"""Uploads through POST /v1/documents/upload on a real cairnd with the real embedder: .txt, .md,
.html and .pdf files indexed at once and found by a search; and malformed uploads — a truncated
PDF, a binary file named .txt, a PDF named .html, a 100 MB body over the limit (announced, and
sent chunked without a length) — each refused with a clear 4xx that leaves the index exactly as
it was."""
import http.client
import json
import os
import tempfile
from urllib.parse import urlencode

from harness import Daemon, http as request, run_tests
from pdfgen import make_pdf

MODELS = os.environ.get("CAIRN_TEST_MODELS", "data/models")
KEY = "upload-key"
_state = {}


def daemon():
    if "d" not in _state:
        tmp = tempfile.TemporaryDirectory(prefix="cairn-up-")
        corpus = os.path.join(tmp.name, "c.jsonl")
        with open(corpus, "w") as f:
            for i, t in enumerate(["Basalt is a volcanic rock.", "Otters eat fish and crabs.",
                                   "Cairns mark trails above the tree line."]):
                f.write(json.dumps({"id": i, "text": t}) + "\n")
        _state["tmp"] = tmp
        _state["d"] = Daemon(f"--embed.model={MODELS}/all-minilm-l6-v2.gguf",
                             f"--auth.api_keys={KEY}", f"--rag.corpus={corpus}",
                             f"--rag.dir={tmp.name}/index")
    return _state["d"]


def upload(name, data, ctype="application/octet-stream", **query):
    q = urlencode({"filename": name, **query})
    status, _, body = request("POST", f"{daemon().url}/v1/documents/upload?{q}", data,
                              headers={"Authorization": f"Bearer {KEY}", "Content-Type": ctype},
                              timeout=120)
    return status, json.loads(body)


def get(path):
    status, _, body = request("GET", daemon().url + path,
                              headers={"Authorization": f"Bearer {KEY}"})
    assert status == 200, (status, body)
    return json.loads(body)


def search(query, k=3):
    status, _, body = request("POST", daemon().url + "/v1/retrieve",
                              json.dumps({"query": query, "k": k}),
                              headers={"Authorization": f"Bearer {KEY}"})
    assert status == 200, body
    return json.loads(body)["data"]


def index_state():
    """Everything a failed upload must not change: the passages and the metrics' count."""
    docs = get("/v1/documents?limit=500&full=1")
    _, _, metrics = request("GET", daemon().url + "/metrics")
    count = [l for l in metrics.decode().splitlines() if l.startswith("cairn_rag_documents ")]
    return docs["total_documents"], [(d["id"], d["text"]) for d in docs["data"]], count


PDF_SENTENCE = "The Zephyrine lighthouse keeper logs every passing whale in a green ledger."
HTML_SENTENCE = "Quartz sundials at Marrowby Abbey measure the hours by moonlight."


def test_each_kind_is_indexed_and_found():
    before = get("/v1/documents")["total_documents"]
    status, r = upload("keeper.pdf", make_pdf([PDF_SENTENCE], title="Keeper's log"),
                       "application/pdf", metadata='{"shelf": "b2"}')
    assert status == 200 and r["kind"] == "pdf" and r["title"] == "Keeper's log", r
    page = (f"<html><head><title>Abbey</title><script>var hidden = 'no';</script></head>"
            f"<body><h1>Marrowby</h1><p>{HTML_SENTENCE}</p></body></html>").encode()
    status, r = upload("abbey.html", page, "text/html")
    assert status == 200 and r["kind"] == "html" and r["title"] == "Abbey", r
    status, r = upload("notes.md", b"# Notes\n\nGlacial erratics are boulders moved by ice.")
    assert status == 200 and r["kind"] == "markdown"
    status, r = upload("plain.txt", "Fjords are drowned glacial valleys — étés.".encode(),
                       "text/plain; charset=utf-8")
    assert status == 200 and r["kind"] == "text"
    assert get("/v1/documents")["total_documents"] == before + 4
    hit = search("Who records whales passing the lighthouse?")[0]
    assert PDF_SENTENCE in hit["text"] and hit["metadata"]["source"] == "keeper.pdf", hit
    assert hit["metadata"]["shelf"] == "b2" and hit["metadata"]["kind"] == "pdf"
    hit = search("sundials that tell time by the moon")[0]
    assert HTML_SENTENCE in hit["text"] and "hidden" not in hit["text"], hit
    listed = get("/v1/documents?metadata.source=abbey.html&full=1")["data"]
    assert len(listed) == 1 and listed[0]["title"] == "Abbey"


def test_malformed_uploads_leave_the_index_unchanged():
    before = index_state()
    pdf = make_pdf(["A sentence that must never be indexed: ocelot marmalade."])
    cases = [
        ("cut.pdf", pdf[: len(pdf) * 2 // 3], "application/pdf", 400, "truncated"),
        ("image.txt", b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR" + bytes(range(256)) * 8, "text/plain",
         415, "binary"),
        ("latin1.txt", "ocelot marmalade caf\xe9".encode("latin-1"), "text/plain", 400, "UTF-8"),
        ("fake.html", pdf, "text/html", 400, "is a PDF"),
        ("fake.pdf", b"ocelot marmalade, not a PDF", "application/pdf", 400, "%PDF-"),
        ("empty.txt", b"", "text/plain", 400, "empty"),
        ("archive.zip", b"PK\x03\x04", "application/zip", 415, "not supported"),
        ("scan.pdf", make_pdf([]), "application/pdf", 400, "no text"),
    ]
    for name, data, ctype, want, words in cases:
        status, r = upload(name, data, ctype)
        assert status == want, (name, status, r)
        assert words in r["error"]["message"], (name, r)
    assert index_state() == before
    assert all("ocelot" not in h["text"] for h in search("ocelot marmalade"))


def send_huge(chunked):
    """Sends 100 MB to the upload endpoint; returns (status, body) or the error that ended it."""
    d = daemon()
    conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=120)
    conn.putrequest("POST", "/v1/documents/upload?filename=huge.txt")
    conn.putheader("Authorization", f"Bearer {KEY}")
    conn.putheader("Content-Type", "text/plain")
    size, block = 100 << 20, b"a" * (1 << 20)
    if chunked:
        conn.putheader("Transfer-Encoding", "chunked")
    else:
        conn.putheader("Content-Length", str(size))
    conn.endheaders()
    try:
        for _ in range(size // len(block)):
            if chunked:
                conn.send(b"%x\r\n" % len(block) + block + b"\r\n")
            else:
                conn.send(block)
        if chunked:
            conn.send(b"0\r\n\r\n")
    except OSError:
        pass  # the server answered and closed before taking it all: read its answer
    r = conn.getresponse()
    body = r.read()
    conn.close()
    return r.status, json.loads(body)


def test_a_100_mb_upload_is_refused_with_413():
    before = index_state()
    for chunked in (False, True):
        status, r = send_huge(chunked)
        assert status == 413, (chunked, status, r)
        assert "limit of 16777216 bytes" in r["error"]["message"], r
    assert index_state() == before


def test_zz_clean_stop():
    d = _state.pop("d")
    assert d.stop() == 0, d.output()
    assert "AddressSanitizer" not in d.output()
    d.__exit__()
    _state.pop("tmp").cleanup()


if __name__ == "__main__":
    run_tests(globals())
