"""TFRecord framing and ``tf.train.Example`` parsing without TensorFlow.

TFRecord file = records of::

    uint64 length (little endian)
    uint32 masked_crc32c(length bytes)
    byte   data[length]
    uint32 masked_crc32c(data)

with ``masked_crc(c) = ((c >> 15 | c << 17) + 0xa282ead8) mod 2**32`` over CRC-32C (Castagnoli).

Why these dependencies: CRC-32C comes from the ``crc32c`` package (a maintained C extension, no
TensorFlow; pure-Python CRC over image-heavy episodes of 10-100 MB would dominate conversion time).
``tf.train.Example`` is parsed with the maintained ``protobuf`` runtime, from a descriptor built in
code below (``tensorflow/core/example/{example,feature}.proto``, field numbers unchanged), so no
``protoc`` step and no generated file to keep in sync. Whatever the protobuf backend (upb, python),
parsing is the reference wire-format implementation, not hand-rolled.

Errors are :class:`RecordError` (a ``ValueError``) naming the file, the record index and the byte
offset.
"""

from __future__ import annotations

import os
import struct
from typing import BinaryIO, Iterator

import crc32c as _crc32c
import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

__all__ = [
    "RecordError",
    "masked_crc32c",
    "iter_records",
    "write_record",
    "Example",
    "parse_example",
    "feature_values",
]

_MASK_DELTA = 0xA282EAD8


class RecordError(ValueError):
    """Bad TFRecord framing: truncated record or CRC mismatch (names file, record, offset).

    ``recoverable``: True for a data-CRC mismatch with valid framing (the reader can go on with the
    next record); False for a truncated file or a corrupted length (the rest is unreadable)."""

    def __init__(self, msg: str, path: str, record: int, offset: int, recoverable: bool) -> None:
        super().__init__(msg)
        self.path, self.record, self.offset, self.recoverable = path, record, offset, recoverable


def masked_crc32c(data: bytes) -> int:
    crc = _crc32c.crc32c(data) & 0xFFFFFFFF
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def write_record(f: BinaryIO, data: bytes) -> None:
    """Append one framed record to ``f``."""
    header = struct.pack("<Q", len(data))
    f.write(header + struct.pack("<I", masked_crc32c(header)) + data + struct.pack("<I", masked_crc32c(data)))


def iter_records(path: str | os.PathLike, check_crc: bool = True, skip_bad_data: bool = False) -> Iterator[tuple[int, bytes | RecordError]]:
    """Yield ``(record_index, data)`` for each record of the TFRecord file ``path``.

    Raises :class:`RecordError` on a truncated record or CRC mismatch. With ``skip_bad_data``, a
    recoverable error (data CRC mismatch) is *yielded* as ``(index, RecordError)`` instead and
    reading goes on; unrecoverable ones still raise."""
    path = str(path)
    with open(path, "rb") as f:
        i = 0
        while True:
            offset = f.tell()
            header = f.read(12)
            if not header:
                return
            if len(header) < 12:
                raise RecordError(f"{path}: record {i} at byte {offset}: truncated header "
                                  f"({len(header)} of 12 bytes)", path, i, offset, False)
            (length,) = struct.unpack("<Q", header[:8])
            (len_crc,) = struct.unpack("<I", header[8:])
            if check_crc and masked_crc32c(header[:8]) != len_crc:
                raise RecordError(f"{path}: record {i} at byte {offset}: length CRC mismatch (corrupted "
                                  "length field)", path, i, offset, False)
            data = f.read(length)
            footer = f.read(4)
            if len(data) < length or len(footer) < 4:
                raise RecordError(f"{path}: record {i} at byte {offset}: truncated record (expected "
                                  f"{length} data bytes + 4 CRC bytes, file ends after {len(data) + len(footer)})",
                                  path, i, offset, False)
            if check_crc and masked_crc32c(data) != struct.unpack("<I", footer)[0]:
                err = RecordError(f"{path}: record {i} at byte {offset}: data CRC mismatch", path, i, offset, True)
                if not skip_bad_data:
                    raise err
                yield i, err
            else:
                yield i, data
            i += 1


def _build_example_classes():
    fdp = descriptor_pb2.FileDescriptorProto(name="vla_ebt_tf_example.proto", package="tensorflow", syntax="proto3")
    L = descriptor_pb2.FieldDescriptorProto

    def msg(name, fields):
        m = fdp.message_type.add(name=name)
        for fname, num, ftype, label, type_name in fields:
            fd = m.field.add(name=fname, number=num, type=ftype, label=label)
            if type_name:
                fd.type_name = type_name
        return m

    rep, opt = L.LABEL_REPEATED, L.LABEL_OPTIONAL
    msg("BytesList", [("value", 1, L.TYPE_BYTES, rep, None)])
    msg("FloatList", [("value", 1, L.TYPE_FLOAT, rep, None)])
    msg("Int64List", [("value", 1, L.TYPE_INT64, rep, None)])
    feat = msg("Feature", [
        ("bytes_list", 1, L.TYPE_MESSAGE, opt, ".tensorflow.BytesList"),
        ("float_list", 2, L.TYPE_MESSAGE, opt, ".tensorflow.FloatList"),
        ("int64_list", 3, L.TYPE_MESSAGE, opt, ".tensorflow.Int64List"),
    ])
    feat.oneof_decl.add(name="kind")
    for fd in feat.field:
        fd.oneof_index = 0
    features = msg("Features", [("feature", 1, L.TYPE_MESSAGE, rep, ".tensorflow.Features.FeatureEntry")])
    entry = features.nested_type.add(name="FeatureEntry")
    entry.field.add(name="key", number=1, type=L.TYPE_STRING, label=opt)
    entry.field.add(name="value", number=2, type=L.TYPE_MESSAGE, label=opt, type_name=".tensorflow.Feature")
    entry.options.map_entry = True
    msg("Example", [("features", 1, L.TYPE_MESSAGE, opt, ".tensorflow.Features")])
    pool = descriptor_pool.DescriptorPool()
    fd = pool.Add(fdp)
    return {n: message_factory.GetMessageClass(fd.message_types_by_name[n])
            for n in ("BytesList", "FloatList", "Int64List", "Feature", "Features", "Example")}


_CLASSES = _build_example_classes()
Example = _CLASSES["Example"]
Feature = _CLASSES["Feature"]


def parse_example(data: bytes, where: str = "record"):
    """Serialized ``tf.train.Example`` -> message (``.features.feature`` is a str -> Feature map)."""
    ex = Example()
    try:
        ex.ParseFromString(data)
    except Exception as e:  # noqa: BLE001 - protobuf raises DecodeError (a Message error)
        raise ValueError(f"{where}: not a valid tf.train.Example ({e})") from None
    return ex


def feature_values(feature) -> tuple[str, object]:
    """Feature -> (kind, values): kind "bytes" (list[bytes]), "float" (float32 array) or "int"
    (int64 array); ("none", empty array) for an empty Feature."""
    kind = feature.WhichOneof("kind")
    if kind == "bytes_list":
        return "bytes", list(feature.bytes_list.value)
    if kind == "float_list":
        return "float", np.asarray(feature.float_list.value, dtype=np.float32)
    if kind == "int64_list":
        return "int", np.asarray(feature.int64_list.value, dtype=np.int64)
    return "none", np.zeros(0, np.float32)
