"""Portrait Engine: personalised neural portrait rendering for film and VFX.

`engine` is the library: every stage's real work lives here. `jobs/` (submitit job
definitions) and `tools/` (the `portrait` CLI) depend on it, never the reverse.
"""

__version__ = "0.1.0"
