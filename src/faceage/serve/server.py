"""`faceage serve`: validate settings, load the model once, then run uvicorn."""
from __future__ import annotations

import ipaddress
import sys

from ..errors import ConfigError
from .settings import ServeSettings


def check(settings: ServeSettings) -> None:
    for name in ("workers", "max_files"):
        if getattr(settings, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1")
    for name in ("max_file_mb", "max_megapixels", "queue_timeout_s"):
        if getattr(settings, name) <= 0:
            raise ConfigError(f"{name} must be positive")
    if not 0 < settings.port < 65536:
        raise ConfigError(f"--port {settings.port} is not a TCP port")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(settings: ServeSettings) -> int:
    import uvicorn

    from .app import create_app, load_predictor
    check(settings)
    predictor = load_predictor(settings)        # a bad model stops here, before binding the port
    app = create_app(settings, predictor)
    url = f"http://{settings.host}:{settings.port}"
    print(f"faceage: serving {settings.model or 'the default model'} on {url}  (page: {url}/, API docs: {url}/docs)",
          file=sys.stderr)
    if not is_loopback(settings.host):
        print("faceage: warning: listening beyond this machine. There is no authentication or TLS; put a reverse "
              "proxy with both in front (see README, 'Serving').", file=sys.stderr)
    try:
        uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning", access_log=False)
    except SystemExit as exc:                   # uvicorn exits 1 when the port is taken
        if exc.code:
            print(f"faceage: error: could not listen on {settings.host}:{settings.port} (in use?)", file=sys.stderr)
            return 2
    return 0
