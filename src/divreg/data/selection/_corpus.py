"""Reading a corpus in pieces: an uncompressed JSONL or text file splits into byte ranges (a
line belongs to the range its first byte lies in), a compressed file (``.gz``, ``.zst``) is one
piece, a ``datasets`` folder splits into row ranges. Pieces are read independently (by processes
or Ray tasks), streaming; their examples in piece order are the corpus in file order."""

from __future__ import annotations

import gzip
import io
import json
import os
from dataclasses import dataclass
from typing import Iterator, Optional


@dataclass(frozen=True)
class Piece:
    path: str
    file_index: int
    start: int = 0  # byte offset (lines) or row (datasets)
    stop: Optional[int] = None  # exclusive; None: to the end

    @property
    def plain(self) -> bool:
        return _strip_compression(self.path).endswith(".txt")


def _strip_compression(path: str) -> str:
    for suffix in (".gz", ".zst"):
        if path.endswith(suffix):
            return path[: -len(suffix)]
    return path


def check_readable(paths: list[str], what: str) -> None:
    """One clear error before any work for a path that is missing or unreadable."""
    if not paths:
        raise ValueError(f"no {what} files given: pass {what}=[file.jsonl, ...]")
    for path in paths:
        if os.path.isdir(path):
            continue
        if not os.path.isfile(path):
            raise ValueError(f"{what}: {path}: no such file or folder")
        try:
            with open(path, "rb") as handle:
                handle.read(1)
        except OSError as error:
            raise ValueError(f"{what}: {path}: cannot be read ({error.strerror})") from None


def check_has_examples(paths: list[str], what: str, each: bool = False) -> None:
    """One clear error before any work when every file is empty (``each``: when any file is),
    that is without a non-blank line or a row."""
    empty = []
    for path in paths:
        if os.path.isdir(path):
            has = _load_dataset(path, None).num_rows > 0
        else:
            try:
                with _open_stream(path) as handle:
                    has = any(line.strip() for line in handle)
            except (EOFError, OSError) as error:
                raise ValueError(f"{what}: {path}: cannot be read ({type(error).__name__}: {error})") from None
        if not has:
            empty.append(path)
    if empty and (each or len(empty) == len(paths)):
        raise ValueError(f"the {what} corpus is empty ({', '.join(empty)}): give {what} examples")


def plan_pieces(paths: list[str], piece_bytes: int) -> list[Piece]:
    """Pieces of every file, in file order."""
    pieces = []
    for index, path in enumerate(paths):
        if os.path.isdir(path):
            rows = _load_dataset(path, None).num_rows
            step = max(1, piece_bytes // 2000)  # ~2 kB per row
            pieces += [Piece(path, index, start, min(start + step, rows)) for start in range(0, rows, step)] \
                or [Piece(path, index, 0, 0)]
        elif path.endswith((".gz", ".zst")):
            pieces.append(Piece(path, index))
        else:
            size = os.path.getsize(path)
            pieces += [Piece(path, index, start, min(start + piece_bytes, size))
                       for start in range(0, size, piece_bytes)] or [Piece(path, index, 0, 0)]
    return pieces


def _load_dataset(path: str, text_field: Optional[str]):
    import datasets

    try:
        loaded = datasets.load_from_disk(path)
    except FileNotFoundError:
        raise ValueError(f"{path}: a folder, but not a datasets folder (saved with save_to_disk)") from None
    if isinstance(loaded, datasets.DatasetDict):
        if "train" not in loaded:
            raise ValueError(f"{path}: a DatasetDict without a 'train' split (splits: {list(loaded)}); save the split to "
                             "read as its own folder")
        loaded = loaded["train"]
    if text_field is not None and text_field not in loaded.column_names:
        raise ValueError(f"{path}: no column {text_field!r} (columns: {loaded.column_names}); set text_field")
    return loaded


def _open_stream(path: str):
    if path.endswith(".gz"):
        return gzip.open(path, "rb")
    if path.endswith(".zst"):
        try:
            import zstandard
        except ImportError:
            raise ValueError(f"{path}: reading .zst needs the zstandard package (pip install zstandard)") from None
        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(open(path, "rb")))
    return open(path, "rb")


def _lines(piece: Piece) -> Iterator[tuple[int, bytes]]:
    """(byte offset, line) of the piece's lines; offsets of compressed files are in the
    decompressed stream."""
    with _open_stream(piece.path) as handle:
        if piece.start:
            handle.seek(piece.start - 1)
            handle.readline()  # the rest of the line that began in the previous piece
        position = handle.tell()
        while piece.stop is None or position < piece.stop:
            line = handle.readline()
            if not line:
                return
            yield position, line
            position += len(line)


def _where(piece: Piece, offset: int) -> str:
    if piece.path.endswith((".gz", ".zst")):
        with _open_stream(piece.path) as handle:
            line = handle.read(offset).count(b"\n") + 1
    else:
        with open(piece.path, "rb") as handle:
            line = handle.read(offset).count(b"\n") + 1
    return f"{piece.path}, line {line}"


def read_piece(piece: Piece, text_field: str, parse: bool = True) -> Iterator[tuple[Optional[str], str]]:
    """(text, the example as one JSON line) of each example of the piece; blank lines are skipped;
    a line that is not a JSON object with a string ``text_field`` is a clear error with its line
    number. ``parse=False`` (writing a selection): the text is None and JSON lines pass through
    unread; the JSON line of a datasets row is built only then."""
    try:
        yield from _read(piece, text_field, parse)
    except (EOFError, OSError) as error:  # a truncated or corrupt .gz / .zst, a file that vanished
        raise ValueError(f"{piece.path}: cannot be read to the end ({type(error).__name__}: {error})") from None
    except Exception as error:
        if type(error).__module__.startswith("zstd") or "Zstd" in type(error).__name__:
            raise ValueError(f"{piece.path}: not a valid zstd stream ({error})") from None
        raise


def _read(piece: Piece, text_field: str, parse: bool) -> Iterator[tuple[Optional[str], str]]:
    if os.path.isdir(piece.path):
        loaded = _load_dataset(piece.path, text_field)
        for row, record in enumerate(loaded.select(range(piece.start, piece.stop)), piece.start):
            if not isinstance(record[text_field], str):
                raise ValueError(f"{piece.path}, row {row}: field {text_field!r} is "
                                 f"{type(record[text_field]).__name__}, not a string")
            yield record[text_field], (json.dumps(record, default=str) if not parse else "")
        return
    for offset, line in _lines(piece):
        try:
            decoded = line.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError:
            raise ValueError(f"{_where(piece, offset)}: not UTF-8 text") from None
        if not decoded.strip():
            continue
        if piece.plain:
            yield decoded, json.dumps({"text": decoded})
            continue
        if not parse:
            yield None, decoded
            continue
        try:
            record = json.loads(decoded)
        except json.JSONDecodeError as error:
            raise ValueError(f"{_where(piece, offset)}: not valid JSON ({error.msg})") from None
        if not isinstance(record, dict):
            raise ValueError(f"{_where(piece, offset)}: a JSON {type(record).__name__}, not an object with a "
                             f"{text_field!r} field")
        if text_field not in record:
            raise ValueError(f"{_where(piece, offset)}: no field {text_field!r} (fields: {sorted(record)[:8]}); "
                             "set text_field")
        if not isinstance(record[text_field], str):
            raise ValueError(f"{_where(piece, offset)}: field {text_field!r} is {type(record[text_field]).__name__}, "
                             "not a string")
        yield record[text_field], decoded
