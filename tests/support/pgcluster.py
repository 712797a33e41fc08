"""A throwaway PostgreSQL server of the test's own, on a free port, that a test may stop and start.

Fault tests stop the database under load; doing that to the machine's shared server would
break every other test and process using it, so they get a cluster in a temporary folder.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

from tests.support.server import free_port


def _bindir() -> str:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return os.path.dirname(found[-1])
    initdb = shutil.which("initdb")
    if initdb is None:
        raise RuntimeError("PostgreSQL's initdb was not found")
    return os.path.dirname(initdb)


class Cluster:
    """initdb, start, stop (immediate: like a crash), start again."""

    def __init__(self) -> None:
        self.port = free_port()
        self.folder = tempfile.mkdtemp(prefix="ledger-pg-")
        self.data = os.path.join(self.folder, "data")
        self.bindir = _bindir()
        self.as_root = os.geteuid() == 0  # the server refuses to run as root: use its own user
        if self.as_root:
            shutil.chown(self.folder, "postgres", "postgres")

    @property
    def url(self) -> str:
        """The URL of its `postgres` database."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        command = [os.path.join(self.bindir, args[0]), *args[1:]]
        if self.as_root:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(
            command,
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=self.folder,
        )

    def init(self) -> Cluster:
        """Create the cluster (trust auth)."""
        self._run("initdb", "-D", self.data, "-U", "postgres", "--auth=trust", "-E", "UTF8")
        return self

    def start(self) -> None:
        """Start and wait until it accepts connections."""
        options = (
            f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c max_connections=200"
        )
        self._run(
            "pg_ctl",
            "-D",
            self.data,
            "-o",
            options,
            "-l",
            os.path.join(self.folder, "log"),
            "-w",
            "start",
        )
        for _ in range(100):
            try:
                psycopg.connect(self.url, connect_timeout=1).close()
                return
            except psycopg.OperationalError:
                time.sleep(0.1)
        raise RuntimeError("the test cluster did not accept connections")

    def stop(self, mode: str = "immediate") -> None:
        """Stop; `immediate` aborts without a clean shutdown, as a crash would."""
        self._run("pg_ctl", "-D", self.data, "-m", mode, "-w", "stop")

    def destroy(self) -> None:
        """Stop if running and delete the folder."""
        with contextlib.suppress(subprocess.CalledProcessError):  # already stopped
            self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


@contextmanager
def cluster() -> Iterator[Cluster]:
    """A started cluster, destroyed afterwards."""
    c = Cluster().init()
    c.start()
    try:
        yield c
    finally:
        c.destroy()
