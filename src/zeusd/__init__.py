"""zeusd: a privileged daemon that performs NVML GPU energy controls for unprivileged clients."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("zeusd")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
