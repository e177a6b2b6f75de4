"""asyncio transport layer: connections, the request shape, the server. Logic lives elsewhere."""

from .connection import Connection, ConnectionPool, FrameProtocol, cancel_and_wait, wait_reply
from .server import Server, ServerConnection

__all__ = ["Connection", "ConnectionPool", "FrameProtocol", "Server", "ServerConnection",
           "cancel_and_wait", "wait_reply"]
