"""aegaeon: many LLMs on a shared GPU pool with token-level auto-scaling.

Importing the package is cheap: torch and the C++ extension load only in the
modules that need them, so the pure-Python scheduler stays torch-free.
"""

__version__ = "0.1.0"
