"""Mean and spread over seeds of the label-efficiency runs (run.sh).

Reads evaluate's label_efficiency.csv (one row per GAN run, named
ROW-seedN) and prints a Markdown table with one line per route: the mean
and the sample standard deviation over its seeds of every figure, and the
minimum and maximum class consistency, so a reader can see which
differences the spread supports.
"""
import csv
import re
import statistics
import sys


def spread(values, digits):
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def number(text):
    return float(text) if text not in ("", None) else None


def main(path):
    routes = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            route = re.sub(r"-seed\d+$", "", row["name"])
            routes.setdefault(route, []).append(row)
    print("| route | mode | labels | seeds | FID | KID x 1000 | precision | recall "
          "| class consistency | (min, max) | cluster purity | train time |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for route, rows in routes.items():
        col = lambda name: [number(r[name]) for r in rows]
        kid = [v * 1000 if v is not None else None for v in col("kid_mean")]
        consistency = [v for v in col("class_consistency") if v is not None]
        extremes = (f"({min(consistency):.3f}, {max(consistency):.3f})"
                    if consistency else "-")
        fraction = number(rows[0]["label_fraction"])
        labels = f"{100 * fraction:.1f}%" if fraction is not None else "0%"
        minutes = [v / 60 if v is not None else None for v in col("train_seconds")]
        print(f"| {route} | {rows[0]['mode']} | {labels} | {len(rows)} "
              f"| {spread(col('fid_mean'), 1)} | {spread(kid, 1)} "
              f"| {spread(col('precision_mean'), 3)} | {spread(col('recall_mean'), 3)} "
              f"| {spread(consistency, 3)} | {extremes} "
              f"| {spread(col('cluster_purity'), 3)} | {spread(minutes, 1)} min |")


if __name__ == "__main__":
    main(sys.argv[1])
