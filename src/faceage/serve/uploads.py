"""Read a multipart upload into memory, enforcing the size limits while it streams.

Why not FastAPI's ``UploadFile``: Starlette spools any part over 1 MB to a temporary file on
disk, and the service promises never to write uploads to disk. Here the body is parsed as it
arrives by python-multipart (the parser Starlette itself uses) into memory, and a file over the
limit stops the read at once with 413, so a huge upload costs at most the limit in memory.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

FIELD = "files"


class UploadError(Exception):
    """An upload the service refuses; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


@dataclass
class Upload:
    filename: str
    content_type: str
    data: bytearray = field(default_factory=bytearray)


class _Collector:
    """python-multipart callbacks -> a list of uploads from the ``files`` field."""

    def __init__(self, max_file_bytes: int, max_files: int):
        self.max_file_bytes, self.max_files = max_file_bytes, max_files
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
        self._current.data += data[start:end]


async def read_uploads(request: Request, max_file_bytes: int, max_files: int) -> list[Upload]:
    """The images in the request's ``files`` field; raises :class:`UploadError` (413/415/422)."""
    ctype, options = parse_options_header(request.headers.get("content-type"))
    if ctype != b"multipart/form-data" or b"boundary" not in options:
        raise UploadError(415, "send the images as multipart/form-data in the field 'files'")
    declared = request.headers.get("content-length")
    # A body longer than every allowed file together cannot be valid: refuse before reading it.
    overhead = 64 * 1024
    if declared and declared.isdigit() and int(declared) > max_files * max_file_bytes + overhead:
        raise UploadError(413, f"request larger than {max_files} files of "
                               f"{max_file_bytes / 2**20:.3g} MB")
    collector = _Collector(max_file_bytes, max_files)
    parser = MultipartParser(options[b"boundary"], collector.callbacks())
    try:
        async for chunk in request.stream():
            parser.write(chunk)
        parser.finalize()
    except UploadError:
        raise
    except Exception as exc:  # noqa: BLE001 - python-multipart raises its own types for bad bodies
        raise UploadError(422, f"malformed multipart body: {exc}") from None
    if not collector.uploads:
        raise UploadError(422, "no file in the form field 'files'")
    return collector.uploads
