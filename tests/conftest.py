"""Shared test fixtures: where the third-party corpus and the vCon schema live."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"
CORPUS = SHARED / "corpus"
CORPUS_PCAP = CORPUS / "pcap"
CORPUS_EVENTS = CORPUS / "events"
SCHEMA_PATH = SHARED / "schema" / "vcon-core-04.schema.json"


@pytest.fixture(scope="session")
def corpus_pcap() -> Path:
    """Folder of third-party captures (see ../shared/corpus/SOURCES.md)."""
    if not CORPUS_PCAP.is_dir():
        pytest.skip("../shared/corpus is not beside the checkout")
    return CORPUS_PCAP


@pytest.fixture(scope="session")
def corpus_events() -> Path:
    """Folder of third-party provider event samples."""
    if not CORPUS_EVENTS.is_dir():
        pytest.skip("../shared/corpus is not beside the checkout")
    return CORPUS_EVENTS
