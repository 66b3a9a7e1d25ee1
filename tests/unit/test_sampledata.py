from pathlib import Path

import pytest

from indexshift import sampledata
from indexshift.errors import BadInput


@pytest.fixture
def corpus(tmp_path: Path) -> list[sampledata.CorpusFile]:
    for i in range(7):
        sub = tmp_path / f"d{i % 3}"
        sub.mkdir(exist_ok=True)
        (sub / f"file{i}.{['pdf', 'txt', 'tar.gz'][i % 3]}").write_bytes(b"x" * i)
    (tmp_path / "README").write_text("plain")
    return sampledata.walk_corpus(tmp_path)


def test_walk_is_sorted_and_complete(corpus: list[sampledata.CorpusFile]) -> None:
    assert len(corpus) == 8
    assert [c.path for c in corpus] == sorted(c.path for c in corpus)


def test_same_seed_same_docs_other_seed_other_docs(
    corpus: list[sampledata.CorpusFile],
) -> None:
    first = list(sampledata.generate_docs(corpus, 50, seed=1))
    again = list(sampledata.generate_docs(corpus, 50, seed=1))
    other = list(sampledata.generate_docs(corpus, 50, seed=2))
    assert first == again
    assert first != other
    assert len({doc_id for doc_id, _ in first}) == 50  # ids are unique even past the corpus


def test_documents_have_the_runbook_fields(corpus: list[sampledata.CorpusFile]) -> None:
    doc_id, doc = next(sampledata.generate_docs(corpus, 1, seed=3, embedding_dims=5))
    assert doc["file_key"] == doc_id
    assert set(doc) == {"file_key", "file_name", "file_type", "file_size", "modified_at",
                        "path", "embedding"}
    assert len(doc["embedding"]) == 5
    assert all(-1 <= v <= 1 for v in doc["embedding"])
    assert set(doc) <= set(sampledata.V1_MAPPINGS["properties"])


@pytest.mark.parametrize(("name", "kind"), [("a.PDF", "pdf"), ("x.tar.gz", "gz"),
                                            ("README", "none"), (".bashrc", "none"),
                                            ("weird.ext-with-dash", "none")])
def test_file_type(name: str, kind: str) -> None:
    assert sampledata.file_type_of(name) == kind


def test_missing_or_empty_corpus_is_bad_input(tmp_path: Path) -> None:
    with pytest.raises(BadInput):
        sampledata.walk_corpus(tmp_path / "missing")
    with pytest.raises(BadInput):
        sampledata.walk_corpus(tmp_path)
