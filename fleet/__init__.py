"""fleet: a distributed stream-testing fleet for the Livepeer real-time AI video network.

Importing the package does nothing else: no network, no Ray, no heavy imports.
"""

from typing import Any

__all__ = ["__version__"]


def __getattr__(name: str) -> Any:
    """``fleet.__version__``, read from the installed metadata on first use (importlib.metadata alone
    costs about 40 ms, which ``fleet --help`` need not pay)."""
    if name != "__version__":
        raise AttributeError(f"module 'fleet' has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        value = version("fleet")
    except PackageNotFoundError:  # running from a source tree that is not installed
        value = "0.0.0+unknown"
    globals()["__version__"] = value
    return value
