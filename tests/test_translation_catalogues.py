"""The gettext catalogue reader and the cleaning, deduplication and split of gettext-mt."""

import struct

import pytest

from forgetbench.api import ForgetbenchError
from forgetbench_tasks.translation import catalogues
from forgetbench_tasks.translation.catalogues import (
    Catalogue,
    clean_pair,
    collect_segments,
    is_held_out,
    is_translatable,
    read_mo,
    split_key,
)
from forgetbench_tasks.translation.gettext_mt import pairs_by_language, pinned_packages


def mo_bytes(entries: list[tuple[bytes, bytes]], order: str = "<", charset: str = "UTF-8") -> bytes:
    """A .mo file as msgfmt lays it out: header, the two (length, offset) tables sorted by
    original, then the strings, each NUL-terminated (no hash table)."""
    header = f"Content-Type: text/plain; charset={charset}\n".encode()
    table = sorted([(b"", header), *entries])
    count = len(table)
    originals, translations = 28, 28 + 8 * count
    cursor = 28 + 16 * count
    blob, original_rows, translation_rows = b"", [], []
    for rows, index in ((original_rows, 0), (translation_rows, 1)):
        for item in table:
            text = item[index]
            rows.append((len(text), cursor + len(blob)))
            blob += text + b"\x00"
    head = struct.pack(order + "7I", 0x950412DE, 0, count, originals, translations, 0, 0)
    tables = b"".join(struct.pack(order + "2I", *row) for row in original_rows + translation_rows)
    return head + tables + blob


@pytest.mark.parametrize("order", ["<", ">"])
def test_read_mo_reads_both_byte_orders_contexts_and_plurals(order):
    data = mo_bytes(
        [
            (b"Open file", "Datei öffnen".encode()),
            (b"menu\x04Quit", b"Beenden"),
            (b"%d file\x00%d files", b"%d Datei\x00%d Dateien"),
        ],
        order=order,
    )
    assert read_mo(data) == {
        "Open file": "Datei öffnen",
        "Quit": "Beenden",
        "%d file": "%d Datei",
    }


def test_read_mo_decodes_the_declared_charset_and_refuses_garbage():
    data = mo_bytes([(b"Close", "Schlie\u00dfen".encode("latin-1"))], charset="ISO-8859-1")
    assert read_mo(data) == {"Close": "Schließen"}
    with pytest.raises(ValueError, match="magic"):
        read_mo(b"\x00" * 40)
    with pytest.raises(ValueError, match="past the end"):
        read_mo(mo_bytes([(b"a", b"b")])[:30])


def test_read_mo_agrees_with_the_standard_library(tmp_path):
    import gettext

    data = mo_bytes([(b"Save as", b"Enregistrer sous"), (b"Print", b"Imprimer")])
    path = tmp_path / "x.mo"
    path.write_bytes(data)
    with open(path, "rb") as handle:
        reference = gettext.GNUTranslations(handle)._catalog
    assert read_mo(data) == {k: v for k, v in reference.items() if k}


def test_clean_pair_drops_untranslated_format_only_and_long_strings():
    assert clean_pair("  _Open\n file ", "Datei\t_öffnen", 10, 100) == ("Open file", "Datei öffnen")
    assert clean_pair("Open", "", 10, 100) is None  # untranslated
    assert clean_pair("Open", "Open", 10, 100) is None  # copied source
    assert clean_pair("%s: %s", "%s : %s", 10, 100) is None  # format only
    assert clean_pair("(%d) {0} %-10.3lf", "x", 10, 100) is None
    assert clean_pair("one two three four", "eins zwei drei vier", 3, 100) is None  # words
    assert clean_pair("short", "x" * 101, 10, 100) is None  # characters
    assert is_translatable("cannot open %s")
    assert not is_translatable("%s%%: %1$s")


def test_collect_segments_deduplicates_by_majority_then_first_seen():
    segments = collect_segments(
        [
            ("de", {"Open": "Öffnen", "Save": "Speichern"}),
            ("de", {"Open": "Aufmachen"}),
            ("de", {"Open": "Aufmachen", "Save": "Sichern"}),
            ("fr", {"Open": "Ouvrir", "%s": "%s"}),
        ],
        max_words=10,
        max_chars=100,
    )
    by_source = {s.source: s.targets for s in segments}
    assert by_source == {
        "Open": {"de": "Aufmachen", "fr": "Ouvrir"},  # 2 votes against 1
        "Save": {"de": "Speichern"},  # a tie: the first catalogue's
    }


def test_split_is_by_english_source_for_every_pair_and_never_leaks():
    sources = [f"message number {i}" for i in range(400)]
    segments = [
        catalogues.Segment(s, {"de": f"Nachricht {i}", "es": f"mensaje {i}"})
        for i, s in enumerate(sources)
    ]
    # near-duplicates must fall on the side of their original
    segments += [catalogues.Segment(s.upper() + "...", {"de": "x", "es": "y"}) for s in sources]
    sides = pairs_by_language(segments, ["de", "es"], eval_share=0.2)
    for lang in ("de", "es"):
        train = {split_key(s) for s, _ in sides[lang]["train"]}
        held_out = {split_key(s) for s, _ in sides[lang]["eval"]}
        assert not train & held_out
        assert 0.1 < len(held_out) / 400 < 0.3  # about eval_share of the distinct sources
    assert [s for s, _ in sides["de"]["eval"]] == [s for s, _ in sides["es"]["eval"]]
    assert is_held_out("Open", 0.2) == is_held_out("_open!", 0.2)


def test_fingerprint_follows_versions_and_bytes(tmp_path):
    path = tmp_path / "de.mo"
    one = catalogues.fingerprint({"p": "1.0"}, [(Catalogue("p", "de", path), b"abc")])
    assert one == catalogues.fingerprint({"p": "1.0"}, [(Catalogue("p", "de", path), b"abc")])
    assert one != catalogues.fingerprint({"p": "1.1"}, [(Catalogue("p", "de", path), b"abc")])
    assert one != catalogues.fingerprint({"p": "1.0"}, [(Catalogue("p", "de", path), b"abd")])


def test_missing_packages_are_one_clear_error():
    with pytest.raises(ForgetbenchError, match=r"not installed .*forgetbench-no-such-package"):
        catalogues.pinned_catalogues(["forgetbench-no-such-package"], ["de"])


def test_the_pinned_list_excludes_iso_codes_and_reads_owned_files_only():
    packages = pinned_packages()
    assert "iso-codes" not in packages
    assert len(packages) == len(set(packages)) >= 10
    found = catalogues.owned_catalogues("coreutils", ["de"])
    if catalogues.package_version("coreutils") is None:
        pytest.skip("coreutils is not a Debian package here")
    assert [c.path.name for c in found] == ["coreutils.mo"]
    assert all(c.language == "de" for c in found)
