"""`cairn bench profile|colocate|yield|rag-answers`: argument parsing. A bad flag, a missing value or a
value out of range ends with status 2 and a first line that names the flag (the usage
follows); none of these cases loads a model."""
import os
import subprocess

from harness import BIN, run_tests


def bench(*args):
    return subprocess.run([os.path.join(BIN, "cairn"), "bench", *args], capture_output=True,
                          text=True, timeout=60)


def first_line(r):
    return r.stderr.splitlines()[0] if r.stderr else ""


def test_bad_flags_are_named():
    cases = [
        (("profile", "--frobnicate", "1"), "cairn bench profile: unknown option '--frobnicate'"),
        (("profile", "--repeat", "x"), "cairn bench profile: --repeat 'x' is not a number"),
        (("profile", "--repeat", "12"), "cairn bench profile: --repeat 12 is outside 1..9"),
        (("profile", "--iterations", "10"), "--iterations 10 is outside 150..100000"),
        (("profile", "--ttft-slo", "2000"), "needs both --ttft-slo and --tbt-slo"),
        (("profile", "--budgets", "50,-1"), "--budgets '50,-1' is not a list"),
        (("profile", "--out"), "cairn bench profile: --out needs a value"),
        (("colocate", "--loads", "0.5,abc"), "--loads '0.5,abc' is not a list"),
        (("colocate", "--max-seqs", "99"), "--max-seqs 99 is outside 2..64"),
        (("colocate", "--duration", "1"), "--duration must be at least 5 s"),
        (("colocate", "--seed", "0"), "--seed must not be 0"),
        (("colocate", "--policies", "fifo"), "fifo"),
        (("colocate", "--profile", "/nonexistent/p.txt"), "/nonexistent/p.txt"),
        (("colocate", "--bogus", "1"), "cairn bench colocate: unknown option '--bogus'"),
        (("yield", "--trials", "0"), "cairn bench yield: --trials 0 is outside 1..1000"),
        (("yield", "--doc-tokens", "100"), "--doc-tokens 100 is outside 600..32768"),
        (("yield", "--doc-tokens", "40000"), "--doc-tokens 40000 is outside 600..32768"),
        (("yield", "--pass-tokens", "8"), "--pass-tokens 8 is outside 64..32768"),
        (("yield", "--pass-tokens", "0"), "--pass-tokens 0 is outside 64..32768"),
        (("profile", "--warmup", "-1"), "cairn bench profile: --warmup -1 is outside 0..9"),
        (("yield", "--threads", "-1"), "--threads -1 is negative"),
        (("yield", "--nope", "1"), "cairn bench yield: unknown option '--nope'"),
        (("profile", "--device", "-2"), "--device -2: -1 (the CPU) or a GPU index"),
        (("colocate", "--device", "gpu"), "--device 'gpu' is not a number"),
        (("yield", "--device", "-5"), "cairn bench yield: --device -5"),
        (("colocate", "--as-cairnd", "/tmp", "--budget", "100"),
         "--as-cairnd derives the budgets: leave --budget and --online-budget out"),
        (("nosuch",), "usage: cairn bench profile"),
    ]
    for args, want in cases:
        r = bench(*args)
        assert r.returncode == 2, (args, r.returncode, r.stderr[:300])
        assert want in first_line(r), (args, first_line(r))
        assert r.stdout == "", (args, r.stdout[:300])


def test_rag_answers_flags():
    """The answer benchmark's prompt switches parse before anything loads: with them and no
    index the run ends with status 1 naming the missing index; an unknown flag, 2 and usage."""
    for flags in (["--no-example"], ["--best-first"], ["--no-prefix"], ["--plain"],
                  ["--prefix", "The package is"], ["--mode", "hyde"]):
        r = bench("rag-answers", *flags, "--dir", "/nonexistent/index")
        assert r.returncode == 1, (flags, r.returncode, r.stderr[:300])
        assert "no index in /nonexistent/index" in r.stderr, (flags, r.stderr[:300])
    r = bench("rag-answers", "--mode", "bm25", "--dir", "/nonexistent/index")
    assert r.returncode == 2 and "--mode 'bm25' is not none, rewrite or hyde" in r.stderr, r.stderr
    r = bench("rag-answers", "--prefix", "Use", "--no-prefix", "--dir", "/nonexistent/index")
    assert r.returncode == 2, (r.returncode, r.stderr[:300])
    assert first_line(r) == "cairn bench rag-answers: --prefix and --no-prefix exclude each other"
    r = bench("rag-answers", "--no-such-flag")
    assert r.returncode == 2 and "usage: cairn bench rag-answers" in r.stderr, r.stderr[:300]
    for flag in ("--no-example", "--best-first", "--no-prefix"):
        assert flag in r.stderr, flag


if __name__ == "__main__":
    run_tests(globals())
