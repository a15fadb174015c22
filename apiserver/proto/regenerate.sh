#!/usr/bin/env bash
# Rebuilds k8s-v1.33.binpb: the protobuf descriptors (a FileDescriptorSet, no source text) of
# Kubernetes' generated.proto files for the API version wasmkube serves. They are the wire
# schema the apiserver's protobuf transcoder (src/protobuf.rs) reads messages by.
#
# The .proto files are Kubernetes' (Apache-2.0), as laid out by the k8s-rs-pb crate:
#   add `k8s-rs-pb = "0.5"` to a scratch crate, `cargo fetch`, then
#   ./regenerate.sh ~/.cargo/registry/src/*/k8s-rs-pb-0.5.0/src/v1_33
# Needs protoc (Debian: protobuf-compiler).
set -euo pipefail
root=${1:?usage: regenerate.sh PROTO_ROOT}
out=$(cd "$(dirname "$0")" && pwd)/k8s-v1.33.binpb
files=()
for m in api/admission/v1 api/admissionregistration/v1 api/admissionregistration/v1beta1 \
  api/admissionregistration/v1alpha1 api/apidiscovery/v2 api/apidiscovery/v2beta1 \
  api/apiserverinternal/v1alpha1 api/apps/v1 api/apps/v1beta1 api/apps/v1beta2 \
  api/authentication/v1 api/authentication/v1alpha1 api/authentication/v1beta1 \
  api/authorization/v1 api/authorization/v1beta1 api/autoscaling/v1 api/autoscaling/v2 \
  api/batch/v1 api/certificates/v1 api/certificates/v1alpha1 api/certificates/v1beta1 \
  api/coordination/v1 api/coordination/v1alpha2 api/coordination/v1beta1 api/core/v1 \
  api/discovery/v1 api/events/v1 api/flowcontrol/v1 api/networking/v1 api/networking/v1beta1 \
  api/node/v1 api/policy/v1 api/rbac/v1 api/resource/v1beta1 api/resource/v1beta2 \
  api/scheduling/v1 api/storage/v1 api/storage/v1beta1 api/storagemigration/v1alpha1 \
  apiextensions_apiserver/pkg/apis/apiextensions/v1 apimachinery/pkg/apis/meta/v1 \
  apimachinery/pkg/runtime kube_aggregator/pkg/apis/apiregistration/v1 \
  metrics/pkg/apis/metrics/v1beta1; do
  files+=("$m/generated.proto")
done
cd "$root"
protoc -I. --include_imports --descriptor_set_out="$out" "${files[@]}" 2>/dev/null
echo "wrote $out ($(stat -c %s "$out") bytes)"
