// Package containerd only pins github.com/containerd/containerd/v2; see ../build.sh.
package containerd
