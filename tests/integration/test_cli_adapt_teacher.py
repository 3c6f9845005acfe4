"""The cloud's teacher is a file of the operator's choice: `cairn adapt eval --teacher FILE` and
cairnd's `edge.teacher`. A usable file runs and is named (architecture, SHA-256) in the output;
a missing or malformed one, or cloud or selection parameters out of range, fail before any stream runs with
an error that names the file or the parameter."""
import hashlib
import json
import os
import subprocess
import tempfile

from harness import BIN, Daemon, free_port, http, run_tests
from test_cli_adapt_stream import fmnist_test, write_stream

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
MODELS = os.path.join(ROOT, "adapt", "models")
EDGE = os.path.join(MODELS, "edge.gguf")


def adapt_eval(teacher, *args):
    return subprocess.run([os.path.join(BIN, "cairn"), "adapt", "eval", "--edge", EDGE,
                           "--teacher", teacher, *args],
                          capture_output=True, text=True, timeout=300)


def test_teacher_file_is_used_and_named():
    img, lab = fmnist_test(64)
    # The plain foundation model, and the edge model itself (any adapt/nn file with batchnorms
    # that takes 28 x 28 images and gives 10 classes can teach).
    # The second run also names the cloud's seed (the default is 1).
    for teacher, arch, seed in ((os.path.join(MODELS, "foundation.gguf"), "foundation", []),
                                (EDGE, "edge", ["--seed", "7"])):
        with tempfile.TemporaryDirectory() as d:
            write_stream(d, img, lab, 64)
            r = adapt_eval(teacher, "--stream", d, "--methods", "cema", "--images", "64",
                           "--devices", "1", "--temperature", "2", "--edge-steps", "2",
                           "--upload-fraction", "0.25", *seed)
            assert r.returncode == 0, r.stderr
            lines = [json.loads(l) for l in r.stdout.splitlines() if l.startswith("{")]
            assert len(lines) == 1 and lines[0]["method"] == "cema", r.stdout
            with open(teacher, "rb") as f:
                sha = hashlib.sha256(f.read()).hexdigest()
            assert lines[0]["teacher"] == arch and lines[0]["teacher_sha256"] == sha, lines[0]
            assert f"teacher {teacher}: {arch}," in r.stderr, r.stderr
            assert "temperature 2 " in r.stderr and "edge_steps 2 " in r.stderr, r.stderr
            want = int(seed[1]) if seed else 1
            assert lines[0]["seed"] == want and f" seed {want}\n" in r.stderr, r.stderr
            # Two batches of 32 on one device, a budget of 8 each.
            assert lines[0]["upload_fraction"] == 0.25, lines[0]
            assert 0 < lines[0]["uploaded_fraction"] <= 0.25, lines[0]


def test_bad_teacher_or_parameters_fail_before_any_stream():
    with tempfile.TemporaryDirectory() as d:
        missing = os.path.join(d, "no-such-teacher.gguf")
        r = adapt_eval(missing, "--severities", "5", "--corruptions", "fog")
        assert r.returncode == 1 and f"teacher {missing}" in r.stderr, r.stderr
        assert "{" not in r.stdout, r.stdout  # not even none and bn ran
        garbage = os.path.join(d, "garbage.gguf")
        with open(garbage, "wb") as f:
            f.write(b"GGUF" + bytes(range(200)))
        r = adapt_eval(garbage, "--severities", "5", "--corruptions", "fog")
        assert r.returncode == 1 and f"teacher {garbage}" in r.stderr, r.stderr
        assert "{" not in r.stdout, r.stdout
    teacher = os.path.join(MODELS, "foundation.gguf")
    r = adapt_eval(teacher, "--severities", "5", "--corruptions", "fog", "--temperature", "0")
    assert r.returncode == 1 and "parameters out of range" in r.stderr, r.stderr
    assert f"cloud with teacher {teacher}" in r.stderr, r.stderr
    r = adapt_eval(teacher, "--severities", "5", "--corruptions", "fog", "--upload-fraction", "1.5")
    assert r.returncode == 1 and "upload_fraction 1.5 out of range" in r.stderr, r.stderr
    assert "{" not in r.stdout, r.stdout
    for bad in ("-1", "x", "", "18446744073709551616"):
        r = adapt_eval(teacher, "--seed", bad)
        assert r.returncode == 2 and "--seed wants an unsigned integer" in r.stderr, r.stderr
    r = adapt_eval(teacher, "--edge-steps", "0")
    assert r.returncode == 2 and "--edge-steps wants an integer in 1..64" in r.stderr, r.stderr
    # The teacher is not loaded when no method needs the cloud.
    r = adapt_eval("/nonexistent-teacher.gguf", "--methods", "none,bn", "--severities", "5",
                   "--corruptions", "fog", "--images", "64")
    assert r.returncode == 0, r.stderr


def refused_start(flag, words):
    """cairnd with the edge API and `flag` refuses to start, naming `words`."""
    with tempfile.TemporaryDirectory() as d:
        r = subprocess.run([os.path.join(BIN, "cairnd"), "--host=127.0.0.1",
                            f"--port={free_port()}", f"--data-dir={d}",
                            "--edge.enrollment_token=t0ken", f"--edge.models={MODELS}", flag],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode != 0 and words in r.stderr, r.stderr


def test_cairnd_edge_teacher():
    refused_start("--edge.teacher=/nonexistent-teacher.gguf", "/nonexistent-teacher.gguf")
    # With a usable teacher file outside edge.models, the edge API is served.
    with Daemon("--edge.enrollment_token=t0ken", f"--edge.models={MODELS}",
                f"--edge.teacher={EDGE}") as dmn:
        status, _, body = http("GET", dmn.url + "/v1/edge/models/edge")
        assert status in (200, 401), (status, body)  # served (auth is a device's key)
    # edge.min_steps: the cloud's steps per update at least, 0..8 (bundle_every); out of range
    # it is refused by name, in range the edge API is served.
    refused_start("--edge.min_steps=9", "edge.min_steps")
    with Daemon("--edge.enrollment_token=t0ken", f"--edge.models={MODELS}",
                "--edge.min_steps=4") as dmn:
        status, _, body = http("GET", dmn.url + "/v1/edge/models/edge")
        assert status in (200, 401), (status, body)


if __name__ == "__main__":
    run_tests(globals())
