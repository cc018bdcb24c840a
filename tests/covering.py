"""A covering array over every question of copier.yml, built from copier.yml itself.

Each question enters as a parameter with the values that change what a project is: every choice
of a choice question, every subset of a multiselect, both answers of a yes/no question, and for
free text the classes of answers that render differently (`FREE_TEXT_CLASSES`). A question that
copier would not ask (its `when` is false) takes no value in that row, and a row that one of
copier.yml's validators refuses is not a project: such rows are counted as rejected, one example
kept per message, so the tests can check that copier refuses them too.

The array covers every pair of values of any two questions that some accepted row holds, and
every triple over the questions that interact most (`INTERACTING`). It is built greedily, a row
at a time, with a fixed seed: the same copier.yml gives the same array.
"""

import functools
import itertools
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import jinja2.meta
import yaml

from tests.combinations import SIMPLE_INDEX

REPO = Path(__file__).resolve().parent.parent

# Answers whose text changes only the text it is quoted in: the hostile-text tests (test_answers)
# cross their classes with the covering set instead.
TEXT_ONLY = ("project_name", "project_slug", "project_identifier", "description", "author")
# Free text whose answer changes what is rendered, by class: the first value is the default.
FREE_TEXT_CLASSES: dict[str, list[Any]] = {
    "package_index": ["", SIMPLE_INDEX],
    "domain": ["localhost", "api.example.com"],
    "forwarded_allow_ips": ["127.0.0.1", "10.0.0.0/8, 192.168.1.10"],
    "ingress_class": [None, "internal-nginx"],  # None: copier's default, derived from the proxy
}
# Free text that must be valid where it is asked, and is otherwise only data.
DERIVED = {"acme_email": "ops@example.com"}
# Where answers interact most, every triple of their values is covered.
INTERACTING = ("reverse_proxy", "deploy_targets", "process_model", "metrics", "database")
SEED = 2026

Row = dict[str, Any]  # question -> value, None where copier does not ask it


@functools.cache
def copier_config() -> dict[str, Any]:
    return yaml.safe_load((REPO / "copier.yml").read_text())


@functools.cache
def questions() -> dict[str, dict[str, Any]]:
    """The questions copier asks (where their `when` holds)."""
    return {
        name: spec
        for name, spec in copier_config().items()
        if not name.startswith("_") and spec.get("when") is not False
    }


@functools.cache
def computed() -> dict[str, dict[str, Any]]:
    """The values copier.yml computes from the answers (`when: false`): never asked."""
    return {
        name: spec
        for name, spec in copier_config().items()
        if not name.startswith("_") and spec.get("when") is False
    }


def choices(name: str) -> list[Any]:
    """The values one question of copier.yml offers (a choice question's, in its order)."""
    return list(questions()[name]["choices"].values())


def proxies_where(value: str) -> list[str]:
    """The reverse proxies for which one of copier.yml's computed values holds (each asks the
    proxy's folder, includes/proxy/<name>/names.jinja)."""
    computed_value = expression(computed()[value]["default"])
    return [
        proxy
        for proxy in choices("reverse_proxy")
        if _is_true(computed_value.render({"reverse_proxy": proxy}))
    ]


def compose_proxies() -> list[str]:
    """The reverse proxies that run in the compose file, as copier.yml computes them."""
    return proxies_where("proxy_in_compose")


def acme_proxies() -> list[str]:
    """The compose proxies that obtain certificates from an ACME CA themselves."""
    return proxies_where("proxy_obtains_certificates")


def proxy_names(proxy: str) -> Any:
    """What a proxy's folder says of it (includes/proxy/<name>/names.jinja), as a module."""
    return _environment().get_template(f"includes/proxy/{proxy}/names.jinja").module


def local_certificate_file_proxies() -> list[str]:
    """The compose proxies that serve, on localhost, the certificate files the copy writes."""
    return [proxy for proxy in compose_proxies() if proxy_names(proxy).local_certificate_files]


def platform_targets() -> list[str]:
    """The deployment targets that are platforms (copier.yml's computed platform_targets)."""
    return [str(target) for target in computed()["platform_targets"]["default"]]


@functools.cache
def _environment() -> jinja2.Environment:
    # Copier's own Jinja setup: its filters and the template's includes.
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(REPO)),
        extensions=["jinja2_ansible_filters.AnsibleCoreFiltersExtension"],
    )


@dataclass(frozen=True)
class Expression:
    """A Jinja text of copier.yml, evaluated by the answers it names (memoized on them)."""

    source: str
    names: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        environment = _environment()
        parsed = environment.parse(self.source)
        names = set(jinja2.meta.find_undeclared_variables(parsed))
        for path in _included(parsed):
            names |= jinja2.meta.find_undeclared_variables(environment.parse(path.read_text()))
        object.__setattr__(self, "names", tuple(sorted(names)))

    def render(self, context: Row) -> str:
        key = tuple((name, _hashable(context.get(name))) for name in self.names)
        return _render(self.source, key)


def _included(parsed: jinja2.nodes.Template) -> list[Path]:
    """The files a text includes or imports; where the name is made of answers (a proxy's own
    folder: 'includes/proxy/' ~ reverse_proxy ~ '/names.jinja'), every file it can name."""
    found = []
    kinds = (jinja2.nodes.Include, jinja2.nodes.Import, jinja2.nodes.FromImport)
    for node in parsed.find_all(kinds):
        assert isinstance(node, kinds)
        found += sorted(REPO.glob(_pattern(node.template)))
    return found


def _pattern(node: jinja2.nodes.Node) -> str:
    if isinstance(node, jinja2.nodes.Const):
        return str(node.value)
    if isinstance(node, jinja2.nodes.Concat):
        return "".join(_pattern(part) for part in node.nodes)
    return "*"


@functools.cache
def expression(source: str) -> Expression:
    """Each text of copier.yml parsed once."""
    return Expression(source)


def _hashable(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


@functools.cache
def _render(source: str, key: tuple[tuple[str, Any], ...]) -> str:
    context = {name: list(value) if isinstance(value, tuple) else value for name, value in key}
    return _environment().from_string(source).render(context).strip()


def _is_true(text: str) -> bool:
    return text.lower() in {"true", "yes", "on", "1"}


@dataclass(frozen=True)
class Parameter:
    """One factor of the array: a question, or one choice of a multiselect question (is it
    chosen?), with its values, when it is asked, and what refuses an answer."""

    name: str
    values: tuple[Any, ...]
    default: Any
    when: Expression | None
    validator: Expression | None
    question: str = ""  # the multiselect question this factor is one choice of
    choice: Any = None

    def asked(self, context: Row) -> bool:
        return self.when is None or _is_true(self.when.render(context))


def facet(question: str, choice: Any) -> str:
    """The factor of one choice of a multiselect question: `deploy_targets=swarm`."""
    return f"{question}={choice}"


@functools.cache
def parameters() -> tuple[Parameter, ...]:
    """Every factor of copier.yml that changes what is rendered, in copier.yml's order: a
    multiselect question enters as one yes/no per choice (its validator judges the last)."""
    found = []
    for name, spec in questions().items():
        if name in TEXT_ONLY or name in DERIVED:
            continue
        when = spec.get("when")
        asked = expression(when) if isinstance(when, str) else None
        if spec.get("multiselect"):
            options = list(spec["choices"].values())
            for choice in options:
                last = choice == options[-1] and spec.get("validator")
                found.append(
                    Parameter(
                        facet(name, choice),
                        (False, True),
                        choice in spec.get("default", []),
                        asked,
                        expression(spec["validator"]) if last else None,
                        question=name,
                        choice=choice,
                    )
                )
            continue
        if "choices" in spec:
            values: list[Any] = list(spec["choices"].values())
        elif spec["type"] == "bool":
            values = [True, False]
        elif name in FREE_TEXT_CLASSES:
            values = FREE_TEXT_CLASSES[name]
        else:
            raise AssertionError(
                f"copier.yml's question {name} is in no class of tests/covering.py: add it to "
                "TEXT_ONLY, DERIVED or FREE_TEXT_CLASSES"
            )
        # Free-text classes are valid by construction; a choice's validator refuses combinations.
        validator = spec.get("validator") if name not in FREE_TEXT_CLASSES else None
        found.append(
            Parameter(
                name,
                tuple(values),
                spec.get("default"),
                asked,
                expression(validator) if validator else None,
            )
        )
    return tuple(found)


def interacting() -> list[str]:
    """The factors of the INTERACTING questions (each choice of a multiselect one)."""
    return [p.name for p in parameters() if (p.question or p.name) in INTERACTING]


def _defaults(params: tuple[Parameter, ...]) -> Row:
    """What copier renders with for a question it does not ask: its default."""
    context: Row = {}
    for param in params:
        if param.question:
            continue
        default = param.default
        if isinstance(default, str) and "{" in default:
            default = expression(default).render(context)
        context[param.name] = default
    for name, spec in questions().items():
        if spec.get("multiselect"):
            context[name] = list(spec.get("default", []))
    return context


def _context(params: tuple[Parameter, ...], row: Row) -> Row:
    context = _defaults(params)
    context.update(_questions(row))
    context.update(DERIVED)
    for name, spec in computed().items():
        if not isinstance(spec["default"], str):  # a constant (platform_targets)
            context[name] = spec["default"]
            continue
        value = expression(spec["default"]).render(context)
        context[name] = _is_true(value) if spec["type"] == "bool" else value
    if context.get("ingress_class") is None:
        ingress = next(p for p in params if p.name == "ingress_class")
        context["ingress_class"] = expression(ingress.default).render(context)
    return context


def _questions(row: Row) -> Row:
    """A row of factors as copier's answers: each multiselect question the list of its chosen
    choices (None where it is not asked); the factors not yet set left out."""
    answers: Row = {}
    for param in parameters():
        if param.name not in row:
            continue
        value = row[param.name]
        if not param.question:
            if value is not None:
                answers[param.name] = value
        elif value is not None:
            chosen = answers.setdefault(param.question, [])
            if value:
                chosen.append(param.choice)
    return answers


def factors(answers: Row) -> Row:
    """The factors of a question row (`row_of`, `CoveringArray.rows`)."""
    row: Row = {}
    for param in parameters():
        if not param.question:
            row[param.name] = answers.get(param.name)
        elif answers.get(param.question) is None:
            row[param.name] = None
        else:
            row[param.name] = param.choice in answers[param.question]
    return row


@dataclass
class Rejection:
    message: str
    example: Row
    count: int = 0


def _options(
    params: tuple[Parameter, ...], index: int, row: Row, rejected: dict[str, Rejection] | None
) -> list[Any]:
    """The values factor `index` may take after the answers in `row` (None: not asked)."""
    param = params[index]
    context = _context(params, row)
    if not param.asked(context):
        return [None]
    accepted = []
    for value in param.values:
        message = ""
        if param.validator:
            context = _context(params, {**row, param.name: value})
            message = param.validator.render(context)
        if message:
            if rejected is not None:
                example = _row({**row, param.name: value})
                entry = rejected.setdefault(message, Rejection(message, example))
                entry.count += 1
        else:
            accepted.append(value)
    return accepted


def _row(factor_row: Row) -> Row:
    """A (possibly partial) row of factors as a row of questions."""
    answers = _questions(factor_row)
    names = {p.question or p.name for p in parameters() if p.name in factor_row}
    return {name: answers.get(name) for name in questions() if name in names}


@functools.cache
def _referenced() -> frozenset[str]:
    """The questions some text of copier.yml reads: a `when`, a validator, a default, a
    computed value. The others change no later question: a walk can forget them."""
    names: set[str] = set()
    for param in parameters():
        for text in (param.when, param.validator):
            if text is not None:
                names.update(text.names)
        if isinstance(param.default, str) and "{" in param.default:
            names.update(expression(param.default).names)
    for spec in computed().values():
        if isinstance(spec["default"], str):
            names.update(expression(spec["default"]).names)
    return frozenset(names)


def _state(params: tuple[Parameter, ...], index: int, row: Row) -> tuple[Any, ...]:
    """What of `row` the factors from `index` on can see."""
    seen = _referenced()
    return (
        index,
        *((p.name, row.get(p.name)) for p in params[:index] if (p.question or p.name) in seen),
    )


@dataclass
class _Space:
    """The accepted space, counted and searched a factor at a time, memoized on what later
    factors can see: never enumerated (each multiselect choice doubles it)."""

    params: tuple[Parameter, ...]
    rejected: dict[str, Rejection] = field(default_factory=dict)
    _counts: dict[tuple[Any, ...], tuple[int, dict[str, int]]] = field(default_factory=dict)
    _found: dict[tuple[Any, ...], Row | None] = field(default_factory=dict)

    def count(self, index: int = 0, row: Row | None = None) -> tuple[int, dict[str, int]]:
        """Accepted rows below this prefix, and the prefixes refused, per message."""
        row = row if row is not None else {}
        if index == len(self.params):
            return 1, {}
        key = _state(self.params, index, row)
        if key not in self._counts:
            param = self.params[index]
            refused: dict[str, Rejection] = {}
            accepted = 0
            totals: dict[str, int] = {}
            for value in _options(self.params, index, row, refused):
                below, below_refused = self.count(index + 1, {**row, param.name: value})
                accepted += below
                for message, number in below_refused.items():
                    totals[message] = totals.get(message, 0) + number
            for message, rejection in refused.items():
                totals[message] = totals.get(message, 0) + rejection.count
                self.rejected.setdefault(message, rejection)
            self._counts[key] = (accepted, totals)
        return self._counts[key]

    def find(self, wanted: "Tuple", index: int = 0, row: Row | None = None) -> Row | None:
        """An accepted row of factors holding every value of `wanted`, or None."""
        row = row if row is not None else {}
        if index == len(self.params):
            return dict(row)
        fixed = dict(wanted)
        later = tuple(t for t in wanted if t[0] in self._after(index))
        key = (_state(self.params, index, row), later)
        if key in self._found and self._found[key] is None:
            return None
        param = self.params[index]
        for value in _options(self.params, index, row, None):
            if param.name in fixed and _hashable(fixed[param.name]) != _hashable(value):
                continue
            found = self.find(wanted, index + 1, {**row, param.name: value})
            if found is not None:
                return found
        self._found[key] = None
        return None

    @functools.cached_property
    def _positions(self) -> dict[str, int]:
        return {p.name: i for i, p in enumerate(self.params)}

    def _after(self, index: int) -> set[str]:
        return {name for name, position in self._positions.items() if position >= index}


Tuple = tuple[tuple[str, Any], ...]


def _tuples(row: Row, groups: list[tuple[str, ...]]) -> Iterator[Tuple]:
    for group in groups:
        yield tuple((name, _hashable(row[name])) for name in group)


@dataclass
class CoveringArray:
    rows: list[Row]  # question -> answer (a list for a multiselect), None where not asked
    pairs: int  # pairs of values of two factors that some accepted row holds
    triples: int  # triples of factors of INTERACTING, likewise
    accepted: int  # rows of the whole space that copier.yml accepts
    rejected: list[Rejection]
    seconds: float


def _groups(names: list[str]) -> list[tuple[str, ...]]:
    crossed = [name for name in names if name in interacting()]
    return [*itertools.combinations(names, 2), *itertools.combinations(crossed, 3)]


def _candidates(param: Parameter) -> tuple[Any, ...]:
    # A factor may hold None where its `when` can be false.
    return (*param.values, None) if param.when is not None else param.values


@functools.cache
def covering_array() -> CoveringArray:
    start = time.perf_counter()
    params = parameters()
    names = [param.name for param in params]
    groups = _groups(names)
    space = _Space(params)
    accepted, refused = space.count()
    for message, number in refused.items():
        space.rejected[message].count = number
    # The tuples some accepted row holds: each candidate tuple either lies in a row already
    # found, or is searched for.
    held: list[Row] = []
    required: set[Tuple] = set()
    by_name = {param.name: param for param in params}
    for group in groups:
        for values in itertools.product(*(_candidates(by_name[name]) for name in group)):
            wanted = tuple(zip(group, map(_hashable, values), strict=True))
            if any(all(_hashable(r[n]) == v for n, v in wanted) for r in held[-64:]):
                required.add(wanted)
                continue
            found = space.find(wanted)
            if found is not None:
                held.append(found)
                required.add(wanted)
    pair_count = sum(1 for t in required if len(t) == 2)
    uncovered = set(required)
    by_last: dict[str, list[tuple[str, ...]]] = {name: [] for name in names}
    for group in groups:
        by_last[max(group, key=names.index)].append(group)
    rng = random.Random(SEED)
    rows: list[Row] = []
    while uncovered:
        best: tuple[int, Row] | None = None
        for _ in range(12):
            row = _greedy_row(params, by_last, uncovered, rng, space)
            gain = len(uncovered.intersection(_tuples(row, groups)))
            if best is None or gain > best[0]:
                best = (gain, row)
        assert best is not None
        if best[0] == 0:  # the greedy walk missed what is left: an accepted row holding it
            found = space.find(min(uncovered, key=repr))
            assert found is not None
            best = (1, found)
        rows.append(best[1])
        uncovered.difference_update(_tuples(best[1], groups))
    return CoveringArray(
        rows=[_row(row) for row in rows],
        pairs=pair_count,
        triples=len(required) - pair_count,
        accepted=accepted,
        rejected=list(space.rejected.values()),
        seconds=time.perf_counter() - start,
    )


def _greedy_row(
    params: tuple[Parameter, ...],
    by_last: dict[str, list[tuple[str, ...]]],
    uncovered: set[Tuple],
    rng: random.Random,
    space: _Space,
) -> Row:
    """One row, factor by factor: the value completing the most uncovered tuples with the
    answers already chosen (ties broken at random), among those some accepted row continues
    (the space's counts say which: a validator of a later factor may refuse every value of it,
    as the last deploy target's does for SQLite with any earlier target that refuses it)."""
    while True:
        row: Row = {}
        for index, param in enumerate(params):
            options = [
                value
                for value in _options(params, index, row, None)
                if space.count(index + 1, {**row, param.name: value})[0]
            ]
            if not options:
                break
            scored = []
            for value in options:
                row[param.name] = value
                gain = sum(t in uncovered for t in _tuples(row, by_last[param.name]))
                scored.append((gain, rng.random(), value))
            row[param.name] = max(scored, key=lambda item: (item[0], item[1]))[2]
        else:
            return row


def row_of(answers: dict[str, Any]) -> Row:
    """The row of an answer set: each question's answer (its default where the answers leave
    it), None where copier would not ask it."""
    params = parameters()
    row: Row = {}
    for param in params:
        if not param.asked(_context(params, row)):
            row[param.name] = None
        elif param.question:
            chosen = answers.get(param.question, questions()[param.question].get("default", []))
            row[param.name] = param.choice in chosen
        elif param.name in answers:
            row[param.name] = answers[param.name]
        else:
            row[param.name] = None if param.name == "ingress_class" else param.default
    return _row(row)


def answers_of(row: Row) -> dict[str, Any]:
    """The --data of a row: the questions copier asks, and a valid text where one is needed."""
    answers = {name: value for name, value in row.items() if value is not None}
    context = _context(parameters(), factors(row))
    for name, text in DERIVED.items():
        when = questions()[name].get("when")
        if when is None or _is_true(expression(when).render(context)):
            answers[name] = text
    return answers


# The target every project has: compose.yaml is rendered whatever `deploy_targets` holds.
COMPOSE = "compose"


# What a test asks of the projects it runs: answers they must give, or a predicate on their row.
Where = Row | Callable[[Row], bool] | None


def _holds(row: Row, where: Where) -> bool:
    if callable(where):
        return where(row)
    return all(row[name] == value for name, value in (where or {}).items())


def run_for_real(
    target: str,
    groups: list[tuple[str, ...]],
    where: Where = None,
    besides: Sequence[Row] = (),
) -> list[Row]:
    """A handful of the array's projects with this deployment target (COMPOSE: any project)
    and the answers `where` gives, or whose row it holds for (what a test needs, as a Swarm
    test the proxy whose configuration it edits, or what the machine can run), chosen so that
    each combination of values of each group of questions that they hold is in one of them or
    in a project `besides` (one a test runs already): as few as can be (a greedy choice, or a
    smaller one where a search finds it)."""
    rows = [
        row
        for row in covering_array().rows
        if (target == COMPOSE or target in row["deploy_targets"]) and _holds(row, where)
    ]
    assert rows, f"no project of the array deploys to {target} with {where}"
    done = {t for row in besides for t in _tuples(row, groups)}
    held = [set(_tuples(row, groups)) - done for row in rows]
    return [answers_of(rows[index]) for index in _fewest(held)]


def run_for_real_together(
    targets: list[str], groups: list[tuple[str, ...]], where: Where = None
) -> list[Row]:
    """run_for_real for several targets at once, sharing projects: as few of the array's
    projects as hold, for each target, every combination of each group that the array's
    projects with that target hold. A project with several of the targets counts for each, so
    the set is smaller than the union of each target's own choice."""
    rows = [
        row
        for row in covering_array().rows
        if set(targets) & set(row["deploy_targets"] or []) and _holds(row, where)
    ]
    assert rows, f"no project of the array deploys to any of {targets} with {where}"
    held = [
        {(target, t) for target in targets if target in row["deploy_targets"] for t in tuples}
        for row in rows
        for tuples in [set(_tuples(row, groups))]
    ]
    return [answers_of(rows[index]) for index in _fewest(held)]


def _fewest(held: list[set[Any]]) -> list[int]:
    """As few rows (indexes into `held`) as hold every tuple some row holds: a greedy choice,
    or a smaller one where a search finds it."""
    wanted = set().union(*held)
    chosen: list[int] = []
    left = set(wanted)
    while left:
        best = max(range(len(held)), key=lambda index: len(held[index] & left))
        chosen.append(best)
        left -= held[best]
    for size in range(1, len(chosen)):
        smaller = _cover(held, wanted, size)
        if smaller is not None:
            return smaller
    return chosen


def lockable_here(answers: dict[str, Any]) -> dict[str, Any]:
    """The answers, a Poetry project's package index made the simple one: Poetry's built-in
    PyPI source needs PyPI's JSON API, which this machine cannot reach."""
    if answers["dependency_tool"] == "poetry" and not answers.get("package_index"):
        return {**answers, "package_index": SIMPLE_INDEX}
    return answers


# What the compose projects run for real cover: every reverse proxy, each process model with
# each metrics answer, each database with and without migrations, each tool with each layout.
COMPOSE_GROUPS = [
    ("reverse_proxy",),
    ("process_model", "metrics"),
    ("database", "migrations"),
    ("dependency_tool", "layout"),
]


@functools.cache
def compose_projects() -> tuple[dict[str, Any], ...]:
    """The array's projects that tests/test_projects.py installs with their own tool and runs
    with compose (and the families the static tests of READMEs, workflows and hostile answers
    render)."""
    return tuple(lockable_here(answers) for answers in run_for_real(COMPOSE, COMPOSE_GROUPS))


# What the platform projects run for real cover, on each platform: each process model (one
# Uvicorn process or workers), each tool (Render's build command), each layout (the start
# command's module), each database with and without migrations (the release step, or none).
PLATFORM_GROUPS = [
    ("process_model",),
    ("dependency_tool",),
    ("layout",),
    ("database", "migrations"),
]


@functools.cache
def platform_projects() -> tuple[dict[str, Any], ...]:
    """The array's projects that tests/test_paas.py installs and runs as each of their
    platforms runs them."""
    return tuple(
        lockable_here(answers)
        for answers in run_for_real_together(platform_targets(), PLATFORM_GROUPS)
    )


def public_domain(row: Row) -> bool:
    """Whether a row's proxy obtains a certificate for a public name from an ACME CA (a domain
    other than FREE_TEXT_CLASSES' default class, localhost)."""
    return row.get("domain") not in {None, FREE_TEXT_CLASSES["domain"][0]}


def installable_here(row: Row) -> bool:
    """Whether a row is among those the Debian machines run for real with the tests of
    SERVER_GROUPS: no public domain, whose certificate comes from an ACME CA (tests/test_server.py
    runs those apart, one per proxy, with a test CA). It has each Python the template offers
    (tests/images/server)."""
    return not public_domain(row)


# What the server projects run for real cover, among the rows this machine can run
# (`installable_here`): each tool (install.sh installs with it), each Python (the one the
# virtual environment is made with), each proxy with each process model (its HTTPS site and the
# forwarded client address, or the socket itself; Gunicorn's reload or one Uvicorn process
# behind it: a proxy on the machine sends again what a stopping worker closed), each database
# with and without migrations (the README's database commands, the migration unit).
SERVER_GROUPS = [
    ("dependency_tool",),
    ("python_version",),
    ("reverse_proxy", "process_model"),
    ("database", "migrations"),
]


@functools.cache
def server_projects() -> tuple[dict[str, Any], ...]:
    """The array's projects that tests/test_server.py installs on a Debian machine each."""
    return tuple(
        lockable_here(answers)
        for answers in run_for_real("server", SERVER_GROUPS, installable_here)
    )


def _cover(held: list[set[Any]], wanted: set[Any], size: int) -> list[int] | None:
    """At most `size` rows (indexes into `held`) holding every wanted tuple, or None. The tuple
    fewest rows hold comes first: one of those rows is in any cover."""
    if not wanted:
        return []
    if size == 0 or size * max(len(tuples & wanted) for tuples in held) < len(wanted):
        return None
    rarest = min(wanted, key=lambda t: (sum(t in tuples for tuples in held), repr(t)))
    for index, tuples in enumerate(held):
        if rarest in tuples:
            rest = _cover(held, wanted - tuples, size - 1)
            if rest is not None:
                return [index, *rest]
    return None
