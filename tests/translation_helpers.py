"""Helpers of the translation tests: a tiny Marian from a config with a BPE vocabulary trained
in code, and OPUS-schema files for the paper-scale loader (no downloads)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from forgetbench.api import ModelBundle
from forgetbench_tasks.translation.base import make_example
from forgetbench_tasks.translation.gettext_mt import train_tokenizer

ENGLISH = [
    "open the file", "save the file", "close the window", "print the page", "delete the file",
    "copy the text", "open the window", "save the page", "cannot open the file",
    "the file is empty", "the window is closed", "print the text",
]  # fmt: skip
TRANSLATIONS = {
    "de": [
        "die Datei öffnen", "die Datei speichern", "das Fenster schließen", "die Seite drucken",
        "die Datei löschen", "den Text kopieren", "das Fenster öffnen", "die Seite speichern",
        "die Datei kann nicht geöffnet werden", "die Datei ist leer", "das Fenster ist zu",
        "den Text drucken",
    ],
    "fr": [
        "ouvrir le fichier", "enregistrer le fichier", "fermer la fenêtre", "imprimer la page",
        "supprimer le fichier", "copier le texte", "ouvrir la fenêtre", "enregistrer la page",
        "impossible d'ouvrir le fichier", "le fichier est vide", "la fenêtre est fermée",
        "imprimer le texte",
    ],
    "es": [
        "abrir el archivo", "guardar el archivo", "cerrar la ventana", "imprimir la página",
        "borrar el archivo", "copiar el texto", "abrir la ventana", "guardar la página",
        "no se puede abrir el archivo", "el archivo está vacío", "la ventana está cerrada",
        "imprimir el texto",
    ],
}  # fmt: skip
LANGUAGES = ["de", "fr", "es"]


def examples(lang: str) -> list[dict]:
    return [
        make_example(s, t, "en", lang, "test")
        for s, t in zip(ENGLISH, TRANSLATIONS[lang], strict=True)
    ]


def tiny_bundle(seed: int = 0) -> ModelBundle:
    """A 2-layer Marian of width 32 and a vocabulary trained on the sentences above."""
    from transformers import MarianConfig, MarianMTModel

    texts = ENGLISH + [t for lang in LANGUAGES for t in TRANSLATIONS[lang]]
    tokenizer = train_tokenizer(texts, 200, LANGUAGES)
    torch.manual_seed(seed)
    config = MarianConfig(
        vocab_size=len(tokenizer), d_model=32, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
        decoder_ffn_dim=64, max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, forced_eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id, scale_embedding=True, dropout=0.0,
    )  # fmt: skip
    return ModelBundle(MarianMTModel(config), tokenizer, extras={"lang_style": "tag"})


def fit(bundle: ModelBundle, chosen: list[dict], steps: int) -> None:
    """Teach the tiny model ``chosen`` (full batches, Adam), so that it gets some right."""
    from forgetbench_tasks.translation import GettextMTTask

    task = GettextMTTask(GettextMTTask.Config(max_source_tokens=64, max_target_tokens=64))
    inputs = task.collate(bundle, chosen)
    optimizer = torch.optim.Adam(bundle.model.parameters(), lr=1e-2)
    bundle.model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        task.forward(bundle.model, inputs).loss.mean().backward()
        optimizer.step()
    bundle.model.eval()


def save_tiny_marian(directory: Path, steps: int = 40) -> Path:
    """A tiny Marian that learned the prior pairs (en->de, en->fr) a little, and its
    tokenizer, saved with ``save_pretrained`` (a local checkpoint)."""
    bundle = tiny_bundle()
    fit(bundle, examples("de") + examples("fr"), steps)
    bundle.model.save_pretrained(directory)
    bundle.processor.save_pretrained(directory)
    return directory


def write_opus(directory: Path, pairs: list[str], repeat: int = 3) -> Path:
    """``<config>-{train,test}.jsonl`` in OPUS-100's schema for every pair."""
    directory.mkdir(parents=True, exist_ok=True)
    for pair in pairs:
        lang = pair.split("-")[1]
        config = "-".join(sorted(pair.split("-")))
        rows = [
            {"translation": {"en": s, lang: t}}
            for s, t in zip(ENGLISH, TRANSLATIONS[lang], strict=True)
        ]
        for split, chosen in (("train", rows * repeat), ("test", rows[:6])):
            with open(directory / f"{config}-{split}.jsonl", "w") as handle:
                for row in chosen:
                    handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    return directory
