"""What a client may send, and how slowly, as settings: tti-server's and the gateway's
settings objects both take these fields (flags `--max-header-bytes` ..., variables)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field
from pydantic_settings import BaseSettings

if TYPE_CHECKING:
    from tti_http.limits import ClientLimits


class ClientLimitSettings(BaseSettings):
    max_header_bytes: int = Field(
        default=32 * 1024,
        ge=1024,
        description="largest request head (request line and headers; gRPC: its metadata), "
        "in bytes (431)",
    )
    max_headers: int = Field(default=100, ge=8, description="most HTTP request headers (431)")
    header_timeout: float = Field(
        default=10.0,
        gt=0,
        description="seconds from a connection's opening (or a request's first byte) until "
        "the request's head is whole (408)",
    )
    body_timeout: float = Field(
        default=30.0,
        gt=0,
        description="seconds from an HTTP request's head until its body is whole (408)",
    )
    keepalive_timeout: float = Field(
        default=5.0, gt=0, description="seconds an idle kept-alive HTTP connection is kept open"
    )

    def client_limits(self) -> ClientLimits:
        from tti_http.limits import ClientLimits

        return ClientLimits(
            max_header_bytes=self.max_header_bytes,
            max_headers=self.max_headers,
            header_timeout=self.header_timeout,
            body_timeout=self.body_timeout,
            keepalive_timeout=self.keepalive_timeout,
        )
