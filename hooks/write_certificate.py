"""Write a self-signed certificate for localhost where the proxy expects one and none is there.

Runs as a copier task after copy, and as a migration after every update, in projects whose
nginx or Traefik serves localhost: so that the first `docker compose up` finds the files the
proxy serves, like the secrets the copy writes, and every later start serves the same
certificate. The files go where `.env` points the proxy (`TLS_DIR`, `TLS_CERT`,
`TLS_KEY`), are git-ignored and never enter an image; existing files are never replaced, so a
certificate made with mkcert (trusted by the browsers) stays. Without openssl the project is
left as it is and the message says the command to run.
"""

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from write_secrets import env_values

DEFAULTS = {"TLS_DIR": "./certs", "TLS_CERT": "fullchain.pem", "TLS_KEY": "privkey.pem"}


def openssl_command(cert: Path, key: Path) -> list[str]:
    """A one-year RSA certificate for localhost, 127.0.0.1 and ::1, with its unencrypted key."""
    return [
        *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "365"),
        *("-subj", "/CN=localhost"),
        *("-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1"),
        *("-keyout", key.as_posix()),
        *("-out", cert.as_posix()),
    ]


def main() -> None:
    settings = {**DEFAULTS, **env_values(Path(".env"))}
    directory = Path(settings["TLS_DIR"])
    cert, key = directory / settings["TLS_CERT"], directory / settings["TLS_KEY"]
    if cert.exists() and key.exists():
        return
    command = openssl_command(cert, key)
    if shutil.which("openssl") is None:
        print(
            "No openssl here, so the proxy has no certificate for localhost yet: make one with\n"
            f"  mkdir -p {shlex.quote(str(key.parent))} {shlex.quote(str(cert.parent))}"
            f" && {shlex.join(command)}",
            file=sys.stderr,
        )
        return
    cert.parent.mkdir(parents=True, exist_ok=True)
    key.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(command, check=True, capture_output=True)
    # The proxy (nginx's master, Traefik) reads the key as root without the capability to
    # override file modes.
    key.chmod(0o644)
    print(f"Wrote a self-signed certificate for localhost (git-ignored): {cert}, {key}.")


if __name__ == "__main__":
    main()
