"""Loaded by a `note-gateway serve` child started with this folder on its PYTHONPATH (serve(stalling=True)).

A message whose Subject holds "[stall STAGE]" never gets past that stage of the pipeline: the
stage sleeps for an hour, as a stage that does not end at the message's deadline would run (a CPU
bomb no check foresaw). tests/test_serve_signals.py stops such a gateway with SIGTERM.
"""

import dataclasses
import logging
import re
import time

from gateway import pipeline

_MARK = re.compile(r"\[stall ([a-z-]+)\]")


def _stalling(stage: pipeline.Stage) -> pipeline.Stage:
    def run(ctx, services, deadline):
        match = _MARK.search(ctx.message.subject if ctx.message else "")
        if match and match.group(1) == stage.name:
            logging.getLogger("gateway.tests").warning("stalling in %s: %s", stage.name, ctx.message.message_id)
            time.sleep(3600)
        stage.run(ctx, services, deadline)

    return dataclasses.replace(stage, run=run)


pipeline.STAGES = tuple(_stalling(stage) for stage in pipeline.STAGES)
