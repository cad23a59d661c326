"""One line on stderr when Numba kernels are compiled rather than loaded.

The Numba modules compile their kernels when first imported (explicit signatures) or first
called, which takes seconds; later processes load them from Numba's on-disk cache in a fraction
of that. A silent pause of that length looks like a hang, so a compilation says so. A module
whose kernels all compile at import says one line for all of them. A module whose drivers compile
lazily, one per kernel and dtype as a program first calls them (tens of seconds each), names its
drivers, and each driver's compilation for new argument types says its own line, naming the
kernel and the dtype. Loading from the cache raises no ``numba:compile`` event and prints
nothing.
"""

from __future__ import annotations

import sys

from numba.core import event, types

# The Numba kernels see half-precision data through 16-bit integer views (_half_numba.view).
_VIEWED = {"uint16": "float16", "int16": "bfloat16"}


def _dtype_of(args) -> str | None:
    """The element type, as the user knows it, of the first array among a compilation's
    argument types (None without one)."""
    for arg in args or ():
        if isinstance(arg, types.Array):
            name = str(arg.dtype)
            return _VIEWED.get(name, name)
    return None


class CompileNotice(event.Listener):
    """Listen to Numba compilations while a module defines or runs its kernels.

    Parameters
    ----------
    family : str
        What is being compiled, for the message (``"softmax"``).
    module : str, optional
        Only compilations of functions defined in this module count (all when None).
    drivers : dict, optional
        The module's lazily compiled entry points, by function name, with what each computes
        (``{"_backward": "softmax backward"}``). Given, every compilation of a driver for new
        argument types says one line naming its kernel and dtype; compilations of other
        functions say the family's line once. Without it, the first compilation says that line
        and later ones nothing.
    """

    def __init__(self, family: str, module: str | None = None, drivers: dict | None = None):
        self.family = family
        self.module = module
        self.drivers = dict(drivers or {})
        self.said = False
        self._depth = 0  # compilations in progress: the ones inside another say nothing
        self._seen: set = set()
        event.register("numba:compile", self)

    def _say(self, what: str, dtype: str | None = None) -> None:
        where = f" for {dtype}" if dtype else ""
        print(
            f"normax: compiling the Numba {what}{where} "
            "(first use only; later runs load them from the cache)",
            file=sys.stderr,
            flush=True,
        )

    def on_start(self, ev) -> None:
        self._depth += 1
        if self._depth > 1:  # a callee compiled for its caller: the caller has spoken
            return
        func = getattr(ev.data.get("dispatcher"), "py_func", None)
        if self.module is not None and getattr(func, "__module__", None) != self.module:
            return
        name = getattr(func, "__name__", None)
        if name in self.drivers:
            key = (name, tuple(ev.data.get("args") or ()))
            if key not in self._seen:
                self._seen.add(key)
                self._say(f"{self.drivers[name]} kernels", _dtype_of(ev.data.get("args")))
        elif not self.said:
            self.said = True
            self._say(f"{self.family} kernels")

    def on_end(self, ev) -> None:
        self._depth = max(0, self._depth - 1)  # listening may start mid-compilation

    def close(self) -> None:
        """Stop listening (the module's kernels are all defined)."""
        event.unregister("numba:compile", self)
