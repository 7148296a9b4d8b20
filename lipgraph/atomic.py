"""Publishing files whole: a temp file in the target folder, then an atomic rename.

``tempfile.mkstemp`` creates files readable by their owner only (0600); a report or model
published that way surprises its users (a CI artifact another account cannot read), so the
temp file gets the mode an ordinary ``open(..., "w")`` would give before it is renamed.
"""

from __future__ import annotations

import os


def _default_mode() -> int:
    mask = os.umask(0)  # the only portable way to read the umask is to set it and put it back
    os.umask(mask)
    return 0o666 & ~mask


def publish(tmp: str | os.PathLike[str], dest: str | os.PathLike[str]) -> None:
    """Give ``tmp`` the usual file mode and atomically rename it to ``dest``."""
    os.chmod(tmp, _default_mode())
    os.replace(tmp, dest)
