"""An Axolotl plugin that reports training steps to our progress bar (Axolotl's own output goes to a log file).

The loop adds `diverse_axolotl.axolotl_plugin.ProgressPlugin` to the round's `plugins`; Axolotl loads it through
its regular plugin mechanism and asks it for trainer callbacks.
"""

from __future__ import annotations

from axolotl.integrations.base import BasePlugin
from transformers import TrainerCallback

from .progress import progress_bar

#: Text shown in front of the bar; the loop sets it before each round ("round 2: training").
DESCRIPTION = {"text": "training"}


class StepProgress(TrainerCallback):
    """One bar per training run: optimizer steps done / max steps, with rate and ETA."""

    def __init__(self):
        self._bar = None
        self._advance = None

    def on_train_begin(self, args, state, control, **kwargs):
        self._bar = progress_bar(DESCRIPTION["text"], total=int(state.max_steps or 0), unit="steps")
        self._advance = self._bar.__enter__()

    def on_step_end(self, args, state, control, **kwargs):
        if self._advance is not None:
            self._advance(1)

    def on_train_end(self, args, state, control, **kwargs):
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
            self._bar = self._advance = None


class ProgressPlugin(BasePlugin):
    def add_callbacks_post_trainer(self, cfg, trainer):
        return [StepProgress()]
