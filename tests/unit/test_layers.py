"""The package's layering, checked on the source with `ast` (imports inside functions and
under TYPE_CHECKING count too).

The pure core imports no I/O: nothing from Kafka, HTTP, Avro, metrics, sockets, threads,
processes, asyncio or the clock, and nothing of `consumer` outside `consumer.core`.

Nothing imports upward. The layers, lowest first, as the imports stand (a package may import
its own modules and any lower layer's, never a higher one's nor another package of its own
layer):

    0  core                                  events, mapping, ordering, fold, state: pure
    1  consumer (the version), errors,       shared by everything
       settings_names, redact
    2  settings, observability               configuration; metric and tracing definitions
                                             (dispatch, kafka and logs count and trace)
    3  codec, store, bitrix, logs            Avro; changelog encoding; the Bitrix24 client,
                                             OAuth and limits; log formatting
    4  kafka, dispatch                       Kafka clients and stores (the token store keeps
                                             bitrix's TokenSet); calls to portals
    5  engine, admin                         the consume-decide-dispatch-commit loop; the
                                             admin commands
    6  inbound                               Bitrix24 → Kafka (reuses admin's connector calls)
    7  service, simulator                    the service's process; the stand-in portal
    8  demo
    9  cli
    10 __main__

The simulator must behave like a real portal, not like this consumer: it imports nothing of
`consumer` outside `consumer.simulator`, and nothing of the service imports it.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "consumer"

LAYERS: tuple[frozenset[str], ...] = tuple(
    frozenset(names.split())
    for names in (
        "core",
        "consumer errors settings_names redact",
        "settings observability",
        "codec store bitrix logs",
        "kafka dispatch",
        "engine admin",
        "inbound",
        "service simulator",
        "demo",
        "cli",
        "__main__",
    )
)
LAYER_OF = {name: index for index, layer in enumerate(LAYERS) for name in layer}
SELF_CONTAINED = ("core", "simulator")  # import nothing of `consumer` outside themselves

CORE_MAY_NOT_IMPORT = frozenset(
    {
        "confluent_kafka",
        "httpx",
        "httpcore",
        "fastavro",
        "prometheus_client",
        "socket",
        "ssl",
        "selectors",
        "threading",
        "multiprocessing",
        "subprocess",
        "asyncio",
        "time",  # the core takes the time as an argument
    }
)


def part_of(module: str) -> str:
    """The layer table's name for `module`: its top-level package or module inside
    `consumer` (`consumer.kafka.records` -> `kafka`), or `consumer` for the package itself."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "consumer"


def imports(module: str, source: str, is_package: bool = False) -> Iterator[tuple[int, str]]:
    """(line, imported module) for every import in `source`, relative ones resolved."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            yield node.lineno, target
            if node.module is None or target == "consumer":  # from consumer import kafka
                for alias in node.names:
                    yield node.lineno, f"{target}.{alias.name}"


def violations(module: str, source: str, where: str, is_package: bool = False) -> list[str]:
    """Every import of `module` (whose text is `source`, at `where`) that breaks a rule."""
    own = part_of(module)
    if own not in LAYER_OF:
        return [f"{where}: {module} is in no layer: add `{own}` to LAYERS in {__file__}"]
    found: dict[tuple[int, str], str] = {}  # one complaint per line and imported part
    for line, target in imports(module, source, is_package):
        top = target.split(".")[0]
        if own == "core" and top in CORE_MAY_NOT_IMPORT:
            found[line, top] = (
                f"{where}:{line}: the pure core imports {target} (I/O or a clock): pass the "
                "value in from the engine instead"
            )
        if top != "consumer":
            continue
        other = part_of(target)
        if other == own or (line, other) in found:
            continue
        if own in SELF_CONTAINED:
            found[line, other] = (
                f"{where}:{line}: {module} imports {target}, but consumer.{own} imports "
                "nothing of consumer outside itself"
            )
        elif other in LAYER_OF and LAYER_OF[other] >= LAYER_OF[own]:
            how = "upward" if LAYER_OF[other] > LAYER_OF[own] else "across its layer"
            found[line, other] = (
                f"{where}:{line}: {module} imports {target} {how}: {own} is in layer "
                f"{LAYER_OF[own]}, {other} in layer {LAYER_OF[other]}; move what it needs "
                f"down to a layer below {LAYER_OF[own]}, or the importer up"
            )
        # (a name that is no part of the table, `from consumer import __version__`, is an
        # attribute of a module that is: nothing to check)
    return list(found.values())


def package_modules() -> Iterator[tuple[str, Path]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield ".".join(parts), path


def test_every_import_in_the_package_keeps_the_layering() -> None:
    found = [
        problem
        for module, path in package_modules()
        for problem in violations(
            module,
            path.read_text(encoding="utf-8"),
            str(path.relative_to(PACKAGE.parent)),
            path.name == "__init__.py",
        )
    ]
    assert not found, "\n".join(found)


def test_every_package_has_a_layer() -> None:
    parts = {part_of(module) for module, _ in package_modules()}
    assert parts <= set(LAYER_OF), sorted(parts - set(LAYER_OF))
    assert set(LAYER_OF) <= parts, sorted(set(LAYER_OF) - parts)  # no stale names


@pytest.mark.parametrize(
    ("module", "source", "names"),
    [
        ("consumer.core.fold", "import httpx", ["the pure core imports httpx"]),
        ("consumer.core.fold", "from time import monotonic", ["the pure core imports time"]),
        (
            "consumer.core.fold",
            "from consumer.errors import PoisonRecord",
            ["consumer.core.fold imports consumer.errors, but consumer.core imports nothing"],
        ),
        (
            "consumer.kafka.records",
            "from consumer.engine.engine import Engine",
            ["consumer.kafka.records imports consumer.engine.engine upward"],
        ),
        (
            "consumer.dispatch.dispatcher",
            "from consumer.kafka import writer",
            ["consumer.dispatch.dispatcher imports consumer.kafka across its layer"],
        ),
        (
            "consumer.settings",
            "from consumer import service",
            ["consumer.settings imports consumer.service upward"],
        ),
        (
            "consumer.codec.decoder",
            "from ..observability.metrics import Metrics",
            [],  # observability is below codec
        ),
        (
            "consumer.bitrix.client",
            "from ..dispatch import dispatcher",
            ["consumer.bitrix.client imports consumer.dispatch upward"],
        ),
        (
            "consumer.simulator.portal",
            "from consumer.core.mapping import SEND",
            ["consumer.simulator imports nothing of consumer outside itself"],
        ),
        (
            "consumer.engine.engine",
            "from consumer.simulator import server",
            ["imports consumer.simulator upward"],
        ),
        (
            "consumer.engine.engine",
            "from consumer.engine.planner import Planner\nfrom consumer import __version__",
            [],
        ),
        ("consumer.newthing.x", "", ["add `newthing` to LAYERS"]),
    ],
)
def test_the_check_names_the_offending_import(module: str, source: str, names: list[str]) -> None:
    found = violations(module, source, "here.py")
    assert len(found) == len(names), found
    for problem, name in zip(found, names, strict=True):
        assert name in problem, problem
