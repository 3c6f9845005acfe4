"""`cairn adapt eval --stream DIR`: an operator's own stream of images in the IDX format, evaluated
with the committed edge model, and the errors a malformed stream directory gets."""
import gzip
import json
import os
import struct
import subprocess
import tempfile

from harness import BIN, run_tests

FMNIST = "/usr/share/datasets/fashion-mnist"
ROOT = os.path.join(os.path.dirname(__file__), "..", "..")


def fmnist_test(n):
    with gzip.open(os.path.join(FMNIST, "t10k-images-idx3-ubyte.gz")) as f:
        img = f.read()[16:16 + n * 784]
    with gzip.open(os.path.join(FMNIST, "t10k-labels-idx1-ubyte.gz")) as f:
        lab = f.read()[8:8 + n]
    return img, lab


def write_stream(d, img, lab, n, gz=False):
    op = gzip.open if gz else open
    ext = ".gz" if gz else ""
    with op(os.path.join(d, "images-idx3-ubyte" + ext), "wb") as f:
        f.write(struct.pack(">IIII", 0x803, n, 28, 28) + img)
    with op(os.path.join(d, "labels-idx1-ubyte" + ext), "wb") as f:
        f.write(struct.pack(">II", 0x801, len(lab)) + lab)


def adapt_eval(*args):
    return subprocess.run([os.path.join(BIN, "cairn"), "adapt", "eval",
                           "--edge", os.path.join(ROOT, "adapt/models/edge.gguf"),
                           "--foundation", os.path.join(ROOT, "adapt/models/foundation.gguf"),
                           *args], capture_output=True, text=True, timeout=300)


def test_stream_is_evaluated_in_order():
    img, lab = fmnist_test(300)
    inverted = bytes(255 - b for b in img)  # a shift the corruption suite does not have
    for gz in (False, True):
        with tempfile.TemporaryDirectory() as d:
            write_stream(d, inverted, lab, 300, gz)
            r = adapt_eval("--stream", d, "--methods", "none,bn", "--images", "120")
            assert r.returncode == 0, r.stderr
            lines = [json.loads(l) for l in r.stdout.splitlines() if l.startswith("{")]
            assert [l["method"] for l in lines] == ["none", "bn"], r.stdout
            for l in lines:
                assert l["corruption"] == "stream" and l["images"] == 120, l
                assert 0.0 <= l["accuracy"] <= 1.0
            assert "the first 120 of its 300 images" in r.stderr, r.stderr
            assert "| stream | – |" in r.stdout, r.stdout


def test_malformed_streams_are_refused_clearly():
    img, lab = fmnist_test(20)
    with tempfile.TemporaryDirectory() as d:
        r = adapt_eval("--stream", d)
        assert r.returncode != 0 and "images-idx3-ubyte[.gz] not found" in r.stderr, r.stderr
        write_stream(d, img, lab[:19], 20)  # one label short
        r = adapt_eval("--stream", d)
        assert r.returncode != 0 and "20 images" in r.stderr and "19 labels" in r.stderr, r.stderr
        write_stream(d, img[:-50], lab, 20)  # truncated images
        r = adapt_eval("--stream", d)
        assert r.returncode != 0 and "data bytes" in r.stderr, r.stderr
        with open(os.path.join(d, "images-idx3-ubyte"), "r+b") as f:
            f.write(b"\x12\x34")  # wrong magic
        r = adapt_eval("--stream", d)
        assert r.returncode != 0 and "bad magic" in r.stderr, r.stderr


if __name__ == "__main__":
    run_tests(globals())
