"""C git's fsck checks on the objects a push brings, before any ref moves.

C git's receive-pack with `receive.fsckObjects` runs `index-pack --strict`: every
object of the pack is checked, warnings count as errors, and one bad object refuses the
whole push (`unpack ... abnormal exit`, each ref `unpacker error`). The same here, with
C git's message ids (`hasDotgit`, `treeNotSorted`, `gitmodulesUrl`, ...) so that a
user's search for the message finds Git's documentation (FSCK MESSAGES, git help fsck).

Only objects new in the push are read: those in the quarantine's packs and not already
in the repository (a thin pack's bases, appended by packin, are old). Blobs are not
inflated, except the ones a new tree names `.gitmodules` or `.gitattributes`, which are
read from the quarantine or the store, as C git's fsck_finish does.

Severities follow `index-pack --strict` (C git's ERROR and WARN classes are errors),
with three deliberate differences, all stricter: `badFilemode` (C git: a warning) and
`gitmodulesParse` (C git: ignored; a .gitmodules our parser cannot read might be read
differently by a client) are errors, and a .gitmodules above GITMODULES_MAX is
`gitmodulesLarge`. C git's INFO classes that only warn (a tag without a tagger, a tag
name that is not a ref name, a symlinked .gitignore/.gitattributes/.mailmap) are
reported as warnings and accepted. A repository can change any class with C git's own
`receive.fsck.<msg-id> = error|warn|ignore` in its config (levels_from_config).
"""

from __future__ import annotations

import functools
import os
import re
import stat
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from operator import itemgetter

from dulwich.objects import Blob, Commit, Tag, Tree, hex_to_sha, sha_to_hex
from dulwich.pack import (
    OFS_DELTA,
    REF_DELTA,
    Pack,
    PackFileDisappeared,
)
from dulwich.refs import check_ref_format

from ..dulwich_seam import loose_object_ids, pack_basename
from ..upload.storedpacks import parse_header, parse_ofs
from .packstream import delta_sizes

GITMODULES_MAX = 1024 * 1024  # C git: core.bigFileThreshold; ours is parsed in Python
ATTRIBUTES_MAX = 100 * 1024 * 1024  # C git's ATTR_MAX_FILE_SIZE
ATTRIBUTES_LINE_MAX = 2048  # C git's ATTR_MAX_LINE_LENGTH
MAX_TREE_ENTRY_LEN = 4096  # C git's fsck.c max_tree_entry_len
_LONG_LINE = re.compile(rb"[^\n]{%d}" % ATTRIBUTES_LINE_MAX)
MAX_REPORTED = 20  # lines shown to the client; the rest are counted
WARNINGS = {
    "badTagName",
    "missingTaggerEntry",
    "gitattributesSymlink",
    "gitignoreSymlink",
    "mailmapSymlink",
}
STANDARD_MODES = {0o100755, 0o100644, 0o120000, 0o040000, 0o160000}
_MODES = {b"%o" % mode: mode for mode in STANDARD_MODES}
_USUAL_ENTRY = re.compile(rb"(100644|100755|120000|40000|160000) ([^\0/]+)\0(.{20})", re.S)
_USUAL_TREE = re.compile(rb"(?:(?:100644|100755|120000|40000|160000) [^\0/]+\0.{20})*", re.S)
# A name that could be .git, .gitmodules, ... in some file system's eyes starts with one of
# these bytes (HFS+'s ignorable code points start with \xe2 or \xef) or has a backslash.
_SPECIAL_FIRST = b".gGmM\xe2\xef"
_NAME = itemgetter(1)  # of a (mode, name, binary name) entry
NULL_SHA = b"\0" * 20
Entries = list[tuple[bytes, bytes, bytes]]  # a tree's (mode, name, binary name) each
TYPE_NAMES = {
    Commit.type_num: "commit",
    Tree.type_num: "tree",
    Blob.type_num: "blob",
    Tag.type_num: "tag",
}


@dataclass(frozen=True)
class Problem:
    sha: bytes  # hex
    msg_id: str  # C git's camelCase message id
    text: str  # may quote the object's own bytes, escaped
    is_error: bool = True

    def line(self) -> bytes:
        level = "error" if self.is_error else "warning"
        return f"{level}: object {self.sha.decode()}: {self.msg_id}: {self.text}\n".encode()


def report(problems: list[Problem]) -> bytes:
    """What the client is shown (`remote:` lines), errors first, at most MAX_REPORTED."""
    ordered = sorted(problems, key=lambda p: not p.is_error)
    text = b"".join(p.line() for p in ordered[:MAX_REPORTED])
    if len(ordered) > MAX_REPORTED:
        text += f"error: ... and {len(ordered) - MAX_REPORTED} more\n".encode()
    if any(p.is_error for p in problems):
        text += b"fatal: fsck error in packed object\n"
    return text


def shown(data: bytes, limit: int = 200) -> str:
    """Bytes from an object as a short printable line: no control characters reach a
    terminal, and a megabyte of url does not reach it either."""
    text = data[:limit].decode("utf-8", "backslashreplace")
    text = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)
    return text + ("..." if len(data) > limit else "")


# --- the whole push -----------------------------------------------------------------------


def levels_from_config(config) -> dict[str, str]:
    """The repository's own exceptions, in C git's words: `receive.fsck.<msg-id>` set to
    `error`, `warn` or `ignore` (`git config receive.fsck.zeroPaddedFilemode warn`)."""
    levels = {}
    try:
        items = list(config.items((b"receive", b"fsck")))
    except KeyError:
        return levels
    for key, value in items:
        level = value.decode("ascii", "replace").strip().lower()
        if level in ("error", "warn", "ignore"):
            levels[key.decode("ascii", "replace").lower()] = level
    return levels


def finish_checks(checker: Checker, quarantine, store) -> list[Problem]:
    """The checks that wait for the whole push (the .gitmodules and .gitattributes blobs
    new trees named, read from the quarantine or the store); every problem found."""
    checker.finish(lambda sha, limit: _read(quarantine, store, sha, limit))
    return checker.problems


def _read(quarantine, store, sha: bytes, limit: int) -> tuple[int, bytes | None] | None:
    """(type, data) of an object, data None if it is larger than `limit` (known from its
    pack entry without inflating it); None if it is missing (the connectivity check
    refuses the push then)."""
    size = _packed_size(quarantine, sha)
    if size is None:
        size = _packed_size(store, sha)
    try:
        if size is not None and size[1] > limit:
            return size[0], None
        return quarantine.get_raw(sha)
    except KeyError:
        return None


def _packed_size(store, sha: bytes) -> tuple[int, int] | None:
    """(type, size) of a packed object; a delta's type is left as its base's would be
    found by reading, so a delta reports a blob's type only to be read later if small."""
    raw = hex_to_sha(sha)
    for pack in store.packs:
        try:
            offset = pack.index.object_offset(raw)
            f = open(pack_basename(pack) + ".pack", "rb")  # noqa: SIM115 (closed below)
        except (KeyError, PackFileDisappeared, FileNotFoundError):
            continue  # not here, or a pack housekeeping has just replaced
        with f:
            kind, _base, size, length = _header(f.fileno(), offset)
            if kind not in (OFS_DELTA, REF_DELTA):
                return kind, size
            # A delta starts with its base's size and its result's size.
            head = zlib.decompressobj().decompress(os.pread(f.fileno(), 512, offset + length), 32)
            sizes = delta_sizes(head)
            return Blob.type_num, sizes[1] if sizes else 0
    return None


def pack_holds(pack: Pack, sha: bytes) -> bool:
    """Whether one of the store's packs holds `sha` (binary). A pack housekeeping has
    just replaced counts as not holding it: what it held is in the pack that replaced
    it, which dulwich's own lookup finds (a listed pack's files can go at any time)."""
    try:
        return sha in pack
    except (PackFileDisappeared, FileNotFoundError):
        return False


def stored_test(store) -> Callable[[bytes], bool]:
    """Whether the store has an object (binary name), its packs and loose objects looked
    at once: dulwich's `sha in store` rescans the pack directory and opens a file on
    every miss."""
    packs, loose = list(store.packs), set(loose_object_ids(store))

    def stored(sha: bytes) -> bool:
        return any(pack_holds(p, sha) for p in packs) or sha_to_hex(sha) in loose

    return stored


def _header(fd: int, offset: int) -> tuple[int, int | bytes | None, int, int]:
    """(pack type, delta base, size, header length) of the entry at `offset`: an
    OFS_DELTA's base is a distance back, a REF_DELTA's a binary sha; the size is the
    object's, or a delta's (not its result's)."""
    head = os.pread(fd, 64, offset)
    kind, size, i = parse_header(head)
    if kind == OFS_DELTA:
        distance, i = parse_ofs(head, i)
        return kind, distance, size, i
    if kind == REF_DELTA:
        return kind, head[i : i + 20], size, i + 20
    return kind, None, size, i


_NAME_TEXTS = {
    "hasDotgit": "contains '.git'",
    "gitmodulesSymlink": ".gitmodules is a symbolic link",
    "gitattributesSymlink": ".gitattributes is a symlink",
    "gitignoreSymlink": ".gitignore is a symlink",
    "mailmapSymlink": ".mailmap is a symlink",
}
_NAME_CACHED = 255  # longer names are looked at each time: the cache stays small


def _kinds(name: bytes, symlink: bool) -> tuple[str, ...]:
    """What a tree entry's name is in some file system's eyes: fsck message ids, and
    ".gitmodules" or ".gitattributes" for a blob whose content fsck reads at the end."""
    kinds = []
    parts = [name] + name.split(b"\\")[1:]  # after each backslash: NTFS reads a path
    if is_hfs_dot(name, b"git") or any(is_ntfs_dotgit(p) for p in parts):
        kinds.append("hasDotgit")
    if is_hfs_dot(name, b"gitmodules") or any(
        is_ntfs_dot(p, b"gitmodules", b"gi7eba") for p in parts
    ):
        kinds.append("gitmodulesSymlink" if symlink else ".gitmodules")
    if is_hfs_dot(name, b"gitattributes") or is_ntfs_dot(name, b"gitattributes", b"gi7d29"):
        kinds.append("gitattributesSymlink" if symlink else ".gitattributes")
    if symlink and (is_hfs_dot(name, b"gitignore") or is_ntfs_dot(name, b"gitignore", b"gi250a")):
        kinds.append("gitignoreSymlink")
    if symlink and (is_hfs_dot(name, b"mailmap") or is_ntfs_dot(name, b"mailmap", b"maba30")):
        kinds.append("mailmapSymlink")
    return tuple(kinds)


# The same names come back in tree after tree (every version of a directory names its
# files again): each is looked at once.
_name_kinds = functools.lru_cache(maxsize=16384)(_kinds)
# Names that are nothing special even as a symlink's (so as anything else's): a usual tree
# whose names are all here needs no look at any of them, a set operation.
_PLAIN_NAMES: set[bytes] = set()
_PLAIN_MAX = 65536


# --- one object at a time ---------------------------------------------------------------


class Checker:
    def __init__(self, levels: dict[str, str] | None = None) -> None:
        self.problems: list[Problem] = []
        self.gitmodules: set[bytes] = set()  # hex shas of blobs named .gitmodules
        self.gitattributes: set[bytes] = set()
        self.levels = levels or {}

    def add(self, sha: bytes, msg_id: str, text: str) -> None:
        level = self.levels.get(msg_id.lower())
        if level != "ignore":
            error = msg_id not in WARNINGS if level is None else level == "error"
            self.problems.append(Problem(sha, msg_id, text, error))

    def check(self, sha: bytes, type_num: int, data: bytes) -> Entries | None:
        """Check one object. A usual tree's entries (mode, name, binary name), parsed on
        the way, are returned for whoever reads them next (connectivity.Links)."""
        if type_num == Tree.type_num:
            return self.check_tree(sha, data)
        if type_num == Commit.type_num:
            self.check_commit(sha, data)
        elif type_num == Tag.type_num:
            self.check_tag(sha, data)
        elif type_num != Blob.type_num:  # a blob alone has no rules; see finish()
            self.add(sha, "unknownType", f"unknown type '{type_num}'")
        return None

    def finish(self, read) -> None:
        """The blobs found at .gitmodules/.gitattributes paths; `read(sha, limit)` gives
        (type, data), data None above `limit` bytes, or None for a missing object."""
        for shas, what, not_blob, limit, large in (
            (self.gitmodules, ".gitmodules", "gitmodulesBlob", GITMODULES_MAX, "gitmodulesLarge"),
            (
                self.gitattributes,
                ".gitattributes",
                "gitattributesBlob",
                ATTRIBUTES_MAX,
                "gitattributesLarge",
            ),
        ):
            for sha in sorted(shas):
                found = read(sha, limit)
                if found is None:
                    continue
                type_num, data = found
                if data is None:
                    self.add(sha, large, f"{what} too large to parse")
                elif type_num != Blob.type_num:
                    self.add(sha, not_blob, f"non-blob found at {what}")
                elif what == ".gitmodules":
                    self.check_gitmodules(sha, data)
                else:
                    self.check_gitattributes(sha, data)
        self.gitmodules.clear()
        self.gitattributes.clear()

    # --- trees ------------------------------------------------------------------------

    def check_tree(self, sha: bytes, data: bytes) -> Entries | None:
        entries = self._usual_tree(sha, data)
        if entries is None:
            self._check_tree_entries(sha, data)
        return entries

    def _usual_tree(self, sha: bytes, data: bytes) -> Entries | None:
        """The common case at C speed (regular expressions, map over lists): standard
        modes, plain names, in order, no duplicates; its entries. None: look entry by
        entry."""
        if not _USUAL_TREE.fullmatch(data):
            return None
        entries = _USUAL_ENTRY.findall(data)
        if not entries:
            return entries
        names = list(map(_NAME, entries))
        if (
            b"." in names
            or b".." in names
            or max(map(len, names)) > MAX_TREE_ENTRY_LEN
            # names hold no NUL: 21 of them in a row are a name's end and a null sha
            or b"\0" + NULL_SHA in data
        ):
            return None
        # Strictly increasing names are distinct and, when none begins the next (then
        # none begins any later one), in Git's order too: the "/" Git puts after a
        # directory's name only matters after a name that is another's beginning.
        if not all(map(bytes.__lt__, names, names[1:])) or any(
            map(bytes.startswith, names[1:], names)
        ):
            if len(set(names)) != len(names):
                return None
            keys = [name + b"/" if mode == b"40000" else name for mode, name, _sha in entries]
            if keys != sorted(keys):
                return None
        if not _PLAIN_NAMES.issuperset(names):
            found: dict[str, str] = {}
            for mode, name, entry in entries:
                if name in _PLAIN_NAMES:
                    continue
                if name[:1] in _SPECIAL_FIRST or b"\\" in name:
                    self._special_name(sha, name, _MODES[mode], entry, found)
                    if len(name) > _NAME_CACHED or _name_kinds(name, True):
                        continue  # not plain: looked at each time it comes
                if len(_PLAIN_NAMES) < _PLAIN_MAX and len(name) <= _NAME_CACHED:
                    _PLAIN_NAMES.add(name)
            for msg_id, text in found.items():
                self.add(sha, msg_id, text)
        return entries

    def _check_tree_entries(self, sha: bytes, data: bytes) -> None:
        found: dict[str, str] = {}  # msg_id -> text, once each, as C git reports them
        previous_mode, previous_name = 0, None
        candidates: list[bytes] = []
        pos, end = 0, len(data)
        while pos < end:
            space = data.find(b" ", pos)
            nul = data.find(b"\0", space + 1) if space >= 0 else -1
            mode_text = data[pos:space]
            mode = _MODES.get(mode_text)  # the usual modes, without int()
            if mode is None:
                if space < 0 or nul < 0 or not mode_text or mode_text.strip(b"01234567"):
                    self.add(sha, "badTree", "cannot be parsed as a tree")
                    return
                mode = int(mode_text, 8)
                if mode_text[0] == 0x30:  # "0"
                    found["zeroPaddedFilemode"] = "contains zero-padded file modes"
                if mode not in STANDARD_MODES:
                    found["badFilemode"] = "contains bad file modes"
                mode &= 0xFFFF  # what C git reads into its 16-bit mode
            if nul + 21 > end:
                self.add(sha, "badTree", "cannot be parsed as a tree")
                return
            name, entry = data[space + 1 : nul], data[nul + 1 : nul + 21]
            pos = nul + 21
            if not name or b"/" in name or name == b"." or name == b"..":
                if not name:
                    found["emptyName"] = "contains empty pathname"
                elif name == b".":
                    found["hasDot"] = "contains '.'"
                elif name == b"..":
                    found["hasDotdot"] = "contains '..'"
                else:
                    found["fullPathname"] = "contains full pathnames"
            if entry == NULL_SHA:
                found["nullSha1"] = "contains entries pointing to null sha1"
            if len(name) > MAX_TREE_ENTRY_LEN:
                found["largePathname"] = "contains excessively large pathname"
            if name[:1] in _SPECIAL_FIRST or b"\\" in name:
                self._special_name(sha, name, mode, entry, found)
            # Names that differ before either ends are in order if the first is less;
            # only a name that is a prefix of the other needs the full rule.
            if previous_name is not None and not (
                previous_name < name and not name.startswith(previous_name)
            ):
                order = _order(previous_mode, previous_name, mode, name, candidates)
                if order == _UNORDERED:
                    found["treeNotSorted"] = "not properly sorted"
                elif order == _DUPLICATE:
                    found["duplicateEntries"] = "contains duplicate file entries"
            previous_mode, previous_name = mode, name
        for msg_id, text in found.items():
            self.add(sha, msg_id, text)

    def _special_name(
        self, sha: bytes, name: bytes, mode: int, entry: bytes, found: dict[str, str]
    ) -> None:
        symlink = stat.S_ISLNK(mode)
        kinds = _name_kinds(name, symlink) if len(name) <= _NAME_CACHED else _kinds(name, symlink)
        for kind in kinds:
            if kind == ".gitmodules":
                self.gitmodules.add(sha_to_hex(entry))
            elif kind == ".gitattributes":
                self.gitattributes.add(sha_to_hex(entry))
            else:
                found[kind] = _NAME_TEXTS[kind]

    # --- commits and tags ---------------------------------------------------------------

    def check_commit(self, sha: bytes, data: bytes) -> None:
        problem = _commit_problem(data)
        if problem:
            self.add(sha, *problem)

    def check_tag(self, sha: bytes, data: bytes) -> None:
        for problem in _tag_problems(data):
            self.add(sha, *problem)

    # --- blobs --------------------------------------------------------------------------

    def check_gitmodules(self, sha: bytes, data: bytes) -> None:
        if len(data) > GITMODULES_MAX:
            self.add(sha, "gitmodulesLarge", ".gitmodules too large to parse")
            return
        entries: list = []
        try:
            entries.extend(parse_config(data))
            parsed = True
        except ConfigError:
            parsed = False  # the entries before the mistake are checked all the same
        for problem in gitmodules_problems(entries):
            self.add(sha, *problem)
        if not parsed:
            self.add(sha, "gitmodulesParse", "could not parse gitmodules blob")

    def check_gitattributes(self, sha: bytes, data: bytes) -> None:
        if len(data) > ATTRIBUTES_MAX:
            self.add(sha, "gitattributesLarge", ".gitattributes too large to parse")
        elif _LONG_LINE.search(data):
            self.add(sha, "gitattributesLineLength", ".gitattributes has too long lines to parse")


# --- tree order (C git's verify_ordered) -----------------------------------------------------

_UNORDERED, _DUPLICATE = -1, -2


def _below_slash(c: int) -> bool:
    return 0 < c < 0x2F


def _order(mode1: int, name1: bytes, mode2: int, name2: bytes, candidates: list[bytes]) -> int:
    """Git sorts a tree's entries by name, a directory's name as if it ended in '/'; two
    entries of one name (a file and a directory too) are duplicates. A file `foo` and a
    directory `foo` need not be neighbours (`foo`, `foo.bar`, `foo/`), so files that
    could meet a later directory are kept in `candidates`."""
    n = min(len(name1), len(name2))
    if name1[:n] < name2[:n]:
        return 0
    if name1[:n] > name2[:n]:
        return _UNORDERED
    c1 = name1[n] if len(name1) > n else 0
    c2 = name2[n] if len(name2) > n else 0
    if not c1 and not c2:
        return _DUPLICATE
    if not c1 and stat.S_ISDIR(mode1):
        c1 = 0x2F
    if not c2 and stat.S_ISDIR(mode2):
        c2 = 0x2F
    if not c1 and _below_slash(c2):
        candidates.append(name1)
    elif c2 == 0x2F and _below_slash(c1):
        while candidates:
            file_name = candidates.pop()
            if not name2.startswith(file_name):
                continue
            rest = name2[len(file_name) :]
            if not rest:
                return _DUPLICATE
            if _below_slash(rest[0]):
                candidates.append(file_name)
                break
    return 0 if c1 < c2 else _UNORDERED


# --- names that mean .git on some file system (C git's is_hfs_dotgit, is_ntfs_dotgit) -------

# HFS+ ignores these code points in names, so ".g\u200cit" is ".git" there.
_HFS_IGNORED = {
    0x200C,
    0x200D,
    0x200E,
    0x200F,
    0x202A,
    0x202B,
    0x202C,
    0x202D,
    0x202E,
    0x206A,
    0x206B,
    0x206C,
    0x206D,
    0x206E,
    0x206F,
    0xFEFF,
}


def _code_points(name: bytes) -> Iterator[int]:
    """UTF-8 code points, then 0 for ever; malformed UTF-8 also reads as 0, the end (C
    git's rule: pick_one_utf8_char, with U+FFFE/U+FFFF malformed too)."""
    pos = 0
    while pos < len(name):
        lead = name[pos]
        size = (
            1
            if lead < 0x80
            else 2
            if 0xC2 <= lead < 0xE0
            else 3
            if 0xE0 <= lead < 0xF0
            else 4
            if 0xF0 <= lead <= 0xF4
            else 0
        )
        try:
            char = name[pos : pos + size].decode("utf-8") if size else ""
        except UnicodeDecodeError:
            char = ""
        if len(char) != 1 or ord(char) in (0xFFFE, 0xFFFF):
            break
        pos += size
        yield ord(char)
    while True:
        yield 0


def _hfs_chars(name: bytes) -> Iterator[int]:
    return (c for c in _code_points(name) if c not in _HFS_IGNORED)


def is_hfs_dot(name: bytes, needle: bytes) -> bool:
    """`.` + needle, in any case, with HFS+'s ignored code points anywhere, alone or as
    the first path component."""
    chars = _hfs_chars(name)
    if next(chars) != 0x2E:
        return False
    for want in needle:
        c = next(chars)
        if c > 127 or chr(c).lower() != chr(want):
            return False
    c = next(chars)
    return c == 0 or c == 0x2F


def _dir_sep(c: int) -> bool:
    return c in (0x2F, 0x5C)


def is_ntfs_dotgit(name: bytes) -> bool:
    """`.git` or its 8.3 short name `git~1`, in any case, followed only by spaces and
    dots (NTFS drops them) up to the end, a separator or an alternate stream's `:`."""
    lowered = name.lower()
    if lowered.startswith(b".git"):
        rest = name[4:]
    elif lowered.startswith(b"git~1"):
        rest = name[5:]
    else:
        return False
    for c in rest:
        if _dir_sep(c) or c == 0x3A:
            return True
        if c not in (0x2E, 0x20):
            return False
    return True


def _only_spaces_and_dots(rest: bytes) -> bool:
    for c in rest:
        if c == 0x3A:
            return True
        if c not in (0x20, 0x2E):
            return False
    return True


def is_ntfs_dot(name: bytes, needle: bytes, short_prefix: bytes) -> bool:
    """`.` + needle on NTFS: in any case with trailing spaces and dots, its short name
    (the first six letters, `~1` to `~4`), or the hashed fall-back short name
    (`short_prefix` as C git computes it, then `~` and digits)."""
    lowered = name.lower()
    if lowered[:1] == b"." and lowered[1 : 1 + len(needle)] == needle:
        return _only_spaces_and_dots(name[1 + len(needle) :])
    if lowered[:6] == needle[:6] and name[6:7] == b"~" and name[7:8] in (b"1", b"2", b"3", b"4"):
        return _only_spaces_and_dots(name[8:])
    saw_tilde = False
    i = 0
    while i < 8:
        if i >= len(name):
            return False
        c = name[i]
        if saw_tilde:
            if not 0x30 <= c <= 0x39:
                return False
        elif c == 0x7E:
            i += 1
            if i >= len(name) or not 0x31 <= name[i] <= 0x39:
                return False
            saw_tilde = True
        elif i >= 6 or c & 0x80 or bytes([c]).lower() != short_prefix[i : i + 1]:
            return False
        i += 1
    return _only_spaces_and_dots(name[i:])


# --- commits and tags (C git's fsck_commit, fsck_tag, fsck_ident) -----------------------------

_HEX = re.compile(rb"[0-9a-fA-F]{40}\n")


def _headers_problem(data: bytes) -> tuple[str, str] | None:
    """Headers end in a blank line, or at least in a newline."""
    blank = data.find(b"\n\n")
    header = data if blank < 0 else data[:blank]
    nul = header.find(b"\0")
    if nul >= 0:
        return "nulInHeader", f"unterminated header: NUL at offset {nul}"
    if blank < 0 and not data.endswith(b"\n"):
        return "unterminatedHeader", "unterminated header"
    return None


def _ident(data: bytes, p: int) -> tuple[int, tuple[str, str] | None]:
    """Check `Name <email> 1234567890 +0000\\n` at `p`; returns the next line's start."""
    nl = data.index(b"\n", p)
    after = nl + 1
    line = data[p : nl + 1]

    def bad(msg_id: str, what: str):
        return after, (msg_id, f"invalid author/committer line - {what}")

    if line[:1] == b"<":
        return bad("missingNameBeforeEmail", "missing space before email")
    lt = next((i for i, c in enumerate(line) if c in b"<>\n"), len(line) - 1)
    if line[lt] == 0x0A:
        return bad("missingEmail", "missing email")
    if line[lt] == 0x3E:
        return bad("badName", "bad name")
    if line[lt - 1] != 0x20:
        return bad("missingSpaceBeforeEmail", "missing space before email")
    gt = next(i for i in range(lt + 1, len(line)) if line[i] in b"<>\n")
    if line[gt] != 0x3E:
        return bad("badEmail", "bad email")
    i = gt + 1
    if line[i] != 0x20:
        return bad("missingSpaceBeforeDate", "missing space before date")
    i += 1
    while line[i] in b" \t":
        i += 1
    if not 0x30 <= line[i] <= 0x39:
        return bad("badDate", "bad date")
    if line[i] == 0x30 and line[i + 1] != 0x20:
        return bad("zeroPaddedDate", "zero-padded date")
    start = i
    while 0x30 <= line[i] <= 0x39:
        i += 1
    if i - start > 23 or int(line[start:i]) >= 2**63:
        return bad("badDateOverflow", "date causes integer overflow")
    if line[i] != 0x20:
        return bad("badDate", "bad date")
    zone = line[i + 1 : i + 7]
    if not re.fullmatch(rb"[+-][0-9]{4}\n", zone):
        return bad("badTimezone", "bad time zone")
    return after, None


def _commit_problem(data: bytes) -> tuple[str, str] | None:
    """The first problem, as C git stops at it."""
    problem = _headers_problem(data)
    if problem:
        return problem
    if not data.startswith(b"tree "):
        return "missingTree", "invalid format - expected 'tree' line"
    if not _HEX.match(data, 5):
        return "badTreeSha1", "invalid 'tree' line format - bad sha1"
    p = 46
    while data.startswith(b"parent ", p):
        if not _HEX.match(data, p + 7):
            return "badParentSha1", "invalid 'parent' line format - bad sha1"
        p += 48
    authors = 0
    while data.startswith(b"author ", p):
        authors += 1
        p, problem = _ident(data, p + 7)
        if problem:
            return problem
    if authors < 1:
        return "missingAuthor", "invalid format - expected 'author' line"
    if authors > 1:
        return "multipleAuthors", "invalid format - multiple 'author' lines"
    if not data.startswith(b"committer ", p):
        return "missingCommitter", "invalid format - expected 'committer' line"
    p, problem = _ident(data, p + 10)
    if problem:
        return problem
    if b"\0" in data:
        return "nulInCommit", "NUL byte in the commit object body"
    return None


def _tag_problems(data: bytes) -> list[tuple[str, str]]:
    problem = _headers_problem(data)
    if problem:
        return [problem]
    if not data.startswith(b"object "):
        return [("missingObject", "invalid format - expected 'object' line")]
    if not _HEX.match(data, 7):
        return [("badObjectSha1", "invalid 'object' line format - bad sha1")]
    p = 48
    if not data.startswith(b"type ", p):
        return [("missingTypeEntry", "invalid format - expected 'type' line")]
    eol = data.find(b"\n", p)
    if eol < 0:
        return [("missingType", "invalid format - unexpected end after 'type' line")]
    if data[p + 5 : eol] not in (b"commit", b"tree", b"blob", b"tag"):
        return [("badType", "invalid 'type' value")]
    p = eol + 1
    if not data.startswith(b"tag ", p):
        return [("missingTagEntry", "invalid format - expected 'tag' line")]
    eol = data.find(b"\n", p)
    if eol < 0:
        return [("missingTag", "invalid format - unexpected end after 'type' line")]
    warnings = []
    name = data[p + 4 : eol]
    if not check_ref_format(b"refs/tags/" + name):
        warnings.append(("badTagName", f"invalid 'tag' name: {shown(name)}"))
    p = eol + 1
    if not data.startswith(b"tagger ", p):
        warnings.append(("missingTaggerEntry", "invalid format - expected 'tagger' line"))
        return warnings
    _, problem = _ident(data, p + 7)
    return warnings + ([problem] if problem else [])


# --- .gitmodules: git's config syntax, and C git's rules for submodules --------------------


class ConfigError(ValueError):
    pass


def _is_space(c: int) -> bool:
    return c in b" \t\n\v\f\r"


def _is_key_char(c: int) -> bool:
    return 0x30 <= c <= 0x39 or 0x41 <= c <= 0x5A or 0x61 <= c <= 0x7A or c == 0x2D


class _ConfigReader:
    """C git's config parser (config.c git_parse_source), for one file in memory: the same
    states, so that a value is read here as a client will read it."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos, self.eof = data, 0, False

    def next(self) -> int:
        if self.pos >= len(self.data):
            self.eof = True
            return 0x0A
        c = self.data[self.pos]
        self.pos += 1
        if c == 0x0D and self.data[self.pos : self.pos + 1] == b"\n":
            self.pos += 1
            c = 0x0A
        return c

    def entries(self) -> Iterator[tuple[bytes, bytes | None]]:
        if self.data.startswith(b"\xef\xbb\xbf"):
            self.pos = 3
        comment = False
        section = b""
        while True:
            c = self.next()
            if c == 0x0A:
                if self.eof:
                    return
                comment = False
                continue
            if comment or _is_space(c):
                continue
            if c in b"#;":
                comment = True
                continue
            if c == 0x5B:  # [
                section = self.section() + b"."
                continue
            if not (0x41 <= c <= 0x5A or 0x61 <= c <= 0x7A):
                raise ConfigError("bad config line")
            yield self.entry(section, bytes([c]).lower())

    def section(self) -> bytes:
        name = bytearray()
        while True:
            c = self.next()
            if self.eof:
                raise ConfigError("unterminated section")
            if c == 0x5D:  # ]
                if not name:
                    raise ConfigError("empty section")
                return bytes(name)
            if _is_space(c):
                return bytes(name) + self.subsection(c)
            if not _is_key_char(c) and c != 0x2E:
                raise ConfigError("bad section name")
            name += bytes([c]).lower()

    def subsection(self, c: int) -> bytes:
        while True:
            if c == 0x0A:
                raise ConfigError("incomplete section line")
            c = self.next()
            if not _is_space(c):
                break
        if c != 0x22:
            raise ConfigError("bad subsection")
        name = bytearray(b".")
        while True:
            c = self.next()
            if c == 0x0A:
                raise ConfigError("incomplete section line")
            if c == 0x22:
                break
            if c == 0x5C:
                c = self.next()
                if c == 0x0A:
                    raise ConfigError("incomplete section line")
            name.append(c)
        if self.next() != 0x5D:
            raise ConfigError("bad subsection")
        return bytes(name)

    def entry(self, section: bytes, first: bytes) -> tuple[bytes, bytes | None]:
        name = bytearray(section + first)
        while True:
            c = self.next()
            if self.eof or not _is_key_char(c):
                break
            name += bytes([c]).lower()
        while c in (0x20, 0x09):
            c = self.next()
        if c == 0x0A:
            return bytes(name), None
        if c != 0x3D:  # =
            raise ConfigError("bad key")
        return bytes(name), self.value()

    def value(self) -> bytes:
        quote = comment = False
        trim = 0
        value = bytearray()
        while True:
            c = self.next()
            if c == 0x0A:
                if quote:
                    raise ConfigError("unterminated quote")
                return bytes(value[:trim] if trim else value)
            if comment:
                continue
            if _is_space(c) and not quote:
                if not trim:
                    trim = len(value)
                if value:
                    value.append(c)
                continue
            if not quote and c in b";#":
                comment = True
                continue
            trim = 0
            if c == 0x5C:
                c = self.next()
                if c == 0x0A:
                    continue
                c = {0x74: 0x09, 0x62: 0x08, 0x6E: 0x0A, 0x5C: 0x5C, 0x22: 0x22}.get(c, -1)
                if c < 0:
                    raise ConfigError("bad escape")
                value.append(c)
                continue
            if c == 0x22:
                quote = not quote
                continue
            value.append(c)


def parse_config(data: bytes) -> Iterator[tuple[bytes, bytes | None]]:
    """(section.subsection.key, value or None) in file order; ConfigError when C git's
    parser would stop. A NUL byte is refused: C git would cut names and values there."""
    if b"\0" in data:
        raise ConfigError("NUL byte")
    return _ConfigReader(data).entries()


def gitmodules_problems(entries) -> Iterator[tuple[str, str]]:
    """C git's fsck_gitmodules_fn for each `submodule.NAME.KEY` entry."""
    for var, value in entries:
        if not var.startswith(b"submodule."):
            continue
        rest = var[len(b"submodule.") :]
        dot = rest.rfind(b".")
        if dot < 0:
            continue  # no subsection
        name, key = rest[:dot], rest[dot + 1 :]
        if not submodule_name_ok(name):
            yield "gitmodulesName", f"disallowed submodule name: {shown(name)}"
        if key == b"url" and value is not None and not submodule_url_ok(value):
            yield "gitmodulesUrl", f"disallowed submodule url: {shown(value)}"
        if key == b"path" and value is not None and value.startswith(b"-"):
            yield "gitmodulesPath", f"disallowed submodule path: {shown(value)}"
        if key == b"update" and value is not None and value.startswith(b"!"):
            yield "gitmodulesUpdate", f"disallowed submodule update setting: {shown(value)}"


def submodule_name_ok(name: bytes) -> bool:
    """Not empty, and no `..` component (with `/` or `\\` as separators): the name
    becomes a directory under .git/modules/."""
    return bool(name) and b".." not in re.split(rb"[/\\]", name)


def _starts_dot_slash(url: bytes) -> bool:
    return url[:1] == b"." and url[1:2] in (b"/", b"\\")


def _starts_dot_dot_slash(url: bytes) -> bool:
    return url[:2] == b".." and url[2:3] in (b"/", b"\\")


def url_decode(url: bytes) -> bytes:
    return re.sub(rb"%([0-9a-fA-F]{2})", lambda m: bytes([int(m.group(1), 16)]), url)


def submodule_url_ok(url: bytes) -> bool:
    """C git's check_submodule_url: no option-like url (`--upload-pack=...`), no newline
    once decoded, no relative url that climbs out of the host (CVE-2020-11008), and an
    http(s)/ftp(s) url that git's url normaliser accepts."""
    if url.startswith(b"-"):
        return False
    if _starts_dot_slash(url) or _starts_dot_dot_slash(url) or url.startswith(b"git://"):
        if b"\n" in url_decode(url):
            return False
        climbs, rest = 0, url
        while True:
            if _starts_dot_dot_slash(rest):
                climbs, rest = climbs + 1, rest[3:]
            elif _starts_dot_slash(rest):
                rest = rest[2:]
            else:
                break
        return not (climbs and rest[:1] in (b":", b"/"))
    for prefix in (b"http::", b"https::", b"ftp::", b"ftps::"):
        if url.startswith(prefix):
            return _curl_url_ok(url[len(prefix) :])
    if url.startswith((b"http://", b"https://", b"ftp://", b"ftps://")):
        return _curl_url_ok(url)
    return True


_ESCAPES = re.compile(rb"%(?![0-9a-fA-F]{2})")
_HOST_CHARS = re.compile(rb"[A-Za-z0-9.\-_\[:\]]*")


def _curl_url_ok(url: bytes) -> bool:
    """What C git's url_normalize accepts (scheme, host, port, escapes, `..` segments),
    and no newline in it decoded."""
    scheme = re.match(rb"[A-Za-z][A-Za-z0-9+.\-]*://", url)
    if not scheme:
        return False
    rest = url[scheme.end() :]
    slash = re.search(rb"[/?#]", rest)
    slash = slash.start() if slash else len(rest)
    at = rest.find(b"@")
    if 0 <= at < slash:
        if _ESCAPES.search(rest[:at]):
            return False
        rest = rest[at + 1 :]
        slash -= at + 1
    if not rest or rest[:1] in b":/?#":
        return False  # no host
    colon = max(rest.rfind(b":", 0, slash), rest.rfind(b"]", 0, slash))
    host_end = colon if colon > 0 and rest[colon : colon + 1] == b":" else slash
    if _HOST_CHARS.fullmatch(rest[:host_end]) is None:
        return False
    if host_end < slash:
        port = rest[host_end + 1 : slash].lstrip(b"0") or (
            b"0" if rest[host_end + 1 : slash] else b""
        )
        if port and (not port.isdigit() or len(port) > 5 or not 0 < int(port) <= 65535):
            return False
    tail = rest[slash:]
    end = re.search(rb"[?#]", tail)
    path, query = (tail[: end.start()], tail[end.start() :]) if end else (tail, b"")
    if _ESCAPES.search(path) or _ESCAPES.search(query):
        return False
    segments: list[bytes] = []
    for segment in path[1:].split(b"/") if path else [b""]:
        decoded = url_decode(segment)
        if decoded == b"..":
            if not segments:
                return False
            segments.pop()
        elif decoded != b".":
            segments.append(segment)
    return b"\n" not in url_decode(url)
