"""Run a command and report the peak resident memory of its whole process tree.

Samples /proc every 20 ms over the command and every process descended from it (multiprocessing's
forkserver and its audio workers included, which wait4 would not see because the forkserver reaps
them): the sum of VmRSS (counts pages the forked workers share once per process) and the sum of PSS
(shares them out: the tree's real footprint). Exits with the command's code; prints
``peak_tree_rss_kib=N`` and ``peak_tree_pss_kib=N`` on stderr.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time


def _pss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, stack = [], [root]
    while stack:
        pid = stack.pop()
        out.append(pid)
        stack.extend(children.get(pid, ()))
    return out


def _tree_rss_kib(root: int) -> int:
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as fh:
                ppid = vm = 0
                for line in fh:
                    if line.startswith("PPid:"):
                        ppid = int(line.split()[1])
                    elif line.startswith("VmRSS:"):
                        vm = int(line.split()[1])
        except (OSError, ValueError):
            continue
        pid = int(entry)
        children.setdefault(ppid, []).append(pid)
        rss[pid] = vm
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack.extend(children.get(pid, ()))
    return total


def main() -> int:
    proc = subprocess.Popen(sys.argv[1:])
    peak = peak_pss = 0
    while proc.poll() is None:
        peak = max(peak, _tree_rss_kib(proc.pid))
        peak_pss = max(peak_pss, sum(_pss_kib(pid) for pid in _tree(proc.pid)))
        time.sleep(0.02)
    print(f"peak_tree_rss_kib={peak}", file=sys.stderr)
    print(f"peak_tree_pss_kib={peak_pss}", file=sys.stderr)
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
