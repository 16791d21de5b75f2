"""Shared fixtures for the SDK tests: where Wharf is, and the usage-record ledger.

tests/sdk/run.sh starts the mock provider and the gateway and exports:

* ``WHARF_URL``: the proxy listener, ``http://127.0.0.1:PORT``
* ``WHARF_KEY``: the virtual key the SDKs use as their API key
* ``WHARF_KEY_ID``: that key's id in the configuration
* ``WHARF_USAGE``: the gateway's usage JSON Lines file
* ``WHARF_GATEWAY_LOG``: the gateway's log (stderr)
* ``WHARF_UPSTREAM_CHAT`` / ``_CLAUDE`` / ``_GEMINI``: the upstream slugs of the models
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

# A key no configuration knows: it must be refused, and never be written anywhere.
BAD_KEY = "wharf-sdk-not-a-key-4b1d9e27c06f"


def _env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        pytest.exit(f"{name} is not set: run the SDK tests with `bash tests/sdk/run.sh`", 2)
    return value


@dataclass(frozen=True)
class Wharf:
    url: str
    key: str
    key_id: str
    usage: Path
    log: Path | None
    upstream_chat: str
    upstream_claude: str
    upstream_gemini: str


@pytest.fixture(scope="session")
def wharf() -> Wharf:
    log = os.environ.get("WHARF_GATEWAY_LOG")
    return Wharf(
        url=_env("WHARF_URL").rstrip("/"),
        key=_env("WHARF_KEY"),
        key_id=_env("WHARF_KEY_ID"),
        usage=Path(_env("WHARF_USAGE")),
        log=Path(log) if log else None,
        upstream_chat=os.environ.get("WHARF_UPSTREAM_CHAT", "gpt-sdk-upstream"),
        upstream_claude=os.environ.get("WHARF_UPSTREAM_CLAUDE", "claude-sdk-upstream"),
        upstream_gemini=os.environ.get("WHARF_UPSTREAM_GEMINI", "gemini-sdk-upstream"),
    )


def read_usage(path: Path) -> list[dict]:
    """The complete records of the usage file (a line still being written is skipped)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    records = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return records


@dataclass
class Ledger:
    """What one test module asked of Wharf, checked against the usage file at the end.

    ``count()`` is called once per HTTP request an SDK call makes with the module's virtual
    key, before the call (so a call that raises still counts). ``expect_request_id()`` names a
    request that carries no valid key (it has no ``api_key_id``), by the ``x-request-id`` of
    its answer.
    """

    wharf: Wharf
    baseline: int
    made: int = 0
    request_ids: list[str] = field(default_factory=list)

    def count(self, n: int = 1) -> None:
        self.made += n

    def expect_request_id(self, request_id: str | None) -> None:
        assert request_id, "every answer carries X-Request-Id"
        self.request_ids.append(request_id)

    def record(self, request_id: str | None) -> dict:
        """The usage record of one request, by the ``x-request-id`` Wharf answered with."""
        assert request_id, "every answer carries X-Request-Id"
        deadline = time.monotonic() + 10
        while True:
            found = [r for r in read_usage(self.wharf.usage) if r.get("request_id") == request_id]
            if found:
                assert len(found) == 1, f"request {request_id}: {len(found)} usage records"
                return found[0]
            assert time.monotonic() < deadline, f"no usage record for request {request_id}"
            time.sleep(0.05)

    def verify(self) -> None:
        want = self.baseline + self.made
        deadline = time.monotonic() + 10
        while True:
            records = read_usage(self.wharf.usage)
            own = [r for r in records if r.get("api_key_id") == self.wharf.key_id]
            ids = [r.get("request_id") for r in records]
            if len(own) >= want and all(rid in ids for rid in self.request_ids):
                break
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        # Let any extra (duplicate) record arrive before counting exactly.
        time.sleep(0.4)
        records = read_usage(self.wharf.usage)
        own = [r for r in records if r.get("api_key_id") == self.wharf.key_id]
        assert len(own) == want, (
            f"{self.made} SDK requests with the virtual key should leave {self.made} usage records, "
            f"found {len(own) - self.baseline}: "
            + json.dumps(own[self.baseline:], indent=1)[:4000]
        )
        for rid in self.request_ids:
            matching = [r for r in records if r.get("request_id") == rid]
            assert len(matching) == 1, f"request {rid}: {len(matching)} usage records, want 1"
        raw = self.wharf.usage.read_text(encoding="utf-8") if self.wharf.usage.exists() else ""
        for secret in (self.wharf.key, BAD_KEY):
            assert secret not in raw, "a client key appears in the usage file"
        if self.wharf.log is not None and self.wharf.log.exists():
            log = self.wharf.log.read_text(encoding="utf-8", errors="replace")
            for secret in (self.wharf.key, BAD_KEY):
                assert secret not in log, "a client key appears in the gateway log"


@pytest.fixture(scope="module")
def ledger(wharf: Wharf):
    own = [r for r in read_usage(wharf.usage) if r.get("api_key_id") == wharf.key_id]
    book = Ledger(wharf=wharf, baseline=len(own))
    yield book
    book.verify()
