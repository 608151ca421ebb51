r"""Latent-variable models as Pyro programs that Pyro's own machinery can train.

A *program* is a pair of callables, ``model(x, **kwargs)`` and ``guide(x, **kwargs)``, whose
sample sites of datapoint-local latents lie inside a ``pyro.plate("data", ...)`` over the first
dimension of ``x``. Every estimator in pvae is defined on the traces of such a pair (see
:mod:`pvae.traces`), so the pair can come from three places:

* a :class:`PyroProgram` subclass, such as :class:`pvae.VAE` or :class:`pvae.HierarchicalVAE`;
* any object with ``.model`` and ``.guide`` (a user's ``PyroModule`` with those methods);
* two plain functions, passed as ``(model, guide)``.

**Parameters and Pyro's routes.** A :class:`PyroProgram` keeps its parameters as ordinary module
parameters (so ``module.parameters()``, ``state_dict`` and a torch optimizer work as usual) *and*
announces them as Pyro ``param`` sites whenever its ``model`` or ``guide`` runs under a Pyro
handler. That is what ``pyro.infer.SVI`` with a ``pyro.optim`` optimizer needs: it collects the
``param`` sites of a step and optimizes those tensors. The sites are named
``"<instance name>.<parameter path>"`` (e.g. ``"VAE_0.encoder.net.layers.0.weight"``), so two
models in one process never share a name; and a name whose stored tensor is not this module's
parameter (left from a replaced component, or a cleared and refilled store) is re-pointed at the
module's own tensor, so the optimizer always updates the tensors the program computes with.
``model`` and ``guide`` are ``nn.Module`` callables bound to the program, so Pyro's
PyTorch-style API also sees every parameter:
``torch.optim.Adam(pyro.infer.Trace_ELBO()(vae.model, vae.guide).parameters())``.
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect
import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pyro
import torch
from pyro.nn import PyroModule
from pyro.poutine.runtime import am_i_wrapped
from torch import nn

from pvae._checks import positive_int

__all__ = ["Program", "PyroProgram", "as_program", "owner_of", "param_sites"]

_COUNTER = itertools.count()
_ANNOUNCE = contextvars.ContextVar("pvae_announce_params", default=True)


@contextlib.contextmanager
def param_sites(enabled: bool) -> Iterator[None]:
    """Turn the announcement of parameters as Pyro ``param`` sites on or off.

    :func:`pvae.fit` trains through ``module.parameters()`` and has no use for the sites; it
    turns them off so each step skips the bookkeeping.
    """
    token = _ANNOUNCE.set(bool(enabled))
    try:
        yield
    finally:
        _ANNOUNCE.reset(token)


class _Bound(nn.Module):
    """``program.model`` / ``program.guide``: an ``nn.Module`` whose only child is the program,
    so Pyro's ``ELBO(model, guide).parameters()`` finds every parameter."""

    def __init__(self, owner: PyroProgram, role: str, fn: Callable[..., Any]) -> None:
        super().__init__()
        self.owner = owner
        self.role = role
        self.fn = fn

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        owner = self.owner
        if am_i_wrapped() and _ANNOUNCE.get():
            owner.register_param_sites()
        return self.fn(owner, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"{self.role} of {self.owner.pyro_name}"


class _Role:
    """Descriptor that makes a subclass's ``def model(...)``/``def guide(...)`` a bound module."""

    def __init__(self, role: str, fn: Callable[..., Any]) -> None:
        self.role = role
        self.fn = fn  # the defining class's function, so super().model(...) reaches it

    def __get__(self, obj: PyroProgram | None, objtype: type | None = None) -> Any:
        if obj is None:
            return self.fn
        return _Bound(obj, self.role, self.fn)


class PyroProgram(PyroModule):
    """Base class of pvae's latent-variable models: a ``PyroModule`` whose ``model`` and
    ``guide`` methods are Pyro programs over module-local parameters.

    Subclasses write ``def model(self, x, ...)`` and ``def guide(self, x, ...)`` as usual; the
    class turns them into bound ``nn.Module`` callables that announce the parameters to Pyro
    (see the module docstring). ``name`` prefixes the parameter sites' names; by default it is
    the class name and a process-wide counter, unique per instance.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for role in ("model", "guide"):
            fn = cls.__dict__.get(role)
            if inspect.isfunction(fn):
                setattr(cls, role, _Role(role, fn))

    def __init__(self, name: str | None = None) -> None:
        super().__init__()
        self.pyro_name = name or f"{type(self).__name__}_{next(_COUNTER)}"

    @property
    def device(self) -> torch.device:
        """Device of the program's parameters (CPU for one without any)."""
        return module_device(self)

    def _fix_data_shape(self, data_shape: Sequence[int]) -> tuple[int, ...] | None:
        """For ``build``: the checked shape when it is new, ``None`` when the program was built
        for it already; ``ValueError`` for another shape."""
        shape = tuple(positive_int("data_shape entries", s) for s in data_shape)
        built = getattr(self, "data_shape", None)
        if built is None:
            return shape
        if shape != built:
            raise ValueError(
                f"data shape {shape} does not match the shape this {type(self).__name__} was "
                f"built for, {built}"
            )
        return None

    def register_param_sites(self) -> None:
        """Announce every trainable parameter as a ``pyro.param`` site of this instance."""
        store = pyro.get_param_store()
        for path, p in self.named_parameters():
            if not p.requires_grad:
                continue
            full = f"{self.pyro_name}.{path}"
            held = store._params.get(full)
            if held is not None and held is not p:
                del store[full]  # stale: another tensor under our name; point it at ours
            pyro.param(full, p)


@dataclass(frozen=True)
class Program:
    """A model/guide pair with the module that owns their parameters (if any).

    Attributes:
        model: ``model(x, **kwargs)``.
        guide: ``guide(x, **kwargs)``.
        owner: The ``nn.Module`` whose parameters the pair uses, or ``None`` (plain functions).
    """

    model: Callable[..., Any]
    guide: Callable[..., Any]
    owner: nn.Module | None

    @property
    def device(self) -> torch.device:
        return module_device(self.owner) if self.owner is not None else torch.device("cpu")


def module_device(module: nn.Module) -> torch.device:
    """Device of a module's first parameter or buffer (CPU for a module without any)."""
    for t in itertools.chain(module.parameters(), module.buffers()):
        return t.device
    return torch.device("cpu")


def owner_of(fn: Any) -> nn.Module | None:
    if isinstance(fn, _Bound):
        return fn.owner
    if isinstance(fn, nn.Module):
        return fn
    owner = getattr(fn, "__self__", None)
    return owner if isinstance(owner, nn.Module) else None


def as_program(obj: Any, guide: Any = None) -> Program:
    """Resolve what a user passed as a model into a :class:`Program`.

    Args:
        obj: An object with ``.model`` and ``.guide`` (a :class:`PyroProgram`, a user's
            ``PyroModule``), a :class:`Program`, or a model callable (then ``guide`` is needed).
        guide: The guide, when ``obj`` is a model callable.

    Raises:
        TypeError: neither form, naming what was received.
    """
    if isinstance(obj, Program) and guide is None:
        return obj
    if guide is None:
        model, g = getattr(obj, "model", None), getattr(obj, "guide", None)
        if callable(model) and callable(g):
            owner = obj if isinstance(obj, nn.Module) else owner_of(model)
            return Program(model, g, owner)
        raise TypeError(
            "expected an object with .model and .guide (e.g. a pvae.VAE or a PyroModule with "
            f"model/guide methods) or a model callable and a guide, got {type(obj).__name__}"
        )
    if not callable(obj) or not callable(guide):
        raise TypeError(
            f"model and guide must be callables, got {type(obj).__name__} and "
            f"{type(guide).__name__}"
        )
    return Program(obj, guide, owner_of(obj) or owner_of(guide))
