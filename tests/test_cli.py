"""The CLI in-process: exit codes and output."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO

SCENARIOS = sorted(str(p) for p in (REPO / "scenarios").glob("*.yaml"))
INVALID = REPO / "tests" / "scenarios" / "invalid"


def test_validate_all_examples(cli):
    result = cli("validate", *SCENARIOS)
    assert result.code == 0, result.err
    assert len(result.out.splitlines()) == len(SCENARIOS) and result.err == ""


def test_validate_mixed_reports_bad_and_exits_1(cli):
    result = cli("validate", SCENARIOS[0], str(INVALID / "bad-codec.yaml"))
    assert result.code == 1
    assert result.out.startswith(f"{SCENARIOS[0]}: ok")
    assert result.err.startswith(f"{INVALID / 'bad-codec.yaml'}:2:35: media.codec:")


def test_validate_notes_a_publish_rate_the_runner_decimates(cli, tmp_path):
    fast = tmp_path / "fast.yaml"
    fast.write_text(f"extends: {REPO / 'scenarios' / 'smoke.yaml'}\nmedia: {{fps: 30}}\n")
    result = cli("validate", str(fast))
    assert result.code == 0, result.err
    assert result.out.splitlines()[1] == (
        f"{fast}: note: media.fps 30 is above the 24 frames a second ai-runner takes (by timestamp): the rest are "
        "dropped unevenly and the output's jitter shows it (30 fps: a coefficient near 0.35)")
    assert len(cli("validate", SCENARIOS[0]).out.splitlines()) == 1   # the examples publish 20 fps: no note


def test_usage_errors_exit_2(cli):
    assert cli("validate").code == 2
    assert cli("nonsense").code == 2
    assert cli("plan", SCENARIOS[0], "--capacity", "3", "--capacity-file", "x.json").code == 2
    result = cli("plan", str(REPO / "scenarios" / "livepeer.yaml"))
    assert result.code == 2
    assert result.err.strip() == ("livepeer-gateway reads capacity from the gateway at run time; "
                                  "give --capacity N or --capacity-file F to plan offline")


def test_plan_json_is_deterministic_and_complete(cli):
    nightly = str(REPO / "scenarios" / "nightly.yaml")
    first = cli("plan", nightly, "--seed", "1", "--json")
    second = cli("plan", nightly, "--seed", "1", "--json")
    other = cli("plan", nightly, "--seed", "2", "--json")
    assert first.code == 0 and first.out == second.out and first.out != other.out
    # the same in other processes, whatever their string hashing (sets and dicts iterate by it)
    for hash_seed in ("1", "2"):
        elsewhere = subprocess.run([sys.executable, "-m", "fleet", "plan", nightly, "--seed", "1", "--json"], cwd=REPO,
                                   capture_output=True, text=True, timeout=60,
                                   env={**os.environ, "PYTHONHASHSEED": hash_seed})
        assert elsewhere.returncode == 0 and elsewhere.stdout == first.out, (hash_seed, elsewhere.stderr[-2000:])
    plan = json.loads(first.out)
    assert plan["scenario"] == "nightly" and plan["seed"] == 1 and plan["budget"] == 4
    assert plan["capacity"] == {"model": "streamdiffusion", "source": "gateway", "total_slots": 16,
                                "idle_slots": 16, "orchestrators": 4}
    s0 = plan["sessions"][0]
    assert set(s0) == {"index", "start_s", "duration_s", "region", "orchestrator", "orchestrator_uri", "seed",
                       "prompts"}
    assert s0["prompts"][0]["at_s"] == 0


def test_plan_table_and_capacity_options(cli, tmp_path):
    smoke = str(REPO / "scenarios" / "smoke.yaml")
    table = cli("plan", smoke)
    assert table.code == 0
    assert "smoke" in table.out and "campaign cap 4 concurrent streams" in table.out
    assert "6 sessions, peak 3 concurrent, 0 skipped" in table.out
    static = cli("plan", smoke, "--capacity", "4", "--json")
    assert json.loads(static.out)["budget"] == 1  # floor(0.25 * 4), reserve 2 leaves 2
    caps = tmp_path / "caps.json"
    caps.write_text(json.dumps({"models": [{"model": "streamdiffusion", "gpu_slots": 40, "active_streams": 0}]}))
    assert json.loads(cli("plan", smoke, "--capacity-file", str(caps), "--json").out)["budget"] == 10
    missing = cli("plan", smoke, "--capacity-file", str(tmp_path / "none.json"))
    assert (missing.code, missing.err.strip()) == (1, f"{tmp_path / 'none.json'}: file not found")


def test_plan_of_an_invalid_scenario_is_one_line_not_a_traceback(cli):
    result = cli("plan", str(INVALID / "bad-shape.yaml"))
    assert result.code == 1 and len(result.err.splitlines()) == 1  # in-process: an exception would fail the test


def test_schema(cli):
    result = cli("schema")
    assert result.code == 0
    assert json.loads(result.out)["title"] == "fleet scenario"


def test_prompts_list_and_show(cli):
    listed = cli("prompts", "list")
    assert listed.code == 0 and "bootstrap" in listed.out and "stress" in listed.out
    shown = cli("prompts", "show", "bootstrap", "--category", "portraits")
    assert shown.code == 0 and "portrait-oil" in shown.out and "land-alps" not in shown.out
    assert "64 prompts" in shown.out
    stress = cli("prompts", "show", "stress")
    assert stress.code == 0 and "(empty)" in stress.out and "\x00" not in stress.out
    missing = cli("prompts", "show", "bootstrp")
    assert missing.code == 2 and "did you mean 'bootstrap'?" in missing.err


def test_console_script_is_installed():
    import subprocess
    import sys
    from pathlib import Path
    exe = Path(sys.executable).parent / "fleet"
    assert exe.is_file(), "pip install puts the fleet script beside the interpreter"
    out = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.startswith("fleet ")


def test_run_with_an_unset_token_variable_is_one_line_naming_it(cli, tmp_path, monkeypatch):
    monkeypatch.delenv("FLEET_TEST_TOKEN_UNSET", raising=False)
    scenario = tmp_path / "tok.yaml"
    scenario.write_text(f"extends: {REPO / 'tests/campaigns/tiny.yaml'}\nname: tok\n"
                        "target: {token_env: FLEET_TEST_TOKEN_UNSET}\n")
    out = cli("run", str(scenario), "--no-progress")
    assert out.code == 1
    assert out.err.strip().splitlines() == [f"{scenario}: target.token_env names FLEET_TEST_TOKEN_UNSET, "
                                            "which is not set in the environment"]


HEAVY = ("aiortc", "av", "ray", "matplotlib", "pyarrow", "duckdb")
HELP_ALSO = ("asyncio", "importlib.metadata", "pydantic", "yaml")  # --help needs none of them either


@pytest.mark.parametrize("argv", [["--help"], ["validate", "scenarios/smoke.yaml"],
                                  ["plan", "scenarios/smoke.yaml", "--capacity", "8"]])
def test_the_light_commands_import_no_media_ray_or_plotting_library(argv):
    """`fleet --help`, `validate` and `plan` start at once: none of them imports the heavy libraries."""
    heavy = HEAVY + (HELP_ALSO if argv == ["--help"] else ())
    code = ("import sys\nfrom fleet.cli import main\n"
            f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
            f"print(sorted(m for m in {heavy!r} if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_version_is_the_installed_packages(cli):
    from importlib.metadata import version

    out = cli("--version")
    assert out.code == 0 and out.out.strip() == f"fleet {version('fleet')}"


def test_every_help_text_is_plain_text(capsys):
    """The subcommands' descriptions are their modules' docstrings (reStructuredText): --help shows no markup."""
    from fleet.cli import build_parser

    parser = build_parser()
    commands = [[name] for name in parser._subparsers._group_actions[0].choices]
    commands += [["results", "push"], ["prompts", "list"], ["prompts", "show"], ["gateway", "serve"]]
    for argv in commands:
        with pytest.raises(SystemExit):
            build_parser().parse_args([*argv, "--help"])
        text = capsys.readouterr().out
        assert text.startswith("usage: fleet") and "`" not in text, (argv, text)


@pytest.mark.parametrize("command", ["run", "monitor"])
def test_a_url_option_that_is_no_http_url_is_a_usage_error(cli, command):
    out = cli(command, "scenarios/smoke.yaml", "--capacity-url", "127.0.0.1:5935")
    assert out.code == 2 and out.err.splitlines()[-1] == (
        "fleet: error: argument --capacity-url: '127.0.0.1:5935' is not an http(s) URL (allowed: "
        "http://HOST[:PORT], https://...)")


def test_a_monitor_of_a_scenario_without_a_monitor_section_is_invalid_input(cli):
    """README: ``fleet monitor`` exits 1 on invalid input, "or no ``monitor:`` section"; nothing starts."""
    out = cli("monitor", "scenarios/smoke.yaml", "--for", "10s")
    assert out.code == 1 and out.err.splitlines() == [
        "scenarios/smoke.yaml: no monitor: section; fleet monitor needs one, e.g. "
        "monitor: {every_min: 60, daily_budget: 0.05, session_s: 30}"], out.err
    assert out.out == ""
