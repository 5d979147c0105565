"""`make deploy-check`: the deployed shape, checked on a machine without Docker or Kubernetes.

Static checks read deploy/ as Docker Compose, Dagster and Helm would: the compose services,
volumes and variables; deploy/.env.example against the NEXUDUS_* variables the package reads; the
workspace, the instance settings, the Dockerfile's command and the Helm values; the example
accounts file as the code location reads it, and how compose and Helm hand it to the runs.

The live check loads the code location as deployed: a real PostgreSQL (the tests' own), a
DAGSTER_HOME holding deploy/dagster.yaml, `dagster instance migrate`, the Dockerfile's code server
command on a free port of 127.0.0.1, and `dagster job list` through deploy/workspace.yaml pointed
at that port. Prints what it checked; exits 1 on any problem.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import dagster as dg
import yaml

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, only scripts/ is on sys.path; the test PostgreSQL lives in the test package.
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from nexudus_assets.names import ACCOUNT_TAG  # noqa: E402
from nexudus_assets.settings import Deployment, SettingsError  # noqa: E402
from nexudus_assets_tests.postgres import ENV_NAMES as POSTGRES_VARIABLES  # noqa: E402
from nexudus_assets_tests.postgres import PostgresServer, free_port  # noqa: E402

DEPLOY = ROOT / "deploy"
PACKAGE = ROOT / "nexudus_assets"
DAGSTER_SERVICES = ("code_server", "webserver", "daemon")
LOCATION = "nexudus_assets"
DEFINITIONS_MODULE = "nexudus_assets.definitions"
COMMAND_JOB = "nexudus_command"
JOBS = {"nexudus_sync", "nexudus_full_refresh", "nexudus_freshness", COMMAND_JOB}
MAX_RETRIES_TAG = "dagster/max_retries"
BIN = Path(sys.executable).parent
CODE_SERVER_LOAD_SECONDS = 180
#: Where the images mount the warehouse volume (NEXUDUS_DUCKDB_PATH's directory in compose).
WAREHOUSE_DIRECTORY = "/opt/dagster/data"
ACCOUNTS_EXAMPLE = DEPLOY / "accounts.example.yaml"
ACCOUNTS_COMPOSE = DEPLOY / "docker-compose.accounts.yaml"
#: The queue's limit that lets one run of each account go at a time, as Dagster and the chart spell it.
PER_ACCOUNT_LIMIT = {"key": ACCOUNT_TAG, "value": {"applyLimitPerUniqueValue": True}, "limit": 1}

_QUOTED_VARIABLE = re.compile(r"""["'](NEXUDUS_[A-Z0-9_]*[A-Z0-9])["']""")
_ENV_LINE = re.compile(r"^\s*(?P<comment>#\s*)?(?P<name>[A-Z][A-Z0-9_]*)=")


# -- reading ---------------------------------------------------------------------------------------


def load_yaml(path: Path) -> Any:
    with path.open() as file:
        return yaml.safe_load(file)


def package_variables(package: Path = PACKAGE) -> set[str]:
    """The NEXUDUS_* names the package's code reads (quoted names, so prose mentions do not count)."""
    return {match for path in package.rglob("*.py") for match in _QUOTED_VARIABLE.findall(path.read_text())}


def env_example_variables(path: Path) -> tuple[set[str], set[str]]:
    """(set, documented): names given a value, and names shown commented out with their default."""
    given, documented = set(), set()
    for line in path.read_text().splitlines():
        found = _ENV_LINE.match(line)
        if found:
            (documented if found["comment"] else given).add(found["name"])
    return given, documented


def service_environment(service: Mapping[str, Any]) -> dict[str, str]:
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in environment)
    return {key: "" if value is None else str(value) for key, value in environment.items()}


def service_env_files(service: Mapping[str, Any]) -> list[str]:
    env_file = service.get("env_file") or []
    entries = [env_file] if isinstance(env_file, str | dict) else env_file
    return [entry["path"] if isinstance(entry, dict) else entry for entry in entries]


def named_volume_mounts(service: Mapping[str, Any]) -> dict[str, str]:
    """target path -> named volume, for the service's named-volume mounts (bind mounts left out)."""
    mounts = {}
    for entry in service.get("volumes") or []:
        if isinstance(entry, dict):
            if entry.get("type", "volume") == "volume" and entry.get("source"):
                mounts[entry["target"]] = entry["source"]
            continue
        source, _, rest = entry.partition(":")
        if rest and not source.startswith((".", "/", "~", "$")):
            mounts[rest.split(":")[0]] = source
    return mounts


def volume_holding(mounts: Mapping[str, str], path: str) -> tuple[str, str] | None:
    """(volume, mount path) of the mount that holds `path`."""
    for target, volume in mounts.items():
        if PurePosixPath(path).is_relative_to(PurePosixPath(target)):
            return volume, target
    return None


def dockerfile_command(path: Path = DEPLOY / "Dockerfile") -> list[str]:
    for line in path.read_text().splitlines():
        if line.startswith("CMD "):
            return json.loads(line.removeprefix("CMD "))
    raise ValueError(f"{path}: no CMD line")


def option(command: list[str], *names: str) -> str | None:
    for index, word in enumerate(command[:-1]):
        if word in names:
            return command[index + 1]
    return None


# -- static checks: each returns its problems ------------------------------------------------------


def compose_problems(compose: Mapping[str, Any], env_example: Path = DEPLOY / ".env.example") -> list[str]:
    problems = []
    services = compose.get("services") or {}
    missing = [name for name in ("postgres", *DAGSTER_SERVICES) if name not in services]
    if missing:
        return [f"services: {', '.join(missing)} missing"]
    if "healthcheck" not in services["postgres"]:
        problems.append("services.postgres: no healthcheck")
    declared_volumes = set(compose.get("volumes") or {})
    given_in_env_file, _ = env_example_variables(env_example)
    warehouse = {}
    for name in DAGSTER_SERVICES:
        service = services[name]
        environment = service_environment(service)
        env_files = service_env_files(service)
        if ".env" not in env_files:
            problems.append(f"services.{name}.env_file: does not read .env (secrets come from deploy/.env)")
        provided = set(environment) | (given_in_env_file if ".env" in env_files else set())
        for variable in POSTGRES_VARIABLES:
            if variable not in provided:
                problems.append(f"services.{name}: {variable} is neither in environment nor set in .env.example")
        if "postgres" not in (service.get("depends_on") or {}):
            problems.append(f"services.{name}.depends_on: does not wait for postgres")
        duckdb_path = environment.get("NEXUDUS_DUCKDB_PATH")
        if not duckdb_path:
            problems.append(f"services.{name}.environment: NEXUDUS_DUCKDB_PATH is not set")
            continue
        holding = volume_holding(named_volume_mounts(service), duckdb_path)
        if holding is None:
            problems.append(f"services.{name}: NEXUDUS_DUCKDB_PATH {duckdb_path} is on no named volume")
            continue
        if holding[0] not in declared_volumes:
            problems.append(f"volumes: {holding[0]} (the warehouse of {name}) is not declared")
        warehouse[name] = (holding, duckdb_path)
    if len(set(warehouse.values())) > 1:
        problems.append(
            "the warehouse is not the same volume, path and file in every Dagster service: "
            + "; ".join(
                f"{name}: volume {volume} at {target}, {path}" for name, ((volume, target), path) in warehouse.items()
            )
        )
    webserver_command = services["webserver"].get("command") or []
    if webserver_command[:1] != ["dagster-webserver"] or option(webserver_command, "-w", "--workspace") is None:
        problems.append("services.webserver.command: not `dagster-webserver ... -w <workspace>`")
    if (services["daemon"].get("command") or [])[:2] != ["dagster-daemon", "run"]:
        problems.append("services.daemon.command: not `dagster-daemon run`")
    if services["code_server"].get("command"):
        problems.append("services.code_server.command: set; the code server is the image's own command")
    return problems


def env_example_problems(env_example: Path = DEPLOY / ".env.example", package: Path = PACKAGE) -> list[str]:
    given, documented = env_example_variables(env_example)
    unlisted = sorted(package_variables(package) - given - documented)
    problems = [f"{env_example.name}: {variable} is not listed" for variable in unlisted]
    problems += [
        f"{env_example.name}: {variable} has no value" for variable in POSTGRES_VARIABLES if variable not in given
    ]
    return problems


def gitignore_problems(gitignore: Path = ROOT / ".gitignore") -> list[str]:
    ignored = {line.strip() for line in gitignore.read_text().splitlines()}
    return [] if "deploy/.env" in ignored else [".gitignore: deploy/.env (the secrets) is not ignored"]


def instance_problems(instance: Mapping[str, Any]) -> list[str]:
    problems = []
    postgres_db = ((instance.get("storage") or {}).get("postgres") or {}).get("postgres_db") or {}
    wanted = dict(zip(("hostname", "port", "username", "password", "db_name"), POSTGRES_VARIABLES, strict=True))
    for key, variable in wanted.items():
        if postgres_db.get(key) != {"env": variable}:
            problems.append(f"storage.postgres.postgres_db.{key}: not read from {variable}")
    if (instance.get("run_coordinator") or {}).get("class") != "QueuedRunCoordinator":
        problems.append("run_coordinator: not a QueuedRunCoordinator")
    runs = (instance.get("concurrency") or {}).get("runs") or {}
    problems += per_account_limit_problems(
        "concurrency.runs.tag_concurrency_limits", runs.get("tag_concurrency_limits")
    )
    monitoring = instance.get("run_monitoring") or {}
    if monitoring.get("enabled") is not True or not monitoring.get("max_runtime_seconds"):
        problems.append("run_monitoring: not enabled with a max_runtime_seconds")
    retries = instance.get("run_retries") or {}
    if retries.get("enabled") is not True or retries.get("max_retries", 0) != 0:
        problems.append("run_retries: not enabled with max_retries 0 (jobs opt in with the dagster/max_retries tag)")
    if (instance.get("telemetry") or {}).get("enabled") is not False:
        problems.append("telemetry: not disabled")
    return problems


def per_account_limit_problems(where: str, limits: Any) -> list[str]:
    """Runs of one account one at a time, of different accounts side by side."""
    if PER_ACCOUNT_LIMIT in (limits or []):
        return []
    return [f"{where}: no limit of 1 run per value of the {ACCOUNT_TAG} tag (applyLimitPerUniqueValue)"]


def workspace_problems(workspace: Mapping[str, Any], compose: Mapping[str, Any], command: list[str]) -> list[str]:
    servers = [entry["grpc_server"] for entry in workspace.get("load_from") or [] if "grpc_server" in entry]
    if len(servers) != 1:
        return [f"load_from: {len(servers)} grpc_server entries, not 1"]
    server, problems = servers[0], []
    if server.get("location_name") != LOCATION:
        problems.append(f"load_from.grpc_server.location_name: {server.get('location_name')!r}, not {LOCATION!r}")
    if server.get("host") != "code_server" or "code_server" not in (compose.get("services") or {}):
        problems.append(f"load_from.grpc_server.host: {server.get('host')!r}, not the code_server service")
    listening = option(command, "-p", "--port")
    if str(server.get("port")) != listening:
        problems.append(f"load_from.grpc_server.port: {server.get('port')}, but the code server listens on {listening}")
    return problems


def dockerfile_problems(path: Path = DEPLOY / "Dockerfile") -> list[str]:
    text, problems = path.read_text(), []
    command = dockerfile_command(path)
    module = option(command, "-m", "--module-name")
    if command[:3] != ["dagster", "code-server", "start"] or module != DEFINITIONS_MODULE:
        problems.append(f"CMD: not `dagster code-server start ... -m {DEFINITIONS_MODULE}`")
    if option(command, "-h", "--host") != "0.0.0.0":
        problems.append("CMD: the code server does not listen on 0.0.0.0, so other containers cannot reach it")
    for needed in (
        "WORKDIR /opt/dagster/app",
        "DAGSTER_HOME=/opt/dagster/dagster_home",
        "COPY deploy/dagster.yaml ${DAGSTER_HOME}/dagster.yaml",
        "COPY deploy/workspace.yaml",
    ):
        if needed not in text:
            problems.append(f"missing `{needed}`")
    return problems + dockerfile_user_problems(text)


def dockerfile_user_problems(text: str, volume_directory: str = WAREHOUSE_DIRECTORY) -> list[str]:
    """The processes run as a user other than root, who owns the directory the warehouse volume mounts.

    A fresh named volume takes the owner of the image's directory it is mounted over, so the
    directory is created and chowned in the image before the USER line.
    """
    lines = [line.strip() for line in text.splitlines()]
    users = [index for index, line in enumerate(lines) if line.startswith("USER ")]
    if not users:
        return ["no USER line: the processes would run as root"]
    user = lines[users[-1]].removeprefix("USER ").strip().split(":")[0]
    if user in ("root", "0"):
        return [f"USER {user}: the processes would run as root"]
    before_user = "\n".join(lines[: users[-1]])
    chowned = re.search(
        rf"chown\s+(-R\s+)?{re.escape(user)}(:\S+)?\s+[^\n]*{re.escape(volume_directory)}(\s|$)", before_user
    )
    if chowned is None or f"mkdir -p {volume_directory}" not in before_user:
        return [f"{volume_directory} (the warehouse volume) is not created and chowned to {user} before USER {user}"]
    return []


def helm_problems(values: Mapping[str, Any]) -> list[str]:
    problems = []
    deployments = (values.get("dagster-user-deployments") or {}).get("deployments") or []
    ours = [
        deployment
        for deployment in deployments
        if DEFINITIONS_MODULE in (deployment.get("codeServerArgs") or deployment.get("dagsterApiGrpcArgs") or [])
    ]
    if len(ours) != 1:
        return [f"dagster-user-deployments.deployments: {len(ours)} load {DEFINITIONS_MODULE}, not 1"]
    deployment = ours[0]
    env = {item["name"]: item.get("value") for item in deployment.get("env") or []}
    duckdb_path = env.get("NEXUDUS_DUCKDB_PATH")
    if not duckdb_path:
        problems.append("user deployment env: NEXUDUS_DUCKDB_PATH is not set")
    if not deployment.get("envSecrets"):
        problems.append("user deployment envSecrets: no Secret for the NEXUDUS_* variables")

    def warehouse_claim(where: str, holder: Mapping[str, Any]) -> str | None:
        claims = {
            volume["name"]: volume["persistentVolumeClaim"]["claimName"]
            for volume in holder.get("volumes") or []
            if "persistentVolumeClaim" in volume
        }
        mounted = [
            m["name"]
            for m in holder.get("volumeMounts") or []
            if duckdb_path and PurePosixPath(duckdb_path).is_relative_to(PurePosixPath(m["mountPath"]))
        ]
        if not mounted or mounted[0] not in claims:
            problems.append(f"{where}: no PersistentVolumeClaim mounted where NEXUDUS_DUCKDB_PATH points")
            return None
        return claims[mounted[0]]

    run_launcher = ((values.get("runLauncher") or {}).get("config") or {}).get("k8sRunLauncher") or {}
    claims = {
        warehouse_claim("user deployment", deployment),
        warehouse_claim("runLauncher.config.k8sRunLauncher", run_launcher),
    }
    if None not in claims and len(claims) > 1:
        problems.append(f"the user deployment and the run pods mount different claims: {sorted(claims)}")
    if (values.get("runLauncher") or {}).get("type") != "K8sRunLauncher":
        problems.append("runLauncher.type: not K8sRunLauncher (a pod per run)")
    accounts_file = env.get("NEXUDUS_ACCOUNTS")
    if accounts_file:
        for where, holder in (("user deployment", deployment), ("runLauncher.config.k8sRunLauncher", run_launcher)):
            if not _config_map_mounted(holder, accounts_file):
                problems.append(f"{where}: no ConfigMap mounted where NEXUDUS_ACCOUNTS points")
        if run_launcher.get("envSecrets") != deployment.get("envSecrets"):
            problems.append(
                "runLauncher.config.k8sRunLauncher.envSecrets: not the user deployment's (the accounts' secrets)"
            )
    across = env.get("NEXUDUS_ACROSS_ACCOUNTS_PATH")
    warehouse_directory = PurePosixPath(duckdb_path).parent if duckdb_path else None
    if across and PurePosixPath(across).parent != warehouse_directory:
        problems.append("user deployment env: NEXUDUS_ACROSS_ACCOUNTS_PATH is not beside the warehouse, on its claim")
    daemon = values.get("dagsterDaemon") or {}
    queued = ((daemon.get("runCoordinator") or {}).get("config") or {}).get("queuedRunCoordinator") or {}
    problems += per_account_limit_problems(
        "dagsterDaemon.runCoordinator.config.queuedRunCoordinator.tagConcurrencyLimits",
        queued.get("tagConcurrencyLimits"),
    )
    if (daemon.get("runRetries") or {}).get("maxRetries", 0) != 0:
        problems.append("dagsterDaemon.runRetries.maxRetries: not 0 (jobs opt in with the dagster/max_retries tag)")
    if not (daemon.get("runMonitoring") or {}).get("enabled"):
        problems.append("dagsterDaemon.runMonitoring: not enabled")
    postgresql = values.get("postgresql") or {}
    if not all(postgresql.get(key) for key in ("postgresqlHost", "postgresqlUsername", "postgresqlDatabase")):
        problems.append("postgresql: host, username and database are not all set")
    secret_name = (values.get("global") or {}).get("postgresqlSecretName")
    if values.get("generatePostgresqlPasswordSecret") is not False or not secret_name:
        problems.append("the PostgreSQL password does not come from an existing Secret")
    return problems


def _config_map_mounted(holder: Mapping[str, Any], path: str) -> bool:
    config_maps = {volume["name"] for volume in holder.get("volumes") or [] if "configMap" in volume}
    return any(
        mount["name"] in config_maps and PurePosixPath(path).is_relative_to(PurePosixPath(mount["mountPath"]))
        for mount in holder.get("volumeMounts") or []
    )


def accounts_example_problems(
    example: Path = ACCOUNTS_EXAMPLE, env_example: Path = DEPLOY / ".env.example"
) -> list[str]:
    """The example accounts file as the code location reads it: several accounts, each warehouse on
    the volume, each secret's variable shown in .env.example."""
    try:
        deployment = Deployment.from_env({"NEXUDUS_ACCOUNTS": str(example)})
    except SettingsError as exc:
        return [f"{example.name}: {exc}"]
    problems = []
    if len(deployment.accounts) < 2:
        problems.append(f"{example.name}: {len(deployment.accounts)} account(s); the example shows several")
    given, documented = env_example_variables(env_example)
    for account in deployment.accounts:
        name, settings = account.names.account, account.settings
        if not PurePosixPath(settings.duckdb_path).is_relative_to(PurePosixPath(WAREHOUSE_DIRECTORY)):
            problems.append(f"{example.name}: {name}'s warehouse {settings.duckdb_path} is not on the warehouse volume")
        api = settings.nexudus_api
        variables = [secret.env_var_name for secret in (api.username, api.password) if isinstance(secret, dg.EnvVar)]
        for variable in variables:
            if variable not in given | documented:
                problems.append(f"{env_example.name}: {variable} ({name}'s secret) is not shown")
    return problems


def accounts_compose_problems(compose: Mapping[str, Any], accounts: Mapping[str, Any]) -> list[str]:
    """docker-compose.accounts.yaml over docker-compose.yaml: the code server, where runs start, reads the file."""
    override = (accounts.get("services") or {}).get("code_server") or {}
    accounts_file = service_environment(override).get("NEXUDUS_ACCOUNTS")
    if not accounts_file:
        return ["services.code_server.environment: NEXUDUS_ACCOUNTS is not set"]
    problems = []
    bind_mounts = [
        entry.split(":")[1]
        for entry in override.get("volumes") or []
        if isinstance(entry, str) and entry.startswith(".")
    ]
    if not any(PurePosixPath(accounts_file).is_relative_to(PurePosixPath(target)) for target in bind_mounts):
        problems.append(f"services.code_server: NEXUDUS_ACCOUNTS {accounts_file} is on no directory of deploy/")
    base = service_environment((compose.get("services") or {}).get("code_server") or {})
    across = base.get("NEXUDUS_ACROSS_ACCOUNTS_PATH", "")
    if not PurePosixPath(across).is_relative_to(PurePosixPath(WAREHOUSE_DIRECTORY)):
        problems.append("services.code_server: NEXUDUS_ACROSS_ACCOUNTS_PATH is not on the warehouse volume")
    return problems


def retry_problems(defs: dg.Definitions | None = None) -> list[str]:
    """Which jobs a deployment with run retries on would retry (the code location's, by default)."""
    if defs is None:
        from nexudus_assets.definitions import defs

    tags = {name: defs.resolve_job_def(name).tags for name in JOBS}
    problems = []
    command_retries = int(tags[COMMAND_JOB].get(MAX_RETRIES_TAG, 0))
    if command_retries:
        problems.append(f"{COMMAND_JOB}: tagged {MAX_RETRIES_TAG}={command_retries}; its commands cannot be undone")
    for name in sorted(JOBS - {COMMAND_JOB}):
        if not int(tags[name].get(MAX_RETRIES_TAG, 0)):
            problems.append(f"{name}: no {MAX_RETRIES_TAG} tag, so a failed run is not retried")
    return problems


def static_checks() -> list[tuple[str, Callable[[], list[str]]]]:
    compose = load_yaml(DEPLOY / "docker-compose.yaml")
    return [
        (
            "deploy/docker-compose.yaml: services, the warehouse volume, env_file, DAGSTER_POSTGRES_*",
            lambda: compose_problems(compose),
        ),
        ("deploy/.env.example: every NEXUDUS_* variable the package reads", env_example_problems),
        (".gitignore: deploy/.env stays out of git", gitignore_problems),
        (
            "deploy/dagster.yaml: PostgreSQL storage, run queue (one run per account), monitoring, retries, telemetry",
            lambda: instance_problems(load_yaml(DEPLOY / "dagster.yaml")),
        ),
        (
            "deploy/Dockerfile: the code server command, WORKDIR, DAGSTER_HOME, an unprivileged USER",
            dockerfile_problems,
        ),
        (
            "deploy/workspace.yaml: the code_server service over gRPC",
            lambda: workspace_problems(load_yaml(DEPLOY / "workspace.yaml"), compose, dockerfile_command()),
        ),
        (
            "deploy/helm/values.yaml: user deployment, warehouse claim, a pod per run, one run per account, secrets",
            lambda: helm_problems(load_yaml(DEPLOY / "helm" / "values.yaml")),
        ),
        (
            "deploy/accounts.example.yaml: several accounts, warehouses on the volume, secrets in .env.example",
            accounts_example_problems,
        ),
        (
            "deploy/docker-compose.accounts.yaml: the code server reads the accounts file",
            lambda: accounts_compose_problems(compose, load_yaml(ACCOUNTS_COMPOSE)),
        ),
        ("run retries: the sync jobs opt in, nexudus_command never", retry_problems),
    ]


# -- the live check --------------------------------------------------------------------------------


def _port_open(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _dagster(arguments: list[str], env: Mapping[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "dagster"), *arguments],
        env=dict(env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=CODE_SERVER_LOAD_SECONDS,
        check=False,
    )


def _stop(process: subprocess.Popen) -> None:
    """Stops the code server and the gRPC server it started (its own process group)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)


def live_problems(notes: list[str]) -> list[str]:
    """Problems found; what was seen goes to `notes`."""
    with tempfile.TemporaryDirectory(prefix="nexudus-deploy-check-") as directory, PostgresServer() as postgres:
        work = Path(directory)
        home = work / "dagster_home"
        home.mkdir()
        shutil.copyfile(DEPLOY / "dagster.yaml", home / "dagster.yaml")
        database = postgres.fresh_database()
        env = {
            **os.environ,
            **database,
            "DAGSTER_HOME": str(home),
            "NEXUDUS_DUCKDB_PATH": str(work / "data" / "nexudus.duckdb"),
        }

        migrated = _dagster(["instance", "migrate"], env, work)
        if migrated.returncode != 0:
            return [f"`dagster instance migrate` on PostgreSQL failed: {migrated.stderr[-2000:]}"]
        info = _dagster(["instance", "info"], env, work)
        if "PostgresRunStorage" not in info.stdout or "PostgresEventLogStorage" not in info.stdout:
            return [f"`dagster instance info` does not show PostgreSQL storage: {(info.stdout + info.stderr)[-2000:]}"]
        notes.append("instance: PostgresRunStorage, PostgresEventLogStorage (after `dagster instance migrate`)")

        port = free_port()
        command = dockerfile_command()
        command[command.index(option(command, "-h", "--host"))] = "127.0.0.1"
        command[command.index(option(command, "-p", "--port"))] = str(port)
        workspace = load_yaml(DEPLOY / "workspace.yaml")
        workspace["load_from"][0]["grpc_server"].update(host="127.0.0.1", port=port)
        (work / "workspace.yaml").write_text(yaml.safe_dump(workspace))

        log_path = work / "code_server.log"
        with log_path.open("wb") as log:
            server = subprocess.Popen(
                [str(BIN / command[0]), *command[1:]],
                env=env,
                cwd=work,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            deadline = time.monotonic() + CODE_SERVER_LOAD_SECONDS
            listed = None
            while time.monotonic() < deadline and server.poll() is None:
                if _port_open(port):
                    listed = _dagster(["job", "list", "-w", str(work / "workspace.yaml")], env, work)
                    if listed.returncode == 0:
                        break
                time.sleep(1)
            if listed is None or listed.returncode != 0:
                output = listed.stderr[-1500:] if listed else ""
                server_log = log_path.read_text()[-1500:]
                return [f"the code location did not load over gRPC: {output}\ncode server log: {server_log}"]
        finally:
            _stop(server)
        found = {line.split()[-1] for line in listed.stdout.splitlines() if line.strip().startswith("Job:")}
        notes.append(f"`{' '.join(command)}` serves over gRPC: {', '.join(sorted(found))}")
        missing = JOBS - found
        return [f"`dagster job list` through the workspace is missing {', '.join(sorted(missing))}"] if missing else []


def main() -> int:
    failed = 0
    notes: list[str] = []
    checks = [
        *static_checks(),
        ("live: the code location over gRPC, with PostgreSQL storage", lambda: live_problems(notes)),
    ]
    for description, check in checks:
        problems = check()
        print(f"{'ok  ' if not problems else 'FAIL'} {description}")
        for line in [*notes, *problems]:
            print(f"       {line}")
        notes.clear()
        failed += bool(problems)
    print(f"deploy-check: {len(checks) - failed} of {len(checks)} checks passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
