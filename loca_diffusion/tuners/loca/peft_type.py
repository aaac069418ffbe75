"""The ``PeftType.LOCA`` enum shim (a leaf module: it imports only peft).

peft 0.21's ``register_peft_method`` only accepts names that are already members of the closed
``PeftType`` enum, so an external method needs one extra step: add the ``LOCA`` member. That is the
whole shim; everything else goes through peft's public registration. ``tests/test_peft_registration.py``
fails loudly if a peft upgrade changes the enum or the mappings this relies on.
"""

from __future__ import annotations

from peft.utils import PeftType

PEFT_TYPE_NAME = "LOCA"
METHOD_NAME = "loca"
PREFIX = "loca_"


def ensure_peft_type() -> PeftType:
    """Add ``PeftType.LOCA`` to peft's enum (idempotent) and return it."""
    existing = PeftType.__members__.get(PEFT_TYPE_NAME)
    if existing is not None:
        return existing
    member = str.__new__(PeftType, PEFT_TYPE_NAME)
    member._name_ = PEFT_TYPE_NAME
    member._value_ = PEFT_TYPE_NAME
    member._sort_order_ = len(PeftType._member_names_)
    PeftType._member_names_.append(PEFT_TYPE_NAME)
    PeftType._member_map_[PEFT_TYPE_NAME] = member
    PeftType._value2member_map_[PEFT_TYPE_NAME] = member
    type.__setattr__(PeftType, PEFT_TYPE_NAME, member)
    return member
