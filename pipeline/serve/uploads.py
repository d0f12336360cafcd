"""One upload: streamed to a private folder under a generated name, size-limited while it arrives,
then checked (a video? with audio? not too long?) before any model sees it.

Nothing the client sends becomes a path: the body goes to ``<request folder>/upload.part`` and then
``clip<ext>``, where ``<ext>`` comes from the file's first bytes (its container signature), never
from the uploaded name.  The uploaded name is only echoed back, as text, in the answer's ``clip``.

Every refusal is an :class:`UploadError` with the HTTP status and a message naming the clip and the
cause: 400 (not a form, no file, empty), 413 (over ``serve.max_upload_mb``), 415 (not a video file:
no known container signature, or no video stream), 422 (corrupt, no audio track, longer than
``serve.max_duration_s``).
"""
from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, AsyncIterator

if TYPE_CHECKING:  # pragma: no cover
    from extractors.decode import MediaInfo

FIELD = "file"                    # the form field holding the clip (curl -F file=@clip.mp4)
FORM_SLACK_BYTES = 1 << 20        # the form around the file (boundaries, headers, other fields)
REENCODE_TIMEOUT_S = 300.0       # re-encoding a WebM upload (see _constant_rate)
WEBCAM_FPS = 30
MAX_NAME_CHARS = 200


class UploadError(Exception):
    """An upload the server refuses: ``status`` (HTTP) and a message naming the cause."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Upload:
    """A received clip: where it lies (generated name), the name it was sent under, its size."""

    path: Path
    name: str
    size: int


def display_name(filename: str | None) -> str:
    """The uploaded file name as plain text for the answer: its last component, printable, short.

    Only ever shown, never used as a path.
    """
    name = re.split(r"[\\/]", filename or "")[-1]
    name = "".join(ch for ch in name if ch.isprintable()).strip()
    return name[:MAX_NAME_CHARS] or "upload"


def sniff_container(head: bytes) -> str | None:
    """The file extension of the video container whose signature starts ``head``, else None.

    mp4/mov/3gp (ISO base media: ``ftyp`` at byte 4, or a QuickTime atom), Matroska/WebM (EBML),
    AVI, FLV, Ogg, ASF/WMV, MPEG program and transport streams.
    """
    if len(head) >= 8 and head[4:8] == b"ftyp":
        return ".mp4"
    if len(head) >= 8 and head[4:8] in (b"moov", b"mdat", b"free", b"wide", b"skip"):
        return ".mov"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return ".webm"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return ".avi"
    if head[:3] == b"FLV":
        return ".flv"
    if head[:4] == b"OggS":
        return ".ogv"
    if head[:8] == b"\x30\x26\xb2\x75\x8e\x66\xcf\x11":
        return ".wmv"
    if head[:4] == b"\x00\x00\x01\xba":
        return ".mpg"
    if len(head) > 188 and head[0] == 0x47 and head[188] == 0x47:
        return ".ts"
    return None


async def receive_upload(headers: "dict[str, str] | object", stream: AsyncIterator[bytes], folder: Path,
                         max_bytes: int) -> Upload:
    """Stream the multipart form of one request into ``folder``; the clip of its ``file`` field.

    ``headers`` is the request's header mapping, ``stream`` its body chunks.  A declared
    Content-Length over the limit is refused before one byte is read; otherwise the bytes are
    counted as they arrive and the upload is refused (413) the moment the file passes
    ``max_bytes``, so an oversized body is never read whole.
    """
    from python_multipart.multipart import MultipartParser, parse_options_header

    mime, params = parse_options_header(headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if mime != b"multipart/form-data" or not boundary:
        raise UploadError(400, f"send the clip as multipart/form-data in the field '{FIELD}' "
                               f"(curl -F {FIELD}=@clip.mp4 ...)")
    limit_text = f"{max_bytes / 2**20:g} MB (serve.max_upload_mb)"
    declared = headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes + FORM_SLACK_BYTES:
        raise UploadError(413, f"upload too large: {int(declared) / 2**20:.1f} MB declared, the limit is {limit_text}")

    part = folder / "upload.part"
    state: dict = {"headers": {}, "field": b"", "value": b"", "out": None, "name": None, "size": 0,
                   "files": 0, "error": None}

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state["value"] += data[start:end]

    def on_header_end() -> None:
        state["headers"][state["field"].lower()] = state["value"]
        state["field"], state["value"] = b"", b""

    def on_headers_finished() -> None:
        _, disp = parse_options_header(state["headers"].get(b"content-disposition", b""))
        state["headers"] = {}
        if disp.get(b"name") == FIELD.encode() and state["out"] is None and state["files"] == 0:
            state["files"] += 1
            state["name"] = display_name(disp.get(b"filename", b"").decode("utf-8", "replace"))
            state["out"] = open(part, "xb")   # a fresh private folder: the name cannot exist

    def on_part_data(data: bytes, start: int, end: int) -> None:
        out = state["out"]
        if out is None or out.closed:
            return
        state["size"] += end - start
        if state["size"] > max_bytes:
            raise UploadError(413, f"{state['name']}: upload too large: over {limit_text}")
        out.write(data[start:end])

    def on_part_end() -> None:
        if state["out"] is not None and not state["out"].closed:
            state["out"].close()

    parser = MultipartParser(boundary, {"on_header_field": on_header_field, "on_header_value": on_header_value,
                                        "on_header_end": on_header_end, "on_headers_finished": on_headers_finished,
                                        "on_part_data": on_part_data, "on_part_end": on_part_end})
    received = 0
    try:
        async for chunk in stream:
            received += len(chunk)
            if received > max_bytes + FORM_SLACK_BYTES:
                raise UploadError(413, f"upload too large: over {limit_text}")
            parser.write(chunk)
        parser.finalize()
    except UploadError:
        raise
    except Exception as e:  # noqa: BLE001 - python-multipart's errors on a malformed form
        raise UploadError(400, f"malformed multipart form ({type(e).__name__}: {e})") from None
    finally:
        if state["out"] is not None and not state["out"].closed:
            state["out"].close()
    if state["name"] is None:
        raise UploadError(400, f"no file in the form: send the clip in the field '{FIELD}' "
                               f"(curl -F {FIELD}=@clip.mp4 ...)")
    if state["size"] == 0:
        raise UploadError(400, f"{state['name']}: empty file")
    with open(part, "rb") as f:
        ext = sniff_container(f.read(256))
    if ext is None:
        raise UploadError(415, f"{state['name']}: not a video file (its content is no known video container: "
                               f"mp4/mov, webm/mkv, avi, flv, ogg, wmv, mpeg)")
    path = folder / f"clip{ext}"
    os.replace(part, path)
    return Upload(path=path, name=state["name"], size=state["size"])


def _constant_rate(upload: Upload) -> Path:
    """A WebM/Matroska upload re-encoded at a constant frame rate, its duration stated.

    Browsers' MediaRecorder (the page's webcam recording) writes WebM without a duration and with a
    variable frame rate on a 1 ms time base, and its audio may outlast its video: frame counting
    would read it as a truncated video.  It becomes an mp4 (H.264 at ``WEBCAM_FPS`` frames/s, fast
    preset; AAC audio), whose frame count is exact.
    """
    out = upload.path.with_name("clip-cfr.mp4")
    try:
        done = subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(upload.path), "-map", "0:v:0?",
                               "-map", "0:a:0?", "-c:v", "libx264", "-preset", "ultrafast", "-crf", "18",
                               "-fps_mode", "cfr", "-r", str(WEBCAM_FPS), "-c:a", "aac", "-f", "mp4", str(out)],
                              capture_output=True, timeout=REENCODE_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise UploadError(422, f"{upload.name}: corrupt video (reading it took over {REENCODE_TIMEOUT_S:g} s)") from None
    if done.returncode != 0 or not out.is_file():
        cause = (done.stderr.decode("utf-8", "replace").strip().splitlines() or ["ffmpeg failed"])[-1]
        raise UploadError(422, f"{upload.name}: corrupt video ({cause.replace(str(upload.path), upload.name)})")
    return out


def check_clip(upload: Upload, max_duration_s: float) -> "MediaInfo":
    """Probe the clip (ffprobe); UploadError unless it is a readable video with audio, short enough.

    A WebM upload (the page's webcam recordings) is first re-encoded at a constant frame rate
    (``upload.path`` then points at that file).
    """
    from extractors.decode import probe
    from extractors.errors import ExtractionError

    if upload.path.suffix == ".webm":
        upload.path = _constant_rate(upload)
    try:
        info = probe(upload.path)
    except ExtractionError as e:
        cause = str(e).replace(str(upload.path), upload.name)
        status = 415 if ("not a media file (it holds plain text)" in cause or "still image" in cause) else 422
        raise UploadError(status, cause if cause.startswith(upload.name) else f"{upload.name}: {cause}") from None
    if not info.has_video:
        raise UploadError(415, f"{upload.name}: not a video: it has no video stream (an audio file?)")
    if not info.has_audio:
        raise UploadError(422, f"{upload.name}: the clip has no audio track; the model needs the speech "
                               f"(words and voice)")
    if info.duration_s > max_duration_s:
        raise UploadError(422, f"{upload.name}: too long ({info.duration_s:.1f} s; serve.max_duration_s is "
                               f"{max_duration_s:g} s)")
    return info
