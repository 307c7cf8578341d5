"""Property-based tests (hypothesis) of statewise's input boundaries.

The settings every fuzz test here starts from are the profile ``"statewise-fuzz"``: no
deadline (a first call may compile a kernel), derandomized so that CI runs the same examples
every time, and no example database. Each test sets its own ``max_examples``: few in the
default run, many more in its ``@pytest.mark.slow`` twin.

hypothesis also keeps caches of its own (the constants it collects from the source, unicode
tables) under ``.hypothesis/`` in the working directory; they go to a directory under the
system's temporary directory instead, so that a test run writes nothing into the checkout
(``HYPOTHESIS_STORAGE_DIRECTORY`` still chooses another place).
"""

import getpass
import os
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis.configuration import set_hypothesis_home_dir

if not os.environ.get("HYPOTHESIS_STORAGE_DIRECTORY"):
    set_hypothesis_home_dir(
        Path(tempfile.gettempdir()) / f"statewise-hypothesis-{getpass.getuser()}"
    )

settings.register_profile(
    "statewise-fuzz",
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
FUZZ = settings.get_profile("statewise-fuzz")

__all__ = ["FUZZ"]
