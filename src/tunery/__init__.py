"""tunery: fine-tune pretrained language models on your own examples.

Python API (the CLI calls the same functions):
    tunery.check_dataset(path, model="default")   -> the data doctor's report (dict)
    tunery.generate(model, prompt)                -> one answer
    tunery.Generator(model).chat([...])           -> batched answers
    tunery.resolve_model(ref)                     -> where a model reference points
"""

from .config import DataConfig
from .data import check_dataset
from .errors import TuneryError
from .generate import Generator, generate
from .models import resolve_model

__version__ = "0.1.0"
__all__ = ["DataConfig", "Generator", "TuneryError", "check_dataset", "generate", "resolve_model", "__version__"]
