"""Checkpoint round trip, model_version, and one specific error per kind of damage."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from lime_helpers import right_aligned, tiny_config, tiny_model

from lime_model.checkpoint import build_model, load_checkpoint, save_checkpoint
from lime_model.config import ModelConfig
from lime_model.errors import (
    CheckpointConfigMismatchError,
    CheckpointCorruptError,
    CheckpointNaNError,
    CheckpointNotFoundError,
    ModelConfigError,
)
from lime_model.vocab import ItemVocabulary

VOCAB = ItemVocabulary(np.arange(100, 139, dtype=np.int64))  # 39 items -> num_items 40
POPULARITY = np.arange(39, dtype=np.int64)


def _save(path: Path, kind: str = "lime-xor", **overrides: object) -> str:
    model = tiny_model(tiny_config(kind, **overrides))
    return save_checkpoint(path, model, VOCAB, POPULARITY, {"note": "test", "valid": {"ndcg@10": 0.5}})


def _rewrite(path: Path, edit) -> None:
    payload = torch.load(path, weights_only=True)
    edit(payload)
    torch.save(payload, path)


@pytest.mark.parametrize("kind", ["lime-xor", "lime-mha", "sasrec", "popularity"])
def test_checkpoint_round_trip_rebuilds_the_same_model(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "model.pt"
    original = tiny_model(tiny_config(kind, use_time_gaps=True))
    version = save_checkpoint(path, original, VOCAB, POPULARITY, {"note": "x"})
    ckpt = load_checkpoint(path)
    assert re.fullmatch(r"[0-9a-f]{16}", version)
    assert ckpt.model_version == version
    assert ckpt.config == original.cfg
    assert ckpt.vocab == VOCAB
    assert ckpt.popularity.tolist() == POPULARITY.tolist()
    assert ckpt.metadata == {"note": "x"}
    rebuilt = build_model(ckpt)
    assert not rebuilt.training
    history = right_aligned([[1, 5, 9], [2]], 3)
    times = torch.arange(6, dtype=torch.float64).view(2, 3) * 100
    cands = torch.arange(1, 40)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.forward_scores(history, times, cands),
                                   original.forward_scores(history, times, cands))


def test_popularity_checkpoint_scores_by_training_counts(tmp_path: Path) -> None:
    path = tmp_path / "pop.pt"
    model = tiny_model(tiny_config("popularity"))
    save_checkpoint(path, model, VOCAB, POPULARITY, {})
    ckpt = load_checkpoint(path)
    assert ckpt.state_dict == {}
    scores = build_model(ckpt).forward_scores(right_aligned([[3]], 1), None, torch.tensor([1, 39]))
    assert scores.tolist() == [[0.0, 38.0]]


def test_model_version_is_deterministic_and_content_dependent(tmp_path: Path) -> None:
    a = _save(tmp_path / "a.pt")
    b = _save(tmp_path / "b.pt")
    assert a == b
    model = tiny_model(tiny_config("lime-xor"))
    with torch.no_grad():
        model.links[0, 0] += 1e-3
    assert save_checkpoint(tmp_path / "c.pt", model, VOCAB, POPULARITY, {}) != a
    other_vocab = ItemVocabulary(np.arange(200, 239, dtype=np.int64))
    assert save_checkpoint(tmp_path / "d.pt", tiny_model(tiny_config("lime-xor")), other_vocab, POPULARITY,
                           {}) != a


def test_save_that_fails_midway_leaves_the_previous_checkpoint_and_no_temporary_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "sub" / "model.pt"
    version = _save(path)
    good = path.read_bytes()

    def torn_save(obj: object, f: Any, *args: object, **kwargs: object) -> None:
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", torn_save)
    with pytest.raises(OSError, match="disk full"):
        _save(path, "lime-mha")
    assert path.read_bytes() == good
    assert load_checkpoint(path).model_version == version
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.pt"]


def test_save_replaces_the_checkpoint_whole_under_a_reader_that_has_it_open(tmp_path: Path) -> None:
    """A reader (a scoring task loading the model) keeps reading the old file in full while a new
    one is saved: the new checkpoint is renamed into place, never written into the old file."""
    path = tmp_path / "model.pt"
    _save(path)
    good = path.read_bytes()
    with open(path, "rb") as reader:
        _save(path, "lime-mha")
        assert reader.read() == good
    assert path.read_bytes() != good


def test_missing_checkpoint_raises_not_found(tmp_path: Path) -> None:
    with pytest.raises(CheckpointNotFoundError, match=r"checkpoint .*nope\.pt does not exist"):
        load_checkpoint(tmp_path / "nope.pt")


def test_truncated_checkpoint_raises_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    _save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointCorruptError, match=r"model\.pt is truncated or unreadable"):
        load_checkpoint(path)


def test_non_checkpoint_file_raises_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    torch.save({"weights": torch.zeros(2)}, path)
    with pytest.raises(CheckpointCorruptError, match="is not a lime-rank-checkpoint file"):
        load_checkpoint(path)


def test_nan_in_a_tensor_raises_nan_error_naming_the_tensor(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    _save(path)

    def poison(payload: dict) -> None:
        payload["state_dict"]["blocks.1.proj.weight"][0, :3] = float("nan")

    _rewrite(path, poison)
    with pytest.raises(CheckpointNaNError, match=r"'blocks\.1\.proj\.weight' \(3 of 256 values\)"):
        load_checkpoint(path)


def test_inf_in_a_tensor_raises_nan_error(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    _save(path)
    _rewrite(path, lambda p: p["state_dict"]["links"].__setitem__((0, 0), float("inf")))
    with pytest.raises(CheckpointNaNError, match=r"'links' \(1 of 64 values\)"):
        load_checkpoint(path)


def test_saving_nan_weights_is_refused(tmp_path: Path) -> None:
    model = tiny_model(tiny_config("lime-xor"))
    with torch.no_grad():
        model.value.bias[0] = float("nan")
    with pytest.raises(CheckpointNaNError, match=r"refusing to save .*'value\.bias'"):
        save_checkpoint(tmp_path / "model.pt", model, VOCAB, POPULARITY, {})
    assert not (tmp_path / "model.pt").exists()


def test_weights_that_do_not_fit_the_config_raise_config_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    _save(path)
    _rewrite(path, lambda p: p["config"].update(n_links=8))
    with pytest.raises(CheckpointConfigMismatchError,
                       match=r"weights do not fit its config: tensor 'links' has shape \(4, 16\), "
                             r"config wants \(8, 16\)"):
        load_checkpoint(path)


def test_extra_layer_in_config_raises_config_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    _save(path)
    _rewrite(path, lambda p: p["config"].update(n_layers=3))
    with pytest.raises(CheckpointConfigMismatchError, match=r"missing tensor 'blocks\.2\.attn_norm\.bias'"):
        load_checkpoint(path)


def test_vocabulary_that_does_not_fit_num_items_raises_config_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    _save(path)
    _rewrite(path, lambda p: p.update(item_ids=torch.arange(10),
                                      popularity=torch.zeros(10, dtype=torch.int64)))
    with pytest.raises(CheckpointConfigMismatchError, match="vocabulary has 10 items"):
        load_checkpoint(path)


def test_expected_config_that_differs_raises_config_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    _save(path)
    expected = ModelConfig(**{**tiny_config("lime-xor").to_dict(), "d_model": 32})
    with pytest.raises(CheckpointConfigMismatchError, match=r"'d_model': \(32, 16\)"):
        load_checkpoint(path, expected_config=expected)


def test_tampered_weights_fail_the_content_hash(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    version = _save(path)
    _rewrite(path, lambda p: p["state_dict"]["links"].mul_(1.01))
    with pytest.raises(CheckpointCorruptError,
                       match=rf"content hash [0-9a-f]{{16}} does not match its model_version '{version}'"):
        load_checkpoint(path)


def test_invalid_stored_config_raises_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    _save(path)
    _rewrite(path, lambda p: p["config"].update(model="gpt"))
    with pytest.raises(CheckpointCorruptError, match="holds an invalid config: model must be one of"):
        load_checkpoint(path)


def test_checkpoint_written_before_newest_to_links_existed_loads_with_it_off(tmp_path: Path) -> None:
    """Checkpoints stored before the field was added keep their model_version (it is hashed only
    when on) and load with the paper's L_P."""
    path = tmp_path / "old.ckpt"
    version = _save(path)
    _rewrite(path, lambda payload: payload["config"].pop("newest_to_links"))
    ckpt = load_checkpoint(path)
    assert ckpt.model_version == version and ckpt.config.newest_to_links is False
    assert _save(tmp_path / "newest.ckpt", newest_to_links=True) != version


def test_newest_to_links_is_refused_for_models_without_links() -> None:
    with pytest.raises(ModelConfigError, match="newest_to_links is a setting of the link models"):
        ModelConfig(model="sasrec", num_items=40, newest_to_links=True)
    with pytest.raises(ModelConfigError, match="newest_to_links must be a bool"):
        ModelConfig(model="lime-xor", num_items=40, newest_to_links=1)
