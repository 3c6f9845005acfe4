"""Replicas of cairnd sharing one corpus through the document log on Redis (docs.log = redis):
an add or delete on one replica is seen by a search on another within a second; a replica
started after 1,000 additions catches up and ranks as the others; a replica SIGKILLed while
applying resumes with no document lost or doubled; malformed log entries are refused, counted
and skipped; a second process on one index dir and a replica with another base corpus are
refused at start with a clear message. The real embedder; no LLM (retrieval only)."""
import json
import os
import signal
import tempfile
import threading
import time

from harness import Daemon, Redis, http, parse_metrics, run_tests, sample, wait_until

MODELS = os.environ.get("CAIRN_TEST_MODELS", "data/models")
EMBED = os.path.join(MODELS, "all-minilm-l6-v2.gguf")
KEY = "replica-key"
AUTH = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
TOPICS = ["river", "mountain", "harbour", "forest", "desert", "glacier", "volcano", "valley"]


def write_corpus(path, n=48, salt=""):
    with open(path, "w") as f:
        for i in range(n):
            t = TOPICS[i % len(TOPICS)]
            f.write(json.dumps({"id": f"base-{i}", "text": f"Base passage {i}{salt}: the {t} "
                                f"near town {i} has {3 + i % 7} old bridges and a market."}) + "\n")


class Cluster:
    """One redis-server, a base corpus, and replicas each with its own index dir."""

    def __init__(self):
        self.tmp = tempfile.TemporaryDirectory(prefix="cairn-replicas-")
        self.redis = Redis()
        self.corpus = os.path.join(self.tmp.name, "corpus.jsonl")
        write_corpus(self.corpus)
        self.replicas = []

    def args(self, name, *extra, corpus=None):
        return [f"--embed.model={EMBED}", f"--rag.corpus={corpus or self.corpus}",
                f"--rag.dir={self.tmp.name}/{name}", f"--redis.url={self.redis.url}",
                "--docs.log=redis", f"--auth.api_keys={KEY}", "--web.enabled=false",
                "--http.access-log=false", *extra]

    def start(self, name, *extra, wait=True, corpus=None):
        d = Daemon(*self.args(name, *extra, corpus=corpus), wait=wait)
        self.replicas.append(d)
        return d

    def close(self):
        for d in self.replicas:
            try:
                d.stop(signal.SIGKILL)
            finally:
                d.log.close()
                d.dir.cleanup()
        self.redis.close()
        self.tmp.cleanup()


def add(d, texts, key="doc"):
    docs = [{"text": t, "metadata": {"src": f"{key}-{i}"}} for i, t in enumerate(texts)]
    status, _, raw = http("POST", d.url + "/v1/documents", json.dumps({"documents": docs}),
                          AUTH, timeout=60)
    assert status == 200, (status, raw)
    return [x["id"] for x in json.loads(raw)["data"]]


def search(d, query, k=5, mode=None):
    body = {"query": query, "k": k}
    if mode:
        body["mode"] = mode
    status, _, raw = http("POST", d.url + "/v1/retrieve", json.dumps(body), AUTH, timeout=30)
    assert status == 200, (status, raw)
    return json.loads(raw)["data"]


def all_docs(d):
    """Every live passage as (id, key, text), in id order."""
    out, after = [], None
    while True:
        q = "?limit=500&full=true" + (f"&after={after}" if after is not None else "")
        status, _, raw = http("GET", d.url + "/v1/documents" + q, headers=AUTH, timeout=30)
        assert status == 200, (status, raw)
        page = json.loads(raw)
        out += [(x["id"], x["key"], x["text"]) for x in page["data"]]
        if not page.get("has_more"):
            return out
        after = page["next_after"]


def metric(d, name):
    _, _, body = http("GET", d.url + "/metrics")
    return sample(parse_metrics(body.decode())[1], name)


def test_add_and_delete_seen_on_another_replica_within_a_second():
    c = Cluster()
    try:
        a, b = c.start("a"), c.start("b")
        text = "The lighthouse keeper of Skerryvore counts 4,300 gannets every spring."
        ids = add(a, [text])
        t0 = time.time()
        # A answers only once its own index holds the document: it reads its own write.
        assert search(a, "gannets counted by a lighthouse keeper", 1)[0]["id"] == ids[0]
        hit = wait_until(lambda: any(h["id"] == ids[0] for h in
                                     search(b, "gannets counted by a lighthouse keeper", 3)),
                         timeout=5, every=0.02)
        took = time.time() - t0
        assert hit and took < 1.0, (took, b.output()[-2000:])
        # The log updates each replica's lexical index as well as its dense one.
        for d in (a, b):
            assert search(d, "Skerryvore gannets", 1, mode="lexical")[0]["id"] == ids[0]
        # Ids come from one counter: an add on B gets the next id.
        ids_b = add(b, ["Skerryvore lighthouse stands 48 metres tall on a reef."])
        assert ids_b[0] == ids[0] + 1, (ids, ids_b)
        # A delete on B disappears from A within a second too.
        status, _, raw = http("DELETE", f"{b.url}/v1/documents/{ids[0]}", headers=AUTH)
        assert status == 200, (status, raw)
        t0 = time.time()
        gone = wait_until(lambda: all(h["id"] != ids[0] for h in
                                      search(a, "gannets counted by a lighthouse keeper", 5)),
                          timeout=5, every=0.02)
        took = time.time() - t0
        assert gone and took < 1.0, took
        for d in (a, b):
            assert all(h["id"] != ids[0] for h in search(d, "Skerryvore gannets", 5,
                                                          mode="lexical"))
        # Deleting it again is a 404 on either replica; the log holds add, add, del.
        for d in (a, b):
            status, _, _ = http("DELETE", f"{d.url}/v1/documents/{ids[0]}", headers=AUTH)
            assert status == 404, status
        assert c.redis.cli("XLEN", "cairn:docs") == "(integer) 3"
        assert all_docs(a) == all_docs(b)
    finally:
        c.close()


QUERIES = ["bridges over the river", "snow on the glacier", "a market in the desert town",
           "ships in the harbour", "lava from the volcano", "trees of the forest",
           "report number 17", "the valley farms", "batch 33 notes", "mountain huts"]


def test_late_replica_catches_up_after_1000_additions():
    c = Cluster()
    try:
        a, b = c.start("a"), c.start("b")
        n = 0
        for r in range(50):  # 50 requests of 20 passages, alternating replicas: 1,000 additions
            texts = [f"Report {r * 20 + i}, batch {r}: the {TOPICS[(r + i) % 8]} at site "
                     f"{(r * 7 + i) % 31} logged {i + r % 5} notes about weather and tides."
                     for i in range(20)]
            n += len(add(a if r % 2 else b, texts, key=f"r{r}"))
        assert n == 1000
        t0 = time.time()
        late = c.start("late")
        caught = time.time() - t0
        want = all_docs(a)
        assert len(want) == 48 + 1000
        assert all_docs(late) == want and all_docs(b) == want
        for q in QUERIES:
            ids = [[h["id"] for h in search(d, q, 10)] for d in (a, b, late)]
            assert ids[0] == ids[1] == ids[2], (q, ids)
        assert "document log caught up" in late.output()
        print(f"late replica ready in {caught:.1f}s")
    finally:
        c.close()


def test_replica_killed_while_applying_resumes_without_loss_or_doubles():
    c = Cluster()
    try:
        a = c.start("a")
        k = c.start("k")
        errors = []

        def writer():
            try:
                for r in range(40):
                    add(a, [f"Entry {r}-{i}: the {TOPICS[i % 8]} log line {r * 10 + i}."
                            for i in range(10)], key=f"w{r}")
            except AssertionError as e:
                errors.append(e)

        t = threading.Thread(target=writer)
        t.start()
        base = 48
        # Kill k once it has applied part of the stream.
        assert wait_until(lambda: (metric(k, "cairn_rag_documents") or 0) > base + 50,
                          timeout=60, every=0.05)
        k.stop(signal.SIGKILL)
        t.join()
        assert not errors, errors
        k2 = c.start("k")  # the same index dir: resumes from its position
        want = all_docs(a)
        assert len(want) == base + 400
        got = all_docs(k2)
        assert got == want, (len(got), len(want))
        ids = [x[0] for x in got]
        assert len(ids) == len(set(ids))
        assert "caught up" in k2.output()
    finally:
        c.close()


def test_malformed_entries_are_refused_and_skipped():
    c = Cluster()
    try:
        a = c.start("a")
        bad = [
            ["op", "add", "first", "999", "n", "1"],                      # no passages
            ["op", "add", "first", "999", "n", "1", "passages", "{not json"],
            ["op", "add", "first", "999", "n", "2", "passages", '[{"text":"x"}]'],
            ["op", "add", "first", "-1", "n", "1", "passages", '[{"text":"x"}]'],
            ["op", "del", "id", "abc"],
            ["op", "dance"],
            ["id", "7"],
            ["op", "add", "first", "999", "n", "1", "passages", '[{"text":""}]'],
            ["op", "add", "first", "999", "n", "1", "passages", '[{"text":"x","meta":3}]'],
            ["op", "add", "first", "1", "n", "1", "passages", '[{"text":"old id"}]'],
        ]
        for fields in bad:
            c.redis.cli("XADD", "cairn:docs", "*", *fields)
        ids = add(a, ["A valid passage about kestrels hovering over the meadow."])
        assert search(a, "kestrels hovering", 1)[0]["id"] == ids[0]
        # The malformed ones were refused one by one; the old-id add was a no-op replay.
        assert metric(a, "cairn_doclog_rejected_total") == 9, a.output()[-3000:]
        out = a.output()
        assert "document log entry refused" in out and "passages" in out
        assert a.proc.poll() is None
        # A replica started now reads the same entries and agrees.
        b = c.start("b")
        assert metric(b, "cairn_doclog_rejected_total") == 9
        assert all_docs(b) == all_docs(a)
    finally:
        c.close()


def test_one_process_per_index_dir_and_one_base_corpus():
    c = Cluster()
    try:
        a = c.start("a")
        twin = c.start("a", wait=False)  # the same rag.dir
        assert twin.proc.wait(timeout=60) != 0
        out = twin.output()
        assert f"{c.tmp.name}/a" in out and "in use by another process" in out, out[-2000:]
        assert f"pid {a.proc.pid}" in out, out[-2000:]
        other = os.path.join(c.tmp.name, "other.jsonl")
        write_corpus(other, salt=" (edited)")
        stray = c.start("stray", wait=False, corpus=other)
        assert stray.proc.wait(timeout=60) != 0
        out = stray.output()
        assert "base corpus mismatch" in out and "rag.corpus" in out, out[-2000:]
        assert a.proc.poll() is None
    finally:
        c.close()


run_tests(globals())
