"""Files of a dataset build: atomic outputs, the spool of scrubbed examples, seed files.

An output is written to a temp file in its target's folder (same file system, so `os.replace`
is atomic) and moved into place only once everything is written, validated and hashed; until
then a failure leaves no output file, only a temp file that `discard` removes.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any, BinaryIO


def _read_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


class AtomicFile:
    """A file that appears at `target` on `commit()` only; sha256 and sizes kept as written."""

    def __init__(self, target: Path) -> None:
        self.target = target
        fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        self.tmp = Path(name)
        os.chmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs get the usual mode
        self._fh: BinaryIO | None = os.fdopen(fd, "wb")
        self._hash = hashlib.sha256()
        self.n_bytes = 0
        self.n_lines = 0

    def write(self, data: bytes) -> None:
        assert self._fh is not None, "written after close"
        self._fh.write(data)
        self._hash.update(data)
        self.n_bytes += len(data)
        self.n_lines += data.count(b"\n")

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    def close(self) -> None:
        """Flush to disk (before a rename, or a crash could leave an empty file in place)."""
        if self._fh is not None:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
            self._fh = None

    def commit(self) -> Path:
        self.close()
        os.replace(self.tmp, self.target)
        _fsync_dir(self.target.parent)
        return self.target

    def discard(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        self.tmp.unlink(missing_ok=True)


class JsonlWriter(AtomicFile):
    """One JSON object per line, UTF-8 (not ASCII-escaped), `\\n` line ends."""

    def write_example(self, example: dict[str, Any]) -> None:
        self.write(dumps_line(example))


def dumps_line(obj: dict[str, Any]) -> bytes:
    return (json.dumps(obj, ensure_ascii=False, separators=(", ", ": ")) + "\n").encode("utf-8")


def dumps_example(messages: list[dict[str, Any]]) -> bytes:
    """`dumps_line({"messages": messages})`, byte for byte. The system prompt opens nearly every
    example and is most of its text: it is encoded once, and each line made around it (the
    elements of a JSON array are written independently of each other)."""
    first = messages[0] if messages else None
    if (first is None or tuple(first) != ("role", "content") or first["role"] != "system"
            or not isinstance(first["content"], str)):
        return dumps_line({"messages": messages})
    head = _system_json(first["content"])
    rest = json.dumps(messages[1:], ensure_ascii=False, separators=(", ", ": ")).encode("utf-8")
    return b'{"messages": [' + head + (b", " + rest[1:] if len(rest) > 2 else b"]") + b"}\n"


@lru_cache(maxsize=16)
def _system_json(content: str) -> bytes:
    return json.dumps({"role": "system", "content": content}, ensure_ascii=False,
                      separators=(", ", ": ")).encode("utf-8")


def write_json_atomic(target: Path, obj: Any) -> AtomicFile:
    """A JSON document written to a temp file; the caller commits it with the data files."""
    out = AtomicFile(target)
    try:
        out.write((json.dumps(obj, ensure_ascii=False, indent=2, default=str) + "\n")
                  .encode("utf-8"))
        out.close()
    except BaseException:
        out.discard()
        raise
    return out


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # not possible on every platform; the rename itself is still atomic
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class Spool:
    """Scrubbed, deduplicated examples parked on disk (next to the outputs) until the split is
    known, so 100k conversations never sit in memory; read back by offset in any order."""

    def __init__(self, folder: Path) -> None:
        fd, name = tempfile.mkstemp(dir=folder, prefix=".dataset-", suffix=".spool")
        self.path = Path(name)
        # A large buffer: lines are ~2 KB, and the default 8 KB one wrote every few lines.
        self._fh = os.fdopen(fd, "w+b", buffering=1 << 20)
        self._end = 0
        self._flushed = True

    def put(self, line: bytes) -> tuple[int, int]:
        # Appends only: reads use pread and never move the file position, so no seek (a seek
        # per line flushed the write buffer each time).
        self._fh.write(line)
        self._flushed = False
        at = self._end
        self._end += len(line)
        return at, len(line)

    def flush(self) -> None:
        """Everything put so far readable from the file (by this process or another)."""
        if not self._flushed:
            self._fh.flush()
            self._flushed = True

    def get(self, at: int, length: int) -> bytes:
        self.flush()
        return os.pread(self._fh.fileno(), length, at)

    def close(self) -> None:
        self._fh.close()
        self.path.unlink(missing_ok=True)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class SeedError(ValueError):
    """A seed file line that cannot be used: the message names file, line and field."""


def read_seed(path: Path) -> Iterator[tuple[int, list[dict[str, Any]]]]:
    """(line number, messages) of a seed JSONL file (BOM and blank lines tolerated).

    Each example must pass the validator's error checks: a seed file is merged into every
    dataset, so a bad line there is the build's error (named by file, line and field), not a
    rejected upload later. Read in binary so that bad UTF-8 is reported on its line.
    """
    from admin.datasets.validate import (  # validate imports nothing from here
        CATEGORIES,
        check_example,
    )

    with path.open("rb") as fh:
        for number, raw in enumerate(fh, 1):
            if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise SeedError(f"{path}:{number}: byte {err.start + 1} of the line is not"
                                " UTF-8") from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line, parse_constant=_reject_constant)
            except json.JSONDecodeError as err:
                raise SeedError(f"{path}:{number}: not JSON ({err.msg})") from None
            except (RecursionError, ValueError) as err:  # too deep, huge integers, NaN
                what = "nested too deeply" if isinstance(err, RecursionError) else str(err)
                raise SeedError(f"{path}:{number}: not JSON ({what})") from None
            for category, message in check_example(obj):
                if CATEGORIES[category][0] == "error":
                    raise SeedError(f"{path}:{number}: {message} ({category})")
            messages: list[dict[str, Any]] = obj["messages"]
            try:
                dumps_line({"messages": messages})
            except UnicodeEncodeError as err:
                # A JSON "\\ud800" escape decodes to a lone surrogate, which UTF-8 cannot hold.
                raise SeedError(f"{path}:{number}: text holding a lone UTF-16 surrogate"
                                f" ({err.object[err.start]!a}): not valid Unicode") from None
            yield number, messages


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")
