"""Edit-instruction paraphrases used for cartoonization training.

``CARTOONIZATION_PARAPHRASES`` is the exact list of 50 instructions published with the
instruction-tuned-sd work that built the ``instruction-tuning-sd/cartoonization`` Hub set
(each row of that set carries one of them, drawn at random, as its ``edit_prompt``).

Source: GitHub repository huggingface/instruction-tuned-sd (Sayak Paul's instruction-tuned-sd work),
file ``data_preparation/instructions.txt`` (commit 8b3185e3ab08e0250b957b170288aab3914301f0), read
line by line and stripped exactly as that repository's ``generate_dataset.py`` / ``export_to_hub.py``
do. Its ``data_preparation/README.md`` says the list was generated with ChatGPT, asked for at least
50 synonymous sentences for the instruction "Cartoonize the following image.". The repository is
Apache-2.0 licensed (Copyright 2023- The HuggingFace Inc. team and The InstructPix2Pix Authors).
"""

from __future__ import annotations

__all__ = ["CARTOONIZATION_PARAPHRASES", "load_prompts"]

CARTOONIZATION_PARAPHRASES: tuple[str, ...] = (
    'Transform the natural image into a cartoon.',
    'Create a cartoon-style image from the natural image.',
    'Apply a cartoon filter to the natural image.',
    'Turn the natural image into a cartoon-style drawing.',
    'Give the natural image a cartoon effect.',
    'Convert the natural image to a cartoon-like illustration.',
    'Make the natural image look like a cartoon.',
    'Render the natural image in a cartoon style.',
    'Generate a cartoonized version of the natural image.',
    'Apply a cartoon-like effect to the natural image.',
    'Produce a cartoon version of the natural image.',
    'Turn the natural image into a cartoon-style picture.',
    'Use a cartoon filter to create a cartoon-like effect on the natural image.',
    'Transform the natural image into a cartoonish version.',
    'Apply a cartoon effect to the natural image to create a cartoonized version.',
    'Give the natural image a cartoonish look.',
    'Use a cartoon conversion software to turn the natural image into a cartoon.',
    'Use a cartoon-making app to cartoonize the natural image.',
    'Use a digital drawing software to create a cartoon version of the natural image.',
    'Edit the natural image to make it look like a cartoon.',
    'Apply a cartooning effect to the natural image.',
    'Create a cartoon-style illustration from the natural image.',
    'Turn the natural image into a cartoonish drawing.',
    'Use a cartoon filter to give the natural image a cartoon-like appearance.',
    'Use a software to convert the natural image to a cartoon.',
    'Change the natural image to a cartoon-style image.',
    'Use a graphic design software to create a cartoonized version of the natural image.',
    'Use a cartoonizing tool to transform the natural image into a cartoon.',
    'Alter the natural image to give it a cartoonish effect.',
    'Give the natural image a comic book-style look.',
    'Cartoonify the natural image.',
    'Use an image editing tool to turn the natural image into a cartoon.',
    'Use a digital art program to create a cartoonized version of the natural image.',
    'Create a cartoon-style graphic from the natural image.',
    'Give the natural image a hand-drawn, cartoon-like appearance.',
    'Transform the natural image into a sketch-like cartoon.',
    'Change the natural image to a hand-drawn cartoon.',
    'Edit the natural image to give it a toon-like effect.',
    'Use an art software to create a cartoonized version of the natural image.',
    'Apply a cartoon-like filter to the natural image to give it a toon-like appearance.',
    'Apply a filter to the natural image to create a comic book-style effect.',
    'Use a cartoonization program to create a cartoon version of the natural image.',
    'Give the natural image a graphic novel-style look.',
    'Transform the natural image into a caricature.',
    'Use a photo editing software to create a cartoonized version of the natural image.',
    'Turn the natural image into a cartoon character.',
    'Use a cartoon effect to create a cartoon-style illustration of the natural image.',
    'Give the natural image a hand-drawn, animated look.',
    'Use a tool to create a cartoonized version of the natural image.',
    'Change the natural image to a cartoon-like graphic.',
)


def load_prompts(path) -> list[str]:
    """Read one prompt per line from a text file (blank lines skipped); a list with no prompt is an error."""
    with open(path, encoding="utf-8") as f:
        prompts = [line.strip() for line in f if line.strip()]
    if not prompts:
        raise ValueError(f"no prompts in {path}: expected one instruction per line")
    return prompts
