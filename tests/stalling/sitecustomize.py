"""Loaded by a `note-gateway serve` child started with this folder on its PYTHONPATH (serve(stalling=True)).

A message whose Subject holds "[stall STAGE]" never gets past that stage of the pipeline: the
stage sleeps for an hour, as a stage that does not end at the message's deadline would run (a CPU
bomb no check foresaw). tests/test_serve_signals.py stops such a gateway with SIGTERM.

"[stall STAGE N]" runs the stage, then sleeps N seconds in it: a stage that did its work (the post
stage filed the note) and overran the deadline by N seconds, after which the pipeline ends
(tests/test_observed_outcomes.py: the listener answers it at its last-resort timer meanwhile).
"""

import dataclasses
import logging
import re
import time

from gateway import pipeline

_MARK = re.compile(r"\[stall ([a-z-]+)(?: (\d+))?\]")


def _stalling(stage: pipeline.Stage) -> pipeline.Stage:
    def run(ctx, services, deadline):
        match = _MARK.search(ctx.message.subject if ctx.message else "")
        if match and match.group(1) == stage.name:
            logging.getLogger("gateway.tests").warning("stalling in %s: %s", stage.name, ctx.message.message_id)
            if match.group(2) is None:
                time.sleep(3600)
            else:
                try:
                    return stage.run(ctx, services, deadline)
                finally:
                    time.sleep(int(match.group(2)))
        stage.run(ctx, services, deadline)

    return dataclasses.replace(stage, run=run)


pipeline.STAGES = tuple(_stalling(stage) for stage in pipeline.STAGES)
