"""cairnd's retrieval endpoints and the RAG pipeline with the real embedder and gemma-3-270m:
a JSONL corpus ingested at start, /v1/retrieve, /v1/documents (add, delete, persisted across a
restart), /v1/rag and the `rag` extension of chat completions (modes none, rewrite, hyde);
search modes dense, lexical and hybrid with metadata filters."""
import json
import os
import tempfile

from harness import Daemon, http, run_tests

MODELS = os.environ.get("CAIRN_TEST_MODELS", "data/models")
KEY = "rag-key"
AUTH = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}

# Passages with one fact each, and a question whose answer sits in exactly one of them.
PASSAGES = {
    "everest": "Mount Everest, on the border of Nepal and China, is the highest mountain above "
               "sea level at 8,849 metres.",
    "python": "The Python programming language was created by Guido van Rossum and first "
              "released in 1991.",
    "eiffel": "The Eiffel Tower in Paris was designed by Gustave Eiffel's company and completed "
              "in 1889 for the World's Fair.",
    "reef": "The Great Barrier Reef off Queensland, Australia, is the world's largest coral reef "
            "system.",
    "insulin": "Insulin is a hormone made by the pancreas that lets cells absorb glucose from "
               "the blood.",
    "jupiter": "Jupiter is the largest planet in the Solar System, a gas giant with a Great Red "
               "Spot storm.",
    "bread": "Sourdough bread rises thanks to wild yeast and lactic acid bacteria in a "
             "fermented starter.",
    "violin": "A violin has four strings tuned in perfect fifths and is played with a bow.",
}
QUESTIONS = {
    "everest": "What is the tallest mountain in the world?",
    "python": "Who invented the Python language?",
    "eiffel": "When was the Eiffel Tower finished?",
    "reef": "Where is the largest coral reef?",
    "insulin": "Which organ produces insulin?",
    "jupiter": "What is the biggest planet?",
}

_state = {}


def setup():
    if "d" not in _state:
        tmp = tempfile.TemporaryDirectory(prefix="cairn-rag-")
        corpus = os.path.join(tmp.name, "corpus.jsonl")
        with open(corpus, "w") as f:
            for pid, text in PASSAGES.items():
                f.write(json.dumps({"id": pid, "text": text, "metadata": {"topic": pid}}) + "\n")
        _state["tmp"] = tmp
        _state["args"] = [f"--model.path={MODELS}/gemma-3-270m-q4_k_m.gguf",
                          f"--embed.model={MODELS}/all-minilm-l6-v2.gguf",
                          f"--auth.api_keys={KEY}", f"--rag.corpus={corpus}",
                          f"--rag.dir={tmp.name}/index", "--workers.ctx=512",
                          "--limits.max_tokens=24"]
        _state["d"] = Daemon(*_state["args"])
    return _state["d"]


def post(path, body):
    status, headers, raw = http("POST", setup().url + path, json.dumps(body), headers=AUTH,
                                timeout=300)
    return status, headers, raw


def retrieve(query, k=3):
    status, _, raw = post("/v1/retrieve", {"query": query, "k": k})
    assert status == 200, raw
    return json.loads(raw)


def topic(hit):
    return hit["key"].split("#")[0]


def test_retrieve_finds_the_passage_with_the_answer():
    found = 0
    for pid, q in QUESTIONS.items():
        r = retrieve(q)
        hits = r["data"]
        assert 1 <= len(hits) <= 3
        assert all(hits[i]["score"] >= hits[i + 1]["score"] for i in range(len(hits) - 1))
        if pid in [topic(h) for h in hits]:
            found += 1
        assert r["cairn"]["embed_s"] > 0 and r["cairn"]["search_s"] >= 0
    assert found >= 5, found  # the acceptance: >= 5 questions answered from the right passage
    hit = retrieve(QUESTIONS["python"], k=1)["data"][0]
    assert hit["metadata"]["topic"] == topic(hit)
    assert hit["text"] == PASSAGES[topic(hit)]


def test_rag_endpoint_sources_and_timings():
    status, _, raw = post("/v1/rag", {"question": QUESTIONS["insulin"], "k": 2,
                                      "max_tokens": 8, "temperature": 0})
    assert status == 200, raw
    r = json.loads(raw)
    assert r["object"] == "chat.completion"
    assert isinstance(r["choices"][0]["message"]["content"], str)
    assert "insulin" in [topic(s) for s in r["sources"]], r["sources"]
    assert len(r["sources"]) == 2
    t = r["cairn"]
    for stage in ("embed_s", "pre_retrieval_s", "search_s", "ttft_s", "total_s"):
        assert stage in t, t
    assert t["rag_mode"] == "none"
    assert t["total_s"] >= t["embed_s"] + t["search_s"]
    # the answer's prompt: the model's chat template around the system prompt and the passages
    assert t["passages_truncated"] == 0 and t["passages_left_out"] == 0, t
    assert 0 < t["rag_prompt_tokens"] <= r["usage"]["prompt_tokens"], (t, r["usage"])


def test_chat_rag_extension_streams_sources_last():
    status, headers, raw = post("/v1/chat/completions", {
        "messages": [{"role": "user", "content": QUESTIONS["jupiter"]}],
        "rag": {"k": 1}, "max_tokens": 6, "temperature": 0, "stream": True})
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
    events = [b[len("data: "):] for b in raw.decode().split("\n\n") if b.strip()]
    assert events[-1] == "[DONE]"
    last = json.loads(events[-2])
    assert [topic(s) for s in last["sources"]] == ["jupiter"], last["sources"]
    assert all("sources" not in json.loads(e) for e in events[:-2])


def test_rewrite_and_hyde_modes_run_the_pre_retrieval_generation():
    for mode in ("rewrite", "hyde"):
        status, _, raw = post("/v1/rag", {"question": QUESTIONS["eiffel"], "mode": mode, "k": 3,
                                          "max_tokens": 4, "temperature": 0})
        assert status == 200, raw
        r = json.loads(raw)
        assert r["cairn"]["rag_mode"] == mode
        assert r["cairn"]["pre_retrieval_s"] > 0
        assert "pre_retrieval_text" in r["cairn"]
        assert len(r["sources"]) == 3


def test_documents_add_delete_and_persist():
    d = setup()
    status, _, raw = post("/v1/documents", {"documents": [
        {"text": "The axolotl is a salamander that keeps its larval gills as an adult.",
         "metadata": {"topic": "axolotl"}}]})
    assert status == 200, raw
    added = json.loads(raw)
    new_id = added["data"][0]["id"]
    assert added["total_documents"] == len(PASSAGES) + 1
    hits = retrieve("Which salamander keeps its gills?", k=1)["data"]
    assert hits[0]["id"] == new_id and hits[0]["metadata"]["topic"] == "axolotl"

    # A restart reloads the index from rag.dir: the document is still there.
    assert d.stop() == 0, d.output()
    d.__exit__()
    _state["d"] = d = Daemon(*_state["args"])
    assert retrieve("Which salamander keeps its gills?", k=1)["data"][0]["id"] == new_id

    status, _, raw = http("DELETE", f"{d.url}/v1/documents/{new_id}", headers=AUTH)
    assert status == 200 and json.loads(raw) == {"id": new_id, "deleted": True}, raw
    assert new_id not in [h["id"] for h in retrieve("Which salamander keeps its gills?")["data"]]
    status, _, raw = http("DELETE", f"{d.url}/v1/documents/{new_id}", headers=AUTH)
    assert status == 404, raw
    status, _, raw = http("DELETE", f"{d.url}/v1/documents/12x", headers=AUTH)
    assert status == 400 and "12x" in json.loads(raw)["error"]["message"]
    status, _, _ = http("DELETE", f"{d.url}/v1/documents/1")
    assert status == 401


# A document long enough for several passages, its paragraphs on unrelated subjects, so that
# every passage can be told apart by what it says.
LONG_DOC = "\n\n".join([
    "Honey bees communicate the direction and distance of flowers through the waggle dance. A "
    "forager returning to the hive runs a figure-eight pattern on the comb, and the angle of the "
    "straight run relative to vertical matches the angle between the sun and the food source. "
    "The duration of the waggle tells the other workers how far they must fly, roughly one "
    "second for every kilometre, and the vigour of the dance signals how rich the nectar is.",
    "Glaciers carve U-shaped valleys as they grind over bedrock for thousands of years. Ice "
    "moving downhill plucks boulders from the valley floor and drags them along, scraping long "
    "parallel striations into the rock. When the climate warms and the glacier retreats, it "
    "leaves behind moraines of unsorted gravel, erratic boulders far from their origin, and "
    "deep lakes dammed by debris, such as the finger lakes of upstate New York.",
    "Lighthouse keepers once trimmed the wicks of oil lamps every few hours through the night. "
    "The Fresnel lens, invented by Augustin-Jean Fresnel in 1822, used concentric rings of "
    "glass prisms to bend scattered light into a single horizontal beam visible for more than "
    "twenty nautical miles. Each lighthouse flashes in its own rhythm, its characteristic, so "
    "that sailors can tell which headland they are passing in the dark.",
    "The violin family was standardised in northern Italy in the sixteenth century, and the "
    "workshops of Cremona, above all those of Antonio Stradivari and the Guarneri family, set "
    "the proportions luthiers still copy. A maple back, a spruce top, a sound post wedged "
    "between them and a bass bar glued under the lower strings shape how the wooden box "
    "resonates when the bow sets the strings vibrating.",
    "Sourdough starters are colonies of wild yeast and lactic acid bacteria kept alive by "
    "regular feedings of flour and water. The bacteria produce lactic and acetic acids that "
    "give the bread its sour taste and help it keep for days, while the yeast releases carbon "
    "dioxide that leavens the dough. Bakers keep a starter for decades, and some in San "
    "Francisco claim lineages that go back to the gold rush of 1849.",
    "Chess engines search millions of positions per second using alpha-beta pruning, which "
    "skips branches that cannot change the final decision. Modern engines such as Stockfish "
    "evaluate positions with an efficiently updatable neural network, while AlphaZero learned "
    "the game from self-play alone, guided by Monte Carlo tree search, and beat the strongest "
    "engines of its day after a few hours of training.",
    "Coral reefs are built by tiny animals called polyps that secrete skeletons of calcium "
    "carbonate. The polyps live in symbiosis with algae, zooxanthellae, which photosynthesise "
    "inside their tissues and supply most of their food. When the water grows too warm the "
    "polyps expel the algae and turn white, a process called bleaching, and a reef that stays "
    "bleached for weeks starves.",
])


def test_documents_are_chunked_and_deleted_whole():
    """POST /v1/documents cuts a long text as the corpus is cut: each passage carries the
    document's id and its chunk number, each can be found, RAG over them is cut to the context
    (and says so), and deleting the document deletes every passage."""
    d = setup()
    status, _, raw = post("/v1/documents", {"documents": [
        {"text": LONG_DOC, "title": "Field notes", "metadata": {"topic": "notes"}}]})
    assert status == 200, raw
    added = json.loads(raw)["data"][0]
    doc, n, pids = added["document"], added["passages"], added["passage_ids"]
    assert doc.startswith("doc-") and n >= 4 and len(pids) == n, added
    assert pids == list(range(added["id"], added["id"] + n))
    status, _, raw = http("GET", f"{d.url}/v1/documents?metadata.document={doc}&full=1",
                          headers=AUTH)
    listed = json.loads(raw)["data"]
    assert [p["id"] for p in listed] == pids, listed
    for j, p in enumerate(listed):
        assert p["metadata"] == {"topic": "notes", "document": doc, "chunk": j}, p
        assert p["key"] == f"{doc}#{j}" and p["title"] == "Field notes"
        assert p["text"] in LONG_DOC
        # each passage is found by words from its middle (not in the overlap with its neighbours)
        mid = p["text"][len(p["text"]) // 3:len(p["text"]) // 3 + 160]
        hits = retrieve_body({"query": mid, "k": 1, "filter": {"document": doc}})["data"]
        assert [h["id"] for h in hits] == [p["id"]], (j, mid, hits)

    # RAG over four of them does not fit --workers.ctx=512: the passages are cut, and it says so
    status, _, raw = post("/v1/rag", {"question": "Who invented the lighthouse lens?", "k": 4,
                                      "max_tokens": 8, "temperature": 0,
                                      "filter": {"document": doc}})
    assert status == 200, raw
    r = json.loads(raw)
    t = r["cairn"]
    assert t["passages_truncated"] >= 1 and t["rag_prompt_tokens"] <= 512 - 8, t
    assert len(r["sources"]) + t["passages_left_out"] == 4, (t, r["sources"])
    assert r["usage"]["prompt_tokens"] == t["rag_prompt_tokens"]

    status, _, raw = http("DELETE", f"{d.url}/v1/documents/{doc}", headers=AUTH)
    assert status == 200, raw
    assert json.loads(raw) == {"id": doc, "deleted": True, "passages": n}
    status, _, raw = http("GET", f"{d.url}/v1/documents?metadata.document={doc}", headers=AUTH)
    assert json.loads(raw)["data"] == [] and json.loads(raw)["total_documents"] == len(PASSAGES)
    assert retrieve_body({"query": "glaciers and bees", "k": 3,
                          "filter": {"document": doc}})["data"] == []
    status, _, raw = http("DELETE", f"{d.url}/v1/documents/{doc}", headers=AUTH)
    assert status == 404 and doc in json.loads(raw)["error"]["message"], raw
    status, _, raw = http("DELETE", f"{d.url}/v1/documents/doc-12", headers=AUTH)
    assert status == 400, raw


def retrieve_body(body):
    status, _, raw = post("/v1/retrieve", body)
    assert status == 200, raw
    return json.loads(raw)


def test_retrieval_metrics():
    _, _, text = http("GET", setup().url + "/metrics")
    lines = dict(l.rsplit(" ", 1) for l in text.decode().splitlines()
                 if l and not l.startswith("#"))
    assert float(lines["cairn_retrieval_searches_total"]) >= 1
    assert float(lines["cairn_rag_documents"]) == len(PASSAGES)
    assert "cairn_prefetch_bytes_total" in lines and "cairn_retrieval_fast_tier_hits_total" in lines


def test_search_modes_filters_and_query_text():
    """dense, lexical and hybrid (the default) on /v1/retrieve and /v1/rag: each passage says
    which list found it; a metadata filter holds in every mode; FTS5 syntax is searched as text."""
    def get(body):
        status, _, raw = post("/v1/retrieve", body)
        assert status == 200, raw
        return json.loads(raw)

    r = get({"query": "Gustave Eiffel", "k": 2, "mode": "lexical"})
    assert r["cairn"]["mode"] == "lexical" and r["cairn"]["embed_s"] == 0
    assert topic(r["data"][0]) == "eiffel"
    assert all(h["retrieved_by"] == "lexical" and h["dense_rank"] is None and
               h["lexical_rank"] == i + 1 for i, h in enumerate(r["data"]))
    r = get({"query": QUESTIONS["jupiter"], "k": 2, "mode": "dense"})
    assert r["cairn"]["mode"] == "dense" and r["cairn"]["lexical_s"] == 0
    assert all(h["retrieved_by"] == "dense" and h["lexical_rank"] is None for h in r["data"])
    r = get({"query": "the largest planet Jupiter", "k": 3})
    assert r["cairn"]["mode"] == "hybrid"
    assert topic(r["data"][0]) == "jupiter" and r["data"][0]["retrieved_by"] == "both", r
    for mode in ("dense", "lexical", "hybrid"):
        hits = get({"query": "the largest in the world", "k": 3, "mode": mode,
                    "filter": {"topic": "reef"}})["data"]
        assert [topic(h) for h in hits] == ["reef"], (mode, hits)
    for q in ['"Eiffel', "NEAR(Eiffel tower", "Eiffel*", "-Eiffel", "Eiffel (((", "AND OR NOT",
              "title:Eiffel", "Eiffel\" OR \"x"]:
        hits = get({"query": q, "k": 3, "mode": "lexical"})["data"]
        if "Eiffel" in q:
            assert "eiffel" in [topic(h) for h in hits], (q, hits)
    status, _, raw = post("/v1/retrieve", {"query": "q", "mode": "bm25"})
    assert status == 400 and "mode: 'bm25'" in json.loads(raw)["error"]["message"], raw
    status, _, raw = post("/v1/retrieve", {"query": "q", "filter": {"topic": [1]}})
    assert status == 400 and "filter.topic" in json.loads(raw)["error"]["message"], raw

    status, _, raw = post("/v1/rag", {"question": QUESTIONS["insulin"], "k": 2, "max_tokens": 4,
                                      "temperature": 0, "search_mode": "lexical",
                                      "filter": {"topic": "insulin"}})
    assert status == 200, raw
    r = json.loads(raw)
    assert r["cairn"]["search_mode"] == "lexical"
    assert [topic(s) for s in r["sources"]] == ["insulin"], r["sources"]

    _, _, text = http("GET", setup().url + "/metrics")
    lines = dict(l.rsplit(" ", 1) for l in text.decode().splitlines()
                 if l and not l.startswith("#"))
    for mode in ("dense", "lexical", "hybrid"):
        assert float(lines[f'cairn_retrieval_search_seconds_count{{mode="{mode}"}}']) >= 1
    for lst in ("dense", "lexical", "both"):
        assert float(lines[f'cairn_retrieval_results_total{{list="{lst}"}}']) >= 1


def add_zorkview():
    """A passage that describes a software package (metadata "package"), added once."""
    if "zorkview" not in _state:
        status, _, raw = post("/v1/documents", {"documents": [
            {"text": "zorkview shows zork maps in a window, with zoom and a slideshow.",
             "title": "zorkview: viewer for zork maps", "metadata": {"package": "zorkview"}}]})
        assert status == 200, raw
        _state["zorkview"] = True


def stream_choices(raw):
    """A stream's choices, event by event, after checking it ends with [DONE]."""
    events = [b[len("data: "):] for b in raw.decode().split("\n\n") if b.strip()]
    assert events[-1] == "[DONE]", events[-3:]
    return [c for e in events[:-1] for c in json.loads(e).get("choices", [])]


def test_answer_from_a_package_opens_with_use():
    """An answer whose best passage describes a software package (metadata "package", as the
    default corpus's) begins with "Use", the words the prompt ended in: in the JSON answer and
    in the streamed deltas alike; an answer from other passages has no such opening."""
    add_zorkview()
    ask = {"question": "How can I look at zork maps?", "k": 1, "max_tokens": 6,
           "temperature": 0, "filter": {"package": "zorkview"}}
    status, _, raw = post("/v1/rag", ask)
    assert status == 200, raw
    r = json.loads(raw)
    assert r["sources"][0]["metadata"]["package"] == "zorkview", r["sources"]
    answer = r["choices"][0]["message"]["content"]
    assert answer.startswith("Use"), answer
    status, _, raw = post("/v1/rag", dict(ask, stream=True))
    assert status == 200, raw
    events = [b[len("data: "):] for b in raw.decode().split("\n\n") if b.strip()]
    deltas = [json.loads(e)["choices"][0]["delta"].get("content", "")
              for e in events[:-1] if json.loads(e).get("choices")]
    assert "".join(deltas) == answer, (deltas, answer)  # greedy: the same text, prefix first
    assert deltas[0].startswith("Use"), deltas


def test_no_use_opening_when_no_passage_fits():
    """A question so long that no passage fits beside it in the context: the prompt says that no
    passage was found, and the answer does not open with "Use" (with it, gemma-3-270m went on
    "Use frobview: it shows", the made-up package of the prompt's worked example)."""
    add_zorkview()
    seen = []
    for repeat in (40, 55, 70, 85, 100, 115):
        question = "How can I look at zork maps? " + "Answer briefly and plainly. " * repeat
        status, _, raw = post("/v1/rag", {"question": question, "k": 1, "max_tokens": 6,
                                          "temperature": 0, "filter": {"package": "zorkview"}})
        if status != 200:
            break  # too long for the context at all: the lengths before it were tried
        r = json.loads(raw)
        seen.append((repeat, len(r["sources"])))
        if not r["sources"]:
            answer = r["choices"][0]["message"]["content"]
            assert not answer.startswith("Use"), answer
            return
    raise AssertionError(f"no question length left the passage out: {seen}")


def zork_chat_stream(**rag):
    """The content deltas of a streamed chat with rag (logprobs on) about zork maps, its one
    passage zorkview's; rag's keywords join the request's rag object."""
    add_zorkview()
    ask = {"messages": [{"role": "user", "content": "How can I look at zork maps?"}],
           "max_tokens": 6, "temperature": 0, "stream": True, "logprobs": True,
           "rag": dict({"k": 1, "filter": {"package": "zorkview"}}, **rag)}
    status, _, raw = post("/v1/chat/completions", ask)
    assert status == 200, raw
    content = [c for c in stream_choices(raw) if c["delta"].get("content")]
    assert content, raw
    return content


def test_answer_prefix_has_no_logprobs_and_can_be_turned_off():
    """Chat with rag, streamed with logprobs: "Use" is a delta of its own with no logprobs (it
    was not sampled) and each token's logprobs come with its own text. A request with
    answer_prefix false gets no opening: every delta is sampled text with its logprobs."""
    content = zork_chat_stream()
    assert content[0]["delta"] == {"role": "assistant", "content": "Use"}, content[0]
    assert content[0]["logprobs"] == {"content": [], "refusal": None}, content[0]
    for c in content[1:]:
        toks = "".join(e["token"] for e in c["logprobs"]["content"])
        assert toks == c["delta"]["content"], c  # a token's logprobs travel with its text
    for c in zork_chat_stream(answer_prefix=False):
        assert c["logprobs"]["content"], c  # sampled: no opening was sent
    status, _, raw = post("/v1/rag", {"question": "q", "answer_prefix": "Use"})
    assert status == 400 and b"answer_prefix" in raw, raw


def test_answer_prefix_setting_turns_it_off():
    """rag.answer_prefix = false: no answer opens with "Use", though the request does not ask.
    (Restarts cairnd with the setting: the tests after this one see it.)"""
    add_zorkview()  # before the restart: the new cairnd keeps the passage
    d = _state["d"]
    assert d.stop() == 0, d.output()
    d.__exit__()
    _state["d"] = Daemon(*_state["args"], "--rag.answer_prefix=false")
    for c in zork_chat_stream():
        assert c["logprobs"]["content"], c  # sampled text only: no opening was sent


def test_zz_stop():
    d = _state.pop("d", None)
    if d:
        assert d.stop() == 0, d.output()
        out = d.output()
        assert "AddressSanitizer" not in out and "LeakSanitizer" not in out, out[-3000:]
        d.__exit__()
    if "tmp" in _state:
        _state.pop("tmp").cleanup()


if __name__ == "__main__":
    run_tests(globals())
