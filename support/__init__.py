"""Shared code of the synthetic chest X-ray notebooks.

Each module holds one stage or one kind of helper; notebooks in ``notebooks/`` stay thin and
call into these. Importing ``support`` itself is cheap (no torch) so the pipeline runner starts fast.
"""

__version__ = "0.1.0"

from support import quiet as _quiet

_quiet.install()
