"""The benchmarks' question sets (tests/bench/rag/questions.jsonl, the answer benchmark of
issue 18; tests/bench/retrieval/questions.jsonl, retrieval quality): the format cairn bench
reads, and every package a question names is a package of the default corpus (Debian's
Translation-en, which scripts/setup installs under data/corpus)."""
import json
import os

from harness import run_tests

TOP = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODELS = os.environ.get("CAIRN_TEST_MODELS", os.path.join(TOP, "data", "models"))
CORPUS = os.path.join(os.path.dirname(os.path.abspath(MODELS)), "corpus", "debian-Translation-en")
RAG = os.path.join(TOP, "tests", "bench", "rag", "questions.jsonl")
RETRIEVAL = os.path.join(TOP, "tests", "bench", "retrieval", "questions.jsonl")

_packages = {}


def corpus_packages():
    if not _packages:
        assert os.path.exists(CORPUS), f"{CORPUS} is missing (scripts/setup installs it)"
        with open(CORPUS, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("Package: "):
                    _packages[line[9:].strip()] = True
        assert len(_packages) > 60000, len(_packages)
    return _packages


def load(path):
    """The lines as cairn bench reads them: {id, split, package, question}, nothing else."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for no, line in enumerate(f, 1):
            if not line.strip():
                continue
            q = json.loads(line)
            assert set(q) == {"id", "split", "package", "question"}, (path, no, q)
            assert isinstance(q["id"], int) and q["id"] >= 1, (path, no)
            assert q["split"] in ("train", "test"), (path, no)
            assert isinstance(q["package"], str) and 1 <= len(q["package"]) <= 128, (path, no)
            assert isinstance(q["question"], str) and 1 <= len(q["question"]) <= 2000, (path, no)
            rows.append(q)
    assert len({q["id"] for q in rows}) == len(rows), f"{path}: ids repeat"
    return rows


def test_answer_questions_format_and_packages():
    rows = load(RAG)
    pkgs = corpus_packages()
    missing = [q["package"] for q in rows if q["package"] not in pkgs]
    assert not missing, f"not in the corpus: {missing}"
    test = [q for q in rows if q["split"] == "test"]
    dev = [q for q in rows if q["split"] == "train"]
    assert len(test) >= 40, len(test)  # issue 18: at least 40 questions
    # the tuning (train) questions ask about other packages than the measured (test) ones
    assert not {q["package"] for q in test} & {q["package"] for q in dev}
    # spread over the alphabet: no letter holds more than a tenth of them
    first = [q["package"][0] for q in test]
    assert len(set(first)) >= 20 and max(first.count(c) for c in first) <= len(test) // 10 + 1
    # written for answers: none is a question of the retrieval set, nor names its package's
    # synopsis word for word
    old = {q["question"] for q in load(RETRIEVAL)}
    assert not [q for q in rows if q["question"] in old]
    synopsis = {}
    with open(CORPUS, encoding="utf-8", errors="replace") as f:
        pkg = None
        for line in f:
            if line.startswith("Package: "):
                pkg = line[9:].strip()
            elif line.startswith("Description-en: ") and pkg in {q["package"] for q in rows}:
                synopsis[pkg] = line[16:].strip().lower()
    copied = [q for q in rows if synopsis[q["package"]] in q["question"].lower()]
    assert not copied, copied


def test_retrieval_questions_packages_exist():
    pkgs = corpus_packages()
    missing = [q["package"] for q in load(RETRIEVAL) if q["package"] not in pkgs]
    assert not missing, f"not in the corpus: {missing}"


if __name__ == "__main__":
    run_tests(globals())
