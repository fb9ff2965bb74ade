"""mm-qwen: the Qwen2.5-VL family for mm"""

__version__ = "0.1.0"
