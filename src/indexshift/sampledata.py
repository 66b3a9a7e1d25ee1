"""Realistic file documents for the runbook's ``file-index``, built from real files.

The corpus is the machine's own files (``/usr`` by default), walked in sorted order so the same
machine and seed always give the same documents. Pure logic: no cluster calls here.
"""

from __future__ import annotations

import functools
import hashlib
import os
import random
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from indexshift.errors import BadInput

MAX_CORPUS_FILES = 250_000

# The "before" schema of the runbook's index: file_type is analysed text, which is exactly the
# kind of mistake that needs a blue-green migration to fix (text → keyword).
V1_MAPPINGS: dict[str, Any] = {
    "dynamic": "strict",
    "properties": {
        "file_key": {"type": "keyword"},
        "file_name": {"type": "text", "fields": {"raw": {"type": "keyword"}}},
        "file_type": {"type": "text"},
        "file_size": {"type": "long"},
        "modified_at": {"type": "date"},
        "path": {"type": "keyword"},
        "embedding": {"type": "float"},
    },
}


@dataclass(frozen=True)
class CorpusFile:
    path: str
    size: int
    mtime: float


def walk_corpus(root: Path, limit: int = MAX_CORPUS_FILES) -> list[CorpusFile]:
    """Regular files under ``root`` in a stable order, at most ``limit`` of them."""
    return list(_walk_corpus(root, limit))


# Walking /usr takes seconds, and a process that seeds several times (a test session, a bench)
# would walk it again each time for the same files.
@functools.lru_cache(maxsize=4)
def _walk_corpus(root: Path, limit: int) -> tuple[CorpusFile, ...]:
    if not root.is_dir():
        raise BadInput(f"corpus folder {root} does not exist", hint="pass --corpus DIR")
    found: list[CorpusFile] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            try:
                st = os.lstat(full)
            except OSError:
                continue
            if not os.path.isfile(full) or os.path.islink(full):
                continue
            found.append(CorpusFile(full, st.st_size, st.st_mtime))
            if len(found) >= limit:
                return tuple(found)
    if not found:
        raise BadInput(f"corpus folder {root} holds no regular files", hint="pass --corpus DIR")
    return tuple(found)


def file_type_of(name: str) -> str:
    base = name.rsplit("/", 1)[-1]
    if "." in base.strip("."):
        ext = base.rsplit(".", 1)[1].lower()
        if ext.isalnum() and len(ext) <= 8:
            return ext
    return "none"


def embedding_for(key: str, dims: int) -> list[float]:
    """A deterministic unit-ish vector derived from the document key."""
    out: list[float] = []
    counter = 0
    while len(out) < dims:
        digest = hashlib.sha256(f"{key}:{counter}".encode()).digest()
        for (value,) in struct.iter_unpack(">I", digest):
            out.append(round(value / 0xFFFFFFFF * 2 - 1, 6))
        counter += 1
    return out[:dims]


def generate_docs(corpus: list[CorpusFile], count: int, seed: int,
                  embedding_dims: int = 0) -> Iterator[tuple[str, dict[str, Any]]]:
    """``count`` (id, source) pairs; the id is the document's ``file_key``."""
    rng = random.Random(seed)
    for i in range(count):
        source = corpus[rng.randrange(len(corpus))]
        copy = i // len(corpus)
        rel = source.path.lstrip("/")
        path = rel if copy == 0 else f"{rel}.copy{copy}"
        key = hashlib.sha1(f"{seed}:{i}:{path}".encode()).hexdigest()[:20]
        name = path.rsplit("/", 1)[-1]
        jitter = rng.randrange(0, 86_400 * 30)
        modified = datetime.fromtimestamp(max(0.0, source.mtime - jitter), UTC)
        doc: dict[str, Any] = {
            "file_key": key,
            "file_name": name,
            "file_type": file_type_of(name),
            "file_size": source.size,
            "modified_at": modified.isoformat(timespec="seconds"),
            "path": path,
        }
        if embedding_dims:
            doc["embedding"] = embedding_for(key, embedding_dims)
        yield key, doc
