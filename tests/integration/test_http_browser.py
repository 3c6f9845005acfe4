"""cairnd's HTTP for browsers and operators, on a real process: CORS for the configured origins
(a preflight from one gets 204 with the headers, from another 403 and no CORS header at all),
X-Request-Id on every answer (taken from the request when valid), and one access-log line per
request with its id, route pattern, status, sizes and key id, never the key."""
import hashlib
import re
import time

from harness import Daemon, http, run_tests, wait_until

KEY = "browser-key-0123456789"
ALLOWED = "https://ui.example"
_state = {}


def daemon():
    if "d" not in _state:
        # No model in the empty data dir: /v1 answers 503 past auth, which is all these need.
        _state["d"] = Daemon(f"--auth.api_keys={KEY}",
                             f"--http.cors_origins={ALLOWED}, http://localhost:3000")
    return _state["d"]


def cors_headers(headers):
    return {k: v for k, v in headers.items() if k.lower().startswith("access-control-")}


def test_preflight_from_an_allowed_origin():
    d = daemon()
    status, h, _ = http("OPTIONS", d.url + "/v1/chat/completions", headers={
        "Origin": ALLOWED, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})
    assert status == 204, status
    assert h["Access-Control-Allow-Origin"] == ALLOWED
    assert "POST" in h["Access-Control-Allow-Methods"]
    allowed = h["Access-Control-Allow-Headers"].lower()
    assert "authorization" in allowed and "content-type" in allowed
    assert int(h["Access-Control-Max-Age"]) > 0
    assert h.get("X-Request-Id")
    # A path the server does not have is 404 for a preflight too.
    status, _, _ = http("OPTIONS", d.url + "/v1/nope", headers={
        "Origin": ALLOWED, "Access-Control-Request-Method": "GET"})
    assert status == 404


def test_preflight_from_another_origin_gets_no_cors_headers():
    d = daemon()
    status, h, body = http("OPTIONS", d.url + "/v1/chat/completions", headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert status == 403, status
    assert cors_headers(h) == {}, h
    assert b"evil.example" in body
    # The call itself is answered (a browser will not let the page read it): no CORS headers.
    status, h, _ = http("GET", d.url + "/v1/models", headers={
        "Origin": "https://evil.example", "Authorization": f"Bearer {KEY}"})
    assert status == 200 and cors_headers(h) == {}


def test_answers_to_an_allowed_origin_carry_cors_headers():
    d = daemon()
    status, h, _ = http("GET", d.url + "/v1/models", headers={
        "Origin": "http://localhost:3000", "Authorization": f"Bearer {KEY}"})
    assert status == 200
    assert h["Access-Control-Allow-Origin"] == "http://localhost:3000"
    assert "X-Request-Id" in h["Access-Control-Expose-Headers"]
    # Errors too: a 401 the page must be able to read.
    status, h, _ = http("GET", d.url + "/v1/models", headers={"Origin": ALLOWED})
    assert status == 401 and h["Access-Control-Allow-Origin"] == ALLOWED


def test_request_ids():
    d = daemon()
    ids = set()
    for path in ("/health", "/metrics", "/v1/models", "/nope"):
        _, h, _ = http("GET", d.url + path)
        assert re.fullmatch(r"[0-9a-f]{16}", h["X-Request-Id"]), h
        ids.add(h["X-Request-Id"])
    assert len(ids) == 4
    _, h, _ = http("GET", d.url + "/health", headers={"X-Request-Id": "client-7.b:c_d"})
    assert h["X-Request-Id"] == "client-7.b:c_d"
    for bad in ("has space", "quote\"d", "x" * 65, "ünïcode"):
        _, h, _ = http("GET", d.url + "/health", headers={"X-Request-Id": bad.encode()})
        assert h["X-Request-Id"] != bad and re.fullmatch(r"[0-9a-f]{16}", h["X-Request-Id"])


def test_access_log_has_one_line_per_request_with_its_id():
    d = daemon()
    sent = {
        "log-health": ("GET", "/health", {}),
        "log-models": ("GET", "/v1/models", {"Authorization": f"Bearer {KEY}"}),
        "log-denied": ("GET", "/v1/models", {"Authorization": "Bearer wrong"}),
        "log-delete": ("DELETE", "/v1/documents/987654321?secret=1",
                       {"Authorization": f"Bearer {KEY}"}),
        "log-missing": ("GET", "/no/such/path", {}),
    }
    for rid, (method, path, headers) in sent.items():
        http(method, d.url + path, headers=dict(headers, **{"X-Request-Id": rid}))

    def lines():
        return [l for l in d.output().splitlines() if " access request " in l]
    assert wait_until(lambda: all(any(f"id={r} " in l for l in lines()) for r in sent), 10)
    time.sleep(0.3)  # a second line for any of them would have been written by now
    log = lines()
    by_id = {r: [l for l in log if f"id={r} " in l] for r in sent}
    assert all(len(v) == 1 for v in by_id.values()), by_id
    key_id = "sha256:" + hashlib.sha256(KEY.encode()).hexdigest()[:8]
    line = by_id["log-models"][0]
    for field in ("method=GET", "route=/v1/models", "status=200", f"key={key_id}"):
        assert field in line, (field, line)
    assert re.search(r" bytes=\d+ bytes_in=0 duration_ms=[0-9.]+ ", line), line
    assert "route=/health status=200" in by_id["log-health"][0]
    assert "status=401" in by_id["log-denied"][0] and "key=-" in by_id["log-denied"][0]
    # Route patterns, never raw paths or query strings.
    assert "method=DELETE route=/v1/documents/* status=503" in by_id["log-delete"][0]
    assert "route=other status=404" in by_id["log-missing"][0]
    text = d.output()
    assert KEY not in text and "secret" not in text and "987654321" not in text


def test_the_web_ui_is_served():
    d = daemon()
    status, h, body = http("GET", d.url + "/")
    assert status == 200 and h["Content-Type"].startswith("text/html"), h
    assert b"<title>cairn</title>" in body
    csp = h["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "default-src 'self'" in csp, csp
    assert h["X-Content-Type-Options"] == "nosniff" and h.get("ETag")
    status, h2, _ = http("GET", d.url + "/", headers={"If-None-Match": h["ETag"]})
    assert status == 304
    for name, ctype in (("app.js", "text/javascript"), ("style.css", "text/css"),
                        ("chart.js", "text/javascript")):
        status, h, body = http("GET", d.url + "/ui/" + name)
        assert status == 200 and h["Content-Type"].startswith(ctype) and body, name
    # Only the files read at start: nothing else on disk can be named.
    for path in ("/ui/nope.js", "/ui/../services/http.c", "/ui/%2e%2e/CMakeLists.txt", "/ui/"):
        assert http("GET", d.url + path)[0] == 404, path


def test_zz_clean_stop():
    d = _state.pop("d")
    assert d.stop() == 0, d.output()
    assert "AddressSanitizer" not in d.output()
    d.__exit__()


if __name__ == "__main__":
    run_tests(globals())
