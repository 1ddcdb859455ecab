# Shared by the kubelet scripts here: the conformance kit (kubelet, crictl,
# the registry of test images), a berthd, and a standalone kubelet with
# the feature gates given to kubelet_up.
#
#   NAME=<script name>; . "$(dirname "$0")/lib.sh"
kit=$(cd "$(dirname "$0")/../../../shared/conformance" 2>/dev/null && pwd) \
  || { echo "$NAME: no conformance kit at ../shared/conformance" >&2; exit 2; }
. "$kit/lib.sh"
KPID=
K=$WORK/kubelet
fail() {
  echo "$NAME FAILED: $*"
  grep -iE "${FAIL_GREP:-^E}" "$K/kubelet.log" 2>/dev/null | tail -5 | cut -c1-400
  kstop; cp "$K/kubelet.log" "$WORK/" 2>/dev/null; cleanup; exit 1
}
kstop() {
  [ -n "$KPID" ] || return 0
  kill -TERM "$KPID" 2>/dev/null; wait "$KPID" 2>/dev/null; KPID=
  [ -f "$K/sysctl-orig" ] && while read -r s v; do echo "$v" >"/proc/sys/$s"; done <"$K/sysctl-orig"
}
# kubelet_up BERTHD GATES: the registry, berthd, and a healthy kubelet
# with `featureGates: GATES` (a YAML map).
kubelet_up() {
  registry_up
  berthd_up "$1"
  mkdir -p "$K/manifests" "$K/root"
  # kubelet tunes these at start; put them back afterwards.
  for s in vm/overcommit_memory vm/panic_on_oom kernel/panic kernel/panic_on_oops; do
    echo "$s $(cat /proc/sys/$s)"
  done >"$K/sysctl-orig"
  cat >"$K/config.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
containerRuntimeEndpoint: unix://$SOCK
imageServiceEndpoint: unix://$SOCK
staticPodPath: $K/manifests
fileCheckFrequency: 2s
address: 127.0.0.1
readOnlyPort: 10255
healthzBindAddress: 127.0.0.1
authentication: {anonymous: {enabled: true}, webhook: {enabled: false}}
authorization: {mode: AlwaysAllow}
failCgroupV1: false
failSwapOn: false
oomScoreAdj: 0
resolvConf: /etc/resolv.conf
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
featureGates: $2
YAML
  "$kit/bin/kubelet" --config="$K/config.yaml" --root-dir="$K/root" --hostname-override="$NAME" \
    --v=4 >"$K/kubelet.log" 2>&1 &
  KPID=$!
  for _ in $(seq 1 60); do curl -fsS http://127.0.0.1:10248/healthz >/dev/null 2>&1 && break; sleep 1; done
  curl -fsS http://127.0.0.1:10248/healthz >/dev/null 2>&1 || fail "kubelet not healthy"
}
# pod_gone NAME SECS: removes the static pod NAME and waits until berth
# holds no container and no pod.
pod_gone() {
  rm "$K/manifests/$1.yaml"
  for _ in $(seq 1 "$2"); do
    [ -z "$(crictl ps -aq)" ] && [ -z "$(crictl pods -q)" ] && return 0
    sleep 1
  done
  fail "containers or pod still there $2 s after the manifest was removed"
}
# kubelet_done: stops kubelet and berthd, keeps kubelet's log.
kubelet_done() {
  kstop
  cp "$K/kubelet.log" "$WORK/" 2>/dev/null
  cleanup
  echo "$NAME: 1 passed, 0 failed"
}
