"""`actrec demo` at a reduced size: every stage runs for real and the tables and files come out."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from actrec.cli import cli


def test_demo_end_to_end_at_reduced_size(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    result = CliRunner().invoke(cli, ["demo", "--workdir", str(workdir), "--videos-per-class", "5",
                                      "--iterations", "4", "--frames", "12", "--size", "32"])
    assert result.exit_code == 0, result.output
    for command in ("$ actrec synth", "$ actrec extract-frames", "$ actrec compute-flow", "$ actrec train stilt",
                    "--no-co-attention", "$ actrec train cotlstm", "$ actrec evaluate", "$ actrec fit-fusion"):
        assert command in result.output
    for title, rows in (("STILT ablation (Table 4 layout)", ["spatial stream", "temporal stream",
                                                              "two-stream (late average)",
                                                              "+ co-attention (late average)",
                                                              "+ co-attention + AWF"]),
                        ("STILT fusion methods (Table 5 layout)", ["late average", "early (linear SVM on features)",
                                                                   "AWF"]),
                        ("CoT-LSTM (Table II layout)", ["spatial", "temporal", "fusion (FC-2)"])):
        assert title in result.output
        assert all(row in result.output for row in rows)
    assert "Test top-1 on 12 videos: one video is 8.3 points" in result.output
    top1 = json.loads((workdir / "demo_results.json").read_text())["top1"]
    assert len(top1) == 11 and all(0.0 <= v <= 100.0 for v in top1.values())
    for path in ("synth/manifest.csv", "frames/actrec_store.json", "flow/actrec_store.json",
                 "runs/stilt/checkpoint.pt", "runs/two-stream/metrics.csv", "runs/cotlstm/config.json",
                 "scores/stilt_train.npz", "scores/cotlstm_test.npz", "fusion/stilt.json", "fusion/stilt_weights.png",
                 "fusion/stilt_early.json"):
        assert (workdir / path).exists(), path
    assert list((workdir / "scores").glob("*.confusion.png"))
