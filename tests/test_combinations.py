"""The covering array (tests/covering.py) is built from copier.yml and covers what it claims.

Every question of copier.yml enters it or is named as text only; every pair of answers that
copier accepts together stands in some project of the array, and every triple of the answers
that interact most; what copier.yml refuses is refused by copier itself, with its message.
"""

import json
from pathlib import Path

from tests.covering import (
    DERIVED,
    INTERACTING,
    TEXT_ONLY,
    answers_of,
    covering_array,
    factors,
    interacting,
    parameters,
    questions,
)
from tests.test_validation import copier_copy


def test_every_question_of_copier_yml_enters_the_array_or_is_text_only() -> None:
    entered = {param.question or param.name for param in parameters()}
    assert entered | set(TEXT_ONLY) | set(DERIVED) == set(questions())
    assert set(INTERACTING) <= entered


def test_a_multiselect_enters_as_one_yes_or_no_per_choice() -> None:
    """Each deployment target is a factor of its own: the array covers each target with each
    other answer (and each pair of targets), not every subset, which doubles with each target."""
    targets = list(questions()["deploy_targets"]["choices"].values())
    assert [f"deploy_targets={target}" for target in targets] == [
        param.name for param in parameters() if param.question == "deploy_targets"
    ]
    assert {f"deploy_targets={target}" for target in targets} <= set(interacting())


def test_every_accepted_pair_and_interacting_triple_is_in_some_project() -> None:
    array = covering_array()
    names = [param.name for param in parameters()]

    def held(rows: list[dict[str, object]], size: int) -> set[tuple[tuple[str, str], ...]]:
        found: set[tuple[tuple[str, str], ...]] = set()
        for row in rows:
            facts = factors(row)
            values = [(name, json.dumps(facts[name])) for name in names]
            for i, first in enumerate(values):
                for j in range(i + 1, len(values)):
                    if size == 2:
                        found.add((first, values[j]))
                        continue
                    for third in values[j + 1 :]:
                        if {first[0], values[j][0], third[0]} <= set(interacting()):
                            found.add((first, values[j], third))
        return found

    assert len(held(array.rows, 2)) == array.pairs
    assert len(held(array.rows, 3)) == array.triples
    assert array.rejected, "copier.yml refuses some combinations (Swarm with SQLite)"


def test_each_refused_combination_is_refused_by_copier_with_its_message(
    template: Path, tmp_path: Path
) -> None:
    for index, rejection in enumerate(covering_array().rejected):
        dest = tmp_path / f"refused{index}"
        answers = {
            key: json.dumps(value) if isinstance(value, list) else str(value)
            for key, value in answers_of(rejection.example).items()
        }
        result = copier_copy(template, dest, answers)
        assert result.returncode != 0, rejection.example
        assert rejection.message.split(":")[0] in result.stderr
        assert " ".join(rejection.message.split()[:6]) in " ".join(result.stderr.split())
        assert not dest.exists()
