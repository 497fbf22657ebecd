"""What published work measured and fitted, each with its source, for chapter 10's comparison.

Nothing here is measured by this project. Every figure is quoted from the source named beside
it (the paper's abstract unless said otherwise). Where a scaling law's fitted coefficients were
not found in the sources searched, or were found only in a rendering that cannot be right as
printed, the chapter says so and projects nothing from them: a projection from a guessed
coefficient would be a made-up number with a citation attached.
"""

# Measured by others: the claims' published evidence.
RESULTS = [
    dict(work="Switch Transformer", source="Fedus, Zoph, Shazeer, JMLR 2022 (arXiv 2101.03961), "
         "abstract", figure="up to 7x pre-training speed-up with the same computational "
         "resources (T5-Base and T5-Large based); 4x over T5-XXL", training_speedup=7.0),
    dict(work="GLaM 1.2T", source="Du et al., ICML 2022 (arXiv 2112.06905), abstract",
         figure="1/3 of the energy used to train GPT-3, half its inference FLOPs, better zero- "
         "and one-shot scores on 29 tasks", training_speedup=3.0),
    dict(work="DeepSeekMoE 16B", source="Dai et al. 2024 (arXiv 2401.06066), abstract",
         figure="performance comparable to LLaMA2 7B with about 40% of its computations",
         training_speedup=1 / 0.40),
    dict(work="DeepSeek-V2", source="DeepSeek-AI 2024 (arXiv 2405.04434), abstract",
         figure="42.5% lower training cost than DeepSeek 67B (dense), 236B parameters of which "
         "21B active per token", training_speedup=1 / (1 - 0.425)),
    dict(work="4Ms (Model, Machine, Mechanization, Map)", source="Patterson et al., IEEE "
         "Computer 2022 (arXiv 2204.05149), abstract", figure="four best practices together "
         "reduce ML training energy by up to 100x and CO2 emissions by up to 1000x",
         training_speedup=None),
]

PATTERSON_COMBINED = 100.0        # "up to 100x" training energy, four practices together (above)

# Published scaling laws for routed / MoE models: what was found of each, and what was not.
SCALING_LAWS = [
    dict(law="Clark et al., ICML 2022 (arXiv 2202.01169), unified scaling laws for routed LMs",
         form="log L(N, E) = a log N + b log E' + c log N log E' + d (bilinear in log N and the "
              "saturating expert count E')",
         coefficients=None,
         note="the fitted a, b, c, d per routing method (S-BASE, RL-R, HASH) are in the paper's "
              "tables; they were not in the sources this chapter could search"),
    dict(law="Krajewski et al. 2024 (arXiv 2402.07871), scaling laws for fine-grained MoE",
         form="loss in model size N, training tokens D and granularity G (abstract); its "
              "functional form and fitted coefficients were not in the sources searched",
         coefficients=None,
         note="the abstract's finding: the efficiency gap between dense and MoE widens with "
              "model size and budget; experts the size of the dense FFN are not optimal"),
    dict(law="Ludziejewski et al., ICML 2025 (arXiv 2502.05172), joint MoE scaling laws",
         form="L(N_act, D, E') = a E'^delta N_act^(alpha + gamma ln E') + b E'^omega "
              "D^(beta + zeta ln E') + c",
         coefficients="a 35.91, delta 0.2285, alpha + gamma ln E' written '0.1889 - 0.0098 ln E'', "
                      "b 35.98, omega -0.5529, beta + zeta ln E' written '0.1775 + 0.0259 ln E'', "
                      "c 1.3637 (a secondary page's rendering)",
         note="as written the size and data exponents are positive, so loss would grow with "
              "parameters and tokens: signs were lost, and the paper's own table was not "
              "reachable to restore them"),
]

# Memory side of "one consumer GPU": published models' total parameters (the abstracts above).
MODELS_TOTAL = [
    ("DeepSeekMoE 16B", 16e9, None, "Dai et al. 2024"),
    ("DeepSeek-V2", 236e9, 21e9, "DeepSeek-AI 2024"),
    ("GLaM", 1.2e12, None, "Du et al. 2022"),
]
CONSUMER_GPU_BYTES = 24e9         # a 24 GB consumer card (GeForce RTX 4090: 24 GB, NVIDIA's spec)
H100_BYTES = 80e9                 # H100 SXM5: 80 GB HBM3 (NVIDIA H100 datasheet)
# PCIe 4.0 x16, one direction: 16 GT/s x 16 lanes x 128/130 encoding / 8 bits (PCI-SIG 4.0 spec)
PCIE4_X16 = 16e9 * 16 * 128 / 130 / 8
BITS = (("fp16", 16), ("int8", 8), ("int4", 4))
