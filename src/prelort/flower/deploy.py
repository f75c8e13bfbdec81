"""``prelort flower``: a real Flower deployment on this machine, started and stopped for one run.

It starts a ``flower-superlink`` and N ``flower-supernode`` processes on 127.0.0.1 (each node
holding partition K of N), submits the prelort app with ``flwr run``, streams its logs, and stops
every process it started (with their children), also when interrupted. The nodes talk to the
SuperLink over Flower's network transport exactly as on separate machines; only TLS and node
authentication are off here (docs/FLOWER.md shows the flags for a real deployment).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from prelort.config import SimulationConfig, flat_settings, toml_value
from prelort.errors import ConfigError, PrelortError

log = logging.getLogger(__name__)

CONNECTION = "prelort-local"
STARTUP_SECONDS = 60.0


class DeploymentError(PrelortError, RuntimeError):
    """A Flower process failed to start, or the run ended without its outputs."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_config(config: SimulationConfig, resume: bool) -> dict[str, Any]:
    """The settings as Flower's flat run config: scalars only, lists as comma strings."""
    settings: dict[str, Any] = {"resume": resume}
    settings.update({key.replace("_", "-"): v for key, v in flat_settings(config).items()})
    settings["out"] = str(Path(config.out).resolve())
    return settings


def write_app(folder: Path, settings: Mapping[str, Any]) -> None:
    """A Flower app folder: the prelort components, with ``settings`` as its run config.

    Flower refuses ``--run-config`` keys the app does not declare, so the settings are the
    app's own config. The app has no dependencies to install: prelort runs from this
    environment.
    """
    lines = [
        "[build-system]",
        'requires = ["hatchling"]',
        'build-backend = "hatchling.build"',
        "",
        "[project]",
        'name = "prelort-run"',
        'version = "1.0.0"',
        'description = "a prelort federation"',
        'license = "Apache-2.0"',
        "dependencies = []",
        "",
        "[tool.flwr.app]",
        'publisher = "prelort"',
        "",
        "[tool.flwr.app.components]",
        'serverapp = "prelort.flower.server_app:app"',
        'clientapp = "prelort.flower.client_app:app"',
        "",
        "[tool.flwr.app.config]",
        *(f"{key} = {toml_value(value)}" for key, value in settings.items()),
    ]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pyproject.toml").write_text("\n".join(lines) + "\n", encoding="utf-8")


class Processes:
    """Processes started in their own sessions, stopped together with their children."""

    def __init__(self, env: Mapping[str, str], logs: Path) -> None:
        self.env, self.logs = dict(env), logs
        self.started: list[subprocess.Popen] = []

    def start(
        self, name: str, command: Sequence[str], env: Mapping[str, str] | None = None
    ) -> subprocess.Popen:
        log_file = (self.logs / f"{name}.log").open("w", encoding="utf-8")
        process = subprocess.Popen(
            list(command),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env={**self.env, **(env or {})},
            start_new_session=True,  # its own process group: the apps it forks stop with it
        )
        log_file.close()
        self.started.append(process)
        return process

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM everything started and every descendant, then SIGKILL what is left after ``grace``.

        Descendants are collected first, while their parents live: the SuperLink starts its
        executor in a session of its own (out of reach of its process group), and the ServerApp
        process that executor starts would outlive both.
        """
        family = [pid for process in self.started for pid in descendants(process.pid)]
        for process in reversed(self.started):
            _signal_group(process, signal.SIGTERM)
        for pid in family:
            _signal_pid(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for process in self.started:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(max(0.1, deadline - time.monotonic()))
            _signal_group(process, signal.SIGKILL)
            process.wait()
        while any(_alive(pid) for pid in family) and time.monotonic() < deadline:
            time.sleep(0.2)
        for pid in family:
            _signal_pid(pid, signal.SIGKILL)


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children first listed), found with ``pgrep -P``."""
    found: list[int] = []
    frontier = [pid]
    while frontier:
        children = subprocess.run(
            ["pgrep", "-P", ",".join(map(str, frontier))], capture_output=True, text=True
        ).stdout.split()
        frontier = [int(c) for c in children if int(c) not in found]
        found += frontier
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _signal_pid(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)


def _raise_exit(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def wait_healthy(port: int, process: subprocess.Popen, log_path: Path) -> None:
    """Wait until the SuperLink answers on ``port``.

    Raises:
        DeploymentError: it exited or did not answer within ``STARTUP_SECONDS``.
    """
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise DeploymentError(f"flower-superlink exited at start; see {log_path}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise DeploymentError(
        f"flower-superlink did not answer in {STARTUP_SECONDS:.0f} s; see {log_path}"
    )


def node_hardware(config: SimulationConfig, nodes: int, gpus_per_node: float) -> list[dict]:
    """Per SuperNode: its node-config entries (``device``, ``memory-gb``) and environment.

    With ``gpus_per_node`` F > 0, node k runs on GPU ``floor(k * F)`` modulo the GPUs there are
    (F = 0.5: two nodes share each GPU), seen by it as its only device (``CUDA_VISIBLE_DEVICES``).
    With ``client_memory``, node k holds client k's budget as ``memory-gb`` and picks its own rank
    from it, as a node on its own hardware would.

    Raises:
        ConfigError: a GPU share outside (0, 1] or GPUs asked of a machine without CUDA.
    """
    import torch

    from prelort.budgets import draw_budgets
    from prelort.config import parse_budgets

    budgets = []
    if config.client_memory is not None:
        drawn = draw_budgets(parse_budgets(config.client_memory), config.clients, config.seed)
        budgets = drawn + drawn[-1:] * (nodes - len(drawn))  # idle extra nodes: the last budget
    if gpus_per_node < 0 or gpus_per_node > 1:
        raise ConfigError(f"gpus_per_node: must be in (0, 1] or 0 (no GPU), got {gpus_per_node}")
    gpus = torch.cuda.device_count() if gpus_per_node > 0 else 0
    if gpus_per_node > 0 and gpus == 0:
        raise ConfigError("gpus_per_node: this machine has no CUDA GPU that torch can see")
    hardware = []
    for k in range(nodes):
        entries, env = {}, {}
        if gpus:
            entries["device"] = "cuda"
            env["CUDA_VISIBLE_DEVICES"] = str(int(k * gpus_per_node) % gpus)
        if budgets:
            entries["memory-gb"] = round(budgets[k] / 2**30, 4)
        hardware.append({"node_config": entries, "env": env})
    return hardware


def superlink_command(port: int) -> list[str]:
    """A local SuperLink on ``port``, without TLS, installing nothing at run time."""
    return [
        "flower-superlink",
        "--insecure",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--disable-runtime-dependency-installation",
    ]


def supernode_command(
    link_port: int, partition: int, partitions: int, node_config: dict[str, Any]
) -> list[str]:
    """SuperNode ``partition`` of ``partitions``, with its hardware's node config."""
    extra = "".join(f" {key}={toml_value(v)}" for key, v in node_config.items())
    return [
        "flower-supernode",
        "--insecure",
        "--superlink",
        f"127.0.0.1:{link_port}",
        "--node-config",
        f"partition-id={partition} num-partitions={partitions}{extra}",
        "--port",
        str(free_port()),
    ]


def deploy(
    config: SimulationConfig, nodes: int, resume: bool = False, gpus_per_node: float = 0.0
) -> Path:
    """Run ``config`` on a local SuperLink with ``nodes`` SuperNodes; return the output folder.

    Args:
        config: the run's settings.
        nodes: SuperNodes to start, one partition each.
        resume: continue from the checkpoint in ``config.out``.
        gpus_per_node: each node's share of a GPU (0: the run's ``device`` for every node).

    Raises:
        ConfigError: fewer nodes than clients, or GPUs this machine lacks.
        DeploymentError: a Flower process failed, or the run wrote no final metrics.
    """
    if nodes < config.clients:
        raise ConfigError(
            f"nodes: {nodes} nodes cannot hold {config.clients} clients (one partition each)"
        )
    hardware = node_hardware(config, nodes, gpus_per_node)
    if config.client_memory is not None:  # the nodes choose their ranks from their budgets
        config = config.replace(client_memory=None)
    out = Path(config.out).resolve()
    logs = out / "flower-logs"
    logs.mkdir(parents=True, exist_ok=True)
    bin_dir = str(Path(sys.executable).parent)
    with tempfile.TemporaryDirectory(prefix="prelort-flower-") as tmp:
        home, app = Path(tmp) / "home", Path(tmp) / "app"
        link_port = free_port()
        home.mkdir()
        (home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
            f'address = "127.0.0.1:{link_port}"\ninsecure = true\n',
            encoding="utf-8",
        )
        write_app(app, run_config(config, resume))
        env = {
            **os.environ,
            "FLWR_HOME": str(home),
            "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
        }
        processes = Processes(env, logs)
        # `kill PID` must stop the nodes too: turn SIGTERM into an exception that runs `finally`
        previous = signal.signal(signal.SIGTERM, _raise_exit)
        try:
            link = processes.start("superlink", superlink_command(link_port))
            wait_healthy(link_port, link, logs / "superlink.log")
            for k in range(nodes):
                command = supernode_command(link_port, k, nodes, hardware[k]["node_config"])
                processes.start(f"supernode-{k}", command, hardware[k]["env"])
            finished = subprocess.run(
                ["flwr", "run", str(app), CONNECTION, "--stream"], env=env, check=False
            )
        finally:
            processes.stop()
            signal.signal(signal.SIGTERM, previous)
    from prelort.runtime.outputs import final_tiers, read_metrics  # imports torch: only once done

    metrics = out / "metrics.json"
    done = metrics.is_file() and final_tiers(read_metrics(metrics))
    if not done:
        raise DeploymentError(
            f"the Flower run ended (flwr run exit {finished.returncode}) without final metrics "
            f"in {out}; see {logs}"
        )
    return out
