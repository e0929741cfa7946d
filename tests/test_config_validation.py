"""Configuration as strict models (issue 14): the rule pack and a site's overrides, the product dictionary
and mapping profiles. An unknown key, a wrong type or an out-of-range value stops the run before anything
is written, with one line naming the file, the dotted key and the nearest known key; every default lives
in the shipped TOML, which the same model validates."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli import app
from pipeline.config import rulepack
from pipeline.ingest.mappings import load_mapping, shipped_mappings
from pipeline.config.products import ProductDictionaryError, load_products
from pipeline.config.rulepack import RulePackError, load_rule_pack
from tests.conftest import SAMPLE

SHIPPED_PACK = Path(rulepack.__file__).parents[1] / "data" / "rulepack.toml"


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _one_line(exc: BaseException) -> str:
    message = str(exc)
    assert message and "\n" not in message, message
    return message


# ------------------------------------------------------------------------------------ rule pack
@pytest.mark.parametrize(
    ("override", "expected"),
    [
        # a typo in a key: it was silently ignored (the site thought its course gap was 10 days)
        ("[settings]\ncourse_gap_dayz = 10\n", "unknown key settings.course_gap_dayz (did you mean course_gap_days?)"),
        # a misspelled rule id
        ('[rules."course_dose.above_targt"]\nseverity = "critical"\n',
         'unknown rule rules."course_dose.above_targt" (did you mean course_dose.above_target?)'),
        # a string where a number belongs
        ('[settings]\ncourse_gap_days = "10"\n', "settings.course_gap_days: input should be a valid integer (got '10')"),
        ("[settings]\ncourse_gap_days = 7.5\n", "settings.course_gap_days: input should be a valid integer"),
        # out of range
        ("[settings]\ndose_tolerance = 1.5\n", "settings.dose_tolerance: input should be less than 1 (got 1.5)"),
        ("[settings]\ncourse_gap_days = 0\n", "settings.course_gap_days: input should be greater than or equal to 1"),
        ("[profiles.ontario]\nbmi_threshold = 300\n", "profiles.ontario.bmi_threshold: input should be less than 100"),
        ('[rules."course_dose.below_target"]\nseverity = "urgent"\n',
         "rules.\"course_dose.below_target\".severity: input should be 'critical', 'warning' or 'info'"),
        # a rule parameter: unknown, or of another type than the shipped one
        ('[rules."combination.ivig_with_plasma_exchange".params]\nwindow_dayz = 10\n',
         'params.window_dayz (did you mean window_days?)'),
        ('[rules."combination.ivig_with_plasma_exchange".params]\nwindow_days = "14"\n',
         "params.window_days: must be a number (as in the shipped pack), not '14'"),
        ('[rules."indication.missing".params]\nenabled = "no"\n', "params.enabled: must be true or false"),
        # a new indication group is allowed, but checked whole
        ('[groups.sjogren]\nlabel = "Sjogren"\ncodez = ["M35.0"]\nsynonyms = ["sjogren"]\n',
         "unknown key groups.sjogren.codez (did you mean codes?)"),
        ('[groups.gbs]\nsynonyms = ["(unclosed"]\n', "groups.gbs.synonyms.0: not a valid regular expression"),
        ('[settings]\nsite_timezone = "Europe/Londn"\n', "settings.site_timezone: not an IANA time-zone name"),
        ('[settings]\ndefault_profile = "ontaria"\n', "unknown profile 'ontaria' (did you mean ontario?)"),
        ('[regimens.gbs]\ngroup = "gbz"\n', "regimens.gbs.group: unknown indication group 'gbz' (did you mean gbs?)"),
        ("[regimens.itp]\ntarget_g_per_kg = [2.0, 1.0]\n", "the first value must not exceed the second"),
    ],
)
def test_a_bad_site_override_is_one_line_naming_file_key_and_nearest_key(tmp_path: Path, override: str, expected: str):
    path = _write(tmp_path, "site_rules.toml", override)
    with pytest.raises(RulePackError) as caught:
        load_rule_pack(path)
    message = _one_line(caught.value)
    assert message.startswith(f"rule pack {path}: "), message
    assert expected in message, message


def test_good_overrides_still_apply(tmp_path: Path):
    path = _write(tmp_path, "site.toml", (
        '[settings]\ncourse_gap_days = 10\nsite_timezone = "Europe/London"\n'
        '[rules."course_dose.below_target"]\nseverity = "warning"\n'
        '[rules."indication.missing".params]\nenabled = false\n'
        '[groups.sjogren]\nlabel = "Sjogren syndrome"\ncodes = ["M35.0"]\nsynonyms = ["sj[oö]gren"]\n'
    ))
    pack = load_rule_pack(path, "ontario")
    assert pack.settings["course_gap_days"] == 10 and pack.settings["site_timezone"] == "Europe/London"
    assert pack.rule("course_dose.below_target").severity == "warning"
    assert pack.rule("indication.missing").params == {"enabled": False}  # the documented switch
    assert pack.groups["sjogren"]["codes"] == ["M35.0"] and pack.profile_name == "ontario"
    assert pack.config_hash != load_rule_pack().config_hash


def test_the_shipped_pack_is_validated_by_the_same_model_and_holds_every_default(monkeypatch):
    """The model requires keys (no default invented in code): a shipped pack without one is refused."""
    raw = tomllib.loads(SHIPPED_PACK.read_text(encoding="utf-8"))
    rulepack.RulePackModel.model_validate(raw)
    for table, key in (("settings", "course_gap_days"), ("settings", "site_timezone"),
                       ("settings", "date_failure_share"), ("pack", "rules_effective_from")):
        broken = SHIPPED_PACK.read_text(encoding="utf-8")
        broken = "\n".join(line for line in broken.splitlines() if not line.startswith(f"{key} ="))
        monkeypatch.setattr(rulepack, "default_pack_text", lambda text=broken: text)
        rulepack._shipped_model.cache_clear()
        with pytest.raises(RulePackError) as caught:
            load_rule_pack()
        assert f"shipped rule pack pipeline/data/rulepack.toml: missing key {table}.{key}" in str(caught.value)
    rulepack._shipped_model.cache_clear()


def test_rules_and_run_both_refuse_a_bad_pack_with_exit_2_before_anything_is_written(tmp_path: Path):
    path = _write(tmp_path, "site.toml", "[settings]\ncourse_gap_dayz = 10\n")
    db = tmp_path / "audit.duckdb"
    for args in (["rules", "--rules", str(path)],
                 ["run", "--orders", str(SAMPLE / "orders"), "--rules", str(path), "--db", str(db)]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2, result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "did you mean course_gap_days?" in lines[0], result.stderr
    assert not db.exists()


def test_a_folder_given_as_rule_pack_or_product_dictionary_is_one_line(tmp_path: Path):
    """`--rules DIR` and `--products DIR` were tracebacks (IsADirectoryError)."""
    for option, text in (("--rules", "is a folder, not a TOML file"), ("--products", "is a folder, not a TOML file")):
        result = CliRunner().invoke(app, ["run", "--orders", str(SAMPLE / "orders"), option, str(tmp_path),
                                          "--db", str(tmp_path / "a.duckdb")])
        assert result.exit_code == 2, result.output
        assert "Traceback" not in result.output and text in result.stderr.strip(), result.stderr


# ------------------------------------------------------------------------------------ product dictionary
def _products(tmp_path: Path, product: str, head: str = 'version = "site-1"\nlooks_like_immunoglobulin = "ivig"\n') -> Path:
    return _write(tmp_path, "products.toml", head + "\n[[product]]\n" + product)


@pytest.mark.parametrize(
    ("product", "expected"),
    [
        ('name = "X"\npattern = "x"\nscope = "ivig"\nconcentraton_g_per_ml = 0.1\n',
         "unknown key product.0.concentraton_g_per_ml (did you mean concentration_g_per_ml?)"),
        ('name = "X"\npattern = "x"\nscope = "ivig"\nconcentration_g_per_ml = "10%"\n',
         "product.0.concentration_g_per_ml: input should be a valid number (got '10%')"),
        ('name = "X"\npattern = "x"\nscope = "ivig"\nconcentration_g_per_ml = 10\n',
         "product.0.concentration_g_per_ml: input should be less than or equal to 1 (got 10)"),
        ('name = "X"\npattern = "x"\nscope = "IVIG"\n', "product.0.scope: input should be 'ivig', 'subcutaneous' or 'other_ig'"),
        ('name = "X"\npattern = "(x"\nscope = "ivig"\n', "product.0.pattern: not a valid regular expression"),
        ('name = "X"\nscope = "ivig"\n', "missing key product.0.pattern"),
        ('name = "X"\npattern = "x"\nscope = "ivig"\ncontains_sucrose = "no"\n', "product.0.contains_sucrose: input should be a valid boolean"),
    ],
)
def test_a_bad_product_dictionary_is_one_line(tmp_path: Path, product: str, expected: str):
    path = _products(tmp_path, product)
    with pytest.raises(ProductDictionaryError) as caught:
        load_products(path)
    message = _one_line(caught.value)
    assert message.startswith(f"product dictionary {path}: ") and expected in message, message


def test_product_defaults_are_data_and_a_site_file_without_them_takes_the_shipped_ones(tmp_path: Path):
    shipped = load_products()
    assert all(p["route"] and "contains_sucrose" in p for p in shipped.products)
    site = load_products(_products(tmp_path, 'name = "Site IVIG"\npattern = "siteivig"\nscope = "ivig"\n'))
    assert site.products == [
        {"contains_sucrose": False, "iga_depleted": False, "route": "IV", "vial_sizes_g": [], "ndc_prefixes": [],
         "name": "Site IVIG", "pattern": "siteivig", "scope": "ivig"}
    ]
    own = load_products(_products(tmp_path, 'name = "S"\npattern = "s"\nscope = "ivig"\n',
                                  'version = "2"\nlooks_like_immunoglobulin = "ivig"\n[product_defaults]\n'
                                  'contains_sucrose = false\niga_depleted = false\nroute = "IVI"\nvial_sizes_g = [5.0]\n'
                                  'ndc_prefixes = []\n'))
    assert own.products[0]["route"] == "IVI" and own.products[0]["vial_sizes_g"] == [5.0]


# ------------------------------------------------------------------------------------ mapping profiles
def test_every_shipped_profile_validates():
    for name in shipped_mappings():
        mapping = load_mapping(name)
        assert mapping.separator and mapping.encoding and mapping.frequencies["daily"]
