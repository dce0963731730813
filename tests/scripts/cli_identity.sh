#!/usr/bin/env bash
# Byte-identity of the CLI's outputs across a change (issue 17: behaviour unchanged by a refactor).
# Usage: tests/scripts/cli_identity.sh BASE_REV [HEAD_REV]
# Builds both revisions in temporary worktrees, runs the same verbs on the fixtures with each (one thread, so the
# results do not depend on how work is split), and compares every output file byte for byte (curvature files
# without their created_by stamp, which names the tool's version).
set -euo pipefail
repo=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
base=$1; head=${2:-HEAD}
work=$(mktemp -d); trap 'git -C "$repo" worktree remove --force "$work/base" 2>/dev/null || true; git -C "$repo" worktree remove --force "$work/head" 2>/dev/null || true; rm -rf "$work"' EXIT
run_all() { # $1 = worktree, $2 = output folder
  local cli="dotnet $1/src/FisherKernels.Cli/bin/Release/net10.0/fisherkernels.dll" f=$repo/tests/fixtures o=$2
  mkdir -p "$o"
  for m in gpt2_tiny llama_tiny bert_tiny; do
    $cli forward --model $f/$m.onnx --tokens $f/$m.tokens.npy --out $o/$m.logits.npy --threads 1
    $cli fit --model $f/$m.onnx --tokens $f/$m.tokens.npy --fisher sampled --samples 2 --seed 3 --threads 1 --out $o/$m.sampled.safetensors >/dev/null
    $cli fit --model $f/$m.onnx --tokens $f/$m.tokens.npy --targets $f/$m.targets.npy --fisher empirical --threads 1 --out $o/$m.empirical.safetensors >/dev/null
    $cli score --model $f/$m.onnx --tokens $f/$m.tokens.npy --method isotropic --threads 1 --out $o/$m.iso.json
    $cli score --model $f/$m.onnx --tokens $f/$m.tokens.npy --targets $f/$m.targets.npy --params all --method isotropic --threads 1 --out $o/$m.iso_all.csv
    $cli score --model $f/$m.onnx --tokens $f/$m.tokens.npy --curvature $o/$m.sampled.safetensors --prior-precision 0.5 --threads 1 --out $o/$m.kfac.json 2>/dev/null
    $cli score --model $f/$m.onnx --tokens $f/$m.tokens.npy --curvature $o/$m.sampled.safetensors --memory-budget 20000 --rank 8 --samples 3 --seed 1 --threads 1 --out $o/$m.lowrank.csv 2>/dev/null
    $cli jvp --model $f/$m.onnx --tokens $f/$m.tokens.npy --direction $f/$m.direction.safetensors --threads 1 --out $o/$m.jvp.npy
    $cli calibrate --model $f/$m.onnx --tokens $f/$m.tokens.npy --curvature $o/$m.sampled.safetensors --threads 1 --out $o/$m.calibrated.safetensors > $o/$m.calibrate.txt 2>/dev/null
  done
  $cli fit --model $f/gpt2_tiny.onnx --tokens $f/gpt2_tiny.tokens.npy --fisher exact --threads 1 --out $o/gpt2_tiny.exact.safetensors >/dev/null
  $cli merge $o/gpt2_tiny.sampled.safetensors $o/llama_tiny.sampled.safetensors --out $o/refused.safetensors 2>/dev/null && exit 1
  $cli merge $o/gpt2_tiny.sampled.safetensors $o/gpt2_tiny.sampled.safetensors --out $o/merged.safetensors >/dev/null
  # created_by names the tool's version: blank it before comparing.
  for s in $o/*.safetensors; do sed -i -E 's/"created_by":"[^"]*"/"created_by":""/' "$s"; done
  sed -i "s|$o|OUT|g" $o/*.txt # the output folder's name differs between the sides
}
for side in base head; do
  rev=$([ $side = base ] && echo "$base" || echo "$head")
  git -C "$repo" worktree add --detach "$work/$side" "$rev" >/dev/null 2>&1
  dotnet build "$work/$side/src/FisherKernels.Cli/FisherKernels.Cli.csproj" -c Release -nologo -v q >/dev/null
  run_all "$work/$side" "$work/out-$side"
done
if diff -r "$work/out-base" "$work/out-head"; then echo "cli_identity: $(ls "$work/out-base" | wc -l) outputs byte-identical between $base and $head"; else echo "cli_identity: outputs differ"; exit 1; fi
