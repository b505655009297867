"""Dataset adapters: each reads one public dataset as published and maps it to the manifest contract.

Build by name: ``get_adapter("busi")(root, normal="exclude")``; unknown names
list the registered ones and suggest the nearest. Write the result with
:func:`write_prepared`.
"""

from breastfusion.data.adapters import (  # noqa: F401  (registration)
    breast_lesions_usg,
    breastmnist,
    busbra,
    busi,
    cbis_ddsm,
    cmmd,
    generic,
    mias,
)
from breastfusion.data.adapters.base import (
    ADAPTERS,
    AdapterOptionError,
    DatasetLayoutError,
    PreparedDataset,
    get_adapter,
    write_prepared,
)

__all__ = ["ADAPTERS", "AdapterOptionError", "DatasetLayoutError", "PreparedDataset", "get_adapter",
           "write_prepared"]
