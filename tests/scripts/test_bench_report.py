#!/usr/bin/env python3
"""tests/scripts/test_bench_report.py — scripts/bench-report, as `make bench` and
`make bench-merge` run it: JSON lines in; docs/bench/latest.json and the table between the markers of BENCHMARKS.md
out; a line claiming a figure without a peer or a unit refused (exit 1, nothing written).

The sample runs are made here with random numbers (a fixed seed), so every expected figure and
ratio is computed by this test from the lines it wrote, not copied from the script's output.
Standard library only; run by ctest (tests/CMakeLists.txt) or alone.
"""
import json
import os
import random
import subprocess
import sys
import tempfile
import unittest

TOP = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REPORT = os.path.join(TOP, "scripts", "bench-report")
BEGIN, END = "<!-- bench-report:begin -->", "<!-- bench-report:end -->"
CARD = "NVIDIA Test Card 80GB, sm_90, 81079 MiB"


def cpu_run(rng):
    """A make bench run's lines: cairn and llama.cpp, cairn and onnxruntime, the lookahead
    search with and without prefetch, the decode bound, and lines that are not figures."""
    r = lambda lo, hi: round(rng.uniform(lo, hi), 2)
    lines = [{"bench": "run", "mode": "quick", "passages": 5000},
             {"bench": "membw", "what": "read", "gb_s_2threads": r(10, 40)},
             {"bench": "edge_heap", "note": "skipped: AddressSanitizer build"}]
    for impl in ("cairn", "llama.cpp"):
        lines += [{"bench": "generate", "impl": impl, "what": "prompt", "streams": 1,
                   "threads": 2, "tok_s": r(300, 1200)},
                  {"bench": "generate", "impl": impl, "what": "generation", "streams": 1,
                   "threads": 2, "tok_s": r(40, 120)},
                  {"bench": "generate", "impl": impl, "what": "generation", "streams": 8,
                   "threads": 2, "tok_s": r(100, 350)}]
    lines[-1]["version"] = "0.3.36"
    lines += [{"bench": "generate", "what": "decode_bound", "streams": 1, "tok_s": r(120, 200)},
              {"bench": "embed", "impl": "onnxruntime", "passages_s": r(50, 200),
               "version": "1.32.0"},
              {"bench": "embed", "impl": "cairn", "passages_s": r(50, 200)},
              {"bench": "retrieval", "what": "lookahead", "device": -1, "nprobe": 8,
               "without": {"hit_ratio": 0.0, "p50_ms": r(2, 9)},
               "with": {"hit_ratio": 0.9, "p50_ms": r(0.5, 3)}}]
    return lines


def rounds_lines(rng, lines, rounds=5):
    """What the interleaved benchmarks (scripts/bench-llamacpp, bench-onnx-embed) add: per
    figure, the per-round ratios of its two sides, their median, lowest and highest."""
    out = []
    for what, streams in (("prompt", 1), ("generation", 1), ("generation", 8)):
        rs = [round(rng.uniform(0.5, 9), 3) for _ in range(rounds)]
        out.append({"bench": "generate", "what": "cairn_vs_llama.cpp", "of": what,
                    "streams": streams, "rounds": rounds, "ratio_runs": rs,
                    "ratio": sorted(rs)[rounds // 2], "ratio_min": min(rs), "ratio_max": max(rs),
                    "loadavg": [round(rng.uniform(1, 12), 2), 4.0, 3.0]})
    rs = [round(rng.uniform(2, 6), 3) for _ in range(3)]
    out.append({"bench": "embed", "what": "cairn_vs_onnxruntime", "rounds": 3, "ratio_runs": rs,
                "ratio": sorted(rs)[1], "ratio_min": min(rs), "ratio_max": max(rs)})
    return out


def gpu_run(rng):
    r = lambda lo, hi: round(rng.uniform(lo, hi), 3)
    lines = [{"bench": "gpu_check", "commit": "abc1234", "card": CARD.split(",")[0]}]
    for system in ("cpu_faiss", "telerag", "cairn"):
        lines.append({"bench": "retrieval_gpu", "what": "search", "system": system,
                      "card": CARD, "nprobe": 128, "batch": 1, "p50_ms": r(1, 10)})
    return lines


def write_lines(path, lines, extra=()):
    with open(path, "w", encoding="utf-8") as f:
        f.write("not JSON: a benchmark's stray text is skipped\n")
        for obj in list(lines) + list(extra):
            f.write(json.dumps(obj) + "\n")


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def find(lines, **match):
    hits = [o for o in lines if all(o.get(k) == v for k, v in match.items())]
    assert len(hits) == 1, (match, hits)
    return hits[0]


class BenchReport(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory(prefix="cairn-bench-report-")
        d = self.tmp.name
        self.json = os.path.join(d, "latest.json")
        self.md = os.path.join(d, "BENCHMARKS.md")
        self.history = "## Retrieval (CPU)\n\nA session's log, kept under the table.\n"
        with open(self.md, "w", encoding="utf-8") as f:
            f.write("# Benchmarks\n\n" + self.history)
        self.rng = random.Random(27)

    def tearDown(self):
        self.tmp.cleanup()

    def report(self, *args):
        return subprocess.run([sys.executable, REPORT, "--json", self.json, "--markdown",
                               self.md, "--commit", "test", *args],
                              capture_output=True, text=True)

    def path(self, name):
        return os.path.join(self.tmp.name, name)

    def table_rows(self):
        doc = read(self.md)
        self.assertEqual(doc.count(BEGIN), 1)
        self.assertEqual(doc.count(END), 1)
        block = doc[doc.index(BEGIN):doc.index(END)]
        rows = [l for l in block.splitlines() if l.startswith("| ") and "---" not in l]
        return doc, [[c.strip() for c in r.strip("|").split("|")] for r in rows[1:]]

    def test_run_becomes_table_and_json(self):
        lines = cpu_run(self.rng)
        write_lines(self.path("run.jsonl"), lines)
        r = self.report("--run", self.path("run.jsonl"), "--mode", "quick")
        self.assertEqual(r.returncode, 0, r.stderr)
        # Each comparison the lines hold, with the ratio worked out here from the lines.
        want = []
        for what, streams in (("prompt", 1), ("generation", 1), ("generation", 8)):
            ours = find(lines, bench="generate", impl="cairn", what=what, streams=streams)
            peer = find(lines, bench="generate", impl="llama.cpp", what=what, streams=streams)
            want.append((ours["tok_s"], peer["tok_s"], ours["tok_s"] / peer["tok_s"], "llama.cpp"))
        ours = find(lines, bench="embed", impl="cairn")["passages_s"]
        peer = find(lines, bench="embed", impl="onnxruntime")["passages_s"]
        want.append((ours, peer, ours / peer, "onnxruntime 1.32.0"))
        la = find(lines, what="lookahead")
        want.append((la["with"]["p50_ms"], la["without"]["p50_ms"],
                     la["without"]["p50_ms"] / la["with"]["p50_ms"], None))  # lower is better

        report = json.loads(read(self.json))
        figs = report["cpu"]["figures"]
        self.assertEqual(len(figs), len(want))
        self.assertEqual(report["cpu"]["commit"], "test")
        self.assertEqual(report["cpu"]["mode"], "quick (5,000 passages)")  # the run line's
        self.assertEqual(len(report["cpu"]["lines"]), len(lines))
        for f, (o, p, ratio, peer_name) in zip(figs, want):
            self.assertAlmostEqual(f["ours"], o)
            self.assertAlmostEqual(f["peer"], p)
            self.assertAlmostEqual(f["ratio"], ratio)
            self.assertTrue(f["unit"])
            if peer_name:
                self.assertTrue(f["peer_name"].startswith(peer_name), f["peer_name"])
        # The bound of one-stream decode, and cairn's share of it.
        bound = find(lines, what="decode_bound")["tok_s"]
        self.assertAlmostEqual(figs[1]["bound"], bound)

        doc, rows = self.table_rows()
        self.assertEqual(len(rows), len(want))
        for row, (o, p, ratio, _) in zip(rows, want):
            self.assertIn(f"{ratio:.2f}×", row[5])
            # shown rounded to what the eye needs: within 0.05% or 0.005
            self.assertAlmostEqual(float(row[2].replace(",", "")), o, delta=0.005 + 5e-4 * o)
            self.assertAlmostEqual(float(row[4].replace(",", "")), p, delta=0.005 + 5e-4 * p)
        self.assertIn(f"({figs[1]['ours'] / bound:.0%})", rows[1][6])
        # The history stays below the table; the skipped note is listed.
        self.assertGreater(doc.index(self.history), doc.index(END))
        self.assertIn("skipped: AddressSanitizer build", doc)

        # Regenerated in place: a second run leaves one table and the history once.
        r = self.report("--run", self.path("run.jsonl"))
        self.assertEqual(r.returncode, 0, r.stderr)
        doc2, rows2 = self.table_rows()
        self.assertEqual(rows2, rows)
        self.assertEqual(doc2.count(self.history), 1)

    def test_interleaved_rounds_give_the_ratio(self):
        # Where the two sides ran in alternating rounds, the table's ratio is the median of the
        # per-round ratios (not the quotient of the two sides' medians), with its spread.
        lines = cpu_run(self.rng)
        extra = rounds_lines(self.rng, lines)
        write_lines(self.path("run.jsonl"), lines, extra)
        r = self.report("--run", self.path("run.jsonl"), "--mode", "quick")
        self.assertEqual(r.returncode, 0, r.stderr)
        report = json.loads(read(self.json))
        figs = report["cpu"]["figures"]
        _, rows = self.table_rows()
        self.assertEqual(len(figs), 5)
        for f, row, x in zip(figs, rows, extra):
            self.assertAlmostEqual(f["ratio"], x["ratio"])
            self.assertNotAlmostEqual(f["ratio"], f["ours"] / f["peer"], places=3)
            self.assertEqual(f["ratio_spread"], [x["ratio_min"], x["ratio_max"]])
            self.assertEqual(f["rounds"], x["rounds"])
            self.assertIn(f"**{x['ratio']:.2f}×** ({x['ratio_min']:.2f}–{x['ratio_max']:.2f} "
                          f"over {x['rounds']} rounds)", row[5])
        # The lookahead search has no rounds: its ratio stays the quotient.
        self.assertNotIn("ratio_spread", figs[4])
        self.assertAlmostEqual(figs[4]["ratio"], figs[4]["peer"] / figs[4]["ours"])
        # The rounds' load averages count in the run's range.
        loads = [x["loadavg"][0] for x in extra if "loadavg" in x]
        self.assertLessEqual(report["cpu"]["load_avg"][0], min(loads))
        self.assertGreaterEqual(report["cpu"]["load_avg"][1], max(loads))

    def test_refuses_rounds_line_without_ratio(self):
        lines = cpu_run(self.rng)
        extra = rounds_lines(self.rng, lines)
        del extra[2]["ratio"]
        write_lines(self.path("run.jsonl"), lines, extra)
        r = self.report("--run", self.path("run.jsonl"))
        self.assertEqual(r.returncode, 1)
        self.assertIn("cpu.generate.decode8", r.stderr)
        self.assertIn("'ratio'", r.stderr)
        self.assertFalse(os.path.exists(self.json))

    def test_gpu_merge_keeps_the_cpu_part(self):
        cpu = cpu_run(self.rng)
        write_lines(self.path("run.jsonl"), cpu)
        self.assertEqual(self.report("--run", self.path("run.jsonl")).returncode, 0)
        gpu = gpu_run(self.rng)
        write_lines(self.path("gpu.jsonl"), gpu)
        r = self.report("--gpu", self.path("gpu.jsonl"))
        self.assertEqual(r.returncode, 0, r.stderr)
        report = json.loads(read(self.json))
        self.assertEqual(len(report["cpu"]["figures"]), 5)  # kept from the first call
        self.assertEqual(report["gpu"]["cards"], [CARD])
        self.assertEqual(report["gpu"]["commit"], "abc1234")  # the gpu_check line's
        ours = find(gpu, system="cairn")["p50_ms"]
        ratios = sorted(find(gpu, system=s)["p50_ms"] / ours for s in ("telerag", "cpu_faiss"))
        got = sorted(f["ratio"] for f in report["gpu"]["figures"])
        self.assertEqual(len(got), 2)
        for g, w in zip(got, ratios):
            self.assertAlmostEqual(g, w)
        doc, rows = self.table_rows()
        self.assertEqual(len(rows), 7)
        self.assertIn(CARD, doc)

    def test_gpu_search_takes_the_nprobe_budget(self):
        """A run with both budgets (the scheduler's lines last): the table's search figures are
        the nprobe-clusters budget's, as the lines of before the field existed were."""
        write_lines(self.path("run.jsonl"), cpu_run(self.rng))
        self.assertEqual(self.report("--run", self.path("run.jsonl")).returncode, 0)
        gpu = gpu_run(self.rng)
        for line in gpu[1:]:
            line["budget"] = "nprobe_clusters"
        sched = [dict(line, budget="scheduler", p50_ms=line["p50_ms"] / 7) for line in gpu[1:]]
        write_lines(self.path("gpu.jsonl"), gpu + sched)
        r = self.report("--gpu", self.path("gpu.jsonl"))
        self.assertEqual(r.returncode, 0, r.stderr)
        report = json.loads(read(self.json))
        ours = find(gpu, system="cairn")["p50_ms"]
        got = sorted(f["ours"] for f in report["gpu"]["figures"])
        self.assertEqual(got, [ours, ours])

    def test_run_keeps_the_merged_gpu_part(self):
        # make bench after a make bench-merge: the new cpu part, the GPU part as it was merged.
        gpu = gpu_run(self.rng)
        write_lines(self.path("gpu.jsonl"), gpu)
        self.assertEqual(self.report("--gpu", self.path("gpu.jsonl")).returncode, 0)
        merged = json.loads(read(self.json))["gpu"]
        _, merged_rows = self.table_rows()
        cpu = cpu_run(self.rng)
        write_lines(self.path("run.jsonl"), cpu)
        r = self.report("--run", self.path("run.jsonl"), "--mode", "quick")
        self.assertEqual(r.returncode, 0, r.stderr)
        report = json.loads(read(self.json))
        self.assertEqual(report["gpu"], merged)
        self.assertEqual(len(report["cpu"]["figures"]), 5)
        doc, rows = self.table_rows()
        self.assertEqual(len(rows), 7)
        self.assertEqual(rows[5:], merged_rows)  # the GPU rows, after the CPU's, unchanged
        self.assertIn(CARD, doc)

    def test_refuses_figure_whose_peer_was_skipped(self):
        lines = [o for o in cpu_run(self.rng)
                 if not (o.get("impl") == "llama.cpp" and o.get("what") == "prompt")]
        lines.append({"bench": "generate", "impl": "llama.cpp",
                      "note": "skipped: .venv has no llama_cpp"})
        write_lines(self.path("run.jsonl"), lines)
        before = read(self.md)
        r = self.report("--run", self.path("run.jsonl"))
        self.assertEqual(r.returncode, 1)
        self.assertIn("no peer", r.stderr)
        self.assertIn("llama.cpp", r.stderr)
        self.assertIn("run.jsonl:", r.stderr)  # names the file and line
        self.assertEqual(read(self.md), before)
        self.assertFalse(os.path.exists(self.json))

    def test_refuses_declared_figure_without_peer_or_unit(self):
        base = {"bench": "lexical", "figure": "bm25 queries/s", "value": 900.0, "unit": "q/s",
                "peer": "tantivy", "peer_value": 600.0}
        for drop, word in (("unit", "unit"), ("peer", "peer"), ("peer_value", "peer_value")):
            line = {k: v for k, v in base.items() if k != drop}
            write_lines(self.path("run.jsonl"), cpu_run(self.rng), [line])
            r = self.report("--run", self.path("run.jsonl"))
            self.assertEqual(r.returncode, 1, f"accepted a figure without {drop}")
            self.assertIn("bm25 queries/s", r.stderr)
            self.assertIn(f"without {word}", r.stderr)
            self.assertFalse(os.path.exists(self.json))

    def test_declared_figure_with_peer_and_unit(self):
        v, p = round(self.rng.uniform(1, 5), 2), round(self.rng.uniform(1, 5), 2)
        line = {"bench": "lexical", "figure": "bm25 p50", "value": v, "unit": "ms",
                "peer": "tantivy", "peer_value": p, "better": "lower"}
        write_lines(self.path("run.jsonl"), cpu_run(self.rng), [line])
        r = self.report("--run", self.path("run.jsonl"))
        self.assertEqual(r.returncode, 0, r.stderr)
        _, rows = self.table_rows()
        row = [x for x in rows if x[0] == "bm25 p50"]
        self.assertEqual(len(row), 1)
        self.assertEqual(row[0][1], "ms")
        self.assertEqual(row[0][3], "tantivy")
        self.assertIn(f"{p / v:.2f}×", row[0][5])


if __name__ == "__main__":
    unittest.main(verbosity=2)
