"""Write each missing secret file with a fresh random value.

Runs as a copier task after copy, and as a migration after every update. Every directory named
`secrets` that holds a `.gitignore` (the template renders one wherever secret files are read:
`secrets/` for compose, Swarm and a local run, each Kubernetes overlay's own) gets one file per
secret named on the command line. Existing files are never changed, so an update (say, to
PostgreSQL) only adds what is new. The values live in git-ignored files only: never in `.env`,
the answers file, an image or a container's environment.

A project made before secrets were files kept them in `.env` (say POSTGRES_PASSWORD, which its
database volume was initialised with): the file gets that value, so the update changes nothing
the running stack relies on, and the line can then leave `.env`.
"""

import secrets
import sys
from pathlib import Path


def secret_dirs(root: Path) -> list[Path]:
    return sorted(
        path.parent for path in root.glob("**/secrets/.gitignore") if ".git" not in path.parts
    )


def env_values(env: Path) -> dict[str, str]:
    """NAME=value lines of a .env file, if there is one."""
    if not env.is_file():
        return {}
    lines = [line.strip() for line in env.read_text().splitlines()]
    pairs = [line.split("=", 1) for line in lines if "=" in line and not line.startswith("#")]
    return {name.strip(): value.strip() for name, value in pairs}


def main(names: list[str]) -> None:
    written: list[str] = []
    # The placeholder of older .env.example files is no secret to keep.
    kept = {name: value for name, value in env_values(Path(".env")).items() if value != "change-me"}
    carried = sorted({name.upper() for name in names if kept.get(name.upper())})
    for directory in secret_dirs(Path()):
        # Readable by the directory's owner only; the files themselves must be readable by the
        # containers' unprivileged users, since compose bind-mounts them as they are.
        directory.chmod(0o700)
        for name in names:
            path = directory / name
            if not path.exists():
                value = kept.get(name.upper()) or secrets.token_urlsafe(24)
                path.write_text(value + "\n")
                path.chmod(0o644)
                written.append(path.as_posix())
    if written:
        print(f"Wrote secrets (git-ignored): {', '.join(written)}.")
    if written and carried:
        print(f"Their values of {', '.join(carried)} come from .env: remove them from .env.")


if __name__ == "__main__":
    main([name for argument in sys.argv[1:] for name in argument.split(",") if name])
