"""asyncio transport layer: connections, the request shape, the server. Logic lives elsewhere."""

from .connection import (
    Checkout,
    Connection,
    ConnectionPool,
    FrameProtocol,
    cancel_and_wait,
    wait_reply,
    within,
)
from .security import NO_SECURITY, Security, SecurityError
from .server import Server, ServerConnection

__all__ = ["NO_SECURITY", "Checkout", "Connection", "ConnectionPool", "FrameProtocol", "Security",
           "SecurityError", "Server", "ServerConnection", "cancel_and_wait", "wait_reply",
           "within"]
