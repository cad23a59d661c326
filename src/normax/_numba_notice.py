"""One line on stderr when the Numba kernels of a family are compiled rather than loaded.

The Numba modules compile their kernels when first imported (explicit signatures) or first
called, which takes seconds; later processes load them from Numba's on-disk cache in a fraction
of that. A silent pause of that length looks like a hang, so the first real compilation of a
module's functions says so, once. Loading from the cache raises no ``numba:compile`` event and
prints nothing.
"""

from __future__ import annotations

import sys

from numba.core import event


class CompileNotice(event.Listener):
    """Listen to Numba compilations while a module defines its kernels.

    Parameters
    ----------
    family : str
        What is being compiled, for the message (``"softmax"``).
    module : str, optional
        Only compilations of functions defined in this module count (all when None).
    """

    def __init__(self, family: str, module: str | None = None):
        self.family = family
        self.module = module
        self.said = False
        event.register("numba:compile", self)

    def on_start(self, ev) -> None:
        if self.module is not None:
            func = getattr(ev.data.get("dispatcher"), "py_func", None)
            if getattr(func, "__module__", None) != self.module:
                return
        if not self.said:
            self.said = True
            print(
                f"normax: compiling the Numba {self.family} kernels "
                "(first use only; later runs load them from the cache)",
                file=sys.stderr,
                flush=True,
            )

    def on_end(self, ev) -> None:
        pass

    def close(self) -> None:
        """Stop listening (the module's kernels are all defined)."""
        event.unregister("numba:compile", self)
