"""`cairn bench rag-answers` end to end on a three-package index and one question, with the real
embedder and gemma-3-270m: the summary JSON line parses and names the model file as the file
system spells it, quotes included."""
import json
import os
import subprocess
import tempfile

from harness import BIN, run_tests

MODELS = os.environ.get("CAIRN_TEST_MODELS", "data/models")
GEMMA = os.path.join(MODELS, "gemma-3-270m-q4_k_m.gguf")
EMBED = os.path.join(MODELS, "all-minilm-l6-v2.gguf")
PACKAGES = {
    "zorkview": ("viewer for zork maps", "zorkview shows zork maps in a window, with zoom."),
    "frobtool": ("command-line frob converter", "frobtool converts frob files to text."),
    "quuxd": ("quux network daemon", "quuxd serves quux requests over TCP on port 9999."),
}


def cairn(*args):
    return subprocess.run([os.path.join(BIN, "cairn"), *args], capture_output=True, text=True,
                          timeout=600)


def test_summary_line_names_an_odd_model_file():
    with tempfile.TemporaryDirectory(prefix="cairn-answers-") as tmp:
        corpus, index = os.path.join(tmp, "corpus.jsonl"), os.path.join(tmp, "index")
        with open(corpus, "w") as f:
            for pkg, (synopsis, text) in PACKAGES.items():
                f.write(json.dumps({"id": pkg, "title": f"{pkg}: {synopsis}", "text": text,
                                    "metadata": {"package": pkg}}) + "\n")
        r = cairn("index", "--corpus", corpus, "--dir", index, "--model", EMBED, "--full")
        assert r.returncode == 0, r.stderr
        questions = os.path.join(tmp, "questions.jsonl")
        with open(questions, "w") as f:
            f.write(json.dumps({"id": 1, "split": "test", "package": "zorkview",
                                "question": "How can I look at zork maps?"}) + "\n")
        model = os.path.join(tmp, 'gemma "270m" \\ copy.gguf')
        os.symlink(os.path.abspath(GEMMA), model)
        r = cairn("bench", "rag-answers", "--dir", index, "--questions", questions, "-m", model,
                  "--embed-model", EMBED, "--k", "2", "--max-tokens", "4", "--threads", "2")
        assert r.returncode == 0, r.stderr
        lines = [json.loads(x) for x in r.stdout.splitlines() if x.startswith("{")]
        summary = [x for x in lines if x.get("bench") == "rag_answers"]
        assert len(summary) == 1, r.stdout
        assert summary[0]["model"] == 'gemma "270m" \\ copy.gguf', summary[0]
        assert summary[0]["questions"] == 1 and summary[0]["hit_at_4"] == 1.0, summary[0]


if __name__ == "__main__":
    run_tests(globals())
