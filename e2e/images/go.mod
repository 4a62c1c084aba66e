// The e2e images' programs: pause (the pod sandbox), records (the workload)
// and mkimage (writes an OCI image archive for `ctr images import`). Standard
// library only.
module floe.dev/e2e/images

go 1.25.0
