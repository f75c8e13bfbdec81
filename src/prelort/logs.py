"""Library noise kept off the terminal, in the main process and in every worker process."""

from __future__ import annotations

import logging
import os
import sys
import warnings

# Loggers whose INFO/DEBUG lines are noise to a prelort user (they flood `-v`): rouge-score's absl,
# matplotlib's font manager, PIL's plugin loading.
CHATTY = ("absl", "matplotlib", "PIL")


def quiet_libraries(quiet: bool = False) -> None:
    """Keep the terminal for our progress: transformers' load reports and bars are noise here.

    Args:
        quiet: also silence third-party warnings (deprecations, bitsandbytes' optional-kernel
            notice): ``--quiet`` leaves only prelort's own errors.
    """
    for name in CHATTY:
        logging.getLogger(name).setLevel(logging.WARNING)
    # Read by transformers and huggingface_hub when they are imported: set here, they keep a
    # command that never loads a model from importing them (1.4 s of a config error's 5 s).
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if "transformers" in sys.modules:  # imported already: it has read its environment
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    if quiet:
        logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
        for category in (FutureWarning, DeprecationWarning, UserWarning):
            warnings.filterwarnings("ignore", category=category)
