"""Only our own errors and Axolotl's verdict on the config are one line; anything else keeps its traceback, with a
note naming the log that holds the stage's output."""

from __future__ import annotations

import pytest

from diverse_axolotl.errors import UserError
from diverse_axolotl.training import note_log_on_error


def test_a_fault_keeps_its_traceback_and_names_the_log(tmp_path):
    log = tmp_path / "round_1" / "axolotl.log"
    with pytest.raises(RuntimeError) as err:
        with note_log_on_error(log):
            raise RuntimeError("a bug")
    assert err.value.__notes__ == [f"Axolotl's output is in {log}"]
    assert err.value.__traceback__ is not None


def test_user_errors_and_ctrl_c_pass_unchanged(tmp_path):
    for exc in (UserError("bad recipe"), KeyboardInterrupt()):
        with pytest.raises(type(exc)) as err:
            with note_log_on_error(tmp_path / "x.log"):
                raise exc
        assert not getattr(err.value, "__notes__", None)


def test_only_axolotls_verdict_becomes_one_line(tmp_path, monkeypatch):
    """A ValueError from Axolotl's config loading is its verdict on the keys (UserError, one line per problem);
    any other exception from it is a fault and reaches the user with its traceback and the log's name."""
    from diverse_axolotl import training

    def load_cfg_raising(exc):
        def load_cfg(path):
            raise exc

        return lambda: (load_cfg, None, None)

    monkeypatch.setattr(training, "check_unknown_keys", lambda cfg: None)
    monkeypatch.setattr(training, "_import_axolotl", load_cfg_raising(ValueError("lora_r must be positive\nmore")))
    with pytest.raises(UserError, match="^Axolotl rejected the recipe's Axolotl keys: lora_r must be positive$"):
        training.validate_axolotl({"base_model": "m"}, tmp_path / "a.yaml")
    monkeypatch.setattr(
        training, "_import_axolotl", load_cfg_raising(AttributeError("'NoneType' has no attribute 'x'"))
    )
    with pytest.raises(AttributeError) as err:
        training.validate_axolotl({"base_model": "m"}, tmp_path / "b.yaml")
    assert err.value.__notes__ == [f"Axolotl's output is in {tmp_path / 'b.log'}"]
