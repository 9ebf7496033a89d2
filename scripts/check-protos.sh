#!/usr/bin/env bash
# check-protos.sh regenerates the Go code of every specs/**/*.proto into a temporary
# folder and fails when the checked-in *.pb.go files differ from it (or are missing,
# or have no .proto left). It never writes to the tree; to update the generated code,
# run it with --write.
#
# Generated code lives beside its .proto (paths=source_relative, -I specs), so that
# both the plugin SDK and the conformance suites can import the protocol.
set -euo pipefail

cd "$(dirname "$0")/.."

write=false
[[ "${1:-}" == "--write" ]] && write=true

mapfile -t protos < <(find specs -name '*.proto' -type f 2>/dev/null | sort)
if ((${#protos[@]} == 0)); then
	echo "no protos"
	exit 0
fi

PATH="$(go env GOPATH)/bin:$PATH"
for tool in protoc protoc-gen-go protoc-gen-go-grpc; do
	command -v "$tool" >/dev/null 2>&1 ||
		{ echo "check-protos: $tool is not installed: the first issue that adds a .proto adds protobuf-compiler, protoc-gen-go and protoc-gen-go-grpc to scripts/install-deps.sh" >&2; exit 1; }
done

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
protoc -I specs \
	--go_out="$out" --go_opt=paths=source_relative \
	--go-grpc_out="$out" --go-grpc_opt=paths=source_relative \
	"${protos[@]}"

if $write; then
	cp -r "$out"/. specs/
	echo "check-protos: regenerated ${#protos[@]} proto file(s)"
	exit 0
fi

stale=0
while IFS= read -r gen; do
	rel=${gen#"$out"/}
	if ! diff -u "specs/$rel" "$gen" >/dev/null 2>&1; then
		echo "check-protos: specs/$rel is out of date with its .proto" >&2
		diff -u "specs/$rel" "$gen" >&2 || true
		stale=1
	fi
done < <(find "$out" -name '*.pb.go' -type f | sort)
while IFS= read -r have; do
	rel=${have#specs/}
	if [[ ! -f "$out/$rel" ]]; then
		echo "check-protos: $have has no .proto any more" >&2
		stale=1
	fi
done < <(find specs -name '*.pb.go' -type f | sort)

if ((stale)); then
	echo "check-protos: run scripts/check-protos.sh --write and commit the result" >&2
	exit 1
fi
echo "check-protos: ${#protos[@]} proto file(s) up to date"
