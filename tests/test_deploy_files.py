"""deploy/ works on first use: the image needs no compiler, compose-init.sh reads clean node
ids, the systemd unit is valid and the files lint clean.

No container engine can fetch a base image here, so the Containerfile is not built; what
made it fail (a runtime dependency without binary wheels, pdqhash, on a slim image with no
compiler) is checked instead: here from the sources, and under `make test-deploy` against
PyPI for the image's Python and platform. The linters run when present; `.ci/run`
installs them and sets HASHMESH_REQUIRE_DEPLOY_LINT=1 (as does CI=anything), which turns a
missing one into a failure rather than a skip.

The scale-out files (compose-matchers.yaml, haproxy.cfg, k8s/) are checked for what would
break them on first use: `haproxy -c` on the config, every command line a container runs
parsed by the real CLI, the load balancer's servers being the compose file's matchers on
the port they listen on, Services selecting pods and naming ports that exist, probes and
security settings where README.md says they are. tests/test_scaleout.py runs haproxy.cfg.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
HASHMESH = str(Path(sys.executable).with_name("hashmesh"))
NODE_ID = re.compile(r"^ed25519:[A-Za-z0-9_-]{43}$")


def _tool(name: str) -> str:
    found = shutil.which(name) or shutil.which(
        name, path=f"{Path(sys.executable).parent}:/usr/sbin"
    )
    if found:
        return found
    if os.environ.get("HASHMESH_REQUIRE_DEPLOY_LINT") or os.environ.get("CI"):
        pytest.fail(f"{name} is required (HASHMESH_REQUIRE_DEPLOY_LINT or CI is set) but missing")
    pytest.skip(f"{name} not installed (.ci/run installs it)")


def _runtime_requirements() -> list[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return list(project["dependencies"])


def test_no_runtime_dependency_needs_a_compiler_and_the_node_never_imports_pdqhash() -> None:
    names = {re.split(r"[<>=!~ \[;]", r, maxsplit=1)[0].lower() for r in _runtime_requirements()}
    assert "pdqhash" not in names  # no wheels on PyPI: python:3.11-slim cannot build it
    for package in ("node", "protocol"):
        for path in (REPO / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    imported = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom):
                    imported = [node.module or ""]
                else:
                    continue
                assert not any(m.split(".")[0] == "pdqhash" for m in imported), path


@pytest.mark.deploy
def test_every_runtime_dependency_has_a_wheel_for_the_image(tmp_path: Path) -> None:
    """What `pip install --only-binary :all: .` in the Containerfile resolves, for its base."""
    base = re.search(r"^FROM python:(\d+\.\d+)-slim", (DEPLOY / "Containerfile").read_text(), re.M)
    assert base, "the Containerfile's base is no longer python:X.Y-slim"
    result = subprocess.run(
        [
            *(sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed"),
            *("--only-binary", ":all:", "--implementation", "cp"),
            *("--platform", "manylinux2014_x86_64", "--python-version", base.group(1)),
            *("--target", str(tmp_path / "t"), str(REPO)),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Would install" in result.stdout


def test_containerfile_lints_clean() -> None:
    result = subprocess.run(
        [_tool("hadolint"), "--no-color", str(DEPLOY / "Containerfile")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_compose_init_lints_clean() -> None:
    result = subprocess.run(
        [_tool("shellcheck"), str(DEPLOY / "compose-init.sh")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_systemd_unit_verifies_and_leaves_a_writable_backup_folder(tmp_path: Path) -> None:
    """`systemd-analyze verify` checks every key and value; the venv path the unit names is
    swapped for this venv's hashmesh (verify also checks that ExecStart exists)."""
    text = (DEPLOY / "hashmesh.service").read_text()
    assert "ExecStart=/opt/hashmesh/.venv/bin/hashmesh run" in text
    unit = tmp_path / "hashmesh.service"
    unit.write_text(text.replace("/opt/hashmesh/.venv/bin/hashmesh", HASHMESH))
    result = subprocess.run(
        [_tool("systemd-analyze"), "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr
    # The folder the comments tell operators to back up into is writable in the sandbox.
    assert "hashmesh backup /var/backups/hashmesh/" in text
    writable = [
        p.lstrip("-")
        for line in text.splitlines()
        if line.startswith("ReadWritePaths=")
        for p in line.split("=", 1)[1].split()
    ]
    assert "/var/backups/hashmesh" in writable
    assert "install -d -o hashmesh -g hashmesh -m 0700 /var/lib/hashmesh" in text
    assert "python3 -m venv /opt/hashmesh/.venv" in text


COMPOSE_SHIM = r'''#!{python}
"""`compose run --rm --no-deps [-T] SERVICE ARGS...` as compose runs it, with the real
hashmesh CLI in place of the container: /data is the service's folder, and without -T the
command gets a terminal, as compose gives it (the terminal turns each \n into \r\n)."""
import os, pty, subprocess, sys
args = sys.argv[1:]
assert args[:3] == ["run", "--rm", "--no-deps"], args
args = args[3:]
tty = True
if args[0] == "-T":
    tty, args = False, args[1:]
service, rest = args[0], args[1:]
data = os.path.join({root!r}, service)
os.makedirs(data, exist_ok=True)
rest = [a.replace("/data/", data + "/") for a in rest]
cmd = [{hashmesh!r}, *rest]
env = {{**os.environ, "HASHMESH_HOME": os.path.join(data, "node")}}
if not tty:
    sys.exit(subprocess.run(cmd, env=env).returncode)
pid, fd = pty.fork()
if pid == 0:
    os.execve(cmd[0], cmd, env)
try:
    while True:
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        sys.stdout.buffer.write(chunk)
except OSError:
    pass
sys.stdout.flush()
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
'''


def test_compose_init_wires_clean_node_ids_into_peers_and_trust(tmp_path: Path) -> None:
    """The script itself, run end to end with a compose that behaves as compose does."""
    shim = tmp_path / "compose"
    shim.write_text(
        COMPOSE_SHIM.format(python=sys.executable, root=str(tmp_path / "data"), hashmesh=HASHMESH)
    )
    shim.chmod(0o755)
    result = subprocess.run(
        ["bash", str(DEPLOY / "compose-init.sh")],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COMPOSE": str(shim)},
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    configs = {
        name: tomllib.loads((tmp_path / "data" / name / "node" / "config.toml").read_text())
        for name in ("ncmec", "childfocus", "platform", "police")
    }
    ids = {name: c["node_id"] for name, c in configs.items()}
    assert all(NODE_ID.match(i) for i in ids.values()), ids
    peers = {name: {p["name"]: p for p in c.get("peers", [])} for name, c in configs.items()}
    assert set(peers["ncmec"]) == {"childfocus", "platform", "police"}
    assert set(peers["platform"]) == {"ncmec"}
    assert peers["police"]["ncmec"]["share"] == ["csam", "le-only"]
    for name, entries in peers.items():
        for peer_name, peer in entries.items():
            assert peer["node_id"] == ids[peer_name], (name, peer)
            assert peer["url"] == f"http://{peer_name}:7400"
    trust = {
        name: {(t["node_id"], t["collection"]) for t in c.get("trust", [])}
        for name, c in configs.items()
    }
    assert (ids["police"], "le-only") in trust["ncmec"]
    assert (ids["ncmec"], "le-only") in trust["police"]
    assert not any(collection == "le-only" for _, collection in trust["platform"])
    assert {(ids["ncmec"], "csam"), (ids["childfocus"], "csam")} <= trust["platform"]


# -- scale-out: compose-matchers.yaml, haproxy.cfg, k8s/ ------------------------------------


def _cli_parses(args: list[str]) -> None:
    """`hashmesh ARGS` parsed (types, ranges, required options) by the real CLI, not run."""
    from hashmesh.node.cli.main import cli

    group_ctx = click.Context(cli, info_name="hashmesh")
    name, rest = args[0], list(args[1:])  # no group option (--home) in deploy/'s lines
    command = cli.get_command(group_ctx, name)
    assert command is not None, f"hashmesh has no command {name!r}: {args}"
    command.make_context(name, rest, parent=group_ctx)


def _option(args: list[str], name: str) -> str:
    assert name in args, f"{name} missing from {args}"
    return args[args.index(name) + 1]


def _haproxy_sections(text: str) -> dict[str, list[str]]:
    """'backend matchers' -> its directive lines (comments and blank lines dropped)."""
    sections: dict[str, list[str]] = {}
    current = ""
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].rstrip()
        if not line:
            continue
        if not raw[0].isspace():
            current = " ".join(line.split())
            sections[current] = []
        else:
            sections[current].append(" ".join(line.split()))
    return sections


def test_haproxy_config_checks_clean() -> None:
    """`haproxy -c`: only the compose service names, unknown on this machine, may warn."""
    result = subprocess.run(
        [_tool("haproxy"), "-c", "-f", str(DEPLOY / "haproxy.cfg")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    for line in out.splitlines():
        if "WARNING" in line or "ALERT" in line:
            assert re.search(r"could not resolve address '(matcher\d|node)'", line), line


def test_haproxy_config_retries_reads_and_checks_health() -> None:
    sections = _haproxy_sections((DEPLOY / "haproxy.cfg").read_text())
    backend = sections["backend matchers"]
    for directive in (
        "mode http",
        "option httpchk GET /healthz",
        "http-check expect status 200",
        "option redispatch 1",
        "retries 3",
        "option http-buffer-request",
    ):
        assert directive in sections["defaults"] + backend, directive
    retry_on = next(d for d in backend if d.startswith("retry-on "))
    assert {"conn-failure", "empty-response", "response-timeout"} <= set(retry_on.split()[1:])
    servers = [d for d in backend if d.startswith("server ")]
    assert servers and all(" check" in s for s in servers)
    # Every timeout set, and none unbounded or long enough to pile up connections.
    timeouts = {
        d.split()[1]: d.split()[2] for d in sections["defaults"] if d.startswith("timeout ")
    }
    for name in ("connect", "client", "server", "http-request", "queue", "check"):
        value = timeouts.get(name)
        assert value and re.fullmatch(r"\d+(ms|s)", value), (name, value)
        assert int(value.rstrip("ms")) <= (
            60 if value.endswith("s") and "ms" not in value else 60000
        )
    # Retried bodies must fit one buffer: a full /v1/match (1,000 PDQ queries) does.
    bufsize = next(d for d in sections["global"] if d.startswith("tune.bufsize "))
    assert int(bufsize.split()[1]) >= 1000 * 100 + 4096


def _compose_matchers() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((DEPLOY / "compose-matchers.yaml").read_text())
    return data


def test_compose_matchers_wires_node_matchers_and_haproxy() -> None:
    compose = _compose_matchers()
    services = compose["services"]
    matchers = {n: s for n, s in services.items() if n.startswith("matcher")}
    assert len(matchers) == 3 and "node" in services and "haproxy" in services
    node_port = services["node"]["ports"][0].rsplit(":", 1)[1]
    listen_ports = set()
    for name, service in matchers.items():
        args = [str(a) for a in service["command"]]
        _cli_parses(args)
        follow = _option(args, "--follow")
        assert follow == f"http://node:{node_port}", (name, follow)
        token_file = _option(args, "--token-file")
        assert service["secrets"] == ["follow_token"]
        assert token_file == "/run/secrets/follow_token"
        listen_ports.add(_option(args, "--listen").rsplit(":", 1)[1])
        data = _option(args, "--data")
        assert any(data.startswith(v.split(":")[1] + "/") for v in service["volumes"]), name
        assert service["healthcheck"]["test"][-1].count(":7500/healthz") == 1
        assert service["read_only"] is True
    assert listen_ports == {"7500"}
    assert compose["secrets"]["follow_token"]["file"] == "./follow.token"
    # HAProxy's servers are exactly these services, on the port they listen on.
    sections = _haproxy_sections((DEPLOY / "haproxy.cfg").read_text())
    servers = {d.split()[2] for d in sections["backend matchers"] if d.startswith("server ")}
    assert servers == {f"{n}:7500" for n in matchers} | {f"node:{node_port}"}
    backup = [d for d in sections["backend matchers"] if d.startswith("server node ")]
    assert len(backup) == 1 and " backup" in backup[0]  # only when no replica may answer
    node_servers = [d.split()[2] for d in sections["backend node"] if d.startswith("server ")]
    assert node_servers == [f"node:{node_port}"]
    haproxy = services["haproxy"]
    assert "./haproxy.cfg:/usr/local/etc/haproxy/haproxy.cfg:ro" in haproxy["volumes"]
    binds = {
        d.split()[1].rsplit(":", 1)[1]
        for s in sections.values()
        for d in s
        if d.startswith("bind ")
    }
    published = {p.rsplit(":", 1)[1] for p in haproxy["ports"]}
    assert published == binds
    # The stats socket's folder is writable under read_only.
    sock = next(d for d in sections["global"] if d.startswith("stats socket ")).split()[2]
    assert str(Path(sock).parent) in haproxy["tmpfs"]
    # The init steps in the comments are commands the CLI accepts.
    text = (DEPLOY / "compose-matchers.yaml").read_text()
    assert "token create matchers --scope read --scope replicate > follow.token" in text
    _cli_parses(["token", "create", "matchers", "--scope", "read", "--scope", "replicate"])
    _cli_parses(
        [
            "init",
            "/data/node",
            "--name",
            "hotline",
            "--listen",
            "0.0.0.0:7400",
            "--url",
            "http://node:7400",
        ]
    )


def _k8s_objects() -> list[dict[str, Any]]:
    objects = []
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            assert isinstance(doc, dict), path
            objects.append(doc)
    return objects


def test_k8s_objects_are_complete_and_consistent() -> None:
    objects = _k8s_objects()
    for obj in objects:
        assert {"apiVersion", "kind", "metadata", "spec"} <= set(obj), obj.get("metadata")
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", obj["metadata"]["name"]), obj
    kustomization = yaml.safe_load((DEPLOY / "k8s" / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    assert listed == {p.name for p in (DEPLOY / "k8s").glob("*.yaml")} - {"kustomization.yaml"}
    by_kind: dict[str, dict[str, dict[str, Any]]] = {}
    for obj in objects:
        same_kind = by_kind.setdefault(obj["kind"], {})
        assert obj["metadata"]["name"] not in same_kind, f"duplicate {obj['metadata']}"
        same_kind[obj["metadata"]["name"]] = obj
    workloads = {**by_kind.get("StatefulSet", {}), **by_kind.get("Deployment", {})}
    assert set(by_kind["StatefulSet"]) == {"hashmesh-node"}
    assert set(by_kind["Deployment"]) == {"hashmesh-matcher"}

    def pod_labels(w: dict[str, Any]) -> dict[str, str]:
        labels: dict[str, str] = w["spec"]["template"]["metadata"]["labels"]
        assert w["spec"]["selector"]["matchLabels"].items() <= labels.items()
        return labels

    # Each Service selects one workload's pods and names ports its containers have.
    for name, service in by_kind["Service"].items():
        selector = service["spec"]["selector"]
        chosen = [w for w in workloads.values() if selector.items() <= pod_labels(w).items()]
        assert len(chosen) == 1, name
        ports = {
            p["name"]
            for c in chosen[0]["spec"]["template"]["spec"]["containers"]
            for p in c["ports"]
        }
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= ports, name
    for pdb in by_kind.get("PodDisruptionBudget", {}).values():
        labels = pdb["spec"]["selector"]["matchLabels"]
        (chosen,) = [w for w in workloads.values() if labels.items() <= pod_labels(w).items()]
        assert pdb["spec"]["minAvailable"] < chosen["spec"]["replicas"]  # rollouts can drain

    node = by_kind["StatefulSet"]["hashmesh-node"]
    assert node["spec"]["replicas"] == 1  # one writer of one SQLite file
    headless = by_kind["Service"][node["spec"]["serviceName"]]
    assert headless["spec"].get("clusterIP") == "None"
    claims = node["spec"]["volumeClaimTemplates"]
    assert [c["metadata"]["name"] for c in claims] == ["data"]
    assert claims[0]["spec"]["accessModes"] == ["ReadWriteOnce"]

    for name, workload in workloads.items():
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] == 10001, name  # the Containerfile's user
        volumes = {v["name"] for v in pod.get("volumes", [])}
        volumes |= {c["metadata"]["name"] for c in workload["spec"].get("volumeClaimTemplates", [])}
        for container in pod.get("initContainers", []) + pod["containers"]:
            where = f"{name}/{container['name']}"
            sc = container["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["capabilities"]["drop"] == ["ALL"], where
            resources = container["resources"]
            assert resources["requests"]["cpu"] and resources["requests"]["memory"], where
            assert resources["limits"]["memory"], where
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert set(mounts.values()) <= volumes, where
            assert "/tmp" in mounts, where  # the root is read-only
            if "args" in container:
                _cli_parses([str(a) for a in container["args"]])
            if "command" in container:  # the init container's shell line
                line = container["command"][-1]
                init = line.split("exec hashmesh ", 1)[1]
                env = {e["name"]: e["value"] for e in container["env"]}
                words = [w.strip('"') for w in init.split()]
                _cli_parses([env.get(w[1:], w) if w.startswith("$") else w for w in words])

    matcher = by_kind["Deployment"]["hashmesh-matcher"]["spec"]["template"]["spec"]
    container = matcher["containers"][0]
    args = [str(a) for a in container["args"]]
    node_service = by_kind["Service"]["hashmesh-node"]
    assert (
        _option(args, "--follow")
        == f"http://hashmesh-node:{node_service['spec']['ports'][0]['port']}"
    )
    listen_port = int(_option(args, "--listen").rsplit(":", 1)[1])
    assert container["ports"][0]["containerPort"] == listen_port
    # Ready means current (/healthz, 503 when behind); alive only means listening.
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert "httpGet" not in container["livenessProbe"], "a lagging replica is not dead"
    assert "startupProbe" in container
    data = _option(args, "--data")
    assert any(data.startswith(m["mountPath"] + "/") for m in container["volumeMounts"])
    # The follow token comes from the Secret, mounted where --token-file reads it.
    token_file = _option(args, "--token-file")
    secret_volumes = {v["name"]: v["secret"] for v in matcher["volumes"] if "secret" in v}
    assert [s["secretName"] for s in secret_volumes.values()] == ["hashmesh-follow-token"]
    mount = next(m for m in container["volumeMounts"] if m["name"] in secret_volumes)
    item = secret_volumes[mount["name"]]["items"][0]
    assert token_file == f"{mount['mountPath']}/{item['path']}"
    assert "Secret" not in by_kind, "ship no token: the operator creates the Secret"
