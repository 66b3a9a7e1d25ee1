"""Migration specs: versioned YAML files that state a migration as data.

A spec names the alias and gives the target mappings (required), settings, an optional
transform, what "valid" means, how to roll out and how long to keep the old index. Everything
but ``alias`` and ``mappings`` has the runbook's safe defaults. Models validate themselves when
built, so a bad file is an error before anything in the cluster changes.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    # Unknown keys are typos until proven otherwise: refuse them.
    model_config = ConfigDict(extra="forbid", frozen=True)


class ScriptTransform(_Strict):
    source: str = Field(min_length=1)
    lang: Literal["painless"] = "painless"
    params: dict[str, Any] = Field(default_factory=dict)


class PipelineTransform(_Strict):
    processors: list[dict[str, Any]] = Field(min_length=1)
    description: str | None = None


class Transform(_Strict):
    """Exactly one of a painless ``script`` or an ingest ``pipeline``."""

    script: ScriptTransform | None = None
    pipeline: PipelineTransform | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Transform:
        if (self.script is None) == (self.pipeline is None):
            raise ValueError("give exactly one of 'script' or 'pipeline'")
        return self


class Canary(_Strict):
    name: str = Field(min_length=1)
    query: dict[str, Any]
    min_hits: int = Field(default=0, ge=0)


class Validation(_Strict):
    required_fields: dict[str, str] = Field(default_factory=dict)
    canaries: list[Canary] = Field(default_factory=list)
    count_tolerance: int = Field(default=0, ge=0)
    sample_size: int | None = Field(default=None, ge=1)
    latency_p95_ms: float = Field(default=500.0, gt=0)
    latency_ratio_max: float = Field(default=2.0, gt=0)
    latency_runs: int = Field(default=20, ge=1, le=1000)


class Rollout(_Strict):
    monitor_seconds: int = Field(default=900, ge=0)
    interval_seconds: float = Field(default=10.0, gt=0)
    error_rate_max: float = Field(default=0.01, ge=0, le=1)
    latency_p95_ms_max: float = Field(default=500.0, gt=0)
    search_failures_max: float = Field(default=0.001, ge=0, le=1)
    doc_count_drop_max: int = Field(default=0, ge=0)


class Retention(_Strict):
    read_only_after_days: float = Field(default=4.0, ge=0)
    delete_after_days: float = Field(default=8.0, ge=0)

    @model_validator(mode="after")
    def _delete_after_read_only(self) -> Retention:
        if self.delete_after_days < self.read_only_after_days:
            raise ValueError("delete_after_days must be >= read_only_after_days")
        return self


class CopyOptions(_Strict):
    slices: int | Literal["auto"] = "auto"
    requests_per_second: float | None = Field(default=None, gt=0)
    batch_size: int = Field(default=1000, ge=1, le=10_000)


class MigrationSpec(_Strict):
    alias: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$", max_length=200)
    mappings: dict[str, Any]
    settings: dict[str, Any] = Field(default_factory=dict)
    description: str | None = None
    transform: Transform | None = None
    validation: Validation = Field(default_factory=Validation)
    rollout: Rollout = Field(default_factory=Rollout)
    retention: Retention = Field(default_factory=Retention)
    copy_options: CopyOptions = Field(default_factory=CopyOptions, alias="copy")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _mappings_have_properties(self) -> MigrationSpec:
        if not isinstance(self.mappings.get("properties"), dict):
            raise ValueError("mappings must hold the full target mapping under 'properties'")
        return self
