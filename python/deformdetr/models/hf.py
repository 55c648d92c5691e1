"""Hugging Face transformers' Deformable DETR format (``DeformableDetrForObjectDetection``), both
ways: a folder written by ``save_pretrained`` (``config.json`` + ``model.safetensors`` or
``pytorch_model.bin``), or a hub id, read as a checkpoint of ours; and a model of ours written as
such a folder.

transformers names the same weights otherwise (``model.encoder.layers.0.fc1`` for
``transformer.encoder.layers.0.linear1``), splits the decoder's self-attention projection into
q/k/v, and stores one copy of weights it ties (heads shared across decoder layers). Its backbone is
timm's ResNet (the hub's SenseTime models; torchvision's names) or transformers' own ResNet
(``embedder``/``stages``). Both directions go through one table of names.

Reading needs only ``safetensors`` (and ``huggingface_hub`` for hub ids), not transformers.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Optional

import torch

from deformdetr.models import checkpoint as ckpt

__all__ = ["looks_like_hub_id", "read_hf", "write_hf", "settings_from_hf_config",
           "hf_config_of", "state_from_hf", "state_to_hf"]

CONFIG_NAME = "config.json"
SAFETENSORS_NAME = "model.safetensors"
SAFETENSORS_INDEX_NAME = "model.safetensors.index.json"
PICKLE_NAME = "pytorch_model.bin"
_INSTALL = "pip install 'deformdetr[interop]'"


# ---- The names: ours <-> transformers' (as save_pretrained writes them).


@dataclass(frozen=True)
class _Rename:
    """One family of keys, ``{name}`` standing for a number. ``shift`` says how much larger our
    number is than transformers' (ResNet stages and convolutions count from 1 in ours, 0 there)."""

    ours: str
    hf: str
    shift: tuple = ()

    def convert(self, key: str, to_hf: bool) -> Optional[str]:
        source, target = (self.ours, self.hf) if to_hf else (self.hf, self.ours)
        found = _template_regex(source).match(key)
        if not found:
            return None
        shifts = dict(self.shift)
        numbers = {k: int(v) + (-1 if to_hf else 1) * shifts.get(k, 0) for k, v in found.groupdict().items()}
        return target.format(**numbers) + key[found.end():]


def _template_regex(template: str) -> re.Pattern:
    pattern = re.escape(template)
    pattern = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>\\d+)", pattern)
    return re.compile(pattern)


def _layer_renames(ours: str, hf: str, parts: dict) -> list:
    return [_Rename(f"{ours}.{{n}}.{a}.", f"{hf}.{{n}}.{b}.") for a, b in parts.items()]


_ENCODER_LAYER = {"self_attn": "self_attn", "norm1": "self_attn_layer_norm", "linear1": "fc1",
                  "linear2": "fc2", "norm2": "final_layer_norm"}
_DECODER_LAYER = {"cross_attn": "encoder_attn", "norm1": "encoder_attn_layer_norm",
                  "self_attn": "self_attn", "norm2": "self_attn_layer_norm",
                  "linear1": "fc1", "linear2": "fc2", "norm3": "final_layer_norm"}

_TRANSFORMER = [
    _Rename("input_proj.", "model.input_proj."),
    _Rename("query_embed.", "model.query_position_embeddings."),
    _Rename("transformer.level_embed", "model.level_embed"),
    *[_Rename(f"transformer.{name}.", f"model.{name}.")
      for name in ("reference_points", "enc_output", "enc_output_norm", "pos_trans", "pos_trans_norm",
                   "decoder.bbox_embed", "decoder.class_embed")],
    *_layer_renames("transformer.encoder.layers", "model.encoder.layers", _ENCODER_LAYER),
    *_layer_renames("transformer.decoder.layers", "model.decoder.layers", _DECODER_LAYER),
    _Rename("class_embed.", "class_embed."),
    _Rename("bbox_embed.", "bbox_embed."),
    _Rename("backbone.1.row_embed.", "model.backbone.position_embedding.row_embeddings."),
    _Rename("backbone.1.col_embed.", "model.backbone.position_embedding.column_embeddings."),
]

_BODY, _HF_BODY = "backbone.0.body.", "model.backbone.conv_encoder.model."
#: timm's ResNet has torchvision's names, and so ours.
_TIMM_BACKBONE = [_Rename(_BODY, _HF_BODY)]
#: transformers' ResNet: the stem is the "embedder", layer<s> stage s-1, block b's conv<c>/bn<c>
#: its layer.<c-1>, the downsample its shortcut.
_TRANSFORMERS_BACKBONE = [
    _Rename(_BODY + "conv1.", _HF_BODY + "embedder.embedder.convolution."),
    _Rename(_BODY + "bn1.", _HF_BODY + "embedder.embedder.normalization."),
    _Rename(_BODY + "layer{s}.{b}.conv{c}.", _HF_BODY + "encoder.stages.{s}.layers.{b}.layer.{c}.convolution.",
            (("s", 1), ("c", 1))),
    _Rename(_BODY + "layer{s}.{b}.bn{c}.", _HF_BODY + "encoder.stages.{s}.layers.{b}.layer.{c}.normalization.",
            (("s", 1), ("c", 1))),
    _Rename(_BODY + "layer{s}.{b}.downsample.0.", _HF_BODY + "encoder.stages.{s}.layers.{b}.shortcut.convolution.",
            (("s", 1),)),
    _Rename(_BODY + "layer{s}.{b}.downsample.1.", _HF_BODY + "encoder.stages.{s}.layers.{b}.shortcut.normalization.",
            (("s", 1),)),
]

#: Names transformers 5 uses inside the model (it writes the older ones above, and reads both).
_NEWER_NAMES = [
    (re.compile(r"^model\.backbone\.model\."), "model.backbone.conv_encoder.model."),
    (re.compile(r"^model\.position_embedding\."), "model.backbone.position_embedding."),
    (re.compile(r"\.mlp\.fc([12])\."), r".fc\1."),
    (re.compile(r"\.self_attn\.o_proj\."), ".self_attn.out_proj."),
]

_QKV = ("q_proj", "k_proj", "v_proj")
_IN_PROJ = re.compile(r"^(transformer\.decoder\.layers\.\d+\.self_attn\.)in_proj_(weight|bias)$")
_HF_QKV = re.compile(r"^(model\.decoder\.layers\.\d+\.self_attn\.)([qkv]_proj)\.(weight|bias)$")


def _renames(timm_backbone: bool) -> list:
    return _TRANSFORMER + (_TIMM_BACKBONE if timm_backbone else _TRANSFORMERS_BACKBONE)


def _renamed(key: str, renames: list, to_hf: bool) -> Optional[str]:
    for rename in renames:
        converted = rename.convert(key, to_hf)
        if converted is not None:
            return converted
    return None


def state_to_hf(state: dict, timm_backbone: bool) -> dict:
    """Our (official) state dict in transformers' names, every weight its own tensor (safetensors
    stores no shared memory); the decoder's in_proj split into q/k/v."""
    renames = _renames(timm_backbone)
    converted = {}
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            continue
        in_proj = _IN_PROJ.match(key)
        if in_proj:
            prefix, kind = in_proj.groups()
            hf_prefix = _renamed(prefix, renames, to_hf=True)
            for name, part in zip(_QKV, value.chunk(3)):
                converted[f"{hf_prefix}{name}.{kind}"] = part.clone().contiguous()
            continue
        target = _renamed(key, renames, to_hf=True)
        if target is None:
            raise ckpt.CheckpointError(f"no Hugging Face name for the weight {key!r}")
        converted[target] = value.clone().contiguous()
    return converted


def state_from_hf(hf_state: dict, settings: dict, timm_backbone: bool, tied_heads: bool = True) -> dict:
    """transformers' weights under our (official) names, for a model of ``settings``
    (``dec_layers``, ``with_box_refine``, ``two_stage``). Keys it does not know stay as they are
    (the strict loader then names them). ``tied_heads``: transformers stores heads it ties once
    (its config's ``tie_word_embeddings``); they are filled in as it fills them."""
    renames = _renames(timm_backbone)
    state, qkv = {}, {}
    for key, value in hf_state.items():
        if key.endswith("num_batches_tracked"):
            continue
        for pattern, replacement in _NEWER_NAMES:
            key = pattern.sub(replacement, key)
        split = _HF_QKV.match(key)
        if split:
            prefix, name, kind = split.groups()
            qkv.setdefault((prefix, kind), {})[name] = value
            continue
        state[_renamed(key, renames, to_hf=False) or key] = value
    for (prefix, kind), parts in qkv.items():
        if set(parts) != set(_QKV):
            raise ckpt.CheckpointError(f"{prefix}: the self-attention has {sorted(parts)} {kind}s, not q, k and v")
        state[_renamed(prefix, renames, to_hf=False) + f"in_proj_{kind}"] = torch.cat([parts[n] for n in _QKV])
    if tied_heads:
        _fill_tied_heads(state, settings)
    return state


def _fill_tied_heads(state: dict, settings: dict) -> None:
    """Layer k's class and box heads where transformers stored them once: the decoder's copy
    (refinement, two-stage), else layer 0's. Our state dict lists every layer's heads (shared or
    not) and the decoder's copies, as the official one does."""
    two_stage = settings["two_stage"]
    decoder_heads = ("bbox_embed",) * settings["with_box_refine"] + ("class_embed",) * two_stage
    for head in ("class_embed", "bbox_embed"):
        for layer in range(settings["dec_layers"] + two_stage):
            _fill(state, f"{head}.{layer}.", f"transformer.decoder.{head}.{layer}.", f"{head}.0.")
            if head in decoder_heads:
                _fill(state, f"transformer.decoder.{head}.{layer}.", f"{head}.{layer}.")


def _fill(state: dict, prefix: str, *sources: str) -> None:
    """The weights under ``prefix``, where there are none, from the first of ``sources`` that has some."""
    if any(k.startswith(prefix) for k in state):
        return
    for source in sources:
        found = {k[len(source):]: v for k, v in state.items() if k.startswith(source)}
        if found:
            state.update({prefix + name: value for name, value in found.items()})
            return


# ---- The settings: transformers' config.json <-> ours.

#: transformers' config names of our settings, with transformers' defaults (the official ones).
_CONFIG_NAMES = {
    "d_model": ("hidden_dim", 256),
    "encoder_attention_heads": ("nheads", 8),
    "encoder_layers": ("enc_layers", 6),
    "decoder_layers": ("dec_layers", 6),
    "encoder_ffn_dim": ("dim_feedforward", 1024),
    "encoder_n_points": ("enc_n_points", 4),
    "decoder_n_points": ("dec_n_points", 4),
    "num_feature_levels": ("num_feature_levels", 4),
    "with_box_refine": ("with_box_refine", False),
    "two_stage": ("two_stage", False),
    "position_embedding_type": ("position_embedding", "sine"),
}
#: Settings transformers keeps twice, for encoder and decoder; ours has one of each.
_SAME_IN_BOTH = (("encoder_attention_heads", "decoder_attention_heads", 8), ("encoder_ffn_dim", "decoder_ffn_dim", 1024))

#: transformers' ResNet configurations of our backbones: (block, blocks per stage) -> name.
_TRANSFORMERS_RESNETS = {("basic", (2, 2, 2, 2)): "resnet18", ("basic", (3, 4, 6, 3)): "resnet34",
                         ("bottleneck", (3, 4, 6, 3)): "resnet50", ("bottleneck", (3, 4, 23, 3)): "resnet101"}
_STAGE_WIDTHS = {"basic": [64, 128, 256, 512], "bottleneck": [256, 512, 1024, 2048]}


def settings_from_hf_config(config: dict, where: str) -> tuple[dict, bool]:
    """(our settings, whether the backbone has timm's names) of a transformers config.json.
    Anything our model cannot reproduce is a CheckpointError naming it."""
    if config.get("model_type") != "deformable_detr":
        raise ckpt.CheckpointError(f"{where}: config.json describes a {config.get('model_type')!r} model, not "
                                   "transformers' Deformable DETR (model_type 'deformable_detr')")
    for encoder, decoder, default in _SAME_IN_BOTH:
        if config.get(encoder, default) != config.get(decoder, default):
            raise ckpt.CheckpointError(f"{where}: {encoder}={config.get(encoder)} differs from {decoder}="
                                       f"{config.get(decoder)}; deformdetr's model has one value for both")
    if config.get("activation_function", "relu") != "relu":
        raise ckpt.CheckpointError(f"{where}: activation_function {config['activation_function']!r} is not "
                                   "supported (the official model uses relu)")
    settings = {ours: config.get(name, default) for name, (ours, default) in _CONFIG_NAMES.items()}
    queries = "two_stage_num_proposals" if settings["two_stage"] else "num_queries"
    settings["num_queries"] = config.get(queries, 300)
    backbone, dilation, timm = _backbone_of(config, where, settings["num_feature_levels"])
    settings.update(backbone=backbone, dilation=dilation)
    return settings, timm


def _backbone_of(config: dict, where: str, levels: int) -> tuple[str, bool, bool]:
    """(our ResNet name, dilation, timm's names) of the config's backbone."""
    backbone = config.get("backbone_config") or {}
    kind = backbone.get("model_type", "timm_backbone" if config.get("use_timm_backbone", True) else None)
    if kind == "timm_backbone":
        name = backbone.get("backbone") or config.get("backbone") or "resnet50"
        ours = name.split(".")[0]  # timm's "resnet50.a1_in1k": the same network, other weights
        if ours not in _resnets():
            raise ckpt.CheckpointError(f"{where}: the timm backbone {name!r} is not one deformdetr has "
                                       f"({', '.join(sorted(_resnets()))})")
        dilation = bool(config.get("dilation")) or backbone.get("output_stride") == 16
        return ours, dilation, True
    if kind == "resnet":
        return _transformers_resnet(backbone, where, levels), False, False
    raise ckpt.CheckpointError(f"{where}: the backbone ({kind or config.get('backbone')!r}) is not a ResNet "
                               "deformdetr has (timm's or transformers' resnet18/34/50/101)")


def _transformers_resnet(backbone: dict, where: str, levels: int) -> str:
    layer_type = backbone.get("layer_type", "bottleneck")
    depths = tuple(backbone.get("depths", (3, 4, 6, 3)))
    name = _TRANSFORMERS_RESNETS.get((layer_type, depths))
    wanted = ["stage2", "stage3", "stage4"] if levels > 1 else ["stage4"]
    standard = (name is not None and list(backbone.get("hidden_sizes", _STAGE_WIDTHS[layer_type])) == _STAGE_WIDTHS[layer_type]
                and backbone.get("embedding_size", 64) == 64 and not backbone.get("downsample_in_bottleneck")
                and not backbone.get("downsample_in_first_stage"))
    if not standard:
        raise ckpt.CheckpointError(f"{where}: the transformers ResNet backbone ({layer_type}, depths {list(depths)}) "
                                   "is not a standard resnet18/34/50/101, the ones deformdetr has")
    if list(backbone.get("out_features") or ["stage4"]) != wanted:
        raise ckpt.CheckpointError(f"{where}: the backbone returns {backbone.get('out_features')}, but "
                                   f"{levels} feature level(s) take {wanted}")
    return name


def _resnets() -> dict:
    from deformdetr.models.resnet import RESNETS

    return RESNETS


def hf_config_of(config, class_names: Optional[dict] = None, timm_backbone: bool = False,
                 tied_heads: bool = True) -> dict:
    """transformers' config.json of a model of ours (its DeformableDETRConfig). The backbone is
    transformers' own ResNet (nothing else to install), or timm's (``timm_backbone``: the hub's
    SenseTime models; dilated ResNets need it: transformers' ResNet has no dilation)."""
    if abs(config.position_embedding_scale - 2 * 3.141592653589793) > 1e-12:
        raise ValueError(f"position_embedding_scale={config.position_embedding_scale}: transformers' "
                         "Deformable DETR fixes it at 2 pi")
    names = {i: str((class_names or {}).get(i, f"LABEL_{i}")) for i in range(config.num_classes)}
    hf = {name: getattr(config, ours) for name, (ours, _) in _CONFIG_NAMES.items()}
    hf.update({decoder: hf[encoder] for encoder, decoder, _ in _SAME_IN_BOTH})
    hf.update(
        architectures=["DeformableDetrForObjectDetection"], model_type="deformable_detr",
        num_queries=config.num_queries, two_stage_num_proposals=config.num_queries,
        activation_function="relu", dilation=config.dilation, auxiliary_loss=False,
        id2label={str(i): name for i, name in names.items()},
        label2id={name: i for i, name in names.items()},
        tie_word_embeddings=tied_heads, use_pretrained_backbone=False, use_timm_backbone=timm_backbone,
    )
    if timm_backbone:
        hf.update(backbone=config.backbone, backbone_config=None)
    else:
        hf.update(backbone=None, backbone_config=_transformers_resnet_config(config))
    return hf


def _transformers_resnet_config(config) -> dict:
    if config.dilation:
        raise ValueError("transformers' ResNet has no dilation: write a dilated (DC5) model with timm's backbone")
    (layer_type, depths), = [k for k, v in _TRANSFORMERS_RESNETS.items() if v == config.backbone]
    return dict(model_type="resnet", layer_type=layer_type, depths=list(depths), hidden_sizes=_STAGE_WIDTHS[layer_type],
                embedding_size=64, num_channels=3, hidden_act="relu", downsample_in_first_stage=False,
                downsample_in_bottleneck=False,
                out_features=["stage2", "stage3", "stage4"] if config.num_feature_levels > 1 else ["stage4"])


def _heads_tied(state: dict, settings) -> bool:
    """Whether every layer's heads equal the ones transformers ties them to (as _fill_tied_heads
    fills them): then its config may say tie_word_embeddings, as it does for its own models."""
    for head, has_copy in (("class_embed", settings.two_stage), ("bbox_embed", settings.with_box_refine)):
        for layer in range(settings.dec_layers + settings.two_stage):
            mine = f"{head}.{layer}."
            source = f"transformer.decoder.{head}.{layer}." if has_copy else f"{head}.0."
            if any(not torch.equal(v, state[source + k[len(mine):]]) for k, v in state.items() if k.startswith(mine)):
                return False
    return True


# ---- Folders and the hub.


_CHECKPOINT_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".tar", ".safetensors", ".json")


def looks_like_hub_id(source: str) -> bool:
    """``owner/name`` that is not a local path: what the hub calls a model id."""
    return (re.fullmatch(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*", source) is not None
            and not source.lower().endswith(_CHECKPOINT_SUFFIXES) and not os.path.exists(source))


def read_hf(source: str) -> dict:
    """A transformers Deformable DETR folder (or hub id) as a checkpoint of ours: ``model`` (our
    state dict), ``args`` (the settings its config gives), ``config`` (them as a config's model
    section, so that ``eval`` builds this model whatever the preset), ``class_names`` (its id2label)."""
    folder = source if os.path.isdir(source) else _download(source)
    config = _read_config(folder)
    settings, timm_backbone = settings_from_hf_config(config, folder)
    state = state_from_hf(_read_weights(folder), settings, timm_backbone,
                          tied_heads=config.get("tie_word_embeddings", True))
    class_names = {int(k): v for k, v in (config.get("id2label") or {}).items()}
    num_classes = ckpt.rows_of(state, "class_embed.0.weight", "num_classes")
    return {"model": state, "args": settings, "class_names": class_names,
            "config": {"model": {**settings, "num_classes": num_classes, "pretrained_backbone": False}}}


def _read_config(folder: str) -> dict:
    path = os.path.join(folder, CONFIG_NAME)
    if not os.path.isfile(path):
        raise ckpt.CheckpointError(f"{folder!r} is a folder but not a Hugging Face model: it has no {CONFIG_NAME} "
                                   "(deformdetr reads folders written by transformers' save_pretrained)")
    try:
        with open(path) as handle:
            config = json.load(handle)
    except ValueError as error:
        raise ckpt.CheckpointError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(config, dict):
        raise ckpt.CheckpointError(f"{path}: holds a {type(config).__name__}, not a config")
    return config


def _read_weights(folder: str) -> dict:
    """The weights of a folder: model.safetensors (or its shards), else pytorch_model.bin."""
    single, index = os.path.join(folder, SAFETENSORS_NAME), os.path.join(folder, SAFETENSORS_INDEX_NAME)
    if os.path.isfile(single) or os.path.isfile(index):
        load_file = _safetensors().load_file
        if os.path.isfile(single):
            return load_file(single)
        with open(index) as handle:
            shards = sorted(set(json.load(handle)["weight_map"].values()))
        return {k: v for shard in shards for k, v in load_file(os.path.join(folder, shard)).items()}
    pickled = os.path.join(folder, PICKLE_NAME)
    if os.path.isfile(pickled):
        return ckpt.model_state_of(ckpt.read_checkpoint(pickled), pickled)
    raise ckpt.CheckpointError(f"{folder!r} has a {CONFIG_NAME} but no weights ({SAFETENSORS_NAME} or {PICKLE_NAME})")


def _safetensors():
    try:
        import safetensors.torch
    except ImportError:
        raise ModuleNotFoundError(f"Hugging Face weights need the safetensors package: {_INSTALL}") from None
    return safetensors.torch


def _download(repo_id: str) -> str:
    """The hub model ``repo_id`` in huggingface_hub's cache: its config and one weight file."""
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise ModuleNotFoundError(f"{repo_id!r} is no file or folder here; to fetch it from the Hugging Face hub "
                                  f"install huggingface_hub: {_INSTALL}") from None
    try:
        config = hf_hub_download(repo_id, CONFIG_NAME)
        for weights in (SAFETENSORS_NAME, PICKLE_NAME):
            try:
                hf_hub_download(repo_id, weights)
                break
            except Exception as error:  # a missing file: try the other one
                if "EntryNotFound" not in type(error).__name__:
                    raise
    except Exception as error:  # offline, no such repository, access refused: all one line to the user
        reason = " ".join(str(error).split())[:200]
        raise ckpt.CheckpointError(f"could not fetch {repo_id!r} from the Hugging Face hub ({type(error).__name__}: "
                                   f"{reason}); it is no local file or folder either") from None
    return os.path.dirname(config)


def write_hf(model, folder: str, class_names: Optional[dict] = None, timm_backbone: Optional[bool] = None) -> None:
    """Writes a Deformable DETR of ours as a folder that transformers'
    ``DeformableDetrForObjectDetection.from_pretrained`` loads. ``timm_backbone``: timm's ResNet
    names (default: only for dilated models, which transformers' ResNet cannot express)."""
    from deformdetr.models.deformable_detr import DeformableDETRConfig

    config = getattr(model, "config", None)
    if not isinstance(config, DeformableDETRConfig):
        raise ValueError("only Deformable DETR models can be written in the Hugging Face format "
                         "(transformers has no MonoDETR)")
    timm_backbone = config.dilation if timm_backbone is None else timm_backbone
    state = model.state_dict()
    hf_config = hf_config_of(config, class_names, timm_backbone, tied_heads=_heads_tied(state, config))
    weights = state_to_hf(state, timm_backbone)
    os.makedirs(folder, exist_ok=True)
    _safetensors().save_file(weights, os.path.join(folder, SAFETENSORS_NAME), metadata={"format": "pt"})
    with open(os.path.join(folder, CONFIG_NAME), "w") as handle:
        json.dump(hf_config, handle, indent=2, sort_keys=True)
