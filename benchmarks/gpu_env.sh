# Sourced by gpu_session.sh and gpu_finetune.sh (needs OUT and CARRY set): the output folder, unbuffered
# Python (PY, default python3), and this checkout's src/ on the path, with the carried wfdb wheel
# installed where the GPU machine lacks wfdb.
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
if ! $PY -c "import wfdb" 2>/dev/null; then
    $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/ecgtl-site "$CARRY"/whl/*.whl || exit 1
    export PYTHONPATH=$PWD/src:/tmp/ecgtl-site
else
    export PYTHONPATH=$PWD/src
fi
