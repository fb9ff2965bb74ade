"""mm-convert: exact, streaming checkpoint conversion between HF, the mm layout and DCP"""

__version__ = "0.1.0"
