"""The optimizer machinery shared by SGD, Momentum, RMSprop and Adam(W).

An optimizer flattens its parameters into one list, keeps per-parameter state arrays (allocated
on the first step that needs them, as torch.optim does), and on ``step(grads)`` checks every
gradient and every hyperparameter first, then runs one fused kernel per parameter group and
dtype. A bad call raises before anything is written.

Mixed precision: float32 parameters are the master weights. Their gradients may be float16 or
bfloat16 (widened to float32 exactly inside the fused pass; the state stays float32), and
``step(grads, half_params=...)`` also writes a float16/bfloat16 copy of every updated parameter
in the same pass, each element rounded once to nearest even: the weights a half-precision model
computes with. This is the "master weights" recipe of mixed-precision training (a float32 step,
then ``p.to(torch.bfloat16)`` for the model), without a second pass over the weights.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np

from . import _params

try:
    from .._optim_ext import fused_step
except ImportError:  # pragma: no cover - exercised only without a compiled extension
    from ._check import fused_step

_MAX_STEP = 2**53


def check_nonneg(value, name: str) -> float:
    """A finite real number >= 0."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(
        value, (int, float, np.floating, np.integer)
    ):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    try:
        v = float(value)
    except OverflowError:  # an int beyond the double range: a number, not a finite one
        v = math.inf
    if not (math.isfinite(v) and v >= 0.0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return v


def check_unit(value, name: str, *, closed: bool = False) -> float:
    """A real number in [0, 1) (or [0, 1] with ``closed``)."""
    v = check_nonneg(value, name)
    if v > 1.0 or (v == 1.0 and not closed):
        raise ValueError(f"{name} must be in [0, {'1]' if closed else '1)'}, got {value!r}")
    return v


def check_bool(value, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


class Optimizer:
    """Base class: parameters, groups, state, ``step``, ``state_dict``.

    Subclasses set ``_kind`` (the fused kernel), ``_state_names`` (every state array they may
    keep) and implement ``_check(group, where)``, ``_slots(group)`` (the state names passed as
    s0, s1, s2, or None) and ``_hyper(group, step, first)`` -> ``(flags, scalars)``.
    """

    _kind: int
    _state_names: tuple[str, ...]

    def __init__(self, params, defaults: dict):
        self.defaults = dict(defaults)
        self._check(self.defaults, "")
        groups, self._grouped = _params.split_groups(params)
        self.param_groups: list[dict] = []
        self._arrays: list[np.ndarray] = []
        self._labels: list[str] = []
        self._layout: list[tuple[list, bool, int, int]] = []  # keys, by_name, start, stop
        for gi, raw in enumerate(groups):
            self._add_group(gi, raw)
        _params.check_distinct(self._arrays, self._labels)
        names = [k for keys, by_name, _, _ in self._layout if by_name for k in keys]
        self._flat_dict = (
            self._grouped
            and all(by for _, by, _, _ in self._layout)
            and len(set(names)) == len(names)
        )
        self.state: list[dict[str, np.ndarray]] = [{} for _ in self._arrays]
        self._steps = [0] * len(self.param_groups)
        self._runs = [self._dtype_runs(start, stop) for _, _, start, stop in self._layout]

    def _dtype_runs(self, start: int, stop: int) -> list[tuple[list[int], list[np.ndarray]]]:
        """The parameters of a group split by dtype (one fused call each): indices, arrays."""
        runs: dict[np.dtype, list[int]] = {}
        for i in range(start, stop):
            runs.setdefault(self._arrays[i].dtype, []).append(i)
        return [(idx, [self._arrays[i] for i in idx]) for idx in runs.values()]

    def _add_group(self, gi: int, raw: dict) -> None:
        where = f"param_groups[{gi}]" if self._grouped else "params"
        unknown = sorted(set(raw) - set(self.defaults) - {"params"})
        if unknown:
            raise ValueError(
                f"{where} has unknown options {unknown}; known: {sorted(self.defaults)}"
            )
        container = raw["params"]
        pairs = _params.entries(container)
        if not pairs:
            raise ValueError(f"{where} holds no parameters")
        group = {**self.defaults, **raw}
        self._check(group, f"{where}: " if self._grouped else "")
        start = len(self._arrays)
        for key, p in pairs:
            name = _params.label(key, gi if self._grouped else None)
            self._arrays.append(_params.check_param(p, name))
            self._labels.append(name)
        by_name = isinstance(container, Mapping)
        self._layout.append(([k for k, _ in pairs], by_name, start, len(self._arrays)))
        self.param_groups.append(group)

    # ---- subclass interface -------------------------------------------------------------
    def _check(self, group: dict, where: str) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _slots(self, group: dict) -> tuple[str | None, str | None, str | None]:
        raise NotImplementedError  # pragma: no cover - abstract

    def _hyper(self, group: dict, step: int, first: bool) -> tuple[int, NamedTuple]:
        raise NotImplementedError  # pragma: no cover - abstract

    # ---- stepping -----------------------------------------------------------------------
    def _flat(self, values, what: str) -> list:
        """The arrays of ``values`` (the structure of the params) in parameter order."""
        if not self._grouped:
            keys, by_name, _, _ = self._layout[0]
            return _params.match(values, keys, by_name, what)
        if isinstance(values, Mapping) and self._flat_dict:
            keys = [k for ks, _, _, _ in self._layout for k in ks]
            return _params.match(values, keys, True, what)
        if not isinstance(values, Sequence) or isinstance(values, (str, np.ndarray)):
            raise TypeError(
                f"with parameter groups, {what} must be a list with one list or "
                f"dict per group, got {type(values).__name__}"
            )
        if len(values) != len(self._layout):
            raise ValueError(f"{what} has {len(values)} groups, params has {len(self._layout)}")
        flat = []
        for gi, (keys, by_name, _, _) in enumerate(self._layout):
            flat += _params.match(values[gi], keys, by_name, f"{what}[{gi}]")
        return flat

    def _flat_grads(self, grads) -> list[np.ndarray]:
        return [
            _params.check_grad(g, p, name)
            for g, p, name in zip(
                self._flat(grads, "grads"), self._arrays, self._labels, strict=True
            )
        ]

    def _flat_half(self, half_params, grads: list[np.ndarray]) -> list[np.ndarray]:
        flat = [
            _params.check_half(h, p, name)
            for h, p, name in zip(
                self._flat(half_params, "half_params"), self._arrays, self._labels, strict=True
            )
        ]
        _params.check_half_distinct(flat, self._arrays, grads, self._labels)
        return flat

    def step(self, grads, half_params=None) -> None:
        """Update every parameter in place from ``grads`` (same structure as the params).

        Every gradient, half copy and hyperparameter is checked before any array is written.

        Parameters
        ----------
        grads : list or dict of arrays, or a list of them per parameter group
            One gradient per parameter, of its shape, in its dtype or, for a float32
            parameter, in float16 or bfloat16 (widened to float32 exactly as it is read).
        half_params : same structure as the params, optional
            Writeable float16 or bfloat16 arrays, one per (float32) parameter and of its
            shape, overwritten in the same pass with the updated parameter rounded once to
            nearest even. Each must be a separate array (sharing memory with a parameter, a
            gradient or another copy is a ValueError).

        Examples
        --------
        float32 master weights, bfloat16 gradients and a bfloat16 copy for the forward pass:

        >>> import numpy as np, ml_dtypes, normax
        >>> bf16 = ml_dtypes.bfloat16
        >>> master = {"w": np.full(3, 1.0, np.float32)}
        >>> model = {"w": master["w"].astype(bf16)}        # the weights the model computes with
        >>> opt = normax.optim.AdamW(master, lr=1e-3)
        >>> opt.step({"w": np.ones(3, bf16)}, half_params=model)
        >>> master["w"]                                     # the update is kept in float32
        array([0.99899, 0.99899, 0.99899], dtype=float32)
        >>> print(model["w"].dtype, model["w"])             # rounded once: 0.99899 in bfloat16
        bfloat16 [1 1 1]
        """
        flat = self._flat_grads(grads)
        half = None if half_params is None else self._flat_half(half_params, flat)
        for gi, group in enumerate(self.param_groups):
            self._check(group, f"param_groups[{gi}]: " if self._grouped else "")
        # one fused call per run of parameters whose gradients and copies share their dtypes
        # (usually every run; a call needs one dtype per list)
        mixed = half is not None or len({g.dtype.type for g in flat}) > 1
        for gi, group in enumerate(self.param_groups):
            self._step_group(gi, group, flat, half, mixed)

    def _step_group(self, gi, group: dict, flat: list, half: list | None, mixed: bool) -> None:
        _, _, start, stop = self._layout[gi]
        slots = self._slots(group)
        first = False
        for i in range(start, stop):
            for j, name in enumerate(slots):
                if name is not None and name not in self.state[i]:
                    self.state[i][name] = np.zeros_like(self._arrays[i])
                    first = first or j == 0
        t = self._steps[gi] + 1
        flags, hyper = self._hyper(group, t, first)
        for idx, params in self._calls(gi, flat, half, mixed):
            states = [
                None if name is None else [self.state[i][name] for i in idx] for name in slots
            ]
            copies = None if half is None else [half[i] for i in idx]
            fused_step(self._kind, flags, hyper, params, [flat[i] for i in idx], *states, copies)
        self._steps[gi] = t

    def _calls(self, gi: int, flat: list, half: list | None, mixed: bool) -> list[tuple]:
        """``(indices, params)`` of each fused call of group ``gi``."""
        if not mixed:
            return self._runs[gi]
        calls: dict[tuple, list[int]] = {}
        for idx, _ in self._runs[gi]:
            for i in idx:
                key = (
                    self._arrays[i].dtype,
                    flat[i].dtype.type,
                    None if half is None else half[i].dtype.type,
                )
                calls.setdefault(key, []).append(i)
        return [(idx, [self._arrays[i] for i in idx]) for idx in calls.values()]

    def set_lr(self, lr: float) -> None:
        """Set the learning rate of every group (e.g. from a schedule: ``set_lr(sched(epoch))``)."""
        lr = check_nonneg(lr, "lr")
        for group in self.param_groups:
            group["lr"] = lr

    @property
    def steps(self) -> list[int]:
        """Number of updates applied so far, per parameter group."""
        return list(self._steps)

    # ---- state --------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """A snapshot (copies) of the hyperparameters, step counts and state arrays."""
        groups = []
        for gi, group in enumerate(self.param_groups):
            _, _, start, stop = self._layout[gi]
            opts = {k: v for k, v in group.items() if k != "params"}
            groups.append({**opts, "params": list(range(start, stop)), "step": self._steps[gi]})
        state = {i: {k: a.copy() for k, a in st.items()} for i, st in enumerate(self.state) if st}
        return {"optimizer": type(self).__name__, "param_groups": groups, "state": state}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore a :meth:`state_dict`; checked completely before anything is changed."""
        groups, steps, state = self._checked_state(state_dict)
        for group, new in zip(self.param_groups, groups, strict=True):
            group.update(new)
        self._steps = steps
        self.state = state

    def _checked_state(self, sd) -> tuple[list[dict], list[int], list[dict]]:
        name = type(self).__name__
        if not isinstance(sd, Mapping) or set(sd) != {"optimizer", "param_groups", "state"}:
            raise ValueError(
                "state_dict must be a dict with keys 'optimizer', 'param_groups' and 'state'"
            )
        if sd["optimizer"] != name:
            raise ValueError(f"state_dict is for a {sd['optimizer']} optimizer, not {name}")
        raw_groups = sd["param_groups"]
        if not isinstance(raw_groups, Sequence) or len(raw_groups) != len(self.param_groups):
            n = len(raw_groups) if isinstance(raw_groups, Sequence) else raw_groups
            raise ValueError(
                f"state_dict has {n} parameter groups, this optimizer has {len(self.param_groups)}"
            )
        groups, steps = [], []
        for gi, raw in enumerate(raw_groups):
            group, step = self._checked_group(gi, raw)
            groups.append(group)
            steps.append(step)
        return groups, steps, self._checked_arrays(sd["state"])

    def _checked_group(self, gi: int, raw) -> tuple[dict, int]:
        _, _, start, stop = self._layout[gi]
        where = f"state_dict param_groups[{gi}]"
        if not isinstance(raw, Mapping):
            raise ValueError(f"{where} must be a dict, got {type(raw).__name__}")
        expected = set(self.defaults) | {"params", "step"}
        if set(raw) != expected:
            raise ValueError(f"{where} has keys {sorted(raw)}, expected {sorted(expected)}")
        if list(raw["params"]) != list(range(start, stop)):
            raise ValueError(
                f"{where} holds parameters {list(raw['params'])}, this optimizer's "
                f"group holds {list(range(start, stop))}"
            )
        step = raw["step"]
        # beyond 2**53 the bias corrections (beta**step) cannot tell one step from the next,
        # and far beyond it the exponent no longer converts to a float
        if (
            isinstance(step, bool)
            or not isinstance(step, (int, np.integer))
            or not 0 <= step <= _MAX_STEP
        ):
            raise ValueError(f"{where} step must be an int in [0, 2**53], got {step!r}")
        group = {k: v for k, v in raw.items() if k not in ("params", "step")}
        self._check(group, f"{where}: ")
        return group, int(step)

    def _checked_arrays(self, raw) -> list[dict]:
        if not isinstance(raw, Mapping):
            raise ValueError(f"state_dict state must be a dict, got {type(raw).__name__}")
        state: list[dict] = [{} for _ in self._arrays]
        for key, entry in raw.items():
            try:
                i = operator.index(key)
            except TypeError:
                raise ValueError(f"state_dict state key {key!r} is not a parameter index") from None
            if not 0 <= i < len(self._arrays) or not isinstance(entry, Mapping):
                raise ValueError(f"state_dict state[{key!r}] does not match a parameter")
            p = self._arrays[i]
            for name, arr in entry.items():
                if name not in self._state_names:
                    raise ValueError(
                        f"state_dict state[{i}] has unknown entry {name!r}; "
                        f"{type(self).__name__} keeps {list(self._state_names)}"
                    )
                if not isinstance(arr, np.ndarray) or arr.shape != p.shape or arr.dtype != p.dtype:
                    got = (arr.shape, arr.dtype) if isinstance(arr, np.ndarray) else type(arr)
                    raise ValueError(
                        f"state_dict state[{i}][{name!r}] is {got}, expected shape "
                        f"{p.shape} and dtype {p.dtype} like {self._labels[i]}"
                    )
                state[i][name] = np.array(arr, order="C", copy=True)
        return state

    def save(self, path) -> None:
        """Write :meth:`state_dict` to ``path`` as .npz, atomically (see :func:`save_state`)."""
        from ._state import save_state

        save_state(self, path)

    def load(self, path) -> None:
        """Restore the state saved by :meth:`save`; nothing changes if the file is bad."""
        from ._state import load_state

        load_state(self, path)

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.defaults.items())
        return f"{type(self).__name__}({len(self._arrays)} arrays, {opts})"
