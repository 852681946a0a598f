"""genbound: generalization analysis for fine-tuned models.

Load a checkpoint (PEFT adapter, genbound run, or full fine-tune) with
:func:`load_checkpoint`; every analysis reads the resulting :class:`Checkpoint`.
"""

import logging
import os

# Idle OpenMP threads sleep instead of spinning. With the default (spinning), torch's
# small LAPACK calls (the factor-space QRs and SVDs genbound makes by the hundred) run
# 10 to 100 times slower whenever another process keeps a core busy; passive waiting
# costs little on an idle machine. Takes effect only when genbound is imported before
# torch (as the CLI does) and never overrides a value the user set.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from genbound.checkpoint import Checkpoint, Update, load_checkpoint
from genbound.errors import GenboundError

__version__ = "0.1.0"
__all__ = ["Checkpoint", "GenboundError", "Update", "__version__", "load_checkpoint"]

logging.getLogger(__name__).addHandler(logging.NullHandler())
