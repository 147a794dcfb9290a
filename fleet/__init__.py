"""fleet: a distributed stream-testing fleet for the Livepeer real-time AI video network.

Importing the package does nothing else: no network, no Ray, no heavy imports.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("fleet")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
