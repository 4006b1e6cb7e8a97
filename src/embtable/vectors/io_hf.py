"""The input-embedding table of a Hugging Face model, read without ``transformers``.

A model folder holds the weights (``model.safetensors``, read with the
``safetensors`` package, or ``pytorch_model.bin``, read with
``torch.load(weights_only=True)``) and a vocabulary (``vocab.txt``, one token per
line, id = line number; or ``tokenizer.json``, ``model.vocab`` plus
``added_tokens``).  The table is found by its usual names (BERT's
``embeddings.word_embeddings.weight``, LLaMA/OPT's ``embed_tokens.weight``, GPT-2's
``wte.weight``, T5's ``shared.weight`` ...) unless ``tensor_name`` is given.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["EMBEDDING_NAMES", "read_hf", "read_hf_vocab", "find_embedding_name"]

EMBEDDING_NAMES = (
    "embeddings.word_embeddings.weight",
    "embed_tokens.weight",
    "wte.weight",
    "word_embeddings.weight",
    "tok_embeddings.weight",
    "embed_in.weight",
    "shared.weight",
)

_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_VOCAB_FILES = ("vocab.txt", "tokenizer.json")


def find_embedding_name(names: list[str], path: str) -> str:
    """The tensor name ending with one of :data:`EMBEDDING_NAMES` (the shortest one)."""
    for suffix in EMBEDDING_NAMES:
        hits = sorted((n for n in names if n == suffix or n.endswith("." + suffix)), key=len)
        if hits:
            return hits[0]
    sample = ", ".join(sorted(names)[:8])
    raise KeyError(
        f"Vectors.load_hf: no input-embedding tensor in {path} (looked for names ending with "
        f"{', '.join(EMBEDDING_NAMES)}; the file has {sample}, ...); pass tensor_name="
    )


def _read_weights(file: Path, tensor_name: str | None) -> Tensor:
    if file.suffix == ".safetensors":
        try:
            from safetensors import safe_open
        except ImportError:
            raise ImportError(
                "Vectors.load_hf: reading model.safetensors needs the safetensors package; "
                "pip install safetensors"
            ) from None
        try:
            with safe_open(str(file), framework="pt") as f:
                names = list(f.keys())
                name = tensor_name or find_embedding_name(names, str(file))
                if name not in names:
                    raise KeyError(f"Vectors.load_hf: no tensor {name!r} in {file}")
                return f.get_tensor(name)
        except KeyError:
            raise
        except Exception as error:  # safetensors' own errors (SafetensorError, OSError, ...)
            raise ValueError(
                f"Vectors.load_hf: {file} is not a readable safetensors file "
                f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})"
            ) from None
    try:  # zip checkpoints (torch >= 1.6) are memory-mapped; legacy ones are read whole
        with warnings.catch_warnings():  # (torch warns about odd pickles it then refuses)
            warnings.simplefilter("ignore", UserWarning)
            try:
                state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:
                state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:  # unpickling, zip, EOF, recursion: all mean a bad checkpoint
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise ValueError(
            f"Vectors.load_hf: {file} is not a readable PyTorch checkpoint (expected a "
            f"state dict of tensors; {type(error).__name__}: {first[:200]})"
        ) from None
    if not isinstance(state, dict):
        raise ValueError(f"Vectors.load_hf: {file} holds a {type(state).__name__}, expected a state dict")
    name = tensor_name or find_embedding_name([k for k in state if isinstance(k, str)], str(file))
    if name not in state:
        raise KeyError(f"Vectors.load_hf: no tensor {name!r} in {file}")
    if not isinstance(state[name], Tensor):
        raise ValueError(f"Vectors.load_hf: {name!r} in {file} is a {type(state[name]).__name__}, not a tensor")
    return state[name]


def read_hf_vocab(file: Path) -> list[str]:
    """Tokens by id from ``vocab.txt`` or ``tokenizer.json``.

    Raises:
        ValueError: a file that is not UTF-8 (or not JSON), a repeated token, ids that are
            not non-negative integers, repeated ids or ids with gaps; the message names the
            file.
    """
    where = f"Vectors.load_hf: {file}"
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"{where} is not UTF-8 ({error.reason} at byte {error.start})") from None
    if file.name.endswith(".txt"):
        tokens = text.split("\n")
        if tokens and tokens[-1] == "":
            tokens.pop()
        tokens = [t.rstrip("\r") for t in tokens]
        _check_distinct(tokens, where, lambda i: f"line {i + 1}")
        return tokens
    try:
        spec = json.loads(text)
    except (ValueError, RecursionError) as error:
        raise ValueError(f"{where} is not valid JSON ({str(error)[:200]})") from None
    model = spec.get("model") if isinstance(spec, dict) else None
    vocab = model.get("vocab") if isinstance(model, dict) else None
    by_id: dict[int, str] = {}
    if isinstance(vocab, list):  # Unigram: [[token, score], ...]
        for i, entry in enumerate(vocab):
            if not isinstance(entry, list) or not entry or not isinstance(entry[0], str):
                raise ValueError(f"{where}: model.vocab[{i}] must be [token, score], got {entry!r:.80}")
            by_id[i] = entry[0]
    elif isinstance(vocab, dict):  # WordPiece / BPE: {token: id}
        for token, i in vocab.items():
            _add_id(by_id, i, token, where, "model.vocab")
    else:
        raise ValueError(f"{where} has no model.vocab")
    added_tokens = spec.get("added_tokens", [])
    if not isinstance(added_tokens, list):
        raise ValueError(f"{where}: added_tokens must be a list")
    for added in added_tokens:
        if not isinstance(added, dict) or not isinstance(added.get("content"), str):
            raise ValueError(f"{where}: an added token must be {{'id': ..., 'content': ...}}, got {added!r:.80}")
        i = added.get("id")
        if by_id.get(i) == added["content"]:
            continue  # the usual case: an added token that is also in model.vocab
        _add_id(by_id, i, added["content"], where, "added_tokens")
    size = max(by_id) + 1 if by_id else 0
    if size != len(by_id):  # (without walking every id up to a huge one)
        present = sorted(by_id)
        missing = [i for i, j in zip(range(size), present) if i != j][:1] or [len(present)]
        raise ValueError(
            f"{where}: ids run up to {size - 1} but only {len(by_id)} are defined (no token "
            f"for id {missing[0]}, ...); ids must be 0 .. n - 1 without gaps"
        )
    tokens = [by_id[i] for i in range(size)]
    _check_distinct(tokens, where, lambda i: f"id {i}")
    return tokens


def _add_id(by_id: dict[int, str], i: object, token: object, where: str, part: str) -> None:
    if not isinstance(i, int) or isinstance(i, bool) or i < 0:
        raise ValueError(f"{where}: {part}: token {token!r:.80} has id {i!r:.40}; ids are integers >= 0")
    if not isinstance(token, str):
        raise ValueError(f"{where}: {part}: id {i} has token {token!r:.80}, not a string")
    if i in by_id:
        raise ValueError(f"{where}: {part}: id {i} is given to both {by_id[i]!r:.80} and {token!r:.80}")
    by_id[i] = token


def _check_distinct(tokens: list[str], where: str, position) -> None:
    if len(set(tokens)) == len(tokens):
        return
    first: dict[str, int] = {}
    for i, token in enumerate(tokens):
        if token in first:
            raise ValueError(
                f"{where}: token {token!r:.80} appears twice ({position(first[token])} and "
                f"{position(i)}); a vocabulary maps each token to one row"
            )
        first[token] = i


def read_hf(path: str | os.PathLike, tensor_name: str | None = None) -> tuple[list[str], Tensor]:
    """Tokens and input-embedding table of a model folder (or of a weights file in one).

    Rows beyond the vocabulary (tables padded to a multiple of 64, say) are dropped.

    Raises:
        FileNotFoundError: no weights file or no vocabulary next to it.
        KeyError: no embedding tensor found (pass ``tensor_name``).
        ValueError: the vocabulary has more tokens than the table has rows.
    """
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    if path.is_dir():
        weights = next((folder / f for f in _WEIGHT_FILES if (folder / f).is_file()), None)
    else:
        weights = path if path.is_file() else None
    if weights is None:
        raise FileNotFoundError(
            f"Vectors.load_hf: no {' or '.join(_WEIGHT_FILES)} at {os.fspath(path)}"
        )
    vocab_file = next((folder / f for f in _VOCAB_FILES if (folder / f).is_file()), None)
    if vocab_file is None:
        raise FileNotFoundError(
            f"Vectors.load_hf: no {' or '.join(_VOCAB_FILES)} in {os.fspath(folder)}"
        )
    table = _read_weights(weights, tensor_name)
    if table.dim() != 2:
        raise ValueError(
            f"Vectors.load_hf: tensor in {weights} has shape {tuple(table.shape)}, expected 2-D"
        )
    tokens = read_hf_vocab(vocab_file)
    if len(tokens) > table.shape[0]:
        raise ValueError(
            f"Vectors.load_hf: {vocab_file} has {len(tokens)} tokens but the table in "
            f"{weights} has only {table.shape[0]} rows"
        )
    return tokens, table[: len(tokens)]
