"""Paired comparisons over seeds (issue 18): the mean difference of two methods run with the same seeds, its
Student-t 95% confidence interval, and what it says about a paper claim that the first method is better.

    d_s = a_s - b_s for each seed s both ran;  mean = sum(d) / n;  se = stdev(d) / sqrt(n)
    CI = mean -/+ t_{0.975, n-1} * se

Label (the claim: ``a`` beats ``b``): the whole CI above zero is ``reproduced``, the whole CI below zero
``not reproduced`` (``a`` is worse), a CI that holds zero ``undecided``.
"""

from __future__ import annotations

import math
import statistics
from typing import Mapping, Sequence

REPRODUCED, NOT_REPRODUCED, UNDECIDED = "reproduced", "not reproduced", "undecided"


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """``(mean, low, high)``: the Student-t confidence interval of the mean of ``values`` (NaN bounds for
    fewer than two values)."""
    from scipy.stats import t

    n = len(values)
    if n == 0:
        raise ValueError("no values")
    mean = statistics.fmean(values)
    if n < 2:
        return mean, math.nan, math.nan
    half = t.ppf(0.5 + confidence / 2, n - 1) * statistics.stdev(values) / math.sqrt(n)
    return mean, mean - half, mean + half


def label(low: float, high: float) -> str:
    """The claim ``a > b`` from the CI of ``a - b``."""
    if math.isnan(low) or math.isnan(high):
        return UNDECIDED
    if low > 0:
        return REPRODUCED
    if high < 0:
        return NOT_REPRODUCED
    return UNDECIDED


def paired_difference(a: Mapping[int, float], b: Mapping[int, float], confidence: float = 0.95) -> dict:
    """``a - b`` paired by seed (the seeds both have): mean, std, the CI, the t statistic and the label."""
    seeds = sorted(set(a) & set(b))
    differences = [a[s] - b[s] for s in seeds]
    if not differences:
        return dict(seeds=[], n=0, mean=math.nan, std=math.nan, low=math.nan, high=math.nan, t=math.nan,
                    label=UNDECIDED)  # fmt: skip
    mean, low, high = mean_ci(differences, confidence)
    std = statistics.stdev(differences) if len(differences) > 1 else math.nan
    t_stat = mean / (std / math.sqrt(len(differences))) if std and not math.isnan(std) else math.nan
    return dict(seeds=seeds, n=len(seeds), mean=mean, std=std, low=low, high=high, t=t_stat, label=label(low, high))
