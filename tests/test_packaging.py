"""The .difypkg builder: what goes in, and signatures as Dify's daemon checks them."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

from crossmodal.errors import CrossmodalError
from crossmodal.dify.packaging import VERIFICATION_FILE, build_package, generate_key_pair, sign_package, verify_package

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    folder = tmp_path_factory.mktemp("keys")
    return generate_key_pair(folder / "crossmodal", bits=2048)


@pytest.fixture()
def plugin_dir(tmp_path) -> Path:
    """A small plugin folder with the build litter a developer's tree has."""
    root = tmp_path / "plugin"
    (root / "tools").mkdir(parents=True)
    (root / "manifest.yaml").write_text("name: demo\nversion: 0.0.1\n")
    (root / "main.py").write_text("print('hi')\n")
    (root / "tools" / "a.py").write_text("A = 1\n")
    (root / ".gitignore").write_text("/reports/\n*.log\n")
    (root / ".difyignore").write_text("tests/\n")
    for litter in ("venv/lib/x.py", ".venv312/bin/python", "build/lib/a.py", "dist/demo.tar.gz", ".whl/torch.whl",
                   "wheels/extra-1.0-py3-none-any.whl", "reports/r.json", "run.log", "tests/test_a.py",
                   "tools/__pycache__/a.cpython-311.pyc", "old.difypkg", "crossmodal.private.pem",
                   "demo.egg-info/PKG-INFO", ".git/HEAD"):
        path = root / litter
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("litter")
    return root


def test_build_folders_never_ship(plugin_dir, tmp_path):
    target = build_package(plugin_dir, str(tmp_path / "demo.difypkg"))
    assert sorted(zipfile.ZipFile(target).namelist()) == [".difyignore", ".gitignore", "main.py", "manifest.yaml",
                                                         "tools/a.py"]


def signed_data_as_the_daemon_computes_it(package: bytes) -> tuple[bytes, bytes]:
    """verifier.go restated: every file entry's sha256 in archive order, then the comment's time."""
    archive = zipfile.ZipFile(io.BytesIO(package))
    comment = json.loads(archive.comment)
    data = b"".join(hashlib.sha256(archive.read(i)).digest() for i in archive.infolist() if not i.is_dir())
    return data + str(comment["time"]).encode(), base64.b64decode(comment["signature"])


def test_signed_package_verifies_like_the_daemon(plugin_dir, tmp_path, keys):
    private, public = keys
    target = build_package(plugin_dir, str(tmp_path / "demo.difypkg"), private_key=private)
    package = target.read_bytes()
    archive = zipfile.ZipFile(io.BytesIO(package))
    assert archive.namelist()[-1] == VERIFICATION_FILE
    assert json.loads(archive.read(VERIFICATION_FILE)) == {"authorized_category": "community"}
    assert verify_package(package, public.read_bytes()) == {"authorized_category": "community"}
    assert private.read_bytes().startswith(b"-----BEGIN RSA PRIVATE KEY-----")
    assert public.read_bytes().startswith(b"-----BEGIN RSA PUBLIC KEY-----")

    # An independent check with OpenSSL: RSA PKCS#1 v1.5 over SHA-256 of the daemon's data.
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    data, signature = signed_data_as_the_daemon_computes_it(package)
    (tmp_path / "data").write_bytes(data)
    (tmp_path / "sig").write_bytes(signature)
    spki = subprocess.run(["openssl", "rsa", "-RSAPublicKey_in", "-in", str(public), "-pubout"], check=True,
                          capture_output=True).stdout
    (tmp_path / "pub.spki").write_bytes(spki)
    checked = subprocess.run(["openssl", "dgst", "-sha256", "-verify", str(tmp_path / "pub.spki"), "-signature",
                              str(tmp_path / "sig"), str(tmp_path / "data")], capture_output=True, text=True)
    assert checked.returncode == 0 and "Verified OK" in checked.stdout


def tampered(package: bytes, name: str, new: bytes) -> bytes:
    """The same entries and comment, one file's bytes changed."""
    source = zipfile.ZipFile(io.BytesIO(package))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as dest:
        for info in source.infolist():
            dest.writestr(info.filename, new if info.filename == name else source.read(info))
        dest.comment = source.comment
    return out.getvalue()


def test_tampered_or_foreign_packages_fail(plugin_dir, tmp_path, keys):
    private, public = keys
    package = build_package(plugin_dir, str(tmp_path / "demo.difypkg"), private_key=private).read_bytes()
    assert verify_package(tampered(package, "tools/a.py", b"A = 1\n"), public.read_bytes())  # unchanged: ok
    with pytest.raises(CrossmodalError, match="changed after signing"):
        verify_package(tampered(package, "tools/a.py", b"A = 2\n"), public.read_bytes())
    with pytest.raises(CrossmodalError, match="changed after signing"):
        verify_package(tampered(package, VERIFICATION_FILE, b'{"authorized_category":"langgenius"}'),
                       public.read_bytes())
    _, other_public = generate_key_pair(tmp_path / "other", bits=2048)
    with pytest.raises(CrossmodalError, match="another key"):
        verify_package(package, other_public.read_bytes())
    unsigned = build_package(plugin_dir, str(tmp_path / "plain.difypkg")).read_bytes()
    with pytest.raises(CrossmodalError, match="no readable signature"):
        verify_package(unsigned, public.read_bytes())


def test_signing_twice_replaces_the_verification_entry(plugin_dir, tmp_path, keys):
    private, public = keys
    once = build_package(plugin_dir, str(tmp_path / "demo.difypkg"), private_key=private).read_bytes()
    twice = sign_package(once, private.read_bytes(), "partner")
    names = zipfile.ZipFile(io.BytesIO(twice)).namelist()
    assert names.count(VERIFICATION_FILE) == 1
    assert verify_package(twice, public.read_bytes()) == {"authorized_category": "partner"}


def test_bad_keys_are_clear_errors(plugin_dir, tmp_path, keys):
    _, public = keys
    with pytest.raises(CrossmodalError, match="keygen"):
        build_package(plugin_dir, str(tmp_path / "demo.difypkg"), private_key=public)
    with pytest.raises(CrossmodalError, match="exists"):
        generate_key_pair(str(keys[0]).removesuffix(".private.pem"), bits=2048)


def test_the_manifest_is_what_the_sdk_and_a_stock_dify_accept():
    import sys

    import yaml

    # The SDK's own model of the manifest, in a child process: importing dify_plugin patches with gevent.
    check = ("import sys, yaml; from dify_plugin.core.entities.plugin.setup import PluginConfiguration; "
             "print(PluginConfiguration(**yaml.safe_load(open(sys.argv[1]))).meta.minimum_dify_version)")
    out = subprocess.run([sys.executable, "-c", check, str(ROOT / "manifest.yaml")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "1.1.0"
    manifest = yaml.safe_load((ROOT / "manifest.yaml").read_text())
    # The pack makes no reverse calls into Dify's tools; it serves endpoints, and tool nodes may embed with the
    # workspace's embedding models (the daemon checks the text-embedding permission).
    assert manifest["resource"]["permission"] == {"tool": {"enabled": False}, "endpoint": {"enabled": True},
                                                  "model": {"enabled": True, "text_embedding": True}}
    assert manifest["meta"]["runner"]["version"] == "3.12"
