#!/usr/bin/env bash
# Everything to check and time when a GPU is lent, in one call (the lease is short: about 15
# minutes of device time a session, the machine's start included).
#
#   bash tools/gpu_lease.sh            # on the lent machine, from the repository root
#
# It uses the machine's own python3 and packages (CuPy, numba-cuda, PyTorch are in its image;
# nothing can be installed there, so no virtual environment: `make gpu-check` would try to
# build one). Each part runs under its own time limit, so one that hangs cannot eat the others';
# each writes its whole output to $OUT/<part>.log ($OUT: a folder to take home, out/gpu-lease by
# default) and its last lines to the terminal; the exit status is 1 when a part failed. The parts, most wanted first:
#
#   gpu_check   python -m tinysparse.bench.gpu_check --full: versions, the preset steps against
#               the PyTorch twin on the same GPU (tokens/s), host waits, numpy vs cuda dispatch,
#               resume bit for bit, pytest of every kernel on the device, MoE layer timings,
#               tiny-moe training on both dispatch backends
#   lesson07    chapter 07's script on the GPU (its full shapes, its timings)
#   train_small the small preset (10.7M parameters, the stdlib corpus) trained on the GPU
set -u
OUT=${OUT:-out/gpu-lease}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 NUMBA_ENABLE_CUDASIM=0 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PY:-python3}
GPU_CHECK_LIMIT=${GPU_CHECK_LIMIT:-300} LESSON_LIMIT=${LESSON_LIMIT:-90} TRAIN_LIMIT=${TRAIN_LIMIT:-70}

FAILED=""
part() {   # part NAME LIMIT_SECONDS COMMAND...: run it, keep its log, show its end
    local name=$1 limit=$2 t0=$SECONDS rc
    shift 2
    case " $PARTS " in *" $name "*) ;; *) echo "== $name: not in PARTS, skipped"; return ;; esac
    echo "== $name (at most $limit s): $*"
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    rc=$?
    tail -n "${TAIL:-30}" "$OUT/$name.log"
    echo "== $name: exit $rc$([ $rc = 124 ] && echo ' (TIMED OUT)'), $((SECONDS - t0)) s"
    [ $rc = 0 ] || FAILED="$FAILED $name"
}

PARTS=${PARTS:-gpu_check lesson07 train_small}   # a rerun may name fewer
export GPU_CHECK_LOG="$OUT/gpu_check_pytest.log"
date -u
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem,power.draw \
    --format=csv 2>&1 | tee "$OUT/nvidia-smi.csv"
part gpu_check "$GPU_CHECK_LIMIT" "$PY" -m tinysparse.bench.gpu_check --full --budget 200
part lesson07 "$LESSON_LIMIT" "$PY" lessons/07_cuda_kernels/run.py
part train_small "$TRAIN_LIMIT" "$PY" -m tinysparse train --preset small --device cuda \
    --max-iters 150 --eval-interval 50 --eval-iters 5 --log-interval 10 --checkpoint-interval 150 \
    --sample-tokens 100 --out-dir /tmp/gpu-lease-small
[ -f /tmp/gpu-lease-small/log.jsonl ] && cp /tmp/gpu-lease-small/log.jsonl "$OUT/train_small.jsonl"
date -u
[ -z "$FAILED" ] || { echo "failed:$FAILED"; exit 1; }
