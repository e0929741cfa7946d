"""Our Polars justification reader against medspaCy's ConText on the labelled set: accuracy, speed.

Two engines, each run in the environment that has it (medspaCy is not a dependency of the project):

    .venv/bin/python bench/justification_context.py --engine polars
    /work/scratch-medspacy/.venv/bin/python bench/justification_context.py --engine medspacy
    /work/scratch-medspacy/.venv/bin/python bench/justification_context.py --engine medspacy-pack-cues

Both read the labelled phrases of tests/data/justification_labelled.csv and judge "documented
response" (the text affirms an objective response: not negated, not uncertain). The medspaCy engine
uses its default pipeline (PyRuSH sentences, target matcher, ConText with its default English
rules) with the response phrases of our rule pack as target rules, plus targets for a scale with a
measured change ("INCAT 5 -> 3"): ConText reads negation and uncertainty around a target but cannot
tell which way a number moved. `medspacy-pack-cues` adds our negation, negative-outcome and
uncertainty cues as ConText rules and our fluctuation and refractory phrases as targets. Prints the
figures as JSON; bench/README.md records them.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LABELLED = ROOT / "tests" / "data" / "justification_labelled.csv"
PACK = ROOT / "pipeline" / "data" / "rulepack.toml"


def labelled() -> list[dict[str, str]]:
    with LABELLED.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def figures(rows: list[dict[str, str]], found: dict[str, bool]) -> dict[str, object]:
    truth = {r["text"]: r["response"] == "1" for r in rows}
    tp = sum(found[t] and truth[t] for t in truth)
    fp = sorted(t for t in truth if found[t] and not truth[t])
    fn = sorted(t for t in truth if truth[t] and not found[t])
    return {
        "phrases": len(rows),
        "precision": round(tp / (tp + len(fp)), 3) if tp + len(fp) else 1.0,
        "recall": round(tp / (tp + len(fn)), 3) if tp + len(fn) else 1.0,
        "accuracy": round(sum(found[t] == truth[t] for t in truth) / len(truth), 3),
        "false_positives": fp,
        "false_negatives": fn,
    }


def run_polars(texts: list[str], repeat: int) -> tuple[dict[str, bool], dict[str, float]]:
    import polars as pl

    started = time.perf_counter()
    from pipeline.domain.justification import with_readings
    from pipeline.config.rulepack import load_rule_pack
    from pipeline.rules.engine import documents

    pack = load_rule_pack()
    ready = time.perf_counter() - started
    courses = pl.LazyFrame(
        {"course_id": [str(i) for i in range(len(texts))], "justification": texts,
         "justification_code": [None] * len(texts), "indication_text": [None] * len(texts)},
        schema={"course_id": pl.String, "justification": pl.String, "justification_code": pl.String, "indication_text": pl.String},
    )
    query = with_readings(courses, pack.justification).select("justification", documented=documents(pack.justification, ["response"]))
    timings = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = query.collect()
        timings.append(time.perf_counter() - t0)
    return dict(zip(result["justification"], result["documented"])), {"load_s": round(ready, 3), "texts_per_run": len(texts), "best_run_s": round(min(timings), 4)}


def run_medspacy(texts: list[str], repeat: int, with_pack_cues: bool) -> tuple[dict[str, bool], dict[str, float]]:
    started = time.perf_counter()
    from loguru import logger

    logger.remove()  # PyRuSH logs every token at DEBUG: not part of the work measured
    import medspacy
    from medspacy.context import ConTextRule
    from medspacy.target_matcher import TargetRule

    nlp = medspacy.load()
    ready = time.perf_counter() - started
    vocabulary = tomllib.loads(PACK.read_text(encoding="utf-8"))["justification"]
    phrases = list(vocabulary["kinds"]["response"]["phrases"])
    scales = vocabulary["measures"]["lower_is_better"] + vocabulary["measures"]["higher_is_better"]
    phrases.append(r"\b(?:" + "|".join(scales) + r")\b[^0-9;]{0,25}?\d+(?:\.\d+)?\s*(?:->|>|to)\s*\d+")
    targets = [TargetRule(literal=f"response {i}", category="RESPONSE", pattern="(?i)" + p) for i, p in enumerate(phrases)]
    if with_pack_cues:
        # The other kinds claim their words too (as in our reader), and our cues join ConText's.
        for kind in ("fluctuation", "refractory"):
            targets += [TargetRule(literal=f"{kind} {i}", category=kind.upper(), pattern="(?i)" + p) for i, p in enumerate(vocabulary["kinds"][kind]["phrases"])]
        context = nlp.get_pipe("medspacy_context")
        cues = [("NEGATED_EXISTENCE", "FORWARD", vocabulary["negation_cues"]), ("NEGATED_EXISTENCE", "BACKWARD", vocabulary["negative_outcome_cues"]),
                ("POSSIBLE_EXISTENCE", "BIDIRECTIONAL", vocabulary["uncertainty_cues"])]
        context.add([ConTextRule(literal=f"{category} {direction} {i}", category=category, direction=direction, pattern="(?i)" + p)
                     for category, direction, patterns in cues for i, p in enumerate(patterns)])
    nlp.get_pipe("medspacy_target_matcher").add(targets)

    def documented(doc) -> bool:
        return any(
            ent.label_ == "RESPONSE" and not (ent._.is_negated or ent._.is_uncertain or ent._.is_hypothetical)
            for ent in doc.ents
        )

    timings = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        found = {text: documented(doc) for text, doc in zip(texts, nlp.pipe(texts))}
        timings.append(time.perf_counter() - t0)
    return found, {"load_s": round(ready, 3), "texts_per_run": len(texts), "best_run_s": round(min(timings), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=("polars", "medspacy", "medspacy-pack-cues"), required=True)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    rows = labelled()
    texts = [r["text"] for r in rows]
    if args.engine == "polars":
        found, speed = run_polars(texts, args.repeat)
    else:
        found, speed = run_medspacy(texts, args.repeat, args.engine == "medspacy-pack-cues")
    report = {"engine": args.engine, **speed, "all": figures(rows, found),
              "holdout": figures([r for r in rows if r["split"] == "holdout"], found)}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
