"""Float64 reference recurrences, one per registered layer (see registry.py).

Every module in this package is imported, so a new reference file registers itself.
"""

import importlib
import pkgutil

from tests.reference.registry import REFERENCES, Reference, reference

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["REFERENCES", "Reference", "reference"]
