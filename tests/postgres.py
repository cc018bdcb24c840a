"""A real PostgreSQL server for the tests: Debian's postgresql, started in a temporary directory.

Each pytest-xdist worker starts its own server on a free loopback port; each test that needs a
database gets a fresh one from `PostgresServer.create_database`.
"""

import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

PASSWORD = "test-password"


def _bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def _as_postgres(command: list[str]) -> list[str]:
    """initdb and postgres refuse to run as root; drop to the postgres user when we are root."""
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *command]
    return command


def _run(command: list[str], env: dict[str, str] | None = None) -> str:
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stdout}{result.stderr}")
    return str(result.stdout)


@dataclass
class PostgresServer:
    bindir: Path
    datadir: Path
    port: int
    # Server settings given at start (`-c NAME=VALUE`), e.g. a small max_connections.
    settings: dict[str, str] = field(default_factory=dict)

    def start(self) -> None:
        """Create the cluster and start serving."""
        if os.geteuid() == 0:
            shutil.chown(self.datadir.parent, "postgres")
        pwfile = self.datadir.parent / "pwfile"
        pwfile.write_text(PASSWORD)
        if os.geteuid() == 0:
            shutil.chown(pwfile, "postgres")
        _run(
            _as_postgres(
                [
                    str(self.bindir / "initdb"),
                    "-D",
                    str(self.datadir),
                    "-U",
                    "postgres",
                    "--auth=scram-sha-256",
                    f"--pwfile={pwfile}",
                ]
            )
        )
        self.resume()

    def pause(self) -> None:
        """Stop serving (clients get connection refused); the data stays for `resume`."""
        _run(
            _as_postgres(
                [str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", "fast", "-w", "stop"]
            )
        )

    def resume(self) -> None:
        """Serve again, on the same port, with the same data."""
        _run(
            _as_postgres(
                [
                    str(self.bindir / "pg_ctl"),
                    "-D",
                    str(self.datadir),
                    "-l",
                    str(self.datadir.parent / "server.log"),
                    "-o",
                    " ".join(
                        [
                            f"-h 127.0.0.1 -p {self.port} -k {self.datadir.parent}",
                            *(f"-c {name}={value}" for name, value in self.settings.items()),
                        ]
                    ),
                    "-w",
                    "start",
                ]
            )
        )

    def stop(self) -> None:
        """Stop serving and delete the cluster."""
        subprocess.run(
            _as_postgres(
                [str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", "fast", "stop"]
            ),
            capture_output=True,
        )
        shutil.rmtree(self.datadir.parent, ignore_errors=True)

    def psql(self, sql: str, database: str = "postgres") -> str:
        return _run(
            [
                str(self.bindir / "psql"),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                "postgres",
                "-d",
                database,
                "-v",
                "ON_ERROR_STOP=1",
                "-tAc",
                sql,
            ],
            env={**os.environ, "PGPASSWORD": PASSWORD},
        ).strip()

    def create_database(self) -> dict[str, str]:
        """A fresh database; the POSTGRES_* settings a generated project needs to reach it."""
        name = f"db_{uuid.uuid4().hex[:12]}"
        self.psql(f"CREATE DATABASE {name}")
        return {
            "POSTGRES_HOST": "127.0.0.1",
            "POSTGRES_PORT": str(self.port),
            "POSTGRES_USER": "postgres",
            "POSTGRES_PASSWORD": PASSWORD,
            "POSTGRES_DB": name,
        }


def start_server(port: int, **settings: str) -> PostgresServer | None:
    """Start a server (with these server settings), or None where PostgreSQL is not installed.

    Its directory is outside pytest's (private) temporary tree so the postgres user can reach it.
    """
    bindir = _bindir()
    if bindir is None:
        return None
    workdir = Path(tempfile.mkdtemp(prefix="template-tests-pg-"))
    workdir.chmod(0o755)
    server = PostgresServer(bindir, workdir / "data", port, settings)
    server.start()
    return server
