"""Float64 reference recurrences, one per registered layer (see registry.py)."""

from tests.reference import classic, mingru, retnet  # noqa: F401  (registers the references)
from tests.reference.registry import REFERENCES, Reference, reference

__all__ = ["REFERENCES", "Reference", "reference"]
