"""The content-addressed cache: entries are verified by hash, rebuilt when corrupt, and never
left half-written."""

import json

import pytest

import forgetbench.cache
from forgetbench.cache import MANIFEST, build_seconds, cache_root, cached_dir, manifest


def build_counting(calls):
    def build(directory):
        calls.append(directory)
        (directory / "weights.bin").write_bytes(b"\x00\x01" * 100)
        return {"note": "built"}

    return build


def test_entry_is_built_once_then_reused():
    calls = []
    first = cached_dir("things", "k1", build_counting(calls))
    second = cached_dir("things", "k1", build_counting(calls))
    assert first == second == cache_root() / "things" / "k1"
    assert len(calls) == 1
    assert manifest(first)["note"] == "built"


def test_corrupt_entry_is_detected_by_hash_and_rebuilt():
    calls = []
    entry = cached_dir("things", "k2", build_counting(calls))
    (entry / "weights.bin").write_bytes(b"garbage")
    again = cached_dir("things", "k2", build_counting(calls))
    assert len(calls) == 2
    assert (again / "weights.bin").read_bytes() == b"\x00\x01" * 100


def test_entry_with_broken_manifest_is_rebuilt():
    calls = []
    entry = cached_dir("things", "k3", build_counting(calls))
    (entry / MANIFEST).write_text("{not json")
    cached_dir("things", "k3", build_counting(calls))
    assert len(calls) == 2
    assert json.loads((entry / MANIFEST).read_text())["key"] == "k3"


def test_failed_build_leaves_no_entry():
    def broken(directory):
        (directory / "half.bin").write_bytes(b"x")
        raise RuntimeError("crash mid-build")

    with pytest.raises(RuntimeError, match="crash mid-build"):
        cached_dir("things", "k4", broken)
    assert not (cache_root() / "things" / "k4").exists()
    assert list((cache_root() / "things").iterdir()) == []


def test_plugin_cache_charges_a_hit_what_the_build_would_have_counted(isolated_cache):
    """A run pays once either way: the build counts its own passes, a hit is charged them."""
    from method_helpers import tiny_context

    from forgetbench.api import plugin_cache

    ctx, _ = tiny_context()

    def build(directory):
        ctx.count_extra(forward=7, backward=2)  # the build's own passes
        (directory / "state.bin").write_bytes(b"\x01")

    first = plugin_cache(ctx, "charged", {"k": 1}, build, forward=7, backward=2)
    assert (ctx.compute.extra_inference, ctx.compute.extra_backward) == (7, 2)
    again = plugin_cache(ctx, "charged", {"k": 1}, build, forward=7, backward=2)
    assert again == first
    assert (ctx.compute.extra_inference, ctx.compute.extra_backward) == (14, 4)


def test_build_seconds_counts_each_build_once_nested_ones_in_the_outer(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(forgetbench.cache.time, "perf_counter", lambda: now[0])

    def inner(directory):
        now[0] += 3.0
        (directory / "inner.bin").write_bytes(b"i")

    def outer(directory):
        now[0] += 5.0
        cached_dir("things", "inner", inner)  # e.g. stage 0 inside a prior-cache build
        now[0] += 2.0
        (directory / "outer.bin").write_bytes(b"o")

    start = build_seconds()
    cached_dir("things", "outer", outer)
    assert build_seconds() - start == 10.0  # 5 + 3 + 2, the inner 3 not counted twice
    cached_dir("things", "outer", outer)  # a hit builds nothing
    cached_dir("things", "inner", inner)
    assert build_seconds() - start == 10.0


def test_a_run_stores_the_time_it_spent_building_caches_and_a_warm_run_none(db):
    from method_helpers import run_tiny

    from forgetbench.store import Store

    cold = Store(db).get_run(run_tiny(db, ["finetune"]))["compute"]
    warm = Store(db).get_run(run_tiny(db, ["finetune"], {"lr": "2e-3"}))["compute"]
    # the first run trained the tiny stage 0 and cached f0's evaluation; the second reused both
    assert 0 < cold["cache_seconds"] < cold["wall_seconds"]
    assert warm["cache_seconds"] == 0.0


def test_a_run_records_what_its_stage0_weights_are_not_only_how_they_were_made(db, isolated_cache):
    """The run's ``model`` names f0 by its stage-0 recipe (the cache key); ``prior_files`` is
    the digest of the entry's files themselves, so two machines that trained one recipe to
    different weights are told apart. A ``--prior-model`` folder's identity is its files'
    hash already: no digest beside it."""
    import hashlib

    from method_helpers import registry_with, run_tiny

    from forgetbench.runner import RunRequest, execute
    from forgetbench.store import Store

    run = Store(db).get_run(run_tiny(db, ["finetune"]))
    [entry] = [p for p in (isolated_cache / "stage0").iterdir() if not p.name.startswith(".")]
    assert run["model"].endswith("@" + entry.name[:16])
    files = sorted(
        [str(path.relative_to(entry)), hashlib.sha256(path.read_bytes()).hexdigest()]
        for path in entry.rglob("*")
        if path.is_file() and path.name != MANIFEST
    )
    assert len(files) >= 2  # the weights and the bundle's description at least
    expected = hashlib.sha256(json.dumps(files).encode()).hexdigest()
    assert run["versions"]["prior_files"] == expected
    request = RunRequest(task="tiny", methods=["finetune"], steps=2, prior_model=str(entry))
    elsewhere = Store(db).get_run(execute(request, db=db, registry=registry_with()))
    assert elsewhere["status"] == "ok"
    assert "prior_files" not in elsewhere["versions"]
