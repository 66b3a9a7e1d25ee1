"""What the migration tests share: building a source alias by hand, a writer that keeps
writing through the alias while a migration runs, and the exact end check."""

from __future__ import annotations

import json
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from indexshift import copier, sampledata
from indexshift.cluster import Cluster
from indexshift.config import ConnectionConfig
from indexshift.diff import diff_indices
from indexshift.errors import IndexshiftError
from indexshift.journal import Journal
from indexshift.spec import MigrationSpec, load_migration

SCENARIOS = Path(__file__).parent.parent / "scenarios"
JSON = dict[str, Any]


@dataclass
class Source:
    mappings: JSON
    docs: dict[str, JSON]
    template: JSON
    mutate_field: str
    mutate_kind: str


def load_source(case: Path) -> Source:
    raw = json.loads((case / "source.json").read_text())
    docs: dict[str, JSON] = {d["_id"]: d["_source"] for d in raw.get("docs", [])}
    if "generate" in raw:
        corpus = sampledata.walk_corpus(Path("/usr"), limit=20_000)
        for doc_id, doc in sampledata.generate_docs(corpus, raw["generate"]["count"],
                                                    raw["generate"]["seed"]):
            docs[doc_id] = doc
    template = raw.get("template") or next(iter(docs.values()))
    return Source(raw.get("mappings") or sampledata.V1_MAPPINGS, docs, template,
                  raw["mutate"]["field"], raw["mutate"]["kind"])


def build_blue(cluster: Cluster, alias: str, source: Source, shards: int = 2) -> str:
    """The alias over ``<alias>-v1-...`` holding the source documents, made with raw calls."""
    blue = f"{alias}-v1-20260101t000000"
    cluster.create_index(blue, {"settings": {"number_of_shards": shards,
                                             "number_of_replicas": 0},
                                "mappings": source.mappings})
    items = list(source.docs.items())
    for start in range(0, len(items), 2000):
        result = cluster.bulk_index(blue, items[start:start + 2000])
        assert result.failed == 0, result.first_error
    cluster.refresh(blue)
    cluster.update_aliases([{"add": {"index": blue, "alias": alias, "is_write_index": True}}])
    return blue


def write_migration(case: Path, alias: str, directory: Path, version: int = 2) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"{version:04d}_{case.name}.yaml"
    target.write_text((case / "migration.yaml").read_text().replace("ALIAS", alias))
    return target


@dataclass
class Writer:
    """Indexes, updates and deletes through the alias, remembering every acknowledged write.

    A write refused by the cut-over's write block is retried, as an application would; only
    acknowledged writes enter the model the migration is checked against.
    """

    config: ConnectionConfig
    alias: str
    source: Source
    rate: float = 60.0
    max_ops: int = 3000
    seed: int = 7
    model: dict[str, JSON] = field(default_factory=dict)
    # Where each document's last acknowledged write landed: writes that reach the new index
    # after the switch are the application's own documents and skip the migration's transform.
    landed: dict[str, str] = field(default_factory=dict)
    acknowledged: int = 0
    retried: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self.model = {k: dict(v) for k, v in self.source.docs.items()}
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)

    def _value(self, rng: random.Random) -> Any:
        return rng.randrange(1, 10**6) if self.source.mutate_kind == "int" else \
            f"v{rng.randrange(10**6)}"

    def _run(self) -> None:
        rng = random.Random(self.seed)
        with Cluster.connect(self.config) as cluster:
            n = 0
            while not self._stop.is_set() and n < self.max_ops:
                n += 1
                kind = rng.choice(("index", "index", "update", "delete")) if self.model \
                    else "index"
                if kind == "index":
                    doc_id = f"w-{self.seed}-{n}"
                    doc = dict(self.source.template)
                    doc[self.source.mutate_field] = self._value(rng)
                    if "file_key" in doc:
                        doc["file_key"] = doc_id
                    self._apply(cluster, lambda c, i=doc_id, d=doc: c.put_doc(self.alias, i, d),
                                doc_id, doc)
                elif kind == "update":
                    doc_id = rng.choice(sorted(self.model))
                    doc = dict(self.model[doc_id])
                    doc[self.source.mutate_field] = self._value(rng)
                    self._apply(cluster, lambda c, i=doc_id, d=doc: c.put_doc(self.alias, i, d),
                                doc_id, doc)
                else:
                    doc_id = rng.choice(sorted(self.model))
                    self._apply(cluster, lambda c, i=doc_id: c.delete_doc(self.alias, i),
                                doc_id, None)
                time.sleep(1.0 / self.rate)

    def _apply(self, cluster: Cluster, send: Any, doc_id: str, doc: JSON | None) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                answer = send(cluster)
            except IndexshiftError:
                self.retried += 1
                time.sleep(0.05)
                continue
            self.acknowledged += 1
            if doc is None:
                self.model.pop(doc_id, None)
                self.landed.pop(doc_id, None)
            else:
                self.model[doc_id] = doc
                self.landed[doc_id] = str((answer or {}).get("_index", ""))
            return
        raise AssertionError(f"write of {doc_id} not acknowledged within 60 s")


def assert_alias_matches_model(cluster: Cluster, alias: str, model: dict[str, JSON],
                               spec_path: Path, untransformed: set[str] | None = None) -> None:
    """Exact end check: load the model, pass it through the spec's transform, diff with the
    alias. Equal means every acknowledged write is there with its last content, and nothing
    deleted came back."""
    spec: MigrationSpec = load_migration(spec_path).spec
    raw, expected = f"{alias}-model-raw", f"{alias}-model"
    source_mapping = {"dynamic": True, "properties": {}}
    cluster.create_index(raw, {"settings": {"number_of_replicas": 0},
                               "mappings": source_mapping})
    items = list(model.items())
    for start in range(0, len(items), 2000):
        result = cluster.bulk_index(raw, items[start:start + 2000])
        assert result.failed == 0, result.first_error
    cluster.refresh(raw)
    cluster.create_index(expected, {"settings": {**spec.settings, "number_of_replicas": 0},
                                    "mappings": spec.mappings})
    pipeline = copier.ensure_pipeline(cluster, f"{alias}-model-pipeline", spec)
    direct = untransformed or set()
    try:
        through_transform = [i for i in model if i not in direct]
        if through_transform:
            copier.copy_ids(cluster, raw, expected, through_transform, spec, pipeline)
        if direct:
            result = cluster.bulk_index(expected, [(i, model[i]) for i in direct])
            assert result.failed == 0, result.first_error
        cluster.refresh(expected)
        cluster.refresh(alias)  # the last writes reached green after its last refresh
        difference = diff_indices(cluster, expected, alias, max_ids=20)
    finally:
        if pipeline:
            cluster.request("DELETE", f"/_ingest/pipeline/{pipeline}")
    assert difference.missing_total == 0, (
        f"missing from the alias: {difference.missing}; where they are: "
        + str(_whereabouts(cluster, alias, difference.missing[:3])))
    assert difference.extra_total == 0, f"extra in the alias (came back?): {difference.extra}"
    assert difference.changed_total == 0, f"content differs: {difference.changed}"
    assert difference.count_a == difference.count_b == len(model)


def _whereabouts(cluster: Cluster, alias: str, ids: list[str]) -> dict[str, object]:
    """For a failure message: which of the alias's indices hold these ids, at which seq_no."""
    body = cluster.request("POST", f"/{alias}*/_search", params={"expand_wildcards": "all"},
                           body={"query": {"ids": {"values": ids}}, "seq_no_primary_term": True,
                                 "size": 100})
    return {h["_id"]: (h["_index"], h.get("_seq_no")) for h in body["hits"]["hits"]} | {
        "journal": [(c.get("phase"), c.get("at"), c.get("details"))
                    for r in Journal(cluster).runs(alias, limit=1) for c in r.checkpoints[-4:]]}


def written_to(writer: Writer, index: str) -> set[str]:
    return {doc_id for doc_id, landed in writer.landed.items() if landed == index}
