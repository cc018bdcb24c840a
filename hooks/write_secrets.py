"""Write each missing secret file with a fresh random value.

Runs as a copier task after copy, and as a migration after every update. Every directory named
`secrets` that holds a `.gitignore` (the template renders one wherever secret files are read:
`secrets/` for compose, Swarm and a local run, each Kubernetes overlay's own) gets one file per
secret named on the command line. Existing files are never changed, so an update (say, to
PostgreSQL) only adds what is new. The values live in git-ignored files only: never in `.env`,
the answers file, an image or a container's environment.
"""

import secrets
import sys
from pathlib import Path


def secret_dirs(root: Path) -> list[Path]:
    return sorted(
        path.parent for path in root.glob("**/secrets/.gitignore") if ".git" not in path.parts
    )


def main(names: list[str]) -> None:
    written: list[str] = []
    for directory in secret_dirs(Path()):
        # Readable by the directory's owner only; the files themselves must be readable by the
        # containers' unprivileged users, since compose bind-mounts them as they are.
        directory.chmod(0o700)
        for name in names:
            path = directory / name
            if not path.exists():
                path.write_text(secrets.token_urlsafe(24) + "\n")
                path.chmod(0o644)
                written.append(path.as_posix())
    if written:
        print(f"Wrote fresh secrets (git-ignored): {', '.join(written)}.")


if __name__ == "__main__":
    main([name for argument in sys.argv[1:] for name in argument.split(",") if name])
