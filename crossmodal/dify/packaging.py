"""`python -m crossmodal package`: zip the plugin folder into a .difypkg as Dify expects (manifest.yaml at
the root), leaving out what .difyignore and .gitignore name (gitignore syntax) and the usual build folders;
optionally signed the way Dify's plugin daemon verifies third-party signatures.

The signature (the daemon's ``signer/withkey`` and ``decoder/verifier.go``): the package gets one more
entry, ``.verification.dify.json`` (``{"authorized_category": "community"}``), written last; the signed
data is the SHA-256 of every file entry in archive order (that one included) followed by the signing time
as decimal seconds; the signature is RSA PKCS#1 v1.5 over SHA-256 of that data, stored with the time in
the zip comment as ``{"signature": base64, "time": seconds}``. Keys are PKCS#1 PEM ("RSA PRIVATE KEY" /
"RSA PUBLIC KEY"), the format the daemon loads.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import time
import zipfile
from pathlib import Path

import yaml

from crossmodal.errors import CrossmodalError

MAX_PACKAGE_BYTES = 50 * 1024 * 1024  # Dify's default upload cap (MAX_PLUGIN_PACKAGE_SIZE)
VERIFICATION_FILE = ".verification.dify.json"
AUTHORIZED_CATEGORIES = ("community", "partner", "langgenius")
KEY_BITS = 4096  # what the Dify CLI's `signature generate` makes
# Never shipped, whatever the ignore files say: version control, environments, build output, wheels, keys.
ALWAYS_LEFT_OUT = [".git/", "*.difypkg", "*.pem", "venv/", ".venv*/", "env/", "build/", "dist/", ".whl/", "*.whl",
                   "*.egg-info/", "__pycache__/", "*.pyc", ".pytest_cache/", ".mypy_cache/", ".ruff_cache/",
                   "node_modules/", ".env", VERIFICATION_FILE]


RUNTIMES = ("torch", "onnx")
# What each build leaves out beyond the ignore files (gitignore syntax, from the repository root). The lean build
# (ONNX Runtime alone) has no torch: no training, evaluation or export code, and the demo model as its ONNX
# export; the torch build ships the demo model's weights and loads any ONNX export it is given.
BUILD_REQUIREMENTS = ["/requirements.txt", "/requirements-onnx.txt", "/model_provider/requirements.txt",
                      "/model_provider/requirements-onnx.txt"]  # the chosen one is shipped as requirements.txt
RUNTIME_LEFT_OUT = {
    "torch": ["crossmodal/assets/demo-shapes-onnx/", *BUILD_REQUIREMENTS],
    # The lean build runs no VLM model: its model package does not offer them (gitwildmatch patterns).
    "onnx": ["crossmodal/lab/", "crossmodal/assets/demo-shapes/", "crossmodal/encoders/onnx_export.py",
             "model_provider/models/*/qwen3-vl-*.yaml", *BUILD_REQUIREMENTS],
}
# Each build's requirements, shipped as the package's requirements.txt (the daemon installs that name).
RUNTIME_REQUIREMENTS = {"torch": "requirements.txt", "onnx": "requirements-onnx.txt"}
MODEL_PACKAGE_DIR = "model_provider"
# What the model-provider package takes from the repository beside its own folder: the same core, entry point,
# privacy policy and icon (assembled here, never copied by hand). Its requirements.txt is its own: no store.
SHARED_WITH_MODELS = ("main.py", "PRIVACY.md", "_assets", "crossmodal")


def package_entries(root: Path, models: bool = False, runtime: str = "torch") -> list[tuple[Path, str]]:
    """(file, name in the archive) for the tool package, or for the model-provider package, of one build."""
    if runtime not in RUNTIMES:
        raise CrossmodalError(f"'{runtime}' is not one of {', '.join(RUNTIMES)}", param="runtime")
    files = package_files(root, RUNTIME_LEFT_OUT[runtime])
    own = root / MODEL_PACKAGE_DIR if models else root
    requirements = own / RUNTIME_REQUIREMENTS[runtime]
    if runtime != "torch" and not requirements.is_file():
        raise CrossmodalError(f"no {requirements.relative_to(root)}: the {runtime} build's requirements", param="runtime")
    entries = [(requirements, "requirements.txt")] if requirements.is_file() else []
    if not models:
        entries += [(path, path.relative_to(root).as_posix()) for path in files
                    if path.relative_to(root).parts[0] != MODEL_PACKAGE_DIR]
    else:
        entries += [(path, path.relative_to(own).as_posix()) for path in files if own in path.parents]
        entries += [(path, path.relative_to(root).as_posix()) for path in files
                    if path.relative_to(root).parts[0] in SHARED_WITH_MODELS]
    return sorted(entries, key=lambda entry: entry[1])


def package_files(root: Path, left_out: list[str] = ()) -> list[Path]:
    """The files that go into the package, in a stable order."""
    import pathspec

    lines = list(ALWAYS_LEFT_OUT) + list(left_out)
    for name in (".gitignore", ".difyignore"):
        path = root / name
        if path.is_file():
            lines += path.read_text(encoding="utf-8").splitlines()
    spec = pathspec.PathSpec.from_lines("gitwildmatch", lines)
    files = []
    for folder, dirs, names in os.walk(root):
        here = Path(folder)
        # Prune ignored folders instead of walking them: a virtualenv holds tens of thousands of files.
        dirs[:] = [d for d in dirs if not spec.match_file((here / d).relative_to(root).as_posix() + "/")]
        for name in names:
            path = here / name
            if path.is_file() and not path.is_symlink() and not spec.match_file(path.relative_to(root).as_posix()):
                files.append(path)
    return sorted(files)


def build_package(root: str | Path = ".", out: str | None = None, private_key: str | Path | None = None,
                  category: str = "community", models: bool = False, runtime: str = "torch") -> Path:
    """The tool package (manifest.yaml at the root), or with ``models`` the model-provider package (its
    manifest in model_provider/): Dify refuses one package that declares both. ``runtime``: torch (the full
    package) or onnx (the lean build: ONNX Runtime alone, RUNTIME_LEFT_OUT)."""
    root = Path(root).resolve()
    manifest = (root / MODEL_PACKAGE_DIR if models else root) / "manifest.yaml"
    if not manifest.is_file():
        raise CrossmodalError(f"no {manifest.relative_to(root)} in {root}; run from the plugin folder", param="root")
    meta = yaml.safe_load(manifest.read_text(encoding="utf-8"))
    target = Path(out) if out else root / f"{meta['name']}-{meta['version']}.difypkg"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path, name in package_entries(root, models, runtime):
            archive.write(path, name)
    data = buffer.getvalue()
    if private_key is not None:
        data = sign_package(data, Path(private_key).read_bytes(), category)
    if len(data) > MAX_PACKAGE_BYTES:
        raise CrossmodalError(f"the package is {len(data)} bytes, over Dify's {MAX_PACKAGE_BYTES}-byte cap",
                              param="out")
    target.write_bytes(data)
    return target


def sign_package(package: bytes, private_key_pem: bytes, category: str = "community",
                 signed_at: int | None = None) -> bytes:
    """A copy of ``package`` with the verification entry and the signature comment added."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    if category not in AUTHORIZED_CATEGORIES:
        raise CrossmodalError(f"'{category}' is not one of {', '.join(AUTHORIZED_CATEGORIES)}", param="category")
    key = _load_private_key(private_key_pem)
    verification = json.dumps({"authorized_category": category}, separators=(",", ":")).encode()
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(package)) as source, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dest:
        for info in source.infolist():
            if not info.is_dir() and info.filename != VERIFICATION_FILE:
                dest.writestr(info.filename, source.read(info))
        dest.writestr(VERIFICATION_FILE, verification)
    signed_at = int(time.time()) if signed_at is None else signed_at
    signature = key.sign(signed_data(out.getvalue(), signed_at), padding.PKCS1v15(), hashes.SHA256())
    with zipfile.ZipFile(out, "a") as dest:
        dest.comment = json.dumps({"signature": base64.b64encode(signature).decode(), "time": signed_at},
                                  separators=(",", ":"), sort_keys=True).encode()
    return out.getvalue()


def signed_data(package: bytes, signed_at: int) -> bytes:
    """What the daemon verifies: each file entry's SHA-256 in archive order, then the time in decimal."""
    with zipfile.ZipFile(io.BytesIO(package)) as archive:
        digests = [hashlib.sha256(archive.read(info)).digest() for info in archive.infolist() if not info.is_dir()]
    return b"".join(digests) + str(signed_at).encode()


def verify_package(package: bytes, public_key_pem: bytes) -> dict:
    """The daemon's check; returns the verification entry, raises CrossmodalError when it fails."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    key = _load_public_key(public_key_pem)
    try:
        with zipfile.ZipFile(io.BytesIO(package)) as archive:
            comment = json.loads(archive.comment or b"{}")
            verification = json.loads(archive.read(VERIFICATION_FILE))
        signature, signed_at = base64.b64decode(comment["signature"]), int(comment["time"])
    except (KeyError, ValueError, zipfile.BadZipFile):
        raise CrossmodalError("the package carries no readable signature; sign it with "
                              "`python -m crossmodal package --sign KEY.private.pem`", param="package") from None
    try:
        key.verify(signature, signed_data(package, signed_at), padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        raise CrossmodalError("the signature does not match: the package was changed after signing, or was "
                              "signed with another key", param="package") from None
    return verification


def generate_key_pair(prefix: str | Path, bits: int = KEY_BITS) -> tuple[Path, Path]:
    """PREFIX.private.pem and PREFIX.public.pem, as the Dify CLI's `signature generate` names them."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    private_path, public_path = Path(f"{prefix}.private.pem"), Path(f"{prefix}.public.pem")
    if private_path.exists():
        raise CrossmodalError(f"{private_path} exists; choose another name or remove it", param="name")
    private_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                               serialization.NoEncryption()))
    private_path.chmod(0o600)
    public_path.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                          serialization.PublicFormat.PKCS1))
    return private_path, public_path


def _load_private_key(pem: bytes):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    if b"-----BEGIN RSA PRIVATE KEY-----" not in pem:
        raise CrossmodalError("is not a PKCS#1 RSA private key (-----BEGIN RSA PRIVATE KEY-----); make one with "
                              "`python -m crossmodal keygen NAME`", param="sign")
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise CrossmodalError("is not an RSA key", param="sign")
    return key


def _load_public_key(pem: bytes):
    from cryptography.hazmat.primitives import serialization

    if b"-----BEGIN RSA PUBLIC KEY-----" not in pem:
        raise CrossmodalError("is not a PKCS#1 RSA public key (-----BEGIN RSA PUBLIC KEY-----), the format "
                              "Dify's daemon loads", param="public_key")
    return serialization.load_pem_public_key(pem)
