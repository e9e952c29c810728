// Command cri-reset stops and removes every pod sandbox of a CRI runtime, as
// the kubelet would for deleted pods: the runtime tears each pod's network
// down through CNI (veth, IP address, netns) and unmounts its containers.
// `cluster.sh down` runs it after the kubelet has stopped.
//
//	cri-reset unix:///run/waylay-cluster/containerd.sock
package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: cri-reset unix:///PATH/TO/cri.sock")
		os.Exit(2)
	}
	if err := reset(os.Args[1]); err != nil {
		fmt.Fprintln(os.Stderr, "cri-reset:", err)
		os.Exit(1)
	}
}

func reset(endpoint string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	conn, err := grpc.NewClient(endpoint, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	client := runtimeapi.NewRuntimeServiceClient(conn)
	list, err := client.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{})
	if err != nil {
		return fmt.Errorf("listing pod sandboxes: %w", err)
	}
	failed := 0
	for _, pod := range list.Items {
		name := pod.Metadata.Namespace + "/" + pod.Metadata.Name
		if _, err := client.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: pod.Id}); err != nil {
			fmt.Fprintf(os.Stderr, "cri-reset: stopping %s: %v\n", name, err)
			failed++
			continue
		}
		if _, err := client.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: pod.Id}); err != nil {
			fmt.Fprintf(os.Stderr, "cri-reset: removing %s: %v\n", name, err)
			failed++
			continue
		}
		fmt.Printf("removed pod sandbox %s (%s)\n", name, pod.Id[:12])
	}
	if failed > 0 {
		return fmt.Errorf("%d of %d pod sandboxes not removed", failed, len(list.Items))
	}
	return nil
}
