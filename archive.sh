#!/usr/bin/env bash
# Pack a sequence-classification checkpoint folder, the handler and a model-config.yaml
# into a TorchServe archive.
#
#   ./archive.sh [--model DIR] [--name NAME] [--version V] [--config YAML]
#                [--option KEY=VALUE ...] [--handler FILE.py] [--out FILE.mar]
#
# Defaults: the default model (models/minilm-tweets), name "sentiment", version 1.0,
# ./model-config.yaml as it is, out model_store/NAME.mar. Each --option sets a handler
# option in the packed copy of the config (e.g. --option quantize=int8); with
# --option backend=onnxruntime the checkpoint is also exported to ONNX (and quantized for
# quantize=int8) by handlers/export_onnx.py, which checks the graph against PyTorch. The
# folder must hold what save_pretrained writes: config.json, the weights
# (model.safetensors or pytorch_model.bin) and the tokenizer files. An existing archive at
# --out is replaced. --handler packs a handler of your own in place of
# handlers/sentiment_handler.py: one class that extends SentimentHandler (imported from
# sentiment_handler, which is packed beside it).
set -euo pipefail

repo=$(cd "$(dirname "$0")" && pwd)
model_dir=$repo/models/minilm-tweets
name=sentiment
version=1.0
config=$repo/model-config.yaml
options=()
handler=$repo/handlers/sentiment_handler.py
out=""

usage() { sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
die() { echo "archive.sh: $*" >&2; exit 1; }
absolute() { case "$1" in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }

while [ $# -gt 0 ]; do
  case "$1" in
    --model) model_dir=$(absolute "${2:?}"); shift 2 ;;
    --name) name=${2:?}; shift 2 ;;
    --version) version=${2:?}; shift 2 ;;
    --config) config=$(absolute "${2:?}"); shift 2 ;;
    --option) options+=("${2:?}"); shift 2 ;;
    --handler) handler=$(absolute "${2:?}"); shift 2 ;;
    --out) out=$(absolute "${2:?}"); shift 2 ;;
    -h|--help) usage 0 ;;
    *) echo "archive.sh: unknown argument: $1" >&2; usage 2 ;;
  esac
done
out=${out:-$repo/model_store/$name.mar}
case "$out" in *.mar) ;; *) die "--out must name a .mar file" ;; esac
for option in ${options[@]+"${options[@]}"}; do
  case "$option" in *=*) ;; *) die "--option takes KEY=VALUE, not '$option'" ;; esac
done

# the project's venv, when there is one
[ -x "$repo/.venv/bin/torch-model-archiver" ] && PATH="$repo/.venv/bin:$PATH"
command -v torch-model-archiver >/dev/null \
  || die "torch-model-archiver not found; activate the venv (make venv) or pip install -r requirements.txt"
[ -d "$model_dir" ] || die "model folder '$model_dir' does not exist (the default one is built by 'make model')"
[ -f "$config" ] || die "model config '$config' does not exist"
[ -f "$handler" ] || die "handler '$handler' does not exist"
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

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

python=$(command -v python || command -v python3)
if [ ${#options[@]} -gt 0 ]; then
  "$python" - "$config" "$work/model-config.yaml" "${options[@]}" <<'EOF' || die "could not apply --option to '$config'"
import sys, yaml
source, target, *options = sys.argv[1:]
config = yaml.safe_load(open(source)) or {}
for option in options:
    key, value = option.split("=", 1)
    config.setdefault("handler", {})[key] = yaml.safe_load(value)
yaml.safe_dump(config, open(target, "w"), sort_keys=False)
EOF
  config=$work/model-config.yaml
fi

# Everything in the checkpoint folder except the weights travels as extra files, at the
# archive's top level where from_pretrained(model_dir) finds it, with the handler's helpers.
# The folder and its files may be symbolic links, as in the Hugging Face cache (a snapshot's
# files link to its blobs): their targets are packed.
extra=()
while read -r module; do  # what sentiment_handler.py imports: the one list
  case "$module" in ''|'#'*) ;; *) extra+=("$repo/handlers/$module.py") ;; esac
done < "$repo/handlers/archive-modules.txt"
[ "$handler" = "$repo/handlers/sentiment_handler.py" ] || extra+=("$repo/handlers/sentiment_handler.py")

# backend: onnxruntime: the ONNX graph is exported (and quantized) now, never in a worker
read -r backend quantize < <("$python" -c '
import sys, yaml
handler = (yaml.safe_load(open(sys.argv[1])) or {}).get("handler") or {}
print(handler.get("backend", "torch"), handler.get("quantize", "none"))' "$config") \
  || die "could not read the handler options of '$config'"
if [ "$backend" = onnxruntime ]; then
  "$python" "$repo/handlers/export_onnx.py" "$model_dir" "$work/onnx" --quantize "$quantize" \
    || die "'$model_dir' could not be exported to ONNX for backend: onnxruntime (see above)"
  extra+=("$work/onnx/model.onnx")
fi
while IFS= read -r -d '' f; do
  [ "$f" = "$weights" ] || extra+=("$f")
done < <(find -L "$model_dir" -maxdepth 1 -type f -print0 | sort -z)  # -L: links followed (a cache's snapshot)
extra_csv=$(IFS=,; echo "${extra[*]}")

echo "archiving $model_dir as $name $version${options[*]+ (${options[*]})} -> $out"
torch-model-archiver \
  --model-name "$name" \
  --version "$version" \
  --serialized-file "$weights" \
  --handler "$handler" \
  --extra-files "$extra_csv" \
  --config-file "$config" \
  --export-path "$work" \
  --force
mkdir -p "$(dirname "$out")"
mv "$work/$name.mar" "$out"
echo "wrote $out ($(du -h "$out" | cut -f1))"
