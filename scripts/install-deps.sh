#!/usr/bin/env bash
# install-deps.sh installs what berth's build, tests and `make up` need on a fresh
# Debian machine, and nothing that is already there. It is idempotent: a second run
# installs nothing, calls no package manager and takes well under a second.
#
# Called by `make deps`, and so by `make up`, `make test` and `make check`.
set -euo pipefail

# Debian packages. etcd-server is the external etcd the tests run against; the rest are
# for the node agent and `berth up` (containerd, runc, CNI reference plugins, iptables,
# iproute2) and for building local images (busybox-static); protobuf-compiler (protoc)
# generates the Go code of specs/**/*.proto (scripts/check-protos.sh); e2fsprogs and
# util-linux (mkfs.ext4, resize2fs, e2fsck, losetup) for berth's CSI driver.
# Never add kubernetes-client: it conflicts with the kubectl builds listed below.
APT_PACKAGES=(
	etcd-server
	containerd
	runc
	containernetworking-plugins
	iptables
	iproute2
	busybox-static
	protobuf-compiler
	e2fsprogs
	util-linux
)

# Go tools, installed with `go install` into $(go env GOPATH)/bin: binary name and module
# path@version. staticcheck 2026.2.2 (v0.8.2) is the first release line that knows Go 1.26.
GO_TOOLS=(
	"staticcheck honnef.co/go/tools/cmd/staticcheck@v0.8.2"
	"gotestsum gotest.tools/gotestsum@v1.13.0"
	# The protoc generators of specs/: protoc-gen-go at go.mod's google.golang.org/protobuf
	# version, protoc-gen-go-grpc at a release whose code needs no newer grpc than go.mod's.
	"protoc-gen-go google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.6"
	"protoc-gen-go-grpc google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.5.1"
	# Kubernetes' CSI sanity suite, which cross-checks berth's CSI suite (test/conformance).
	"csi-sanity github.com/kubernetes-csi/csi-test/v5/cmd/csi-sanity@v5.6.0"
)

# kubectl builds the integration tests drive; they come with the machine image.
KUBECTL_DIR=/usr/lib/google-cloud-sdk/bin
KUBECTL_VERSIONS=(1.27 1.33)

log() { printf 'install-deps: %s\n' "$*"; }
die() { printf 'install-deps: error: %s\n' "$*" >&2; exit 1; }

# run_quiet runs a command with its output in a temporary log, shown only on failure.
run_quiet() {
	local out
	out=$(mktemp)
	if ! "$@" >"$out" 2>&1; then
		cat "$out" >&2
		rm -f "$out"
		die "command failed: $*"
	fi
	rm -f "$out"
}

as_root() {
	if [[ $EUID -eq 0 ]]; then
		"$@"
	elif command -v sudo >/dev/null 2>&1; then
		sudo "$@"
	else
		die "need root to run: $* (run this script as root)"
	fi
}

installed() {
	[[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" == "install ok installed" ]]
}

# 1. Debian packages: apt-get update and install only when something is missing.
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
	installed "$pkg" || missing+=("$pkg")
done
if ((${#missing[@]} > 0)); then
	export DEBIAN_FRONTEND=noninteractive
	run_quiet as_root apt-get update -q
	run_quiet as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
	for pkg in "${missing[@]}"; do
		installed "$pkg" || die "apt package $pkg is still not installed"
		log "installed $pkg (apt)"
	done
fi

# 2. Go tools.
command -v go >/dev/null 2>&1 || die "go is not on PATH (berth needs Go 1.26)"
gobin="$(go env GOPATH)/bin"
for tool in "${GO_TOOLS[@]}"; do
	name=${tool%% *}
	pkg=${tool#* }
	if [[ ! -x "$gobin/$name" ]]; then
		# Outside the module, so the tool's own go.mod decides its dependencies.
		(cd / && GOBIN="$gobin" GOFLAGS=-buildvcs=false run_quiet go install "$pkg")
		log "installed $name ($pkg) into $gobin"
	fi
done

# 3. kubectl: checked, never installed.
for v in "${KUBECTL_VERSIONS[@]}"; do
	[[ -x "$KUBECTL_DIR/kubectl.$v" ]] ||
		die "$KUBECTL_DIR/kubectl.$v is missing: the tests need kubectl $v from the machine image (do not apt-get install kubernetes-client, it conflicts)"
done
