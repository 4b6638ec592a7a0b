"""Hosts as Linux network namespaces on one bridge, and partitions between them.

Farm-independent: the partition fault test and the pools' many-machine tests share it.
Needs root (``ip netns``, veth pairs, a bridge) and iproute2.

A ``Network`` makes one namespace per host, named ``fp<pid>-<host>``, each with ``lo`` up and
an ``eth0`` (one end of a veth pair) on a private /24 (``10.77.X.0/24``, X picked so that no
address or route of the machine's own namespace is in it). The other ends hang on a bridge
in the machine's own namespace, which has the subnet's ``.1``: the process that made the
network (a test, a script) reaches every host directly, and the hosts reach each other.

``cut(host)`` takes the root-side end of the host's veth down: every packet to or from the
host is dropped silently, nobody gets a reset. An established TCP connection stalls
(retransmits) and resumes after ``heal(host)``; a new connection from the cut host fails
after about 3 s (``EHOSTUNREACH``: its ARP requests go unanswered), one to it times out.

Leaving the ``with`` block — normally, by an exception, Ctrl-C or SIGTERM — kills every
process in the namespaces and deletes the namespaces, the veth pairs and the bridge. What a
SIGKILLed run left behind (its pid is gone) is removed by the next ``Network``.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO, Any

PREFIX = "fp"
UNUSED_MAC = "02:00:00:00:7e:17"  # locally administered; no host of the bridge has it
_OURS = re.compile(rf"^{PREFIX}(\d+)-")


def unavailable() -> str | None:
    """Why this machine cannot make a Network (not root, no iproute2 or netns), else None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "no `ip` command (iproute2)"
    name = f"{PREFIX}{os.getpid()}-probe"
    probe = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"`ip netns add` fails: {probe.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return None


def _ip(*args: str, check: bool = True) -> str:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


@dataclass(frozen=True)
class Host:
    name: str  # the caller's name for it ("server", "w1")
    netns: str  # its namespace
    address: str  # its IPv4 address on the bridge
    link: str  # the root-side end of its veth pair: what cut() takes down


class Network:
    """``with Network(["server", "w1", "w2"]) as net: net.popen("w1", argv)``."""

    def __init__(self, hosts: Sequence[str], *, prefix: str | None = None) -> None:
        if len(set(hosts)) != len(hosts) or not hosts or len(hosts) > 200:
            raise ValueError(f"hosts must be 1-200 distinct names: {hosts}")
        self.prefix = prefix or f"{PREFIX}{os.getpid()}-"
        too_long = [h for h in hosts if len(self.prefix + h) > 15]  # IFNAMSIZ - 1
        if too_long:
            raise ValueError(f"host names too long for interface names: {too_long}")
        self.names = list(hosts)
        self.bridge = f"{self.prefix}br"
        self.hosts: dict[str, Host] = {}
        self.gateway = ""
        self._procs: list[subprocess.Popen[bytes]] = []
        self._old_sigterm: Any = None

    # --- building and tearing down -------------------------------------------------------

    def __enter__(self) -> Network:
        if threading.current_thread() is threading.main_thread():
            self._old_sigterm = signal.signal(signal.SIGTERM, _sigterm_raises)
        try:
            sweep_stale()
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _build(self) -> None:
        subnet = _free_subnet()
        addresses = list(subnet.hosts())
        self.gateway = str(addresses[0])
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.gateway}/{subnet.prefixlen}", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for n, name in enumerate(self.names, 1):
            netns, link = self.prefix + name, self.prefix + name
            address = str(addresses[n])
            _ip("netns", "add", netns)
            _ip("link", "add", link, "type", "veth", "peer", "name", f"{self.prefix}p{n}")
            _ip("link", "set", f"{self.prefix}p{n}", "netns", netns)
            _ip("link", "set", link, "master", self.bridge, "up")
            _ip("-n", netns, "link", "set", f"{self.prefix}p{n}", "name", "eth0")
            _ip("-n", netns, "addr", "add", f"{address}/{subnet.prefixlen}", "dev", "eth0")
            _ip("-n", netns, "link", "set", "eth0", "up")
            _ip("-n", netns, "link", "set", "lo", "up")
            self.hosts[name] = Host(name, netns, address, link)

    def close(self) -> None:
        """Kill every process in the namespaces, delete them, the veths and the bridge."""
        try:
            namespaces = [self.prefix + name for name in self.names]
            _kill_in(namespaces)
            for proc in self._procs:
                with suppress(subprocess.TimeoutExpired):
                    proc.wait(5)
            _remove(namespaces, [self.prefix + n for n in self.names] + [self.bridge])
        finally:
            if self._old_sigterm is not None:
                signal.signal(signal.SIGTERM, self._old_sigterm)
                self._old_sigterm = None

    # --- using it ------------------------------------------------------------------------

    def host(self, name: str) -> Host:
        return self.hosts[name]

    def argv(self, host: str, argv: Sequence[str], *, user: str | None = None) -> list[str]:
        """``argv`` run inside the host's namespace (as ``user``, if given)."""
        as_user = (["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups"]
                   if user else [])
        return ["ip", "netns", "exec", self.hosts[host].netns, *as_user, *argv]

    def popen(self, host: str, argv: Sequence[str], *, env: Mapping[str, str] | None = None,
              log: Path | None = None, cwd: Path | None = None,
              user: str | None = None) -> subprocess.Popen[bytes]:
        """A process in the host's namespace, its output to ``log`` (else discarded); killed
        when the network closes, if it has not ended by then."""
        out: IO[bytes] | int = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115
        try:
            proc = subprocess.Popen(self.argv(host, argv, user=user), env=env, cwd=cwd,
                                    stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL)
        finally:
            if log:
                out.close()  # type: ignore[union-attr]
        self._procs.append(proc)
        return proc

    def run(self, host: str, argv: Sequence[str], *, env: Mapping[str, str] | None = None,
            user: str | None = None, timeout: float = 120) -> str:
        """Run to the end in the host's namespace; its output; RuntimeError if it fails."""
        done = subprocess.run(self.argv(host, argv, user=user), env=env, capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            raise RuntimeError(f"{argv[0]} on {host} exited {done.returncode}: "
                               f"{(done.stdout + done.stderr)[-2000:]}")
        return done.stdout

    def cut(self, host: str) -> None:
        """Drop everything to and from the host, silently (its connections stall)."""
        _ip("link", "set", self.hosts[host].link, "down")

    def heal(self, host: str) -> None:
        _ip("link", "set", self.hosts[host].link, "up")

    def cut_between(self, a: str, b: str) -> None:
        """Drop everything between two hosts only, silently: each sends the other's packets
        to a MAC address nobody has (the bridge floods them to ports that drop them)."""
        for one, other in ((a, b), (b, a)):
            _ip("-n", self.hosts[one].netns, "neigh", "replace", self.hosts[other].address,
                "lladdr", UNUSED_MAC, "nud", "permanent", "dev", "eth0")

    def heal_between(self, a: str, b: str) -> None:
        for one, other in ((a, b), (b, a)):
            _ip("-n", self.hosts[one].netns, "neigh", "del", self.hosts[other].address,
                "dev", "eth0", check=False)

    def listening(self, host: str, port: int, timeout: float = 30) -> None:
        """Until something on the host accepts connections on ``port`` (from here)."""
        import socket

        deadline = time.monotonic() + timeout
        while True:
            with socket.socket() as sock:
                sock.settimeout(0.5)
                if sock.connect_ex((self.hosts[host].address, port)) == 0:
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listening on {host}:{port} after {timeout:.0f}s")
            time.sleep(0.1)


def _sigterm_raises(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # so that the `with` block tears the network down


def _free_subnet() -> ipaddress.IPv4Network:
    taken = [ipaddress.ip_network(m, strict=False) for m in re.findall(
        r"\b(\d+\.\d+\.\d+\.\d+(?:/\d+)?)", _ip("-4", "-o", "addr") + _ip("-4", "route"))]
    start = os.getpid() % 250
    for k in range(250):
        subnet = ipaddress.IPv4Network(f"10.77.{(start + k) % 250 + 1}.0/24")
        if not any(subnet.overlaps(other) for other in taken if other.prefixlen > 0):
            return subnet
    raise RuntimeError("no free 10.77.X.0/24 subnet")


def _kill_in(namespaces: Sequence[str], grace: float = 5.0) -> None:
    def pids() -> set[int]:
        found: set[int] = set()
        for netns in namespaces:
            out = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True)
            found.update(int(p) for p in out.stdout.split())
        return found

    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        alive = pids()
        for pid in alive:
            with suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while alive and time.monotonic() < deadline:
            time.sleep(0.1)
            alive = pids()
        if not alive:
            return


def _remove(namespaces: Sequence[str], links: Sequence[str]) -> None:
    existing = set(_namespaces())
    for netns in namespaces:
        if netns in existing:
            _ip("netns", "del", netns, check=False)
    present = set(_links())
    for link in links:  # a veth whose peer's namespace went is gone already
        if link in present:
            _ip("link", "del", link, check=False)


def _namespaces() -> Iterator[str]:
    for line in _ip("netns", "list").splitlines():
        if line.split():
            yield line.split()[0]


def _links() -> Iterator[str]:
    for line in _ip("-o", "link").splitlines():
        yield line.split(":")[1].strip().split("@")[0]


def sweep_stale() -> list[str]:
    """Remove the namespaces and links of Networks whose process is gone; their names."""
    def dead(name: str) -> bool:
        match = _OURS.match(name)
        if match is None:
            return False
        try:
            os.kill(int(match[1]), 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False

    namespaces = [n for n in _namespaces() if dead(n)]
    links = [n for n in _links() if dead(n)]
    _kill_in(namespaces, grace=1.0)
    _remove(namespaces, links)
    return namespaces + links
