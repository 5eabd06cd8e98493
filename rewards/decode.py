"""Encoded ground truth, decoded without running anything it carries.

Code datasets store their tests compactly: open-instruct's `decode_tests`
(`open_instruct/code_utils/code_utils.py`) takes a list as is, tries a string
as JSON, and otherwise reads it as base64 of a zlib-compressed pickle. A plain
`pickle.loads` of downloaded data runs whatever the payload names (a pickle
can call `os.system`), so here the unpickler refuses every global: only what
pickle builds without importing anything comes back (lists, tuples, dicts,
strings, bytes, numbers, bools, None). A payload that names any class or
callable raises `DecodeError` before it is called.

>>> import base64, pickle, zlib
>>> decode_label(base64.b64encode(zlib.compress(pickle.dumps(["assert f(1) == 2"]))).decode())
['assert f(1) == 2']
>>> decode_label('["assert f(1) == 2"]')
['assert f(1) == 2']
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import pickle
import zlib
from typing import Any

MAX_DECODED_BYTES = 1 << 28  # 256 MiB: a label larger than this decompressed is an attack or a mistake


class DecodeError(ValueError):
    """An encoded label that is not JSON and not a data-only, base64, zlib-compressed pickle."""


class DataOnlyUnpickler(pickle.Unpickler):
    """An unpickler that refuses every global, so nothing can be imported, built or called."""

    def find_class(self, module: str, name: str) -> Any:
        raise DecodeError(f"cannot decode: the pickle names {module}.{name}; only plain data (lists, dicts, "
                          "strings, numbers) is accepted")

    def persistent_load(self, pid: Any) -> Any:
        raise DecodeError("cannot decode: the pickle refers to a persistent object")


def loads_data(payload: bytes) -> Any:
    """`pickle.loads` for plain data only (see `DataOnlyUnpickler`)."""
    try:
        return DataOnlyUnpickler(io.BytesIO(payload)).load()
    except DecodeError:
        raise
    except Exception as err:  # truncated or corrupt pickles raise many kinds of error
        raise DecodeError(f"cannot decode: not a pickle ({type(err).__name__}: {err})") from None


def decode_label(value: Any) -> Any:
    """A label as open-instruct stores it -> plain data; anything but a string comes back unchanged.

    A string is JSON, or else base64 of a zlib-compressed pickle (of the data,
    or of a JSON string of it). Raises `DecodeError("cannot decode: ...")`.
    """
    if isinstance(value, bytes):
        value = value.decode("ascii", errors="replace")
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        pass
    try:
        compressed = base64.b64decode("".join(value.split()), validate=True)
    except (binascii.Error, ValueError):
        raise DecodeError("cannot decode: neither JSON nor base64") from None
    inflater = zlib.decompressobj()
    try:
        payload = inflater.decompress(compressed, MAX_DECODED_BYTES)
    except zlib.error as err:
        raise DecodeError(f"cannot decode: base64 but not zlib-compressed ({err})") from None
    if inflater.unconsumed_tail:
        raise DecodeError(f"cannot decode: more than {MAX_DECODED_BYTES} bytes decompressed")
    data = loads_data(payload)
    if isinstance(data, str):  # some sets pickle the JSON text rather than the data
        try:
            return json.loads(data)
        except json.JSONDecodeError:
            return data
    return data
