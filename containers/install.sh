#!/usr/bin/env bash
# Install metcli from its wheel into the image's Python: exactly what setup.cfg declares.
#
#   bash containers/install.sh cpu|gpu WHEEL_DIR
#
# WHEEL_DIR holds metcli's wheel and the wheels the build stage made of its dependencies
# (`pip wheel --wheel-dir WHEEL_DIR .`: pyradiomics has no binary wheel and needs a C
# compiler, which the slim run-time images lack); pip takes them from there first.
#
# Shared by containers/Dockerfile (both targets) and Apptainerfile, so the images differ
# only in the variant given here:
#   cpu  metcli[nnunet,cnn] with the CPU build of torch (TORCH_INDEX_URL, default
#        https://download.pytorch.org/whl/cpu, is an extra index for torch's +cpu wheels)
#   gpu  metcli[nnunet,cnn,gpu] with PyPI's CUDA build of torch (or TORCH_INDEX_URL);
#        onnxruntime-gpu replaces onnxruntime, as setup.cfg's gpu extra says, and the CUDA
#        libraries of torch's nvidia-* wheels are made visible to ONNX Runtime (ldconfig).
# The package names and versions come from the wheel's metadata (setup.cfg): there is no
# second list here. Runs as root at image build time; needs the network only then.
set -euo pipefail

usage="usage: bash containers/install.sh cpu|gpu WHEEL_DIR"
variant=${1:?$usage}
wheel_dir=${2:?$usage}
python=${PYTHON:-python3}

shopt -s nullglob
wheels=("$wheel_dir"/metcli-*.whl)
if [[ ${#wheels[@]} -ne 1 ]]; then
    echo "install.sh: $wheel_dir: expected one metcli-*.whl, found ${#wheels[@]}; build it with" \
         "'python -m pip wheel --wheel-dir $wheel_dir .' in the checkout" >&2
    exit 1
fi
wheel=${wheels[0]}

index=()
case $variant in
    cpu)
        extras=nnunet,cnn
        index=(--extra-index-url "${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}")
        ;;
    gpu)
        extras=nnunet,cnn,gpu
        if [[ -n ${TORCH_INDEX_URL:-} ]]; then
            index=(--extra-index-url "$TORCH_INDEX_URL")
        fi
        ;;
    *)
        echo "install.sh: unknown variant '$variant'; $usage" >&2
        exit 2
        ;;
esac

"$python" -m pip install --no-cache-dir --upgrade pip
"$python" -m pip install --no-cache-dir --find-links "$wheel_dir" "${index[@]}" "${wheel}[${extras}]"

if [[ $variant == gpu ]]; then
    # onnxruntime and onnxruntime-gpu both own the onnxruntime package folder: keep the
    # GPU build, at the version pip resolved for the gpu extra above.
    ort_gpu=$("$python" -m pip freeze --all | grep -i '^onnxruntime[-_]gpu==')
    "$python" -m pip uninstall --yes onnxruntime
    "$python" -m pip install --no-cache-dir --no-deps --force-reinstall "$ort_gpu"
    # The CUDA runtime, cuBLAS, cuFFT, cuDNN... come with torch's nvidia-* wheels; list their
    # folders for the dynamic linker so ONNX Runtime's CUDA provider finds them too.
    "$python" - > /etc/ld.so.conf.d/metcli-nvidia.conf <<'PY'
import glob, os, sysconfig
root = os.path.join(sysconfig.get_paths()["purelib"], "nvidia")
for folder in sorted({os.path.dirname(p) for p in glob.glob(f"{root}/**/lib/*.so*", recursive=True)}):
    print(folder)
PY
    ldconfig
fi

metcli --version
