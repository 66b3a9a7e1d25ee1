"""Pure parts of the cluster adapter: engine detection, error translation, answers read."""

import opensearchpy
import pytest

from indexshift.cluster import (
    blocks_of,
    common_modules,
    detect_engine,
    root_from_node_info,
    settings_of,
    translate_error,
)
from indexshift.errors import (
    AuthFailed,
    ClusterError,
    ClusterUnreachable,
    Conflict,
    ExitCode,
    NotFound,
    Rejected,
    ServerError,
)


def test_detects_opensearch_and_elasticsearch_from_root() -> None:
    os_root = {"version": {"number": "2.19.6", "distribution": "opensearch"}}
    es_root = {"version": {"number": "8.19.13", "build_flavor": "default"}}
    assert detect_engine(os_root).engine == "opensearch"
    assert detect_engine(os_root).major == 2
    assert str(detect_engine(es_root)) == "elasticsearch 8.19.13"
    with pytest.raises(ClusterError, match="not like OpenSearch"):
        detect_engine({"hello": "world"})


def test_root_from_node_info_tells_engines_apart() -> None:
    es = {"cluster_name": "c", "nodes": {"x": {"name": "n", "version": "8.19.13",
                                               "build_flavor": "default"}}}
    os_ = {"cluster_name": "c", "nodes": {"x": {"name": "n", "version": "2.19.6",
                                                "roles": ["cluster_manager"]}}}
    assert detect_engine(root_from_node_info(es)).engine == "elasticsearch"
    assert detect_engine(root_from_node_info(os_)).engine == "opensearch"
    assert root_from_node_info(es)["cluster_name"] == "c"


@pytest.mark.parametrize(
    ("exc", "expected", "code"),
    [
        (opensearchpy.ConnectionError("N/A", "refused", None), ClusterUnreachable,
         ExitCode.UNREACHABLE),
        (opensearchpy.AuthenticationException(401, "unauthorized", {}), AuthFailed,
         ExitCode.UNREACHABLE),
        (opensearchpy.AuthorizationException(403, "forbidden", {}), AuthFailed,
         ExitCode.UNREACHABLE),
        (opensearchpy.NotFoundError(404, "index_not_found_exception",
                                    {"error": {"reason": "no such index [x]"}}), NotFound,
         ExitCode.CLUSTER_REFUSED),
        (opensearchpy.ConflictError(409, "version_conflict", {}), Conflict,
         ExitCode.CLUSTER_REFUSED),
        (opensearchpy.TransportError(429, "too many", {}), Rejected, ExitCode.CLUSTER_REFUSED),
        (opensearchpy.TransportError(503, "unavailable", {}), ServerError,
         ExitCode.CLUSTER_REFUSED),
    ],
)
def test_client_errors_become_our_own(exc: Exception, expected: type, code: ExitCode) -> None:
    translated = translate_error(exc, "http://h:9200", "count x")
    assert type(translated) is expected
    assert translated.exit_code == code


def test_not_found_message_carries_the_reason() -> None:
    exc = opensearchpy.NotFoundError(404, "index_not_found_exception",
                                     {"error": {"root_cause": [{"reason": "no such index [x]"}]}})
    assert "no such index [x]" in str(translate_error(exc, "http://h", "count x"))


def test_auth_failure_says_what_to_check() -> None:
    exc = opensearchpy.AuthenticationException(401, "unauthorized", {})
    assert "--username" in str(translate_error(exc, "http://h", "GET /"))


def test_index_block_is_rejected_not_auth() -> None:
    exc = opensearchpy.AuthorizationException(
        403, "cluster_block_exception",
        {"error": {"root_cause": [{"reason": "index [a] blocked by: [FORBIDDEN/8/index write "
                                             "(api)];"}]}})
    translated = translate_error(exc, "http://h", "write a/1")
    assert type(translated) is Rejected


def test_common_modules_are_those_every_node_runs() -> None:
    body = {"nodes": {
        "a": {"modules": [{"name": "reindex"}, {"name": "lang-painless"}],
              "plugins": [{"name": "analysis-icu"}]},
        "b": {"modules": [{"name": "reindex"}], "plugins": [{"name": "analysis-icu"}]},
    }}
    assert common_modules(body) == {"reindex", "analysis-icu"}
    assert common_modules({"nodes": {"a": {"modules": [{"name": "x"}]}, "b": {}}}) == set()
    assert common_modules({"nodes": {}}) == set()
    assert common_modules({}) == set()


def test_settings_of_one_index_from_a_settings_answer() -> None:
    body = {"files-v1": {"settings": {"index": {"number_of_replicas": "1"}}}}
    assert settings_of(body, "files-v1") == {"index": {"number_of_replicas": "1"}}
    assert settings_of(body, "files-v2") == {}
    assert settings_of(None, "files-v1") == {}
    assert settings_of({"files-v1": {}}, "files-v1") == {}


def test_blocks_of_flat_settings() -> None:
    flat = {"index.blocks.write": "true", "index.blocks.read_only": "false",
            "index.blocks.read_only_allow_delete": "TRUE", "index.number_of_shards": "1"}
    assert blocks_of(flat) == {"write": True, "read_only": False,
                               "read_only_allow_delete": True}
    assert blocks_of({}) == {}
