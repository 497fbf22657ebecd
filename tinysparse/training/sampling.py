"""Using a trained run: load it from its folder, and sample text from it.

    model, (model_config, train_config), ckpt = load_run("out/tiny")
    print(sample("out/tiny", prompt="def ", max_new_tokens=200))
"""
from ..engine import backend
from ..engine import random as ts_random
from ..adaptive.decode import check_generate_args
from ..gpt import GPT, GPTConfig
from .checkpoint import load_checkpoint, load_state
from .config import TrainConfig
from .data import ByteTokenizer


def sample_text(model, prompt, max_new_tokens, temperature, top_k, seed):
    """The prompt followed by max_new_tokens bytes sampled from `model` (seeded: same seed, same
    text on the CPU)."""
    tok = ByteTokenizer()
    ts_random.manual_seed(seed)
    ids = model.generate(tok.encode(prompt)[None, :], max_new_tokens, temperature, top_k)
    return tok.decode(ids[0])


def causality_warning(model_config):
    """None, or why this model's samples are not what its losses promise: expert-choice routing
    is not causal (moe/router.py, chapter 08)."""
    if model_config.n_expert and model_config.router == "expert_choice":
        return ("router expert_choice is not causal: in training, which experts a token got "
                "depended on later tokens (the future leaks, chapter 08), so the losses are "
                "optimistic, and sampling, which has no future to read, runs a different "
                "function; use --router topk for a language model")
    return None


def load_run(out_dir, device="cpu"):
    """(model, (GPTConfig, TrainConfig), checkpoint dict) of the run saved in out_dir, the model
    in eval mode. Commands that use a trained model (sample; the ledger and map commands to come)
    load it here, so they inherit every check of checkpoint.load_checkpoint: CheckpointError,
    one line naming the file and the fix, for a missing, damaged or mismatched checkpoint."""
    ckpt = load_checkpoint(out_dir)
    mcfg = GPTConfig(**ckpt["model_config"])
    tcfg = TrainConfig.from_dict(ckpt["train_config"])
    model = GPT(mcfg)
    load_state(ckpt, model)
    model.to(backend.resolve_device(device)).eval()
    return model, (mcfg, tcfg), ckpt


def sample(out_dir, prompt="\n", max_new_tokens=500, temperature=0.8, top_k=50, seed=0,
           device="cpu") -> str:
    """Text from the run in out_dir: the prompt followed by max_new_tokens sampled bytes.

    prompt is a str (UTF-8; surrogate escapes, as os.fsdecode makes them from bytes that are not
    UTF-8, turn back into those bytes) or bytes, at least one byte. max_new_tokens, temperature
    and top_k as in GPT.generate (top_k None: every byte). Each bad argument is a ValueError
    (a TypeError for a wrong type) naming it, raised before the checkpoint is read."""
    check_generate_args(max_new_tokens, temperature, top_k)
    if not prompt:
        raise ValueError("prompt must not be empty; the model needs a first byte, e.g. prompt='def '")
    model, _, _ = load_run(out_dir, device)
    return sample_text(model, prompt, max_new_tokens, temperature, top_k, seed)
