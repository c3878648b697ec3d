"""Provenance of a plugin: each plugin distribution's version, and for one installed from a
local folder (``pip install -e``) the sha256 of its source, so runs with different plugin code
no longer look identical."""

import importlib
import json

import pytest

from forgetbench.provenance import package_versions

SOURCE = "fb-prov-dist source sha256"


@pytest.fixture
def local_plugin(tmp_path, monkeypatch):
    """A distribution whose PEP 610 record says it was installed from ``tmp_path / "src"``."""
    source = tmp_path / "src"
    (source / "__pycache__").mkdir(parents=True)
    (source / "fb_prov.py").write_text("STRENGTH = 1\n")
    (source / "pyproject.toml").write_text("[project]\nname = 'fb-prov-dist'\n")
    info = tmp_path / "site" / "fb_prov_dist-1.2.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fb-prov-dist\nVersion: 1.2\n")
    direct = {"url": source.as_uri(), "dir_info": {"editable": True}}
    (info / "direct_url.json").write_text(json.dumps(direct))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    importlib.invalidate_caches()
    return source, info


def test_a_local_plugin_records_its_version_and_a_source_hash_that_follows_its_code(local_plugin):
    source, _ = local_plugin
    first = package_versions({"fb-prov": "fb-prov-dist"})
    assert first["fb-prov-dist"] == "1.2"
    assert len(first[SOURCE]) == 64
    (source / "__pycache__" / "fb_prov.cpython-311.pyc").write_bytes(b"compiled")
    assert package_versions({"fb-prov": "fb-prov-dist"})[SOURCE] == first[SOURCE]
    (source / "fb_prov.py").write_text("STRENGTH = 2\n")
    assert package_versions({"fb-prov": "fb-prov-dist"})[SOURCE] != first[SOURCE]


def test_an_index_install_records_its_version_only(local_plugin):
    _, info = local_plugin
    (info / "direct_url.json").unlink()
    versions = package_versions({"fb-prov": "fb-prov-dist"})
    assert versions["fb-prov-dist"] == "1.2"
    assert SOURCE not in versions
