"""Executables run at phase boundaries, with the run described in ``INDEXSHIFT_*`` variables.

A hook that exits non-zero stops the run at the checkpoint it was called from, which is always
a resumable point: the run has recorded that phase before calling hooks for it.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from indexshift.errors import CheckFailed

HOOK_TIMEOUT_S = 300


@dataclass(frozen=True)
class HookResult:
    path: str
    code: int
    output: str


def hook_env(values: dict[str, object]) -> dict[str, str]:
    """``{"run_id": "r1"}`` → ``{"INDEXSHIFT_RUN_ID": "r1"}`` (None values left out)."""
    return {f"INDEXSHIFT_{k.upper()}": str(v) for k, v in values.items() if v is not None}


def hooks_for(directory: Path | None) -> list[Path]:
    if directory is None or not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir()
                  if p.is_file() and os.access(p, os.X_OK) and not p.name.startswith("."))


def run_hooks(directory: Path | None, values: dict[str, object]) -> list[HookResult]:
    """Run every executable in ``directory`` in name order; stop at the first failure."""
    results: list[HookResult] = []
    env = {**os.environ, **hook_env(values)}
    for hook in hooks_for(directory):
        try:
            proc = subprocess.run([str(hook)], env=env, capture_output=True, text=True,
                                  timeout=HOOK_TIMEOUT_S, check=False)
            result = HookResult(str(hook), proc.returncode, (proc.stdout + proc.stderr)[-2000:])
        except subprocess.TimeoutExpired:
            result = HookResult(str(hook), -1, f"timed out after {HOOK_TIMEOUT_S}s")
        results.append(result)
        if result.code != 0:
            last = result.output.strip().splitlines()[-1:] or [""]
            raise CheckFailed(
                f"hook {hook.name} failed (exit {result.code}) at phase {values.get('phase')}: "
                f"{last[0][:200]}",
                hint="fix the hook, then `indexshift resume` continues from this checkpoint",
            )
    return results
