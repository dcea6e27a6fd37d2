"""Python client for causalkv, the causally consistent, sharded, replicated key-value store.

    >>> from causalkv import Client
    >>> session = Client("127.0.0.1:13800").session()
    >>> session.put("greeting", {"text": "hello"})
    True
    >>> session.get("greeting")
    {'text': 'hello'}

Standard library only. See ``Client`` and ``Session``.
"""

from .client import Client, JSONValue, Session
from .errors import BadRequest, CausalKVError, KeyNotFound, Unauthorized, Unavailable

__all__ = [
    "BadRequest",
    "CausalKVError",
    "Client",
    "JSONValue",
    "KeyNotFound",
    "Session",
    "Unauthorized",
    "Unavailable",
]

#: The package's version.
__version__ = "0.1.0"
