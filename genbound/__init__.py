"""genbound: generalization analysis for fine-tuned models.

Load a checkpoint (PEFT adapter, genbound run, or full fine-tune) with
:func:`load_checkpoint`; every analysis reads the resulting :class:`Checkpoint`.
"""

import logging

from genbound.checkpoint import Checkpoint, Update, load_checkpoint
from genbound.errors import GenboundError

__version__ = "0.1.0"
__all__ = ["Checkpoint", "GenboundError", "Update", "__version__", "load_checkpoint"]

logging.getLogger(__name__).addHandler(logging.NullHandler())
