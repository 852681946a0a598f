"""Leave a model exactly as found: :func:`preserved_state` is :func:`genbound.state.preserved`.

Kept under this name for the code that imports it from here; see :mod:`genbound.state`
for what is restored (modes, ``requires_grad``, gradients, attention settings, every
global RNG, and with ``parameters=True`` the parameter values).
"""

from __future__ import annotations

from genbound.state import preserved as preserved_state

__all__ = ["preserved_state"]
