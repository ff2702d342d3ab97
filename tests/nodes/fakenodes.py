"""Fake cluster nodes on one Linux machine, for multi-node tests without a cluster.

Each node is a holder process (``sleep infinity``) in its own network, UTS and mount
namespace (``unshare``): its own hostname (``node0`` ...), its own IP (``10.77.0.<i+1>/24``)
on a veth attached to one Linux bridge, a private tmpfs on ``/tmp`` and ``/dev/shm`` (with the
project and the Python environment bound back in where they live under /tmp, as a CI clone
may), its own sysfs, and a private ``/etc/hosts`` (bind-mounted) that names every node.
Everything else (the project, ``.venv``, ``/var/tmp``) is the machine's, so it is shared by
every node like a cluster's network file system. No PID namespace: a node's processes are
ordinary pids here.

MPICH's Hydra starts its proxies through :attr:`FakeNodes.wrapper`, an ``ssh`` stand-in
(``WRAPPER HOST COMMAND...``: the command is joined and run by ``/bin/sh`` inside HOST's
namespaces with ``nsenter``, in the caller's working directory and environment).
``mpiexec`` itself runs inside node0, so the proxies connect back to it over the bridge.
"""

from __future__ import annotations

import os
import re
import selectors
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

SUBNET = "10.77.0"
SHARED_ROOT = Path("/var/tmp")  # not node-private, unlike /tmp (pytest's tmp_path)
TOOLS = ("unshare", "nsenter", "ip", "mount")

WRAPPER = """#!/bin/sh
# Hydra's rsh launcher calls: WRAPPER HOST COMMAND... ; run COMMAND as ssh would, in HOST.
host=$1; shift
pid=$(sed -n "s/^$host //p" {nodes})
[ -n "$pid" ] || {{ echo "fakenodes: unknown host '$host'" >&2; exit 255; }}
exec nsenter -t "$pid" -n -u -m --wd="$PWD" -- /bin/sh -c "$*"
"""

HOLDER = """set -e
hostname {name}
{keep_before}
mount -t tmpfs -o mode=1777,size=1g tmpfs /tmp
{keep_after}
mount -t tmpfs -o mode=1777,size=256m tmpfs /dev/shm
mount --bind {hosts} /etc/hosts
mount -t sysfs sysfs /sys  # the node's own network devices (UCX lists /sys/class/net)
echo ready
exec sleep infinity
"""


class NodesUnavailable(RuntimeError):
    """Fake nodes cannot be made here (the message is a one-line reason)."""


def _run(*cmd: str) -> None:
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if res.returncode:
        raise NodesUnavailable(f"`{shlex.join(cmd)}` failed: {_one_line(res.stderr)}")


def _one_line(text: str) -> str:
    return " ".join(text.split())[:300]


def _quiet(*cmd: str) -> str:
    """stdout of ``cmd``; '' when it cannot run (cleaning up what may not exist)."""
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def _netns(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/ns/net")
    except OSError:
        return ""


class FakeNodes:
    """``n`` fake nodes ``node0`` ... ; :meth:`start` makes them, :meth:`close` removes them
    (every process in them, the veths, the bridge and the shared directory)."""

    def __init__(self, n: int) -> None:
        self.names = [f"node{i}" for i in range(n)]
        self.tag = f"fk{os.getpid():x}"  # a live pid: unique; at most 15 characters in all
        self.bridge = f"{self.tag}br"
        self.holders: dict[str, subprocess.Popen] = {}
        self.netns: dict[str, str] = {}  # node -> its network namespace (/proc/*/ns/net)
        self.base = Path(tempfile.mkdtemp(prefix=f"fedkd-nodes-{os.getpid()}-",
                                          dir=SHARED_ROOT))
        self.wrapper = self.base / "node-exec"
        self.hosts = self.base / "hosts"

    # ---- set-up and teardown ----------------------------------------------------------
    def start(self) -> FakeNodes:
        """Make every node; :class:`NodesUnavailable` (after cleaning up) when impossible."""
        try:
            if os.geteuid() != 0:
                raise NodesUnavailable("fake nodes need root (network namespaces, mounts)")
            missing = [t for t in TOOLS if shutil.which(t) is None]
            if missing:
                raise NodesUnavailable(f"fake nodes need {', '.join(missing)} (util-linux, "
                                       "iproute2)")
            sweep_stale()
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def _start(self) -> None:
        self.hosts.write_text("127.0.0.1 localhost\n" + "".join(
            f"{SUBNET}.{i + 1} {name}\n" for i, name in enumerate(self.names)))
        for name in self.names:
            self.holders[name] = self._holder(name)
        (self.base / "nodes").write_text("".join(
            f"{name} {p.pid}\n" for name, p in self.holders.items()))
        self.wrapper.write_text(WRAPPER.format(nodes=self.base / "nodes"))
        self.wrapper.chmod(0o755)
        _run("ip", "link", "add", self.bridge, "type", "bridge")
        _run("ip", "link", "set", self.bridge, "up")
        for i, name in enumerate(self.names):
            veth, pid = f"{self.tag}v{i}", str(self.holders[name].pid)
            _run("ip", "link", "add", veth, "type", "veth", "peer", "name", f"{veth}p")
            _run("ip", "link", "set", veth, "master", self.bridge)
            _run("ip", "link", "set", veth, "up")
            _run("ip", "link", "set", f"{veth}p", "netns", pid)
            inside = ("nsenter", "-t", pid, "-n", "ip")
            _run(*inside, "link", "set", "lo", "up")
            _run(*inside, "link", "set", f"{veth}p", "name", "eth0")
            _run(*inside, "addr", "add", f"{SUBNET}.{i + 1}/24", "dev", "eth0")
            _run(*inside, "link", "set", "eth0", "up")
        res = self.run_on(self.names[-1], f"getent hosts {self.names[0]}")
        if SUBNET not in res.stdout:
            raise NodesUnavailable(f"{self.names[-1]} cannot resolve {self.names[0]}: "
                                   f"{res.stdout.strip()} {res.stderr.strip()}")

    def _holder(self, name: str) -> subprocess.Popen:
        hold = self.base / f"hold-{name}"  # the kept folders, while /tmp is replaced
        keep = _kept_under_tmp()
        before = "\n".join(f"mkdir -p {hold}/k{i}; mount --bind {p} {hold}/k{i}"
                           for i, p in enumerate(keep))
        after = "\n".join(f"mkdir -p {p}; mount --bind {hold}/k{i} {p}"
                          for i, p in enumerate(keep))
        script = HOLDER.format(name=name, hosts=self.hosts, keep_before=before,
                               keep_after=after)
        proc = subprocess.Popen(["unshare", "--net", "--uts", "--mount", "--propagation",
                                 "private", "sh", "-c", script], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
        self.holders[name] = proc  # so that close() finds it whatever happens next
        assert proc.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        line = proc.stdout.readline() if sel.select(timeout=30) else ""
        sel.close()
        if line.strip() != "ready":
            proc.kill()
            err = proc.stderr.read().strip() if proc.stderr else ""
            raise NodesUnavailable(f"cannot make namespaces for {name}: "
                                   f"{_one_line(err) or 'no answer'}")
        self.netns[name] = _netns(proc.pid)
        if self.netns[name] in ("", _netns(os.getpid())):
            raise NodesUnavailable(f"{name} did not get its own network namespace")
        return proc

    def close(self) -> None:
        """Kill every process left in a node, remove the veths, the bridge, the directory."""
        for name in list(self.holders):
            for pid in self.pids_on(name):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.holders.pop(name).wait(timeout=30)
        for link in [f"{self.tag}v{i}" for i in range(len(self.names))] + [self.bridge]:
            _quiet("ip", "link", "del", link)  # a veth left when its node is gone, the bridge
        end = time.monotonic() + 10  # a dead namespace's veths go away asynchronously
        while self.tag in _quiet("ip", "-o", "link", "show") and time.monotonic() < end:
            time.sleep(0.1)
        shutil.rmtree(self.base, ignore_errors=True)

    # ---- using the nodes ----------------------------------------------------------------
    def pids_on(self, node: str) -> list[int]:
        """Every process in ``node``'s network namespace (its holder included)."""
        ns = self.netns.get(node)
        return [int(d.name) for d in Path("/proc").iterdir()
                if ns and d.name.isdigit() and _netns(int(d.name)) == ns]

    def ranks_on(self, node: str) -> list[int]:
        """pids of fedkd-mpi ranks (python processes) running on ``node``."""
        out = []
        for pid in self.pids_on(node):
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"python" in cmd and b"fedkd-mpi" in cmd:
                out.append(pid)
        return out

    def path_on(self, node: str, path: str) -> Path:
        """``path`` as ``node`` sees it (its private /tmp included), readable from here."""
        return Path(f"/proc/{self.holders[node].pid}/root") / path.lstrip("/")

    def command(self, node: str, cmd: Sequence[str] | str) -> list[str]:
        """argv that runs ``cmd`` (argv or a shell line) on ``node`` (``exec``: the pid is
        the command's own, so signals sent to it reach it)."""
        line = cmd if isinstance(cmd, str) else shlex.join(cmd)
        return [str(self.wrapper), node, f"exec {line}"]

    def run_on(self, node: str, cmd: Sequence[str] | str, timeout: float = 60,
               **kw: object) -> subprocess.CompletedProcess:
        """Run ``cmd`` on ``node`` and wait; output captured as text."""
        return subprocess.run(self.command(node, cmd), capture_output=True, text=True,
                              timeout=timeout, **kw)  # type: ignore[call-overload]

    def mpiexec(self, mpiexec: Path, hosts: dict[str, int], n: int,
                *args: str) -> list[str]:
        """argv of ``mpiexec`` started in node0 with ``hosts`` (name -> slots) written to a
        hostfile, Hydra's rsh launcher being :attr:`wrapper`."""
        hostfile = self.base / ("hosts-" + "-".join(f"{h}x{s}" for h, s in hosts.items()))
        hostfile.write_text("".join(f"{h}:{s}\n" for h, s in hosts.items()))
        return self.command(self.names[0], [
            str(mpiexec), "-launcher", "rsh", "-launcher-exec", str(self.wrapper),
            "-f", str(hostfile), "-n", str(n), *args])

    def wait_gone(self, timeout: float = 30) -> list[int]:
        """Wait until no process but the holders is left in any node; the ones left."""
        end = time.monotonic() + timeout
        while True:
            left = [p for name, h in self.holders.items() for p in self.pids_on(name)
                    if p != h.pid and _state(p) not in ("Z", "")]
            if not left or time.monotonic() > end:
                return left
            time.sleep(0.1)


def _kept_under_tmp() -> list[str]:
    """The folders under /tmp that every node must still see through its private /tmp: the
    project and the Python environment when they live there (a CI clone in /tmp)."""
    out = set()
    for p in (Path(__file__).resolve().parents[2], Path(sys.prefix).resolve(),
              Path(sys.executable).resolve().parent):
        try:
            rel = p.relative_to("/tmp")
        except ValueError:
            continue
        if rel.parts:
            out.add(f"/tmp/{rel.parts[0]}")
    return sorted(out)


def sweep_stale() -> None:
    """Remove the veths and bridges of fake nodes whose session (pid in the name) is gone."""
    for line in _quiet("ip", "-o", "link", "show").splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        m = re.fullmatch(r"fk([0-9a-f]+)(br|v\d+)", name)
        if m and not Path(f"/proc/{int(m[1], 16)}").exists():
            _quiet("ip", "link", "del", name)
    for d in SHARED_ROOT.glob("fedkd-nodes-*-*"):
        if not Path(f"/proc/{d.name.split('-')[2]}").exists():
            shutil.rmtree(d, ignore_errors=True)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""
