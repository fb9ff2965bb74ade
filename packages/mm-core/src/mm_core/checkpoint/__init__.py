"""Checkpoint reading shared by the engine, model loading and mm-convert.

A family's rule table (:class:`~mm_core.checkpoint.table.RuleTable`) is the one declaration of how
each weight is named, transformed and split over tensor-parallel ranks. The readers here stream
one rank's share of an HF or mm directory through it; mm-convert adds the verbs and the writers.
"""
