"""lmkit: a readable workbench for learning and experimenting with small GPT-style language models."""

from .callbacks import Callback
from .model import GPT, GPTConfig
from .tokenizer import BPETokenizer, CharTokenizer
from .trainer import TrainConfig, Trainer

__all__ = ["GPT", "GPTConfig", "Trainer", "TrainConfig", "Callback", "CharTokenizer", "BPETokenizer"]
__version__ = "0.1.0"
