"""A Flower federation on this machine, as real processes: one SuperLink and N SuperNodes.

What the deployment test and the benchmark use; docs/flower.md gives the same
steps as shell commands. :class:`LocalFederation` starts ``flower-superlink`` (optionally in
simulation mode, where ``flwr run`` uses the Ray simulation engine) and ``flower-supernode``
processes on free localhost ports, with TLS by default (certificates from
``scripts/make-test-certs.sh``; ``insecure=True`` is the explicit opt-out), submits an app with
``flwr run`` and stops everything again.

SuperNode authentication is on whenever TLS is (Flower requires TLS for it): the SuperLink runs
with ``--enable-supernode-auth`` and accepts only SuperNodes whose public key was registered
with ``flwr supernode register``; each SuperNode gets its own EC key pair
(:func:`make_supernode_keys`, in ``workdir/keys``) and signs its requests with the private key
(``--auth-supernode-private-key``). A SuperNode with an unregistered key, or none, is refused.

Cleanup: every process is started in its own process group and all of them, with everything
they spawn (Flower's SuperExec and app processes detach into new sessions; Ray starts its own
daemons), carry a unique ``TESSERACT_FL_FEDERATION`` environment tag. :meth:`stop` terminates
the process groups, then kills any process still carrying the tag, and :meth:`survivors` lists
them (Linux ``/proc``), so a test can assert that nothing is left.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tesseract_fl.errors import TesseractFLError

__all__ = [
    "FederationError",
    "LocalFederation",
    "free_port",
    "make_certificates",
    "make_supernode_keys",
]

TAG = "TESSERACT_FL_FEDERATION"

#: The cert script, relative to the repository root.
CERT_SCRIPT = Path("scripts") / "make-test-certs.sh"


class FederationError(TesseractFLError):
    """A Flower process did not start, or a run did not finish."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (the OS's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_certificates(out_dir: Path, script: Path | None = None) -> Path:
    """Run ``scripts/make-test-certs.sh`` into ``out_dir``; returns ``out_dir``."""
    script = script or Path(__file__).resolve().parents[3] / CERT_SCRIPT
    if not script.is_file():
        raise FederationError(f"certificate script {script} not found")
    proc = subprocess.run(
        ["bash", str(script), str(out_dir)], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise FederationError(f"{script} failed: {proc.stderr.strip() or proc.stdout.strip()}")
    return out_dir


def make_supernode_keys(out_dir: Path, count: int) -> list[Path]:
    """``count`` SuperNode key pairs (EC P-384, OpenSSH format, as Flower's SuperNode
    authentication reads them): ``supernode-<i>`` (private, mode 600) and ``supernode-<i>.pub``
    in ``out_dir``; returns the private keys' paths."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        key = ec.generate_private_key(ec.SECP384R1())
        private = out_dir / f"supernode-{i}"
        private.touch(mode=0o600)
        private.chmod(0o600)
        private.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.OpenSSH,
                serialization.NoEncryption(),
            )
        )
        public = key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        private.with_name(private.name + ".pub").write_bytes(public + b"\n")
        paths.append(private)
    return paths


def _quote(value: Any) -> str:
    """A run-config value as a TOML literal for ``--run-config``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


class LocalFederation:
    """One SuperLink (+ ``supernodes`` SuperNodes) on localhost, in ``workdir``.

    ``node_configs``: each SuperNode's ``--node-config`` (default: ``partition-id=i
    num-partitions=N``). ``simulation``: start the SuperLink in simulation mode (no SuperNodes;
    ``flwr run`` runs the app on the Ray simulation engine). ``insecure``: no TLS (explicit
    opt-in; the default generates test certificates into ``workdir/certificates``).
    ``node_auth``: SuperNode authentication (default: on with TLS and SuperNodes; it needs
    TLS). ``env``: extra environment for every process. ``cert_script``: the certificate script
    (default: ``scripts/make-test-certs.sh`` of the source checkout). After :meth:`start`,
    :attr:`node_ids` holds the registered SuperNodes' node ids (empty without authentication).
    """

    def __init__(
        self,
        workdir: str | Path,
        *,
        supernodes: int = 0,
        node_configs: Sequence[str] | None = None,
        simulation: bool = False,
        insecure: bool = False,
        node_auth: bool | None = None,
        env: Mapping[str, str] | None = None,
        startup_timeout: float = 120.0,
        cert_script: str | Path | None = None,
    ) -> None:
        if simulation and supernodes:
            raise FederationError("a simulation SuperLink runs its own virtual SuperNodes")
        if node_configs is not None and len(node_configs) != supernodes:
            raise FederationError(f"{len(node_configs)} node configs for {supernodes} nodes")
        if node_auth and insecure:
            raise FederationError(
                "SuperNode authentication needs TLS: pass insecure=False or node_auth=False"
            )
        if node_auth and simulation:
            raise FederationError("a simulation SuperLink has no SuperNodes to authenticate")
        self.workdir = Path(workdir).resolve()
        self.supernodes = supernodes
        self.node_configs = (
            list(node_configs)
            if node_configs is not None
            else [f"partition-id={i} num-partitions={supernodes}" for i in range(supernodes)]
        )
        self.simulation = simulation
        self.insecure = insecure
        self.node_auth = (not insecure and not simulation) if node_auth is None else node_auth
        self.node_ids: list[int] = []
        self.startup_timeout = startup_timeout
        self.cert_script = None if cert_script is None else Path(cert_script)
        self.tag = uuid.uuid4().hex
        self.port = 0
        self.procs: list[subprocess.Popen[bytes]] = []
        self.named: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, Path] = {}
        bindir = str(Path(sys.executable).parent)
        # The processes import this very tesseract_fl (not another copy on the path), and a
        # relative PYTHONPATH entry would break in their working directory.
        package_root = str(Path(__file__).resolve().parents[2])
        pythonpath = [package_root] + [
            str(Path(p).resolve()) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p
        ]
        self.env = {
            **os.environ,
            "PATH": bindir + os.pathsep + os.environ.get("PATH", ""),
            "PYTHONPATH": os.pathsep.join(dict.fromkeys(pythonpath)),
            "FLWR_HOME": str(self.workdir / "flwr-home"),
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
            TAG: self.tag,
            **(env or {}),
        }

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> LocalFederation:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start the SuperLink, wait until it answers, register the SuperNodes' public keys
        (with authentication), then start the SuperNodes and wait until they are connected."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "flwr-home").mkdir(exist_ok=True)
        tls: list[str] = ["--insecure"]
        certs = self.workdir / "certificates"
        if not self.insecure:
            make_certificates(certs, self.cert_script)
            tls = [
                "--ssl-ca-certfile",
                str(certs / "ca.crt"),
                "--ssl-certfile",
                str(certs / "server.pem"),
                "--ssl-keyfile",
                str(certs / "server.key"),
            ]
        self.port = free_port()
        self._write_connection(certs)
        self._spawn(
            "superlink",
            [
                "flower-superlink",
                *tls,
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--disable-runtime-dependency-installation",
                *(["--simulation"] if self.simulation else []),
                *(["--enable-supernode-auth"] if self.node_auth else []),
            ],
        )
        self._wait_for_log("superlink", "Uvicorn running on")
        keys: list[Path] = []
        if self.node_auth:
            keys = make_supernode_keys(self.workdir / "keys", self.supernodes)
            self.node_ids = self.register_supernodes([k.with_name(k.name + ".pub") for k in keys])
        for i, node_config in enumerate(self.node_configs):
            self.spawn_supernode(f"supernode-{i}", node_config, keys[i] if keys else None)
        for i in range(self.supernodes):
            self._wait_for_log(f"supernode-{i}", "SuperNode ID:")

    def register_supernodes(self, public_keys: Sequence[Path]) -> list[int]:
        """``flwr supernode register`` for each public key (concurrently); returns the node ids
        the SuperLink gave them. :class:`FederationError` with the CLI's output on failure."""
        procs = []
        for key in public_keys:
            cmd = ["flwr", "supernode", "register", str(key), "local", "--format", "json"]
            proc = subprocess.Popen(
                cmd,
                env=self.env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            self.procs.append(proc)
            procs.append((key, proc))
        node_ids = []
        for key, proc in procs:
            try:
                out, _ = proc.communicate(timeout=self.startup_timeout)
            except subprocess.TimeoutExpired:
                _kill_group(proc.pid, signal.SIGKILL)
                proc.communicate()
                raise FederationError(f"registering {key} did not finish") from None
            text = out.decode(errors="replace")
            try:
                reply = json.loads(text[text.index("{") :])
                node_ids.append(int(reply["node-id"]))
            except (ValueError, KeyError, TypeError):
                raise FederationError(
                    f"flwr supernode register {key} failed (exit {proc.returncode}):\n"
                    f"{text.strip()[-2000:]}"
                ) from None
        return node_ids

    def spawn_supernode(self, name: str, node_config: str, private_key: Path | None) -> None:
        """Start one ``flower-supernode`` (log ``name``) against this SuperLink, signing with
        ``private_key`` when given (does not wait for it to connect)."""
        certs = self.workdir / "certificates"
        tls = ["--insecure"] if self.insecure else ["--root-certificates", str(certs / "ca.crt")]
        auth = [] if private_key is None else ["--auth-supernode-private-key", str(private_key)]
        self._spawn(
            name,
            [
                "flower-supernode",
                *tls,
                *auth,
                "--superlink",
                f"127.0.0.1:{self.port}",
                "--node-config",
                node_config,
                "--port",
                str(free_port()),
            ],
        )

    def run(
        self,
        app_dir: str | Path,
        run_config: Mapping[str, Any] | None = None,
        *,
        federation_config: Mapping[str, Any] | None = None,
        timeout: float = 600.0,
    ) -> str:
        """``flwr run APP local --stream`` with the given run config; returns its output.
        :class:`FederationError` (with the output's tail) when it fails or times out."""
        cmd = ["flwr", "run", str(app_dir), "local", "--stream"]
        if run_config:
            cmd += ["--run-config", " ".join(f"{k}={_quote(v)}" for k, v in run_config.items())]
        if federation_config:
            cmd += [
                "--federation-config",
                " ".join(f"{k}={_quote(v)}" for k, v in federation_config.items()),
            ]
        log_path = self.workdir / "flwr-run.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
            self.procs.append(proc)
            try:
                rc = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _kill_group(proc.pid, signal.SIGKILL)
                proc.wait()
                raise FederationError(
                    f"flwr run did not finish in {timeout:.0f} s:\n{self.tail('flwr-run')}"
                ) from None
        self.logs["flwr-run"] = log_path
        output = log_path.read_text(errors="replace")
        if rc != 0:
            raise FederationError(f"flwr run exited with {rc}:\n{self.tail('flwr-run')}")
        return output

    #: What :meth:`save_state` writes into the work folder, for :meth:`attach`.
    STATE_FILE = "federation.json"

    def save_state(self) -> Path:
        """Write what another process needs to use or stop this federation (its tag, port,
        mode, node ids) to ``workdir/federation.json``; returns the path."""
        state = {
            "tag": self.tag,
            "port": self.port,
            "insecure": self.insecure,
            "node_auth": self.node_auth,
            "simulation": self.simulation,
            "supernodes": self.supernodes,
            "node_ids": self.node_ids,
            "flwr_home": str(self.workdir / "flwr-home"),
        }
        path = self.workdir / self.STATE_FILE
        path.write_text(json.dumps(state, indent=1) + "\n")
        return path

    @classmethod
    def attach(cls, workdir: str | Path) -> LocalFederation:
        """The federation a :meth:`start` in another process left running in ``workdir``
        (from its ``federation.json``): :meth:`run`, :meth:`survivors` and :meth:`stop` work
        on it (stop finds its processes by their tag)."""
        path = Path(workdir).resolve() / cls.STATE_FILE
        if not path.is_file():
            raise FederationError(f"no federation started in {path.parent} (no {cls.STATE_FILE})")
        state = json.loads(path.read_text())
        fed = cls(
            workdir,
            supernodes=int(state["supernodes"]),
            simulation=bool(state["simulation"]),
            insecure=bool(state["insecure"]),
            node_auth=bool(state["node_auth"]),
        )
        fed.tag = str(state["tag"])
        fed.env[TAG] = fed.tag
        fed.port = int(state["port"])
        fed.node_ids = [int(i) for i in state["node_ids"]]
        names = ["superlink", *(f"supernode-{i}" for i in range(fed.supernodes))]
        fed.logs = {n: fed.workdir / f"{n}.log" for n in names}
        return fed

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM every process group (or, for an attached federation, every process with its
        tag), SIGKILL what is left after ``grace`` seconds, then kill every process still
        carrying this federation's tag (and reap our children)."""
        for proc in self.procs:
            if proc.poll() is None:
                _kill_group(proc.pid, signal.SIGTERM)
        if not self.procs:
            for pid in self.survivors():
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and (
            any(p.poll() is None for p in self.procs) or self.survivors()
        ):
            time.sleep(0.1)
        for proc in self.procs:
            if proc.poll() is None:
                _kill_group(proc.pid, signal.SIGKILL)
        for _ in range(50):
            left = self.survivors()
            if not left:
                break
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.1)
        for proc in self.procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass

    def survivors(self) -> list[int]:
        """Pids of live processes carrying this federation's tag (zombies excluded)."""
        needle = f"{TAG}={self.tag}".encode()
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                if needle not in (entry / "environ").read_bytes().split(b"\0"):
                    continue
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if state != "Z":
                found.append(int(entry.name))
        return found

    def tail(self, name: str, lines: int = 40) -> str:
        """The last lines of a process's log (``superlink``, ``supernode-<i>``, ``flwr-run``)."""
        path = self.logs.get(name)
        if path is None or not path.exists():
            return f"(no log for {name})"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    # ------------------------------------------------------------------ internals

    def _write_connection(self, certs: Path) -> None:
        """The flwr CLI's connection ``local`` to this SuperLink, in ``$FLWR_HOME/config.toml``."""
        lines = [
            "[superlink]",
            'default = "local"',
            "",
            "[superlink.local]",
            f'address = "127.0.0.1:{self.port}"',
        ]
        lines.append(
            "insecure = true" if self.insecure else f'root-certificates = "{certs / "ca.crt"}"'
        )
        (self.workdir / "flwr-home" / "config.toml").write_text("\n".join(lines) + "\n")

    def _spawn(self, name: str, cmd: list[str]) -> None:
        log_path = self.workdir / f"{name}.log"
        self.logs[name] = log_path
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                cmd,
                env=self.env,
                cwd=self.workdir,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stop() signals the group
            )
        self.procs.append(proc)
        self.named[name] = proc

    def _wait_for_log(self, name: str, marker: str) -> None:
        proc = self.named[name]
        path = self.logs[name]
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if marker in path.read_text(errors="replace"):
                return
            if proc.poll() is not None:
                raise FederationError(f"{name} exited with {proc.returncode}:\n{self.tail(name)}")
            time.sleep(0.2)
        raise FederationError(
            f"{name} did not start in {self.startup_timeout:.0f} s:\n{self.tail(name)}"
        )


def _kill_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
