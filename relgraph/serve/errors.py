"""The one exception a request handler raises to refuse a request."""

from __future__ import annotations


class HTTPError(Exception):
    """A request the service refuses: the status and one line for the client."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
