from pathlib import Path

import pytest

from indexshift.config import resolve_connection
from indexshift.errors import BadInput, ExitCode


def test_flag_beats_env_beats_file_beats_sandbox(tmp_path: Path) -> None:
    conf = tmp_path / "c.yaml"
    conf.write_text("url: http://file:9200\nusername: fileuser\n")
    env = {"INDEXSHIFT_CONFIG": str(conf), "INDEXSHIFT_URL": "http://env:9200"}
    cfg = resolve_connection(url="http://flag:9200", env=env, sandbox_url=lambda: "http://sb:1")
    assert cfg.url == "http://flag:9200"
    assert cfg.username == "fileuser"
    assert resolve_connection(env=env).url == "http://env:9200"
    assert resolve_connection(env={"INDEXSHIFT_CONFIG": str(conf)}).url == "http://file:9200"
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    cfg = resolve_connection(env={"INDEXSHIFT_CONFIG": str(empty)},
                             sandbox_url=lambda: "http://127.0.0.1:9200")
    assert cfg.url == "http://127.0.0.1:9200"


def test_no_url_anywhere_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(BadInput) as caught:
        resolve_connection(env={"XDG_CONFIG_HOME": str(tmp_path)}, sandbox_url=lambda: None)
    assert "sandbox up" in str(caught.value)
    assert caught.value.exit_code == ExitCode.BAD_INPUT


@pytest.mark.parametrize("url", ["localhost:9200", "ftp://x", "http://", "http://h:99999",
                                 "http://user:pw@host:9200"])
def test_bad_urls_are_bad_input(url: str, tmp_path: Path) -> None:
    with pytest.raises(BadInput):
        resolve_connection(url=url, env={"XDG_CONFIG_HOME": str(tmp_path)})


def test_tls_verification_is_on_unless_asked(tmp_path: Path) -> None:
    env = {"XDG_CONFIG_HOME": str(tmp_path)}
    assert resolve_connection(url="https://h:9200", env=env).verify_tls is True
    assert resolve_connection(url="https://h:9200", env=env, insecure=True).verify_tls is False
    env_insecure = {**env, "INDEXSHIFT_INSECURE": "1"}
    assert resolve_connection(url="https://h:9200", env=env_insecure).verify_tls is False


def test_secrets_are_redacted_and_hidden_from_repr(tmp_path: Path) -> None:
    cfg = resolve_connection(url="http://h:9200", username="u", password="hunter2",
                             api_key="k3y", env={"XDG_CONFIG_HOME": str(tmp_path)})
    assert "hunter2" not in repr(cfg)
    assert "hunter2" not in str(cfg.redacted())
    assert "k3y" not in str(cfg.redacted())
    assert cfg.password is not None and cfg.password.get_secret_value() == "hunter2"


def test_config_file_problems_are_bad_input(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("url: [unclosed\n")
    with pytest.raises(BadInput, match="not valid YAML"):
        resolve_connection(env={"INDEXSHIFT_CONFIG": str(bad)})
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("url: http://h:9200\npasword: typo\n")
    with pytest.raises(BadInput, match="pasword"):
        resolve_connection(env={"INDEXSHIFT_CONFIG": str(unknown)})
    with pytest.raises(BadInput, match="does not exist"):
        resolve_connection(env={"INDEXSHIFT_CONFIG": str(tmp_path / "missing.yaml")})
    with pytest.raises(BadInput, match="ca_bundle"):
        resolve_connection(url="https://h:9200", ca_bundle=tmp_path / "nope.pem",
                           env={"XDG_CONFIG_HOME": str(tmp_path)})
