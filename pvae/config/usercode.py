"""A user's own model class for :mod:`pvae.config` (``[model] class = "package.module:Class"``):
imported, instantiated with ``[model.kwargs]`` and built for the data's shape. The checks of what
pvae asks of the class are ``ValueError``/``TypeError``; an error the user's code raises itself,
on import, in ``__init__`` or in ``build``, is a :class:`UserCodeError`: one line naming the
module, the class and the error, the traceback its ``__cause__``."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
from collections.abc import Mapping
from typing import Any

from torch import nn

__all__ = ["UserCodeError", "build_class", "class_path", "module_file"]


class UserCodeError(ValueError):
    """A user's own code, the module ``model.class`` names, raised while pvae imported it,
    instantiated the class or built it. The message names the module, the class and the error in
    one line; the error itself is the ``__cause__`` (``PVAE_DEBUG=1`` prints its traceback)."""


def class_path(path: Any) -> tuple[str, str]:
    """``"package.module:ClassName"`` as ``(module, class name)``."""
    if not isinstance(path, str) or path.count(":") != 1 or not all(path.split(":")):
        raise ValueError(f"model.class must be 'package.module:ClassName', got {path!r}")
    module, name = path.split(":")
    return module, name


def build_class(
    path: str, kwargs: Mapping[str, Any] | None, data_shape: tuple[int, ...]
) -> nn.Module:
    """Import the class ``path`` names, instantiate it with ``kwargs`` and build it for the data
    (if it has ``build(data_shape)``)."""
    cls = _import_class(path)
    kwargs = dict(kwargs or {})
    params = inspect.signature(cls).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        valid = sorted(
            n for n, p in params.items() if p.kind not in (p.VAR_POSITIONAL, p.POSITIONAL_ONLY)
        )
        for key in kwargs:
            if key not in valid:
                raise ValueError(
                    f"unknown keyword argument {key!r} in model.kwargs for {path!r}; valid: "
                    f"{', '.join(valid) if valid else '(none)'}"
                )
    call = f"{cls.__name__}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})"
    where = f" in {module_file(cls.__module__)}"
    try:
        module = cls(**kwargs)
    except Exception as err:
        raise _failed(path, call + where, err) from err
    if callable(getattr(module, "build", None)):
        try:
            module.build(data_shape)
        except Exception as err:
            raise _failed(path, f"{cls.__name__}.build({data_shape}){where}", err) from err
    return module


def _failed(path: str, what: str, err: BaseException, when: str = "") -> UserCodeError:
    return UserCodeError(
        f"model.class {path} failed: {what} raised {type(err).__name__}: {err}{when}"
    )


def module_file(module_name: str) -> str:
    """The file of a module (relative to the current directory when inside it), else its name;
    nothing is imported but the module's parent packages."""
    try:
        origin = getattr(importlib.util.find_spec(module_name), "origin", None)
    except Exception:  # a parent package that fails to import
        origin = None
    if not origin or not os.path.isfile(origin):
        return module_name
    rel = os.path.relpath(origin)
    return origin if rel.startswith(os.pardir) else rel


def _import_class(path: str) -> type:
    """The class ``path`` names; its module's own errors are :class:`UserCodeError`."""
    module_name, class_name = class_path(path)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name is None or not f"{module_name}.".startswith(f"{err.name}."):
            raise _failed(path, module_file(module_name), err, " on import") from err
        raise ValueError(
            f"model.class {path!r}: cannot import module {module_name!r} ({err}); is it on the "
            "Python path (the current directory, PYTHONPATH, an installed package)?"
        ) from err
    except Exception as err:
        raise _failed(path, module_file(module_name), err, " on import") from err
    cls = getattr(module, class_name, None)
    if cls is None:
        public = sorted(
            n
            for n, v in vars(module).items()
            if isinstance(v, type) and v.__module__ == module_name and not n.startswith("_")
        )
        raise ValueError(
            f"model.class {path!r}: module {module_name!r} has no attribute {class_name!r}; "
            f"its classes: {', '.join(public) if public else '(none)'}"
        )
    if not (
        isinstance(cls, type)
        and issubclass(cls, nn.Module)
        and callable(getattr(cls, "model", None))
        and callable(getattr(cls, "guide", None))
    ):
        raise TypeError(
            f"model.class {path!r} must be an nn.Module class with model and guide methods "
            f"(e.g. a pvae.program.PyroProgram subclass), got {cls!r}"
        )
    return cls
