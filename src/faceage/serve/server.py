"""`faceage serve`: validate settings, load the model once, then run uvicorn."""
from __future__ import annotations

import errno
import ipaddress
import socket
import sys

from ..errors import ConfigError, FaceageError
from .settings import ServeSettings


def check(settings: ServeSettings) -> None:
    for name in ("workers", "max_files"):
        if getattr(settings, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1")
    for name in ("max_file_mb", "max_megapixels", "max_request_megapixels", "queue_timeout_s", "upload_timeout_s",
                 "max_pending_mb"):
        if getattr(settings, name) <= 0:
            raise ConfigError(f"{name} must be positive")
    if settings.max_request_megapixels < settings.max_megapixels:
        raise ConfigError(f"max_request_megapixels ({settings.max_request_megapixels:g}) must be at least "
                          f"max_megapixels ({settings.max_megapixels:g}): else one allowed image fills no request")
    if settings.max_pending_mb < settings.max_file_mb:
        raise ConfigError(f"max_pending_mb ({settings.max_pending_mb:g}) must be at least max_file_mb "
                          f"({settings.max_file_mb:g})")
    if not 0 < settings.port < 65536:
        raise ConfigError(f"--port {settings.port} is not a TCP port")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound here rather than by uvicorn: a port in use is then one clear
    error (exit 2), raised before anything says "serving", instead of uvicorn's log line and exit 1."""
    # The address family as uvicorn chooses it: IPv6 only for an IPv6 literal. The protocol must
    # be named: asyncio turns Nagle's algorithm off (TCP_NODELAY) only on connections accepted from
    # a socket whose proto is IPPROTO_TCP, and with it on, every request after the first on a
    # keep-alive connection waited ~40 ms for the client's delayed ACK (BENCHMARKS section 8).
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    # As uvicorn does: a restart may reuse a port whose old connections linger in TIME_WAIT.
    # (On Linux this does not allow a second listener on a port another socket listens on.)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise FaceageError(f"port {port} is already in use on {host}: stop what uses it, or choose "
                               "another with --port") from None
        raise FaceageError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def announce(settings: ServeSettings) -> None:
    """Where the service listens, on stderr; a warning when that is beyond this machine."""
    url = f"http://{settings.host}:{settings.port}"
    print(f"faceage: serving {settings.model or 'the default model'} on {url}  (page: {url}/, API docs: {url}/docs)",
          file=sys.stderr)
    if not is_loopback(settings.host):
        print("faceage: warning: listening beyond this machine. There is no authentication or TLS; put a reverse "
              "proxy with both in front (see README, 'Serving').", file=sys.stderr)


def serve(settings: ServeSettings) -> int:
    import uvicorn

    from .app import create_app, load_predictor
    check(settings)
    predictor = load_predictor(settings)        # a bad model stops here, before binding the port
    app = create_app(settings, predictor)
    sock = bind(settings.host, settings.port)   # a port in use stops here, before "serving on"
    announce(settings)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    with sock:
        server.run(sockets=[sock])
    return 0
