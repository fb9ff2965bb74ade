"""mm-qwen's hooks: thin on purpose, heavy modules are imported only when used.

Qwen2.5-VL support lands family piece by family piece (model, converter, formatter); until then this
plugin registers nothing but still shows up in `mm-run plugins`.
"""

from __future__ import annotations
