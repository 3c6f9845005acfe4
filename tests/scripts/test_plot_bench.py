#!/usr/bin/env python3
"""tests/scripts/test_plot_bench.py — scripts/plot-bench's GPU plots, as `make bench` runs it on a
machine without a GPU: drawn from the GPU part of docs/bench/latest.json (the lines `make
bench-merge` put in) when the run's own lines hold none; where no line anywhere holds a plot's
data, a note naming the command that makes it, never a "skipped" line.

Needs gnuplot (scripts/setup installs gnuplot-nox); skipped without it. Standard library only;
run by ctest (tests/CMakeLists.txt) or alone.
"""
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import unittest

TOP = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PLOT = os.path.join(TOP, "scripts", "plot-bench")
CARD = "NVIDIA Test Card 80GB, sm_90, 81079 MiB"


def roofline(rng, kernels):
    return [{"bench": "roofline", "card": CARD, "kernel": k, "intensity": rng.uniform(1, 900),
             "gflops": rng.uniform(1e3, 5e5), "peak_gflops": 8e5, "peak_gb_s": 3100}
            for k in kernels]


def sweep(rng):
    out = []
    for frac in (0.05, 0.1, 0.25, 0.5):
        for budget in (0.25, 0.5, 1.0, 2.0):
            if frac != 0.25 and budget != 1.0:
                continue
            p50 = rng.uniform(1, 5)
            out.append({"bench": "retrieval_gpu", "what": "sweep", "card": CARD, "nprobe": 128,
                        "cache_fraction": frac, "budget_x_nprobe_clusters": budget,
                        "p50_ms": p50, "p99_ms": 2 * p50, "hit_ratio": rng.uniform(0, 1)})
    return out


@unittest.skipUnless(shutil.which("gnuplot"), "gnuplot is not installed")
class PlotBench(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory(prefix="cairn-plot-bench-")
        self.out = os.path.join(self.tmp.name, "img")
        self.md = os.path.join(self.tmp.name, "BENCHMARKS.md")
        with open(self.md, "w", encoding="utf-8") as f:
            f.write("# Benchmarks\n")
        self.rng = random.Random(27)

    def tearDown(self):
        self.tmp.cleanup()

    def path(self, name):
        return os.path.join(self.tmp.name, name)

    def plot(self, *args):
        r = subprocess.run([sys.executable, PLOT, "--md", self.md, "--out", self.out, *args],
                           capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        said = {}
        for line in r.stdout.splitlines():
            obj = json.loads(line)
            self.assertFalse(str(obj.get("note", "")).startswith("skipped"), line)
            said[obj.get("plot")] = obj
        return said

    def report(self, lines, sources):
        with open(self.path("latest.json"), "w", encoding="utf-8") as f:
            json.dump({"gpu": {"cards": [CARD], "sources": sources, "lines": lines}}, f)
        return self.path("latest.json")

    def test_gpu_part_draws_the_roofline(self):
        kernels = ["bf16 decode b1", "q8_0 decode b1", "q4_k_m decode b1"]
        older, newer = roofline(self.rng, kernels), roofline(self.rng, kernels[:2])
        rep = self.report(older + newer, ["old.jsonl", "new.jsonl"])
        said = self.plot("--report", rep)
        roof = said["gpu-roofline"]
        self.assertTrue(os.path.getsize(os.path.join(self.out, "bench-gpu-roofline.png")) > 0)
        self.assertIn("latest.json", roof["source"])
        self.assertIn("new.jsonl", roof["source"])
        self.assertEqual(roof["kernels"], 3)  # a later file's point replaces an earlier one's
        # No sweep line anywhere: a note that names the command, and no file.
        for name in ("gpu-retrieval-cache", "gpu-retrieval-budget"):
            self.assertIn("make bench-gpu", said[name]["note"])
            self.assertNotIn("file", said[name])
            self.assertFalse(os.path.exists(os.path.join(self.out, f"bench-{name}.png")))

    def test_run_lines_before_the_gpu_part(self):
        run = self.path("run.jsonl")
        with open(run, "w", encoding="utf-8") as f:
            for obj in sweep(self.rng):
                f.write(json.dumps(obj) + "\n")
        rep = self.report(roofline(self.rng, ["bf16 decode b1"]), ["gpu.jsonl"])
        said = self.plot("--jsonl", run, "--report", rep, "--gpu-only")
        self.assertEqual(set(said), {"gpu-roofline", "gpu-retrieval-cache",
                                     "gpu-retrieval-budget"})
        self.assertEqual(said["gpu-retrieval-cache"]["source"], "JSON lines")
        self.assertEqual(said["gpu-retrieval-cache"]["points"], 4)  # budget 1 x nprobe
        self.assertEqual(said["gpu-retrieval-budget"]["points"], 4)  # cache a quarter
        self.assertIn("gpu.jsonl", said["gpu-roofline"]["source"])

    def test_colocate_draws_latency_and_offline_throughput(self):
        run = self.path("colocate.jsonl")
        policies = ("slo", "online-only", "fcfs-hybrid")
        with open(run, "w", encoding="utf-8") as f:
            for pol in policies:
                for load in (0.25, 0.5, 0.75):
                    f.write(json.dumps({"bench": "colocate", "policy": pol, "load": load,
                                        "ttft_p99": self.rng.uniform(0.1, 2),
                                        "tbt_p99_ms": self.rng.uniform(10, 300),
                                        "offline_tps": self.rng.uniform(0, 900)}) + "\n")
        said = self.plot("--jsonl", run, "--report", self.path("missing.json"))
        col = said["colocate-p99"]
        self.assertEqual(col["series"], list(policies))
        self.assertEqual(col["panels"], ["ttft_p99", "tbt_p99", "offline_tps"])
        self.assertTrue(os.path.getsize(os.path.join(self.out, "bench-colocate-p99.png")) > 0)

    def test_no_gpu_lines_anywhere(self):
        said = self.plot("--report", self.path("missing.json"), "--gpu-only")
        for name in ("gpu-roofline", "gpu-retrieval-cache", "gpu-retrieval-budget"):
            self.assertIn("no GPU lines yet (make bench-gpu", said[name]["note"])
        self.assertFalse(os.path.exists(self.out) and os.listdir(self.out))


if __name__ == "__main__":
    unittest.main(verbosity=2)
