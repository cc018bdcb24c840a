"""Create `.env` from `.env.example` on first copy, with fresh random secrets.

Runs as a copier task in the generated project. `.env` is git-ignored and listed in
`_skip_if_exists`, so an existing one is never touched; secrets never reach the answers file.
"""

import secrets
from pathlib import Path

PLACEHOLDER = "change-me"


def main() -> None:
    example = Path(".env.example")
    env = Path(".env")
    if env.exists() or not example.exists():
        return
    text = example.read_text()
    while PLACEHOLDER in text:
        text = text.replace(PLACEHOLDER, secrets.token_urlsafe(24), 1)
    env.write_text(text)
    env.chmod(0o600)
    print("Wrote .env from .env.example (git-ignored), with fresh secrets.")


if __name__ == "__main__":
    main()
