//go:build tools

// Package tools pins crictl; it is never compiled (build tag "tools").
package tools

import _ "sigs.k8s.io/cri-tools/cmd/crictl"
