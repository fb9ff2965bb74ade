"""Inference beyond one process: the model sharded over tensor-parallel ranks (``tensor_parallel``)."""
