"""Using a trained run: load it from its folder, and sample text from it.

    model, (model_config, train_config), ckpt = load_run("out/tiny")
    print(sample("out/tiny", prompt="def ", max_new_tokens=200))
"""
from ..engine import backend
from ..engine import random as ts_random
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
    """Text from the run in out_dir: the prompt followed by max_new_tokens sampled bytes."""
    if not temperature > 0:
        raise ValueError(f"--temperature must be positive, got {temperature}; try 0.8")
    if top_k is not None and top_k < 1:
        raise ValueError(f"--top-k must be at least 1, got {top_k}; try 50")
    if max_new_tokens < 0:
        raise ValueError(f"--max-new-tokens must not be negative, got {max_new_tokens}")
    if not prompt:
        raise ValueError("--prompt must not be empty; the model needs a first byte, e.g. --prompt 'def '")
    model, _, _ = load_run(out_dir, device)
    return sample_text(model, prompt, max_new_tokens, temperature, top_k, seed)
