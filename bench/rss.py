"""Run a command; exit with its code; make our own max RSS the larger of it and its descendants.

wait4 on this wrapper then reports (via RUSAGE_CHILDREN, which folds in every reaped descendant)
the peak of the largest process in the tree: ingest itself or its audio worker.
"""

import os
import sys

pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[1], sys.argv[1:])
_, status, _ = os.wait4(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
