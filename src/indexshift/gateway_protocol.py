"""What the gateway reads in requests and writes in answers (pure, no I/O).

Which requests are writes and of which kind, the headers forwarded and logged, how upstream's
status becomes a log outcome, ``_bulk`` bodies split into items and single-document writes
rewritten as bulk lines for the replay, and the gateway's own answers.
"""

from __future__ import annotations

import functools
import gzip
import json
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final, NamedTuple
from urllib.parse import parse_qsl, unquote

from multidict import CIMultiDict

from indexshift.errors import BadInput
from indexshift.wal import LogGap as LogGap  # noqa: PLC0414  # re-exported: /log's error
from indexshift.wal import (
    Outcome,
)

JSON = dict[str, Any]
ADMIN_PREFIX: Final = "/_indexshift/gateway"  # index names cannot start with "_"


class Mode(StrEnum):
    NORMAL = "normal"
    READ_ONLY = "read-only"


# -- classifying requests (pure) ---------------------------------------------------------------


class RequestKind(StrEnum):
    READ = "read"
    WRITE = "write"  # logged before it is forwarded
    UNRECORDED_WRITE = "unrecorded_write"  # passes through, counted: _update/_delete_by_query


class WriteOp(StrEnum):
    INDEX = "index"
    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"
    BULK = "bulk"


@dataclass(frozen=True)
class Classified:
    kind: RequestKind
    op: WriteOp | None = None
    index: str | None = None  # the alias or index in the path, decoded
    doc_id: str | None = None  # decoded; None for auto-id and bulk
    api: str | None = None  # for unrecorded writes: which API


def path_segments(path: str) -> list[str]:
    """The raw (still percent-encoded) segments of a request path, without empty ones at the
    ends: ``/i/_doc/a%2Fb/`` → ``["i", "_doc", "a%2Fb"]``."""
    return [segment for segment in path.strip("/").split("/")] if path.strip("/") else []


def classify(method: str, path: str) -> Classified:
    """Whether a request is a document write the log must hold, from its method and path.

    Errs towards "write": logging something upstream then rejects costs one record; letting a
    write through unlogged would break the guarantee.
    """
    method = method.upper()
    parts = path_segments(path)
    read = Classified(RequestKind.READ)
    if not parts:
        return read
    if len(parts) == 1 and parts[0] == "_bulk":
        return Classified(RequestKind.WRITE, WriteOp.BULK) if method in ("POST", "PUT") else read
    if parts[0].startswith("_"):
        return read  # cluster-level APIs: _search, _mget, _cat, _cluster, _scroll, PIT, ...
    index = unquote(parts[0])
    if len(parts) == 2:
        endpoint = parts[1]
        if endpoint == "_bulk" and method in ("POST", "PUT"):
            return Classified(RequestKind.WRITE, WriteOp.BULK, index)
        if endpoint == "_doc" and method == "POST":
            return Classified(RequestKind.WRITE, WriteOp.INDEX, index)
        if endpoint in ("_update_by_query", "_delete_by_query") and method == "POST":
            return Classified(RequestKind.UNRECORDED_WRITE, index=index, api=endpoint)
        return read
    if len(parts) == 3:
        endpoint, doc_id = parts[1], unquote(parts[2])
        if endpoint == "_doc" and method in ("PUT", "POST"):
            return Classified(RequestKind.WRITE, WriteOp.INDEX, index, doc_id)
        if endpoint == "_doc" and method == "DELETE":
            return Classified(RequestKind.WRITE, WriteOp.DELETE, index, doc_id)
        if endpoint == "_create" and method in ("PUT", "POST"):
            return Classified(RequestKind.WRITE, WriteOp.CREATE, index, doc_id)
        if endpoint == "_update" and method == "POST":
            return Classified(RequestKind.WRITE, WriteOp.UPDATE, index, doc_id)
    return read


# -- headers (pure) --------------------------------------------------------------------------

HOP_BY_HOP: Final = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
    "te", "trailer", "trailers", "transfer-encoding", "upgrade",
})
# Replay needs these to send a logged write again exactly; credentials are not logged.
LOGGED_HEADERS: Final = ("content-type", "content-encoding", "accept", "x-opaque-id")


def _connection_tokens(headers: Iterable[tuple[str, str]]) -> set[str]:
    tokens: set[str] = set()
    for name, value in headers:
        if name.lower() == "connection":
            tokens.update(t.strip().lower() for t in value.split(",") if t.strip())
    return tokens


def forward_request_headers(headers: Iterable[tuple[str, str]]) -> CIMultiDict[str]:
    """The client's headers to send upstream: all but hop-by-hop ones, Host (the upstream's
    own is set) and Content-Length / Expect (the proxy sends the body it holds)."""
    items = list(headers)
    drop = HOP_BY_HOP | _connection_tokens(items) | {"host", "content-length", "expect"}
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in items:
        if name.lower() not in drop:
            out.add(name, value)
    return out


def response_headers(headers: Iterable[tuple[str, str]], *,
                     keep_length: bool) -> CIMultiDict[str]:
    """Upstream's response headers for the client, minus hop-by-hop ones. Content-Length is
    kept when the body is relayed byte for byte, dropped when the proxy sets its own."""
    items = list(headers)
    drop = HOP_BY_HOP | _connection_tokens(items)
    if not keep_length:
        drop = drop | {"content-length"}
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in items:
        if name.lower() not in drop:
            out.add(name, value)
    return out


def logged_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(name.lower(), value) for name, value in headers if name.lower() in LOGGED_HEADERS]


def decoded_headers(raw: Iterable[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in raw]


# -- outcomes (pure) -------------------------------------------------------------------------


def is_retryable_status(status: int, *, client_waiting: bool) -> bool:
    """Whether an upstream status means "try again later" rather than a final answer.

    5xx is retried (501/505 say the request itself is unsupported). 429 is final for a client
    that waits for the answer (it backs off and retries itself, as against the cluster
    directly) and retried by the replay worker, which has nobody to hand it to.
    """
    if status >= 500:
        return status not in (501, 505)
    return status == 429 and not client_waiting


def outcome_of(status: int) -> Outcome:
    return Outcome.APPLIED if 200 <= status < 300 else Outcome.REJECTED


def decode_body(body: bytes, content_encoding: str | None) -> bytes:
    """The body with its Content-Encoding undone (``ValueError`` for an unknown one)."""
    encoding = (content_encoding or "identity").strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding in ("gzip", "x-gzip"):
        return gzip.decompress(body)
    if encoding == "deflate":
        try:
            return zlib.decompress(body)
        except zlib.error:
            return zlib.decompress(body, -zlib.MAX_WBITS)
    raise ValueError(f"unsupported content-encoding {content_encoding!r}")


@dataclass(frozen=True)
class BulkItem:
    op: str
    index: str | None
    doc_id: str | None
    lines: bytes  # the action line and its source line, newline-terminated


def split_bulk(body: bytes) -> list[BulkItem]:
    """The items of a ``_bulk`` NDJSON body, in order (``ValueError`` when it is malformed)."""
    lines = body.split(b"\n")
    items: list[BulkItem] = []
    at = 0
    while at < len(lines):
        line = lines[at].strip()
        if not line:
            at += 1
            continue
        action = json.loads(line)
        if not isinstance(action, dict) or len(action) != 1:
            raise ValueError(f"bulk action line {at + 1} is not a single-key object")
        ((op, meta),) = action.items()
        meta = meta if isinstance(meta, dict) else {}
        index = meta.get("_index")
        doc_id = meta.get("_id")
        if op == "delete":
            chunk = lines[at] + b"\n"
            at += 1
        else:
            if at + 1 >= len(lines) or not lines[at + 1].strip():
                raise ValueError(f"bulk {op} action on line {at + 1} has no source line")
            chunk = lines[at] + b"\n" + lines[at + 1] + b"\n"
            at += 2
        items.append(BulkItem(str(op), None if index is None else str(index),
                              None if doc_id is None else str(doc_id), chunk))
    return items


# -- replaying single-document writes as one _bulk (pure) ------------------------------------

_META_PARAMS: Final[dict[str, tuple[str, type]]] = {
    # query parameter → (bulk action metadata field, type)
    "routing": ("routing", str),
    "version": ("version", int),
    "version_type": ("version_type", str),
    "if_seq_no": ("if_seq_no", int),
    "if_primary_term": ("if_primary_term", int),
    "pipeline": ("pipeline", str),
    "require_alias": ("require_alias", bool),
    "retry_on_conflict": ("retry_on_conflict", int),
}
_ALLOWED_META: Final[dict[WriteOp, frozenset[str]]] = {
    WriteOp.INDEX: frozenset({"routing", "version", "version_type", "if_seq_no",
                              "if_primary_term", "pipeline", "require_alias"}),
    WriteOp.CREATE: frozenset({"routing", "version", "version_type", "pipeline",
                               "require_alias"}),
    WriteOp.DELETE: frozenset({"routing", "version", "version_type", "if_seq_no",
                               "if_primary_term"}),
    WriteOp.UPDATE: frozenset({"routing", "if_seq_no", "if_primary_term", "retry_on_conflict",
                               "require_alias"}),
}
# Parameters that only shape the response nobody reads during a replay.
_RESPONSE_ONLY_PARAMS: Final = frozenset({"pretty", "human", "error_trace", "filter_path"})


class BulkLine(NamedTuple):
    """A single-document write rewritten as one ``_bulk`` item (a tuple: made by the
    thousand during a replay)."""

    lines: bytes
    refresh: str  # "" (none), "true" or "wait_for": a batch shares one
    key: tuple[str, str, str] | None  # (index, id, routing); None for an auto-id document


@functools.lru_cache(maxsize=256)
def _json_content(content_type: str | None) -> bool:
    if content_type is None:
        return True
    mime, *params = [p.strip().lower() for p in content_type.split(";")]
    if mime == "application/json":
        return True
    if mime == "application/vnd.elasticsearch+json":
        # Compatibility mode with an older major may change semantics: replay such a write as
        # it was sent, not rewritten.
        return "compatible-with=8" in [p.replace(" ", "") for p in params]
    return False


_json_name = functools.lru_cache(maxsize=1024)(json.dumps)  # index names repeat


def single_to_bulk(op: WriteOp, index: str, doc_id: str | None, query: str,
                   content_type: str | None, content_encoding: str | None,
                   body: bytes) -> BulkLine | None:
    """The ``_bulk`` item equivalent to a single-document write, or None when the write has
    something a bulk item cannot say exactly (then it is replayed as sent)."""
    if op is WriteOp.BULK or (content_encoding and content_encoding.lower() != "identity"):
        return None
    if doc_id is None and op is not WriteOp.INDEX:
        return None
    action = op.value
    refresh = ""
    routing = ""
    # Built as text: a replay rewrites thousands of these per second.
    fields = [f'"_index":{_json_name(index)}']
    if doc_id is not None:
        fields.append(f'"_id":{json.dumps(doc_id)}')
    for name, value in parse_qsl(query, keep_blank_values=True) if query else ():
        if name == "refresh":
            refresh = {"": "true", "true": "true", "false": "", "wait_for": "wait_for"}.get(
                value, "?")
            if refresh == "?":
                return None
        elif name == "op_type" and op == WriteOp.INDEX:
            if value == "create":
                action = "create"
            elif value != "index":
                return None
        elif name in _RESPONSE_ONLY_PARAMS:
            continue
        elif name in _ALLOWED_META[op]:
            field_name, kind = _META_PARAMS[name]
            converted: object = value
            if kind is bool:
                converted = value in ("", "true")
            elif kind is int:
                try:
                    converted = int(value)
                except ValueError:
                    return None
            if name == "routing":
                routing = value
            fields.append(f'"{field_name}":{json.dumps(converted)}')
        else:
            return None
    key = None if doc_id is None else (index, doc_id, routing)
    head = ('{"' + action + '":{' + ",".join(fields) + "}}\n").encode()
    if op == WriteOp.DELETE:
        return BulkLine(head, refresh, key)
    if not _json_content(content_type):
        return None
    source = body.strip()
    if not source.startswith(b"{"):
        return None
    # JSON never holds a raw newline inside a string, so this keeps the document byte-exact
    # apart from insignificant whitespace.
    source = source.replace(b"\r", b" ").replace(b"\n", b" ")
    return BulkLine(head + source + b"\n", refresh, key)


# -- answers (pure) --------------------------------------------------------------------------


def error_body(status: int, error_type: str, reason: str, **extra: Any) -> JSON:
    """An error shaped like the cluster's own, so clients raise their usual exception."""
    cause = {"type": error_type, "reason": reason}
    body: JSON = {"error": {"root_cause": [cause], **cause}, "status": status}
    if extra:
        body["_indexshift"] = extra
    return body


def queued_body(classified: Classified, seq: int, mode: Mode, body: bytes,
                content_encoding: str | None) -> JSON:
    """The 202 answer to a write queued in read-only mode, shaped like the write's own answer
    (a bulk answer lists every item as 202 "queued", so bulk helpers see success)."""
    gateway = {"seq": seq, "queued": True, "mode": mode.value,
               "reason": "the gateway is read-only: the write is durably logged and will be "
                         "applied, in order, when the mode returns to normal"}
    if classified.op != WriteOp.BULK:
        return {"_index": classified.index, "_id": classified.doc_id, "result": "queued",
                "_indexshift": gateway}
    try:
        items = split_bulk(decode_body(body, content_encoding))
    except (ValueError, OSError, EOFError, zlib.error):
        items = []
    return {
        "took": 0, "errors": False,
        "items": [{item.op: {"_index": item.index or classified.index, "_id": item.doc_id,
                             "status": 202, "result": "queued"}} for item in items],
        "_indexshift": gateway,
    }


def fallback_path(path: str, fallback_index: str, only_for: str | None = None) -> str | None:
    """The path of a read served from the fallback index instead, or None to leave it alone
    (cluster-level APIs, or a target other than ``only_for``)."""
    parts = path_segments(path)
    if not parts or parts[0].startswith("_"):
        return None
    if only_for is not None and unquote(parts[0]) != only_for:
        return None
    return "/" + "/".join([fallback_index, *parts[1:]])


def parse_listen(listen: str) -> tuple[str, int]:
    """``host:port`` (``[::1]:9201`` for IPv6) → (host, port); port 0 picks a free one."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise BadInput(f"--listen expects host:port, got {listen!r}")
    return host, int(port)


