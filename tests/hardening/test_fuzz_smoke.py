"""Every atheris harness in ``fuzz/`` for a few thousand inputs from its seeds (CI smoke run).

The long runs are ``python fuzz/run_all.py --runs 1000000`` (docs/hardening.md has the figures).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.conftest import REPO_ROOT

pytest.importorskip("atheris")

FUZZ = REPO_ROOT / "fuzz"
RUNS = {"config": 300, "esl": 1000, "ami": 1000}
"""Inputs per harness; the slow ones (YAML, the chunked framers) get fewer."""


def _run_all() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fuzz_run_all", FUZZ / "run_all.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("fuzz_run_all", module)
    spec.loader.exec_module(module)
    return module


RUN_ALL = _run_all()


def test_every_parser_has_a_harness() -> None:
    assert set(RUN_ALL.HARNESSES) >= {"pcapio", "netlayers", "sip", "sdp", "rtp", "tcp", "esl", "cdr", "ami", "ari",
                                      "config", "twilio"}


@pytest.mark.parametrize("name", RUN_ALL.HARNESSES)
def test_harness_smoke(name: str, tmp_path: Path) -> None:
    runs = RUNS.get(name, 2000)
    result = RUN_ALL.run_one(name, runs, tmp_path / "corpus", 120.0, [], logs=tmp_path)
    assert result.ok, f"{name}: {result.failure}\n" + (tmp_path / f"{name}.log").read_text()[-3000:]
    assert result.runs >= runs
