"""A minimal client of om wire protocol v2, written from docs/PROTOCOL.md.

Independent of the Rust implementation: the Noise handshake
(Noise_NNpsk0_25519_AESGCM_SHA256), the records and a small MessagePack codec are written
here from the specifications; the primitives (X25519, AES-256-GCM, HMAC-SHA256, HKDF)
come from the `cryptography` package. Python 3.11, nothing else outside the stdlib.

    from om_wire import OmClient
    c = OmClient("127.0.0.1", 1214, secret, "demo", "cli1")
    status, data, error = c.request("daemon_status", {"local": True})
    c.close()

One request at a time per client (no pipelining); requests are never retried.
"""

from __future__ import annotations

import os
import random
import socket
import struct

from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

__all__ = [
    "OmClient", "Refused", "ProtocolError", "REFUSAL_CODES", "STATUS",
    "packb", "unpackb", "psk", "prologue", "Handshake", "Sealer", "Opener",
    "encode_hello", "encode_request", "decode_message",
]

# ---------------------------------------------------------------------------------------
# Constants (docs/PROTOCOL.md sections 1-4)

VERSION = 2
KIND_HELLO, KIND_WELCOME, KIND_REFUSAL = 1, 2, 3
MODE_MEMBER, MODE_JOIN = 1, 2
PSK_SALT = b"om/v2/psk"
PROLOGUE_PREFIX = b"om/v2"
NOISE_NAME = b"Noise_NNpsk0_25519_AESGCM_SHA256"
TAG_LEN = 16
MAX_RECORD = 65535
MAX_CHUNK = MAX_RECORD - TAG_LEN - 1  # 65518
LAST = 0x01
EMPTY_PACKET = b"\x00\x00\x00\x00"
DEFAULT_PORT = 1214
DEFAULT_MAX_MESSAGE = 16 * 1024 * 1024

REFUSAL_CODES = {
    1: "version",
    2: "malformed",
    3: "misaddressed",
    4: "not_member",
    5: "auth",
    6: "blacklisted",
    7: "rate_limited",
}

STATUS = {
    0: "OK", 1: "ERROR", 2: "UNKNOWN_ACTION", 3: "BAD_REQUEST", 4: "FORBIDDEN",
    5: "STALE", 6: "BAD_PAYLOAD", 7: "INTERNAL", 8: "UNAVAILABLE", 9: "MISADDRESSED",
}


class ProtocolError(Exception):
    """The peer broke the protocol (or the session's keys do not match)."""


class Refused(Exception):
    """The node refused the hello. `code` is the refusal byte, `name` its name."""

    def __init__(self, code: int, reason: str):
        self.code = code
        self.name = REFUSAL_CODES.get(code, f"unknown({code})")
        self.reason = reason
        super().__init__(f"refused ({self.name}, code {code}): {reason}")


# ---------------------------------------------------------------------------------------
# MessagePack (https://github.com/msgpack/msgpack/blob/master/spec.md), the subset om uses:
# nil, bool, int, float, str, bin, array, map. ext is refused, as the node does.

def packb(obj) -> bytes:
    out = bytearray()
    _pack(obj, out)
    return bytes(out)


def _pack(o, out: bytearray) -> None:
    if o is None:
        out.append(0xC0)
    elif o is True:
        out.append(0xC3)
    elif o is False:
        out.append(0xC2)
    elif isinstance(o, int):
        _pack_int(o, out)
    elif isinstance(o, float):
        out.append(0xCB)
        out += struct.pack(">d", o)
    elif isinstance(o, str):
        b = o.encode("utf-8")
        n = len(b)
        if n < 32:
            out.append(0xA0 | n)
        elif n < 0x100:
            out += bytes([0xD9, n])
        elif n < 0x10000:
            out += b"\xda" + struct.pack(">H", n)
        else:
            out += b"\xdb" + struct.pack(">I", n)
        out += b
    elif isinstance(o, (bytes, bytearray, memoryview)):
        b = bytes(o)
        n = len(b)
        if n < 0x100:
            out += bytes([0xC4, n])
        elif n < 0x10000:
            out += b"\xc5" + struct.pack(">H", n)
        else:
            out += b"\xc6" + struct.pack(">I", n)
        out += b
    elif isinstance(o, (list, tuple)):
        n = len(o)
        if n < 16:
            out.append(0x90 | n)
        elif n < 0x10000:
            out += b"\xdc" + struct.pack(">H", n)
        else:
            out += b"\xdd" + struct.pack(">I", n)
        for x in o:
            _pack(x, out)
    elif isinstance(o, dict):
        n = len(o)
        if n < 16:
            out.append(0x80 | n)
        elif n < 0x10000:
            out += b"\xde" + struct.pack(">H", n)
        else:
            out += b"\xdf" + struct.pack(">I", n)
        for k, v in o.items():
            _pack(k, out)
            _pack(v, out)
    else:
        raise TypeError(f"cannot pack {type(o).__name__}")


def _pack_int(v: int, out: bytearray) -> None:
    # The shortest form, as rmp does: positive fixint, uint8..64, negative fixint, int8..64.
    if 0 <= v < 0x80:
        out.append(v)
    elif v >= 0:
        for marker, fmt, top in ((0xCC, ">B", 0xFF), (0xCD, ">H", 0xFFFF),
                                 (0xCE, ">I", 0xFFFFFFFF), (0xCF, ">Q", 0xFFFFFFFFFFFFFFFF)):
            if v <= top:
                out.append(marker)
                out += struct.pack(fmt, v)
                return
        raise OverflowError("integer too large for MessagePack")
    elif v >= -32:
        out.append(v & 0xFF)
    else:
        for marker, fmt, low in ((0xD0, ">b", -0x80), (0xD1, ">h", -0x8000),
                                 (0xD2, ">i", -0x80000000), (0xD3, ">q", -0x8000000000000000)):
            if v >= low:
                out.append(marker)
                out += struct.pack(fmt, v)
                return
        raise OverflowError("integer too small for MessagePack")


MAX_DEPTH = 128


def unpackb(data: bytes):
    """Decodes exactly one value; trailing bytes are an error."""
    value, pos = _unpack(memoryview(bytes(data)), 0, 0)
    if pos != len(data):
        raise ValueError(f"{len(data) - pos} trailing bytes after the MessagePack value")
    return value


def _take(buf: memoryview, pos: int, n: int) -> tuple[bytes, int]:
    end = pos + n
    if end > len(buf):
        raise ValueError(f"truncated MessagePack: {n} bytes needed at offset {pos}")
    return bytes(buf[pos:end]), end


def _unpack(buf: memoryview, pos: int, depth: int):
    if depth > MAX_DEPTH:
        raise ValueError(f"nested deeper than {MAX_DEPTH}")
    b, pos = _take(buf, pos, 1)
    m = b[0]
    if m <= 0x7F:
        return m, pos
    if m >= 0xE0:
        return m - 0x100, pos
    if 0x80 <= m <= 0x8F:
        return _unpack_map(buf, pos, m & 0x0F, depth)
    if 0x90 <= m <= 0x9F:
        return _unpack_array(buf, pos, m & 0x0F, depth)
    if 0xA0 <= m <= 0xBF:
        raw, pos = _take(buf, pos, m & 0x1F)
        return raw.decode("utf-8"), pos
    simple = {0xC0: None, 0xC2: False, 0xC3: True}
    if m in simple:
        return simple[m], pos
    fixed = {0xCC: ">B", 0xCD: ">H", 0xCE: ">I", 0xCF: ">Q",
             0xD0: ">b", 0xD1: ">h", 0xD2: ">i", 0xD3: ">q", 0xCA: ">f", 0xCB: ">d"}
    if m in fixed:
        fmt = fixed[m]
        raw, pos = _take(buf, pos, struct.calcsize(fmt))
        return struct.unpack(fmt, raw)[0], pos
    lengths = {0xC4: ">B", 0xC5: ">H", 0xC6: ">I", 0xD9: ">B", 0xDA: ">H", 0xDB: ">I",
               0xDC: ">H", 0xDD: ">I", 0xDE: ">H", 0xDF: ">I"}
    if m in lengths:
        fmt = lengths[m]
        raw, pos = _take(buf, pos, struct.calcsize(fmt))
        n = struct.unpack(fmt, raw)[0]
        if m in (0xC4, 0xC5, 0xC6):
            return _take(buf, pos, n)
        if m in (0xD9, 0xDA, 0xDB):
            raw, pos = _take(buf, pos, n)
            return raw.decode("utf-8"), pos
        if m in (0xDC, 0xDD):
            return _unpack_array(buf, pos, n, depth)
        return _unpack_map(buf, pos, n, depth)
    if m == 0xC1:
        raise ValueError("byte 0xc1 is never used in MessagePack")
    raise ValueError(f"MessagePack ext values are not accepted (marker {m:#04x})")


def _unpack_array(buf, pos, n, depth):
    if n > len(buf) - pos:
        raise ValueError("truncated MessagePack array")
    items = []
    for _ in range(n):
        v, pos = _unpack(buf, pos, depth + 1)
        items.append(v)
    return items, pos


def _unpack_map(buf, pos, n, depth):
    if 2 * n > len(buf) - pos:
        raise ValueError("truncated MessagePack map")
    d = {}
    for _ in range(n):
        k, pos = _unpack(buf, pos, depth + 1)
        v, pos = _unpack(buf, pos, depth + 1)
        if isinstance(k, list):
            k = tuple(k)
        if isinstance(k, dict):
            raise ValueError("a map used as a map key")
        d[k] = v
    return d, pos


# ---------------------------------------------------------------------------------------
# Messages (section 6): flat maps, reqid first so that a node can answer a malformed one.

def encode_request(reqid, action: str, options=None) -> bytes:
    if not (isinstance(reqid, str) or (isinstance(reqid, int) and reqid >= 0)):
        raise ValueError("reqid is a non-negative integer or a string")
    return packb({"reqid": reqid, "action": action, "options": {} if options is None else options})


def decode_message(plain: bytes) -> dict:
    m = unpackb(plain)
    if not isinstance(m, dict) or "reqid" not in m:
        raise ProtocolError("a message is a map with a reqid")
    return m


# ---------------------------------------------------------------------------------------
# Keys, prologue, frames (sections 1-3)

def psk(secret: bytes | str, cluster: str) -> bytes:
    """HKDF-SHA256(ikm = secret, salt = "om/v2/psk", info = cluster name), 32 bytes."""
    if isinstance(secret, str):
        secret = secret.encode("utf-8")
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=PSK_SALT,
                info=cluster.encode("utf-8")).derive(secret)


def _name(s: str, what: str, allow_empty: bool) -> bytes:
    b = s.encode("utf-8")
    if len(b) > 255 or (not b and not allow_empty):
        raise ValueError(f"{what} nodename must be {0 if allow_empty else 1}..=255 bytes")
    return b


def prologue(mode: int, sender: str, receiver: str, cluster: str) -> bytes:
    s = _name(sender, "sender", False)
    r = _name(receiver, "receiver", True)
    c = cluster.encode("utf-8")[:0xFFFF]
    return PROLOGUE_PREFIX + bytes([mode, len(s)]) + s + bytes([len(r)]) + r + struct.pack(">H", len(c)) + c


def with_len(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def encode_hello(mode: int, sender: str, receiver: str, noise1: bytes) -> bytes:
    s = _name(sender, "sender", False)
    r = _name(receiver, "receiver", True)
    if len(noise1) != 48:
        raise ValueError("Noise message 1 of NNpsk0 with an empty payload is 48 bytes")
    return with_len(bytes([VERSION, KIND_HELLO, mode, len(s)]) + s + bytes([len(r)]) + r + noise1)


# ---------------------------------------------------------------------------------------
# Noise (https://noiseprotocol.org/noise.html, revision 34), only what NNpsk0 needs.

def _hmac(key: bytes, data: bytes) -> bytes:
    h = hmac.HMAC(key, hashes.SHA256())
    h.update(data)
    return h.finalize()


def _sha256(data: bytes) -> bytes:
    h = hashes.Hash(hashes.SHA256())
    h.update(data)
    return h.finalize()


def _noise_hkdf(ck: bytes, ikm: bytes, n: int) -> list[bytes]:
    temp = _hmac(ck, ikm)
    outs, prev = [], b""
    for i in range(1, n + 1):
        prev = _hmac(temp, prev + bytes([i]))
        outs.append(prev)
    return outs


def _nonce(n: int) -> bytes:
    # AESGCM in Noise: 32 bits of zeros, then the 64-bit counter big-endian.
    return b"\x00\x00\x00\x00" + struct.pack(">Q", n)


class _Symmetric:
    def __init__(self, name: bytes):
        self.h = name.ljust(32, b"\x00") if len(name) <= 32 else _sha256(name)
        self.ck = self.h
        self.k: bytes | None = None
        self.n = 0

    def mix_hash(self, data: bytes) -> None:
        self.h = _sha256(self.h + data)

    def mix_key(self, ikm: bytes) -> None:
        self.ck, k = _noise_hkdf(self.ck, ikm, 2)
        self.k, self.n = k, 0

    def mix_key_and_hash(self, ikm: bytes) -> None:
        self.ck, th, k = _noise_hkdf(self.ck, ikm, 3)
        self.mix_hash(th)
        self.k, self.n = k, 0

    def encrypt_and_hash(self, plain: bytes) -> bytes:
        assert self.k is not None
        ct = AESGCM(self.k).encrypt(_nonce(self.n), plain, self.h)
        self.n += 1
        self.mix_hash(ct)
        return ct

    def decrypt_and_hash(self, ct: bytes) -> bytes:
        assert self.k is not None
        try:
            plain = AESGCM(self.k).decrypt(_nonce(self.n), ct, self.h)
        except Exception as e:  # cryptography.exceptions.InvalidTag
            raise ProtocolError("the welcome does not authenticate (another secret or cluster name?)") from e
        self.n += 1
        self.mix_hash(ct)
        return plain

    def split(self) -> tuple[bytes, bytes]:
        k1, k2 = _noise_hkdf(self.ck, b"", 2)
        return k1, k2


def _pub(priv: X25519PrivateKey) -> bytes:
    return priv.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


class Handshake:
    """The initiator's side of Noise_NNpsk0_25519_AESGCM_SHA256.

    `ephemeral` fixes the ephemeral private key (32 bytes): for known-answer tests only.
    """

    def __init__(self, psk_: bytes, prologue_: bytes, ephemeral: bytes | None = None):
        self.ss = _Symmetric(NOISE_NAME)
        self.ss.mix_hash(prologue_)
        self.psk = psk_
        self.e = X25519PrivateKey.from_private_bytes(ephemeral) if ephemeral else X25519PrivateKey.generate()

    def write_message1(self) -> bytes:
        # -> psk, e   (payload empty)
        self.ss.mix_key_and_hash(self.psk)
        e_pub = _pub(self.e)
        self.ss.mix_hash(e_pub)
        self.ss.mix_key(e_pub)  # psk handshakes mix e into the key too
        return e_pub + self.ss.encrypt_and_hash(b"")

    def read_message2(self, msg: bytes) -> tuple[bytes, "Sealer", "Opener"]:
        # <- e, ee   (payload: the node's name)
        if len(msg) < 32 + TAG_LEN:
            raise ProtocolError("the welcome is too short")
        re_pub = msg[:32]
        self.ss.mix_hash(re_pub)
        self.ss.mix_key(re_pub)
        self.ss.mix_key(self.e.exchange(X25519PublicKey.from_public_bytes(re_pub)))
        payload = self.ss.decrypt_and_hash(msg[32:])
        k1, k2 = self.ss.split()
        return payload, Sealer(k1), Opener(k2)

    @property
    def handshake_hash(self) -> bytes:
        return self.ss.h


class Sealer:
    """Seals messages into records: `len | AES-GCM(k, nonce n, ad="", flags|chunk)`."""

    def __init__(self, key: bytes):
        self.aead = AESGCM(key)
        self.n = 0

    def seal(self, message: bytes) -> bytes:
        out = bytearray()
        chunks = [message[i:i + MAX_CHUNK] for i in range(0, len(message), MAX_CHUNK)] or [b""]
        for i, chunk in enumerate(chunks):
            flags = LAST if i == len(chunks) - 1 else 0
            rec = self.aead.encrypt(_nonce(self.n), bytes([flags]) + chunk, b"")
            self.n += 1
            out += with_len(rec)
        return bytes(out)


class Opener:
    """Opens records in order and reassembles messages."""

    def __init__(self, key: bytes, max_message: int = DEFAULT_MAX_MESSAGE):
        self.aead = AESGCM(key)
        self.n = 0
        self.max_message = max_message
        self.pending = bytearray()

    def open(self, record: bytes) -> bytes | None:
        if not 1 + TAG_LEN <= len(record) <= MAX_RECORD:
            raise ProtocolError(f"a record of {len(record)} bytes")
        try:
            plain = self.aead.decrypt(_nonce(self.n), record, b"")
        except Exception as e:
            raise ProtocolError("a record does not decrypt: the session is over") from e
        self.n += 1
        flags, chunk = plain[0], plain[1:]
        if flags & ~LAST:
            raise ProtocolError(f"unknown record flags {flags:#x}")
        if len(self.pending) + len(chunk) > self.max_message:
            raise ProtocolError("message larger than max_message")
        self.pending += chunk
        if not flags & LAST:
            return None
        msg, self.pending = bytes(self.pending), bytearray()
        return msg


# ---------------------------------------------------------------------------------------
# The client

class OmClient:
    """One session with one node. Connects (and handshakes) in the constructor.

    `cluster` "" opens a join session (only the `join` action is served then).
    `receiver` "" accepts whichever node listens at the address; a name makes the node
    refuse if it is another node (and this client checks the name in the welcome).
    """

    def __init__(self, host: str, port: int, secret: bytes | str, cluster: str, nodename: str,
                 receiver: str = "", timeout: float = 10.0, _ephemeral: bytes | None = None):
        self.mode = MODE_MEMBER if cluster else MODE_JOIN
        self.nodename = nodename
        self.receiver = receiver
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._next = random.getrandbits(32) + 1
        try:
            hs = Handshake(psk(secret, cluster), prologue(self.mode, nodename, receiver, cluster), _ephemeral)
            self.sock.sendall(encode_hello(self.mode, nodename, receiver, hs.write_message1()))
            body = self._read_frame(MAX_RECORD)
            while body == b"":  # never sent by a node, tolerated
                body = self._read_frame(MAX_RECORD)
            if body is None:
                raise ProtocolError("the node closed the connection without answering the hello")
            if len(body) < 2 or body[0] != VERSION:
                raise ProtocolError(f"not a v2 answer: {body[:8].hex()}")
            if body[1] == KIND_REFUSAL and len(body) >= 3:
                raise Refused(body[2], body[3:].decode("utf-8", "replace"))
            if body[1] != KIND_WELCOME:
                raise ProtocolError(f"unknown answer kind {body[1]}")
            name, self.sealer, self.opener = hs.read_message2(body[2:])
            self.node = name.decode("utf-8")
            if receiver and self.node != receiver:
                raise ProtocolError(f"expected node {receiver!r}, {self.node!r} answered")
        except BaseException:
            self.sock.close()
            raise

    def _recv_exact(self, n: int) -> bytes | None:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                if not buf:
                    return None
                raise ProtocolError("the connection closed inside a frame")
            buf += chunk
        return bytes(buf)

    def _read_frame(self, max_len: int) -> bytes | None:
        head = self._recv_exact(4)
        if head is None:
            return None
        (n,) = struct.unpack(">I", head)
        if n > max_len:
            raise ProtocolError(f"a frame of {n} bytes")
        if n == 0:
            return b""
        body = self._recv_exact(n)
        if body is None:
            raise ProtocolError("the connection closed inside a frame")
        return body

    def request(self, action: str, options=None, reqid=None):
        """Sends one request, waits for its response: `(status, data, error)`."""
        if reqid is None:
            reqid, self._next = self._next, self._next + 1
        self.sock.sendall(self.sealer.seal(encode_request(reqid, action, options)))
        while True:
            body = self._read_frame(MAX_RECORD)
            if body is None:
                raise ProtocolError("the node closed the session before answering")
            if body == b"":
                continue
            plain = self.opener.open(body)
            if plain is None:
                continue
            m = decode_message(plain)
            if "status" not in m:
                raise ProtocolError("a request arrived where a response was expected")
            if m["reqid"] != reqid or type(m["reqid"]) is not type(reqid):
                raise ProtocolError(f"a response to reqid {m['reqid']!r}, not {reqid!r}")
            return m["status"], m.get("data"), m.get("error")

    def empty_packet(self) -> None:
        """Sends `00 00 00 00`: the node dequeues its actions. Nothing is answered."""
        self.sock.sendall(EMPTY_PACKET)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _main(argv: list[str]) -> int:
    import argparse
    import json

    ap = argparse.ArgumentParser(description="one request to an om node over wire v2")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=DEFAULT_PORT)
    ap.add_argument("--conf", help="a node.conf to read cluster.name and cluster.secret from")
    ap.add_argument("--secret", default=os.environ.get("OM_SECRET"))
    ap.add_argument("--cluster")
    ap.add_argument("--name", default="pyclient", help="this client's nodename (sender)")
    ap.add_argument("--receiver", default="")
    ap.add_argument("--empty", action="store_true", help="send an empty packet first")
    ap.add_argument("action")
    ap.add_argument("options", nargs="?", default="{}", help="JSON")
    a = ap.parse_args(argv)
    if a.conf:
        section, conf = "", {}
        for line in open(a.conf, encoding="utf-8"):
            line = line.strip()
            if line.startswith("["):
                section = line.strip("[]").split("]")[0].strip()
            elif "=" in line and not line.startswith(("#", ";")):
                k, v = line.split("=", 1)
                v = v.split(" #")[0].split(" ;")[0].strip()
                conf[f"{section}.{k.strip()}"] = v
        a.secret = a.secret or conf.get("cluster.secret")
        a.cluster = a.cluster if a.cluster is not None else conf.get("cluster.name")
        if a.port == DEFAULT_PORT and "listener.port" in conf:
            a.port = int(conf["listener.port"])
    if a.secret is None or a.cluster is None:
        ap.error("need --conf, or --secret and --cluster")
    try:
        with OmClient(a.host, a.port, a.secret, a.cluster, a.name, a.receiver) as c:
            if a.empty:
                c.empty_packet()
            status, data, error = c.request(a.action, json.loads(a.options))
    except Refused as e:
        print(f"refused: {e.name} ({e.code}): {e.reason}")
        return 2
    print(json.dumps({"node": c.node, "status": status, "data": data, "error": error},
                     indent=2, default=lambda b: b.hex()))
    return 0 if status == 0 else 1


if __name__ == "__main__":
    import sys

    sys.exit(_main(sys.argv[1:]))
