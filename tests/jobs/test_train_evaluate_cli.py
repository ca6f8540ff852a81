"""`lime-rank train` and `lime-rank evaluate` end to end on a tiny interactions file."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import torch

from jobs.cli import main as cli


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    threads = torch.get_num_threads()  # tiny models; --threads changes the process-wide setting
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


FAST = ["--epochs", "1", "--d-model", "16", "--n-links", "4", "--max-history", "8", "--threads", "1"]


def _interactions(path: Path) -> Path:
    rows = [(user, (user * 3 + t) % 25 + 100, 1_000 + 60 * t) for user in range(30) for t in range(9)]
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
    if path.suffix == ".parquet":
        frame.to_parquet(path)
    else:
        frame.to_csv(path, sep="\t" if path.suffix == ".tsv" else ",", index=False)
    return path


@pytest.mark.parametrize("model", ["lime-xor", "lime-mha", "sasrec", "popularity"])
def test_train_then_evaluate_writes_checkpoint_and_metrics(tmp_path: Path, model: str,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    src = _interactions(tmp_path / "events.tsv")
    ckpt = tmp_path / f"{model}.pt"
    assert cli(["train", "--interactions", str(src), "--model", model, "--out", str(ckpt), "--seed", "3",
                *FAST]) == 0
    assert ckpt.is_file()
    assert re.search(rf"{model}: wrote .*model_version [0-9a-f]{{16}}", capsys.readouterr().out)

    out = tmp_path / "metrics.json"
    assert cli(["evaluate", "--checkpoint", str(ckpt), "--interactions", str(src), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert {"model", "users", "hr@10", "ndcg@10", "hr@50", "ndcg@50"} <= set(result)
    assert result["model"] == model
    assert result["users"] == 30
    assert 0.0 <= result["ndcg@10"] <= result["hr@10"] <= result["hr@50"] <= 1.0
    assert result["hr@50"] == 1.0  # 25 items in the catalogue: every target is in the top 50
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["model", "users", "hr@10", "ndcg@10", "hr@50", "ndcg@50"]
    assert table[1].split()[:2] == [model, "30"]


def test_training_is_deterministic_for_a_seed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _interactions(tmp_path / "events.csv")
    for name in ("a.pt", "b.pt"):
        assert cli(["train", "--interactions", str(src), "--model", "lime-xor", "--out", str(tmp_path / name),
                    "--seed", "7", *FAST]) == 0
    versions = re.findall(r"model_version ([0-9a-f]{16})", capsys.readouterr().out)
    assert len(versions) == 2 and versions[0] == versions[1]


def test_ranks_out_gives_every_users_rank_and_the_same_metrics(tmp_path: Path) -> None:
    from lime_model.evaluate import metrics_from_ranks

    src = _interactions(tmp_path / "events.csv")
    ckpt, out, ranks_csv = tmp_path / "m.pt", tmp_path / "m.json", tmp_path / "deep" / "ranks.csv"
    assert cli(["train", "--interactions", str(src), "--model", "lime-xor", "--out", str(ckpt), *FAST]) == 0
    assert cli(["evaluate", "--checkpoint", str(ckpt), "--interactions", str(src), "--out", str(out),
                "--ranks-out", str(ranks_csv)]) == 0
    ranks = pd.read_csv(ranks_csv)
    assert list(ranks.columns) == ["user_id", "rank"]
    assert ranks["user_id"].tolist() == list(range(30))  # every evaluated user once, by user id
    assert ranks["rank"].between(0, 24).all()  # 25 items, the target's own history masked
    result = json.loads(out.read_text())
    recomputed = metrics_from_ranks(ranks["rank"].to_numpy())
    assert recomputed == pytest.approx({k: result[k] for k in recomputed})
    assert not list(ranks_csv.parent.glob("*.tmp"))


def test_parquet_interactions_are_accepted(tmp_path: Path) -> None:
    src = _interactions(tmp_path / "events.parquet")
    assert cli(["train", "--interactions", str(src), "--model", "popularity",
                "--out", str(tmp_path / "p.pt")]) == 0


def test_evaluate_with_missing_checkpoint_fails_with_a_clear_message(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _interactions(tmp_path / "events.tsv")
    code = cli(["evaluate", "--checkpoint", str(tmp_path / "none.pt"), "--interactions", str(src),
                "--out", str(tmp_path / "m.json")])
    assert code == 1
    err = capsys.readouterr().err
    assert re.search(r"lime-rank evaluate: error: checkpoint .*none\.pt does not exist", err)
    assert not (tmp_path / "m.json").exists()


def test_train_with_interactions_lacking_a_column_fails(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "bad.csv"
    src.write_text("user_id,item_id\n1,2\n")
    code = cli(["train", "--interactions", str(src), "--model", "lime-xor", "--out", str(tmp_path / "x.pt")])
    assert code == 1
    assert "lacks column(s) ['timestamp']" in capsys.readouterr().err


def test_train_rejects_an_unknown_model(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli(["train", "--interactions", "x.tsv", "--model", "gru4rec", "--out", "x.pt"])
    assert exc.value.code == 2
    assert "invalid choice: 'gru4rec'" in capsys.readouterr().err


def test_overrides_reach_the_stored_configs(tmp_path: Path) -> None:
    from lime_model.checkpoint import load_checkpoint

    src = _interactions(tmp_path / "events.csv")
    ckpt = tmp_path / "o.pt"
    assert cli(["train", "--interactions", str(src), "--model", "lime-xor", "--out", str(ckpt), *FAST,
                "--n-heads", "4", "--n-layers", "1", "--dropout", "0.3", "--weight-decay", "0.05"]) == 0
    loaded = load_checkpoint(ckpt)
    assert (loaded.config.n_heads, loaded.config.n_layers, loaded.config.dropout) == (4, 1, 0.3)
    assert loaded.metadata["train_config"]["weight_decay"] == 0.05
