"""CPU time and resident memory of the stack's processes, read from /proc (Linux): nothing
runs inside them to measure them.

The stack's processes are this process' children: the five services (`python -m
services.<name>`), the Postgres postmaster (its backends are its children) and the broker.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class StackProcess:
    name: str
    pid: int


def _stat(pid: int) -> list[str]:
    # Fields after the command name, which may hold spaces and parentheses.
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _parents() -> dict[int, int]:
    """Every process' parent, from one pass over /proc."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                found[int(entry.name)] = int(_stat(int(entry.name))[1])
            except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
                continue
    return found


def parent_of(pid: int) -> int | None:
    """A process' parent; None once it is gone."""
    try:
        return int(_stat(pid)[1])
    except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
        return None


def _children(pid: int, parents: dict[int, int]) -> list[int]:
    return [child for child, parent in parents.items() if parent == pid]


def _name(pid: int) -> str | None:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except FileNotFoundError:
        return None
    if b"-m" in argv:
        module = argv[argv.index(b"-m") + 1].decode()
        if module.startswith("services."):
            return module.removeprefix("services.")
    program = Path(argv[0].decode()).name
    if program == "postgres":
        return "postgres"
    if program == "tansu":
        return "broker"
    return None


def stack_processes() -> list[StackProcess]:
    """The stack's processes among this process' children, by name."""
    found = []
    for pid in _children(os.getpid(), _parents()):
        name = _name(pid)
        if name is not None:
            found.append(StackProcess(name, pid))
    return sorted(found, key=lambda p: p.name)


def _tree(pid: int) -> list[int]:
    """The process and its descendants."""
    parents = _parents()
    pids, frontier = [pid], [pid]
    while frontier:
        frontier = [child for p in frontier for child in _children(p, parents)]
        pids.extend(frontier)
    return pids


def tree_cpu_seconds(pid: int, descendants: bool = True) -> float:
    """User + system CPU of a process (and, by default, its living descendants), plus that of
    its reaped children (Postgres' exited backends are in the postmaster's children's times);
    0 for a process already gone."""
    total = 0
    for index, member in enumerate(_tree(pid) if descendants else [pid]):
        try:
            fields = _stat(member)
        except (FileNotFoundError, ProcessLookupError):
            continue
        total += int(fields[11]) + int(fields[12])
        if index == 0:
            total += int(fields[13]) + int(fields[14])
    return total / _TICKS


def cpu_seconds(process: StackProcess) -> float:
    """What one of the stack's processes has used so far: Postgres with all its backends."""
    return tree_cpu_seconds(process.pid, descendants=process.name == "postgres")


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def resident_kib(process: StackProcess) -> int:
    """The process' resident set; for Postgres, the private (anonymous) memory of all its
    processes summed, since each backend maps the same shared buffers."""
    if process.name != "postgres":
        return _status_kib(process.pid, "VmRSS")
    total = 0
    for pid in _tree(process.pid):
        try:
            total += _status_kib(pid, "RssAnon")
        except FileNotFoundError:
            continue
    return total
