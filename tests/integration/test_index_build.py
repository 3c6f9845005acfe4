"""cairnd indexing its corpus in the background: /health answers at once with 503 "loading" and
a progress that rises, retrieval answers over what is indexed so far and says so, /metrics
shows the build; SIGTERM stops the build and the next start resumes it from index.partial;
once complete /health is 200 and a restart loads the cached index and is 200 at once."""
import json
import os
import random
import signal
import tempfile
import time

from harness import Daemon, http, parse_metrics, run_tests

MODELS = os.environ.get("CAIRN_TEST_MODELS", "data/models")

WORDS = ("archive backup compiler daemon editor firewall graphics kernel library monitor network "
         "parser printer queue scanner server shell sound terminal tracker viewer wallet window "
         "audio calendar camera chess client database desktop driver emulator font game image "
         "keyboard mail manager music player proxy search spreadsheet system text video").split()


def corpus(path, n):
    """n passages of 40-80 words each, deterministic, each with a title."""
    rnd = random.Random(18)
    with open(path, "w") as f:
        for i in range(n):
            words = [rnd.choice(WORDS) for _ in range(rnd.randint(40, 80))]
            f.write(json.dumps({"id": f"pkg{i}", "title": f"pkg{i}: {words[0]} {words[1]}",
                                "text": " ".join(words) + "."}) + "\n")


def health(d):
    status, _, body = http("GET", d.url + "/health", timeout=5)
    return status, json.loads(body)


def first_health(d, within=10.0):
    """The first /health answer, which must come within `within` seconds of the start."""
    t0 = time.time()
    while time.time() - t0 < within:
        try:
            return health(d)
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"no /health answer within {within}s:\n{d.output()}")


def retrieve(d, query="terminal emulator for the shell"):
    status, _, body = http("POST", d.url + "/v1/retrieve", json.dumps({"query": query, "k": 5}),
                           headers={"Content-Type": "application/json"}, timeout=60)
    assert status == 200, body
    return json.loads(body)


def args(tmp, path):
    return [f"--embed.model={MODELS}/all-minilm-l6-v2.gguf", f"--rag.corpus={path}",
            f"--rag.dir={tmp}/index", "--web.enabled=false"]


def test_background_build_progress_stop_resume_and_cache():
    with tempfile.TemporaryDirectory(prefix="cairn-build-") as tmp:
        path = os.path.join(tmp, "corpus.jsonl")
        corpus(path, 1500)
        # 1. A fresh start: 503 loading at once, the progress rises, retrieval says incomplete.
        d = Daemon(*args(tmp, path), wait=False)
        try:
            status, h = first_health(d)
            assert status == 503 and h["status"] == "loading", (status, h)
            total = h["progress"]["total"]
            assert total >= 1500, h
            seen = []
            deadline = time.time() + 300
            while time.time() < deadline:
                status, h = health(d)
                assert status == 503, (status, h)  # the build must still run at this point
                p = h["progress"]
                assert p["total"] == total and 0 <= p["passages"] <= total, p
                assert not p["failed"], p
                seen.append(p["passages"])
                if p["passages"] > 0:
                    break
                time.sleep(0.1)
            assert seen and seen[-1] > 0, (seen, d.output())
            assert seen == sorted(seen), seen
            r = retrieve(d)
            idx = r["cairn"]["index"]
            assert idx["complete"] is False and 0 < idx["passages"] < idx["total"], idx
            assert idx["total"] == total, idx
            assert r["data"], r  # what is indexed is searched
            for hit in r["data"]:
                assert hit["retrieved_by"] in ("dense", "lexical", "both"), hit
            _, _, m = http("GET", d.url + "/metrics")
            _, samples = parse_metrics(m.decode())
            prog = samples[("cairn_index_build_progress", frozenset())]
            assert 0 < prog < 1, prog
            assert samples[("cairn_index_build_passages", frozenset())] > 0
            # 2. SIGTERM mid-build: a clean stop, the build's vectors so far are kept.
            stopped_at = seen[-1]
            assert d.stop(signal.SIGTERM, timeout=60) == 0, d.output()
            out = d.output()
            assert "index build stopped" in out, out[-3000:]
            assert os.path.exists(os.path.join(tmp, "index", "index.partial"))
            assert not os.path.exists(os.path.join(tmp, "index", "embed.format"))
        finally:
            d.stop()
        # 3. The next start resumes: it starts from what was embedded, not from zero.
        d = Daemon(*args(tmp, path), wait=False)
        try:
            status, h = first_health(d)
            if status == 503:
                assert h["progress"]["passages"] >= stopped_at, (h, stopped_at)
            t0, last = time.time(), -1
            while time.time() - t0 < 600:
                status, h = health(d)
                if status == 200:
                    break
                assert h["progress"]["passages"] >= last, (h, last)
                last = h["progress"]["passages"]
                time.sleep(0.2)
            assert status == 200 and h["status"] == "ok" and "progress" not in h, (status, h)
            out = d.output()
            assert "index build resumes" in out, out[-3000:]
            resumed = int(out.split("index build resumes passages=")[1].split()[0])
            assert resumed >= stopped_at > 0, (resumed, stopped_at)
            r = retrieve(d)
            assert r["cairn"]["index"] == {"complete": True, "passages": total, "total": total}, r
            assert not os.path.exists(os.path.join(tmp, "index", "index.partial"))
            _, _, m = http("GET", d.url + "/metrics")
            _, samples = parse_metrics(m.decode())
            assert samples[("cairn_index_build_progress", frozenset())] == 1
            assert samples[("cairn_index_build_passages", frozenset())] == total
            # every passage is in both indexes: a passage's own title finds it first
            status, _, body = http("POST", d.url + "/v1/retrieve",
                                   json.dumps({"query": "pkg1234", "k": 1, "mode": "lexical"}),
                                   headers={"Content-Type": "application/json"})
            assert status == 200 and json.loads(body)["data"][0]["key"] == "pkg1234#0", body
        finally:
            assert d.stop() == 0
        # 4. A restart loads the finished index from disk: 200 at once, nothing embedded.
        d = Daemon(*args(tmp, path), wait=False)
        try:
            status, h = first_health(d, within=10.0)
            assert status == 200 and h["status"] == "ok", (status, h)
            assert "indexing in the background" not in d.output(), d.output()
            assert retrieve(d)["cairn"]["index"]["complete"] is True
        finally:
            assert d.stop() == 0


if __name__ == "__main__":
    run_tests(globals())
