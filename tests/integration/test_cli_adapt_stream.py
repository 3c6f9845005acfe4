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


def adapt_corrupt(*args):
    return subprocess.run([os.path.join(BIN, "cairn"), "adapt", "corrupt", *args],
                          capture_output=True, text=True, timeout=300)


def read_idx(d):
    with open(os.path.join(d, "images-idx3-ubyte"), "rb") as f:
        img = f.read()
    with open(os.path.join(d, "labels-idx1-ubyte"), "rb") as f:
        lab = f.read()
    return img, lab


def test_corrupt_writes_the_suites_streams():
    # Brightness at severity 5 is x + 0.5, clipped (docs/ADAPT.md): the bytes are computable
    # here. The images are adapt eval's evenly spaced subset, i * 10000 / n, one part per
    # corruption in the order given.
    n = 50
    with gzip.open(os.path.join(FMNIST, "t10k-images-idx3-ubyte.gz")) as f:
        raw = f.read()[16:]
    with gzip.open(os.path.join(FMNIST, "t10k-labels-idx1-ubyte.gz")) as f:
        labels = f.read()[8:]
    picks = [i * 10000 // n for i in range(n)]
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "mixed")
        r = adapt_corrupt("--out", out, "--corruptions", "brightness,fog,brightness",
                          "--severity", "5", "--images", str(n))
        assert r.returncode == 0, r.stderr
        assert f"wrote {3 * n} images" in r.stdout, r.stdout
        img, lab = read_idx(out)
        assert struct.unpack(">IIII", img[:16]) == (0x803, 3 * n, 28, 28)
        assert struct.unpack(">II", lab[:8]) == (0x801, 3 * n)
        assert lab[8:] == bytes(labels[i] for i in picks) * 3
        expect = b"".join(bytes(min(255, int(round(min(1.0, b / 255 + 0.5) * 255)))
                                for b in raw[i * 784:(i + 1) * 784]) for i in picks)
        part = n * 784
        body = img[16:]
        # x + 0.5 is x + 127.5 byte levels, a half: float rounding may land on either side.
        assert all(abs(a - b) <= 1 for a, b in zip(body[:part], expect)), "brightness bytes"
        assert body[2 * part:] == body[:part]  # same corruption and seed: the same stream
        assert body[part:2 * part] != body[:part]
        # The file is a stream adapt eval reads back in its order.
        r = adapt_eval("--stream", out, "--methods", "none,bn", "--images", str(3 * n))
        assert r.returncode == 0, r.stderr
        assert f"the first {3 * n} of its {3 * n} images" in r.stderr, r.stderr
        # The train split draws other images.
        r = adapt_corrupt("--out", out, "--corruptions", "brightness", "--images", str(n),
                          "--split", "train")
        assert r.returncode == 0, r.stderr
        img2, _ = read_idx(out)
        assert img2[16:] != body[:part]
        # The holdout: training images 48,000..59,999 (the committed teacher never saw them),
        # evenly spaced, with draws of their own.
        with gzip.open(os.path.join(FMNIST, "train-labels-idx1-ubyte.gz")) as f:
            train_labels = f.read()[8:]
        r = adapt_corrupt("--out", out, "--corruptions", "brightness", "--images", str(n),
                          "--split", "holdout")
        assert r.returncode == 0 and "holdout split" in r.stdout, r.stderr
        _, lab3 = read_idx(out)
        assert lab3[8:] == bytes(train_labels[48000 + i * 12000 // n] for i in range(n))
        r = adapt_eval("--stream", out, "--methods", "none", "--images", str(n))
        assert r.returncode == 0, r.stderr
        r = adapt_eval("--split", "holdout", "--methods", "none", "--severities", "5",
                       "--corruptions", "brightness", "--images", str(n))
        assert r.returncode == 0, r.stderr
        line = json.loads(next(l for l in r.stdout.splitlines() if l.startswith("{")))
        assert line["split"] == "holdout" and line["images"] == n, line


def test_corrupt_refuses_bad_options():
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "s")
        for args, msg in ((["--corruptions", "nope", "--out", out], "unknown corruption 'nope'"),
                          (["--corruptions", "fog"], "--out and --corruptions are required"),
                          (["--corruptions", "fog", "--out", out, "--severity", "6"],
                           "--severity wants an integer in 1..5"),
                          (["--corruptions", "fog", "--out", out, "--images", "0"],
                           "--images wants an integer in 1..10000"),
                          (["--corruptions", "fog", "--out", out, "--split", "val"],
                           "--split wants test, train or holdout"),
                          (["--corruptions", ",".join(["fog"] * 11), "--out", out,
                            "--images", "10000"], "11 corruptions x 10000 images is over 100,000")):
            r = adapt_corrupt(*args)
            assert r.returncode == 2 and msg in r.stderr, (args, r.stderr)
        assert not os.path.exists(out)
        r = adapt_corrupt("--corruptions", "fog", "--out", os.path.join(d, "no", "such"),
                          "--images", "10")
        assert r.returncode == 1 and "No such file or directory" in r.stderr, r.stderr


if __name__ == "__main__":
    run_tests(globals())
