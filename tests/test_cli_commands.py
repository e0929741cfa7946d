"""The command line of issue 17: --fail-on-critical counts open criticals only, the worklist (`findings`),
`runs`, `rules` with sources and parameters, one exit code for a missing database, `serve` with the
site options of `run`, and a CLI that imports nothing heavy before a command needs it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import duckdb
import pytest
import typer
from typer.testing import CliRunner

from flows.cli import app
from pipeline.night import NightRequest, run_night
from pipeline.warehouse import record_review
from tests.builders import ivig_order
from tests.conftest import REPO, SAMPLE
from tests.nightly_cohort import write_rows

runner = CliRunner()
SAMPLE_INPUTS = {"orders": [SAMPLE / "orders"], "labs": [SAMPLE / "labs.csv"], "procedures": [SAMPLE / "procedures.csv"]}


def _rows(db: Path, query: str, params: list | None = None) -> list[tuple]:
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute(query, params or []).fetchall()


def _one_line_error(result) -> str:
    err = result.stderr.strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    return err


@pytest.fixture(scope="module")
def sample_db(tmp_path_factory) -> Path:
    """The shipped sample audited into a new database (in this process, no Prefect)."""
    db = tmp_path_factory.mktemp("cli") / "audit.duckdb"
    run_night(NightRequest(db=db, inputs=SAMPLE_INPUTS))
    return db


# ---------------------------------------------------------------------------------------------
# 1. run --fail-on-critical: open, unreviewed criticals only, and it names them
# ---------------------------------------------------------------------------------------------

@pytest.fixture()
def flow_in_process(monkeypatch):
    """`ivig-audit run` with the Prefect flow replaced by the same night run in this process."""
    import flows.audit

    def flow(orders, labs, procedures, db, rules, profile, products, report_dir, cost_per_gram, force, shards,
             mapping, lock_timeout_seconds):
        inputs = {name: [Path(p) for p in paths] for name, paths in
                  (("orders", orders), ("labs", labs), ("procedures", procedures)) if paths}
        return run_night(NightRequest(db=Path(db), inputs=inputs, force=force, cost_per_gram=cost_per_gram))

    monkeypatch.setattr(flows.audit, "audit_flow", flow)


def test_fail_on_critical_counts_only_open_unreviewed_criticals_and_names_them(flow_in_process, tmp_path: Path):
    db = tmp_path / "audit.duckdb"
    args = ["--db", str(db), "--report-dir", str(tmp_path / "reports"), "--fail-on-critical"]
    first = runner.invoke(app, ["run", "--orders", str(SAMPLE / "orders"), "--labs", str(SAMPLE / "labs.csv"), *args])
    criticals = _rows(db, "SELECT finding_id, rule_id FROM v_open_findings WHERE severity = 'critical'")
    assert criticals and first.exit_code == 1, first.output
    assert f"{len(criticals)} open critical finding(s) not yet reviewed" in first.stdout
    assert all(finding_id in first.stdout and rule_id in first.stdout for finding_id, rule_id in criticals)

    for finding_id, _ in criticals:
        record_review(db, finding_id, "actioned", "A. Pharmacist")
    no_ivig = write_rows(tmp_path / "night2" / "orders.csv", "orders", [
        ivig_order("PARA-1", "P-NEW", medication="Paracetamol 500 mg tablets", dose="1", dose_unit="g", route="PO"),
    ])
    second = runner.invoke(app, ["run", "--orders", str(no_ivig), *args])
    assert second.exit_code == 0, second.output
    assert "audited 0 IVIG order rows" in second.stdout and "open critical" not in second.stdout

    reopened = criticals[0][0]
    assert runner.invoke(app, ["review", reopened, "--status", "open", "--by", "A. Pharmacist", "--db", str(db)]).exit_code == 0
    third = runner.invoke(app, ["run", "--orders", str(no_ivig), *args])  # nothing new, one critical open again
    assert third.exit_code == 1 and "nothing new to audit" in third.stdout
    assert "1 open critical finding(s) not yet reviewed" in third.stdout and reopened in third.stdout
    assert criticals[1][0] not in third.stdout


def test_without_fail_on_critical_open_criticals_exit_0(flow_in_process, tmp_path: Path):
    result = runner.invoke(app, ["run", "--orders", str(SAMPLE / "orders"), "--db", str(tmp_path / "a.duckdb")])
    assert result.exit_code == 0 and "open critical" not in result.stdout


# ---------------------------------------------------------------------------------------------
# 8. findings: action, expected, observed; --status, --limit, --json; case-insensitive; info of given courses
# ---------------------------------------------------------------------------------------------

def _findings_json(db: Path, *args: str) -> dict:
    result = runner.invoke(app, ["findings", "--db", str(db), "--json", *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_findings_show_action_expected_and_observed(sample_db: Path):
    result = runner.invoke(app, ["findings", "--db", str(sample_db), "--severity", "critical", "--limit", "1"])
    assert result.exit_code == 0, result.output
    shown = [line.split("id: ", 1)[1].split()[0] for line in result.stdout.splitlines() if line.startswith("           id: ")]
    assert len(shown) == 1
    severity, rule_id, expected, observed, action = _rows(
        sample_db, "SELECT severity, rule_id, expected, observed, action FROM v_open_findings WHERE finding_id = ?", shown)[0]
    assert severity == "critical" and expected and observed and action
    assert f"rule: {rule_id}" in result.stdout
    assert f"expected: {expected}" in result.stdout
    assert f"observed: {observed}" in result.stdout
    assert f"action:   {action}" in result.stdout


def test_findings_limit_says_how_many_more(sample_db: Path):
    result = runner.invoke(app, ["findings", "--db", str(sample_db), "--limit", "2", "--include-info"])
    total = _rows(sample_db, "SELECT COUNT(*) FROM v_open_findings")[0][0]
    assert result.stdout.count("           id: ") == 2
    assert f"{total} open findings, 2 shown; {total - 2} more: --limit 0 shows all" in result.stdout
    everything = runner.invoke(app, ["findings", "--db", str(sample_db), "--limit", "0", "--include-info"])
    assert everything.stdout.count("           id: ") == total and "more:" not in everything.stdout


def test_findings_hide_info_of_courses_already_given_unless_asked(sample_db: Path):
    now = datetime.now()
    given_info = _rows(sample_db, 'SELECT COUNT(*) FROM v_open_findings AS v JOIN courses AS c USING (course_id) '
                                  'WHERE v.severity = \'info\' AND c."end" < ?', [now])[0][0]
    total = _rows(sample_db, "SELECT COUNT(*) FROM v_open_findings")[0][0]
    assert given_info > 0
    text = runner.invoke(app, ["findings", "--db", str(sample_db), "--limit", "0"])
    assert text.stdout.count("           id: ") == total - given_info
    assert f"{total - given_info} open findings; {given_info} info findings of courses already given hidden: " \
           "--include-info shows them" in text.stdout
    shown = runner.invoke(app, ["findings", "--db", str(sample_db), "--limit", "0", "--include-info"])
    assert shown.stdout.count("           id: ") == total and "hidden" not in shown.stdout
    assert _findings_json(sample_db)["total"] == total  # scripts get every finding the filters select


def test_findings_filters_are_case_insensitive(sample_db: Path):
    lower = _findings_json(sample_db, "--severity", "critical", "--category", "indication", "--service", "neurology")
    upper = _findings_json(sample_db, "--severity", "CRITICAL", "--category", "Indication", "--service", "NEUROLOGY")
    expected = _rows(sample_db, "SELECT COUNT(*) FROM v_open_findings WHERE severity = 'critical' "
                                "AND category = 'indication' AND service = 'Neurology'")[0][0]
    assert expected > 0
    assert lower == upper and lower["total"] == expected
    assert {f["severity"] for f in upper["findings"]} == {"critical"}
    bad = runner.invoke(app, ["findings", "--db", str(sample_db), "--severity", "urgent"])
    assert bad.exit_code == 2 and "--severity must be one of critical, warning, info" in _one_line_error(bad)


def test_findings_json_holds_every_worklist_column(sample_db: Path):
    payload = _findings_json(sample_db, "--limit", "3")
    assert payload["shown"] == 3 and payload["more"] == payload["total"] - 3
    view_columns = [r[0] for r in _rows(sample_db, "DESCRIBE v_open_findings")]
    assert all(list(f) == view_columns for f in payload["findings"])


def test_findings_status_lists_reviewed_findings(sample_db: Path, tmp_path: Path):
    db = tmp_path / "copy.duckdb"
    shutil.copy(sample_db, db)
    dismissed, acknowledged = (r[0] for r in _rows(db, "SELECT finding_id FROM v_open_findings WHERE severity <> 'info' LIMIT 2"))
    record_review(db, dismissed, "dismissed", "A. Pharmacist", reason_code="data_error")
    record_review(db, acknowledged, "acknowledged", "A. Pharmacist")
    listed = _findings_json(db, "--status", "Dismissed")
    assert [f["finding_id"] for f in listed["findings"]] == [dismissed] and listed["findings"][0]["status"] == "dismissed"
    assert dismissed not in {f["finding_id"] for f in _findings_json(db, "--include-info")["findings"]}
    every = {f["finding_id"]: f["status"] for f in _findings_json(db, "--status", "all", "--include-info")["findings"]}
    assert every[dismissed] == "dismissed" and every[acknowledged] == "acknowledged"
    assert len(every) == _rows(db, "SELECT COUNT(*) FROM findings WHERE resolved_run IS NULL")[0][0]
    text = runner.invoke(app, ["findings", "--db", str(db), "--status", "acknowledged"])
    assert f"id: {acknowledged}" in text.stdout and "status: acknowledged" in text.stdout


# ---------------------------------------------------------------------------------------------
# 9. runs, and rules with their sources and parameters
# ---------------------------------------------------------------------------------------------

def test_runs_lists_what_ran_when_what_it_read_and_its_status(sample_db: Path):
    run_id, status, report_status, rows_read = _rows(sample_db, "SELECT run_id, status, report_status, rows_read FROM runs")[0]
    result = runner.invoke(app, ["runs", "--db", str(sample_db)])
    assert result.exit_code == 0, result.output
    first = result.stdout.splitlines()[0]
    assert first.startswith(f"{run_id}  {status}") and f"report {report_status or '-'}" in first
    assert f"rows read {rows_read}" in result.stdout and "scope incremental" in result.stdout
    for path in sorted((SAMPLE / "orders").glob("*.csv")) + [SAMPLE / "labs.csv", SAMPLE / "procedures.csv"]:
        assert path.name in result.stdout
    payload = json.loads(runner.invoke(app, ["runs", "--db", str(sample_db), "--json"]).stdout)
    assert payload["total"] == 1 and payload["runs"][0]["run_id"] == run_id
    assert {i["extract"] for i in payload["runs"][0]["inputs"]} == {"orders", "labs", "procedures"}


def test_rules_text_shows_each_rules_source_and_parameters():
    from pipeline.config.rulepack import load_rule_pack

    result = runner.invoke(app, ["rules"])
    assert result.exit_code == 0
    pack = load_rule_pack()
    assert result.stdout.count("    source: ") == len(pack.rules)
    with_params = [r for r in pack.rules.values() if r.params]
    assert with_params
    for rule in pack.rules.values():
        assert f"    source: {rule.source}" in result.stdout
        for key, value in rule.params.items():
            assert f"{key}={json.dumps(value)}" in result.stdout


# ---------------------------------------------------------------------------------------------
# 10. one exit code for a missing database, on every command that takes --db
# ---------------------------------------------------------------------------------------------

#: The other arguments each command that reads the database needs (run and serve create it).
READERS = {
    "findings": [],
    "review": ["crs-x.indication.missing", "--status", "actioned", "--by", "A. Pharmacist"],
    "export": ["--to", "{tmp}/export"],
    "report": ["--out", "{tmp}/reports"],
    "measure": ["--from", "2026-01-01", "--to", "2026-03-31", "--out", "{tmp}/m.json"],
    "replay": ["20261128T021500Z-3f2a1c", "--profile", "ibw"],
    "diff": ["20261128T021500Z-3f2a1c", "scn-20261128T091500Z-4b1e0a"],
    "scenarios": [],
    "runs": [],
}
WRITERS = {"run", "serve"}


def test_every_command_with_a_db_option_is_covered():
    group = typer.main.get_command(app)
    with_db = {name for name, command in group.commands.items() if any(p.name == "db" for p in command.params)}
    assert with_db == set(READERS) | WRITERS


@pytest.mark.parametrize("command", sorted(READERS))
def test_a_missing_database_is_exit_2_and_one_line_everywhere(command: str, tmp_path: Path):
    missing = tmp_path / "none.duckdb"
    args = [a.replace("{tmp}", str(tmp_path)) for a in READERS[command]]
    result = runner.invoke(app, [command, *args, "--db", str(missing)])
    assert result.exit_code == 2, (command, result.output)
    assert f"database not found: {missing}" in _one_line_error(result)
    assert not missing.exists()


def test_operations_doc_gives_the_missing_database_its_exit_code():
    text = (REPO / "docs" / "operations.md").read_text(encoding="utf-8")
    row = next(line for line in text.splitlines() if line.startswith("| 2 |"))
    assert "missing database" in row


# ---------------------------------------------------------------------------------------------
# 11. serve takes the site options of run (one definition of each)
# ---------------------------------------------------------------------------------------------

SITE_OPTIONS = ("rules", "profile", "products", "mapping", "cost_per_gram")


def test_serve_and_run_share_the_site_options():
    from typing import get_type_hints

    from flows.cli_run import run, serve

    hints = [get_type_hints(command, include_extras=True) for command in (run, serve)]
    group = typer.main.get_command(app)
    params = [{p.name: p for p in group.commands[name].params} for name in ("run", "serve")]
    for option in SITE_OPTIONS:
        assert hints[0][option].__metadata__[0] is hints[1][option].__metadata__[0], option  # one definition
        assert (params[0][option].opts, params[0][option].help, params[0][option].default) == (
            params[1][option].opts, params[1][option].help, params[1][option].default), option


def test_serve_passes_the_site_options_to_the_nightly_flow(monkeypatch, tmp_path: Path):
    import flows.audit

    served = {}

    class Flow:
        def serve(self, **kwargs):
            served.update(kwargs)

    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:4200/api")
    monkeypatch.setattr(flows.audit, "audit_flow", Flow())
    result = runner.invoke(app, ["serve", "--db", str(tmp_path / "a.duckdb"), "--profile", "ibw",
                                 "--products", str(REPO / "pipeline" / "data" / "products.toml"),
                                 "--mapping", "epic_clarity", "--cost-per-gram", "65.5"])
    assert result.exit_code == 0, result.output
    parameters = served["parameters"]
    assert parameters["profile"] == "ibw" and parameters["mapping"] == "epic_clarity"
    assert parameters["cost_per_gram"] == 65.5 and parameters["rules"] is None
    assert parameters["products"] == str((REPO / "pipeline" / "data" / "products.toml").resolve())


@pytest.mark.parametrize(("args", "needle"), [
    (["--profile", "nope"], "unknown profile"),
    (["--rules", "missing.toml"], "rule pack file not found"),
    (["--mapping", "no_such_mapping"], "mapping"),
])
def test_serve_checks_the_site_options_before_serving(monkeypatch, args, needle):
    import flows.audit

    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:4200/api")
    monkeypatch.setattr(flows.audit, "audit_flow", None)  # never reached
    result = runner.invoke(app, ["serve", *args])
    assert result.exit_code == 2 and needle in _one_line_error(result)


# ---------------------------------------------------------------------------------------------
# 12. nothing heavy imported before a command needs it; `make run` shows its first install
# ---------------------------------------------------------------------------------------------

HEAVY = ("prefect", "polars", "duckdb", "pandera", "altair")  # (typer itself imports pydantic)


def _modules_after(code: str) -> list[str]:
    """The heavy modules loaded after running `code` in a new interpreter (printed on stderr, after its output)."""
    probe = f"import sys\n{code}\nprint('loaded:', *(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr)"
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120, check=True)
    return out.stderr.strip().splitlines()[-1].split()[1:]


def test_importing_the_cli_and_its_help_import_nothing_heavy():
    assert _modules_after("import flows.cli") == []
    assert _modules_after(
        "from flows.cli import app\ntry:\n    app(['--help'])\nexcept SystemExit:\n    pass\n"
        "try:\n    app(['findings', '--help'])\nexcept SystemExit:\n    pass"
    ) == []


def test_dose_imports_neither_prefect_nor_the_report():
    loaded = _modules_after(
        "from flows.cli import app\ntry:\n    app(['dose', '--indication', 'GBS', '--weight', '70'])\nexcept SystemExit:\n    pass"
    )
    assert "polars" in loaded  # the calculation ran
    assert "prefect" not in loaded and "altair" not in loaded


def test_make_runs_first_install_shows_progress():
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    install = [line for line in makefile.splitlines() if "pip install" in line and "-e '.[test]'" in line]
    assert install and all("--quiet" not in line for line in install)


def test_review_imports_neither_prefect_nor_the_report(sample_db: Path, tmp_path: Path):
    db = tmp_path / "copy.duckdb"
    shutil.copy(sample_db, db)
    finding = _rows(db, "SELECT finding_id FROM v_open_findings LIMIT 1")[0][0]
    loaded = _modules_after(
        "from flows.cli import app\ntry:\n"
        f"    app(['review', {finding!r}, '--status', 'acknowledged', '--by', 'A. Pharmacist', '--db', {str(db)!r}])\n"
        "except SystemExit:\n    pass"
    )
    assert "duckdb" in loaded and "prefect" not in loaded and "altair" not in loaded
    assert _rows(db, "SELECT status FROM findings WHERE finding_id = ?", [finding]) == [("acknowledged",)]
