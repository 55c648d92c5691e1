"""The CLI keeps large CPU tensors in glibc's heap (deformdetr/_malloc.py), unless asked not to."""

import sys

import pytest

from deformdetr import _malloc, cli


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_glibc_takes_the_settings_and_the_opt_out_is_honoured(monkeypatch):
    assert _malloc.keep_large_allocations() is True  # mallopt accepted both values
    monkeypatch.setenv(_malloc.OPT_OUT_ENV, "default")
    assert _malloc.keep_large_allocations() is False


def test_every_cli_command_sets_it_up_before_running(monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(cli, "keep_large_allocations", lambda: calls.append(True))
    assert cli.main(["info"]) == 0
    assert calls == [True]
