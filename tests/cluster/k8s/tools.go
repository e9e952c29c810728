// Package k8s only pins k8s.io/kubernetes; the commands are built with
// `go build k8s.io/kubernetes/cmd/...` from this directory (see ../build.sh).
package k8s
