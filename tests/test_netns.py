"""Runs tests/netns/ inside a private network namespace: public-looking addresses, a DNS server, /etc/hosts.

`unshare -n -m` gives the tests a network of their own (only a `lo`, on which they put the addresses
they need) and a mount table of their own (for /etc/hosts and /etc/resolv.conf): nothing they send can
leave the machine, and nothing they change outlives them. It needs root, as CI has; elsewhere the
test is skipped, and in CI a missing `unshare` is a failure, not a skip.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


@pytest.mark.root
def test_the_internet_edges_in_a_private_network() -> None:
    unshare = shutil.which("unshare")
    if unshare is None or os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("CI runs as root with util-linux: tests/netns must run there")
        pytest.skip("needs root and unshare(1) for a private network namespace")
    command = [unshare, "--net", "--mount", "--", sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    result = subprocess.run(
        [*command, "tests/netns"],
        cwd=ROOT,
        env={**os.environ, "PINGFORWARD_NETNS": "1"},
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout[-20000:] + result.stderr[-5000:]
    assert " passed" in result.stdout and " skipped" not in result.stdout, result.stdout[-3000:]
