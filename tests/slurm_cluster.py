"""A real one-node SLURM cluster on localhost, private to one test session.

:class:`LocalSlurmCluster` writes its own ``slurm.conf``/``slurmdbd.conf``/``cgroup.conf``
and munge key into a temp folder and starts, as child processes of the test run:
``munged`` (own key and socket), ``mariadbd`` (own datadir, 127.0.0.1 only; slurmdbd keeps
the accounting ``sacct`` reads, and submitit polls ``sacct`` for job states), ``slurmdbd``,
``slurmctld`` and ``slurmd -N localhost``. Nothing global is touched: no system service,
no file outside the folder, ports picked free on 127.0.0.1. ``SLURM_CONF`` is exported to
this process (and so to every ``sbatch``/``squeue``/``sacct`` it runs, and to the jobs, which
sbatch gives the submitting environment) while the cluster is up, and restored after.

Settings that matter for the tests (found the hard way, kept here with their reasons):

* ``AuthInfo=...,cred_expire=10``: a requeued job cannot start again until its previous
  run's credential expires (default 120 s); 10 s keeps requeue tests short.
* ``proctrack/linuxproc`` + ``task/none``: no cgroups (containers often have none writable).
* ``DefMemPerCPU`` with ``CR_Core_Memory``: a job without ``--mem`` would otherwise be given
  the whole node's memory and jobs could never run side by side.
* ``slurmd -N localhost`` with ``NodeAddr=127.0.0.1``: independent of the machine's hostname
  and DNS.

Packages (Debian): slurmctld slurmd slurm-client slurmdbd munge mariadb-server
(``scripts/install_system_deps.sh`` installs them when run as root).
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Sequence

__all__ = ["LocalSlurmCluster", "SkipReason", "missing_binaries", "REQUIRED_BINARIES"]

REQUIRED_BINARIES = ("munged", "mariadbd", "mariadb-install-db", "slurmdbd", "slurmctld", "slurmd",
                     "sbatch", "squeue", "sinfo", "sacct", "scontrol", "scancel", "srun")

_SBIN = ("/usr/sbin", "/usr/local/sbin", "/sbin")


class SkipReason(RuntimeError):
    """The cluster cannot run here; the message says why (with daemon log tails)."""


def _which(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for d in _SBIN:  # daemons live in sbin, which a non-login PATH may lack
        p = Path(d) / name
        if p.is_file() and os.access(p, os.X_OK):
            return str(p)
    return None


def missing_binaries() -> list[str]:
    return [b for b in REQUIRED_BINARIES if _which(b) is None]


def _free_ports(n: int) -> list[int]:
    """``n`` distinct ports free on 127.0.0.1 (held open together so none repeats)."""
    socks, ports = [], []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _tail(path: Path, n: int = 15) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(lines[-n:]) or "(empty)"


def _mem_total_mb() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    return 4096


class LocalSlurmCluster:
    """A private SLURM cluster (one node, ``localhost``) living in ``tmpdir``.

    ``with LocalSlurmCluster(tmp) as cluster: ...`` or ``start()``/``stop()``. ``start``
    raises :class:`SkipReason` when binaries are missing or a daemon does not come up in
    ``timeout_s`` (the message carries the daemon logs' tails). ``cpus`` is what the node
    offers (default: this machine's cores, at least 2), ``partition`` its only partition.
    """

    def __init__(self, tmpdir: str | os.PathLike, *, cpus: int | None = None, partition: str = "debug",
                 timeout_s: float = 60.0) -> None:
        self.root = Path(tmpdir).resolve()
        self.cpus = int(cpus or max(2, os.cpu_count() or 2))
        self.partition = partition
        self.timeout_s = timeout_s
        self.cluster_name = f"pe{os.getpid() % 100000}"
        self.conf_dir = self.root / "etc"
        self.log_dir = self.root / "log"
        self.slurm_conf = self.conf_dir / "slurm.conf"
        # unix sockets must fit in sun_path (108 bytes); a deep tmpdir gets a short side folder
        self._sock_dir_owned = len(str(self.root / "run" / "munge.socket.2")) > 100
        self.sock_dir = Path(tempfile.mkdtemp(prefix="pe-slurm-")) if self._sock_dir_owned else self.root / "run"
        self.munge_socket = self.sock_dir / "munge.socket.2"
        self.db_socket = self.sock_dir / "mysqld.sock"
        self.ports: dict[str, int] = {}
        self._procs: list[tuple[str, subprocess.Popen]] = []
        self._saved_env: dict[str, str | None] = {}
        self.started_s: float | None = None  # how long start() took
        self._running = False

    # -- public -------------------------------------------------------------------------------
    @property
    def env(self) -> dict[str, str]:
        """Environment additions for a process that should talk to this cluster."""
        return {"SLURM_CONF": str(self.slurm_conf)}

    def __enter__(self) -> "LocalSlurmCluster":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> "LocalSlurmCluster":
        missing = missing_binaries()
        if missing:
            raise SkipReason(f"SLURM test cluster needs {', '.join(missing)} "
                             "(run scripts/install_system_deps.sh as root)")
        if os.geteuid() != 0:
            # slurmd must be root to launch jobs as their submitter (and to own the test daemons' files).
            raise SkipReason("SLURM test cluster needs root (slurmd launches jobs as their user)")
        t0 = time.perf_counter()
        try:
            self._prepare()
            self._start_munge()
            self._start_mariadb()
            self._start_slurmdbd()
            self._start_slurmctld()
            self._start_slurmd()
            self._wait_node_idle()
        except (SkipReason, OSError, subprocess.SubprocessError) as exc:
            reason = SkipReason(f"{exc}\n{self.log_tails()}")
            self.stop()
            raise reason from None
        except BaseException:  # a bug here, or ^C: no daemon may outlive the session
            self.stop()
            raise
        self.started_s = time.perf_counter() - t0
        return self

    def stop(self) -> None:
        """Cancel this cluster's jobs, stop every daemon started here, restore SLURM_CONF."""
        if self._running and "slurmctld" in [n for n, _ in self._procs]:
            self._cancel_all_jobs()
        for name, proc in reversed(self._procs):
            self._terminate(name, proc)
        self._procs.clear()
        for k, v in self._saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        self._saved_env.clear()
        self._running = False
        if self._sock_dir_owned:
            shutil.rmtree(self.sock_dir, ignore_errors=True)
        # ~90 MB of InnoDB files; the logs and configs stay for post-mortems
        shutil.rmtree(self.root / "mariadb", ignore_errors=True)

    def run(self, args: Sequence[str], *, check: bool = True, timeout: float = 30.0) -> str:
        """Run a SLURM client command against this cluster; its stdout."""
        env = {**os.environ, **self.env}
        proc = subprocess.run([_which(args[0]) or args[0], *args[1:]], env=env, capture_output=True,
                              text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} exited {proc.returncode}: {proc.stderr.strip()}")
        return proc.stdout

    def sacct(self, job_ids: Sequence[str] | None = None, fields: str = "JobID,JobName,State,ExitCode",
              *, duplicates: bool = False, allocations: bool = True) -> list[dict[str, str]]:
        """Accounting rows (``sacct --parsable2``) as dicts; all of today's jobs by default."""
        args = ["sacct", "--noheader", "--parsable2", f"--format={fields}", "--starttime=now-1day",
                "--allusers"]
        if allocations:
            args.append("--allocations")
        if duplicates:
            args.append("--duplicates")
        if job_ids:
            args.append("--jobs=" + ",".join(str(j) for j in job_ids))
        keys = fields.split(",")
        rows = []
        for line in self.run(args).splitlines():
            if line.strip():
                rows.append(dict(zip(keys, line.split("|"))))
        return rows

    def log_tails(self, n: int = 15) -> str:
        """The last lines of each daemon log, most recently written first (the daemon
        that just failed is usually the one that wrote last)."""
        logs = [p for p in self.log_dir.glob("*.log") if p.name != "mariadb-install.log"]
        logs.sort(key=lambda p: p.stat().st_mtime_ns, reverse=True)
        return "\n".join(f"--- {p.name} ---\n{_tail(p, n)}" for p in logs)

    # -- setup ---------------------------------------------------------------------------------
    def _prepare(self) -> None:
        for d in (self.conf_dir, self.log_dir, self.sock_dir, self.root / "munge",
                  self.root / "state", self.root / "spool", self.root / "run"):
            d.mkdir(parents=True, exist_ok=True)
            # munged refuses folders that others may write to
            d.chmod(0o755)
        names = ("slurmctld", "slurmd", "slurmdbd", "mariadb")
        self.ports = dict(zip(names, _free_ports(len(names))))

        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)

        cpus = self.cpus
        real_mb = max(1024, _mem_total_mb() // 2)
        def_mem = max(100, real_mb // (cpus * 2))
        auth_info = f"socket={self.munge_socket},cred_expire=10"
        r, L = self.root, self.log_dir
        self.slurm_conf.write_text(f"""\
# Written by tests/slurm_cluster.py: a private one-node test cluster.
ClusterName={self.cluster_name}
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={self.ports['slurmctld']}
SlurmdPort={self.ports['slurmd']}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo={auth_info}
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={r}/run/slurmctld.pid
SlurmdPidFile={r}/run/slurmd.pid
SlurmctldLogFile={L}/slurmctld.log
SlurmdLogFile={L}/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort={self.ports['slurmdbd']}
# with slurmdbd this names the munge socket for the slurmctld->slurmdbd connection
AccountingStoragePass={self.munge_socket}
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU={def_mem}
SlurmdParameters=config_overrides
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
MinJobAge=300
Waittime=0
MessageTimeout=10
NodeName=localhost NodeAddr=127.0.0.1 NodeHostname=localhost CPUs={cpus} RealMemory={real_mb} State=UNKNOWN
PartitionName={self.partition} Nodes=localhost Default=YES MaxTime=INFINITE State=UP
""")
        dbd = self.conf_dir / "slurmdbd.conf"
        dbd.write_text(f"""\
AuthType=auth/munge
AuthInfo={auth_info}
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort={self.ports['slurmdbd']}
SlurmUser=root
LogFile={L}/slurmdbd.log
PidFile={r}/run/slurmdbd.pid
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort={self.ports['mariadb']}
StorageUser=root
StorageLoc=slurm_acct_db
""")
        dbd.chmod(0o600)  # slurmdbd refuses a config others can read (it may hold a password)
        # Read by slurmd when a cgroup plugin loads; none does here (linuxproc, task/none).
        (self.conf_dir / "cgroup.conf").write_text("CgroupAutomount=no\nConstrainCores=no\nConstrainRAMSpace=no\n")

        self._saved_env = {"SLURM_CONF": os.environ.get("SLURM_CONF")}
        os.environ["SLURM_CONF"] = str(self.slurm_conf)
        self._running = True

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen:
        out = open(self.log_dir / f"{name}.stdout.log", "ab")  # noqa: SIM115 -- owned by the process
        try:
            proc = subprocess.Popen([_which(argv[0]) or argv[0], *argv[1:]], stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env={**os.environ, **self.env},
                                    start_new_session=True)  # ^C in pytest must not hit daemons first
        finally:
            out.close()
        self._procs.append((name, proc))
        return proc

    def _wait(self, what: str, ready, proc: subprocess.Popen | None = None, timeout: float | None = None) -> None:
        deadline = time.monotonic() + (timeout or self.timeout_s)
        while time.monotonic() < deadline:
            if ready():
                return
            if proc is not None and proc.poll() is not None:
                raise SkipReason(f"{what} exited with code {proc.returncode} while starting")
            time.sleep(0.1)
        raise SkipReason(f"{what} not ready after {timeout or self.timeout_s:.0f} s")

    def _start_munge(self) -> None:
        m = self.root / "munge"
        proc = self._spawn("munged", ["munged", "--foreground", "--force", f"--socket={self.munge_socket}",
                                      f"--key-file={m / 'munge.key'}", f"--pid-file={m / 'munged.pid'}",
                                      f"--seed-file={m / 'munged.seed'}",
                                      f"--log-file={self.log_dir / 'munged.log'}", "--num-threads=2"])
        self._wait("munged", self.munge_socket.exists, proc, timeout=20)

    def _start_mariadb(self) -> None:
        datadir = self.root / "mariadb"
        common = ["--no-defaults", f"--datadir={datadir}", "--user=root", "--innodb-log-file-size=8M",
                  "--innodb-buffer-pool-size=32M"]
        init = subprocess.run([_which("mariadb-install-db") or "mariadb-install-db", *common,
                               "--auth-root-authentication-method=normal", "--skip-test-db",
                               "--skip-name-resolve"],
                              capture_output=True, text=True, timeout=120)
        (self.log_dir / "mariadb-install.log").write_text(init.stdout + init.stderr)
        if init.returncode != 0:
            tail = _tail(self.log_dir / "mariadb-install.log", 5)
            raise SkipReason(f"mariadb-install-db exited {init.returncode}: {tail}")
        # --skip-grant-tables: a throwaway server on loopback for one test session; no users
        # to create, slurmdbd connects as any user.
        proc = self._spawn("mariadb", ["mariadbd", *common, f"--socket={self.db_socket}",
                                       f"--pid-file={self.root / 'run' / 'mariadb.pid'}",
                                       f"--log-error={self.log_dir / 'mariadb.log'}",
                                       "--bind-address=127.0.0.1", f"--port={self.ports['mariadb']}",
                                       "--skip-grant-tables", "--skip-name-resolve", "--skip-log-bin",
                                       "--performance-schema=OFF"])
        self._wait("mariadbd", lambda: _port_open(self.ports["mariadb"]), proc)

    def _start_slurmdbd(self) -> None:
        proc = self._spawn("slurmdbd", ["slurmdbd", "-D"])
        self._wait("slurmdbd", lambda: _port_open(self.ports["slurmdbd"]), proc)

    def _start_slurmctld(self) -> None:
        proc = self._spawn("slurmctld", ["slurmctld", "-D", "-c", "-i", "-f", str(self.slurm_conf)])
        self._wait("slurmctld", lambda: _port_open(self.ports["slurmctld"]), proc)

    def _start_slurmd(self) -> None:
        self._spawn("slurmd", ["slurmd", "-D", "-N", "localhost", "-f", str(self.slurm_conf)])

    def _node_state(self) -> str:
        try:
            out = self.run(["sinfo", "--noheader", "--Node", "--format=%N %T"], check=False, timeout=10)
        except subprocess.TimeoutExpired:
            return ""
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0] == "localhost":
                return parts[1]
        return ""

    def _wait_node_idle(self) -> None:
        procs = dict(self._procs)
        deadline = time.monotonic() + self.timeout_s
        state = ""
        while time.monotonic() < deadline:
            for name, proc in procs.items():
                if proc.poll() is not None:
                    raise SkipReason(f"{name} exited with code {proc.returncode} while the cluster started")
            state = self._node_state()
            if state.rstrip("*~#") == "idle":
                return
            time.sleep(0.25)
        raise SkipReason(f"node 'localhost' not idle after {self.timeout_s:.0f} s (state: {state or 'unknown'})")

    # -- teardown ------------------------------------------------------------------------------
    def _cancel_all_jobs(self) -> None:
        """Jobs are run by slurmstepd processes that outlive slurmd: end them through SLURM."""
        try:
            self.run(["scancel", "--full", f"--partition={self.partition}"], check=False, timeout=15)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                out = self.run(["squeue", "--noheader", "--format=%i"], check=False, timeout=10)
                if not out.strip():
                    break
                time.sleep(0.5)
        except (subprocess.TimeoutExpired, OSError):
            pass

    @staticmethod
    def _terminate(name: str, proc: subprocess.Popen) -> None:
        if proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
