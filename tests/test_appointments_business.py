"""The appointments business file, and choosing the job: one line naming each problem."""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

import pytest

from voicebridge.business import build_job, job_name
from voicebridge.cli import main as cli_main
from voicebridge.config import Config, ConfigError
from voicebridge.jobs.appointments.business import BusinessError, load_business, parse_business
from voicebridge.jobs.appointments.job import AppointmentsJob
from voicebridge.jobs.pizza.job import PizzaJob

GOOD = """\
job = "appointments"
name = "Corner Barber"
time_zone = "Europe/London"
slot_minutes = 30
closures = [2026-12-25]

[hours]
monday = "closed"
tuesday = ["09:00-12:00", "13:00-17:00"]
wednesday = "10:00-18:00"
thursday = "closed"
friday = "closed"
saturday = "closed"
sunday = "closed"

[services.cut]
name = "cut"
minutes = 45
"""


def error(text: str) -> str:
    with pytest.raises(BusinessError) as info:
        parse_business(text, "salon.toml")
    return str(info.value)


def test_the_packaged_salon_loads() -> None:
    b = load_business(None)
    assert (b.name, b.time_zone, b.slot_minutes, b.buffer_minutes) == ("Cut Above Hair Studio", "America/New_York", 15, 10)
    assert b.ranges_on(dt.date(2026, 12, 8)) == ((9 * 60, 12 * 60 + 30), (13 * 60 + 30, 18 * 60))
    assert b.ranges_on(dt.date(2026, 12, 25)) == ()  # a closure
    assert [s.key for s in b.services] == ["haircut", "cut-and-color", "beard-trim", "consultation"]
    assert b.service("consultation").price_cents is None


def test_a_small_file_gets_the_defaults() -> None:
    b = parse_business(GOOD, "salon.toml")
    assert (b.horizon_days, b.buffer_minutes, b.min_notice_minutes) == (60, 0, 60)
    assert b.hours[2] == ((600, 1080),) and b.closures == frozenset({dt.date(2026, 12, 25)})


@pytest.mark.parametrize("change, says", [
    (("name = ", "name = \n"), "salon.toml: line 2, column 8: TOML syntax error"),
    (('time_zone = "Europe/London"', 'time_zone = "Europe/Londres"'),
     "salon.toml: time_zone: 'Europe/Londres' is not a known time zone"),
    (('slot_minutes = 30', 'slot_minute = 30'), "salon.toml: slot_minute: unknown key; did you mean 'slot_minutes'?"),
    (('slot_minutes = 30', 'slot_minutes = 7'), "salon.toml: slot_minutes: 7 does not divide an hour"),
    (('job = "appointments"', 'job = "pizza"'), 'salon.toml: job: expected "appointments"'),
    (('"09:00-12:00", "13:00-17:00"', '"09:00-12:00", "11:00-17:00"'),
     'salon.toml: hours.tuesday[1]: "11:00-17:00" overlaps or comes before the range before it'),
    (('wednesday = "10:00-18:00"', 'wednesday = "18:00-10:00"'), 'hours.wednesday[0]: "18:00-10:00" closes before it opens'),
    (('wednesday = "10:00-18:00"', 'wednesday = "10am-6pm"'), 'hours.wednesday[0]: "10am-6pm" is not "HH:MM-HH:MM"'),
    (('thursday = "closed"\n', ''), "salon.toml: hours.thursday: missing"),
    (('closures = [2026-12-25]', 'closures = ["Christmas"]'), 'closures[0]: "Christmas" is not a date like 2026-12-25'),
    (('minutes = 45', 'minutes = 0'), "salon.toml: services.cut.minutes: expected whole minutes from 5 to 480"),
    (('minutes = 45', 'minutes = 45\nprice = 12'), 'services.cut.price: price 12 must be a quoted decimal string'),
    (('[services.cut]', '[services.Cut]'), "salon.toml: services.Cut: ids are lowercase"),
])
def test_a_bad_business_file_names_the_line_or_field(change: tuple[str, str], says: str) -> None:
    old, new = change
    assert old in GOOD
    assert says in error(GOOD.replace(old, new, 1))


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(BusinessError, match=r"nope\.toml: no such file"):
        load_business(tmp_path / "nope.toml")


# -- choosing the job ---------------------------------------------------------------------------


def write(tmp_path: Path, text: str, name: str = "business.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_the_job_is_chosen_by_setting_then_by_the_file_then_pizza(tmp_path: Path) -> None:
    salon = write(tmp_path, GOOD)
    assert isinstance(build_job(Config()), PizzaJob)
    assert isinstance(build_job(Config(job="appointments")), AppointmentsJob)  # the packaged salon
    job = build_job(Config(business_path=salon))
    assert isinstance(job, AppointmentsJob) and job.business_name == "Corner Barber"
    menu = write(tmp_path, 'job = "pizza"\n' + Path("voicebridge/jobs/pizza/default_menu.toml").read_text(), "menu.toml")
    assert isinstance(build_job(Config(business_path=menu)), PizzaJob)
    assert isinstance(build_job(Config(menu_path=menu)), PizzaJob)  # VOICEBRIDGE_MENU, the older name


def test_a_file_for_another_job_than_the_setting_is_an_error(tmp_path: Path) -> None:
    salon = write(tmp_path, GOOD)
    with pytest.raises(BusinessError, match=r"business.toml: job: the file is for 'appointments', but VOICEBRIDGE_JOB=pizza"):
        job_name(Config(job="pizza", business_path=salon))
    with pytest.raises(BusinessError, match=r"job: 'hotel' is not a job"):
        job_name(Config(business_path=write(tmp_path, 'job = "hotel"\n', "hotel.toml")))


def test_the_settings_are_read_from_the_environment() -> None:
    config = Config.from_env({"VOICEBRIDGE_JOB": "appointments", "VOICEBRIDGE_BUSINESS": "/etc/salon.toml"})
    assert (config.job, config.business_file) == ("appointments", Path("/etc/salon.toml"))
    with pytest.raises(ConfigError, match="VOICEBRIDGE_JOB"):
        Config.from_env({"VOICEBRIDGE_JOB": "hotel"})


def test_serve_with_a_bad_business_file_stops_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    bad = write(tmp_path, GOOD.replace('time_zone = "Europe/London"', 'time_zone = "Mars/Olympus"'))
    env = {"OPENAI_API_KEY": "sk-test", "PUBLIC_URL": "https://voice.example.com", "VOICEBRIDGE_ALLOW_UNSIGNED": "1",
           "VOICEBRIDGE_BUSINESS": str(bad), "VOICEBRIDGE_DB": str(tmp_path / "db.sqlite3")}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    try:
        assert cli_main(["serve"]) == 2
    finally:  # serve set up the process's logging: give the other tests theirs back
        for handler in [h for h in root.handlers if h not in handlers]:
            root.removeHandler(handler)
        root.setLevel(level)
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"voicebridge: {bad}: time_zone: 'Mars/Olympus' is not a known time zone "
                   '(an IANA name like "Europe/London")']
