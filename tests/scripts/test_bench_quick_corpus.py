#!/usr/bin/env python3
"""tests/scripts/test_bench_quick_corpus.py — scripts/bench-quick-corpus, as `make bench` runs it in
quick mode: the first N stanzas of a Translation-en file and every stanza of a package the
questions name, copied byte for byte in corpus order, the sections file filtered alike;
"changed" only when the selection changed; a question about a package the corpus lacks, or a
malformed question line, refused with a message naming it.

The corpus is written here, so each expected output is assembled by this test from the stanzas
it wrote. Standard library only; run by ctest (tests/CMakeLists.txt) or alone.
"""
import json
import os
import subprocess
import sys
import tempfile
import unittest

TOP = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(TOP, "scripts", "bench-quick-corpus")


def stanza(i):
    return (f"Package: pkg{i}\nDescription-md5: {i:032x}\nDescription-en: synopsis {i}\n"
            f" long text of package {i},\n with a second line ünïcode\n\n")


class QuickCorpus(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        d = self.tmp.name
        self.corpus = os.path.join(d, "debian-Translation-en")
        self.stanzas = [stanza(i) for i in range(8)]
        with open(self.corpus, "w", encoding="utf-8") as f:
            f.write("".join(self.stanzas))
        with open(os.path.join(d, "debian-sections"), "w", encoding="utf-8") as f:
            f.write("".join(f"pkg{i}\tsection{i}\n" for i in range(8)))
        self.out = os.path.join(d, "out")

    def tearDown(self):
        self.tmp.cleanup()

    def questions(self, name, packages):
        path = os.path.join(self.tmp.name, name)
        with open(path, "w", encoding="utf-8") as f:
            for i, p in enumerate(packages):
                f.write(json.dumps({"id": i, "package": p, "question": f"q{i}?"}) + "\n")
            f.write("\n")  # a blank line is allowed
        return path

    def run_script(self, *args):
        return subprocess.run([sys.executable, SCRIPT, "--out", self.out, "--corpus",
                               self.corpus, *args], capture_output=True, text=True)

    def test_selection(self):
        q1 = self.questions("a.jsonl", ["pkg6", "pkg1"])
        q2 = self.questions("b.jsonl", ["pkg4"])
        r = self.run_script("--first", "2", q1, q2)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout.strip(), "changed")
        want = [0, 1, 4, 6]
        with open(os.path.join(self.out, "debian-Translation-en"), encoding="utf-8") as f:
            self.assertEqual(f.read(), "".join(self.stanzas[i] for i in want))
        with open(os.path.join(self.out, "debian-sections"), encoding="utf-8") as f:
            self.assertEqual(f.read(), "".join(f"pkg{i}\tsection{i}\n" for i in want))
        # The same selection again leaves the files (and their mtimes) alone.
        before = os.stat(os.path.join(self.out, "debian-Translation-en")).st_mtime_ns
        r = self.run_script("--first", "2", q1, q2)
        self.assertEqual((r.returncode, r.stdout.strip()), (0, "unchanged"), r.stderr)
        after = os.stat(os.path.join(self.out, "debian-Translation-en")).st_mtime_ns
        self.assertEqual(before, after)
        # Another selection is written.
        r = self.run_script("--first", "3", q1)
        self.assertEqual((r.returncode, r.stdout.strip()), (0, "changed"), r.stderr)
        with open(os.path.join(self.out, "debian-Translation-en"), encoding="utf-8") as f:
            self.assertEqual(f.read(), "".join(self.stanzas[i] for i in [0, 1, 2, 6]))

    def test_missing_package(self):
        q = self.questions("m.jsonl", ["pkg2", "no-such-package"])
        r = self.run_script("--first", "1", q)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("no-such-package", r.stderr)
        self.assertFalse(os.path.exists(os.path.join(self.out, "debian-Translation-en")))

    def test_bad_question_lines(self):
        for name, text, what in (("x.jsonl", "{not json\n", "not a JSON object"),
                                 ("y.jsonl", '{"question": "no package"}\n', "no \"package\""),
                                 ("z.jsonl", "[1, 2]\n", "not a JSON object")):
            path = os.path.join(self.tmp.name, name)
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
            r = self.run_script(path)
            self.assertNotEqual(r.returncode, 0, name)
            self.assertIn(f"{name}:1", r.stderr)
            self.assertIn(what, r.stderr)


if __name__ == "__main__":
    unittest.main()
