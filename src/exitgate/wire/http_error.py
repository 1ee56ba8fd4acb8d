"""The error a sans-IO HTTP core raises: a status and a reason safe to show the client."""

from __future__ import annotations

import http


class HttpError(Exception):
    """A message we cannot handle. `reason` is safe to show to the client."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason

    @property
    def phrase(self) -> str:
        """The standard reason phrase of `status` (e.g. "Bad Request")."""
        try:
            return http.HTTPStatus(self.status).phrase
        except ValueError:
            return "Error"
