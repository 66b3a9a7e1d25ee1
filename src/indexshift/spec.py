"""Migration specs: versioned YAML files that state a migration as data.

A spec names the alias and gives the target mappings (required), settings, an optional
transform, what "valid" means, how to roll out and how long to keep the old index. Everything
but ``alias`` and ``mappings`` has the runbook's safe defaults. Models validate themselves when
built, so a bad file is an error before anything in the cluster changes.

Files live in a migrations directory as ``NNNN_name.yaml`` (``0001_initial.yaml``); the digits
are the version, which also names the physical index (``file-index-v2-20261123t101500``).
Loading turns every problem into one :class:`~indexshift.errors.BadInput` line that names the
file, the field and what was expected.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import re
import types
import unicodedata
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails

from indexshift.errors import BadInput

ALIAS_PATTERN = r"^[a-z0-9][a-z0-9_.-]*$"
MAX_BATCH_SIZE = 10_000


class SpecProblem(ValueError):
    """What a validator found wrong: where below its model, what is expected, what was given.

    ``at`` is appended to the location pydantic reports, so a model-level check can point at
    the one field it is about (``retention.delete_after_days`` rather than ``retention``).
    ``got`` is already rendered for people (see :func:`show_value`).
    """

    def __init__(
        self, expected: str, *, at: tuple[str | int, ...] = (), got: str | None = None
    ) -> None:
        where = dotted_path(at)
        said = f"expected {expected}" + (f", got {got}" if got is not None else "")
        super().__init__(f"{where}: {said}" if where else said)
        self.expected = expected
        self.at = at
        self.got = got


class _Strict(BaseModel):
    # Unknown keys are typos until proven otherwise: refuse them.
    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, data: Any) -> Any:
        # YAML reads yes/no/on/off as booleans and pydantic would take them as 1 and 0.
        if isinstance(data, dict):
            for name, field in cls.model_fields.items():
                key = field.alias or name
                value = data.get(key, data.get(name))
                kind = _number_kind(field.annotation)
                if isinstance(value, bool) and kind is not None:
                    raise SpecProblem(kind, at=(key,), got=show_value(value))
        return data


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
            given = "neither" if self.script is None else "both"
            raise SpecProblem(
                "exactly one of 'script' (painless) or 'pipeline' (ingest processors)",
                got=given,
            )
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

    @model_validator(mode="after")
    def _canary_names_unique(self) -> Validation:
        # Results are reported by canary name; two with one name would hide one of them.
        seen: set[str] = set()
        for position, canary in enumerate(self.canaries):
            if canary.name in seen:
                raise SpecProblem(
                    "a name no other canary uses",
                    at=("canaries", position, "name"),
                    got=show_value(canary.name),
                )
            seen.add(canary.name)
        return self


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
            raise SpecProblem(
                f"a number >= read_only_after_days ({show_value(self.read_only_after_days)})",
                at=("delete_after_days",),
                got=show_value(self.delete_after_days),
            )
        return self


class CopyOptions(_Strict):
    slices: int | Literal["auto"] = "auto"
    requests_per_second: float | None = Field(default=None, gt=0)
    batch_size: int | Literal["auto"] = "auto"

    @field_validator("batch_size", mode="before")
    @classmethod
    def _batch_size_in_range_or_auto(cls, value: Any) -> Any:
        whole = isinstance(value, int) and not isinstance(value, bool)
        if value == "auto" or (whole and 1 <= value <= MAX_BATCH_SIZE):
            return value
        raise SpecProblem(f"an integer from 1 to {MAX_BATCH_SIZE:,} or 'auto'",
                          got=show_value(value))

    @field_validator("slices", mode="before")
    @classmethod
    def _slices_positive_or_auto(cls, value: Any) -> Any:
        # Checked before the union so a bad value gets one message, not one per member.
        whole = isinstance(value, int) and not isinstance(value, bool)
        if value == "auto" or (whole and value >= 1):
            return value
        raise SpecProblem("an integer >= 1 or 'auto'", got=show_value(value))


class MigrationSpec(_Strict):
    alias: str = Field(pattern=ALIAS_PATTERN, max_length=200)
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
        properties = self.mappings.get("properties")
        if not isinstance(properties, dict):
            raise SpecProblem(
                "the full target mapping of every field, e.g. {file_type: {type: keyword}}",
                at=("mappings", "properties"),
                got="nothing" if properties is None else show_value(properties),
            )
        for field_name, definition in properties.items():
            if not isinstance(definition, dict):
                raise SpecProblem(
                    "a field mapping such as {type: keyword}",
                    at=("mappings", "properties", str(field_name)),
                    got=show_value(definition),
                )
        return self


# -- rendering problems for people -------------------------------------------------------------


def dotted_path(loc: Iterable[str | int]) -> str:
    """``("validation", "canaries", 0, "name")`` → ``validation.canaries[0].name``."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def show_value(value: Any) -> str:
    """A short, YAML-flavoured rendering of a value a user wrote, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str):
        shown = repr(value)
        return shown if len(shown) <= 60 else shown[:56] + "...'"
    if isinstance(value, dict):
        return "a mapping" if value else "an empty mapping"
    if isinstance(value, list):
        return f"a list of {len(value)} item{'s' if len(value) != 1 else ''}"
    return f"a {type(value).__name__}"


def _unwrap_optional(annotation: Any) -> Any:
    if get_origin(annotation) in (Union, types.UnionType):
        members = [a for a in get_args(annotation) if a is not type(None)]
        if len(members) == 1:
            return members[0]
    return annotation


def _as_model(annotation: Any) -> type[BaseModel] | None:
    is_class = get_origin(annotation) is None and isinstance(annotation, type)
    return annotation if is_class and issubclass(annotation, BaseModel) else None


def _number_kind(annotation: Any) -> str | None:
    plain = _unwrap_optional(annotation)
    if plain is int:
        return "an integer"
    if plain is float:
        return "a number"
    return None


def _field_named(model: type[BaseModel], key: str) -> Any:
    for name, field in model.model_fields.items():
        if key in (name, field.alias):
            return field
    return None


def _annotation_at(loc: tuple[str | int, ...]) -> Any:
    """The type a spec declares at ``loc`` (``MigrationSpec`` for ``()``), or None if unknown."""
    annotation: Any = MigrationSpec
    for part in loc:
        if isinstance(part, int):
            if get_origin(annotation) is not list:
                return None
            annotation = _unwrap_optional(get_args(annotation)[0])
            continue
        model = _as_model(annotation)
        field = _field_named(model, part) if model is not None else None
        if field is None:
            return None
        annotation = _unwrap_optional(field.annotation)
    return annotation


def _noun(annotation: Any) -> str | None:
    number = _number_kind(annotation)
    if number is not None:
        return number
    if annotation is str:
        return "a string"
    if annotation is bool:
        return "true or false"
    if get_origin(annotation) is dict or _as_model(annotation) is not None:
        return "a mapping"
    if get_origin(annotation) is list:
        return "a list"
    return None


def _allowed_keys(loc: tuple[str | int, ...]) -> list[str]:
    model = _as_model(_annotation_at(loc))
    if model is None:
        return []
    return [field.alias or name for name, field in model.model_fields.items()]


_PATTERN_WORDS: dict[tuple[str | int, ...], str] = {
    ("alias",): "a lowercase alias of letters, digits, '_', '.' or '-' that starts with a "
    "letter or digit, e.g. file-index",
}
_MISSING_WORDS: dict[tuple[str | int, ...], str] = {
    ("alias",): " (the alias applications search, e.g. file-index)",
    ("mappings",): " (the full target mapping, with 'properties')",
}
_TYPE_WORDS = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "finite_number": "a finite number",
    "string_type": "a string",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "list_type": "a list",
}
_COMPARISONS = {
    "greater_than_equal": ("ge", ">="),
    "greater_than": ("gt", ">"),
    "less_than_equal": ("le", "<="),
    "less_than": ("lt", "<"),
}


def _expected(error: ErrorDetails, loc: tuple[str | int, ...]) -> str | None:
    kind = error["type"]
    ctx: dict[str, Any] = dict(error.get("ctx") or {})
    if kind in _TYPE_WORDS:
        return _TYPE_WORDS[kind]
    if kind in _COMPARISONS:
        bound, sign = _COMPARISONS[kind]
        return f"{_noun(_annotation_at(loc)) or 'a number'} {sign} {show_value(ctx[bound])}"
    if kind == "string_too_short":
        least = int(ctx.get("min_length", 1))
        return "a non-empty string" if least == 1 else f"a string of {least}+ characters"
    if kind == "string_too_long":
        return f"a string of at most {ctx.get('max_length')} characters"
    if kind == "too_short":
        least = int(ctx.get("min_length", 1))
        return "a non-empty list" if least == 1 else f"a list of at least {least} items"
    if kind == "too_long":
        return f"a list of at most {ctx.get('max_length')} items"
    if kind == "string_pattern_mismatch":
        return _PATTERN_WORDS.get(loc) or f"a string matching {ctx.get('pattern')}"
    if kind == "literal_error":
        return f"one of {ctx.get('expected')}"
    return None


def describe_error(error: ErrorDetails) -> str:
    """One pydantic error as ``field.path: expected ..., got ...``."""
    loc = tuple(error["loc"])
    problem = (error.get("ctx") or {}).get("error")
    if isinstance(problem, SpecProblem):
        loc += problem.at
        text = f"expected {problem.expected}"
        if problem.got is not None:
            text += f", got {problem.got}"
    elif error["type"] == "missing":
        text = "required but missing" + _MISSING_WORDS.get(loc, "")
    elif error["type"] == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1])
        text = "unknown key"
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1) if loc else []
        if close:
            text += f"; did you mean '{close[0]}'?"
        if allowed:
            text += f" (allowed: {', '.join(allowed)})"
    else:
        expected = _expected(error, loc)
        got = show_value(error.get("input"))
        if expected is None:
            message = error["msg"]
            text = f"{message[:1].lower()}{message[1:]}, got {got}"
        else:
            text = f"expected {expected}, got {got}"
    where = dotted_path(loc)
    return f"{where}: {text}" if where else text


def describe_validation_error(source: str, error: ValidationError) -> str:
    """The first problem, and how many more there are, as one line that starts with ``source``."""
    problems = error.errors(include_url=False)
    if not problems:
        return f"{source}: {error}".splitlines()[0]
    more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
    return f"{source}: {describe_error(problems[0])}{more}"


# -- reading files -----------------------------------------------------------------------------


class _SpecLoader(yaml.SafeLoader):
    """Safe YAML that refuses a key given twice in one mapping.

    PyYAML keeps the last of two equal keys without a word; in a spec that silently drops
    half of the author's intent (two ``mappings:`` blocks, two ``properties:``).
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            # Merge keys (<<) legitimately repeat keys they override: leave them to PyYAML.
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag.endswith(":merge"):
                continue
            key = self.construct_object(key_node)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping",
                    node.start_mark,
                    f"the key {key!r} appears twice",
                    key_node.start_mark,
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _parse_yaml(text: str, source: str) -> Any:
    try:
        return yaml.load(text, Loader=_SpecLoader)  # a SafeLoader subclass: no arbitrary objects
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        what = " ".join(str(exc.problem or exc.context or "unreadable").split())
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise BadInput(f"{source}: {where}not valid YAML: {what}") from exc
    except yaml.YAMLError as exc:
        first_line = (str(exc).splitlines() or ["unreadable"])[0]
        raise BadInput(f"{source}: not valid YAML: {first_line}") from exc


def parse_spec(text: str, source: str = "<spec>") -> MigrationSpec:
    """Validate the YAML text of one spec; ``source`` names it in every error."""
    data = _parse_yaml(text, source)
    if data is None:
        raise BadInput(
            f"{source}: the file is empty; a spec needs at least 'alias' and 'mappings'",
            hint="`indexshift new NAME` writes a template to start from",
        )
    if not isinstance(data, dict):
        raise BadInput(
            f"{source}: expected a mapping of keys at the top (alias:, mappings:, ...), "
            f"got {show_value(data)}"
        )
    try:
        return MigrationSpec.model_validate(data)
    except ValidationError as exc:
        raise BadInput(describe_validation_error(source, exc)) from exc


@dataclass(frozen=True)
class Migration:
    """One migration file: its version and name (from the file name), spec and checksum."""

    version: int
    name: str
    path: Path
    spec: MigrationSpec
    checksum: str  # sha256 hex of the file's bytes: tells an edited file from the one applied


MIGRATION_FILENAME = re.compile(
    r"(?P<version>\d{1,9})_(?P<name>[a-z0-9][a-z0-9_-]*)\.ya?ml", re.IGNORECASE
)
_FILENAME_WORDS = (
    "a migration file is named NNNN_name.yaml (a version number, '_', then letters, digits, "
    "'_' or '-'), e.g. 0001_initial.yaml"
)


def parse_filename(path: Path) -> tuple[int, str]:
    """``0002_file_type_keyword.yaml`` → ``(2, "file_type_keyword")``; BadInput otherwise."""
    match = MIGRATION_FILENAME.fullmatch(path.name)
    if match is None:
        raise BadInput(f"{path}: not a migration file name; {_FILENAME_WORDS}")
    version = int(match["version"])
    if version < 1:
        raise BadInput(f"{path}: version 0 is not a version; versions start at 1")
    return version, match["name"]


def load_migration(path: Path) -> Migration:
    """Read, validate and checksum one migration file."""
    version, name = parse_filename(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError as exc:
        raise BadInput(f"{path}: no such file") from exc
    except IsADirectoryError as exc:
        raise BadInput(f"{path}: is a directory, not a migration file") from exc
    except OSError as exc:
        raise BadInput(f"{path}: cannot be read: {exc.strerror or exc}") from exc
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BadInput(f"{path}: not UTF-8 text (byte {exc.start})") from exc
    spec = parse_spec(text, source=str(path))
    checksum = hashlib.sha256(raw).hexdigest()
    return Migration(version=version, name=name, path=path, spec=spec, checksum=checksum)


def _yaml_files(directory: Path) -> list[Path]:
    # Hidden files are editors' and file managers' droppings (.#0001_x.yaml, ._0001_x.yaml).
    return sorted(
        p
        for p in directory.iterdir()
        if p.suffix.lower() in (".yaml", ".yml") and not p.name.startswith(".") and p.is_file()
    )


def load_migrations(directory: Path, alias: str | None = None) -> list[Migration]:
    """Every migration in ``directory``, by version; only those for ``alias`` when given.

    All files are validated, whatever their alias: one bad file stops everything before the
    cluster is touched. An empty directory gives an empty list.
    """
    if not directory.exists():
        raise BadInput(
            f"migrations directory {directory} does not exist",
            hint="`indexshift new NAME` creates it with a first migration",
        )
    if not directory.is_dir():
        raise BadInput(f"{directory} is not a directory; pass the folder of migration files")
    by_version: dict[int, Path] = {}
    for path in _yaml_files(directory):
        version, _ = parse_filename(path)
        if version in by_version:
            raise BadInput(
                f"{directory}: version {version} is used by both {by_version[version].name} "
                f"and {path.name}; renumber one so every version is unique"
            )
        by_version[version] = path
    migrations = [load_migration(by_version[v]) for v in sorted(by_version)]
    if alias is not None:
        migrations = [m for m in migrations if m.spec.alias == alias]
    return migrations


# -- choosing what to run ----------------------------------------------------------------------


def pending(migrations: list[Migration], applied_versions: set[int]) -> list[Migration]:
    """The migrations not applied yet, by version.

    A migration older than one already applied is refused rather than returned: running it
    now would put an older schema behind the alias than the one it serves.
    """
    waiting = sorted((m for m in migrations if m.version not in applied_versions),
                     key=lambda m: m.version)
    if waiting and applied_versions:
        newest = max(applied_versions)
        stranded = [m for m in waiting if m.version < newest]
        if stranded:
            first = stranded[0]
            raise BadInput(
                f"{first.path}: version {first.version} was never applied but version "
                f"{newest} already was; running it now would go back to an older schema",
                hint=f"give it a version above {newest} (rename the file) or delete it",
            )
    return waiting


def up_to(migrations: list[Migration], to_version: int | None) -> list[Migration]:
    """The migrations up to and including ``to_version`` (all when None), by version."""
    ordered = sorted(migrations, key=lambda m: m.version)
    if to_version is None:
        return ordered
    if not any(m.version == to_version for m in ordered):
        known = ", ".join(str(m.version) for m in ordered) or "none"
        raise BadInput(
            f"no migration file has version {to_version} (versions found: {known})",
            hint="pass a version that has a file",
        )
    return [m for m in ordered if m.version <= to_version]


# -- index names and bodies --------------------------------------------------------------------

# The canonical physical name: <alias>-v<version>-<UTC yyyymmddThhmmss, lowercase t>.
VERSIONED_INDEX = re.compile(r"(?P<alias>.+)-v(?P<version>\d+)-(?P<stamp>\d{8}t\d{6})")


def target_index_name(alias: str, version: int, when: datetime) -> str:
    """The physical index a migration builds: ``file-index-v3-20261123t101500`` (UTC).

    A naive ``when`` is taken as UTC already.
    """
    moment = when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
    return f"{alias}-v{version}-{moment:%Y%m%dt%H%M%S}"


@lru_cache(maxsize=64)
def _versioned_name_of(alias: str) -> re.Pattern[str]:
    return re.compile(rf"{re.escape(alias)}-v(?P<version>\d+)(?:-.*)?", re.DOTALL)


def parse_versioned_index(alias: str, index: str) -> int | None:
    """The version in ``<alias>-v<N>`` or ``<alias>-v<N>-<anything>``; None for other names."""
    match = _versioned_name_of(alias).fullmatch(index)
    return int(match["version"]) if match else None


def index_body(spec: MigrationSpec) -> dict[str, Any]:
    """The body that creates the green index (a copy: callers may add to it)."""
    return {"settings": copy.deepcopy(spec.settings), "mappings": copy.deepcopy(spec.mappings)}


# -- scaffolding -------------------------------------------------------------------------------

EXAMPLE_MAPPINGS: dict[str, Any] = {
    "properties": {
        "title": {"type": "text"},
        "file_type": {"type": "keyword"},
        "size_bytes": {"type": "long"},
        "modified_at": {"type": "date"},
    }
}

_EXAMPLE_SCRIPT = "ctx._source.file_type = ctx._source.file_type?.toLowerCase()"

_FIELD_NOTES: dict[str, dict[str, str]] = {
    "validation": {
        "required_fields": "field -> type the new index must map, e.g. {file_type: keyword}",
        "canaries": "queries that must keep finding documents (a canary is shown above)",
        "count_tolerance": "documents the counts may differ by (0 = exact)",
        "sample_size": "documents compared field by field (null = the validator's choice)",
        "latency_p95_ms": "p95 search latency on the new index must stay under this",
        "latency_ratio_max": "... and within this multiple of the old index's p95",
        "latency_runs": "searches timed on each index",
    },
    "rollout": {
        "monitor_seconds": "watch window after the alias moves (0 = none)",
        "interval_seconds": "how often the window samples",
        "error_rate_max": "roll back above this share of failed requests",
        "latency_p95_ms_max": "roll back above this p95 search latency",
        "search_failures_max": "roll back above this share of failed searches",
        "doc_count_drop_max": "roll back if the count drops by more than this",
    },
    "retention": {
        "read_only_after_days": "the old index turns read-only after this many days",
        "delete_after_days": "... and is deleted after this many (>= read_only_after_days)",
    },
    "copy": {
        "slices": "parallel slices of the server-side reindex: an integer or auto",
        "requests_per_second": "throttle in documents per second (null = none)",
        "batch_size": "documents per reindex batch, or auto (sized by document size)",
    },
}


def slugify(name: str) -> str:
    """``"File type → keyword!"`` → ``"file_type_keyword"``: lowercase ``[a-z0-9_]``."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]+", "_", ascii_name.lower()).strip("_")[:80].rstrip("_")


def _yaml_scalar(value: Any) -> str:
    dumped = yaml.safe_dump(value, default_flow_style=True, allow_unicode=True, width=10_000)
    return dumped.removesuffix("...\n").strip()


def _commented_section(key: str, defaults: BaseModel) -> list[str]:
    notes = _FIELD_NOTES.get(key, {})
    rows = [
        (f"#   {field.alias or name}: {_yaml_scalar(getattr(defaults, name))}", notes.get(name))
        for name, field in type(defaults).model_fields.items()
    ]
    width = max(len(text) for text, _ in rows)
    return [f"# {key}:"] + [
        f"{text.ljust(width)}  # {note}" if note else text for text, note in rows
    ]


def render_template(version: int, name: str, alias: str, mappings: dict[str, Any]) -> str:
    """The text of a new migration file: alias and mappings set, every other section shown
    commented out with its defaults (generated from the models, so they cannot drift)."""
    title = " ".join(name.split())
    mapping_lines = yaml.safe_dump(
        mappings, sort_keys=False, allow_unicode=True, default_flow_style=False, width=100
    ).splitlines()
    lines = [
        f"# Migration {version:04d}: {title}",
        "# 'alias' and 'mappings' are required. Each commented-out section below is optional and",
        "# shows its defaults; to change one, remove the leading '# ' from its lines.",
        "",
        f"alias: {_yaml_scalar(alias)}",
        f"description: {_yaml_scalar(title)}",
        "",
        "# The full mapping of the new index (not a list of changes): every field it must have.",
        "mappings:",
        *(f"  {line}" for line in mapping_lines),
        "",
        "# Settings of the new index (analyzers, shards, replicas).",
        "# settings:",
        "#   index:",
        "#     number_of_shards: 1",
        "#     number_of_replicas: 1",
        "",
        "# Change documents while they are copied: exactly one of a painless script or an",
        "# ingest pipeline.",
        "# transform:",
        "#   script:",
        f"#     source: {_yaml_scalar(_EXAMPLE_SCRIPT)}",
        "#     lang: painless",
        "#     params: {}",
        "#   # pipeline:",
        "#   #   description: lowercase file types",
        "#   #   processors:",
        "#   #     - lowercase: {field: file_type}",
        "",
        "# What must hold before the alias moves to the new index. A canary looks like",
        "# {name: pdfs, query: {term: {file_type: pdf}}, min_hits: 1}.",
        *_commented_section("validation", Validation()),
        "",
        "# The watch window after the alias moves; crossing a threshold rolls back.",
        *_commented_section("rollout", Rollout()),
        "",
        "# How long the old index is kept for a rollback.",
        *_commented_section("retention", Retention()),
        "",
        "# The server-side copy into the new index.",
        *_commented_section("copy", CopyOptions()),
    ]
    return "\n".join(lines) + "\n"


def next_version(directory: Path) -> int:
    """One more than the highest version in ``directory`` (1 when there is none)."""
    if not directory.is_dir():
        return 1
    versions = [
        int(match["version"])
        for path in _yaml_files(directory)
        if (match := MIGRATION_FILENAME.fullmatch(path.name)) is not None
    ]
    return max(versions, default=0) + 1


def scaffold(
    directory: Path, name: str, alias: str, mappings: dict[str, Any] | None = None
) -> Path:
    """Write ``<directory>/NNNN_<slug>.yaml``, the next version, as a template that loads.

    The directory is created when missing; an existing file is never overwritten. The text is
    validated before anything is written, so bad ``mappings`` change nothing.
    """
    slug = slugify(name)
    if not slug:
        raise BadInput(
            f"migration name {name!r} has no letters or digits",
            hint="e.g. `indexshift new file_type_keyword`",
        )
    if not re.fullmatch(ALIAS_PATTERN, alias) or len(alias) > 200:
        raise BadInput(f"alias {alias!r}: expected {_PATTERN_WORDS[('alias',)]}")
    if directory.exists() and not directory.is_dir():
        raise BadInput(f"{directory} exists and is not a directory")
    version = next_version(directory)
    path = directory / f"{version:04d}_{slug}.yaml"
    text = render_template(version, name, alias, EXAMPLE_MAPPINGS if mappings is None else mappings)
    parse_spec(text, source=f"{path} (not written)")
    directory.mkdir(parents=True, exist_ok=True)
    try:
        with path.open("x", encoding="utf-8") as out:
            out.write(text)
    except FileExistsError as exc:
        raise BadInput(f"{path} already exists; a migration file is never overwritten") from exc
    return path
