"""`cairn index`, `cairn embed`, `cairn search` on small JSONL and directory corpora with the real
all-MiniLM-L6-v2 embedder: building with progress, caching, rebuilding, answers, and bad input."""
import json
import math
import os
import re
import subprocess
import tempfile

from harness import BIN, run_tests

MODEL = os.path.join(os.environ.get("CAIRN_TEST_MODELS", "data/models"), "all-minilm-l6-v2.gguf")

DOCS = {
    "bread": "Knead the dough for ten minutes, let it rise until doubled, then bake the loaf "
             "in a hot oven until the crust is brown and it sounds hollow when tapped.",
    "volcano": "Magma rises through the crust and erupts as lava, ash and gas; stratovolcanoes "
               "build steep cones from layers of hardened lava and pyroclastic flows.",
    "chess": "The knight moves in an L shape and can jump over other pieces; castling moves "
             "the king two squares towards a rook, which then crosses over it.",
    "tcp": "TCP establishes a connection with a three-way handshake of SYN, SYN-ACK and ACK "
           "segments and retransmits lost segments after a timeout.",
    "photosynthesis": "Plants capture sunlight with chlorophyll and turn carbon dioxide and "
                      "water into glucose, releasing oxygen as a by-product.",
    "violin": "A violin has four strings tuned in fifths, G D A E, and is played with a bow "
              "strung with horsehair rubbed with rosin.",
    "marathon": "Runners training for a marathon build weekly mileage slowly and include one "
                "long run each week to prepare for the 42-kilometre race.",
    "git": "git rebase replays your commits on top of another branch, rewriting their "
           "hashes; git merge instead records a merge commit joining both histories.",
}

QUERIES = {
    "how do I bake bread at home": "bread",
    "lava eruption and ash clouds": "volcano",
    "how does the knight move in chess": "chess",
    "three-way handshake of a network connection": "tcp",
    "how plants make sugar from light": "photosynthesis",
}


def cairn(*args, timeout=600):
    return subprocess.run([os.path.join(BIN, "cairn"), *args], capture_output=True, text=True,
                          timeout=timeout)


def write_jsonl(path, docs):
    with open(path, "w") as f:
        for k, v in docs.items():
            f.write(json.dumps({"id": k, "text": v, "title": k.capitalize(),
                                "metadata": {"topic": k}}) + "\n")


def search(d, text, *extra):
    r = cairn("search", "--dir", d, "--model", MODEL, "--json", *extra, text)
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines()]


def test_index_search_and_cache_on_jsonl():
    assert os.path.exists(MODEL), f"{MODEL} missing: run scripts/setup"
    with tempfile.TemporaryDirectory(prefix="cairn-idx-") as tmp:
        corpus, d = os.path.join(tmp, "docs.jsonl"), os.path.join(tmp, "index")
        write_jsonl(corpus, DOCS)
        r = cairn("index", "--corpus", corpus, "--dir", d, "--model", MODEL, "--full")
        assert r.returncode == 0, r.stderr
        assert re.search(r"indexed 8 passages into", r.stdout), r.stdout
        # the progress line: count, rate and ETA, ending at 100%
        assert re.search(r"embedding 8/8 \(100\.0%\)\s+[\d.]+ passages/s .*ETA \d+:\d\d:\d\d",
                         r.stderr), r.stderr
        for f in ("docs.cds", "index.ivf", "index.tier", "corpus.stamp"):
            assert os.path.exists(os.path.join(d, f)), f

        # cached: nothing is embedded again
        r = cairn("index", "--corpus", corpus, "--dir", d, "--model", MODEL, "--full")
        assert r.returncode == 0, r.stderr
        assert "is cached: 8 passages" in r.stdout and "embedding" not in r.stderr, r

        for q, want in QUERIES.items():
            hits = search(d, q, "-k", "3")
            assert len(hits) == 3, hits
            assert hits[0]["metadata"]["topic"] == want, (q, [h["key"] for h in hits])
            assert hits[0]["key"] == f"{want}#0" and hits[0]["title"] == want.capitalize()
            assert hits[0]["text"] == DOCS[want]
            scores = [h["score"] for h in hits]
            assert scores == sorted(scores, reverse=True), scores
            assert [h["rank"] for h in hits] == [1, 2, 3]

        # k larger than the index returns everything once; nprobe beyond nlist searches all
        hits = search(d, "music", "-k", "20", "--nprobe", "1000")
        assert sorted(h["key"] for h in hits) == sorted(f"{k}#0" for k in DOCS), hits
        assert hits[0]["metadata"]["topic"] == "violin", hits[0]

        # plain output: rank, score, the list that found it, id, title and the text's start
        # (hybrid by default: the fused score is in 0..w_dense + w_lex)
        r = cairn("search", "--dir", d, "--model", MODEL, "-k", "1", "bowed string instrument")
        assert r.returncode == 0, r.stderr
        assert re.match(r" 1\. \d\.\d{4}  (dense|both) +\[\d+\] Violin\n    A violin has four "
                        r"strings", r.stdout), r.stdout
        assert "[timings] hybrid: 1 passages of 8" in r.stderr, r.stderr
        # the search modes: lexical finds by words alone, without embedding the query
        r = cairn("search", "--dir", d, "--model", MODEL, "-k", "1", "--mode", "lexical",
                  "violin (NEAR \"bow*")
        assert r.returncode == 0, r.stderr
        assert re.match(r" 1\. \d+\.\d{4}  lexical \[\d+\] Violin\n", r.stdout), r.stdout
        assert "[timings] lexical: 1 passages of 8; embed 0.0 ms" in r.stderr, r.stderr
        r = cairn("search", "--dir", d, "--model", MODEL, "--mode", "dense", "--json", "violin")
        assert r.returncode == 0, r.stderr
        assert all(json.loads(l)["retrieved_by"] == "dense" for l in r.stdout.splitlines())
        r = cairn("search", "--dir", d, "--model", MODEL, "--mode", "bm25", "violin")
        assert r.returncode == 2 and "--mode: 'bm25' is not one of hybrid, dense, lexical" in \
            r.stderr, r.stderr


def test_embed_prints_normalised_vectors_that_rank_like_search():
    r = cairn("embed", "--model", MODEL, "baking a loaf of bread", DOCS["bread"], DOCS["tcp"])
    assert r.returncode == 0, r.stderr
    vecs = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(vecs) == 3 and all(len(v) == 384 for v in vecs), [len(v) for v in vecs]
    for v in vecs:
        assert abs(math.sqrt(sum(x * x for x in v)) - 1.0) < 1e-5
    dot = [sum(a * b for a, b in zip(vecs[0], v)) for v in vecs[1:]]
    assert dot[0] > dot[1] + 0.2, dot
    # the same text embeds the same alone and in a batch
    r2 = cairn("embed", "--model", MODEL, "--threads", "1", DOCS["tcp"])
    v2 = json.loads(r2.stdout)
    assert max(abs(a - b) for a, b in zip(v2, vecs[2])) < 1e-5


def test_directory_corpus_limit_then_more_rebuilds():
    with tempfile.TemporaryDirectory(prefix="cairn-idx-") as tmp:
        src, d = os.path.join(tmp, "notes"), os.path.join(tmp, "index")
        os.makedirs(os.path.join(src, "sub"))
        names = sorted(DOCS)
        for i, k in enumerate(names):
            ext = "md" if i % 2 else "txt"
            sub = "sub" if i >= 4 else ""
            with open(os.path.join(src, sub, f"{k}.{ext}"), "w") as f:
                f.write(DOCS[k])
        with open(os.path.join(src, "ignored.bin"), "wb") as f:
            f.write(b"\x00\x01\x02")
        r = cairn("index", "--corpus", src, "--dir", d, "--model", MODEL, "--max", "3")
        assert r.returncode == 0, r.stderr
        assert "indexed 3 passages" in r.stdout, r.stdout
        # asking for no more than is there: cached
        r = cairn("index", "--corpus", src, "--dir", d, "--model", MODEL, "--max", "2")
        assert r.returncode == 0 and "is cached: 3 passages" in r.stdout, (r.stdout, r.stderr)
        # asking for more: rebuilt from the corpus, and says so
        r = cairn("index", "--corpus", src, "--dir", d, "--model", MODEL, "--max", "100")
        assert r.returncode == 0, r.stderr
        assert "holds 3 passages" in r.stderr and "rebuilding" in r.stderr, r.stderr
        assert "indexed 8 passages" in r.stdout, r.stdout
        hits = search(d, "knight and castling", "-k", "1")
        assert hits[0]["key"].startswith("chess.") and hits[0]["title"].startswith("chess."), hits
        # the corpus ran out below the limit: any larger limit is covered
        r = cairn("index", "--corpus", src, "--dir", d, "--model", MODEL, "--full")
        assert r.returncode == 0 and "is cached: 8 passages" in r.stdout, (r.stdout, r.stderr)


def test_bad_input_gets_clear_errors():
    with tempfile.TemporaryDirectory(prefix="cairn-idx-") as tmp:
        d = os.path.join(tmp, "index")
        r = cairn("index", "--bogus")
        assert r.returncode == 2 and "unknown option '--bogus'" in r.stderr, r.stderr
        r = cairn("index", "--full", "--max", "5")
        assert r.returncode == 2 and "exclude" in r.stderr, r.stderr
        r = cairn("index", "--max", "0")
        assert r.returncode == 2 and "--max" in r.stderr, r.stderr
        r = cairn("index", "--max")
        assert r.returncode == 2 and "needs a value" in r.stderr, r.stderr
        r = cairn("index", "--corpus", os.path.join(tmp, "nope.jsonl"), "--dir", d)
        assert r.returncode == 1 and "nope.jsonl" in r.stderr, r.stderr
        txt = os.path.join(tmp, "notes.txt")
        with open(txt, "w") as f:
            f.write("hello")
        r = cairn("index", "--corpus", txt, "--dir", d, "--model", MODEL)
        assert r.returncode == 1 and "not a directory, a .jsonl file" in r.stderr, r.stderr
        bad = os.path.join(tmp, "bad.jsonl")
        with open(bad, "wb") as f:
            f.write(b'{"id": 1}\nnot json\n{"id": 2, "text": "\xff\xfe"}\n')
        r = cairn("index", "--corpus", bad, "--dir", d, "--model", MODEL)
        assert r.returncode == 1 and "no passages" in r.stderr, r.stderr
        assert "first bad line 1" in r.stderr, r.stderr
        r = cairn("index", "--corpus", txt, "--dir", d, "--model", os.path.join(tmp, "x.gguf"))
        assert r.returncode == 1 and "x.gguf" in r.stderr, r.stderr

        r = cairn("search", "--dir", d, "--model", MODEL, "anything")
        assert r.returncode == 1 and "run cairn index first" in r.stderr, r.stderr
        r = cairn("search", "--dir", d, "-k", "0", "x")
        assert r.returncode == 2 and "-k" in r.stderr, r.stderr
        r = cairn("search", "--dir", d, "--nprobe", "-3", "x")
        assert r.returncode == 2 and "--nprobe" in r.stderr, r.stderr
        r = cairn("search", "--dir", d)
        assert r.returncode == 2 and "no TEXT" in r.stderr, r.stderr
        r = cairn("search", "--dir", d, "two", "texts")
        assert r.returncode == 2 and "one TEXT only" in r.stderr, r.stderr
        r = cairn("embed", "--model", MODEL)
        assert r.returncode == 2 and "no TEXT" in r.stderr, r.stderr
        r = cairn("embed", "--full", "x")
        assert r.returncode == 2 and "unknown option '--full'" in r.stderr, r.stderr

        # a store that no corpus ingest recorded is not silently replaced
        corpus = os.path.join(tmp, "docs.jsonl")
        write_jsonl(corpus, dict(list(DOCS.items())[:3]))
        r = cairn("index", "--corpus", corpus, "--dir", d, "--model", MODEL)
        assert r.returncode == 0, r.stderr
        os.remove(os.path.join(d, "corpus.stamp"))
        r = cairn("index", "--corpus", corpus, "--dir", d, "--model", MODEL)
        assert r.returncode == 1 and "--rebuild" in r.stderr, r.stderr
        r = cairn("index", "--corpus", corpus, "--dir", d, "--model", MODEL, "--rebuild")
        assert r.returncode == 0 and "indexed 3 passages" in r.stdout, (r.stdout, r.stderr)
        # a corrupt index file is caught and rebuilt by the next index run
        with open(os.path.join(d, "index.ivf"), "r+b") as f:
            f.seek(70)
            f.write(b"garbage!")
        r = cairn("index", "--corpus", corpus, "--dir", d, "--model", MODEL)
        assert r.returncode == 0 and "indexed 3 passages" in r.stdout, (r.stdout, r.stderr)


if __name__ == "__main__":
    run_tests(globals())
