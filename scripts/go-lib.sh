# Sourced by scripts/setup and tests/kubernetes/build. Kubernetes v1.30.3 is built with the Go
# its release used (go1.22.5, kubernetes/kubernetes .go-version at v1.30.3): a newer Go changes
# behaviour kubeadm relies on (seen with go1.26: net/url rejects "[10.96.0.1]", so kubeadm's
# HTTPProxyCIDR preflight check fails on every IPv4 subnet). scripts/setup fetches that toolchain
# from the Go module proxy (module golang.org/toolchain) into /opt/kubedna-go, with any Go that
# is on the machine (Debian's golang-go 1.19 where there is none).
KUBEDNA_GO_VERSION=go1.22.5
KUBEDNA_GO_ROOT=/opt/kubedna-go

# Prints the path of the pinned go when it is installed.
go_pinned() {
    local g=$KUBEDNA_GO_ROOT/bin/go
    [ -x "$g" ] && [ "$(GOTOOLCHAIN=local "$g" env GOVERSION 2>/dev/null)" = "$KUBEDNA_GO_VERSION" ] && echo "$g"
}

# Prints the path of any go on the machine (to fetch the pinned one with).
go_any() {
    local g
    for g in $(command -v go 2>/dev/null) /usr/local/go/bin/go /usr/lib/go/bin/go; do
        [ -x "$g" ] && { echo "$g"; return 0; }
    done
    return 1
}
