// mkimage writes a one-layer OCI image archive (an OCI image layout in a tar,
// as `ctr images import` reads it) from files on this machine:
//
//	mkimage -name floe-e2e.invalid/records:1 -out records.tar -entrypoint /bin/records \
//	    /path/to/records=bin/records /bin/busybox=bin/busybox
//
// Directories bin, tmp, data and etc are always in the layer. Everything is
// deterministic (fixed times, sorted entries), so one input gives one digest.
package main

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"sort"
	"strings"
	"time"
)

type descriptor struct {
	MediaType   string            `json:"mediaType"`
	Digest      string            `json:"digest"`
	Size        int               `json:"size"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

func blob(blobs map[string][]byte, data []byte, mediaType string) descriptor {
	d := fmt.Sprintf("sha256:%x", sha256.Sum256(data))
	blobs[d] = data
	return descriptor{MediaType: mediaType, Digest: d, Size: len(data)}
}

func must(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "mkimage:", err)
		os.Exit(1)
	}
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	must(err)
	return b
}

func main() {
	name := flag.String("name", "", "image reference, e.g. floe-e2e.invalid/pause:3.10")
	out := flag.String("out", "", "archive to write")
	entrypoint := flag.String("entrypoint", "", "the image's entrypoint (space-separated)")
	flag.Parse()
	if *name == "" || *out == "" {
		must(fmt.Errorf("-name and -out are required"))
	}
	epoch := time.Unix(0, 0)

	var layer bytes.Buffer
	tw := tar.NewWriter(&layer)
	for _, dir := range []string{"bin", "data", "etc", "tmp"} {
		mode := int64(0o755)
		if dir == "tmp" {
			mode = 0o1777
		}
		must(tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: dir + "/", Mode: mode, ModTime: epoch}))
	}
	files := flag.Args()
	sort.Strings(files)
	for _, spec := range files {
		src, dst, ok := strings.Cut(spec, "=")
		if !ok {
			must(fmt.Errorf("file %q is not SRC=DST", spec))
		}
		data, err := os.ReadFile(src)
		must(err)
		must(tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: dst, Mode: 0o755, Size: int64(len(data)), ModTime: epoch}))
		_, err = tw.Write(data)
		must(err)
	}
	must(tw.Close())

	blobs := map[string][]byte{}
	layerDesc := blob(blobs, layer.Bytes(), "application/vnd.oci.image.layer.v1.tar")
	config := map[string]any{
		"architecture": "amd64",
		"os":           "linux",
		"config": map[string]any{
			"Entrypoint": strings.Fields(*entrypoint),
			"Env":        []string{"PATH=/bin"},
			"WorkingDir": "/",
		},
		"rootfs": map[string]any{"type": "layers", "diff_ids": []string{layerDesc.Digest}},
	}
	configDesc := blob(blobs, mustJSON(config), "application/vnd.oci.image.config.v1+json")
	manifest := map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.manifest.v1+json",
		"config":        configDesc,
		"layers":        []descriptor{layerDesc},
	}
	manifestDesc := blob(blobs, mustJSON(manifest), "application/vnd.oci.image.manifest.v1+json")
	tag := (*name)[strings.LastIndex(*name, ":")+1:]
	manifestDesc.Annotations = map[string]string{
		"io.containerd.image.name":          *name,
		"org.opencontainers.image.ref.name": tag,
	}
	index := map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.index.v1+json",
		"manifests":     []descriptor{manifestDesc},
	}

	f, err := os.Create(*out)
	must(err)
	aw := tar.NewWriter(f)
	put := func(name string, data []byte) {
		must(aw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: int64(len(data)), ModTime: epoch}))
		_, err := aw.Write(data)
		must(err)
	}
	put("oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`))
	put("index.json", mustJSON(index))
	digests := make([]string, 0, len(blobs))
	for d := range blobs {
		digests = append(digests, d)
	}
	sort.Strings(digests)
	for _, d := range digests {
		put("blobs/sha256/"+strings.TrimPrefix(d, "sha256:"), blobs[d])
	}
	must(aw.Close())
	must(f.Close())
	fmt.Printf("%s %s\n", *name, manifestDesc.Digest)
}
