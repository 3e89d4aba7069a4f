#!/usr/bin/env bash
# Pack a sequence-classification checkpoint folder, the handler and a model-config.yaml
# into a TorchServe archive (model_store/<name>.mar).
#
#   ./archive.sh [--model DIR] [--name NAME] [--version V] [--config YAML] [--store DIR]
#
# Defaults: the default model (models/minilm-tweets), name "sentiment", version 1.0,
# ./model-config.yaml, ./model_store. The folder must hold what save_pretrained writes:
# config.json, the weights (model.safetensors or pytorch_model.bin) and the tokenizer
# files. An existing archive of the same name is replaced.
set -euo pipefail
cd "$(dirname "$0")"

model_dir=models/minilm-tweets
name=sentiment
version=1.0
config=model-config.yaml
store=model_store

usage() { sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
die() { echo "archive.sh: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
  case "$1" in
    --model) model_dir=${2:?}; shift 2 ;;
    --name) name=${2:?}; shift 2 ;;
    --version) version=${2:?}; shift 2 ;;
    --config) config=${2:?}; shift 2 ;;
    --store) store=${2:?}; shift 2 ;;
    -h|--help) usage 0 ;;
    *) echo "archive.sh: unknown argument: $1" >&2; usage 2 ;;
  esac
done

# the project's venv, when there is one
[ -x .venv/bin/torch-model-archiver ] && PATH="$PWD/.venv/bin:$PATH"
command -v torch-model-archiver >/dev/null \
  || die "torch-model-archiver not found; activate the venv (make venv) or pip install -r requirements.txt"
[ -d "$model_dir" ] || die "model folder '$model_dir' does not exist (the default one is built by 'make model')"
[ -f "$config" ] || die "model config '$config' does not exist"
[ -f "$model_dir/config.json" ] || die "'$model_dir' is incomplete: no config.json (expected a save_pretrained folder)"

weights=""
for candidate in model.safetensors pytorch_model.bin; do
  if [ -f "$model_dir/$candidate" ]; then weights="$model_dir/$candidate"; break; fi
done
[ -n "$weights" ] || die "'$model_dir' is incomplete: no model.safetensors or pytorch_model.bin (sharded checkpoints are not supported)"
if [ ! -f "$model_dir/tokenizer.json" ] && [ ! -f "$model_dir/vocab.txt" ] \
   && [ ! -f "$model_dir/spiece.model" ] && [ ! -f "$model_dir/sentencepiece.bpe.model" ]; then
  die "'$model_dir' is incomplete: no tokenizer files (tokenizer.json, vocab.txt or a sentencepiece model); save the tokenizer with save_pretrained too"
fi

# Everything in the checkpoint folder except the weights travels as extra files, at the
# archive's top level where from_pretrained(model_dir) finds it, with the handler's helpers.
extra=(handlers/text_classification.py)
while IFS= read -r -d '' f; do
  [ "$f" = "$weights" ] || extra+=("$f")
done < <(find "$model_dir" -maxdepth 1 -type f -print0 | sort -z)

mar="$store/$name.mar"
mkdir -p "$store"
extra_csv=$(IFS=,; echo "${extra[*]}")
echo "archiving $model_dir as $name $version -> $mar"
torch-model-archiver \
  --model-name "$name" \
  --version "$version" \
  --serialized-file "$weights" \
  --handler handlers/sentiment_handler.py \
  --extra-files "$extra_csv" \
  --config-file "$config" \
  --export-path "$store" \
  --force
echo "wrote $mar ($(du -h "$mar" | cut -f1))"
