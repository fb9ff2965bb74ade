"""mm-internvl: the InternVL3 family for mm"""

__version__ = "0.1.0"
