"""Read a multipart upload into memory, enforcing the size limits while it streams.

Why not FastAPI's ``UploadFile``: Starlette spools any part over 1 MB to a temporary file on
disk, and the service promises never to write uploads to disk. Here the body is parsed as it
arrives by python-multipart (the parser Starlette itself uses) into memory, and a file over the
limit stops the read at once with 413, so a huge upload costs at most the limit in memory.
The whole body must arrive within a deadline (else 408: a client trickling bytes cannot hold a
connection open forever), and the bytes held by all requests together are bounded by an
:class:`UploadBudget` (else 503), so many large uploads at once cannot exhaust memory either.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from python_multipart.multipart import MAX_BOUNDARY_LENGTH, MultipartParser, parse_options_header
from starlette.requests import Request

FIELD = "files"


class UploadError(Exception):
    """An upload the service refuses; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


class UploadBudget:
    """Bytes of uploaded files held in memory by all requests together, from the first byte
    read until the answer is sent. All calls come from the event loop's thread."""

    def __init__(self, limit_bytes: int):
        self.limit, self.used = int(limit_bytes), 0

    def take(self, n: int) -> None:
        if self.used + n > self.limit:
            raise UploadError(503, f"server busy: uploads in progress already hold "
                                   f"{self.limit / 2**20:.3g} MB; retry later")
        self.used += n

    def give(self, n: int) -> None:
        self.used = max(0, self.used - n)


@dataclass
class Upload:
    filename: str
    content_type: str
    data: bytearray = field(default_factory=bytearray)


class _Collector:
    """python-multipart callbacks -> a list of uploads from the ``files`` field."""

    def __init__(self, max_file_bytes: int, max_files: int, budget: UploadBudget | None = None):
        self.max_file_bytes, self.max_files, self.budget = max_file_bytes, max_files, budget
        self.held = 0                       # bytes taken from the budget
        self.uploads: list[Upload] = []
        self._headers: dict[bytes, bytes] = {}
        self._field = self._value = b""
        self._current: Upload | None = None

    def callbacks(self) -> dict:
        return {"on_part_begin": self._part_begin, "on_header_field": self._header_field,
                "on_header_value": self._header_value, "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished, "on_part_data": self._part_data}

    def _part_begin(self) -> None:
        self._headers, self._current = {}, None

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._field.lower()] = self._value
        self._field = self._value = b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        if options.get(b"name", b"").decode("utf-8", "replace") != FIELD or b"filename" not in options:
            return                                             # other form fields are ignored
        if len(self.uploads) >= self.max_files:
            raise UploadError(413, f"too many files in one request (limit {self.max_files})")
        name = options[b"filename"].decode("utf-8", "replace") or f"upload-{len(self.uploads) + 1}"
        ctype = self._headers.get(b"content-type", b"application/octet-stream").decode("latin-1")
        self._current = Upload(name, ctype)
        self.uploads.append(self._current)

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._current is None:
            return
        if len(self._current.data) + (end - start) > self.max_file_bytes:
            raise UploadError(413, f"{self._current.filename}: file larger than the limit of "
                                   f"{self.max_file_bytes / 2**20:.3g} MB")
        if self.budget is not None:
            self.budget.take(end - start)
            self.held += end - start
        self._current.data += data[start:end]


async def read_uploads(request: Request, max_file_bytes: int, max_files: int, *,
                       budget: UploadBudget | None = None, timeout_s: float | None = None) -> list[Upload]:
    """The images in the request's ``files`` field; raises :class:`UploadError` (408/413/415/422/503).

    With a ``budget``, the bytes read are taken from it; on success the caller gives back
    ``held_bytes(uploads)`` once the answer is ready, on failure they are given back here."""
    ctype, options = parse_options_header(request.headers.get("content-type"))
    if ctype != b"multipart/form-data" or b"boundary" not in options:
        raise UploadError(415, "send the images as multipart/form-data in the field 'files'")
    boundary = options[b"boundary"]
    if not 1 <= len(boundary) <= MAX_BOUNDARY_LENGTH:
        raise UploadError(422, f"malformed multipart body: the boundary is {len(boundary)} characters long; "
                               f"at most {MAX_BOUNDARY_LENGTH} are accepted (RFC 2046 allows 70)")
    declared = request.headers.get("content-length")
    # A body longer than every allowed file together cannot be valid: refuse before reading it.
    overhead = 64 * 1024
    if declared and declared.isdigit() and int(declared) > max_files * max_file_bytes + overhead:
        raise UploadError(413, f"request larger than {max_files} files of "
                               f"{max_file_bytes / 2**20:.3g} MB")
    collector = _Collector(max_file_bytes, max_files, budget)
    try:
        parser = MultipartParser(boundary, collector.callbacks())
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                parser.write(chunk)
        parser.finalize()
    except TimeoutError:
        _give_back(collector)
        raise UploadError(408, f"the upload did not arrive within {timeout_s:g} s; send it faster, or in "
                               "several smaller requests") from None
    except UploadError:
        _give_back(collector)
        raise
    except Exception as exc:  # noqa: BLE001 - python-multipart raises its own types for bad bodies
        _give_back(collector)
        raise UploadError(422, f"malformed multipart body: {exc}") from None
    if not collector.uploads:
        _give_back(collector)
        raise UploadError(422, "no file in the form field 'files'")
    return collector.uploads


def held_bytes(uploads: list[Upload]) -> int:
    """What a successful :func:`read_uploads` took from its budget."""
    return sum(len(u.data) for u in uploads)


def _give_back(collector: _Collector) -> None:
    if collector.budget is not None:
        collector.budget.give(collector.held)
        collector.held = 0
    for up in collector.uploads:           # free the bytes now, not when the request object goes
        up.data = bytearray()
