"""What a model family (in this repo or a third-party plugin) needs to prove it works with mm:
the conformance suite ``FamilyConformance`` and a toy model for engine tests."""

from mm_core.testing.conformance import CASES, FamilyConformance

__all__ = ["CASES", "FamilyConformance"]
