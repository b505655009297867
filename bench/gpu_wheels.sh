#!/usr/bin/env bash
# Wheels for a GPU machine that cannot reach a package index (the device of bench/gpu_smoke.sh): the packages
# breastfusion imports that such an image (Python 3.12 with torch, lightning, scikit-learn, pandas, matplotlib,
# safetensors, typer, rich, jinja2) lacks, at the versions of the environment this runs in, into .whl/.
# There:  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
#         PYTHON=python3 bash bench/gpu_smoke.sh
#   bash bench/gpu_wheels.sh [python-version, default 3.12]
set -euo pipefail
cd "$(dirname "$0")/.."
PY_VERSION="${1:-3.12}"
PYTHON="${PYTHON:-python}"
PACKAGES=(pydantic pydantic_core annotated-types typing-inspection skops prettytable wcwidth crepes grad-cam ttach
          segmentation_models_pytorch pydicom pylibjpeg pylibjpeg-openjpeg pylibjpeg-rle openpyxl et_xmlfile ImageHash
          PyWavelets fastapi starlette uvicorn python-multipart timm)
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
mkdir -p .whl
for name in "${PACKAGES[@]}"; do
  version="$("$PYTHON" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name")"
  if ! "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version "$PY_VERSION" \
      --implementation cp "${PLATFORMS[@]}" -d .whl "$name==$version" 2>/dev/null; then
    # published as a source archive only (grad-cam): build a wheel here; these are pure Python
    "$PYTHON" -m pip wheel -q --no-deps --no-build-isolation -w .whl "$name==$version"
  fi
done
du -sh .whl
