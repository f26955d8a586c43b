"""The site's identity for SuperNode authentication: an ECDSA (NIST P-384) key pair in OpenSSH
format, as Flower's `flower-supernode --auth-supernode-private-key` and
`flwr supernode register` expect. Only the public key is ever handed to the coordinator."""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

PRIVATE_KEY, PUBLIC_KEY = "site_key", "site_key.pub"


def site_key_paths(keys_dir: Path) -> tuple[Path, Path]:
    return keys_dir / PRIVATE_KEY, keys_dir / PUBLIC_KEY


def enroll(keys_dir: Path, comment: str) -> Path:
    """Create the key pair once (an existing pair is kept); returns the public key's path."""
    private, public = site_key_paths(keys_dir)
    if private.is_file() and public.is_file():
        return public
    keys_dir.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
    )
    private.chmod(0o600)
    line = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    public.write_bytes(line + f" {comment}\n".encode())
    return public
