"""Run a command and report the peak resident memory of its whole process tree.

Samples /proc every 20 ms: the sum of VmRSS over the command and every process descended from it
(multiprocessing's forkserver and its audio workers included, which wait4 would not see because the
forkserver reaps them). Exits with the command's code; prints ``peak_tree_rss_kib=N`` on stderr.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time


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
    peak = 0
    while proc.poll() is None:
        peak = max(peak, _tree_rss_kib(proc.pid))
        time.sleep(0.02)
    print(f"peak_tree_rss_kib={peak}", file=sys.stderr)
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
