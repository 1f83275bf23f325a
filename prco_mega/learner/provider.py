"""The model provider by family: a checkpoint's `model_type` chooses the Megatron model through
the families registry (`prco_mega.families`); Megatron is imported with the family's provider,
not here."""
from __future__ import annotations

from prco_mega.families import family


def build_model(hf_config, pg_collection, **kwargs) -> list:
    """This rank's model chunks for `hf_config` (arguments: `families.spec.Family.build_model`);
    ValueError for a `model_type` without a family."""
    return family(hf_config.model_type).build_model(hf_config, pg_collection, **kwargs)
