#!/usr/bin/env bash
# The prepared GPU check (bench/gpu_check.py): under 8 minutes on one GPU, one Markdown table,
# also written to $OUT/gpu_check.md when OUT is set.
#
#   bash bench/gpu_check.sh               on a GPU machine
#   bash bench/gpu_check.sh --cpu-smoke   anywhere: every check on the CPU at tiny sizes
#
# Python: $PYTHON, else .venv/bin/python when `make install` made one, else python3. The project
# and its extras ([gpu,dev]: faiss-gpu, ray, ...) are installed with pip where a registry answers
# (within a minute); on a machine that reaches none, the interpreter's own packages serve, plus
# any wheels carried in .whl/ (installed with --no-index into a scratch folder), and a check
# whose package is missing says so in the table. DMDL_GPU_CHECK_INSTALL=0 skips the pip step.
set -uo pipefail
cd "$(dirname "$0")/.."

if [[ -n "${PYTHON:-}" ]]; then
    PY=$PYTHON
elif [[ -x .venv/bin/python ]]; then
    PY=.venv/bin/python
else
    PY=python3
fi
EXTRAS=gpu,dev
[[ " $* " == *" --cpu-smoke "* ]] && EXTRAS=cpu,dev

if [[ -d .whl ]] && compgen -G ".whl/*.whl" >/dev/null; then
    echo "gpu_check: installing the wheels carried in .whl/"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/gpu_check_site \
        .whl/*.whl && export PYTHONPATH=/tmp/gpu_check_site${PYTHONPATH:+:$PYTHONPATH}
fi
if [[ "${DMDL_GPU_CHECK_INSTALL:-1}" != 0 ]]; then
    echo "gpu_check: pip install -e .[$EXTRAS] with $PY"
    if ! timeout 60 "$PY" -m pip install -q --retries 0 --timeout 10 -e ".[$EXTRAS]"; then
        echo "gpu_check: the install failed (no registry here?): going on with the packages already installed"
    fi
fi
# The working tree first, installed or not.
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
"$PY" -c "import torch; print('gpu_check: torch', torch.__version__, 'CUDA devices:', torch.cuda.device_count())"
# Each check has its own time budget, 7 minutes in all (about 3 used on an H200 host); the table comes last.
"$PY" bench/gpu_check.py "$@"
