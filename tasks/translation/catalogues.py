"""Parallel sentences from gettext catalogues (``.mo`` files) of installed Debian packages.

A ``.mo`` file is a hash-indexed table of (original, translation) byte strings; this module
reads it without ``gettext`` so that the charset, plural forms and message contexts are handled
explicitly:

- header: magic ``0x950412de`` (in the file's byte order), revision, number of strings N, offset
  of the originals' table, offset of the translations' table; each table holds N (length,
  offset) pairs of 32-bit integers;
- an original ``context\\x04msgid`` carries a message context; ``singular\\x00plural`` (and a
  translation ``form0\\x00form1...``) a plural entry, of which the singular and the first form
  are kept; the empty original is the header, whose ``Content-Type`` names the charset.

Only the files the pinned packages own (``dpkg -L``) are read, and what was read is recorded:
package versions and the sha256 of every file's bytes.
"""

from __future__ import annotations

import hashlib
import re
import struct
import subprocess
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from forgetbench.api import ForgetbenchError

MO_MAGIC = 0x950412DE
LOCALE_FILE = re.compile(r"^/usr/share/locale/(?P<lang>[a-z]{2,3})/LC_MESSAGES/[^/]+\.mo$")
# printf (%s, %-10.3lf, %1$s, %%), Python (%(name)s, {0}, {name!r:>4}) and shell (${var}, $1)
FORMAT_DIRECTIVE = re.compile(
    r"%(?:\d+\$)?[-+ #0']*(?:\d+|\*)?(?:\.(?:\d+|\*))?(?:hh|h|ll|l|L|q|j|z|t)?"
    r"[diouxXeEfFgGaAcspmn%]"
    r"|%\([^)]+\)[a-zA-Z]|\{[^{}\s]*\}|\$\{[^}]*\}|\$\d"
)
WORD = re.compile(r"[^\W\d_]{2,}")
# A GTK mnemonic marks the accelerator key: "_Open" (the underscore is not part of the text).
MNEMONIC = re.compile(r"(?<!\w)_(?=\w)")


# -- reading one catalogue ---------------------------------------------------------------------


def charset_of(header: bytes) -> str:
    """The charset named by a catalogue header's Content-Type line (default UTF-8)."""
    found = re.search(rb"charset=([A-Za-z0-9_.:-]+)", header)
    return found.group(1).decode("ascii") if found else "UTF-8"


def read_mo(data: bytes) -> dict[str, str]:
    """The (msgid -> msgstr) entries of a ``.mo`` file's bytes, decoded with its charset.

    Message contexts are dropped (the text is what is translated), plural entries keep their
    singular and first form, the header entry is left out. Raises ValueError for a file that
    is not a catalogue or not decodable with the charset it declares.
    """
    if len(data) < 20:
        raise ValueError("too short for a .mo file")
    for order in ("<", ">"):
        if struct.unpack(order + "I", data[:4])[0] == MO_MAGIC:
            break
    else:
        raise ValueError("not a .mo file (bad magic number)")
    _revision, count, originals, translations = struct.unpack(order + "4I", data[4:20])
    if max(originals, translations) + 8 * count > len(data):
        raise ValueError("the string tables point past the end of the file")
    pairs = []
    for index in range(count):
        length, offset = struct.unpack_from(order + "2I", data, originals + 8 * index)
        t_length, t_offset = struct.unpack_from(order + "2I", data, translations + 8 * index)
        if offset + length > len(data) or t_offset + t_length > len(data):
            raise ValueError("a string points past the end of the file")
        pairs.append((data[offset : offset + length], data[t_offset : t_offset + t_length]))
    charset = next((charset_of(t) for o, t in pairs if o == b""), "UTF-8")
    entries = {}
    for original, translated in pairs:
        if original == b"":
            continue
        msgid = original.split(b"\x04", 1)[-1].split(b"\x00", 1)[0]
        entries[msgid.decode(charset)] = translated.split(b"\x00", 1)[0].decode(charset)
    return entries


# -- which files, from which packages ---------------------------------------------------------


@dataclass(frozen=True)
class Catalogue:
    """One ``.mo`` file a pinned package owns."""

    package: str
    language: str
    path: Path


def package_version(package: str) -> str | None:
    """The installed version of a Debian package, None when it is not installed."""
    done = subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}\t${Version}", package],
        capture_output=True,
        text=True,
        check=False,
    )
    status, _, version = done.stdout.partition("\t")
    return version if done.returncode == 0 and status.endswith("installed") else None


def owned_catalogues(package: str, languages: Iterable[str]) -> list[Catalogue]:
    """The ``.mo`` files ``package`` installs under /usr/share/locale for ``languages``."""
    listing = subprocess.run(
        ["dpkg", "-L", package], capture_output=True, text=True, check=True
    ).stdout
    wanted = set(languages)
    found = []
    for line in sorted(listing.splitlines()):
        match = LOCALE_FILE.match(line.strip())
        if match and match["lang"] in wanted and Path(line.strip()).is_file():
            found.append(Catalogue(package, match["lang"], Path(line.strip())))
    return found


def pinned_catalogues(
    packages: Sequence[str], languages: Iterable[str]
) -> tuple[list[Catalogue], dict[str, str]]:
    """The catalogues of every pinned package, and their versions; one clear error listing the
    packages that are not installed."""
    versions = {package: package_version(package) for package in packages}
    missing = sorted(p for p, v in versions.items() if v is None)
    if missing:
        raise ForgetbenchError(
            f"gettext-mt reads the catalogues of Debian packages that are not installed"
            f" ({', '.join(missing)}): run scripts/debian_data.sh (make setup) or"
            f" 'apt-get install --no-install-recommends {' '.join(missing)}'"
        )
    languages = list(languages)
    catalogues = [c for package in packages for c in owned_catalogues(package, languages)]
    return catalogues, {p: str(v) for p, v in versions.items()}


# -- from catalogues to clean pairs -----------------------------------------------------------


def normalise(text: str) -> str:
    """One line: mnemonic underscores dropped, whitespace runs (newlines too) to one space."""
    return " ".join(MNEMONIC.sub("", text).split())


def is_translatable(source: str) -> bool:
    """False for strings with no word left once format directives are removed (``%s: %s``,
    ``(%d)``, ``{0}``), which say nothing to translate."""
    return bool(WORD.search(FORMAT_DIRECTIVE.sub(" ", source)))


def clean_pair(source: str, target: str, max_words: int, max_chars: int) -> tuple[str, str] | None:
    """The normalised pair, or None when it is empty, untranslated (target equal to the source
    or empty), format-only, or longer than the caps (words of the source, characters of
    either side)."""
    source, target = normalise(source), normalise(target)
    if not source or not target or source == target or not is_translatable(source):
        return None
    if len(source.split()) > max_words or max(len(source), len(target)) > max_chars:
        return None
    return source, target


@dataclass(frozen=True)
class Segment:
    """One English source string with its translation per language (majority vote over the
    catalogues that translate it; ties broken by the first catalogue in package order)."""

    source: str
    targets: dict[str, str]


def collect_segments(
    entries: Iterable[tuple[str, dict[str, str]]], max_words: int, max_chars: int
) -> list[Segment]:
    """Deduplicated segments from ``(language, catalogue entries)`` in a fixed order."""
    votes: dict[str, dict[str, Counter]] = {}
    first_seen: dict[tuple[str, str, str], int] = {}
    for language, catalogue in entries:
        for msgid, msgstr in catalogue.items():
            pair = clean_pair(msgid, msgstr, max_words, max_chars)
            if pair is None:
                continue
            source, target = pair
            votes.setdefault(source, {}).setdefault(language, Counter())[target] += 1
            first_seen.setdefault((source, language, target), len(first_seen))
    segments = []
    for source in sorted(votes):
        targets = {}
        for language, counter in sorted(votes[source].items()):
            ranked = sorted(counter, key=lambda t: (-counter[t], first_seen[(source, language, t)]))
            targets[language] = ranked[0]
        segments.append(Segment(source, targets))
    return segments


def split_key(source: str) -> str:
    """What decides a segment's side of the split: its lower-cased words, so that "Open",
    "Open..." and "_Open" (near-duplicates that differ in case or punctuation) never straddle it."""
    return " ".join(re.findall(r"\w+", source.lower()))


def is_held_out(source: str, eval_share: float, salt: str = "gettext-mt") -> bool:
    """Whether a segment belongs to evaluation: a hash of its split key below ``eval_share``.
    Decided per English source, so a source is held out for every language pair at once."""
    digest = hashlib.sha256(f"{salt}:{split_key(source)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < eval_share


def read_catalogues(catalogues: Sequence[Catalogue]) -> Iterator[tuple[Catalogue, bytes, dict]]:
    """Each catalogue's bytes and entries; files that are not valid catalogues in their declared
    charset are skipped (their bytes still count in the fingerprint)."""
    for catalogue in catalogues:
        data = catalogue.path.read_bytes()
        try:
            entries = read_mo(data)
        except (ValueError, LookupError):  # UnicodeDecodeError is a ValueError
            entries = {}
        yield catalogue, data, entries


def fingerprint(versions: dict[str, str], files: Sequence[tuple[Catalogue, bytes]]) -> str:
    """sha256 over the package versions and every file read (path and sha256 of its bytes)."""
    digest = hashlib.sha256()
    for package in sorted(versions):
        digest.update(f"{package}={versions[package]}\n".encode())
    for catalogue, data in sorted(files, key=lambda item: str(item[0].path)):
        digest.update(f"{catalogue.path} {hashlib.sha256(data).hexdigest()}\n".encode())
    return digest.hexdigest()
