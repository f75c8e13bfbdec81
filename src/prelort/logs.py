"""Library noise kept off the terminal, in the main process and in every worker process."""

from __future__ import annotations

import logging


def quiet_libraries() -> None:
    """Keep the terminal for our progress: transformers' load reports and bars are noise here."""
    logging.getLogger("absl").setLevel(logging.WARNING)  # rouge-score logs each scorer it builds
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass
