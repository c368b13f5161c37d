"""The business the phone line works for: which job it runs, with which settings.

This is where the engine meets the jobs: the daemon and the commands ask here for the job a
configuration names, and for every job's tables (so one database can hold them all).
"""

from __future__ import annotations

from voicebridge.config import Config
from voicebridge.engine.job import Job
from voicebridge.jobs.pizza.job import SCHEMA as PIZZA_SCHEMA
from voicebridge.jobs.pizza.job import PizzaJob
from voicebridge.ops.staff_store import SCHEMA as STAFF_SCHEMA

# Every job's own migrations, by job name: a database holds the tables of all of them.
# "staff": the staff page's accounts, event log and menu's day (voicebridge.ops.staff_store).
SCHEMAS: dict[str, tuple[tuple[str, ...], ...]] = {"pizza": PIZZA_SCHEMA, "staff": STAFF_SCHEMA}


def build_job(config: Config) -> Job:
    """The job `config` names, loaded and validated (a bad menu raises MenuError with file and line)."""
    from voicebridge.jobs.pizza.menu import load_menu

    return PizzaJob(menu=load_menu(config.menu_path), tax_rate_bp=config.tax_rate_bp)
