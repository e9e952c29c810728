// Package etcd only pins go.etcd.io/etcd/server/v3; see ../build.sh.
package etcd
