"""The host's durable state (SQLite).  See `ldoms.store.db`."""

from ldoms.store.db import HostRecord, Store, StoreError, platform_doc

__all__ = ["HostRecord", "Store", "StoreError", "platform_doc"]
