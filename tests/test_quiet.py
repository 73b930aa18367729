"""Known harmless library messages are dropped at their logger; every other message still shows."""

import logging
import warnings

from support import quiet


class _Keep(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_only_the_named_harmless_messages_are_dropped():
    quiet.install()
    quiet.install()                                     # idempotent: one filter per logger
    cast = logging.getLogger("diffusers.models.modeling_utils")
    lora = logging.getLogger("diffusers.loaders.lora_base")
    assert sum(isinstance(f, quiet._Drop) for f in cast.filters) == 1
    kept = _Keep()
    for logger in (cast, lora):
        logger.addHandler(kept)
    try:
        cast.warning("There are modules in UNet2DModel that should be kept in float32: []. Casting directly ...")
        cast.warning("There are modules in UNet2DModel that should be kept in float32: ['norm']. Casting ...")
        lora.warning("No LoRA keys associated to CLIPTextModel found with the prefix='text_encoder'.")
        lora.warning("No LoRA keys associated to UNet2DConditionModel found with the prefix='unet'.")
    finally:
        for logger in (cast, lora):
            logger.removeHandler(kept)
    assert kept.messages == ["There are modules in UNet2DModel that should be kept in float32: ['norm']. Casting ...",
                             "No LoRA keys associated to UNet2DConditionModel found with the prefix='unet'."]


def test_tqdm_fallback_notice_is_dropped_other_warnings_are_not():
    from tqdm import TqdmWarning

    with warnings.catch_warnings(record=True) as caught:
        quiet.install()
        warnings.warn("IProgress not found. Please update jupyter and ipywidgets.", TqdmWarning)
        warnings.warn("something else", TqdmWarning)
    assert [str(w.message) for w in caught] == ["something else"]
