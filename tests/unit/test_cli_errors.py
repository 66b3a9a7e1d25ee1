"""Bad input and unreachable clusters: one clear line, no traceback, the documented code."""

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from indexshift.errors import ExitCode
from tests.helpers import run_cli


def _one_line_error(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def test_unreachable_url_fails_fast_with_exit_3() -> None:
    started = time.monotonic()
    result = run_cli("info", "--url", "http://127.0.0.1:1")
    elapsed = time.monotonic() - started
    assert result.code == ExitCode.UNREACHABLE
    assert elapsed < 5, f"took {elapsed:.1f}s"
    assert "cannot connect to http://127.0.0.1:1" in _one_line_error(result.stderr)


def test_malformed_url_is_bad_input() -> None:
    result = run_cli("info", "--url", "localhost:9200")
    assert result.code == ExitCode.BAD_INPUT
    assert "http(s)://" in _one_line_error(result.stderr)


class _Refuses(BaseHTTPRequestHandler):
    """A stand-in for a secured cluster's front door: every request answers 401."""

    def _deny(self) -> None:
        body = b'{"error":{"type":"security_exception","reason":"missing authentication"}}'
        self.send_response(401)
        self.send_header("WWW-Authenticate", 'Basic realm="security"')
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_HEAD = do_POST = do_PUT = _deny  # noqa: N815

    def log_message(self, *args: object) -> None:
        return None


@pytest.fixture
def secured_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Refuses)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_bad_credentials_give_a_clear_auth_error(secured_url: str) -> None:
    result = run_cli("info", "--url", secured_url, "--username", "admin",
                     "--password", "wrong")
    assert result.code == ExitCode.UNREACHABLE
    line = _one_line_error(result.stderr)
    assert "refused the credentials (HTTP 401)" in line
    assert "wrong" not in result.stderr + result.stdout


def test_unknown_engine_is_bad_input() -> None:
    result = run_cli("sandbox", "up", "--engine", "solr")
    assert result.code == ExitCode.BAD_INPUT
    assert "unknown engine" in _one_line_error(result.stderr)


def test_usage_errors_exit_2() -> None:
    assert run_cli("info", "--no-such-flag").code == 2
