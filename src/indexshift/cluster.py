"""The cluster adapter: the only module that talks HTTP to a cluster.

It detects the engine from ``GET /`` and then speaks through that engine's official client
(``opensearch-py`` or ``elasticsearch``). Every transport or API failure leaves this module as
one of indexshift's own errors, with a message that says what to do next. Idempotent reads are
retried briefly on connection failures and 502/503/504; writes are never retried here, because
only the caller knows whether repeating one is safe.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote, urlencode

import elastic_transport
import elasticsearch
import opensearchpy
from tenacity import (
    retry,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential,
)

from indexshift.config import ConnectionConfig
from indexshift.errors import (
    AuthFailed,
    ClusterError,
    ClusterUnreachable,
    Conflict,
    IndexshiftError,
    NotFound,
    Rejected,
    ServerError,
)

log = logging.getLogger(__name__)

Engine = Literal["opensearch", "elasticsearch"]
JSON = dict[str, Any]
_RETRYABLE_STATUS = {502, 503, 504}


@dataclass(frozen=True)
class EngineVersion:
    engine: Engine
    version: str

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])

    def __str__(self) -> str:
        return f"{self.engine} {self.version}"


def detect_engine(root: Mapping[str, Any]) -> EngineVersion:
    """Tell the engine and version from the body of ``GET /``."""
    version = root.get("version")
    if not isinstance(version, dict) or "number" not in version:
        raise ClusterError(
            "the URL answered, but not like OpenSearch or Elasticsearch (no version in GET /)",
            hint="check that --url points at the cluster's HTTP port",
        )
    number = str(version["number"])
    if version.get("distribution") == "opensearch":
        return EngineVersion("opensearch", number)
    return EngineVersion("elasticsearch", number)


def root_from_node_info(body: Mapping[str, Any]) -> JSON:
    """A ``GET /``-shaped body built from ``GET /_nodes/_local/none``.

    Minimal distributions (Elasticsearch's integ-test-zip among them) lack the root endpoint,
    which lives in a module there; node info is always served.
    """
    nodes = body.get("nodes") or {}
    if not nodes:
        raise ClusterError("the cluster answered node info without any node")
    node = next(iter(nodes.values()))
    is_elasticsearch = "build_flavor" in node or "transport_version" in node
    version: JSON = {"number": node.get("version")}
    if not is_elasticsearch:
        version["distribution"] = "opensearch"
    return {"name": node.get("name"), "cluster_name": body.get("cluster_name"),
            "version": version}


def common_modules(body: Mapping[str, Any]) -> frozenset[str]:
    """The modules and plugins every node runs, from ``GET _nodes/plugins`` (empty: no node)."""
    nodes = body.get("nodes") or {}
    found: frozenset[str] | None = None
    for node in nodes.values():
        names = frozenset(str(m.get("name")) for m in
                          (node.get("modules") or []) + (node.get("plugins") or []))
        found = names if found is None else found & names
    return found or frozenset()


def settings_of(body: Mapping[str, Any] | None, index: str) -> JSON:
    """One index's ``settings`` object from a ``GET <index>/_settings`` answer ({} if absent)."""
    settings: JSON = ((body or {}).get(index) or {}).get("settings") or {}
    return settings


def blocks_of(flat_settings: Mapping[str, Any]) -> dict[str, bool]:
    """``index.blocks.*`` of flat settings as block name → set (``{"write": True, ...}``)."""
    prefix = "index.blocks."
    return {key.removeprefix(prefix): str(value).lower() == "true"
            for key, value in flat_settings.items() if key.startswith(prefix)}


def _status_of(exc: BaseException) -> int | None:
    status = getattr(exc, "status_code", None)
    if isinstance(status, int):
        return status
    meta = getattr(exc, "meta", None)
    status = getattr(meta, "status", None)
    return status if isinstance(status, int) else None


def _reason_of(exc: BaseException) -> str:
    info = getattr(exc, "info", None)
    if info is None:
        info = getattr(exc, "body", None)
    if isinstance(info, dict):
        error = info.get("error")
        if isinstance(error, dict):
            root_causes = error.get("root_cause") or []
            first = root_causes[0] if root_causes else error
            reason = first.get("reason") or error.get("reason") or error.get("type")
            if reason:
                return str(reason)
        elif isinstance(error, str):
            return error
    if isinstance(info, str) and info:
        return info[:200]
    text = getattr(exc, "error", None) or getattr(exc, "message", None) or str(exc)
    return str(text).splitlines()[0][:200] if text else type(exc).__name__


def _is_connection_failure(exc: BaseException) -> bool:
    return isinstance(
        exc,
        opensearchpy.ConnectionError
        | opensearchpy.ConnectionTimeout
        | elastic_transport.ConnectionError
        | elastic_transport.ConnectionTimeout,
    )


def translate_error(exc: BaseException, url: str, what: str) -> IndexshiftError:
    """Map a client exception to indexshift's own error, with advice."""
    if isinstance(exc, IndexshiftError):
        return exc
    if isinstance(exc, opensearchpy.SSLError | elastic_transport.TlsError):
        return ClusterUnreachable(
            f"TLS handshake with {url} failed: {_reason_of(exc)}",
            hint="pass --ca-bundle with the cluster's CA, or --insecure for a throwaway cluster",
        )
    if isinstance(exc, opensearchpy.ConnectionTimeout | elastic_transport.ConnectionTimeout):
        return ClusterUnreachable(
            f"{url} did not answer {what} in time",
            hint="check the URL and the network, or raise --timeout",
        )
    if _is_connection_failure(exc):
        return ClusterUnreachable(
            f"cannot connect to {url}",
            hint="check the URL and that the cluster is running (`indexshift sandbox status`)",
        )
    status = _status_of(exc)
    reason = _reason_of(exc)
    if status == 401:
        return AuthFailed(
            f"{url} refused the credentials (HTTP 401)",
            hint="check --username/--password or --api-key (INDEXSHIFT_USERNAME, ...)",
            status=status,
        )
    if status == 403 and "blocked by" in reason:
        # An index block (read-only, write block during a cut-over) is not an auth failure.
        return Rejected(f"{what}: refused by an index block: {reason}", status=status)
    if status == 403:
        return AuthFailed(
            f"{url} denied {what} (HTTP 403): {reason}",
            hint="use a user whose role allows it",
            status=status,
        )
    if status == 404:
        return NotFound(f"{what}: not found ({reason})", status=status)
    if status == 409:
        return Conflict(f"{what}: conflict ({reason})", status=status)
    if status in (400, 413, 429):
        return Rejected(f"{what}: rejected by the cluster (HTTP {status}): {reason}", status=status)
    if status is not None and status >= 500:
        return ServerError(f"{what}: cluster error (HTTP {status}): {reason}", status=status)
    if status is not None:
        return ClusterError(f"{what}: HTTP {status}: {reason}", status=status)
    return ClusterError(f"{what}: {type(exc).__name__}: {reason}")


def _should_retry(exc: BaseException) -> bool:
    if isinstance(exc, ClusterUnreachable) and not isinstance(exc, AuthFailed):
        return "TLS" not in exc.message
    return isinstance(exc, ServerError) and exc.status in _RETRYABLE_STATUS


@dataclass(frozen=True)
class BulkResult:
    sent: int
    failed: int
    first_error: str | None
    took_ms: int


class Cluster:
    """One connection to one cluster, through the engine's official client."""

    def __init__(self, config: ConnectionConfig, client: Any, engine: EngineVersion,
                 root: JSON) -> None:
        self.config = config
        self.engine = engine
        self.root = root
        self._client = client

    # -- connecting -------------------------------------------------------------------------

    @classmethod
    def connect(cls, config: ConnectionConfig) -> Cluster:
        """Reach the cluster, learn its engine and version, and open the matching client."""
        probe = _opensearch_client(config)
        try:
            root = _send_with_retries(
                lambda: probe.transport.perform_request("GET", "/"), config.url, "GET /"
            )
        except ClusterError as exc:
            if exc.status not in (400, 404, 405):
                raise
            info = _send_with_retries(
                lambda: probe.transport.perform_request("GET", "/_nodes/_local/none"),
                config.url, "node info",
            )
            root = root_from_node_info(info)
        if not isinstance(root, dict):
            raise ClusterError(f"{config.url} answered GET / with something that is not JSON")
        engine = detect_engine(root)
        if engine.engine == "opensearch":
            return cls(config, probe, engine, root)
        if engine.major < 7:
            raise ClusterError(
                f"Elasticsearch {engine.version} is too old; indexshift supports 7.10 and newer"
            )
        probe.close()
        return cls(config, _elasticsearch_client(config), engine, root)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the one way out --------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        body: Any = None,
        what: str | None = None,
    ) -> Any:
        """Send one REST call and return the decoded body. GET/HEAD are retried briefly."""
        what = what or f"{method} {path}"
        clean_params = {k: _param(v) for k, v in (params or {}).items() if v is not None}

        def send() -> Any:
            if self.engine.engine == "opensearch":
                # Parameters go in the URL ourselves: opensearch-py takes some names (timeout,
                # ignore) for its own use. It answers a HEAD with True/False, not a 404 error.
                url = f"{path}?{urlencode(clean_params)}" if clean_params else path
                return self._client.transport.perform_request(method, url, body=body)
            headers = {"accept": "application/json"}
            if body is not None:
                headers["content-type"] = "application/json"
            response = self._client.perform_request(
                method, path, params=clean_params or None, headers=headers, body=body
            )
            return 200 <= response.meta.status < 300 if method == "HEAD" else response.body

        if method in ("GET", "HEAD"):
            return _send_with_retries(send, self.config.url, what)
        try:
            return send()
        except Exception as exc:
            raise translate_error(exc, self.config.url, what) from exc

    # -- reads ------------------------------------------------------------------------------

    def health(self, index: str | None = None, **params: Any) -> JSON:
        path = f"/_cluster/health/{index}" if index else "/_cluster/health"
        result: JSON = self.request("GET", path, params=params, what="cluster health")
        return result

    def nodes(self) -> list[JSON]:
        rows: list[JSON] = self.request(
            "GET", "/_cat/nodes",
            params={"format": "json", "h": "name,ip,node.role,heap.percent,disk.used_percent,pid"},
            what="list nodes",
        )
        return rows

    def disk(self) -> list[JSON]:
        """Per-node disk use from ``_cat/allocation`` (bytes)."""
        rows: list[JSON] = self.request(
            "GET", "/_cat/allocation", params={"format": "json", "bytes": "b"},
            what="disk allocation",
        )
        return [r for r in rows if r.get("node") not in (None, "UNASSIGNED")]

    def indices(self, pattern: str = "*", columns: Sequence[str] | None = None) -> list[JSON]:
        """``_cat/indices`` rows (sizes in bytes, hidden and closed indices included).

        ``columns`` picks the columns (``creation.date`` is not among the default ones).
        """
        rows: list[JSON] = self.request(
            "GET", f"/_cat/indices/{pattern}",
            params={"format": "json", "bytes": "b", "expand_wildcards": "all",
                    "h": list(columns) if columns else None},
            what="list indices",
        )
        return rows

    def cat(self, endpoint: str, **params: Any) -> str:
        """``_cat/<endpoint>`` as the text table people read (``v=True`` adds the header)."""
        text = self.request("GET", f"/_cat/{endpoint}", params={**params, "format": "txt"},
                            what=f"_cat/{endpoint}")
        return str(text)

    def aliases(self) -> dict[str, list[str]]:
        """alias name → the indices it points at (system/hidden indices included)."""
        found: dict[str, list[str]] = {}
        body: JSON = self.request("GET", "/_alias", params={"expand_wildcards": "all"},
                                  what="list aliases")
        for index, entry in body.items():
            for alias in (entry.get("aliases") or {}):
                found.setdefault(alias, []).append(index)
        for targets in found.values():
            targets.sort()
        return found

    def alias_targets(self, alias: str) -> dict[str, JSON]:
        """index → alias properties (is_write_index, filter...) for one alias; {} if absent."""
        try:
            body: JSON = self.request("GET", f"/_alias/{alias}", what=f"look up alias {alias}")
        except NotFound:
            return {}
        return {index: (entry.get("aliases") or {}).get(alias, {})
                for index, entry in body.items()}

    def index_exists(self, index: str) -> bool:
        try:
            return bool(self.request("HEAD", f"/{index}", what=f"check index {index}"))
        except NotFound:
            return False

    def count(self, index: str, query: JSON | None = None) -> int:
        """How many documents ``index`` holds, or how many of them match ``query``."""
        if query is None:
            body: JSON = self.request("GET", f"/{index}/_count", what=f"count {index}")
        else:
            body = self.request("POST", f"/{index}/_count", body={"query": query},
                                what=f"count matching documents in {index}")
        return int(body["count"])

    def mapping(self, index: str, *, include_hidden: bool = False) -> JSON:
        """index → ``{"mappings": ...}``; ``include_hidden`` expands patterns to hidden ones."""
        body: JSON = self.request("GET", f"/{index}/_mapping",
                                  params={"expand_wildcards": "all" if include_hidden else None},
                                  what=f"mapping of {index}")
        return body

    def settings(self, index: str, *, include_hidden: bool = False) -> JSON:
        """index → ``{"settings": ...}``; ``include_hidden`` expands patterns to hidden ones."""
        body: JSON = self.request("GET", f"/{index}/_settings",
                                  params={"expand_wildcards": "all" if include_hidden else None},
                                  what=f"settings of {index}")
        return body

    def index_settings(self, index: str, name: str | None = None, *,
                       flat: bool = False) -> JSON:
        """The settings of one concrete index ({} when it reports none).

        Nested (``{"index": {"number_of_replicas": "1", ...}}``) or, with ``flat``, dotted
        (``{"index.number_of_replicas": "1"}``); ``name`` narrows them (``index.blocks.*``).
        """
        path = f"/{index}/_settings/{name}" if name else f"/{index}/_settings"
        body: JSON = self.request("GET", path,
                                  params={"flat_settings": True if flat else None,
                                          "expand_wildcards": "all"},
                                  what=f"settings of {index}")
        return settings_of(body, index)

    def index_blocks(self, index: str) -> dict[str, bool]:
        """The blocks set on one index: ``{"write": True, "read_only": False, ...}``."""
        return blocks_of(self.index_settings(index, "index.blocks.*", flat=True))

    def shard_stats(self, index: str, metric: str = "docs") -> list[JSON]:
        """``_stats/<metric>`` of every shard copy of ``index``, primaries and replicas.

        Each entry carries ``routing`` (``primary``, ``node``) and ``seq_no`` with the metric.
        """
        body: JSON = self.request("GET", f"/{index}/_stats/{metric}",
                                  params={"level": "shards"},
                                  what=f"shard stats of {index}")
        return [copy for entry in (body.get("indices") or {}).values()
                for copies in (entry.get("shards") or {}).values() for copy in copies]

    def recovery(self, index: str, *, filter_path: str | None = None) -> JSON:
        """``GET <index>/_recovery``: how each shard of the index came to be."""
        body: JSON = self.request("GET", f"/{index}/_recovery",
                                  params={"filter_path": filter_path},
                                  what=f"read how {index} was recovered")
        return body or {}

    def node_settings(self, filter_path: str | None = None) -> JSON:
        """``GET _nodes/settings``, narrowed by ``filter_path`` (``nodes.*.settings.path.repo``)."""
        body: JSON = self.request("GET", "/_nodes/settings", params={"filter_path": filter_path},
                                  what="read node settings")
        return body or {}

    def modules_on_every_node(self) -> frozenset[str]:
        """The modules and plugins that every node runs (``reindex``, ``lang-painless``...)."""
        body: JSON = self.request(
            "GET", "/_nodes/plugins",
            params={"filter_path": "nodes.*.modules.name,nodes.*.plugins.name"},
            what="list node modules")
        return common_modules(body or {})

    def fielddata_bytes(self, index: str, field: str) -> int:
        """Heap the field's fielddata holds across the index's shards."""
        body: JSON = self.request(
            "GET", f"/{index}/_stats/fielddata",
            params={"fields": field, "filter_path":
                    f"_all.total.fielddata.fields.{field}.memory_size_in_bytes"},
            what=f"fielddata of {index}")
        fields = (((body or {}).get("_all") or {}).get("total") or {}).get("fielddata") or {}
        return int(((fields.get("fields") or {}).get(field) or {}).get("memory_size_in_bytes", 0))

    def clear_fielddata(self, index: str, field: str) -> None:
        self.request("POST", f"/{index}/_cache/clear",
                     params={"fielddata": True, "fields": field},
                     what=f"drop {field} fielddata of {index}")

    def has_module_everywhere(self, name: str) -> bool:
        """Whether every node runs the module or plugin ``name``."""
        return name in self.modules_on_every_node()

    # -- writes -----------------------------------------------------------------------------

    def create_index(self, index: str, body: JSON) -> None:
        self.request("PUT", f"/{index}", body=body, what=f"create index {index}")

    def delete_index(self, index: str) -> None:
        self.request("DELETE", f"/{index}", what=f"delete index {index}")

    def put_settings(self, index: str, settings: JSON) -> None:
        self.request("PUT", f"/{index}/_settings", body=settings,
                     what=f"update settings of {index}")

    def add_write_block(self, index: str) -> None:
        """Block writes, returning only once writes already in flight have finished.

        Unlike setting ``index.blocks.write`` directly, the ``_block`` API takes every shard's
        operation permits, so no write that passed the check before the block lands after.
        """
        self.request("PUT", f"/{index}/_block/write", what=f"block writes on {index}")

    def remove_write_block(self, index: str) -> None:
        self.put_settings(index, {"index": {"blocks": {"write": False}}})

    def update_aliases(self, actions: list[JSON]) -> None:
        """Apply alias actions in one atomic ``_aliases`` call."""
        self.request("POST", "/_aliases", body={"actions": actions}, what="update aliases")

    def refresh(self, index: str) -> None:
        self.request("POST", f"/{index}/_refresh", what=f"refresh {index}")

    def put_pipeline(self, name: str, body: JSON) -> None:
        """Register (or replace) the ingest pipeline ``name``."""
        self.request("PUT", f"/_ingest/pipeline/{name}", body=body,
                     what=f"register ingest pipeline {name}")

    # -- documents (journal records, leases, selective copies) -------------------------------

    def get_doc(self, index: str, doc_id: str) -> JSON | None:
        """The document with its ``_seq_no``/``_primary_term``, or None when absent."""
        try:
            body: JSON = self.request("GET", f"/{index}/_doc/{quote(doc_id, safe='')}",
                                      what=f"read {index}/{doc_id}")
        except NotFound:
            return None
        return body if body.get("found") else None

    def put_doc(self, index: str, doc_id: str, source: JSON, *, create_only: bool = False,
                if_seq_no: int | None = None, if_primary_term: int | None = None,
                refresh: bool | str | None = None) -> JSON:
        """Index one document. ``create_only`` and ``if_seq_no`` raise Conflict when beaten."""
        params: dict[str, Any] = {"refresh": refresh}
        if create_only:
            params["op_type"] = "create"
        if if_seq_no is not None:
            params.update(if_seq_no=if_seq_no, if_primary_term=if_primary_term)
        body: JSON = self.request("PUT", f"/{index}/_doc/{quote(doc_id, safe='')}",
                                  params=params, body=source, what=f"write {index}/{doc_id}")
        return body

    def delete_doc(self, index: str, doc_id: str, *, if_seq_no: int | None = None,
                   if_primary_term: int | None = None,
                   refresh: bool | str | None = None) -> None:
        params: dict[str, Any] = {"refresh": refresh}
        if if_seq_no is not None:
            params.update(if_seq_no=if_seq_no, if_primary_term=if_primary_term)
        self.request("DELETE", f"/{index}/_doc/{quote(doc_id, safe='')}", params=params,
                     what=f"delete {index}/{doc_id}")

    def mget(self, index: str, ids: Sequence[str], *, source: bool = True) -> list[JSON]:
        """The ``_mget`` entries of these ids in order, ``found`` or not (real time: no
        refresh needed). Without ``source`` only whether each exists, not its body."""
        body: JSON = self.request(
            "POST", f"/{index}/_mget", params={"_source": None if source else False},
            body={"ids": list(ids)},
            what=f"read {len(ids)} documents from {index}" if source
            else f"look up {len(ids)} ids in {index}")
        return list(body.get("docs") or [])

    def search(self, index: str, body: JSON, **params: Any) -> JSON:
        result: JSON = self.request("POST", f"/{index}/_search", params=params, body=body,
                                    what=f"search {index}")
        return result

    def search_point_in_time(self, body: JSON, **params: Any) -> JSON:
        """A search inside the point in time ``body["pit"]`` names (no index in the path)."""
        result: JSON = self.request("POST", "/_search", params=params, body=body,
                                    what="search a point in time")
        return result

    def open_point_in_time(self, index: str, keep_alive: str = "2m") -> str:
        """A point-in-time id (OpenSearch: ``_search/point_in_time``; Elasticsearch: ``_pit``)."""
        if self.engine.engine == "opensearch":
            body = self.request("POST", f"/{index}/_search/point_in_time",
                                params={"keep_alive": keep_alive}, what=f"open PIT on {index}")
            return str(body["pit_id"])
        body = self.request("POST", f"/{index}/_pit", params={"keep_alive": keep_alive},
                            what=f"open PIT on {index}")
        return str(body["id"])

    def close_point_in_time(self, pit_id: str) -> None:
        try:
            if self.engine.engine == "opensearch":
                self.request("DELETE", "/_search/point_in_time", body={"pit_id": [pit_id]},
                             what="close PIT")
            else:
                self.request("DELETE", "/_pit", body={"id": pit_id}, what="close PIT")
        except NotFound:
            pass  # already expired: nothing to free

    def scroll(self, scroll_id: str, keep_alive: str = "2m", **params: Any) -> JSON:
        """The next page of a scroll, shaped by ``params`` (``filter_path``: only the keys
        the reader uses, for smaller pages)."""
        body: JSON = self.request("POST", "/_search/scroll", params=params,
                                  body={"scroll": keep_alive, "scroll_id": scroll_id},
                                  what="continue scroll")
        return body

    def clear_scroll(self, scroll_id: str) -> None:
        with contextlib.suppress(NotFound):
            self.request("DELETE", "/_search/scroll", body={"scroll_id": [scroll_id]},
                         what="clear scroll")

    # -- tasks (server-side copies) ----------------------------------------------------------

    def start_reindex(self, body: JSON, *, slices: int | str = "auto",
                      requests_per_second: float | None = None, refresh: bool = False) -> str:
        """Start ``_reindex`` as a server-side task and return its task id."""
        params: dict[str, Any] = {"wait_for_completion": False, "slices": slices,
                                  "refresh": refresh}
        if requests_per_second is not None:
            params["requests_per_second"] = requests_per_second
        result: JSON = self.request("POST", "/_reindex", params=params, body=body,
                                    what="start reindex")
        return str(result["task"])

    def reindex_now(self, body: JSON, *, refresh: bool = True) -> JSON:
        """Run ``_reindex`` and wait for its end; the answer counts created, updated,
        version_conflicts and lists failures. For small copies: no task to follow."""
        dest = (body.get("dest") or {}).get("index")
        result: JSON = self.request("POST", "/_reindex",
                                    params={"wait_for_completion": True, "refresh": refresh},
                                    body=body, what=f"copy documents into {dest}")
        return result

    def task(self, task_id: str) -> JSON:
        body: JSON = self.request("GET", f"/_tasks/{task_id}", what=f"read task {task_id}")
        return body

    def tasks(self, actions: str | None = "*reindex*", detailed: bool = True) -> JSON:
        """Running tasks by node; ``actions=None`` lists every task."""
        body: JSON = self.request("GET", "/_tasks", params={"actions": actions,
                                                           "detailed": detailed},
                                  what="list tasks")
        return body

    def cancel_task(self, task_id: str) -> None:
        self.request("POST", f"/_tasks/{task_id}/_cancel", what=f"cancel task {task_id}")

    def rethrottle_reindex(self, task_id: str, requests_per_second: float) -> None:
        rps = -1 if requests_per_second <= 0 else requests_per_second
        self.request("POST", f"/_reindex/{task_id}/_rethrottle",
                     params={"requests_per_second": rps}, what=f"rethrottle {task_id}")

    # -- snapshots ---------------------------------------------------------------------------

    def snapshot_repositories(self) -> JSON:
        body: JSON = self.request("GET", "/_snapshot", what="list snapshot repositories")
        return body

    def put_snapshot_repository(self, name: str, body: JSON) -> None:
        self.request("PUT", f"/_snapshot/{name}", body=body,
                     what=f"register snapshot repository {name}")

    def create_snapshot(self, repository: str, snapshot: str, body: JSON,
                        wait: bool = True) -> JSON:
        result: JSON = self.request(
            "PUT", f"/_snapshot/{repository}/{snapshot}",
            params={"wait_for_completion": wait}, body=body,
            what=f"snapshot {repository}/{snapshot}",
        )
        return result

    def snapshots(self, repository: str, pattern: str = "_all") -> list[JSON]:
        body: JSON = self.request("GET", f"/_snapshot/{repository}/{pattern}",
                                  what=f"list snapshots in {repository}")
        return list(body.get("snapshots", []))

    def snapshot_status(self, repository: str, snapshot: str) -> JSON:
        """``_snapshot/<repository>/<snapshot>/_status``: per index and shard, what it holds."""
        body: JSON = self.request("GET", f"/_snapshot/{repository}/{snapshot}/_status",
                                  what=f"status of snapshot {snapshot}")
        return body

    def restore_snapshot(self, repository: str, snapshot: str, body: JSON,
                         wait: bool = True) -> JSON:
        result: JSON = self.request(
            "POST", f"/_snapshot/{repository}/{snapshot}/_restore",
            params={"wait_for_completion": wait}, body=body,
            what=f"restore {repository}/{snapshot}",
        )
        return result

    def delete_snapshot(self, repository: str, snapshot: str) -> None:
        self.request("DELETE", f"/_snapshot/{repository}/{snapshot}",
                     what=f"delete snapshot {repository}/{snapshot}")

    def cluster_settings(self, *, include_defaults: bool = True) -> JSON:
        """Flat cluster settings: persistent, transient and (by default) the defaults."""
        body: JSON = self.request("GET", "/_cluster/settings",
                                  params={"include_defaults": True if include_defaults else None,
                                          "flat_settings": True},
                                  what="cluster settings")
        return body

    def stats(self, index: str) -> JSON:
        body: JSON = self.request("GET", f"/{index}/_stats", what=f"stats of {index}")
        return body

    def bulk(self, operations: list[JSON]) -> BulkResult:
        """Send raw bulk lines (action and source dicts in order) in one request."""
        payload = "".join(json.dumps(op, separators=(",", ":")) + "\n" for op in operations)
        return self._send_bulk(payload, "bulk")

    def bulk_index(self, index: str, docs: Iterable[tuple[str, JSON]]) -> BulkResult:
        """Index (id, source) pairs in one ``_bulk`` request; per-item failures are counted."""
        lines: list[str] = []
        for doc_id, source in docs:
            lines.append(json.dumps({"index": {"_index": index, "_id": doc_id}}))
            lines.append(json.dumps(source, separators=(",", ":")))
        return self._send_bulk("\n".join(lines) + "\n", f"bulk load into {index}")

    def _send_bulk(self, payload: str, what: str) -> BulkResult:
        try:
            if self.engine.engine == "opensearch":
                body = self._client.bulk(body=payload)
            else:
                body = self._client.bulk(operations=payload).body
        except Exception as exc:
            raise translate_error(exc, self.config.url, what) from exc
        failed = 0
        first_error: str | None = None
        if body.get("errors"):
            for item in body["items"]:
                result = next(iter(item.values()))
                if result.get("error"):
                    failed += 1
                    if first_error is None:
                        error = result["error"]
                        first_error = error.get("reason") if isinstance(error, dict) else error
        return BulkResult(sent=len(body.get("items", [])), failed=failed,
                          first_error=first_error, took_ms=int(body.get("took", 0)))


def _param(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    return str(value)


def _send_with_retries(send: Any, url: str, what: str) -> Any:
    # Short, bounded retries: an operator waiting on `info` must hear "unreachable" in seconds.
    @retry(
        retry=retry_if_exception(_should_retry),
        stop=stop_after_attempt(3) | stop_after_delay(4),
        wait=wait_exponential(multiplier=0.2, max=1.0),
        reraise=True,
    )
    def attempt() -> Any:
        try:
            return send()
        except Exception as exc:
            raise translate_error(exc, url, what) from exc

    return attempt()


def _opensearch_client(config: ConnectionConfig) -> Any:
    headers: dict[str, str] = {}
    if config.api_key is not None:
        headers["authorization"] = f"ApiKey {config.api_key.get_secret_value()}"
    kwargs: dict[str, Any] = {
        "hosts": [config.url],
        "timeout": config.timeout_s,
        "max_retries": 0,
        "retry_on_timeout": False,
        "verify_certs": config.verify_tls,
        "ssl_show_warn": config.verify_tls,
        "headers": headers or None,
    }
    if config.username is not None:
        password = config.password.get_secret_value() if config.password else ""
        kwargs["http_auth"] = (config.username, password)
    if config.ca_bundle is not None:
        kwargs["ca_certs"] = str(config.ca_bundle)
    return opensearchpy.OpenSearch(**kwargs)


def _elasticsearch_client(config: ConnectionConfig) -> Any:
    kwargs: dict[str, Any] = {
        "request_timeout": config.timeout_s,
        "max_retries": 0,
        "retry_on_timeout": False,
        "verify_certs": config.verify_tls,
        "ssl_show_warn": config.verify_tls,
    }
    if config.username is not None:
        password = config.password.get_secret_value() if config.password else ""
        kwargs["basic_auth"] = (config.username, password)
    if config.api_key is not None:
        kwargs["api_key"] = config.api_key.get_secret_value()
    if config.ca_bundle is not None:
        kwargs["ca_certs"] = str(config.ca_bundle)
    return elasticsearch.Elasticsearch(config.url, **kwargs)
