"""deformdetr bench memory: one row per case, each measured in its own process."""

import re

import pytest

from deformdetr.cli import main


@pytest.mark.slow  # three processes, each building a ResNet-50 model
def test_bench_memory_reports_each_case(capsys):
    assert main(["bench", "memory", "--size", "64x64", "--batch", "2", "--variant", "single_scale"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if re.match(r"\| (plain|model|train)", line)]
    assert [row.split("|")[1].strip() for row in rows] == [
        "plain", "model.checkpoint_activations=true", "train.accumulate_steps=2 (batch 1 a part)"]
    for row in rows:
        peak, seconds = row.split("|")[2:4]
        assert float(peak.split()[0]) >= 0 and float(seconds) > 0
