"""The wire protocol: frames, message fields and limits. No I/O anywhere in this package."""

from .frame import Frame, FrameReader, decode_header, encode_frame, encode_header

__all__ = ["Frame", "FrameReader", "decode_header", "encode_frame", "encode_header"]
