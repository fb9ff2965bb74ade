"""mm-convert's hooks. The engine itself registers nothing: family plugins register converters
built on it. Listed by `mm-run plugins` so its version shows next to the families'."""

from __future__ import annotations
