"""Where the cluster is and how to authenticate.

Resolution order, first found wins, field by field: command-line flags, ``INDEXSHIFT_*``
environment variables, the config file (``INDEXSHIFT_CONFIG`` or
``~/.config/indexshift/config.yaml``), and for the URL alone the locally running sandbox.
TLS certificates are verified unless the user explicitly turns verification off.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from indexshift.errors import BadInput

ENV_PREFIX = "INDEXSHIFT_"
DEFAULT_TIMEOUT_S = 10.0


class ConnectionConfig(BaseModel):
    """A validated way to reach one cluster. Secrets never appear in ``repr``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    url: str
    username: str | None = None
    password: SecretStr | None = None
    api_key: SecretStr | None = None
    ca_bundle: Path | None = None
    verify_tls: bool = True
    timeout_s: float = Field(default=DEFAULT_TIMEOUT_S, gt=0, le=600)

    @field_validator("url")
    @classmethod
    def _url_is_http(cls, value: str) -> str:
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"expected http(s)://host[:port], got {value!r}")
        try:
            _ = parts.port
        except ValueError as exc:
            raise ValueError(f"bad port in {value!r}") from exc
        if parts.username or parts.password:
            raise ValueError("put credentials in --username/--password, not in the URL")
        return value.strip().rstrip("/")

    @field_validator("ca_bundle")
    @classmethod
    def _ca_bundle_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"CA bundle {value} is not a readable file")
        return value

    def redacted(self) -> dict[str, Any]:
        """The config as data with secrets masked, safe to print or store as evidence."""
        return {
            "url": self.url,
            "username": self.username,
            "password": "***" if self.password else None,
            "api_key": "***" if self.api_key else None,
            "ca_bundle": str(self.ca_bundle) if self.ca_bundle else None,
            "verify_tls": self.verify_tls,
            "timeout_s": self.timeout_s,
        }


def config_file_path(env: Mapping[str, str]) -> Path:
    if env.get(f"{ENV_PREFIX}CONFIG"):
        return Path(env[f"{ENV_PREFIX}CONFIG"])
    base = Path(env.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "indexshift" / "config.yaml"


def _load_file(path: Path, explicit: bool) -> dict[str, Any]:
    if not path.exists():
        if explicit:
            raise BadInput(f"config file {path} does not exist", hint="fix INDEXSHIFT_CONFIG")
        return {}
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise BadInput(f"config file {path} is not valid YAML: {exc}".splitlines()[0]) from exc
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise BadInput(f"config file {path} must hold a mapping of settings")
    return loaded


def _env_bool(raw: str) -> bool:
    return raw.strip().lower() in ("1", "true", "yes", "on")


def resolve_connection(
    *,
    url: str | None = None,
    username: str | None = None,
    password: str | None = None,
    api_key: str | None = None,
    ca_bundle: Path | None = None,
    insecure: bool = False,
    timeout_s: float | None = None,
    env: Mapping[str, str] | None = None,
    sandbox_url: Callable[[], str | None] | None = None,
) -> ConnectionConfig:
    """Merge flags, environment, config file and sandbox into one validated config.

    ``sandbox_url`` is asked last, only when nothing else named a URL.
    """
    env = os.environ if env is None else env
    path = config_file_path(env)
    from_file = _load_file(path, explicit=bool(env.get(f"{ENV_PREFIX}CONFIG")))

    def pick(flag: Any, env_name: str, file_key: str) -> Any:
        if flag not in (None, ""):
            return flag
        if env.get(ENV_PREFIX + env_name):
            return env[ENV_PREFIX + env_name]
        return from_file.get(file_key)

    chosen_url = pick(url, "URL", "url")
    if not chosen_url and sandbox_url is not None:
        chosen_url = sandbox_url()
    if not chosen_url:
        raise BadInput(
            "no cluster given",
            hint="pass --url, set INDEXSHIFT_URL, or start one with `indexshift sandbox up`",
        )
    verify = not insecure
    if not insecure and env.get(f"{ENV_PREFIX}INSECURE"):
        verify = not _env_bool(env[f"{ENV_PREFIX}INSECURE"])
    elif not insecure and "verify_tls" in from_file:
        verify = bool(from_file["verify_tls"])
    fields: dict[str, Any] = {
        "url": chosen_url,
        "username": pick(username, "USERNAME", "username"),
        "password": pick(password, "PASSWORD", "password"),
        "api_key": pick(api_key, "API_KEY", "api_key"),
        "ca_bundle": pick(ca_bundle, "CA_BUNDLE", "ca_bundle"),
        "verify_tls": verify,
    }
    timeout = pick(timeout_s, "TIMEOUT", "timeout_s")
    if timeout is not None:
        fields["timeout_s"] = timeout
    unknown = set(from_file) - {
        "url", "username", "password", "api_key", "ca_bundle", "verify_tls", "timeout_s",
    }
    if unknown:
        raise BadInput(f"config file {path}: unknown setting(s) {', '.join(sorted(unknown))}")
    try:
        return ConnectionConfig(**{k: v for k, v in fields.items() if v is not None})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "connection"
        raise BadInput(f"invalid {where}: {first['msg']}") from exc
