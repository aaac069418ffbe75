"""Train / validation / test splits of the classification scripts (issue 18).

A data source gives two splits: its training examples and its held-out ones (a Hub dataset's validation split,
Fashion-MNIST's t10k, BBC News's 1-in-5 holdout). By default the held-out split is what the scripts evaluate on,
as before. For model selection without looking at the test examples:

- ``--test_size N`` pools both splits and holds out a fixed, class-stratified ``N`` of them as the test split
  (for sets whose own held-out split is too small: BBC News has 2,225 articles, 445 of them held out);
- ``--validation_from_train N`` carves a fixed, class-stratified ``N`` out of the training examples; they are
  never trained on (whatever ``--eval_split``, so selection and final runs train on the same examples);
- ``--eval_split validation`` evaluates on that carved split (lr selection), ``--eval_split test`` on the test
  split (the reported numbers). ``--max_train_samples`` subsets the training examples left after the carving,
  ``--max_eval_samples`` the test split.

Carved splits depend on :data:`SPLIT_SEED` only, never on ``--seed``: every run and method sees the same
validation and test examples.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

SPLIT_SEED = 0
EVAL_SPLITS = ("test", "validation")


def add_split_arguments(parser) -> None:
    """``--test_size``, ``--validation_from_train`` and ``--eval_split`` (see the module docstring)."""
    g = parser.add_argument_group("splits")
    g.add_argument(
        "--test_size",
        type=int,
        default=None,
        help="Pool the training and held-out examples and hold out a fixed class-stratified N as the test split.",
    )
    g.add_argument(
        "--validation_from_train",
        type=int,
        default=None,
        help="Carve a fixed class-stratified N out of the training examples as a validation split (not trained on).",
    )
    g.add_argument(
        "--eval_split",
        choices=EVAL_SPLITS,
        default="test",
        help="Evaluate on the test split (the data set's held-out split, or --test_size's) or on the "
        "--validation_from_train split (model selection).",
    )


def _length(split: dict) -> int:
    return len(next(v for k, v in split.items() if k != "classes"))


def select(split: dict, indices: Sequence[int]) -> dict:
    """The examples ``indices`` of ``split`` (lists and arrays alike; ``classes`` kept as is)."""
    indices = np.asarray(indices, dtype=np.int64)
    return {
        k: (v if k == "classes" else [v[i] for i in indices] if isinstance(v, list) else v[indices])
        for k, v in split.items()
    }


def concatenate(a: dict, b: dict) -> dict:
    """``a``'s examples followed by ``b``'s (the same columns)."""
    if set(a) != set(b):
        raise ValueError(f"splits have different columns: {sorted(a)} vs {sorted(b)}")

    def join(k):
        if k == "classes":
            return a[k]
        return list(a[k]) + list(b[k]) if isinstance(a[k], list) else np.concatenate([a[k], b[k]])

    return {k: join(k) for k in a}


def stratified_subset(labels: Sequence[int], n: int, seed: int = SPLIT_SEED) -> np.ndarray:
    """Sorted indices of ``n`` examples drawn at random (``seed``) within each label, in proportion to the
    labels' counts (largest remainders get the rounding; ties by label order)."""
    labels = np.asarray(labels)
    if not 0 < n < len(labels):
        raise ValueError(f"cannot hold out {n} of {len(labels)} examples (need 0 < n < {len(labels)})")
    classes, counts = np.unique(labels, return_counts=True)
    exact = n * counts / len(labels)
    quota = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - quota), kind="stable")[: n - quota.sum()]:
        quota[i] += 1
    rng = np.random.default_rng(seed)
    chosen = [rng.permutation(np.flatnonzero(labels == c))[:q] for c, q in zip(classes, quota)]
    return np.sort(np.concatenate(chosen))


def holdout(split: dict, n: int, seed: int = SPLIT_SEED) -> tuple[dict, dict]:
    """``(rest, held_out)``: a stratified ``n`` of ``split`` held out, the others kept (original order)."""
    held = stratified_subset(split["label"], n, seed)
    rest = np.setdiff1d(np.arange(_length(split)), held)
    return select(split, rest), select(split, held)


def take(split: dict, limit: Optional[int], seed: int) -> dict:
    """At most ``limit`` examples, a fixed random subset (``seed``), in their original order."""
    n = _length(split)
    if limit is None or limit >= n:
        return split
    return select(split, np.sort(np.random.default_rng(seed).choice(n, size=limit, replace=False)))


def balanced_holdout_mask(n: int, labels: Sequence[int], every: int = 5) -> np.ndarray:
    """A balanced validation mask: every ``every``-th example of each label."""
    seen: dict[int, int] = {}
    mask = np.zeros(n, dtype=bool)
    for i, label in enumerate(labels):
        seen[label] = seen.get(label, 0) + 1
        mask[i] = seen[label] % every == 0
    return mask


def task_splits(train: dict, held_out: dict, args) -> tuple[dict, dict, dict]:
    """``(train, evaluation, sizes)`` from a source's two splits and the split flags (module docstring);
    ``sizes`` counts the examples of each split and names the evaluated one."""
    test_size = getattr(args, "test_size", None)
    n_validation = getattr(args, "validation_from_train", None)
    eval_split = getattr(args, "eval_split", "test")
    if test_size:
        train, test = holdout(concatenate(train, held_out), test_size)
    else:
        test = held_out
    validation = None
    if n_validation:
        train, validation = holdout(train, n_validation)
    elif eval_split == "validation":
        raise ValueError("--eval_split validation needs --validation_from_train N")
    train = take(train, args.max_train_samples, args.seed)
    test = take(test, args.max_eval_samples, SPLIT_SEED)
    evaluation = validation if eval_split == "validation" else test
    sizes = {
        "eval_split": eval_split,
        "train_samples": _length(train),
        "validation_samples": _length(validation) if validation is not None else 0,
        "test_samples": _length(test),
    }
    return train, evaluation, sizes
