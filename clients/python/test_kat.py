"""Checks the worked example of docs/PROTOCOL.md (clients/python/kat.json) with om_wire.

    python3 clients/python/test_kat.py            # exit 0 when every value matches, else 1
    python3 clients/python/test_kat.py --print    # prints the values computed from the inputs

The values were computed twice, by this Python implementation and by a separate Rust
program using `snow` with fixed ephemeral keys; both agreed.
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import om_wire as w  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey  # noqa: E402

KAT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kat.json")


def compute(inp: dict) -> dict:
    """Every intermediate value of the example, as hex, from the inputs alone."""
    out: dict[str, str] = {}
    mode = {"member": w.MODE_MEMBER, "join": w.MODE_JOIN}[inp["mode"]]
    psk = w.psk(inp["secret"].encode(), inp["cluster"])
    out["psk"] = psk.hex()
    prologue = w.prologue(mode, inp["sender"], inp["receiver"], inp["cluster"])
    out["prologue"] = prologue.hex()

    ie = bytes.fromhex(inp["initiator_ephemeral_private"])
    re = bytes.fromhex(inp["responder_ephemeral_private"])
    out["initiator_ephemeral_public"] = w._pub(X25519PrivateKey.from_private_bytes(ie)).hex()
    out["responder_ephemeral_public"] = w._pub(X25519PrivateKey.from_private_bytes(re)).hex()

    # Initiator, step by step (the same calls Handshake makes, with the state shown).
    hs = w.Handshake(psk, prologue, ie)
    out["h0"] = hs.ss.h.hex()  # protocol name padded to 32 bytes, then MixHash(prologue)
    noise1 = hs.write_message1()
    out["noise1"] = noise1.hex()
    out["h1"] = hs.ss.h.hex()
    out["ck1"] = hs.ss.ck.hex()
    hello = w.encode_hello(mode, inp["sender"], inp["receiver"], noise1)
    out["hello_frame"] = hello.hex()

    # Responder side, written out here with the node's name as the welcome payload.
    rs = w._Symmetric(w.NOISE_NAME)
    rs.mix_hash(prologue)
    rs.mix_key_and_hash(psk)
    e_pub = noise1[:32]
    rs.mix_hash(e_pub)
    rs.mix_key(e_pub)
    assert rs.decrypt_and_hash(noise1[32:]) == b""
    r_priv = X25519PrivateKey.from_private_bytes(re)
    re_pub = w._pub(r_priv)
    rs.mix_hash(re_pub)
    rs.mix_key(re_pub)
    dh = r_priv.exchange(X25519PrivateKey.from_private_bytes(ie).public_key())
    out["ee"] = dh.hex()
    rs.mix_key(dh)
    noise2 = re_pub + rs.encrypt_and_hash(inp["responder_name"].encode())
    out["noise2"] = noise2.hex()
    out["welcome_frame"] = w.with_len(bytes([w.VERSION, w.KIND_WELCOME]) + noise2).hex()
    rk1, rk2 = rs.split()

    name, sealer, opener = hs.read_message2(noise2)
    assert name == inp["responder_name"].encode()
    out["handshake_hash"] = hs.handshake_hash.hex()
    out["ck2"] = hs.ss.ck.hex()
    k1, k2 = hs.ss.split()
    assert (k1, k2) == (rk1, rk2)
    out["k_initiator_to_responder"] = k1.hex()
    out["k_responder_to_initiator"] = k2.hex()

    req = w.encode_request(inp["reqid"], inp["action"], inp["options"])
    out["request_message"] = req.hex()
    out["request_plaintext"] = (bytes([w.LAST]) + req).hex()
    rec = sealer.seal(req)
    out["request_record"] = rec.hex()
    node_opener = w.Opener(k1)
    assert node_opener.open(rec[4:]) == req

    resp = w.packb({"reqid": inp["reqid"], "status": inp["response"]["status"],
                    "data": inp["response"]["data"], "error": inp["response"]["error"]})
    out["response_message"] = resp.hex()
    out["response_plaintext"] = (bytes([w.LAST]) + resp).hex()
    rrec = w.Sealer(k2).seal(resp)
    out["response_record"] = rrec.hex()
    m = w.decode_message(opener.open(rrec[4:]))
    assert m["reqid"] == inp["reqid"] and m["status"] == inp["response"]["status"]
    return out


def main(argv: list[str]) -> int:
    with open(KAT, encoding="utf-8") as f:
        kat = json.load(f)
    got = compute(kat["inputs"])
    if "--print" in argv:
        print(json.dumps(got, indent=2))
        return 0
    bad = 0
    for key, want in kat["expected"].items():
        have = got.get(key)
        if have != want:
            bad += 1
            print(f"MISMATCH {key}\n  want {want}\n  got  {have}")
    missing = set(got) - set(kat["expected"])
    if missing:
        print(f"note: not in kat.json: {sorted(missing)}")
    # msgpack round trips of the shapes om uses
    for v in [None, True, False, 0, 127, 128, 255, 256, 65536, 2**32, 2**64 - 1, -1, -32, -33,
              -129, -2**63, 1.5, "", "x" * 31, "x" * 32, "é" * 200, b"", b"\x00" * 300,
              [], [1, [2, [3]]], {}, {"a": {"b": [1, "c", None]}}, list(range(20))]:
        if w.unpackb(w.packb(v)) != v:
            bad += 1
            print(f"MISMATCH msgpack round trip of {v!r}")
    if bad:
        print(f"FAIL: {bad} mismatches")
        return 1
    print(f"ok: {len(kat['expected'])} known-answer values match")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
