"""Network architectures: a registry of builders over MONAI's networks (see ``pytc list-archs``).

Importing this package registers every architecture but imports neither torch nor monai; the
builders do that when called. The output contract all models follow is documented in
:mod:`pytc.models.registry`.

Example:
    >>> from pytc.config import load_config
    >>> from pytc.models import build_model
    >>> net = build_model(load_config("configs/mednext_lucchi.yaml").model)  # doctest: +SKIP
"""

from pytc.models import dynunet, mednext, monai_nets  # noqa: F401  (importing registers their builders)
from pytc.models.registry import (
    Architecture,
    architecture_table,
    build_model,
    count_parameters,
    get_architecture,
    list_architectures,
    register_architecture,
)

__all__ = [
    "Architecture",
    "architecture_table",
    "build_model",
    "count_parameters",
    "get_architecture",
    "list_architectures",
    "register_architecture",
]
