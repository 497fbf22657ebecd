"""The textbook estimates of a transformer's FLOPs per token, to set beside the counted ones.

Forward, per token, for N active non-embedding parameters (the tied head's weights included, as
nanoGPT counts them), L layers, context T, width C:

    2N + 4 L T C

- 2N: every weight of a matmul does one multiply-add per token (2 FLOPs). Biases and layer-norm
  gains are in N too, though they are elementwise work: N overstates the matmuls by them.
- 4 L T C: attention in each layer multiplies the token's query with T keys (2 T C) and mixes
  T values (2 T C). T is the full context, as executed by a kernel that computes every score
  and masks the future (tinysparse's); a kernel that skips masked tiles would do about half.
  Kaplan et al. 2020 (Table 1) write 2N + 2 n_layer n_ctx d_attn, counting the scores only.

Training (forward + backward), PaLM (Chowdhery et al. 2022, appendix B): the backward costs
twice the forward (a gradient for the activations and one for the weights), so

    6N + 12 L T C  =  3 x (2N + 4 L T C).

For a Mixture of Experts, N counts the ACTIVE parameters (router, the top_k experts a token
visits, the shared experts): GPT.num_active_parameters.
"""


def forward_flops_per_token(model, T=None):
    """2N + 4 L T C for a tinysparse GPT (T: the context; default its block_size)."""
    c = model.config
    T = c.block_size if T is None else T
    return 2 * model.num_active_parameters() + 4 * c.n_layer * T * c.n_embd


def training_flops_per_token(model, T=None):
    """6N + 12 L T C (PaLM appendix B), the same as GPT.flops_per_token."""
    c = model.config
    T = c.block_size if T is None else T
    return 6 * model.num_active_parameters() + 12 * c.n_layer * T * c.n_embd
