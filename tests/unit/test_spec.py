"""Migration spec files: loading, the errors a bad file gets, ordering, names and scaffolding."""

import dataclasses
import hashlib
import re
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from indexshift.errors import BadInput, ExitCode
from indexshift.spec import (
    VERSIONED_INDEX,
    Migration,
    MigrationSpec,
    index_body,
    load_migration,
    load_migrations,
    parse_spec,
    parse_versioned_index,
    pending,
    scaffold,
    slugify,
    target_index_name,
    up_to,
)

SMALLEST = "alias: file-index\nmappings:\n  properties:\n    file_type: {type: keyword}\n"


def write(directory: Path, name: str, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(text)
    return path


def spec_text(alias: str = "file-index", extra: str = "") -> str:
    return f"alias: {alias}\nmappings:\n  properties:\n    title: {{type: text}}\n{extra}"


def bad_input(path: Path) -> str:
    with pytest.raises(BadInput) as caught:
        load_migration(path)
    assert caught.value.exit_code == ExitCode.BAD_INPUT
    message = str(caught.value)
    assert "\n" not in message
    return message


# -- one file ----------------------------------------------------------------------------------


def test_smallest_spec_gets_the_runbook_defaults(tmp_path: Path) -> None:
    path = write(tmp_path / "migrations", "0001_initial.yaml", SMALLEST)
    migration = load_migration(path)
    assert (migration.version, migration.name, migration.path) == (1, "initial", path)
    spec = migration.spec
    assert spec.alias == "file-index"
    assert spec.settings == {}
    assert spec.transform is None
    assert spec.rollout.monitor_seconds == 900
    assert spec.retention.read_only_after_days == 4
    assert spec.retention.delete_after_days == 8
    assert spec.validation.count_tolerance == 0
    assert spec.copy_options.slices == "auto"
    assert migration.checksum == hashlib.sha256(path.read_bytes()).hexdigest()


def test_checksum_follows_the_bytes_and_migration_is_frozen(tmp_path: Path) -> None:
    path = write(tmp_path, "0001_initial.yaml", SMALLEST)
    before = load_migration(path)
    path.write_text(SMALLEST + "# a comment changes the file, not the spec\n")
    after = load_migration(path)
    assert after.spec == before.spec
    assert after.checksum != before.checksum
    with pytest.raises(dataclasses.FrozenInstanceError):
        before.version = 2  # type: ignore[misc]


def test_monitor_seconds_zero_and_full_sections_are_accepted(tmp_path: Path) -> None:
    extra = (
        "settings: {index: {number_of_shards: 2}}\n"
        "transform:\n  pipeline:\n    processors: [{lowercase: {field: file_type}}]\n"
        "validation:\n  required_fields: {title: text}\n  count_tolerance: 3\n"
        "  canaries: [{name: pdfs, query: {term: {file_type: pdf}}, min_hits: 1}]\n"
        "rollout: {monitor_seconds: 0}\n"
        "retention: {read_only_after_days: 1, delete_after_days: 1}\n"
        "copy: {slices: 4, requests_per_second: 500}\n"
    )
    spec = load_migration(write(tmp_path, "0003_full.yml", spec_text(extra=extra))).spec
    assert spec.rollout.monitor_seconds == 0
    assert spec.transform is not None and spec.transform.pipeline is not None
    assert spec.validation.canaries[0].min_hits == 1
    assert spec.copy_options.slices == 4
    assert spec.copy_options.requests_per_second == 500


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("validation: {count_tolerance: -1}\n",
         "validation.count_tolerance: expected an integer >= 0, got -1"),
        ("rollout: {monitor_seconds: soon}\n",
         "rollout.monitor_seconds: expected an integer, got 'soon'"),
        ("validation: {count_tolerance: yes}\n",
         "validation.count_tolerance: expected an integer, got true"),
        ("rollout: {error_rate_max: 2}\n", "rollout.error_rate_max: expected a number <= 1, got 2"),
        ("validation: [1, 2]\n", "validation: expected a mapping, got a list of 2 items"),
        ("description: 5\n", "description: expected a string, got 5"),
        ("validation: {count_tolerence: 1}\n",
         "validation.count_tolerence: unknown key; did you mean 'count_tolerance'? "
         "(allowed: required_fields, canaries, count_tolerance,"),
        ("rollbock: {}\n", "rollbock: unknown key; did you mean 'rollout'?"),
        ("transform:\n  script: {source: 'ctx._source.x = 1'}\n"
         "  pipeline: {processors: [{set: {field: x, value: 1}}]}\n",
         "transform: expected exactly one of 'script' (painless) or 'pipeline' "
         "(ingest processors), got both"),
        ("transform: {}\n", "transform: expected exactly one of 'script'"),
        ("transform: {script: {source: x, lang: java}}\n",
         "transform.script.lang: expected one of 'painless', got 'java'"),
        ("retention: {read_only_after_days: 5, delete_after_days: 2}\n",
         "retention.delete_after_days: expected a number >= read_only_after_days (5), got 2"),
        ("copy: {slices: 0}\n", "copy.slices: expected an integer >= 1 or 'auto', got 0"),
        ("copy: {slices: many}\n", "copy.slices: expected an integer >= 1 or 'auto', got 'many'"),
        ("copy: {batch_size: 1.5}\n",
         "copy.batch_size: expected an integer from 1 to 10,000 or 'auto', got 1.5"),
        ("copy: {batch_size: 20000}\n",
         "copy.batch_size: expected an integer from 1 to 10,000 or 'auto', got 20000"),
        ("validation:\n  canaries: [{name: a, query: {}}, {name: a, query: {}}]\n",
         "validation.canaries[1].name: expected a name no other canary uses, got 'a'"),
        ("validation:\n  canaries: [{name: '', query: {}}]\n",
         "validation.canaries[0].name: expected a non-empty string, got ''"),
        ("validation:\n  canaries: [{name: a}]\n",
         "validation.canaries[0].query: required but missing"),
    ],
)
def test_each_error_names_the_file_and_the_field(tmp_path: Path, extra: str, expected: str) -> None:
    path = write(tmp_path / "migrations", "0002_x.yaml", spec_text(extra=extra))
    message = bad_input(path)
    assert message.startswith(f"{path}: {expected}"), message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("alias: file-index\nmappings: {}\n",
         "mappings.properties: expected the full target mapping of every field"),
        ("alias: file-index\nmappings: {properties: {file_type: keyword}}\n",
         "mappings.properties.file_type: expected a field mapping such as {type: keyword}, "
         "got 'keyword'"),
        ("alias: file-index\n", "mappings: required but missing"),
        ("mappings: {properties: {}}\n", "alias: required but missing"),
        ("alias: File Index\nmappings: {properties: {}}\n",
         "alias: expected a lowercase alias of letters, digits, '_', '.' or '-'"),
        ("alias: -files\nmappings: {properties: {}}\n", "alias: expected a lowercase alias"),
        ("- alias: file-index\n", "expected a mapping of keys at the top"),
        ("just words\n", "expected a mapping of keys at the top (alias:, mappings:, ...), got"),
    ],
)
def test_top_level_problems_name_the_file_and_field(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = write(tmp_path / "migrations", "0002_x.yaml", text)
    message = bad_input(path)
    assert message.startswith(f"{path}: {expected}"), message


def test_several_errors_report_the_first_and_count_the_rest(tmp_path: Path) -> None:
    extra = "rollout: {monitor_seconds: -5, interval_seconds: 0}\nbogus: 1\n"
    message = bad_input(write(tmp_path, "0001_x.yaml", spec_text(extra=extra)))
    assert "rollout.monitor_seconds: expected an integer >= 0, got -5" in message
    assert message.endswith("(+2 more)")


def test_bad_yaml_names_the_file_and_line(tmp_path: Path) -> None:
    text = "alias: file-index\nmappings:\n  properties: {}\n   oops: [unclosed\n"
    path = write(tmp_path, "0001_x.yaml", text)
    message = bad_input(path)
    assert message.startswith(f"{path}: line 4, column ")
    assert "not valid YAML" in message


def test_a_key_given_twice_is_refused_with_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, "0001_x.yaml", SMALLEST + "mappings: {properties: {}}\n")
    expected = f"{path}: line 5, column 1: not valid YAML: the key 'mappings' appears twice"
    assert bad_input(path) == expected


def test_yaml_merge_keys_may_still_override() -> None:
    # Overriding a merged key is the point of '<<'; only a key written twice is refused.
    spec = parse_spec(
        "alias: file-index\nmappings: {properties: {}}\n"
        "rollout:\n  <<: {monitor_seconds: 1, interval_seconds: 5}\n  monitor_seconds: 2\n"
    )
    assert spec.rollout.monitor_seconds == 2
    assert spec.rollout.interval_seconds == 5


def test_empty_and_unreadable_files_are_bad_input(tmp_path: Path) -> None:
    empty = write(tmp_path, "0001_x.yaml", "")
    assert "is empty" in bad_input(empty)
    assert "indexshift new" in bad_input(empty)
    comments = write(tmp_path, "0002_x.yaml", "# nothing yet\n")
    assert "is empty" in bad_input(comments)
    binary = tmp_path / "0003_x.yaml"
    binary.write_bytes(b"alias: \xff\xfe\n")
    assert "not UTF-8" in bad_input(binary)
    assert "no such file" in bad_input(tmp_path / "0004_missing.yaml")


def test_a_byte_order_mark_is_fine(tmp_path: Path) -> None:
    path = tmp_path / "0001_x.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + SMALLEST.encode())
    assert load_migration(path).spec.alias == "file-index"


@pytest.mark.parametrize(
    "name",
    ["initial.yaml", "0001-initial.yaml", "0001_.yaml", "v1_initial.yaml", "0001_in itial.yaml",
     "0001_initial.v2.yaml", "_initial.yaml"],
)
def test_bad_file_names_are_refused(tmp_path: Path, name: str) -> None:
    path = write(tmp_path, name, SMALLEST)
    message = bad_input(path)
    assert message.startswith(f"{path}: not a migration file name")
    assert "0001_initial.yaml" in message
    directory_message = _load_dir_error(tmp_path)
    assert directory_message.startswith(f"{path}: not a migration file name")


def test_version_zero_is_refused(tmp_path: Path) -> None:
    assert "versions start at 1" in bad_input(write(tmp_path, "0000_x.yaml", SMALLEST))


def _load_dir_error(directory: Path) -> str:
    with pytest.raises(BadInput) as caught:
        load_migrations(directory)
    return str(caught.value)


# -- a directory -------------------------------------------------------------------------------


def test_migrations_come_in_version_order_and_filter_by_alias(tmp_path: Path) -> None:
    directory = tmp_path / "migrations"
    write(directory, "0010_late.yaml", spec_text())
    write(directory, "0002_other.yml", spec_text(alias="other-index"))
    write(directory, "1_first.yaml", spec_text())
    write(directory, "0003_third.YAML", spec_text())
    write(directory, "README.md", "not a migration")
    write(directory, ".#0004_lock.yaml", "editor droppings")
    write(directory, "0005_backup.yaml~", "editor droppings")
    (directory / "drafts").mkdir()
    write(directory / "drafts", "0099_draft.yaml", "not: [loaded")

    every = load_migrations(directory)
    assert [(m.version, m.name) for m in every] == [
        (1, "first"), (2, "other"), (3, "third"), (10, "late")]
    assert all(isinstance(m, Migration) for m in every)
    assert [m.version for m in load_migrations(directory, alias="file-index")] == [1, 3, 10]
    assert [m.version for m in load_migrations(directory, alias="other-index")] == [2]
    assert load_migrations(directory, alias="nobody") == []


def test_one_bad_file_stops_the_whole_directory(tmp_path: Path) -> None:
    write(tmp_path, "0001_ok.yaml", spec_text())
    bad = write(tmp_path, "0002_bad.yaml", spec_text(alias="other", extra="rollout: 5\n"))
    message = _load_dir_error(tmp_path)
    assert message.startswith(f"{bad}: rollout: expected a mapping, got 5")
    with pytest.raises(BadInput):
        load_migrations(tmp_path, alias="file-index")


def test_two_files_with_one_version_are_refused(tmp_path: Path) -> None:
    write(tmp_path, "0002_a.yaml", spec_text())
    write(tmp_path, "002_b.yaml", spec_text())
    write(tmp_path, "0001_first.yaml", spec_text())
    message = _load_dir_error(tmp_path)
    assert "version 2 is used by both 0002_a.yaml and 002_b.yaml" in message
    assert "renumber" in message


def test_missing_or_odd_directory_is_bad_input(tmp_path: Path) -> None:
    message = _load_dir_error(tmp_path / "nowhere")
    assert "does not exist" in message
    assert "indexshift new NAME" in message
    a_file = write(tmp_path, "plain.txt", "x")
    assert "not a directory" in _load_dir_error(a_file)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert load_migrations(empty) == []


# -- choosing what to run ----------------------------------------------------------------------


def _three(tmp_path: Path) -> list[Migration]:
    for version in (3, 1, 2):
        write(tmp_path, f"000{version}_m{version}.yaml", spec_text())
    return load_migrations(tmp_path)


def test_pending_skips_applied_versions(tmp_path: Path) -> None:
    migrations = _three(tmp_path)
    shuffled = [migrations[2], migrations[0], migrations[1]]
    assert [m.version for m in pending(shuffled, set())] == [1, 2, 3]
    assert [m.version for m in pending(shuffled, {1})] == [2, 3]
    assert pending(shuffled, {1, 2, 3}) == []
    assert [m.version for m in pending(shuffled, {1, 2, 3, 7})] == []


def test_pending_refuses_a_migration_older_than_one_applied(tmp_path: Path) -> None:
    migrations = _three(tmp_path)
    with pytest.raises(BadInput) as caught:
        pending(migrations, {1, 3})
    message = str(caught.value)
    assert "0002_m2.yaml: version 2 was never applied but version 3 already was" in message
    assert "above 3" in message


def test_up_to_stops_at_a_version_that_has_a_file(tmp_path: Path) -> None:
    migrations = _three(tmp_path)
    assert [m.version for m in up_to(migrations, None)] == [1, 2, 3]
    assert [m.version for m in up_to(migrations, 2)] == [1, 2]
    assert [m.version for m in up_to(list(reversed(migrations)), 1)] == [1]
    with pytest.raises(BadInput, match=r"migration file has version 7 \(versions found: 1, 2, 3"):
        up_to(migrations, 7)
    with pytest.raises(BadInput, match="versions found: none"):
        up_to([], 1)


# -- names and bodies --------------------------------------------------------------------------


def test_target_index_name_is_versioned_and_utc() -> None:
    when = datetime(2026, 11, 23, 10, 15, 0, tzinfo=UTC)
    assert target_index_name("file-index", 3, when) == "file-index-v3-20261123t101500"
    paris = timezone(timedelta(hours=1))
    local = datetime(2026, 11, 23, 11, 15, 0, tzinfo=paris)
    assert target_index_name("file-index", 3, local) == "file-index-v3-20261123t101500"
    naive = datetime(2026, 11, 23, 10, 15, 0)
    assert target_index_name("file-index", 3, naive) == "file-index-v3-20261123t101500"
    assert VERSIONED_INDEX.fullmatch(target_index_name("a.b_c", 12, when))


@pytest.mark.parametrize(
    ("index", "version"),
    [
        ("file-index-v3-20261123t101500", 3),
        ("file-index-v12", 12),
        ("file-index-v2-restored-1", 2),
        ("file-index-v2-", 2),
        ("file-index-v3x", None),
        ("file-index-v", None),
        ("file-index", None),
        ("file-index-2-v3", None),
        ("other-index-v3-20261123t101500", None),
        ("xfile-index-v3", None),
        ("file-index-old-v3", None),
    ],
)
def test_parse_versioned_index(index: str, version: int | None) -> None:
    assert parse_versioned_index("file-index", index) == version


def test_parse_versioned_index_with_a_short_alias_does_not_take_a_longer_ones() -> None:
    assert parse_versioned_index("file", "file-index-v3-20261123t101500") is None
    assert parse_versioned_index("file", "file-v1-index-v3") == 1
    assert parse_versioned_index("a.b", "axb-v1") is None


def test_index_body_is_settings_and_mappings_and_a_copy() -> None:
    spec = parse_spec(spec_text(extra="settings: {index: {number_of_replicas: 0}}\n"))
    body = index_body(spec)
    assert body == {
        "settings": {"index": {"number_of_replicas": 0}},
        "mappings": {"properties": {"title": {"type": "text"}}},
    }
    body["mappings"]["properties"]["extra"] = {"type": "keyword"}
    assert "extra" not in spec.mappings["properties"]
    assert index_body(parse_spec(SMALLEST))["settings"] == {}


# -- scaffolding -------------------------------------------------------------------------------


def test_scaffold_writes_a_template_that_loads(tmp_path: Path) -> None:
    directory = tmp_path / "deep" / "migrations"
    first = scaffold(directory, "initial", "file-index")
    assert first == directory / "0001_initial.yaml"
    migration = load_migration(first)
    assert migration.version == 1
    assert migration.spec.alias == "file-index"
    assert migration.spec.description == "initial"
    assert migration.spec.mappings["properties"]
    assert migration.spec.rollout.monitor_seconds == 900
    assert migration.spec.transform is None

    given = {"dynamic": "strict", "properties": {"file_type": {"type": "keyword"}}}
    second = scaffold(directory, "File type → keyword!", "file-index", mappings=given)
    assert second.name == "0002_file_type_keyword.yaml"
    assert load_migration(second).spec.mappings == given
    assert load_migration(second).spec.description == "File type → keyword!"
    write(directory, "0041_later.yaml", spec_text())
    assert scaffold(directory, "next", "file-index").name == "0042_next.yaml"
    assert [m.version for m in load_migrations(directory)] == [1, 2, 41, 42]


def _uncomment_sections(text: str, keys: set[str]) -> str:
    """Remove the leading '# ' from the commented-out example sections named by ``keys``."""
    out: list[str] = []
    inside = False
    for line in text.splitlines():
        header = re.fullmatch(r"# (\w+):", line)
        if header:
            inside = header.group(1) in keys
        elif not line.startswith("#   "):
            inside = False
        out.append(line[2:] if inside else line)
    return "\n".join(out) + "\n"


def test_scaffold_examples_show_the_defaults(tmp_path: Path) -> None:
    path = scaffold(tmp_path, "defaults", "file-index")
    text = path.read_text()
    assert all(len(line) <= 100 for line in text.splitlines())
    plain = load_migration(path).spec
    keys = {"validation", "rollout", "retention", "copy"}
    uncommented = parse_spec(_uncomment_sections(text, keys))
    assert uncommented == plain
    for key in keys | {"settings", "transform"}:
        assert f"\n# {key}:\n" in text
    with_examples = parse_spec(_uncomment_sections(text, keys | {"settings", "transform"}))
    assert with_examples.settings["index"]["number_of_shards"] == 1
    assert with_examples.transform is not None
    assert with_examples.transform.script is not None
    assert "toLowerCase" in with_examples.transform.script.source


def test_scaffold_bad_input_writes_nothing(tmp_path: Path) -> None:
    directory = tmp_path / "migrations"
    with pytest.raises(BadInput, match="no letters or digits"):
        scaffold(directory, "!!!", "file-index")
    with pytest.raises(BadInput, match="alias 'File Index'"):
        scaffold(directory, "initial", "File Index")
    with pytest.raises(BadInput, match=r"mappings\.properties: expected"):
        scaffold(directory, "initial", "file-index", mappings={"dynamic": "strict"})
    assert not directory.exists()


def test_scaffold_never_overwrites(tmp_path: Path) -> None:
    # A folder where the next file would go: the name is taken, yet not a migration file.
    (tmp_path / "0001_initial.yaml").mkdir()
    with pytest.raises(BadInput, match="already exists"):
        scaffold(tmp_path, "initial", "file-index")
    taken = write(tmp_path / "other", "0001_x.yaml", SMALLEST)
    before = taken.read_text()
    assert scaffold(tmp_path / "other", "x", "file-index").name == "0002_x.yaml"
    assert taken.read_text() == before


@pytest.mark.parametrize(
    ("name", "slug"),
    [("Initial", "initial"), ("file type → keyword", "file_type_keyword"),
     ("  add--vector__field ", "add_vector_field"), ("Crème brûlée v2", "creme_brulee_v2")],
)
def test_slugify(name: str, slug: str) -> None:
    assert slugify(name) == slug


def test_models_still_build_in_python() -> None:
    spec = MigrationSpec.model_validate(
        {"alias": "file-index", "mappings": {"properties": {}}, "copy_options": {"slices": 2}}
    )
    assert spec.copy_options.slices == 2
