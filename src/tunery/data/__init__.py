"""Datasets: formats, the data doctor, rendering with the chat template and loss masks."""

from .dataset import Example, Scan, scan_file, split_examples
from .doctor import check_dataset
from .formats import FORMATS
from .render import MASK_MODES, OVERLONG_POLICIES, Renderer
from .template import ChatTemplate, load_template
from .types import Conversation, Issue

__all__ = [
    "FORMATS", "MASK_MODES", "OVERLONG_POLICIES", "ChatTemplate", "Conversation", "Example", "Issue",
    "Renderer", "Scan", "check_dataset", "load_template", "scan_file", "split_examples",
]
