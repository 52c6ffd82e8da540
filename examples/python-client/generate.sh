#!/usr/bin/env bash
# Generates the Python message and stub modules for every Concord .proto into gen/.
#
# gen/ is rebuilt from scratch each time and never committed. Import paths mirror the proto
# packages, so with gen/ on sys.path `from concord.shop.v1 import shop_pb2, shop_pb2_grpc`
# works (client.py adds it). Needs grpcio-tools (requirements.txt); $PYTHON picks the
# interpreter (default python3).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

PYTHON="${PYTHON:-python3}"
PROTO_ROOT=../../proto
OUT=gen

protos=()
while IFS= read -r proto; do
  protos+=("${proto#"$PROTO_ROOT"/}")
done < <(find "$PROTO_ROOT" -name '*.proto' | sort)
if [ "${#protos[@]}" -eq 0 ]; then
  echo "generate.sh: no .proto files under $PROTO_ROOT" >&2
  exit 1
fi

rm -rf "$OUT"
mkdir -p "$OUT"
"$PYTHON" -m grpc_tools.protoc -I "$PROTO_ROOT" \
  --python_out="$OUT" --grpc_python_out="$OUT" "${protos[@]}"

# Regular packages (not namespace packages), so imports resolve the same on every Python.
find "$OUT" -mindepth 1 -type d -exec touch {}/__init__.py \;
echo "generate.sh: generated ${#protos[@]} protos into $(pwd)/$OUT"
