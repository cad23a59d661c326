"""A progress bar for studies: trials done, best value and best parameters (tqdm, optional)."""

from __future__ import annotations

import sys

__all__ = ["Progress", "format_params"]


def format_params(params: dict) -> str:
    """``lr=0.0031, layers=3`` with floats to 3 significant digits."""
    return ", ".join(
        f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()
    )


class Progress:
    """tqdm bar on standard error when ``enabled`` and tqdm is installed; otherwise silent."""

    def __init__(self, total: int, *, enabled: bool = True):
        self._bar = None
        if enabled:
            try:
                from tqdm import tqdm
            except ImportError:  # tqdm is optional
                return
            self._bar = tqdm(total=total, desc="trials", unit="trial", file=sys.stderr)

    def update(self, best) -> None:
        if self._bar is None:
            return
        if best is not None:
            self._bar.set_postfix_str(
                f"best {best.value:.4g} ({format_params(best.params)})", refresh=False
            )
        self._bar.update(1)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
