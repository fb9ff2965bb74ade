"""mm-visualglm: the VisualGLM-6B family for mm"""

__version__ = "0.1.0"
