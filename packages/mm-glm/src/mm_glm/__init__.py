"""mm-glm: the GLM-4.1V and GLM-4.5V (MoE) families for mm"""

__version__ = "0.1.0"
