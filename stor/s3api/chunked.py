"""Decoding aws-chunked request bodies (Content-Encoding: aws-chunked), streamed.

The framing, one chunk after another, then a last empty one:

    <hex size>[;chunk-signature=<64 hex>]\\r\\n<data>\\r\\n
    0[;chunk-signature=<64 hex>]\\r\\n

then, for the -TRAILER payloads, trailer lines `name:value\\r\\n` (signed: ended by
`x-amz-trailer-signature:<64 hex>\\r\\n`), and last an empty line `\\r\\n`.
(https://docs.aws.amazon.com/AmazonS3/latest/API/sigv4-streaming.html and
sigv4-streaming-trailers.html; the unsigned forms are the same without the signatures.)

Chunks can be MiB long, so data is never held: each piece of the body is passed on
as it arrives (the piece itself when it is all data), and a signed chunk is hashed
as it goes and checked at its end. Only a size line (a few hundred bytes at most)
and the trailer (bounded) are ever gathered. The caller writes what it is given to
temporary storage and drops it on any exception, so passing on a chunk's first
bytes before its signature is checked is harmless; its last bytes are passed on
only after the check.

The size lines must add up to x-amz-decoded-content-length exactly, checked as each
arrives: a body announcing more is refused before that chunk's data is read, one
whose last chunk comes short of it, or that ends before its last empty line, is
IncompleteBody. A signed body has no trailer unless its payload is the -TRAILER one,
whose trailer signature, chained on the last chunk's, is then required.

A checksum trailer's value (x-amz-checksum-crc32, ...) is handed over in trailers,
not checked here: the caller hashes the payload anyway.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import AsyncIterator

from stor.s3api.errors import S3Error
from stor.s3api.sigv4 import EMPTY_SHA256, ChunkSigning

MAX_SIZE_LINE = 512  # bytes, CRLF included: "<hex size>;chunk-signature=<64 hex>\r\n" is 99 at most
TRAILER_SIGNATURE = b"x-amz-trailer-signature"

_HEX_SIZE = re.compile(rb"[0-9a-fA-F]{1,16}")
_SIGNATURE_PREFIX = b"chunk-signature="
_MISMATCH = (
    "The request signature we calculated does not match the signature you provided. "
    "Check your key and signing method."
)
_WRONG_LENGTH = "You did not provide the number of bytes specified by the x-amz-decoded-content-length HTTP header"

# What the next bytes of the body are.
_SIZE = 0  # a chunk's size line
_DATA = 1  # a chunk's data
_DATA_END = 2  # the CRLF after a chunk's data
_TRAILER = 3  # after the last chunk: trailer lines, up to an empty one
_DONE = 4  # nothing


class AwsChunkedDecoder:
    """The payload of an aws-chunked body, in pieces as they arrive; its trailers once it has ended.

    decoded_length: x-amz-decoded-content-length, checked when given. signing: for the
    STREAMING-AWS4-HMAC-SHA256-PAYLOAD[-TRAILER] payloads, whose every chunk, and trailer,
    carry a signature chained on the request's. trailer: for the -TRAILER payloads.
    """

    def __init__(
        self,
        body: AsyncIterator[bytes],
        decoded_length: int | None,
        signing: ChunkSigning | None,
        trailer: bool,
        max_trailer_bytes: int = 16384,
    ) -> None:
        self._body = body
        self._decoded_length = decoded_length
        self._signing = signing
        self._trailer = trailer
        self._max_trailer_bytes = max_trailer_bytes
        self.trailers: dict[str, str] = {}  # lower-case names; set once the payload has ended

    async def __aiter__(self) -> AsyncIterator[bytes]:
        signing = self._signing
        state = _SIZE
        line = bytearray()  # a line gathered across pieces
        remaining = 0  # bytes of the current chunk's data still to come
        decoded = 0  # payload bytes announced by the size lines so far
        given = b""  # the current chunk's signature, as sent
        previous = signing.seed_signature if signing is not None else ""
        chunk_hash = hashlib.sha256()
        trailer_lines: list[bytes] = []
        trailer_bytes = 0

        async for piece in self._body:
            at, end = 0, len(piece)
            while at < end:
                if state == _DATA:
                    take = min(remaining, end - at)
                    data = piece[at : at + take]  # the piece itself when it is all data: no copy
                    at += take
                    remaining -= take
                    if remaining == 0:
                        state = _DATA_END
                    if signing is not None:
                        chunk_hash.update(data)
                        if remaining == 0:
                            previous = _checked(signing.chunk_signature(previous, chunk_hash.hexdigest()), given)
                    yield data
                    continue
                if state == _DONE:
                    raise S3Error("InvalidRequest", "The aws-chunked body goes on after its end.")

                # A line, gathered up to its LF but never beyond what this state allows.
                if state == _SIZE:
                    limit = MAX_SIZE_LINE
                elif state == _DATA_END:
                    limit = 2
                else:
                    limit = self._max_trailer_bytes - trailer_bytes
                room = limit - len(line)
                newline = piece.find(b"\n", at, min(end, at + room))
                if newline < 0:
                    if end - at >= room:
                        raise self._bad_line(state, too_long=True)
                    line += piece[at:]
                    break  # the piece is used up; the line goes on in the next one
                line += piece[at : newline + 1]
                at = newline + 1
                if line[-2:] != b"\r\n":
                    raise self._bad_line(state, too_long=False)
                content = bytes(line[:-2])
                line.clear()

                if state == _SIZE:
                    remaining, given = self._size_line(content)
                    decoded += remaining
                    if self._decoded_length is not None and decoded > self._decoded_length:
                        raise S3Error("IncompleteBody", _WRONG_LENGTH)
                    if remaining:
                        chunk_hash = hashlib.sha256()
                        state = _DATA
                        continue
                    if self._decoded_length is not None and decoded != self._decoded_length:
                        raise S3Error("IncompleteBody", _WRONG_LENGTH)
                    if signing is not None:
                        previous = _checked(signing.chunk_signature(previous, EMPTY_SHA256), given)
                    state = _TRAILER
                elif state == _DATA_END:
                    state = _SIZE  # the line can only be CRLF: it may be 2 bytes long
                else:
                    trailer_bytes += len(content) + 2
                    if content:
                        if not self._trailer:
                            raise S3Error("InvalidRequest", "The aws-chunked body has a trailer that its "
                                                            "x-amz-content-sha256 does not announce.")
                        trailer_lines.append(content)
                    else:
                        self.trailers = self._trailers(trailer_lines, previous)
                        state = _DONE
        if state != _DONE:
            raise S3Error("IncompleteBody", "The aws-chunked body ended before its final chunk and trailer.")

    def _size_line(self, line: bytes) -> tuple[int, bytes]:
        """A chunk's size and the signature it carries (b"" when unsigned)."""
        size, _, extension = line.partition(b";")
        if not _HEX_SIZE.fullmatch(size):
            raise S3Error("InvalidRequest", "A chunk size of the aws-chunked body is not a hexadecimal number.")
        if self._signing is None:
            return int(size, 16), b""  # chunk extensions, if any, mean nothing here
        if not extension.startswith(_SIGNATURE_PREFIX):
            raise S3Error("SignatureDoesNotMatch", "A chunk of the signed aws-chunked body carries no chunk-signature.")
        return int(size, 16), extension[len(_SIGNATURE_PREFIX):]

    def _bad_line(self, state: int, too_long: bool) -> S3Error:
        """A line longer than its state allows, or not ended by CRLF."""
        if state == _DATA_END:
            problem = "A chunk is not followed by CRLF where its size ends"
        elif not too_long:
            problem = "A line does not end with CRLF"
        elif state == _SIZE:
            problem = f"A chunk size line is over {MAX_SIZE_LINE} bytes"
        else:
            problem = f"The trailer is over {self._max_trailer_bytes} bytes"
        return S3Error("InvalidRequest", f"{problem} in the aws-chunked body.")

    def _trailers(self, lines: list[bytes], previous: str) -> dict[str, str]:
        # Only the -TRAILER payloads have a trailer, and so a trailer signature: a signed body without
        # one (STREAMING-AWS4-HMAC-SHA256-PAYLOAD) ends at its last chunk, whose signature closes the chain.
        if self._signing is not None and self._trailer:
            name, _, signature = (lines.pop() if lines else b"").partition(b":")
            if name.strip().lower() != TRAILER_SIGNATURE:
                raise S3Error("SignatureDoesNotMatch",
                              "The trailer of the signed aws-chunked body ends without x-amz-trailer-signature.")
            # The trailer is signed with each line ended by LF alone (as AWS's and the SDKs' signers do).
            _checked(self._signing.trailer_signature(previous, b"".join(line + b"\n" for line in lines)),
                     signature.strip())
        trailers = {}
        for line in lines:
            name, colon, value = line.partition(b":")
            name = name.strip()
            if not colon or not name:
                raise S3Error("InvalidRequest", "A trailer line of the aws-chunked body is not name:value.")
            trailers[name.decode("latin-1").lower()] = value.strip().decode("latin-1")
        return trailers


def _checked(expected: str, given: bytes) -> str:
    """expected, when the signature given is it; the chain goes on from there."""
    if not hmac.compare_digest(expected.encode(), given):
        raise S3Error("SignatureDoesNotMatch", _MISMATCH)
    return expected
