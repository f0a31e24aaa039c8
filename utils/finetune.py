"""Fine-tuning: what trains (fine-tuning modes, freezing, low-rank adapters). The pre-trained
weights are loaded by `utils.checkpoint.load_weights` (checkpoints of this code or the
published one, converted; optionally only the tensors that fit).

Config keys (read by utils/trainer.py):
    pretrained: path            weights to start from (the run's own checkpoint wins)
    pretrained_strict: true     false: load every tensor whose name and shape match, keep the
                                fresh initialisation of the rest (e.g. the lift of a model with
                                more input channels) and log which
    finetune_mode: full         what trains (utils/config_schema.py FINETUNE_MODES): 'full'
                                every tensor (as published); 'head' the lift fc0 and the
                                projection fc1/fc2 only; 'frozen_fourier' everything but the
                                spectral weights sp_convs.*; 'lora' as
                                frozen_fourier plus a trainable low-rank update of each layer's
                                spectral weights (models/fno.py SpectralConv2d.add_lora)
    lora_rank: 4                rank r of the adapters (finetune_mode: lora only)
    freeze: null                lower-level alternative to finetune_mode (not both): a preset
                                ('fourier' = 'all_but_lift_proj' = head; 'spectral' =
                                frozen_fourier; 'all_but_proj') or a list of parameter-name
                                prefixes to freeze
"""
import logging


from utils.config_schema import FINETUNE_MODES
from utils.checkpoint import ADAPTER_NAMES, clean_state_dict, is_adapter, unwrap_model
from utils.errors import FinetuneError


# Named freezing presets over the parameter names of models/fno.py (fc0 = lift, sp_convs/ws =
# the Fourier layers' spectral and 1x1 weights, fc1/fc2 = projection).
FREEZE_PRESETS = {
    "none": (),
    "fourier": ("sp_convs.", "ws."),       # train only the lift and the projection
    "all_but_lift_proj": ("sp_convs.", "ws."),
    "spectral": ("sp_convs.",),            # train lift, 1x1 convs and projection
    "all_but_proj": ("fc0.", "sp_convs.", "ws."),
}


def freeze_parameters(model, spec):
    """Freeze (requires_grad=False) the parameters named by `spec`; return their names.

    spec: None / 'none', a preset of FREEZE_PRESETS, or a list of parameter-name prefixes
    (e.g. ['fc0.', 'sp_convs.0.']). Call before building the optimizer: frozen tensors get
    no gradient, so the optimizer never changes them (bit-identical after training).
    """
    if spec in (None, False, "none", ""):
        return []
    prefixes = FREEZE_PRESETS.get(spec) if isinstance(spec, str) else tuple(spec)
    if prefixes is None:
        raise FinetuneError(f"freeze: unknown preset {spec!r} (presets: "
                            f"{', '.join(FREEZE_PRESETS)}, or a list of parameter-name prefixes)")
    target = unwrap_model(model)
    names = [n for n, _ in target.named_parameters()]
    unused = [p for p in prefixes if not any(n.startswith(p) for n in names)]
    if unused:
        raise FinetuneError(f"freeze: no parameter starts with {unused} (have {sorted({n.split('.')[0] for n in names})})")
    frozen = []
    for name, p in target.named_parameters():
        if name.startswith(tuple(prefixes)):
            p.requires_grad_(False)
            frozen.append(name)
    n_frozen = sum(p.numel() for p in target.parameters() if not p.requires_grad)
    n_all = sum(p.numel() for p in target.parameters())
    logging.info("froze %d tensors (%d of %d parameters): %s", len(frozen), n_frozen, n_all,
                 ", ".join(frozen))
    return frozen


# ------------------------------------------------------------------------------ fine-tuning modes
# The modes and what each freezes: utils/config_schema.FINETUNE_MODES; 'lora' then adds adapters.
LORA_RANK_DEFAULT = 4


def _spectral_layers(model):
    from models.fno import SpectralConv2d

    return [(n, m) for n, m in unwrap_model(model).named_modules() if isinstance(m, SpectralConv2d)]


def apply_finetune_mode(model, params):
    """Freeze / add adapters as the config says (keys `finetune_mode`, `lora_rank`, `freeze`).

    Call on the model before the optimizer is built (and before loading a checkpoint that
    holds adapters). Returns the frozen parameter names. FinetuneError for an unknown mode,
    a bad rank, or `freeze` together with a mode other than full.
    """
    mode = params.get("finetune_mode") or "full"
    freeze = params.get("freeze")
    rank = params.get("lora_rank")
    if not isinstance(mode, str) or mode not in FINETUNE_MODES:
        raise FinetuneError(f"finetune_mode: unknown {mode!r} (use {', '.join(FINETUNE_MODES)})")
    if mode != "full" and freeze not in (None, False, "none", ""):
        raise FinetuneError(f"finetune_mode: {mode} and freeze: {freeze!r} both choose what "
                            f"trains; set one of them")
    if rank is not None and mode != "lora":
        raise FinetuneError(f"lora_rank is only used with finetune_mode: lora (got mode {mode})")
    if mode == "full":
        return freeze_parameters(model, freeze)
    frozen = freeze_parameters(model, FINETUNE_MODES[mode])
    if mode == "lora":
        rank = LORA_RANK_DEFAULT if rank is None else rank
        layers = _spectral_layers(model)
        widest = min(min(m.in_channels, m.out_channels) for _, m in layers)
        if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= widest:
            raise FinetuneError(f"lora_rank must be an integer in [1, {widest}] (the smallest "
                                f"layer width), got {rank!r}")
        for _, layer in layers:
            layer.add_lora(rank)
    target = unwrap_model(model)
    n_train = sum(p.numel() for p in target.parameters() if p.requires_grad)
    n_all = sum(p.numel() for n, p in target.named_parameters() if not is_adapter(n))
    logging.info("fine-tuning mode %s%s: %d trainable parameters (model: %d)", mode,
                 f" (rank {rank})" if mode == "lora" else "", n_train, n_all)
    return frozen


def export_state_dict(model):
    """Plain state dict of `model` with every LoRA adapter merged into its spectral weight.

    Same names and shapes as a model without adapters: eval.py, `pretrained` and the
    published-format tools need nothing special. Without adapters: the state dict itself.
    """
    state = clean_state_dict(unwrap_model(model).state_dict())
    for name, layer in _spectral_layers(model):
        if layer.lora_a is not None:
            state[f"{name}.weight"] = layer.merged_weight().detach()
            for a in ADAPTER_NAMES:
                del state[f"{name}.{a}"]
    return state


def has_adapters(model):
    return any(layer.lora_a is not None for _, layer in _spectral_layers(model))


def merge_adapters(model):
    """Fold every LoRA adapter into its base weight in place and remove it (for inference).

    The base weights keep requires_grad as they were (frozen after a LoRA run).
    """
    for _, layer in _spectral_layers(model):
        layer.merge_lora()
