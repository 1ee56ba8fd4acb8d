"""Account storage: organizations, packages and nodes, chosen by URL."""

from exitgate.store.base import (
    UNSET,
    AccountStore,
    GeoNames,
    NewNode,
    NewPackage,
    NodeUpdate,
    NotFound,
    OrgUpdate,
    PackageUpdate,
    Unset,
    open_store,
)

__all__ = [
    "UNSET",
    "AccountStore",
    "GeoNames",
    "NewNode",
    "NewPackage",
    "NodeUpdate",
    "NotFound",
    "OrgUpdate",
    "PackageUpdate",
    "Unset",
    "open_store",
]
