// floe-registrar registers a CSI node plugin with kubelet, the job that
// csi-node-driver-registrar does in a real deployment. It is written here
// because the Go module proxy serves no release of that sidecar; it takes
// the same flags the harness would give the sidecar.
//
// It asks the plugin for its name (CSI Identity.GetPluginInfo on
// --csi-address), then serves kubelet's plugin-registration API on
// <--plugin-registration-path>/<name>-reg.sock: GetInfo answers with the
// plugin's name and the socket path kubelet must use
// (--kubelet-registration-path); a failed registration ends the process so
// that whoever supervises it sees the failure.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	registration "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
)

var version = "dev"

type registrar struct {
	registration.UnimplementedRegistrationServer
	name     string
	endpoint string
}

func (r *registrar) GetInfo(context.Context, *registration.InfoRequest) (*registration.PluginInfo, error) {
	return &registration.PluginInfo{
		Type:              registration.CSIPlugin,
		Name:              r.name,
		Endpoint:          r.endpoint,
		SupportedVersions: []string{"1.0.0"},
	}, nil
}

func (r *registrar) NotifyRegistrationStatus(_ context.Context, s *registration.RegistrationStatus) (*registration.RegistrationStatusResponse, error) {
	if !s.PluginRegistered {
		log.Printf("kubelet refused plugin %s: %s", r.name, s.Error)
		os.Exit(1)
	}
	log.Printf("kubelet registered plugin %s at %s", r.name, r.endpoint)
	return &registration.RegistrationStatusResponse{}, nil
}

// pluginName asks the CSI plugin for its name, retrying until the deadline.
func pluginName(address string, timeout time.Duration) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	conn, err := grpc.NewClient("unix://"+address, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return "", fmt.Errorf("dial %s: %w", address, err)
	}
	defer conn.Close()
	client := csi.NewIdentityClient(conn)
	for {
		info, err := client.GetPluginInfo(ctx, &csi.GetPluginInfoRequest{})
		if err == nil {
			if info.GetName() == "" {
				return "", fmt.Errorf("plugin at %s has no name", address)
			}
			return info.GetName(), nil
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("GetPluginInfo on %s: %w", address, err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func main() {
	csiAddress := flag.String("csi-address", "", "path of the CSI plugin's socket, as this process sees it")
	kubeletPath := flag.String("kubelet-registration-path", "", "path of the CSI plugin's socket, as kubelet sees it")
	registry := flag.String("plugin-registration-path", "/registration", "kubelet's plugin registry directory")
	timeout := flag.Duration("timeout", 30*time.Second, "how long to wait for the plugin's name")
	showVersion := flag.Bool("version", false, "print the version and exit")
	flag.Parse()
	if *showVersion {
		fmt.Println(version)
		return
	}
	if *csiAddress == "" || *kubeletPath == "" {
		log.Fatal("--csi-address and --kubelet-registration-path are required")
	}
	name, err := pluginName(*csiAddress, *timeout)
	if err != nil {
		log.Fatal(err)
	}
	socket := filepath.Join(*registry, name+"-reg.sock")
	if err := os.Remove(socket); err != nil && !os.IsNotExist(err) {
		log.Fatalf("remove stale %s: %v", socket, err)
	}
	listener, err := net.Listen("unix", socket)
	if err != nil {
		log.Fatalf("listen on %s: %v", socket, err)
	}
	// kubelet (root) is the only client.
	if err := os.Chmod(socket, 0o600); err != nil {
		log.Fatalf("chmod %s: %v", socket, err)
	}
	server := grpc.NewServer()
	registration.RegisterRegistrationServer(server, &registrar{name: name, endpoint: *kubeletPath})
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-signals
		server.Stop()
		os.Remove(socket)
		os.Exit(0)
	}()
	log.Printf("floe-registrar %s: plugin %s, registration socket %s", version, name, socket)
	if err := server.Serve(listener); err != nil {
		log.Fatal(err)
	}
}
