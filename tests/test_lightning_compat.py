"""The private Lightning names gem-lightning relies on: all listed in ``gem_lightning.lightning_compat``, all present.

After a Lightning upgrade, ``test_every_listed_private_name_exists`` names each one that is gone;
the other tests keep the list complete: no module but the compat module imports a private
Lightning name, and every private Lightning method or attribute that a subclass overrides or uses is listed.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest
from conftest import REPO
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from gem_lightning.lightning_compat import PRIVATE_NAMES, SignalConnector

PACKAGE = REPO / "gem_lightning"
COMPAT_MODULE = PACKAGE / "lightning_compat.py"
LIGHTNING_PACKAGES = {"lightning", "pytorch_lightning", "lightning_fabric"}


def _instance(cls: type) -> object:
    """An instance of a Lightning class, for the attributes that its ``__init__`` sets."""
    if issubclass(cls, Trainer):
        return Trainer(
            accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False
        )
    if issubclass(cls, SignalConnector):
        return cls(_instance(Trainer))
    if issubclass(cls, ModelCheckpoint):
        return cls()
    raise LookupError(f"no way to make a {cls.__qualname__} here: add one to _instance")


def resolve(dotted: str) -> tuple[object, str, object]:
    """``(owner, attribute, value)`` of a dotted name: a module, then attributes (of a class, or of
    an instance of it for attributes set in ``__init__``)."""
    parts = dotted.split(".")
    split = next(i for i in range(len(parts) - 1, 0, -1) if _importable(".".join(parts[:i])))
    owner: object = importlib.import_module(".".join(parts[:split]))
    for name in parts[split:-1]:
        owner = getattr(owner, name)
    attribute = parts[-1]
    if hasattr(owner, attribute):
        return owner, attribute, getattr(owner, attribute)
    return owner, attribute, getattr(_instance(owner), attribute)


def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ModuleNotFoundError:
        return False
    return True


@pytest.mark.parametrize("dotted", PRIVATE_NAMES)
def test_every_listed_private_name_exists(dotted):
    owner, attribute, _ = resolve(dotted)
    assert attribute.startswith("_") or getattr(owner, "__name__", "").startswith("_"), f"{dotted} is public: list only private names"


def test_the_list_names_each_private_name_once():
    assert len(set(PRIVATE_NAMES)) == len(PRIVATE_NAMES)


# Imports --------------------------------------------------------------------------------------------


def private_lightning_imports(path: Path) -> list[str]:
    """``file:line module.name`` of every private Lightning name ``path`` imports."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules = [(node.module, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            modules = [(alias.name, "") for alias in node.names]
        else:
            continue
        for module, name in modules:
            parts = [*module.split("."), name] if name else module.split(".")
            if parts[0] in LIGHTNING_PACKAGES and any(part.startswith("_") for part in parts):
                found.append(f"{path.relative_to(REPO)}:{node.lineno} {module}.{name}".rstrip("."))
    return found


def test_only_the_compat_module_imports_private_lightning_names():
    assert private_lightning_imports(COMPAT_MODULE), "the scan sees the compat module's own imports"
    elsewhere = [found for path in sorted(PACKAGE.rglob("*.py")) if path != COMPAT_MODULE for found in private_lightning_imports(path)]
    assert not elsewhere, "import private Lightning names through gem_lightning.lightning_compat:\n" + "\n".join(elsewhere)


# Overridden and inherited private names ----------------------------------------------------------------


def private_names_of_classes(path: Path) -> dict[str, tuple[set[str], set[str]]]:
    """For each top-level class of ``path``: the private methods it defines, and the private
    attributes it reads through ``self`` without defining or assigning them (inherited ones)."""
    classes = {}
    for node in ast.parse(path.read_text(), str(path)).body:
        if not isinstance(node, ast.ClassDef):
            continue
        defined = {item.name for item in node.body if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef))}
        assigned, read = set(), set()
        for child in ast.walk(node):
            if isinstance(child, ast.Attribute) and isinstance(child.value, ast.Name) and child.value.id in ("self", "cls"):
                (assigned if isinstance(child.ctx, ast.Store) else read).add(child.attr)
        methods = {name for name in defined if _private(name)}
        inherited = {name for name in read - defined - assigned if _private(name)}
        if methods or inherited:
            classes[node.name] = (methods, inherited)
    return classes


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _from_lightning(cls: type) -> bool:
    return cls.__module__.split(".")[0] in LIGHTNING_PACKAGES


def lightning_private_uses() -> list[tuple[str, type, str]]:
    """``(where, class, name)`` for each private name that a subclass of a Lightning class
    overrides (a private method of its own that a Lightning base class defines too) or inherits."""
    uses = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for class_name, (methods, inherited) in private_names_of_classes(path).items():
            cls = getattr(importlib.import_module(_module_name(path)), class_name)
            bases = [base for base in cls.__mro__[1:] if _from_lightning(base)]
            if not bases:
                continue
            overridden = {name for name in methods if any(name in vars(base) for base in bases)}
            for name in sorted(overridden | inherited):
                uses.append((f"{_module_name(path)}.{class_name}", cls, name))
    return uses


def test_every_private_lightning_name_a_subclass_overrides_or_uses_is_listed():
    listed = {(owner, attribute) for owner, attribute, _ in map(resolve, PRIVATE_NAMES)}
    uses = lightning_private_uses()
    assert any(name == "_parse_ckpt_path" for _, _, name in uses), "the scan sees GemCLI's override"
    missing = [
        f"{where}.{name}" for where, cls, name in uses if not any((base, name) in listed for base in cls.__mro__ if _from_lightning(base))
    ]
    assert not missing, "list these in gem_lightning.lightning_compat.PRIVATE_NAMES:\n" + "\n".join(missing)
