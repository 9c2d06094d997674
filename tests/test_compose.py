"""The docker-compose stack and the image, validated statically (Docker does not run here).

Each check is a function over a :class:`Stack` (the files as they are on disk), so that
``test_each_check_catches_a_broken_copy`` can run it against a copy with one defect and prove it fails.
The init scripts and the image's health check run for real, against fake ``temporal`` and ``mc``
commands and a fake ``/proc``.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from dockerfile_parse import DockerfileParser

REPO = Path(__file__).resolve().parent.parent
FILES = ("docker-compose.yml", "Dockerfile", ".dockerignore", "README.md", "deploy")

DSR_SERVICES = ("worker", "api")
SECRETISH = re.compile(r"PASSWORD|PASSWD|PWD|SECRET|TOKEN|(^|_)KEY($|_)|CREDENTIAL|ACCESS_KEY", re.I)
INTERPOLATION = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(?::?[-?+])[^}]*)?\}")
ONLY_INTERPOLATION = re.compile(r"^\$\{[A-Za-z_][A-Za-z0-9_]*(?::?[-?+][^}]*)?\}$")
ENV_LINE = re.compile(r"^([A-Z][A-Z0-9_]*)=", re.M)
LITERAL_SECRETS = (
    re.compile(r"://[^/\s:@]+:(?!\$\{)[^@\s/]+@"),  # a password in a URL
    re.compile(r"\bAKIA[0-9A-Z]{16}\b"),  # an AWS access key id
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
)
TOKEN = re.compile(r"[A-Za-z0-9+/_=-]{32,}")


def looks_like_key(value: str) -> bool:
    """A run of 32+ characters that is hex, or mixes upper case, lower case and digits (base64)."""
    for token in TOKEN.findall(value):
        if re.fullmatch(r"[0-9a-fA-F]{32,}", token):
            return True
        if re.search(r"[A-Z]", token) and re.search(r"[a-z]", token) and len(re.findall(r"\d", token)) >= 4:
            return True
    return False


@dataclass
class Stack:
    """The stack's files under ``root``."""

    root: Path

    @property
    def compose_text(self) -> str:
        """docker-compose.yml as text."""
        return (self.root / "docker-compose.yml").read_text()

    @property
    def compose(self) -> dict[str, Any]:
        """docker-compose.yml parsed (YAML anchors and merge keys resolved)."""
        return yaml.safe_load(self.compose_text)

    @property
    def services(self) -> dict[str, dict[str, Any]]:
        """The services."""
        return self.compose["services"]

    @property
    def env_example(self) -> str:
        """deploy/.env.example as text."""
        return (self.root / "deploy" / ".env.example").read_text()

    @property
    def readme_compose_section(self) -> str:
        """README's "Running with Docker Compose" and "From one machine to a cluster" sections."""
        text = (self.root / "README.md").read_text()
        start = text.index("### Running with Docker Compose")
        cluster = text.index("### From one machine to a cluster", start)
        ends = [i for i in (text.find("\n### ", cluster + 1), text.find("\n## ", cluster + 1)) if i != -1]
        return text[start:min(ends, default=len(text))]

    @property
    def config_path(self) -> Path:
        """deploy/dsr.toml."""
        return self.root / "deploy" / "dsr.toml"

    def dockerfile(self) -> DockerfileParser:
        """The Dockerfile, parsed."""
        return DockerfileParser(str(self.root / "Dockerfile"))


def is_one_shot(service: dict[str, Any]) -> bool:
    """An init job: it runs once and is marked so with ``restart: "no"``."""
    return str(service.get("restart", "")).lower() == "no"


def environment_of(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment as a mapping (list form ``KEY=value`` too)."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.partition("=")[::2] for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def scalars(node: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """Every scalar of a YAML document with its dotted path."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from scalars(v, f"{path}.{k}" if path else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from scalars(v, f"{path}[{i}]")
    elif node is not None:
        yield path, str(node)


def interpolated(stack: Stack) -> set[str]:
    """The variables docker-compose.yml takes from .env (``${VAR}``, not the ``$${VAR}`` of a command)."""
    text = "\n".join(line for line in stack.compose_text.splitlines() if not line.lstrip().startswith("#"))
    return set(INTERPOLATION.findall(text))


def documented_in_env_example(stack: Stack) -> set[str]:
    """The variables deploy/.env.example lists."""
    return set(ENV_LINE.findall(stack.env_example))


def code_search_attributes() -> dict[str, str]:
    """The custom search attributes of workflows/search.py, as ``temporal`` CLI types."""
    from temporalio.api.enums.v1 import IndexedValueType

    from workflows.search import REQUEST_SEARCH_ATTRIBUTES

    names = {}
    for key in REQUEST_SEARCH_ATTRIBUTES:
        enum_name = IndexedValueType.Name(key.indexed_value_type)  # INDEXED_VALUE_TYPE_KEYWORD
        names[key.name] = enum_name.removeprefix("INDEXED_VALUE_TYPE_").title().replace("_", "")
    return names


def variables_the_processes_read(stack: Stack) -> set[str]:
    """Every environment variable the worker and the API read, for the stack's configuration."""
    from activities.ledger import LEDGER_KEY_ENV
    from workers.config import load_settings

    settings = load_settings(stack.config_path)
    names = {"DSR_CONFIG", "DATABASE_URL", LEDGER_KEY_ENV, settings.codec.key_env, settings.api.secret_env,
             settings.notify.username_env, settings.notify.password_env, settings.notify.hash_key_env}
    uses_default_aws_chain = settings.export.store == "s3"
    for system in settings.systems.values():
        options = system.options()
        names |= {str(v) for k, v in options.items() if k.endswith("_env") and v}
        if system.type == "s3_backups" and not options.get("access_key_id_env"):
            uses_default_aws_chain = True
    if uses_default_aws_chain:
        names |= {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    return names


# --- the checks ------------------------------------------------------------------------------------


def check_compose_spec(stack: Stack) -> None:
    """The file parses and is valid against the Compose specification's JSON schema."""
    schema_file = resources.files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json")
    schema = json.loads(schema_file.read_text())
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(stack.compose), key=str)
    assert not errors, [f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors][:5]
    for name in ("temporal-postgresql", "temporal", "temporal-init", "temporal-ui", "postgresql", "minio",
                 "minio-init", "worker", "api"):
        assert name in stack.services, f"service {name} missing"


def check_images(stack: Stack) -> None:
    """Every service has an image or a build; pulled images carry a pinned tag."""
    for name, service in stack.services.items():
        assert "image" in service or "build" in service, f"{name}: neither image nor build"
        if "build" in service:
            continue
        image = service["image"]
        _, _, tag = image.rpartition("/")[2].partition(":")
        assert tag and tag != "latest" and "$" not in tag, f"{name}: image {image} has no pinned tag"


def check_healthchecks_and_restarts(stack: Stack) -> None:
    """Long-running services have a health check and restart; init jobs are marked one-shot."""
    for name, service in stack.services.items():
        if is_one_shot(service):
            assert "healthcheck" not in service, f"{name}: a one-shot job needs no health check"
            continue
        check = service.get("healthcheck")
        assert check and not check.get("disable"), f"{name}: no health check"
        test = check.get("test")
        assert test and test != ["NONE"] and (isinstance(test, str) or test[0] in ("CMD", "CMD-SHELL")), \
            f"{name}: health check test {test!r}"
        assert service.get("restart") in ("always", "unless-stopped", "on-failure"), f"{name}: no restart policy"


def check_dependencies(stack: Stack) -> None:
    """depends_on waits for health or for an init job's success, on services that can give it."""
    services = stack.services
    for name, service in services.items():
        depends = service.get("depends_on") or {}
        assert isinstance(depends, dict), f"{name}: depends_on without conditions"
        for target, spec in depends.items():
            assert target in services, f"{name} depends on unknown {target}"
            condition = spec.get("condition")
            if condition == "service_healthy":
                assert "healthcheck" in services[target], f"{name} waits for {target}'s health: it has none"
            elif condition == "service_completed_successfully":
                assert is_one_shot(services[target]), f"{name} waits for {target} to complete: not one-shot"
            else:
                raise AssertionError(f"{name} depends on {target} without waiting ({condition})")
    needs = {"postgresql": "service_healthy", "temporal-init": "service_completed_successfully",
             "minio-init": "service_completed_successfully"}
    for name in DSR_SERVICES:
        got = {t: s.get("condition") for t, s in services[name]["depends_on"].items()}
        assert needs.items() <= got.items(), f"{name}: depends_on {got}"
    for name in ("temporal-init", "temporal-ui"):
        assert services[name]["depends_on"]["temporal"]["condition"] == "service_healthy", name
    assert services["minio-init"]["depends_on"]["minio"]["condition"] == "service_healthy"


def check_no_literal_credentials(stack: Stack) -> None:
    """No password, key or token is written in the file: secrets are ${VAR} references to .env."""
    for name, service in stack.services.items():
        for key, value in environment_of(service).items():
            if SECRETISH.search(key) and value.strip().lower() not in ("true", "false"):  # flags are no secret
                assert ONLY_INTERPOLATION.match(value.strip()), f"{name}: {key} is not a ${{VAR}} from .env"
        assert "env_file" not in service or all(
            str(f.get("path") if isinstance(f, dict) else f).endswith(".env") for f in
            (service["env_file"] if isinstance(service["env_file"], list) else [service["env_file"]])
        ), f"{name}: env_file"
    for path, value in scalars(stack.compose):
        for pattern in LITERAL_SECRETS:
            assert not pattern.search(value), f"{path}: looks like a literal credential"
        assert not looks_like_key(value), f"{path}: looks like a literal key"


def check_variables_documented(stack: Stack) -> None:
    """Every ${VAR} is in deploy/.env.example and the README; the example lists nothing unused."""
    used = interpolated(stack)
    assert used, "no ${VAR} found: secrets must come from .env"
    listed = documented_in_env_example(stack)
    readme = stack.readme_compose_section
    for var in sorted(used):
        assert var in listed, f"{var} is not in deploy/.env.example"
        assert re.search(rf"\b{var}\b", readme), f"{var} is not in the README's compose section"
    assert not listed - used, f"deploy/.env.example lists unused {sorted(listed - used)}"
    for line in stack.env_example.splitlines():
        if ENV_LINE.match(line):
            value = line.split("=", 1)[1].split(" #")[0].strip()
            var = line.split("=", 1)[0]
            assert not value or not SECRETISH.search(var) or var == "TEMPORAL_AUTH_ENABLED", \
                f"deploy/.env.example ships a value for {var}"


def check_processes_get_what_they_read(stack: Stack) -> None:
    """The worker and the API get every variable the code reads for deploy/dsr.toml, and that file."""
    needed = variables_the_processes_read(stack)
    for name in DSR_SERVICES:
        service = stack.services[name]
        env = environment_of(service)
        assert needed <= env.keys(), f"{name} lacks {sorted(needed - env.keys())}"
        assert env["DSR_CONFIG"] == "/etc/dsr/dsr.toml", name
        assert "./deploy:/etc/dsr:ro" in service.get("volumes", []), f"{name}: deploy/ not mounted at /etc/dsr"
        assert service.get("command") == [name], f"{name}: command {service.get('command')}"


def check_worker_replicas(stack: Stack) -> None:
    """Two workers."""
    worker = stack.services["worker"]
    assert (worker.get("deploy") or {}).get("replicas") == 2, "the worker must run two replicas"
    assert "container_name" not in worker and not worker.get("ports"), "replicas need no fixed name or port"


def check_search_attributes(stack: Stack) -> None:
    """temporal-init registers exactly the search attributes of workflows/search.py, on our namespace."""
    from workers.config import load_settings

    init = stack.services["temporal-init"]
    env = environment_of(init)
    registered = dict(pair.split(":", 1) for pair in env["DSR_SEARCH_ATTRIBUTES"].split())
    assert registered == code_search_attributes(), registered
    settings = load_settings(stack.config_path)
    assert env["DSR_NAMESPACE"] == settings.temporal.namespace, "temporal-init and dsr.toml name other namespaces"
    assert environment_of(stack.services["temporal-ui"])["TEMPORAL_DEFAULT_NAMESPACE"] == settings.temporal.namespace
    assert re.fullmatch(r"\d+h", env["DSR_RETENTION"]), "the namespace's retention"
    script = init["entrypoint"][-1]
    mount = next(v for v in init["volumes"] if v.split(":")[1] == script)
    text = (stack.root / mount.split(":")[0]).read_text()
    assert "search-attribute create" in text and "$DSR_SEARCH_ATTRIBUTES" in text, "the script registers them"


def check_wiring(stack: Stack) -> None:
    """deploy/dsr.toml points at the compose services; the Temporal UI at our codec endpoint."""
    from workers.config import load_settings

    settings = load_settings(stack.config_path)
    services = stack.services
    assert settings.temporal.address.split(":")[0] in services, settings.temporal.address
    assert settings.export.store == "s3" and (settings.export.endpoint_url or "").startswith("http://minio:")
    buckets = environment_of(services["minio-init"])["DSR_BUCKETS"].split()
    assert settings.export.bucket in buckets, "the export bucket is not created"
    for name, system in settings.systems.items():
        if system.type == "s3_backups":
            assert system.options()["bucket"] in buckets, f"systems.{name}: bucket not created"
    assert settings.api.host == "0.0.0.0", "the API must listen beyond the container's loopback"
    ui = environment_of(services["temporal-ui"])
    assert ui["TEMPORAL_CODEC_ENDPOINT"].endswith("/codec"), ui["TEMPORAL_CODEC_ENDPOINT"]
    assert ui["TEMPORAL_CODEC_PASS_ACCESS_TOKEN"] == "true"
    assert ui["TEMPORAL_ADDRESS"] == settings.temporal.address
    host_port = services["temporal-ui"]["ports"][0].split(":")[-2]
    assert f"http://localhost:{host_port}" in settings.temporal.allowed_ui_origins(), "UI origin not allowed (CORS)"
    api_port = services["api"]["ports"][0].split(":")[-1]
    assert int(api_port) == settings.api.port


def check_dockerfile(stack: Stack) -> None:
    """Slim, pinned base images; the last stage runs as a non-root user, with a HEALTHCHECK; no build secrets."""
    parser = stack.dockerfile()
    instructions = [(i["instruction"], i["value"]) for i in parser.structure if i["instruction"] != "COMMENT"]
    froms = [v for k, v in instructions if k == "FROM"]
    assert froms, "no FROM"
    for value in froms:
        image = value.split()[0]
        if image.lower() in {v.split()[-1].lower() for v in froms if " as " in v.lower()}:
            continue  # a previous stage
        tag = image.rpartition(":")[2] if ":" in image else ""
        assert tag and tag != "latest" and "slim" in tag, f"base image {image} is not a pinned slim tag"
    last = max(i for i, (k, _) in enumerate(instructions) if k == "FROM")
    final = instructions[last:]
    users = [v.strip() for k, v in final if k == "USER"]
    assert users, "the final stage sets no USER"
    assert users[-1].split(":")[0] not in ("root", "0"), f"runs as {users[-1]}"
    checks = [v for k, v in final if k == "HEALTHCHECK"]
    assert checks and "CMD" in checks[-1] and not checks[-1].strip().upper().startswith("NONE"), "no HEALTHCHECK"
    script = re.search(r"(/\S+\.py)", checks[-1])
    assert script and any(k == "COPY" and script.group(1) in v for k, v in final), "HEALTHCHECK script not copied"
    for kind, value in instructions:
        if kind in ("ARG", "ENV"):
            for name in re.findall(r"(?:^|\s)([A-Za-z_][A-Za-z0-9_]*)=", " " + value):
                assert not SECRETISH.search(name), f"{kind} {name}: secrets never go into the image"
        if kind in ("RUN", "ADD", "COPY"):
            assert ".env" not in value.split(), f"{kind} {value}"
    entrypoint = [v for k, v in final if k == "ENTRYPOINT"]
    assert entrypoint and json.loads(entrypoint[-1]) == ["dsr"], "the entry point is dsr"
    ignored = (stack.root / ".dockerignore").read_text().split()
    for entry in (".env", ".git", ".venv", ".dsr"):
        assert entry in ignored, f".dockerignore must exclude {entry}"


CHECKS: dict[str, Callable[[Stack], None]] = {
    f.__name__: f
    for f in (check_compose_spec, check_images, check_healthchecks_and_restarts, check_dependencies,
              check_no_literal_credentials, check_variables_documented, check_processes_get_what_they_read,
              check_worker_replicas, check_search_attributes, check_wiring, check_dockerfile)
}


@pytest.mark.parametrize("name", list(CHECKS))
def test_the_stack(name: str) -> None:
    CHECKS[name](Stack(REPO))


# --- each check fails on a broken copy -------------------------------------------------------------


def _edit(path: str, old: str, new: str, count: int = 1) -> Callable[[Path], None]:
    def apply(root: Path) -> None:
        file = root / path
        text = file.read_text()
        assert old in text, f"mutation does not apply: {old!r} not in {path}"
        file.write_text(text.replace(old, new, count))
    return apply


BROKEN: list[tuple[str, str, Callable[[Path], None]]] = [
    ("check_compose_spec", "unknown key", _edit("docker-compose.yml", "    stop_grace_period:", "    stop_grace:")),
    ("check_compose_spec", "service removed", _edit("docker-compose.yml", "\n  minio-init:", "\n  minio-setup:")),
    ("check_images", "floating tag", _edit("docker-compose.yml", "temporalio/ui:2.34.0", "temporalio/ui:latest")),
    ("check_images", "no tag", _edit("docker-compose.yml", "minio/minio:RELEASE.2025-09-07T16-13-09Z",
                                     "minio/minio")),
    ("check_healthchecks_and_restarts", "health check disabled",
     _edit("docker-compose.yml", 'test: ["CMD", "mc", "ready", "local"]', "disable: true")),
    ("check_healthchecks_and_restarts", "one-shot job not marked",
     _edit("docker-compose.yml", '    <<: *logging\n    restart: "no"\n    depends_on:\n      minio:',
           '    <<: *logging\n    depends_on:\n      minio:')),
    ("check_dependencies", "waits for nothing",
     _edit("docker-compose.yml", "    minio-init:\n      condition: service_completed_successfully",
           "    minio-init:\n      condition: service_started")),
    ("check_dependencies", "waits for health that is not checked",
     _edit("docker-compose.yml", "      temporal:\n        condition: service_healthy\n    environment:\n"
                                 "      TEMPORAL_ADDRESS: temporal:7233\n      DSR_NAMESPACE",
           "      minio-init:\n        condition: service_healthy\n    environment:\n"
           "      TEMPORAL_ADDRESS: temporal:7233\n      DSR_NAMESPACE")),
    ("check_no_literal_credentials", "literal password",
     _edit("docker-compose.yml", "MINIO_ROOT_PASSWORD: ${MINIO_ROOT_PASSWORD:?set MINIO_ROOT_PASSWORD in .env}",
           "MINIO_ROOT_PASSWORD: hunter2hunter2")),
    ("check_no_literal_credentials", "password in a URL",
     _edit("docker-compose.yml", "postgresql://dsr:${DSR_DB_PASSWORD:?set DSR_DB_PASSWORD in .env}@",
           "postgresql://dsr:s3cret@")),
    ("check_no_literal_credentials", "key in a command",
     _edit("docker-compose.yml", '["server", "/data", "--console-address", ":9001"]',
           '["server", "/data", "--key", "q83vEjRWeJq83vEjRWeJq83vEjRWeJq83vEjRWeJ"]')),
    ("check_variables_documented", "variable missing from the example",
     _edit("deploy/.env.example", "DSR_API_SECRET=", "# DSR_API_SECRET is set elsewhere\nAPI_SECRET=")),
    ("check_variables_documented", "variable missing from the README",
     _edit("README.md", "TEMPORAL_DB_PASSWORD", "TEMPORAL_DB_PW", count=-1)),
    ("check_variables_documented", "example ships a secret",
     _edit("deploy/.env.example", "DSR_API_SECRET=       ", "DSR_API_SECRET=abc123")),
    ("check_processes_get_what_they_read", "config needs a variable the compose file does not pass",
     _edit("deploy/dsr.toml", 'secret_env = "DSR_API_SECRET"', 'secret_env = "DSR_API_SECRET_2"')),
    ("check_processes_get_what_they_read", "a system's secret not passed",
     _edit("deploy/dsr.toml", "delete_expired = true",
           'delete_expired = true\naccess_key_id_env = "BACKUPS_KEY_ID"\nsecret_access_key_env = "BACKUPS_SECRET"')),
    ("check_worker_replicas", "one worker", _edit("docker-compose.yml", "replicas: 2", "replicas: 1")),
    ("check_search_attributes", "attribute missing",
     _edit("docker-compose.yml", " DsrDueAt:Datetime", "")),
    ("check_search_attributes", "wrong type", _edit("docker-compose.yml", "DsrDueAt:Datetime", "DsrDueAt:Keyword")),
    ("check_search_attributes", "other namespace", _edit("deploy/dsr.toml", 'namespace = "dsr"', 'namespace = "x"')),
    ("check_wiring", "UI not at the codec endpoint",
     _edit("docker-compose.yml", "${DSR_PUBLIC_API_URL:-http://localhost:8080}/codec",
           "${DSR_PUBLIC_API_URL:-http://localhost:8080}")),
    ("check_wiring", "UI origin not allowed",
     _edit("deploy/dsr.toml", 'ui_origins = ["http://localhost:8233", "http://127.0.0.1:8233"]',
           'ui_origins = ["http://127.0.0.1:8233"]')),
    ("check_wiring", "bucket not created", _edit("docker-compose.yml", "DSR_BUCKETS: dsr-exports dsr-backups",
                                                 "DSR_BUCKETS: dsr-exports")),
    ("check_dockerfile", "runs as root", _edit("Dockerfile", "USER 10001:10001", "USER root")),
    ("check_dockerfile", "no user", _edit("Dockerfile", "USER 10001:10001\n", "")),
    ("check_dockerfile", "no health check", _edit("Dockerfile", "HEALTHCHECK --interval", "# HEALTHCHECK --interval")),
    ("check_dockerfile", "floating base", _edit("Dockerfile", "FROM python:3.11.11-slim-bookworm\n",
                                                "FROM python:latest\n")),
    ("check_dockerfile", "build secret",
     _edit("Dockerfile", "ENV PIP_NO_CACHE_DIR=1", "ARG PYPI_TOKEN\nENV PIP_NO_CACHE_DIR=1 PYPI_TOKEN=x")),
    ("check_dockerfile", ".env not ignored", _edit(".dockerignore", "\n.env\n", "\n")),
]


@pytest.fixture
def broken_copy(tmp_path: Path) -> Path:
    for name in FILES:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, tmp_path / name)
        else:
            shutil.copy2(source, tmp_path / name)
    return tmp_path


@pytest.mark.parametrize(("check", "defect", "mutate"), BROKEN, ids=[f"{c}-{d}" for c, d, _ in BROKEN])
def test_each_check_catches_a_broken_copy(broken_copy: Path, check: str, defect: str,
                                          mutate: Callable[[Path], None]) -> None:
    CHECKS[check](Stack(broken_copy))  # the copy passes before the defect
    mutate(broken_copy)
    with pytest.raises(AssertionError):
        CHECKS[check](Stack(broken_copy))


def test_every_check_has_a_broken_copy() -> None:
    assert {c for c, _, _ in BROKEN} == set(CHECKS)


# --- the init scripts, against fake CLIs -----------------------------------------------------------


def _fake_cli(bin_dir: Path, name: str, body: str) -> None:
    script = bin_dir / name
    script.write_text(f"#!/bin/sh\necho \"{name} $*\" >> \"$CALLS\"\n{body}\n")
    script.chmod(0o755)


def _run_script(script: str, tmp_path: Path, env: dict[str, str]) -> tuple[subprocess.CompletedProcess[str], str]:
    calls = tmp_path / "calls"
    calls.touch()
    full_env = {"PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}", "CALLS": str(calls), "TMPDIR": str(tmp_path),
                **env}
    done = subprocess.run(["sh", str(REPO / "deploy" / script)], env=full_env, capture_output=True, text=True,
                          timeout=30, check=False)
    return done, calls.read_text()


def test_temporal_init_creates_the_namespace_and_only_the_missing_attributes(tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    _fake_cli(tmp_path / "bin", "temporal", """
case "$*" in
  *"cluster health"*) echo SERVING ;;
  *"namespace describe"*) exit 1 ;;
  *"search-attribute list"*) printf 'Name Type\\nDsrTenant Keyword\\nWorkflowId Keyword\\n' ;;
esac""")
    env = environment_of(Stack(REPO).services["temporal-init"])
    done, calls = _run_script("temporal-init.sh", tmp_path, env)
    assert done.returncode == 0, done.stderr
    assert "namespace create --address temporal:7233 --namespace dsr --retention 720h" in calls
    created = re.findall(r"search-attribute create .*--name (\w+) --type (\w+)", calls)
    expected = {k: v for k, v in code_search_attributes().items() if k != "DsrTenant"}
    assert dict(created) == expected


def test_temporal_init_updates_the_retention_of_an_existing_namespace(tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    _fake_cli(tmp_path / "bin", "temporal", """
case "$*" in
  *"cluster health"*) echo SERVING ;;
  *"search-attribute list"*) printf 'DsrTenant Keyword\\nDsrKind Keyword\\nDsrStep Keyword\\nDsrDueAt Datetime\\n' ;;
esac""")
    env = environment_of(Stack(REPO).services["temporal-init"])
    done, calls = _run_script("temporal-init.sh", tmp_path, env)
    assert done.returncode == 0, done.stderr
    assert "namespace update --address temporal:7233 --namespace dsr --retention 720h" in calls
    assert "namespace create" not in calls and "search-attribute create" not in calls


def test_minio_init_creates_the_buckets_and_a_user_limited_to_them(tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    _fake_cli(tmp_path / "bin", "mc", 'case "$*" in *"user info"*) echo "AccessKey: app" ;; esac')
    env = {k: v for k, v in environment_of(Stack(REPO).services["minio-init"]).items() if "$" not in v}
    env |= {"MINIO_ROOT_USER": "admin", "MINIO_ROOT_PASSWORD": "pw-root", "DSR_S3_ACCESS_KEY_ID": "app",
            "DSR_S3_SECRET_ACCESS_KEY": "pw-app"}
    done, calls = _run_script("minio-init.sh", tmp_path, env)
    assert done.returncode == 0, done.stderr
    assert "mc mb --ignore-existing local/dsr-exports" in calls and "mc mb --ignore-existing local/dsr-backups" in calls
    assert "mc admin user add local app pw-app" in calls
    assert "mc admin policy attach local dsr-orchestrator --user app" in calls
    policy = json.loads((tmp_path / "dsr-policy.json").read_text())
    resources_ = policy["Statement"][0]["Resource"]
    assert sorted(resources_) == sorted(f"arn:aws:s3:::{b}{s}" for b in ("dsr-exports", "dsr-backups")
                                        for s in ("", "/*"))


def test_minio_init_refuses_to_run_without_credentials(tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    _fake_cli(tmp_path / "bin", "mc", "")
    done, calls = _run_script("minio-init.sh", tmp_path, {"DSR_BUCKETS": "dsr-exports"})
    assert done.returncode != 0 and calls == ""


# --- the image's health check ----------------------------------------------------------------------


def _load_healthcheck() -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location("dsr_healthcheck", REPO / "deploy" / "healthcheck.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fake_proc(root: Path, pid: int, argv: list[str], state: str = "S (sleeping)") -> None:
    proc = root / str(pid)
    proc.mkdir(parents=True)
    (proc / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
    (proc / "status").write_text(f"Name:\tpython3\nState:\t{state}\nPid:\t{pid}\n")


def test_healthcheck_finds_the_worker_and_not_a_zombie(tmp_path: Path) -> None:
    hc = _load_healthcheck()
    _fake_proc(tmp_path, 1, ["/opt/venv/bin/python3", "/opt/venv/bin/dsr", "worker"])
    assert hc.check(proc_root=tmp_path) == (True, "worker running (pid 1)")
    (tmp_path / "1" / "status").write_text("State:\tZ (zombie)\n")
    assert hc.check(proc_root=tmp_path)[0] is False
    other = tmp_path / "other"
    _fake_proc(other, 1, ["/sbin/docker-init", "--", "dsr", "worker"])  # under --init: the child counts
    _fake_proc(other, 7, ["/opt/venv/bin/python3", "/opt/venv/bin/dsr", "--config", "/etc/dsr/dsr.toml", "worker"])
    assert hc.check(proc_root=other)[0] is True
    nothing = tmp_path / "nothing"
    _fake_proc(nothing, 1, ["/usr/bin/python3", "-m", "http.server"])
    assert hc.check(proc_root=nothing)[0] is False


def test_healthcheck_asks_the_api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hc = _load_healthcheck()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/healthz" else 503)
            self.end_headers()

        def log_message(self, *_args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("DSR_API__PORT", str(server.server_address[1]))
        _fake_proc(tmp_path, 1, ["/opt/venv/bin/python3", "/opt/venv/bin/dsr", "api"])
        assert hc.check(proc_root=tmp_path)[0] is True
        assert hc.check(ready=True, proc_root=tmp_path)[0] is False  # /readyz answers 503
    finally:
        server.shutdown()
        server.server_close()
    assert hc.check(proc_root=tmp_path)[0] is False  # nothing listens any more


def test_healthcheck_runs_as_a_script() -> None:
    done = subprocess.run([sys.executable, str(REPO / "deploy" / "healthcheck.py"), "--help"], capture_output=True,
                          text=True, timeout=30, check=False)
    assert done.returncode == 0 and "--ready" in done.stdout
