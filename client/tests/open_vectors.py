#!/usr/bin/env python3
"""An independent reading of docs/api.md, "Writing a client": rebuilds the signed bytes, the
report data and the HPKE context of every case in vectors.json from the documented layouts, and
opens each envelope with RFC 9180 (base mode, DHKEM(X25519, HKDF-SHA256), HKDF-SHA256,
ChaCha20-Poly1305) written here from the RFC, using only the `cryptography` package. It shares
no code with the Rust implementation. sr25519 is not checked here (no Python library exposes the
signing context; see the docs).

    python3 client/tests/open_vectors.py [path/to/vectors.json]
"""
import hashlib
import hmac
import json
import struct
import sys
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat


def canon(domain, *fields):
    out = struct.pack(">H", len(domain)) + domain.encode()
    for kind, v in fields:
        if kind == "bytes":
            out += struct.pack(">I", len(v)) + v
        elif kind == "u64":
            out += struct.pack(">Q", v)
        elif kind == "opt_u64":
            out += b"\x00" if v is None else b"\x01" + struct.pack(">Q", v)
    return out


# RFC 9180 with KEM 0x0020, KDF 0x0001, AEAD 0x0003.
def extract(salt, ikm):
    return hmac.new(salt or b"\x00" * 32, ikm, hashlib.sha256).digest()


def expand(prk, info, n):
    out, t, i = b"", b"", 1
    while len(out) < n:
        t = hmac.new(prk, t + info + bytes([i]), hashlib.sha256).digest()
        out += t
        i += 1
    return out[:n]


def labeled_extract(suite, salt, label, ikm):
    return extract(salt, b"HPKE-v1" + suite + label + ikm)


def labeled_expand(suite, prk, label, info, n):
    return expand(prk, struct.pack(">H", n) + b"HPKE-v1" + suite + label + info, n)


KEM_SUITE = b"KEM" + struct.pack(">H", 0x0020)
HPKE_SUITE = b"HPKE" + struct.pack(">HHH", 0x0020, 0x0001, 0x0003)


def raw(pub):
    return pub.public_bytes(Encoding.Raw, PublicFormat.Raw)


def open_base(sk_r_bytes, enc, info, aad, ct):
    sk_r = X25519PrivateKey.from_private_bytes(sk_r_bytes)
    dh = sk_r.exchange(X25519PublicKey.from_public_bytes(enc))
    kem_context = enc + raw(sk_r.public_key())
    eae_prk = labeled_extract(KEM_SUITE, b"", b"eae_prk", dh)
    shared = labeled_expand(KEM_SUITE, eae_prk, b"shared_secret", kem_context, 32)
    psk_id_hash = labeled_extract(HPKE_SUITE, b"", b"psk_id_hash", b"")
    info_hash = labeled_extract(HPKE_SUITE, b"", b"info_hash", info)
    ks_context = b"\x00" + psk_id_hash + info_hash
    secret = labeled_extract(HPKE_SUITE, shared, b"secret", b"")
    key = labeled_expand(HPKE_SUITE, secret, b"key", ks_context, 32)
    base_nonce = labeled_expand(HPKE_SUITE, secret, b"base_nonce", ks_context, 12)
    return ChaCha20Poly1305(key).decrypt(base_nonce, ct, aad)  # sequence number 0


def main():
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("vectors.json")
    d = json.loads(path.read_text())
    i = {k: (bytes.fromhex(v) if isinstance(v, str) else v) for k, v in d["inputs"].items()}
    H = bytes.fromhex
    for c in d["cases"]:
        r, s = c["request"], c["response"]
        rd = hashlib.sha512(
            b"gatekeeper/v1/report-data" + i["worker_public_key"] + i["recipient_public_key"] + H(r["nonce"])
        ).digest()
        assert rd.hex() == r["report_data"], c["name"]
        a = r["attestation"]
        evidence = [("u64", 0)] if a is None else [
            ("u64", 1), ("u64", a["kind"]),
            ("bytes", hashlib.sha256(H(a["evidence"])).digest()),
            ("bytes", hashlib.sha256(H(a["collateral"])).digest()),
        ]
        signed = canon(
            "gatekeeper/v1/key-request", ("u64", r["kind"]), ("bytes", H(r["target_id"])),
            ("bytes", i["gatekeeper_id"]), ("bytes", i["worker_public_key"]),
            ("bytes", i["recipient_public_key"]), ("opt_u64", r["epoch"]), ("bytes", H(r["nonce"])),
            ("u64", r["timestamp_ms"]), *evidence,
        )
        assert signed.hex() == r["signing_bytes"], c["name"]
        digest = hashlib.sha256(signed).digest()
        assert digest.hex() == r["digest"] == s["request_digest"], c["name"]
        subject = canon(
            "gatekeeper/v1/subject/key-delivery", ("u64", s["kind"]), ("bytes", H(s["subject"])),
            ("bytes", i["worker_public_key"]),
        )
        info = canon(
            "gatekeeper/v1/hpke-info", ("bytes", b"key-delivery"), ("bytes", i["gatekeeper_id"]),
            ("u64", s["epoch"]), ("bytes", i["recipient_public_key"]),
        )
        aad = canon(
            "gatekeeper/v1/hpke-aad", ("bytes", b"key-delivery"), ("bytes", i["gatekeeper_id"]),
            ("u64", s["epoch"]), ("bytes", subject), ("bytes", i["recipient_public_key"]),
        )
        hp = s["hpke"]
        assert (subject.hex(), info.hex(), aad.hex()) == (hp["subject"], hp["info"], hp["aad"]), c["name"]
        # DeriveKeyPair(ikm) for X25519 (RFC 9180 section 7.1.3) gives the ephemeral key.
        dkp = labeled_extract(KEM_SUITE, b"", b"dkp_prk", H(hp["ephemeral_ikm"]))
        sk_e = labeled_expand(KEM_SUITE, dkp, b"sk", b"", 32)
        assert sk_e.hex() == hp["ephemeral_secret_key"], c["name"]
        assert raw(X25519PrivateKey.from_private_bytes(sk_e).public_key()).hex() == hp["encapped_key"]
        seed = open_base(i["recipient_secret_key"], H(hp["encapped_key"]), info, aad, H(hp["ciphertext"]))
        assert seed.hex() == s["derived_seed"], c["name"]
        response = canon(
            "gatekeeper/v1/key-response", ("u64", s["kind"]), ("u64", s["epoch"]),
            ("bytes", H(s["subject"])), ("bytes", H(s["cluster_id"])), ("u64", s["scheme"]),
            ("bytes", H(s["derived_public_key"])), ("u64", 1), ("bytes", H(hp["encapped_key"])),
            ("bytes", H(hp["ciphertext"])), ("bytes", digest), ("u64", s["issued_at_ms"]),
            ("u64", s["served_by"]),
        )
        assert response.hex() == s["signing_bytes"], c["name"]
        print(f"{c['name']}: layouts match, envelope opens to the derived seed")


if __name__ == "__main__":
    main()
