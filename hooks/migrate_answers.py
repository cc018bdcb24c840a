"""Rewrite a project's answers file for a template release that renamed a question or a choice.

A `_migrations` entry in copier.yml runs it at the "before" stage of `copier update`, in the
project, before the new template's questions read the answers, so an answers file written by
an older release still updates cleanly:

    migrate_answers.py ANSWERS_FILE rename OLD_QUESTION NEW_QUESTION
    migrate_answers.py ANSWERS_FILE choice QUESTION OLD_VALUE NEW_VALUE

Running it twice changes nothing. Only the stdlib is at hand (copier's own Python runs it), and
the answers file is flat `key: value` YAML written by copier, so lines are edited in place:
comments and order stay as they were. NEW_VALUE is written as given (a YAML scalar).
"""

import re
import sys
from collections.abc import Callable
from pathlib import Path

USAGE = "usage: migrate_answers.py ANSWERS_FILE (rename OLD NEW | choice QUESTION OLD NEW)"


def key_pattern(question: str) -> re.Pattern[str]:
    return re.compile(rf"^{re.escape(question)}:(?=\s|$)", re.MULTILINE)


def rename(text: str, old: str, new: str) -> str:
    """Give the answer of `old` to `new`, unless the file already answers `new`."""
    if key_pattern(new).search(text):
        return text
    return key_pattern(old).sub(f"{new}:", text)


def change_choice(text: str, question: str, old: str, new: str) -> str:
    """Replace the answer `old` of `question` (quoted or not) by `new`."""
    values = "|".join(re.escape(value) for value in (old, f"'{old}'", f'"{old}"'))
    pattern = re.compile(rf"^({re.escape(question)}:[ \t]*)(?:{values})[ \t]*$", re.MULTILINE)
    return pattern.sub(lambda match: f"{match.group(1)}{new}", text)


# Each action, with the number of arguments it takes after the answers file and its name.
ACTIONS: dict[str, tuple[Callable[..., str], int]] = {
    "rename": (rename, 2),
    "choice": (change_choice, 3),
}


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[1] not in ACTIONS or len(argv) - 2 != ACTIONS[argv[1]][1]:
        print(USAGE, file=sys.stderr)
        return 2
    path, (migrate, _) = Path(argv[0]), ACTIONS[argv[1]]
    text = path.read_text()
    migrated = migrate(text, *argv[2:])
    if migrated != text:
        path.write_text(migrated)
        print(f"Migrated {path}: {' '.join(argv[1:])}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
