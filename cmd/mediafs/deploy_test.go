package main

import (
	"os"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

// TestKubernetesSidecarManifestIsValid decodes the example strictly into
// the Kubernetes API types (an unknown or misspelt field fails), offline,
// and checks what the sidecar pattern relies on.
func TestKubernetesSidecarManifestIsValid(t *testing.T) {
	b, err := os.ReadFile("../../deploy/kubernetes/sidecar.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var d appsv1.Deployment
	if err := yaml.UnmarshalStrict(b, &d); err != nil {
		t.Fatalf("sidecar.yaml is not a valid Deployment: %v", err)
	}
	spec := d.Spec.Template.Spec
	var side *corev1.Container
	for i := range spec.InitContainers {
		c := &spec.InitContainers[i]
		if c.RestartPolicy != nil && *c.RestartPolicy == corev1.ContainerRestartPolicyAlways {
			side = c
		}
	}
	if side == nil {
		t.Fatal("no native sidecar (init container with restartPolicy: Always)")
	}
	if side.StartupProbe == nil || side.StartupProbe.HTTPGet == nil || side.StartupProbe.HTTPGet.Path != "/healthz" {
		t.Errorf("sidecar startupProbe should GET /healthz, got %+v", side.StartupProbe)
	}
	propagation := func(c corev1.Container, want corev1.MountPropagationMode) bool {
		for _, m := range c.VolumeMounts {
			if m.MountPath == "/media" && m.MountPropagation != nil && *m.MountPropagation == want {
				return true
			}
		}
		return false
	}
	if !propagation(*side, corev1.MountPropagationBidirectional) {
		t.Error("sidecar must mount /media with Bidirectional propagation")
	}
	if len(spec.Containers) == 0 || !propagation(spec.Containers[0], corev1.MountPropagationHostToContainer) {
		t.Error("app container must mount /media with HostToContainer propagation")
	}
	for _, env := range side.Env {
		if strings.Contains(env.Name, "SECRET") && (env.ValueFrom == nil || env.ValueFrom.SecretKeyRef == nil) {
			t.Errorf("%s must come from a Secret", env.Name)
		}
	}
	for _, a := range side.Args {
		if strings.Contains(strings.ToLower(a), "secret") {
			t.Errorf("a secret-looking argument in the sidecar's args: %q", a)
		}
	}
	if spec.TerminationGracePeriodSeconds == nil || *spec.TerminationGracePeriodSeconds < 90 {
		t.Errorf("terminationGracePeriodSeconds must exceed the 60 s drain, got %v", spec.TerminationGracePeriodSeconds)
	}
}
