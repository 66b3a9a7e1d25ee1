"""Running the real CLI as a subprocess, the way an operator or a script would."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class CliResult:
    code: int
    stdout: str
    stderr: str


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> CliResult:
    # A developer's INDEXSHIFT_URL must not leak into tests that name their cluster.
    full_env = {k: v for k, v in os.environ.items() if k != "INDEXSHIFT_URL"}
    full_env.update({"COLUMNS": "200", **(env or {})})
    proc = subprocess.run(
        [sys.executable, "-m", "indexshift", *args], capture_output=True, text=True,
        env=full_env, timeout=timeout, check=False,
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)
