"""Shared by the edge SDK's integration tests (test_edge_install.py, test_edge_aarch64.py): a real
cairnd serving the edge API on loopback with a known Ed25519 signing key, device enrollment, real
Fashion-MNIST images for the example, a proxy that tampers with the bundles cairnd sends, and the
scenario every build of the example must pass.

The scenario, for an example program given as a command prefix (a native binary, or qemu-aarch64
and an aarch64 one):
  1. the device classifies 64 images and uploads what CEMA selects; cairnd adapts and publishes a
     signed bundle;
  2. the bundle reaches the device through a proxy that flips one byte of its signed payload, then
     cut in half, then replaced by garbage, and with the wrong public key pinned: each time the
     SDK refuses it (exit status 3, a clear reason, the model stays at version 0);
  3. the untouched bundle is fetched, verified and applied (exit 0, "update: applied").
"""
import gzip
import os
import re
import subprocess
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from harness import Daemon, http, wait_until

TOP = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
MODELS = os.path.join(TOP, "adapt", "models")
FMNIST = "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz"
TOKEN = "enroll-edge-tests"


def build_dir():
    """The ctest build dir (CAIRN_BIN is its bin/)."""
    return os.path.dirname(os.path.abspath(os.environ.get("CAIRN_BIN", "build/bin")))


def run(cmd, timeout=300, **kw):
    """Runs cmd; returns (exit status, stdout + stderr as text)."""
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout,
                       **kw)
    return p.returncode, p.stdout.decode(errors="replace")


# ---- Keys, images, the cloud ------------------------------------------------------------------

def make_keys(dirname, name="cloud"):
    """An Ed25519 key pair in PEM files (openssl genpkey); returns (private, public) paths."""
    priv = os.path.join(dirname, f"{name}.pem")
    pub = os.path.join(dirname, f"{name}.pub.pem")
    for cmd in (["openssl", "genpkey", "-algorithm", "ed25519", "-out", priv],
                ["openssl", "pkey", "-in", priv, "-pubout", "-out", pub]):
        rc, out = run(cmd, timeout=30)
        assert rc == 0, f"{cmd}: {out}"
    return priv, pub


def write_images(path, n, first=0):
    """n Fashion-MNIST test images as the example reads them: 28x28 little-endian float32 in
    [0, 1], one after the other."""
    import array
    with gzip.open(FMNIST, "rb") as f:
        data = f.read()
    assert data[:4] == b"\x00\x00\x08\x03", "not an idx3 file"
    px = data[16 + first * 784:16 + (first + n) * 784]
    assert len(px) == n * 784
    a = array.array("f", (b / 255.0 for b in px))
    if a.itemsize != 4:
        raise AssertionError("float is not 4 bytes")
    with open(path, "wb") as f:
        a.tofile(f)  # the host's byte order: little-endian on x86-64, as on aarch64 Linux


def cloud(tmp):
    """cairnd on loopback serving the edge API, signing with a key whose public half is
    returned: (daemon, public key path)."""
    priv, pub = make_keys(tmp)
    d = Daemon(f"--edge.enrollment_token={TOKEN}", f"--edge.signing_key={priv}",
               f"--edge.models={MODELS}", "--edge.rate=100000")
    return d, pub


def _pb_string(field, s):
    b = s.encode()
    assert len(b) < 128
    return bytes([field << 3 | 2, len(b)]) + b


def _pb_fields(buf):
    """Top-level fields of a protobuf message: [(number, wire type, value bytes or int, start,
    end)], for the length-delimited and varint fields these messages use."""
    out, i = [], 0
    while i < len(buf):
        key, i = _varint(buf, i)
        num, wt = key >> 3, key & 7
        if wt == 0:
            v, j = _varint(buf, i)
            out.append((num, wt, v, i, j))
        elif wt == 2:
            ln, j = _varint(buf, i)
            v = buf[j:j + ln]
            out.append((num, wt, v, j, j + ln))
            j += ln
        else:
            raise AssertionError(f"wire type {wt}")
        i = j
    return out


def _varint(buf, i):
    v = shift = 0
    while True:
        b = buf[i]
        i += 1
        v |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return v, i


def register(d):
    """Enrolls a device (RegisterRequest → RegisterResponse, protobuf); returns (id, key)."""
    body = _pb_string(1, TOKEN) + _pb_string(2, "edge-it") + _pb_string(3, "edge")
    status, _, resp = http("POST", d.url + "/v1/edge/devices", body=body,
                           headers={"Content-Type": "application/x-protobuf"})
    assert status == 200, (status, resp)
    f = {num: v.decode() for num, _, v, _, _ in _pb_fields(resp)}
    return f[1], f[2]


def metric(d, name):
    status, _, body = http("GET", d.url + "/metrics")
    m = re.search(rf"^{name} (\S+)$", body.decode(), re.M)
    return float(m.group(1)) if m else 0.0


# ---- A proxy that tampers with bundles --------------------------------------------------------

def tamper_flip_payload(body):
    """Flips one bit in the middle of the signed payload (UpdateBundle field 1)."""
    for num, wt, v, start, end in _pb_fields(body):
        if num == 1 and wt == 2:
            mid = (start + end) // 2
            return body[:mid] + bytes([body[mid] ^ 0x01]) + body[mid + 1:]
    raise AssertionError("no payload in the bundle")


def tamper_truncate(body):
    return body[:len(body) // 2]


def tamper_garbage(body):
    return bytes((i * 131 + 7) & 0xFF for i in range(len(body)))


class TamperProxy:
    """HTTP on a free loopback port in front of cairnd: bundle requests are forwarded and their 200
    answers pass through `tamper`; sample uploads are answered here (200) and go no further, so
    that runs about refusals add no adaptation work to the cloud (on a loaded machine its
    adaptation thread, at idle priority, would fall behind)."""

    def __init__(self, upstream, tamper):
        proxy = self
        self.upstream, self.tamper, self.tampered = upstream, tamper, 0

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def forward(self):
                n = int(self.headers.get("Content-Length") or 0)
                data = self.rfile.read(n) if n else None
                if self.command == "POST" and self.path == "/v1/edge/samples":
                    status, headers, body = 200, {}, b'{"accepted": 0}'
                else:
                    hdrs = {k: v for k, v in self.headers.items()
                            if k.lower() in ("authorization", "content-type", "accept")}
                    status, headers, body = http(self.command, proxy.upstream + self.path,
                                                 body=data, headers=hdrs)
                if status == 200 and "/bundle" in self.path:
                    body = proxy.tamper(body)
                    proxy.tampered += 1
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", headers.get("Content-Type", "text/plain"))
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the device gave up waiting (its own timeout): nothing to answer

            do_GET = do_POST = forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


# ---- The scenario -------------------------------------------------------------------------------

def example_args(model, pub, url, dev, images, socket=False):
    return (["--socket"] if socket else []) + [model, pub, url, dev[0], dev[1], images]


def scenario(prefix, label, socket=False, env=None):
    """Runs the example (command prefix `prefix`) through the three steps above against a fresh
    cairnd (env: the example's environment); returns the first run's output (its per-image lines)
    for callers that compare builds.
    """
    with tempfile.TemporaryDirectory(prefix="cairn-edge-it-") as tmp:
        images = os.path.join(tmp, "images.f32")
        write_images(images, 64)
        d, pub = cloud(tmp)
        with d:
            dev = register(d)
            model = os.path.join(MODELS, "edge.gguf")

            # 1. Classify and upload; the cloud adapts and publishes a bundle.
            rc, out = run(prefix + example_args(model, pub, d.url, dev, images, socket), env=env)
            print(f"[{label}] first run:\n{out}")
            assert rc == 0, f"first run exited {rc}"
            m = re.search(r"uploaded (\d+)", out)
            assert m and int(m.group(1)) >= 2, "the device uploaded fewer than 2 samples"
            assert wait_until(lambda: metric(d, "cairn_edge_bundles_published_total") >= 1,
                              timeout=120), "cairnd published no bundle:\n" + d.output()[-3000:]
            first = out

            # 2. Tampered bundles and the wrong key: refused, the model keeps version 0.
            for name, tamper, why in (("flipped", tamper_flip_payload, "signature"),
                                      ("truncated", tamper_truncate, ""),
                                      ("garbage", tamper_garbage, "")):
                with TamperProxy(d.url, tamper) as p:
                    rc, out = run(prefix + example_args(model, pub, p.url, dev, images, socket),
                                  env=env)
                    print(f"[{label}] {name} bundle:\n{out}")
                    assert p.tampered >= 1, "the proxy saw no bundle"
                    assert rc == 3, f"a {name} bundle: exit {rc}, want 3 (refused)"
                    line = re.search(r"^update: .*$", out, re.M).group(0)
                    assert line.startswith("update: refused"), line
                    assert line.endswith("version 0)"), line
                    assert why in line, line
            _, other = make_keys(tmp, "other")
            with TamperProxy(d.url, lambda body: body) as p:
                rc, out = run(prefix + example_args(model, other, p.url, dev, images, socket),
                              env=env)
            print(f"[{label}] the wrong key pinned:\n{out}")
            assert rc == 3 and re.search(r"^update: refused.*signature", out, re.M), out

            # 3. The real bundle: verified and applied.
            rc, out = run(prefix + example_args(model, pub, d.url, dev, images, socket), env=env)
            print(f"[{label}] untouched bundle:\n{out}")
            assert rc == 0, f"exit {rc}"
            m = re.search(r"^update: applied \(version (\d+)\)$", out, re.M)
            assert m and int(m.group(1)) >= 1, "the bundle was not applied"
            # cairnd finishes the adaptation step in progress before it exits, and that thread
            # runs at idle priority: on a machine busy with other tests it can take a while.
            t0 = time.time()
            d.stop(timeout=180)
            print(f"[{label}] cairnd stopped in {time.time() - t0:.1f}s")
            return first


def predictions(out):
    """The example's per-image lines → [(image, class, p, entropy)]."""
    return [(int(a), int(b), float(c), float(e)) for a, b, c, e in re.findall(
        r"^image (\d+): class (\d+) \(p ([\d.]+), entropy ([\d.]+)\)", out, re.M)]
