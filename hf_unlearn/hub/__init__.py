"""Hub integration: the unlearned model's card, and the checks that make a push fail before training."""

from .model_card import (
    DEFAULT_TEMPLATE,
    check_card_template,
    check_push_to_hub,
    forget_fingerprint,
    render_model_card,
    upload_file_list,
)


__all__ = [
    "DEFAULT_TEMPLATE",
    "check_card_template",
    "check_push_to_hub",
    "forget_fingerprint",
    "render_model_card",
    "upload_file_list",
]
