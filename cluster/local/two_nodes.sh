#!/bin/bash
# A real two-node Ray cluster on one machine (for trying `mtl submit` and multi-node training locally), with its
# own temp dir and ports, so it never mixes with other Ray instances of the machine.
#
#   cluster/local/two_nodes.sh start DIR     # head (custom resource node_a) + worker (node_b); prints addresses
#   cluster/local/two_nodes.sh stop DIR      # ends exactly the processes of this cluster (never `ray stop`)
#
# DIR must be short (Ray's socket paths live in it), e.g. $(mktemp -d /tmp/mtl2n-XXXX). start writes
# DIR/gcs_address and DIR/dashboard_url. Environment: MTL_NODE_CPUS (CPUs per node, default 2); everything else
# in the environment (AWS_*, RAY_AUTH_MODE) reaches every Ray process. Token auth (Ray >= 2.59) is on unless
# RAY_AUTH_MODE=disabled; clients then need RAY_AUTH_MODE=token. MTL_PYTHON names the interpreter whose Ray runs
# the cluster (default: python3 on PATH); its bin folder goes first on the nodes' PATH, so a job's `python` is it.
set -euo pipefail

action=${1:?usage: two_nodes.sh start|stop DIR}
dir=${2:?usage: two_nodes.sh start|stop DIR}
dir=$(cd "$dir" && pwd)
python=${MTL_PYTHON:-python3}
bin=$("$python" -c 'import os, sys; print(os.path.dirname(sys.executable))')
ray="$bin/ray"
export PATH="$bin:$PATH"

free_port() {
  "$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

cluster_pids() {  # processes that name DIR/ in their command line or hold a file under it, and their descendants
  local table pids more
  table=$(ps -eo pid=,ppid=)
  pids=$( (grep -lsF -- "$dir/" /proc/[0-9]*/cmdline | cut -d/ -f3
           for fd in /proc/[0-9]*/fd; do
             ls -l "$fd" 2>/dev/null | grep -qF -- "$dir/" && echo "${fd//[!0-9]/}"
           done) | grep -vx -e "$$" -e "$BASHPID" | sort -u || true)
  # keep processes that existed before the scan (not the scan's own greps) and are not this script's children
  pids=$(awk -v list=" $(echo $pids) " -v self="$$" 'index(list, " " $1 " ") && $2 != self {print $1}' <<< "$table")
  while :; do
    more=$(awk -v list=" $(echo $pids) " 'index(list, " " $2 " ") && !index(list, " " $1 " ") {print $1}' \
           <<< "$table")
    [[ -z "$more" ]] && break
    pids="$pids $more"
  done
  echo $pids
}

case "$action" in
  start)
    export RAY_AUTH_MODE=${RAY_AUTH_MODE:-token}
    cpus=${MTL_NODE_CPUS:-2}
    gcs=$(free_port) dashboard=$(free_port) client=$(free_port)
    agent_ports() {  # each node's agents on free ports (the defaults, e.g. 52365, clash with other instances)
      echo --dashboard-agent-listen-port "$(free_port)" --dashboard-agent-grpc-port "$(free_port)" \
           --runtime-env-agent-port "$(free_port)" --metrics-export-port "$(free_port)"
    }
    echo "starting" > "$dir/gcs_address"
    "$ray" start --head --temp-dir "$dir" --port "$gcs" --node-ip-address 127.0.0.1 \
      --dashboard-host 127.0.0.1 --dashboard-port "$dashboard" --include-dashboard true \
      --ray-client-server-port "$client" $(agent_ports) \
      --num-cpus "$cpus" --resources '{"node_a": 100}' --disable-usage-stats
    # the worker's own temp dir: nodes sharing one would share (and garbage-collect) each other's runtime_env files
    mkdir -p "$dir/b"
    "$ray" start --address "127.0.0.1:$gcs" --temp-dir "$dir/b" --node-ip-address 127.0.0.1 $(agent_ports) \
      --num-cpus "$cpus" --resources '{"node_b": 100}' --disable-usage-stats
    echo "127.0.0.1:$gcs" > "$dir/gcs_address"
    echo "http://127.0.0.1:$dashboard" > "$dir/dashboard_url"
    echo "two-node Ray cluster: GCS 127.0.0.1:$gcs, job API http://127.0.0.1:$dashboard (temp dir $dir)"
    ;;
  stop)
    if [[ ! -e "$dir/gcs_address" && ! -e "$dir/session_latest" ]]; then  # refuse anything but such a cluster
      echo "$dir is not the temp dir of a cluster started by this script" >&2
      exit 2
    fi
    pids=$(cluster_pids)
    if [[ -z "$pids" ]]; then
      echo "no process of $dir is running"
      exit 0
    fi
    kill -TERM $pids 2>/dev/null || true
    for _ in $(seq 10); do  # 5 s for a clean exit, then KILL
      alive=$(for p in $pids; do [[ -e /proc/$p ]] && echo "$p"; done || true)
      [[ -z "$alive" ]] && break
      sleep 0.5
    done
    if [[ -n "${alive:-}" ]]; then
      kill -KILL $alive 2>/dev/null || true
    fi
    echo "stopped $(echo $pids | wc -w) process(es) of $dir"
    ;;
  *)
    echo "usage: two_nodes.sh start|stop DIR" >&2
    exit 2
    ;;
esac
