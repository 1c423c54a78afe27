"""pytc: deep-learning toolkit for connectomics (3D EM segmentation).

Importing ``pytc`` is cheap on purpose: heavy libraries (torch, monai, zarr) are imported
inside the modules and functions that need them, so the CLI starts instantly.
"""

__version__ = "0.1.0"

from pytc.errors import PytcError  # noqa: E402  (light, re-exported for users)

__all__ = ["PytcError", "__version__"]
