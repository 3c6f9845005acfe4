"""The web UI in a real browser: Debian's chromium, headless, driven by Selenium through
chromium-driver, against a real cairnd on loopback with the real models, Redis and the edge API.

- Without a key the page shows only the key form, and nothing it could ask for is answered;
- the chat streams an answer and lists its sources with the stages' timings;
- a PDF and an HTML file uploaded from the page are found by a search from the page;
- a summarization job queued from the page shows its summary;
- the edge fleet page lists an enrolled device; the metrics page draws every chart.

With CAIRN_SCREENSHOTS=<dir> set, each page is saved there as ui-<page>.png (docs/img holds the
ones the README shows)."""
import json
import os
import tempfile
import time

from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

import edgeproto
from harness import Daemon, Redis, http, run_tests, wait_until
from pdfgen import make_pdf

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
MODELS = os.environ.get("CAIRN_TEST_MODELS", "data/models")
SHOTS = os.environ.get("CAIRN_SCREENSHOTS")
KEY = "ui-key-5e1f"
CHROMIUM = os.environ.get("CAIRN_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CAIRN_CHROMEDRIVER", "/usr/bin/chromedriver")
PASSAGES = [
    "Sea otters eat sea urchins, crabs and clams, and they float on their backs to eat.",
    "Basalt is a dark volcanic rock that forms when lava cools quickly.",
    "Cairns are piles of stones that mark hiking trails above the tree line.",
    "The Debian project packages free software for many processor architectures.",
]
PDF_SENTENCE = "The Zephyrine lighthouse keeper logs every passing whale in a green ledger."
HTML_SENTENCE = "Quartz sundials at Marrowby Abbey measure the hours by moonlight."
_state = {}


def setup():
    if "d" in _state:
        return _state["d"], _state["b"]
    tmp = tempfile.TemporaryDirectory(prefix="cairn-ui-")
    corpus = os.path.join(tmp.name, "corpus.jsonl")
    with open(corpus, "w") as f:
        for i, t in enumerate(PASSAGES):
            f.write(json.dumps({"id": f"p{i}", "text": t, "metadata": {"source": "corpus"}}) + "\n")
    _state["tmp"] = tmp
    _state["redis"] = Redis()
    _state["d"] = Daemon(f"--model.path={MODELS}/gemma-3-270m-q4_k_m.gguf",
                         f"--embed.model={MODELS}/all-minilm-l6-v2.gguf",
                         f"--auth.api_keys={KEY}", f"--rag.corpus={corpus}",
                         f"--rag.dir={tmp.name}/index", "--workers.ctx=768",
                         "--limits.max_tokens=64", f"--redis.url={_state['redis'].url}",
                         "--jobs.runners=1", "--jobs.summary_tokens=16",
                         "--edge.enrollment_token=ui-enroll",
                         f"--edge.models={os.path.join(ROOT, 'adapt', 'models')}",
                         f"--web.dir={os.path.join(ROOT, 'web')}")
    assert os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER), \
        "chromium and chromium-driver are not installed (scripts/setup installs them)"
    opts = Options()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--window-size=1400,1000", "--force-device-scale-factor=1",
              f"--user-data-dir={tmp.name}/chromium"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    _state["b"] = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    _state["b"].set_script_timeout(30)
    return _state["d"], _state["b"]


def js(script, *args):
    return _state["b"].execute_script(script, *args)


def visible(elem_id):
    return js("const e = document.getElementById(arguments[0]);"
              "return !!e && !e.hidden && e.offsetParent !== null;", elem_id)


def texts(css):
    """The text of every element matching css, read in one step: the pages redraw their tables
    while they poll, so element handles held across calls can go stale."""
    return js("return Array.from(document.querySelectorAll(arguments[0]), (e) => e.innerText);",
              css)


def shot(name):
    if SHOTS:
        os.makedirs(SHOTS, exist_ok=True)
        _state["b"].save_screenshot(os.path.join(SHOTS, f"ui-{name}.png"))


def tab(name):
    _state["b"].find_element(By.CSS_SELECTOR, f"#tabs button[data-tab={name}]").click()
    assert wait_until(lambda: visible(f"tab-{name}"), 10), name


def access_lines(d, since):
    return [l for l in d.output()[since:].splitlines() if " access request " in l]


def console_errors():
    """Severe messages in the browser console, except the 401s the key gate provokes."""
    return [e["message"] for e in _state["b"].get_log("browser")
            if e["level"] == "SEVERE" and "401" not in e["message"]]


def test_a_page_without_a_key_gets_nothing():
    d, b = setup()
    mark = len(d.output())
    b.get(d.url + "/")
    assert wait_until(lambda: visible("gate"), 20), "the key form did not appear"
    time.sleep(1)  # long enough for anything the page might fetch on its own
    assert not visible("app") and not visible("tabs")
    shot("key")
    # A wrong key is refused and the page stays closed.
    b.find_element(By.ID, "gate-key").send_keys("not-the-key")
    b.find_element(By.CSS_SELECTOR, "#gate-form button").click()
    assert wait_until(lambda: "refused" in texts("#gate-error")[0], 10)
    assert not visible("app")
    # Whatever the page (or anything in it) asks cairnd without the key is refused.
    got = js("const paths = ['/v1/documents', '/v1/edge/fleet', '/v1/jobs/abc'];"
             "return Promise.all(paths.map((p) => fetch(p).then((r) => r.status)));")
    assert got == [401, 401, 401], got
    lines = access_lines(d, mark)
    api = [l for l in lines if " route=/v1/" in l or " route=/metrics " in l]
    assert api and all(" status=401 " in l for l in api), "\n".join(api)
    assert all(" route=/v1/models " in l for l in api[:2]), api  # the page asked nothing else
    assert console_errors() == []


def test_chat_streams_an_answer_with_its_sources():
    d, b = setup()
    b.find_element(By.ID, "gate-key").clear()
    b.find_element(By.ID, "gate-key").send_keys(KEY)
    b.find_element(By.CSS_SELECTOR, "#gate-form button").click()
    assert wait_until(lambda: visible("app") and visible("tab-chat"), 20)
    b.find_element(By.ID, "chat-k").clear()
    b.find_element(By.ID, "chat-k").send_keys("2")
    b.find_element(By.ID, "chat-max").clear()
    b.find_element(By.ID, "chat-max").send_keys("32")
    b.find_element(By.ID, "chat-input").send_keys("What do sea otters eat? Answer in a sentence.")
    b.find_element(By.ID, "chat-send").click()
    # The answer grows while it streams: record the lengths seen before the last chunk.
    lengths = set()
    t0 = time.time()
    while time.time() - t0 < 300:
        state = js("const m = document.querySelector('.msg.assistant');"
                   "return m ? [m.dataset.done === '1', m.querySelector('.answer').textContent.length]"
                   " : [false, 0];")
        if state[0]:
            break
        if state[1]:
            lengths.add(state[1])
        time.sleep(0.03)
    else:
        raise AssertionError("no complete answer within 300 s")
    answer = texts(".msg.assistant .answer")[0]
    final = len(js("return document.querySelector('.msg.assistant .answer').textContent;"))
    assert answer.strip(), "empty answer"
    assert any(0 < n < final for n in lengths), (lengths, final, answer)
    sources = texts(".msg.assistant .sources li")
    assert len(sources) == 2 and any("otters" in s for s in sources), sources
    timings = texts(".msg.assistant .timings")[0]
    for stage in ("embed", "search", "first token", "total"):
        assert stage in timings, timings
    assert not b.find_elements(By.CSS_SELECTOR, ".msg.assistant .error")
    shot("chat")


def test_uploaded_pdf_and_html_are_found_by_a_search():
    d, b = setup()
    tab("docs")
    folder = _state["tmp"].name
    pdf = os.path.join(folder, "keeper.pdf")
    with open(pdf, "wb") as f:
        f.write(make_pdf([PDF_SENTENCE], title="Keeper's log"))
    page = os.path.join(folder, "abbey.html")
    with open(page, "w") as f:
        f.write(f"<html><head><title>Abbey</title></head><body><h1>Marrowby</h1>"
                f"<p>{HTML_SENTENCE}</p></body></html>")
    b.find_element(By.ID, "upload-files").send_keys(pdf + "\n" + page)
    b.find_element(By.ID, "upload-meta").send_keys('{"shelf": "b2"}')
    b.find_element(By.CSS_SELECTOR, "#upload-form button").click()

    def uploaded():
        items = texts("#upload-results li")
        return len(items) == 2 and all("passage" in t for t in items) and items
    items = wait_until(uploaded, 120)
    assert items, texts("#upload-results li")
    assert any("keeper.pdf (pdf" in t for t in items) and any("abbey.html (html" in t
                                                               for t in items), items
    for query, sentence in (("Who records the whales passing the lighthouse?", PDF_SENTENCE),
                            ("sundials that tell the time by moonlight", HTML_SENTENCE)):
        box = b.find_element(By.ID, "search-q")
        box.clear()
        box.send_keys(query)
        b.find_element(By.CSS_SELECTOR, "#search-form button").click()
        first = wait_until(lambda: (texts("#search-results li") or [None])[0], 60)
        assert first and sentence in first, (query, first)
    # The listing, filtered by the metadata the upload gave.
    b.find_element(By.ID, "list-key").send_keys("shelf")
    b.find_element(By.ID, "list-value").send_keys("b2")
    b.find_element(By.CSS_SELECTOR, "#list-form button[type=submit]").click()
    rows = wait_until(lambda: len(texts("#doc-table tbody tr")) == 2, 30)
    assert rows, texts("#list-info")
    shot("documents")


def test_a_queued_job_shows_its_summary():
    d, b = setup()
    tab("jobs")
    text = ("The Alder river runs 27 kilometres through three villages. Its mill still grinds "
            "flour at kilometre five, and the villagers draw their water from it.")
    b.find_element(By.ID, "job-text").send_keys(text)
    b.find_element(By.CSS_SELECTOR, "#job-form button[type=submit]").click()
    assert wait_until(lambda: b.find_elements(By.CSS_SELECTOR, "#job-table tbody tr"), 20)

    def done():
        cells = texts("#job-table tbody tr:first-child td")
        return len(cells) == 4 and cells[1] in ("done", "failed") and (cells[1], cells[3])
    got = wait_until(done, 400, every=0.5)
    assert got and got[0] == "done" and got[1].strip(), got
    shot("jobs")


def test_edge_fleet_page_lists_the_devices():
    d, b = setup()
    dev, key = edgeproto.enroll(d.url, "ui-enroll", "greenhouse-7")
    for seq in range(1, 4):
        edgeproto.upload(d.url, dev, key, 12, seq=seq, seed=seq)
    # Let the cloud take a step or two, so the chart has points (it runs at idle priority).
    wait_until(lambda: json.loads(http("GET", d.url + "/v1/edge/fleet",
                                       headers={"Authorization": f"Bearer {KEY}"})[2])
               ["totals"]["steps"] >= 2, 60, every=0.5)
    tab("edge")
    row = wait_until(lambda: [t for t in texts("#edge-devices tbody tr") if dev in t], 30)
    assert row and "greenhouse-7" in row[0] and "36" in row[0].split(), row
    time.sleep(0.5)
    shot("edge")


def painted(canvas_id):
    """Pixels of the canvas that are not transparent."""
    return js("const c = document.getElementById(arguments[0]);"
              "const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
              "let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i]) n++; return n;",
              canvas_id)


def test_metrics_page_draws_its_charts():
    d, b = setup()
    tab("metrics")
    time.sleep(2.5)  # a first sample, so that the next ones have something to differ from
    for _ in range(2):  # a little traffic inside the page's 30 s window
        status, _, body = http("POST", d.url + "/v1/chat/completions", json.dumps(
            {"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4}),
            headers={"Authorization": f"Bearer {KEY}"}, timeout=300)
        assert status == 200, body
    has_ttft = ("const c = Chart.getChart('m-ttft');"
                "return !!c && c.data.datasets[0].data.some((v) => v !== null);")
    assert wait_until(lambda: js(has_ttft), 20), "no TTFT percentile drawn"
    for cid in ("m-ttft", "m-itl", "m-tput", "m-queues", "m-ratios", "m-http"):
        assert painted(cid) > 500, cid
    cards = texts("#metric-cards")[0]
    assert "passages indexed" in cards and "tokens generated" in cards, cards
    assert texts("#metrics-note") == [""]
    shot("metrics")
    assert console_errors() == []


def test_zz_clean_stop():
    b = _state.pop("b", None)
    if b:
        try:
            b.quit()
        except WebDriverException:
            pass
    d = _state.pop("d")
    assert d.stop() == 0, d.output()
    assert "AddressSanitizer" not in d.output()
    d.__exit__()
    _state.pop("redis").close()
    _state.pop("tmp").cleanup()


if __name__ == "__main__":
    run_tests(globals())
