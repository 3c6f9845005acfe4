"""`cairn generate` on the real gemma-3-270m model: streaming, timings, stops, errors."""
import os
import re
import subprocess

from harness import BIN, run_tests

MODEL = os.path.join(os.environ.get("CAIRN_TEST_MODELS", "data/models"), "gemma-3-270m-q4_k_m.gguf")


def generate(*args):
    return subprocess.run([os.path.join(BIN, "cairn"), "generate", *args], capture_output=True,
                          text=True, timeout=600)


def timings(stderr):
    m = re.search(r"\[timings\] prompt (\d+) tokens .*generated (\d+) tokens.*finish: (.+)$",
                  stderr, re.M)
    assert m, stderr
    return int(m.group(1)), int(m.group(2)), m.group(3)


def test_greedy_is_deterministic_and_reports_timings():
    assert os.path.exists(MODEL), f"{MODEL} missing: run scripts/setup"
    a = generate("-m", MODEL, "-p", "The capital of France is", "-n", "12")
    b = generate("-m", MODEL, "-p", "The capital of France is", "-n", "12", "--threads", "1")
    assert a.returncode == 0 and b.returncode == 0, (a.stderr, b.stderr)
    assert a.stdout == b.stdout and a.stdout.strip(), (a.stdout, b.stdout)
    n_prompt, n_gen, finish = timings(a.stderr)
    assert n_prompt >= 5 and 1 <= n_gen <= 12, a.stderr
    assert finish in ("length", "stop token"), finish


def test_stop_string_ends_and_is_not_printed():
    r = generate("-m", MODEL, "-p", "Count: one, two, three, four,", "-n", "40", "--stop", ",")
    assert r.returncode == 0, r.stderr
    assert "," not in r.stdout, r.stdout
    assert timings(r.stderr)[2] == "stop string", r.stderr


def test_chat_and_seeded_sampling():
    args = ("-m", MODEL, "-p", "Name a colour.", "--chat", "-n", "8", "--temp", "0.9",
            "--seed", "7")
    a, b = generate(*args), generate(*args)
    assert a.returncode == 0 and a.stdout == b.stdout, (a.stderr, a.stdout, b.stdout)
    assert "<start_of_turn>" not in a.stdout


def test_bad_input_gets_clear_errors():
    r = generate("-m", MODEL, "-p", "x", "--top-p", "1.5")
    assert r.returncode == 2 and "--top-p" in r.stderr, r.stderr
    r = generate("-m", "/nonexistent.gguf", "-p", "x")
    assert r.returncode == 1 and "/nonexistent.gguf" in r.stderr, r.stderr
    r = generate("-p", "x")
    assert r.returncode == 2 and "-m MODEL" in r.stderr, r.stderr
    r = generate("-m", MODEL, "-p", "x", "-n")
    assert r.returncode == 2 and "needs a value" in r.stderr, r.stderr


if __name__ == "__main__":
    run_tests(globals())
