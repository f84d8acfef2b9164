"""Interpreter start-up hook (run by ``iqa_plugins_autoload.pth``).

Start-up must stay cheap: this only puts a finder on ``sys.meta_path``. When ``pyiqa`` is imported,
the finder wraps pyiqa's loader so that, right after pyiqa's own ``__init__`` has run, the plugin's
metrics are registered. Nothing imports torch or pyiqa before the user does.
Set ``IQA_PLUGINS_NO_AUTOLOAD=1`` to disable; ``iqa_plugins.registration.register()`` then registers
by hand.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
import types

_TARGET = "pyiqa"


class _RegisterAfterExec(importlib.abc.Loader):
    def __init__(self, loader: importlib.abc.Loader) -> None:
        self._loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: types.ModuleType) -> None:
        self._loader.exec_module(module)
        from iqa_plugins.registration import register

        # Not swallowed: a plugin that silently fails to register is worse than a loud import error.
        register()

    def __getattr__(self, name: str):  # resource readers etc. of the wrapped loader
        return getattr(self._loader, name)


class _PyiqaImportHook(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path=None, target=None):  # noqa: ANN001
        if fullname != _TARGET:
            return None
        # Ask the remaining finders (not ourselves) for pyiqa's real spec.
        for finder in sys.meta_path:
            if isinstance(finder, _PyiqaImportHook) or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _RegisterAfterExec(spec.loader)
                return spec
        return None


def install() -> None:
    """Idempotent; registers at once if pyiqa is already imported."""
    if os.environ.get("IQA_PLUGINS_NO_AUTOLOAD") == "1":
        return
    if _TARGET in sys.modules:
        from iqa_plugins.registration import register

        register()
        return
    if not any(isinstance(f, _PyiqaImportHook) for f in sys.meta_path):
        sys.meta_path.insert(0, _PyiqaImportHook())
