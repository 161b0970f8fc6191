"""Appends one scored run to the label-efficiency results (run.sh).

    append_result.py EVAL_DIR RESULTS_CSV LOAD

EVAL_DIR is one `evaluate` output of one GAN run: its label_efficiency.csv
holds one row, named after the run. The row goes to RESULTS_CSV with three
more columns: the date it was scored, the 1-minute load when its training
started and the judge's accuracy on the test images, so rows from stopped
and resumed benchmarks keep their own conditions. The header is written
with the first row and must match on later ones.
"""
import csv
import datetime
import json
import os
import sys


def main(eval_dir, results, load):
    with open(os.path.join(eval_dir, "label_efficiency.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    if len(rows) != 1:
        sys.exit(f"append_result: {eval_dir} scores {len(rows)} runs, expected one")
    with open(os.path.join(eval_dir, "scores.json")) as f:
        scores = json.load(f)
    row = rows[0]
    row["date"] = datetime.date.today().isoformat()
    row["load"] = load
    row["judge_accuracy"] = scores["classifier_accuracy"]["accuracy"]
    fields = list(row)
    exists = os.path.exists(results) and os.path.getsize(results) > 0
    if exists:
        with open(results, newline="") as f:
            header = next(csv.reader(f))
        if header != fields:
            sys.exit(f"append_result: {results} has columns {header}, this run {fields}")
    with open(results, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        if not exists:
            w.writeheader()
        w.writerow(row)


if __name__ == "__main__":
    main(*sys.argv[1:])
