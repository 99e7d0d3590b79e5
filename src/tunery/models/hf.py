"""Small touch points with transformers and peft that every floor above models/ shares."""


def quiet_transformers() -> None:
    """Loading bars and advisory warnings from transformers drown our own output."""
    import warnings

    from transformers.utils import logging

    warnings.filterwarnings("ignore", category=FutureWarning)  # deprecation notices meant for library authors

    logging.disable_progress_bar()
    logging.set_verbosity_error()


def base_of(model):
    """The transformers model under a PEFT wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model
