"""Importing this package registers every operation (see `ldoms.ops.base`)."""

from ldoms.ops import (  # noqa: F401
    domains,
    lifecycle,
    listing,
    listing_migrations,
    migrate,
    reconf,
    resources,
    spconfig,
    variables,
    vio_console,
    vio_disk,
    vio_net,
)
