"""GPTConfig: the shape of a GPT (tinysparse/gpt.py), each field with what it means, checked.

The model's fields (nanoGPT's), then the Mixture-of-Experts fields (chapter 05; tinysparse/moe),
then adaptive computation's (chapter 09; tinysparse/adaptive). The defaults give the dense model
with every sparse mechanism off. Every field is checked when the config is made: a value outside
its domain is refused with a ValueError that names the field and its range.
"""
from dataclasses import asdict, dataclass

from ._checks import check_int, check_number
from .moe.layer import check_settings as check_moe_settings
from .adaptive.settings import check_settings as check_adaptive_settings


@dataclass
class GPTConfig:
    vocab_size: int = 256     # tokens in the vocabulary (256 for the byte tokenizer)
    n_layer: int = 4          # transformer blocks
    n_head: int = 4           # attention heads per block; n_embd must divide evenly
    n_embd: int = 128         # width of the residual stream (C)
    block_size: int = 64      # longest context the model sees (T at most this)
    dropout: float = 0.0      # dropout on embeddings, attention output and MLP output
    bias: bool = True         # biases in Linear layers and LayerNorms
    # Mixture of Experts (chapter 05; tinysparse/moe). n_expert = 0 keeps the dense MLP.
    n_expert: int = 0         # routed experts per MoE layer; 0 = dense MLP in every block
    top_k: int = 2            # experts each token visits (token choice; the average for expert choice)
    d_expert: int = 0         # hidden width of one expert; 0 = 4*n_embd // (top_k + n_shared), so a
                              # token's active FFN compute equals the dense MLP's (DeepSeekMoE's rule)
    n_shared: int = 0         # shared experts every token passes through (DeepSeekMoE)
    router: str = "topk"      # 'topk' (token choice) or 'expert_choice' (Zhou et al. 2022; not causal)
    score: str = "softmax"    # router affinity: 'softmax' or 'sigmoid' (DeepSeek-V3)
    capacity_factor: float | None = None  # C = ceil(factor * T*k / E) slots per expert; None = dropless
    balance: str = "aux"      # 'aux' (Switch loss), 'bias' (DeepSeek-V3, aux-loss-free) or 'none'
    aux_coef: float = 0.01    # weight of the Switch load-balance loss (Fedus et al. 2021: 0.01)
    z_coef: float = 0.001     # weight of the ST-MoE router z-loss (Zoph et al. 2022: 0.001); 0 = off
    bias_update_rate: float = 0.001  # gamma of balance='bias': each step moves every expert's
                                     # selection bias by +-gamma toward balance (DeepSeek-V3)
    jitter: float = 0.0       # router noise: its input times U(1-j, 1+j) in training (Switch); 0 = off
    dispatch_backend: str = "auto"  # sparse dispatch: 'numpy', 'numba' (CPU kernels), 'cuda', or
                                    # 'auto' (float32/64: numba on NumPy arrays, cuda on
                                    # CuPy arrays; else numpy)
    # Adaptive computation (chapter 09; tinysparse/adaptive). The defaults turn it all off.
    n_null: int = 0           # null experts beside the n_expert routed ones (AdaMoE): a token takes
                              # 0..top_k real experts; null slots cost nothing
    null_kind: str = "zero"   # what a null expert returns: 'zero' (AdaMoE) or 'identity' (its input x,
                              # MoE++'s copy expert)
    null_tau: float = 1.0     # MoE++'s weight of the null experts in the balance loss (below 1: their
                              # load costs less, more tokens rest)
    target_experts: float | None = None  # compute budget: mean REAL experts per token, held by
                                         # bias updates on the null experts (None: no controller)
    budget_rate: float = 0.1  # gamma of the budget controller: each step the null biases move by
                              # gamma * (mean real experts per token - target_experts)
    top_p: float | None = None  # dynamic routing (Huang et al. 2024): experts in order of probability
                                # until their sum reaches top_p; None = fixed top_k
    max_k: int | None = None  # most experts a top-p token may take (None: n_expert, no cap)
    entropy_coef: float = 1e-4  # weight of top-p's dynamic loss, the router's entropy (Huang et al.)
    mod_capacity: float | None = None  # Mixture-of-Depths (Raposo et al. 2024): fraction of a
                                       # sequence a routed block processes (paper: 0.125); None = off
    mod_every: int = 2        # every mod_every-th block is routed (2: blocks 2, 4, ...; the first never)
    mod_aux_coef: float = 0.01  # weight of the BCE that teaches the router's sigmoid(r) > 0.5 the
                                # top-k decision (the causal rule sampling uses)
    mod_router: str = "learned"  # 'learned', or 'random' (the control: same capacity, no learning)
    exit_scale: float = 0.0   # LayerSkip's e_scale: every layer's output also trains the shared
                              # head, with weights rising with depth (0 = only the last layer)
    exit_threshold: float | None = None  # CALM: in cached sampling a token exits at the first layer
                                         # whose top-1 minus top-2 probability reaches this; None = never

    def __post_init__(self):
        """Refuse a field outside its domain: a ValueError (TypeError for a wrong type) that names
        the field and its range. The MoE fields are checked even when n_expert = 0, so a flag that
        could never be right (--capacity-factor inf, --router hash) is refused in a dense model too."""
        for name in ("vocab_size", "n_layer", "n_head", "n_embd", "block_size"):
            check_int(f"GPTConfig.{name}", getattr(self, name), low=1)
        if self.n_embd % self.n_head:
            raise ValueError(f"GPTConfig.n_embd ({self.n_embd}) must be divisible by "
                             f"n_head ({self.n_head})")
        check_number("GPTConfig.dropout", self.dropout, low=0, high=1, high_open=True)
        for name in ("n_expert", "d_expert"):  # 0 has a meaning for both
            check_int(f"GPTConfig.{name}", getattr(self, name), low=0)
        try:
            check_moe_settings(self.n_embd, self.n_expert or None, self.top_k, self.d_expert or None,
                               self.n_shared, self.router, self.score, self.capacity_factor,
                               self.balance, self.aux_coef, self.z_coef, self.jitter,
                               self.dispatch_backend, self.bias_update_rate)
        except ValueError as e:               # "MoE top_k=5 is invalid: ..." -> "GPTConfig.top_k=5 ..."
            raise ValueError(str(e).replace("MoE ", "GPTConfig.", 1)) from None
        check_adaptive_settings(self)

    def to_dict(self):
        return asdict(self)
