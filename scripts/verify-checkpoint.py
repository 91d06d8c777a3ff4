#!/usr/bin/env python3
"""Check a copied tokenwatch audit checkpoint offline, with the public key alone.

    python3 verify-checkpoint.py checkpoint.vkey 0000000012-head.note [events.csv]

A checkpoint is a signed note (the C2SP signed-note format of transparency logs):
its text, a blank line, and a line "— tokenwatch-audit <base64(key hash ‖ Ed25519
signature)>" over the text. `checkpoint.vkey` is the verifier key
"tokenwatch-audit+<key hash hex>+<base64(0x01 ‖ public key)>", written beside every
checkpoint. With a CSV export (`tokenwatch export events`), the row whose id is the
checkpoint's `last_id` must carry the checkpoint's chain hash: the export then reaches
the signed head unchanged there. Exit status 0: all good; 1: a check failed.

Needs only Python 3 and the `cryptography` package.
"""
import base64
import csv
import hashlib
import sys

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

SIG_PREFIX = "\u2014 "


def fail(msg: str) -> None:
    print(f"FAILED: {msg}")
    sys.exit(1)


def main() -> None:
    if len(sys.argv) not in (3, 4):
        print(__doc__)
        sys.exit(2)
    # Only the first two "+" separate: the base64 key may contain "+" itself.
    name, key_hash_hex, key_b64 = open(sys.argv[1]).read().strip().split("+", 2)
    key = base64.b64decode(key_b64)
    if key[0] != 1 or len(key) != 33:
        fail("the verifier key is not an Ed25519 key")
    public = key[1:]
    want_hash = hashlib.sha256(name.encode() + b"\n" + b"\x01" + public).digest()[:4]
    if want_hash.hex() != key_hash_hex:
        fail("the verifier key's hash does not match its key")

    note = open(sys.argv[2], encoding="utf-8").read()
    text, _, sigs = note.partition("\n\n")
    text += "\n"
    ok = False
    for line in sigs.splitlines():
        if not line.startswith(SIG_PREFIX):
            continue
        signer, _, b64 = line[len(SIG_PREFIX):].partition(" ")
        blob = base64.b64decode(b64)
        if signer != name or blob[:4] != want_hash:
            continue
        try:
            Ed25519PublicKey.from_public_bytes(public).verify(blob[4:], text.encode())
            ok = True
        except InvalidSignature:
            pass
    if not ok:
        fail(f"{sys.argv[2]} is not signed by {name}")
    fields = dict(line.split(" ", 1) for line in text.splitlines()[1:])
    print(
        f"checkpoint #{fields['seq']} ({fields['kind']}) signed: row {fields['last_id']} "
        f"has chain hash {fields['last_hash']}"
    )

    if len(sys.argv) == 4:
        with open(sys.argv[3], newline="", encoding="utf-8") as f:
            rows = {r["id"]: r for r in csv.DictReader(f)}
        row = rows.get(fields["last_id"])
        if row is None:
            fail(f"the export has no row {fields['last_id']}")
        if row["hash"] != fields["last_hash"]:
            fail(f"row {fields['last_id']} of the export differs from the signed checkpoint")
        print(f"OK: {sys.argv[3]} holds row {fields['last_id']} exactly as signed")


if __name__ == "__main__":
    main()
