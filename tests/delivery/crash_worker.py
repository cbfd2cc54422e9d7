"""Run by the crash test as a subprocess: ``python -m tests.delivery.crash_worker SPOOL``.

Delivers the spool's pending rows with the targets recorded in it (token from VCON_CAPTURE_TOKEN), the
same path as ``outbox flush``."""

import sys

from delivery.cli import main

if __name__ == "__main__":
    sys.exit(main(["outbox", "flush", "--spool", sys.argv[1], "--wait", "60", "--concurrency", "4"]))
