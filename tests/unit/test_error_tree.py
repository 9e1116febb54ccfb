"""One error tree: every exception class the project defines descends from ``AgentstreamError``."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from pathlib import Path

import schemas
import services
from services.common.errors import AgentstreamError

ROOT = Path(__file__).resolve().parents[2]


def _modules() -> list[str]:
    names = []
    for package in (services, schemas):
        names.append(package.__name__)
        for info in pkgutil.walk_packages(package.__path__, prefix=package.__name__ + "."):
            if ".store.revisions." in info.name:  # alembic scripts: loaded by alembic, not importable alone
                continue
            if info.name.endswith(".__main__"):  # runs the CLI when imported (python -m services.cli)
                continue
            names.append(info.name)
    return names


def _exception_classes() -> list[type[BaseException]]:
    found: list[type[BaseException]] = []
    for name in _modules():
        module = importlib.import_module(name)
        for _, value in inspect.getmembers(module, inspect.isclass):
            if issubclass(value, BaseException) and value.__module__ == name:
                found.append(value)
    return found


def test_the_walk_finds_the_classes_it_should() -> None:
    names = {cls.__qualname__ for cls in _exception_classes()}
    assert {"AgentstreamError", "HTTPError", "PoisonRecord", "ServiceError", "ToolError", "Fenced"} <= names


def test_every_exception_class_is_under_agentstream_error() -> None:
    outside = sorted(f"{cls.__module__}.{cls.__qualname__}" for cls in _exception_classes() if not issubclass(cls, AgentstreamError))
    assert outside == []
