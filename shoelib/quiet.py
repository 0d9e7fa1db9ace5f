"""Library log messages that are false or harmless here, filtered in this one place.

Each is matched by the logger that emits it and the start of its text, so that every other
message of those libraries still shows. Installed when shoelib is imported (logging only:
nothing heavy is imported).
"""

from __future__ import annotations

import logging

KNOWN = {
    # transformers falls back to its PIL image processors without torchvision, which this
    # project does not install: the fallback is what it uses, nothing is missing.
    "transformers.utils.import_utils": "requires torchvision (not installed); falling back to",
    # "... will result in indexing errors" is false for the Stable Diffusion pipelines, which
    # truncate prompts to the text encoder's length; shoelib.pipeline.truncation_note says so
    # in one line instead of this and diffusers' token dump below.
    "transformers.tokenization_utils_base": "Token indices sequence length is longer than",
    "diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion":
        "The following part of your input was truncated",
}


class _Drop(logging.Filter):
    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def install() -> None:
    """Attach the filters (once: a second call adds nothing)."""
    for name, text in KNOWN.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _Drop) and f.text == text for f in logger.filters):
            logger.addFilter(_Drop(text))
