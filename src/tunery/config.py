"""The typed recipe: one definition feeds CLI flags, YAML files, the Python API and the jobs API.

Each field's description is its help text. Values given as the string "auto" are resolved by
the functions at the bottom, and the resolved config is what gets saved beside every output.
"""

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class DataConfig(BaseModel):
    """How a dataset file becomes token sequences with loss masks."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    model: str = Field("default", description="Base model: default, a model folder, a .gguf file or a cached hub id")
    format: Literal["auto", "chat", "completion", "alpaca", "sharegpt", "text"] = Field(
        "auto", description="Dataset format; auto detects it from the file's rows")
    template: str | None = Field(None, description="A Jinja chat template file to use instead of the model's own")
    mask: Literal["assistant", "last", "all"] = Field(
        "assistant", description="Which tokens carry loss: every assistant turn, the last one, or all tokens")
    max_length: int = Field(2048, ge=8, description="Longest example in tokens")
    overlong: Literal["drop", "truncate", "error"] = Field(
        "drop", description="What happens to examples longer than max_length")


def suggest_epochs(n_examples: int) -> int:
    """Small sets are seen several times, large ones about once.

    Aim for roughly 1,000 example visits, within 1..10 epochs, and never more than ~25,000.
    """
    if n_examples <= 0:
        return 1
    if n_examples * 3 < 1000:
        return min(10, math.ceil(1000 / n_examples))
    if n_examples * 3 > 25000:
        return max(1, 25000 // n_examples)
    return 3
