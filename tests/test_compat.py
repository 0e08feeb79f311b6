"""Other libraries' private names that gem-lightning relies on: each listed in its library's
``gem_lightning.compat`` module, present in the installed release, and pinned.

After an upgrade, ``test_every_listed_private_name_exists`` and ``test_the_listed_parameters_are_still_taken``
name each one that is gone or changed. The other tests keep the lists complete and the pins honest:
no module but a library's compat module imports or reads a private name of it (nor one of a library
without a compat module), every private method or attribute that a subclass overrides or uses is
listed, and each library with a list is pinned below its next unread release, as its module says.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import importlib
import importlib.metadata
import inspect
import sys
from pathlib import Path

import pytest
from conftest import REPO
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel, RandomDataset
from litserve import LitServer
from litserve.test_examples import SimpleLitAPI
from packaging.requirements import Requirement
from torch.utils.data import DataLoader

from gem_lightning.compat.lightning import SignalConnector, fit_epoch_about_to_run

PACKAGE = REPO / "gem_lightning"
COMPAT = PACKAGE / "compat"
LIBRARIES: dict[str, tuple[str, ...]] = {
    "lightning": ("lightning", "lightning_fabric", "pytorch_lightning"),
    "litdata": ("litdata",),
    "litserve": ("litserve",),
    "torch": ("torch",),
    "torchvision": ("torchvision",),
}
"""Compat module (and the distribution ``pyproject.toml`` pins) -> the top-level packages it covers."""

MODULES = {library: importlib.import_module(f"gem_lightning.compat.{library}") for library in LIBRARIES}
LISTED = [(library, dotted) for library, module in MODULES.items() for dotted in module.PRIVATE_NAMES]
WITH_PARAMETERS = [(library, dotted) for library, module in MODULES.items() for dotted in module.PARAMETERS]


def library_of(package: str) -> str | None:
    """The compat module that covers the top-level ``package``, if any."""
    return next((library for library, packages in LIBRARIES.items() if package in packages), None)


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _third_party(package: str) -> bool:
    return package not in sys.stdlib_module_names and package not in ("gem_lightning", "builtins", "__future__")


# Resolving a listed name ------------------------------------------------------------------------------


@functools.cache
def _trainer() -> Trainer:
    return Trainer(
        accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False
    )


def _instance(cls: type) -> object:
    """An instance of a library class, for the attributes that its ``__init__`` sets."""
    if issubclass(cls, Trainer):
        return _trainer()
    if issubclass(cls, SignalConnector):
        return cls(_trainer())
    if cls is type(_trainer().fit_loop):
        return _trainer().fit_loop
    if issubclass(cls, LitServer):
        return cls(SimpleLitAPI(), accelerator="cpu")
    if issubclass(cls, ModelCheckpoint) or dataclasses.is_dataclass(cls):
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


def taken_parameters(owner: object, attribute: str, function: object) -> list[inspect.Parameter]:
    """The parameters of ``function`` (``owner.attribute``) that a caller passes: without ``self``."""
    parameters = list(inspect.signature(inspect.unwrap(function)).parameters.values())
    plain_method = inspect.isclass(owner) and not isinstance(inspect.getattr_static(owner, attribute), (staticmethod, classmethod))
    return parameters[1:] if plain_method else parameters


@pytest.mark.parametrize(("library", "dotted"), LISTED, ids=[dotted for _, dotted in LISTED])
def test_every_listed_private_name_exists(library, dotted):
    assert library_of(dotted.split(".")[0]) == library, f"{dotted} is not {library}'s: list it in its own library's compat module"
    owner, attribute, _ = resolve(dotted)
    assert _private(attribute) or _private(getattr(owner, "__name__", "")), f"{dotted} is public: list only private names"


@pytest.mark.parametrize(("library", "dotted"), WITH_PARAMETERS, ids=[dotted for _, dotted in WITH_PARAMETERS])
def test_the_listed_parameters_are_still_taken(library, dotted):
    assert dotted in MODULES[library].PRIVATE_NAMES, f"{dotted} has parameters listed but is not in PRIVATE_NAMES"
    owner, attribute, function = resolve(dotted)
    parameters = taken_parameters(owner, attribute, function)
    expected = MODULES[library].PARAMETERS[dotted]
    assert tuple(parameter.name for parameter in parameters[: len(expected)]) == expected
    assert all(
        parameter.default is not inspect.Parameter.empty or parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)
        for parameter in parameters[len(expected) :]
    ), f"{dotted}{inspect.signature(function)} needs more than the {expected} the package passes"


def test_the_lists_name_each_private_name_once_and_cover_every_compat_module():
    names = [dotted for _, dotted in LISTED]
    assert len(set(names)) == len(names)
    assert {path.stem for path in COMPAT.glob("*.py")} - {"__init__"} == set(LIBRARIES)


def test_the_fit_epoch_is_the_one_about_to_run_where_current_epoch_still_lags(tmp_path):
    """Why ``fit_epoch_about_to_run`` reads a private counter: resumed from a checkpoint saved at the end
    of epoch 1, the loop makes its first iterator (where a DDP sampler with workers draws its order)
    while ``trainer.current_epoch`` still says 1. When this fails, Lightning has caught up: use current_epoch."""
    seen = []

    class Recording(DataLoader):
        def __iter__(self):
            seen.append((fit_epoch_about_to_run(self.trainer), self.trainer.current_epoch))
            return super().__iter__()

    class Model(BoringModel):
        def train_dataloader(self) -> DataLoader:
            loader = Recording(RandomDataset(32, 8), batch_size=4)
            loader.trainer = self.trainer
            return loader

    def fit(max_epochs: int, ckpt_path: Path | None = None) -> list[tuple[int, int]]:
        seen.clear()
        checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True, save_on_train_epoch_end=True)
        Trainer(
            max_epochs=max_epochs, limit_val_batches=0, callbacks=[checkpoint], accelerator="cpu", devices=1, logger=False,
            enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
        ).fit(Model(), ckpt_path=ckpt_path)  # fmt: skip
        return list(seen)

    assert fit(2) == [(0, 0), (1, 1)]
    assert fit(3, tmp_path / "last.ckpt") == [(2, 1)]


# Pins ----------------------------------------------------------------------------------------------


def pinned() -> dict[str, Requirement]:
    """``pyproject.toml``'s dependencies by distribution name."""
    import tomllib  # Python 3.11+

    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    return {(requirement := Requirement(line)).name: requirement for line in dependencies}


@pytest.mark.parametrize("library", LIBRARIES)
def test_a_library_with_a_list_is_pinned_below_its_next_unread_release(library):
    requirement = pinned()[library]
    upper = [specifier for specifier in requirement.specifier if specifier.operator == "<"]
    assert upper, f"pyproject.toml: {requirement} needs an upper bound, the first release whose private names no one has read"
    installed = importlib.metadata.version(library)
    assert requirement.specifier.contains(installed, prereleases=True), f"the installed {library} {installed} is outside {requirement}"
    assert f"``{library}{upper[0]}``" in MODULES[library].__doc__, f"gem_lightning.compat.{library}'s docstring names another pin"


# Touching private names ---------------------------------------------------------------------------------


class PrivateTouches(ast.NodeVisitor):
    """``(package, line, name)`` of each private name of a third-party package that a module imports,
    reads through a name it imported, or reads as an attribute named like a listed one (``obj._name``,
    but not ``self._name``, ``super()._name`` or ``Base._name`` in a subclass of ``Base``)."""

    def __init__(self, listed_attributes: dict[str, str]) -> None:
        self.listed_attributes = listed_attributes
        self.imported: dict[str, str] = {}
        self.bases: list[set[str]] = []
        self.found: set[tuple[str, int, str]] = set()

    def scan(self, tree: ast.AST) -> set[tuple[str, int, str]]:
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    self._imported(f"{node.module}.{alias.name}", alias.asname or alias.name, node.lineno)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    self._imported(alias.name, alias.asname or alias.name.split(".")[0], node.lineno, bound=alias.asname is not None)
        self.visit(tree)
        return self.found

    def _imported(self, dotted: str, name: str, line: int, bound: bool = True) -> None:
        package = dotted.split(".")[0]
        if not _third_party(package):
            return
        self.imported[name] = dotted if bound else package
        if any(_private(part) for part in dotted.split(".")):
            self.found.add((package, line, dotted))

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self.bases.append({base.id for base in node.bases if isinstance(base, ast.Name)})
        self.generic_visit(node)
        self.bases.pop()

    def visit_Attribute(self, node: ast.Attribute) -> None:
        self.generic_visit(node)
        self._touch(node.value, node.attr, node.lineno)

    def visit_Call(self, node: ast.Call) -> None:
        """``getattr(obj, "_name")`` and the like, as ``obj._name``."""
        self.generic_visit(node)
        by_name = isinstance(node.func, ast.Name) and node.func.id in ("getattr", "setattr", "hasattr", "delattr")
        if by_name and len(node.args) > 1 and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str):
            self._touch(node.args[0], node.args[1].value, node.lineno)

    def _touch(self, value: ast.expr, attribute: str, line: int) -> None:
        if not _private(attribute):
            return
        root, chain = value, [attribute]
        while isinstance(root, ast.Attribute):
            root, chain = root.value, [root.attr, *chain]
        if isinstance(root, ast.Name) and root.id in self.imported:
            dotted = ".".join([self.imported[root.id], *chain])
            self.found.add((dotted.split(".")[0], line, dotted))
        elif attribute in self.listed_attributes and not self._own(value):
            self.found.add((self.listed_attributes[attribute], line, attribute))

    def _own(self, value: ast.expr) -> bool:
        """``self``, ``cls``, ``super()`` or a base of the class around: a subclass using what it inherits."""
        if isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "super":
            return True
        return isinstance(value, ast.Name) and (value.id in ("self", "cls") or any(value.id in bases for bases in self.bases))


def listed_private_attributes() -> dict[str, str]:
    """The last part of each listed private name -> its top-level package."""
    return {dotted.rsplit(".", 1)[1]: dotted.split(".")[0] for _, dotted in LISTED if _private(dotted.rsplit(".", 1)[1])}


def private_touches(source: str) -> set[tuple[str, int, str]]:
    return PrivateTouches(listed_private_attributes()).scan(ast.parse(source))


def package_touches() -> dict[Path, set[tuple[str, int, str]]]:
    return {path: private_touches(path.read_text()) for path in sorted(PACKAGE.rglob("*.py"))}


def test_the_scan_sees_each_way_of_touching_a_private_name():
    source = """
import torch
import litdata.streaming.downloader as downloader
from lightning.pytorch.trainer.connectors.signal_connector import _SignalConnector
from os import _exit

def bf16():
    return torch.cpu._is_avx512_bf16_supported()

downloader._build_obstore_s3_store = None
server._monitor_workers = False

class Connector(_SignalConnector):
    def _register_signal(signum, handlers):
        _SignalConnector._register_signal(signum, handlers)
        self._every_n_epochs, super()._get_iterator(), self.server._shutdown_event
        getattr(downloader, "_build_obstore_s3_store"), getattr(trainer, "_signal_connector", None)
"""
    assert private_touches(source) == {
        ("lightning", 4, "lightning.pytorch.trainer.connectors.signal_connector._SignalConnector"),
        ("torch", 8, "torch.cpu._is_avx512_bf16_supported"),
        ("litdata", 10, "litdata.streaming.downloader._build_obstore_s3_store"),
        ("litserve", 11, "_monitor_workers"),
        ("lightning", 15, "lightning.pytorch.trainer.connectors.signal_connector._SignalConnector._register_signal"),
        ("litserve", 16, "_shutdown_event"),
        ("litdata", 17, "litdata.streaming.downloader._build_obstore_s3_store"),
        ("lightning", 17, "_signal_connector"),
    }


@pytest.mark.parametrize("library", LIBRARIES)
def test_only_its_compat_module_touches_a_librarys_private_names(library):
    own = COMPAT / f"{library}.py"
    elsewhere = [
        f"{path.relative_to(REPO)}:{line} {name}"
        for path, touches in package_touches().items()
        if path != own
        for package, line, name in sorted(touches)
        if library_of(package) == library
    ]
    assert not elsewhere, f"touch these through gem_lightning.compat.{library}:\n" + "\n".join(elsewhere)


def test_no_module_touches_a_private_name_of_a_library_without_a_compat_module():
    touches = package_touches()
    assert touches[COMPAT / "lightning.py"] and touches[COMPAT / "litdata.py"], "the scan sees the compat modules' own touches"
    unlisted = [
        f"{path.relative_to(REPO)}:{line} {name}"
        for path, found in touches.items()
        for package, line, name in sorted(found)
        if library_of(package) is None
    ]
    assert not unlisted, "use a public API, or list the name in a new gem_lightning/compat/<library>.py:\n" + "\n".join(unlisted)


# Overridden and inherited private names ----------------------------------------------------------------


def class_bodies(path: Path) -> dict[str, tuple[set[str], set[str], set[str]]]:
    """For each top-level class of ``path``: the methods it defines, and the attributes it assigns
    and reads through ``self``/``cls``."""
    classes = {}
    for node in ast.parse(path.read_text(), str(path)).body:
        if not isinstance(node, ast.ClassDef):
            continue
        defined = {item.name for item in node.body if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef))}
        assigned, read = set(), set()
        for child in ast.walk(node):
            if isinstance(child, ast.Attribute) and isinstance(child.value, ast.Name) and child.value.id in ("self", "cls"):
                (assigned if isinstance(child.ctx, ast.Store) else read).add(child.attr)
        classes[node.name] = (defined, assigned, read)
    return classes


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _from_library(cls: type) -> bool:
    return _third_party(cls.__module__.split(".")[0])


def package_classes() -> dict[type, tuple[set[str], set[str], set[str]]]:
    """Every top-level class of the package -> its class body's methods, assigned and read attributes."""
    classes = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        module = importlib.import_module(_module_name(path))
        for name, body in class_bodies(path).items():
            classes[getattr(module, name)] = body
    return classes


def library_private_uses() -> list[tuple[type, type | None, str]]:
    """``(class, owner, name)`` for each private name that a package class, with its package bases,
    overrides (a method a library class in its MRO defines too) or uses without defining or assigning
    it (inherited). ``owner``: the nearest library class in the MRO whose body has the name; None for
    an attribute the library sets on instances."""
    classes = package_classes()
    uses = []
    for cls in classes:
        mro = cls.__mro__
        library_bases = [base for base in mro if base not in classes and _from_library(base)]
        if not library_bases:
            continue
        bodies = [classes[base] for base in mro if base in classes]
        defined = set().union(*(body[0] for body in bodies))
        assigned = set().union(*(body[1] for body in bodies))
        read = set().union(*(body[2] for body in bodies))
        for name in sorted(name for name in defined | (read - assigned) if _private(name)):
            owner = next((base for base in mro if base not in classes and name in vars(base)), None)
            if owner is not None and _from_library(owner):
                uses.append((cls, owner, name))
            elif owner is None and name not in defined:
                uses.append((cls, None, name))
    return uses


def test_every_private_name_a_subclass_overrides_or_uses_is_listed():
    listed = {(owner, attribute) for owner, attribute, _ in (resolve(dotted) for _, dotted in LISTED)}
    uses = library_private_uses()
    seen = {(cls.__name__, owner.__qualname__ if owner else None, name) for cls, owner, name in uses}
    assert ("GemCLI", "LightningCLI", "_parse_ckpt_path") in seen, "the scan sees GemCLI's override"
    assert ("SignalSafeStreamingDataLoader", "StreamingDataLoader", "_get_iterator") in seen, "and one its package base makes"
    missing = [
        f"{cls.__module__}.{cls.__qualname__}.{name}"
        for cls, owner, name in uses
        if ((owner, name) not in listed if owner else not any((base, name) in listed for base in cls.__mro__ if _from_library(base)))
    ]
    assert not missing, "list these in their library's gem_lightning.compat module:\n" + "\n".join(missing)
