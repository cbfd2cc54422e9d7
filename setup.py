"""Build hook for the one compiled module; every other setting is in pyproject.toml.

``capture._fastpath`` (capture/_fastpath.c) is the packet loop's fast path for RTP of known streams
in pcap files; ``capture._spoolrender`` (capture/_spoolrender.c) the renderer's for plain G.711
spools. Both are optional: without a C compiler the install still succeeds and the same work is done
by the pure-Python paths (slower).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("capture._fastpath", ["capture/_fastpath.c"], optional=True, extra_compile_args=["-O2"]),
        # No fused multiply-add: the jitter filter must round exactly as the Python arithmetic does.
        Extension("capture._spoolrender", ["capture/_spoolrender.c"], optional=True,
                  extra_compile_args=["-O2", "-ffp-contract=off"]),
    ]
)
