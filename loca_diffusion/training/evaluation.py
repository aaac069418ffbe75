"""Evaluation of the task scripts' models: classification accuracy / macro-F1, a causal LM's loss and
perplexity, greedy generation and ROUGE-L."""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn


@torch.no_grad()
def evaluate_classification(accelerator, model: nn.Module, dataloader, num_labels: int) -> dict[str, float]:
    """Accuracy, macro-F1 and mean cross-entropy over the whole evaluation set (all processes)."""
    model.eval()
    predictions, references, losses = [], [], []
    for batch in dataloader:
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits.float()
        loss = nn.functional.cross_entropy(logits, batch["labels"], reduction="none")
        p, r, l_ = accelerator.gather_for_metrics((logits.argmax(-1), batch["labels"], loss))
        predictions.append(p.cpu())
        references.append(r.cpu())
        losses.append(l_.cpu())
    pred, ref = torch.cat(predictions), torch.cat(references)
    f1 = []
    for c in range(num_labels):
        tp = ((pred == c) & (ref == c)).sum().item()
        fp = ((pred == c) & (ref != c)).sum().item()
        fn = ((pred != c) & (ref == c)).sum().item()
        if tp + fp + fn:
            f1.append(2 * tp / (2 * tp + fp + fn))
    return {
        "eval_accuracy": (pred == ref).float().mean().item(),
        "eval_macro_f1": sum(f1) / max(len(f1), 1),
        "eval_loss": torch.cat(losses).mean().item(),
        "eval_samples": len(ref),
    }


@torch.no_grad()
def evaluate_loss(accelerator, model: nn.Module, dataloader) -> dict[str, float]:
    """Token-weighted mean loss of a causal LM over the evaluation set (labels of -100 ignored)."""
    model.eval()
    total, count = torch.zeros((), dtype=torch.float64), torch.zeros((), dtype=torch.float64)
    for batch in dataloader:
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits.float()
        labels = batch["labels"][:, 1:]
        loss = nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100, reduction="sum"
        )
        n = (labels != -100).sum()
        total += accelerator.reduce(loss.double().reshape(1), "sum").cpu()[0]
        count += accelerator.reduce(n.double().reshape(1), "sum").cpu()[0]
    mean = (total / count.clamp(min=1)).item()
    return {"eval_loss": mean, "eval_perplexity": math.exp(min(mean, 50.0)), "eval_tokens": int(count.item())}


@torch.no_grad()
def generate_responses(model: nn.Module, tokenizer, prompts: Sequence[list[int]], max_new_tokens: int) -> list[str]:
    """Greedy continuations of tokenised prompts, one at a time (no padding side to get wrong), decoded."""
    model.eval()
    outputs = []
    for ids in prompts:
        input_ids = torch.tensor([ids], device=next(model.parameters()).device)
        generated = model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        outputs.append(tokenizer.decode(generated[0, len(ids) :], skip_special_tokens=True).strip())
    return outputs


def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Mean ROUGE-L F1 (``rouge-score``, with stemming) of ``predictions`` against ``references``."""
    try:
        from rouge_score import rouge_scorer
    except ImportError as err:
        raise ImportError("ROUGE-L needs `rouge-score`: pip install rouge-score") from err
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    scores = [scorer.score(ref, pred)["rougeL"].fmeasure for pred, ref in zip(predictions, references)]
    return float(sum(scores) / max(len(scores), 1))
