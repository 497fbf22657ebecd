"""A cost model of expert parallelism: the all-to-all's bytes and time per step, next to the
experts' compute, for P ranks in nodes of G, on published interconnect figures.

Bytes. A token with k routed experts sends k rows of C numbers (b bytes each) to the experts'
owners and gets k rows back: per MoE layer and step, dispatch + combine forward and their two
mirrors backward are 4 all-to-alls of N*k*C*b bytes per rank (N tokens per rank). Under uniform
routing a row stays on its rank with probability 1/P, stays in its node (NVLink) with (G-1)/P
and crosses the network with (P-G)/P.

Node-limited routing (DeepSeek-V3, arXiv:2412.19437, section 2.1.2 and 3.2.2: each token goes to
at most M = 4 nodes): a token's rows for one node cross the network ONCE and are forwarded to
their GPUs by NVLink inside the node, so a token sends at most M rows over the network instead of
up to k (k = 8 there). Expected distinct nodes among k uniform picks from n = P/G nodes:
n * (1 - (1 - 1/n)^k); node-limited routing caps it at M.

Time of one all-to-all on one rank (Hockney's alpha-beta model, one message per peer):
    t = max(alpha_net * peers_net + bytes_net / beta_net, alpha_nv * peers_nv + bytes_nv / beta_nv)
the two fabrics working at once. The experts' compute per layer and step: 3 * 2 * 2*C*d_expert
FLOPs per routed row (forward, and backward at twice the forward), at the GPU's peak: an
optimistic compute time, so the communication share shown is an upper bound of what a real,
less than peak, kernel would see.

Every hardware figure is in INTERCONNECTS / GPUS with its source; nothing here is measured on
the reader's machine except by `fit_alpha_beta` (the chapter's 2-rank check).
"""
import math
from dataclasses import dataclass

# name -> (bandwidth per GPU and direction, bytes/s; latency per message, s; source)
INTERCONNECTS = {
    "nvlink4": (450e9, 2e-6,
                "H100 SXM NVLink 4: 900 GB/s bidirectional per GPU, 450 GB/s each way "
                "(NVIDIA/nccl issue 1264; glennklockwood.com/garden/processors/h100); "
                "latency ~1-2 us (fridayswithfaraday.com, GPU interconnect hierarchy table)"),
    "ib-ndr": (50e9, 5e-6,
               "InfiniBand NDR 400 Gb/s per port = 50 GB/s, one ConnectX-7 port per GPU "
               "(docs.nvidia.com ConnectX-7 user manual; 8 x 400G per server, nexuswise-c.com); "
               "latency ~1-5 us (same table)"),
    "eth-100g": (12.5e9, 10e-6,
                 "100 GbE = 12.5 GB/s (a ConnectX-7 port speed, docs.nvidia.com ConnectX-7 user "
                 "manual); Ethernet latency ~2-10 us (same table)"),
}
GPUS = {"h100-bf16": (989.4e12, "H100 SXM dense BF16 tensor peak 989.4 TFLOPS "
                                "(glennklockwood.com/garden/processors/h100)")}


@dataclass
class MoEShape:
    """One MoE layer's traffic shape. Defaults: DeepSeek-V3's routed experts (hidden 7168,
    expert width 2048, 8 of 256 per token; arXiv:2412.19437 section 4.2), BF16 rows, and 4096
    tokens per rank and step."""
    n_embd: int = 7168
    d_expert: int = 2048
    top_k: int = 8
    bytes_per_number: int = 2
    tokens_per_rank: int = 4096


def distinct_nodes(k, n_nodes):
    """Expected number of distinct nodes among k uniform picks from n_nodes."""
    return n_nodes * (1 - (1 - 1 / n_nodes) ** k) if n_nodes > 1 else 1.0


def rows_per_token(P, G, k, node_limit=None):
    """(rows over NVLink, rows over the network) a token sends in one all-to-all, expected,
    uniform routing, P ranks in nodes of G. node_limit M: the network carries one row per
    destination node (at most M); the rest of the k rows reach their GPU by NVLink. ValueError
    when node_limit is given and P > G is no multiple of G: the count assumes whole nodes."""
    if node_limit is not None and P > G and P % G:
        raise ValueError(f"node-limited routing counts whole nodes: {P} ranks are no multiple of "
                         f"{G} GPUs per node; give P a multiple of G")
    G = min(G, P)
    nvlink = k * (G - 1) / P
    network = k * (P - G) / P
    if node_limit is not None and P > G:
        n = P // G
        other_nodes = distinct_nodes(k, n) * (n - 1) / n            # nodes other than home
        network = min(node_limit, other_nodes)
        nvlink = k * (G - 1) / P + k * (P - G) / P                    # forwarded inside nodes
    return nvlink, network


def alltoall_seconds(shape, P, G=8, intra="nvlink4", inter="ib-ndr", node_limit=None):
    """Seconds of ONE all-to-all (e.g. the dispatch of one layer's forward) on one rank."""
    row = shape.n_embd * shape.bytes_per_number
    nv_rows, net_rows = rows_per_token(P, G, shape.top_k, node_limit)
    beta_nv, alpha_nv, _ = INTERCONNECTS[intra]
    beta_net, alpha_net, _ = INTERCONNECTS[inter]
    peers_nv, peers_net = min(G, P) - 1, max(P - G, 0)
    t_nv = alpha_nv * peers_nv + shape.tokens_per_rank * nv_rows * row / beta_nv
    t_net = alpha_net * peers_net + shape.tokens_per_rank * net_rows * row / beta_net
    return max(t_nv, t_net if peers_net else 0.0)


def expert_seconds(shape, gpu="h100-bf16"):
    """Seconds of the experts' matmuls per layer and step on one rank, at peak."""
    flops = 3 * 2 * 2 * shape.n_embd * shape.d_expert * shape.tokens_per_rank * shape.top_k
    return flops / GPUS[gpu][0]


def projection(shape=None, ranks=(8, 16, 32, 64, 128, 256, 512, 1024), G=8,
               inter=("ib-ndr", "eth-100g"), node_limit=4):
    """Rows of the projection table: per MoE layer and training step on one rank, the 4
    all-to-alls (ms) per network, with and without node-limited routing, and the experts'
    compute (ms). Weak scaling: tokens per rank fixed, experts per rank E/P fixed."""
    shape = shape or MoEShape()
    rows = []
    for P in ranks:
        row = {"P": P, "nodes": max(1, P // G), "compute_ms": 1e3 * expert_seconds(shape)}
        for net in inter:
            row[net] = 4e3 * alltoall_seconds(shape, P, G, inter=net)
            row[f"{net}/M={node_limit}"] = 4e3 * alltoall_seconds(shape, P, G, inter=net,
                                                                 node_limit=node_limit)
        row["net_rows"] = rows_per_token(P, G, shape.top_k)[1]
        row["net_rows_limited"] = rows_per_token(P, G, shape.top_k, node_limit)[1]
        rows.append(row)
    return rows


def fit_alpha_beta(sizes, seconds):
    """Least-squares t = alpha + bytes / beta through measured (bytes, seconds) points, as
    (alpha s, beta bytes/s); a ValueError without two distinct sizes."""
    n = len(sizes)
    if n < 2 or len(set(sizes)) < 2:
        raise ValueError("fit_alpha_beta needs two or more distinct message sizes")
    mx, my = sum(sizes) / n, sum(seconds) / n
    sxx = sum((x - mx) ** 2 for x in sizes)
    slope = sum((x - mx) * (y - my) for x, y in zip(sizes, seconds)) / sxx
    alpha = my - slope * mx
    if alpha < 0:               # noise below the smallest message: a line through the origin
        alpha, slope = 0.0, sum(x * y for x, y in zip(sizes, seconds)) / sum(x * x for x in sizes)
    return alpha, (1 / slope if slope > 0 else math.inf)
