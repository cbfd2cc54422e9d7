"""Build hook for the one compiled module; every other setting is in pyproject.toml.

``capture._fastpath`` (capture/_fastpath.c) is the packet loop's fast path for RTP of known streams
in pcap files. It is optional: without a C compiler the install still succeeds and the same work is
done by the pure-Python path (slower).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("capture._fastpath", ["capture/_fastpath.c"], optional=True, extra_compile_args=["-O2"]),
    ]
)
