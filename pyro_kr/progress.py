"""Progress of long loops (:func:`pyro_kr.fit`, :func:`pyro_kr.polish`): a tqdm bar on a
terminal or in a notebook, one plain line every 10 % of the work in logs and CI (stderr not a
terminal; and one where the loop stopped early), nothing when turned off."""

from __future__ import annotations

import sys
import time

from tqdm.auto import tqdm

__all__ = ["LineProgress", "progress_bar"]


class LineProgress:
    """Progress for logs and CI (not a terminal): one plain line every 10% of ``total``, and
    one at :meth:`close` where the work stopped between two.

    Example:
        >>> bar = LineProgress(10, 0, desc="demo", unit="step")
        >>> bar.set_postfix({"loss": "1.5"})
        >>> bar.update(10)  # doctest: +SKIP
        demo: step 10/10 loss=1.5 ... step/s
    """

    def __init__(self, total: int, initial: int, desc: str = "fit", unit: str = "step") -> None:
        self.total, self.n, self.desc, self.unit = total, initial, desc, unit
        self.every = max(1, total // 10)
        self.postfix: dict[str, str] = {}
        self.began = time.perf_counter()
        self.first = self.shown = initial

    def update(self, n: int = 1) -> None:
        for _ in range(n):  # one line per 10 % crossed, whatever the increment
            self.n += 1
            if self.n % self.every == 0 or self.n == self.total:
                self._line()

    def _line(self) -> None:
        rate = (self.n - self.first) / max(time.perf_counter() - self.began, 1e-9)
        fields = " ".join(f"{k}={v}" for k, v in self.postfix.items())
        line = f"{self.desc}: {self.unit} {self.n}/{self.total} {fields} {rate:.3g} {self.unit}/s"
        print(line.replace("  ", " "), file=sys.stderr, flush=True)
        self.shown = self.n

    def set_postfix(self, postfix: dict[str, str], refresh: bool = False) -> None:
        self.postfix = postfix

    def close(self) -> None:
        """A last line where the work ended between two (a loop that stopped early)."""
        if self.n != self.shown:
            self._line()


def progress_bar(progress: bool, total: int, initial: int = 0, desc: str = "fit",
                 unit: str = "step"):
    """A bar with tqdm's ``update``/``set_postfix``/``close``: tqdm on a terminal or in a
    notebook, :class:`LineProgress` otherwise, a disabled tqdm if ``progress`` is false.

    Example:
        >>> bar = progress_bar(False, 100)
        >>> bar.update(5); bar.close()
    """
    if not progress:
        return tqdm(total=total, initial=initial, disable=True)
    notebook = any(cls.__module__ == "tqdm.notebook" for cls in tqdm.__mro__)
    if notebook or sys.stderr.isatty():
        return tqdm(total=total, initial=initial, desc=desc, unit=unit)
    return LineProgress(total, initial, desc=desc, unit=unit)
