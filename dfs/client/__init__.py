"""The client side: async and sync clients, the write pipeline, the verified reader."""

from .async_client import AsyncClient
from .sync_client import Client

__all__ = ["AsyncClient", "Client"]
