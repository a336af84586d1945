#!/usr/bin/env bash
# Initialise the four homes of deploy/compose.yaml and wire peers and trust as in the demo:
# csam shared by all, le-only between police and ncmec only.
# COMPOSE="podman compose" runs it with podman. -T: without it compose gives the command a
# terminal, which ends every line it prints with a carriage return, and the node ids read
# back below would carry it into every peer and trust entry.
set -euo pipefail
cd "$(dirname "$0")"
read -r -a COMPOSE <<<"${COMPOSE:-docker compose}"
run() { "${COMPOSE[@]}" run --rm --no-deps -T "$1" "${@:2}"; }
declare -A ID
for n in ncmec childfocus platform police; do
  ID[$n]=$(run "$n" init /data/node --name "$n" --listen 0.0.0.0:7400 --url "http://$n:7400" | tail -1 | tr -d '\r')
  [[ ${ID[$n]} =~ ^ed25519:[A-Za-z0-9_-]{43}$ ]] || { echo "init $n printed no node id: ${ID[$n]}" >&2; exit 1; }
done
link() { # a b collections...
  local a=$1 b=$2; shift 2
  local shares=(); for c in "$@"; do shares+=(--share "$c"); done
  run "$a" peer add "$b" "http://$b:7400" "${ID[$b]}" "${shares[@]}"
  run "$b" peer add "$a" "http://$a:7400" "${ID[$a]}" "${shares[@]}"
}
link childfocus ncmec csam
link ncmec platform csam
link ncmec police csam le-only
trust() { run "$1" trust add "${ID[$2]}" "$3" --name "$2"; }
trust ncmec childfocus csam; trust ncmec platform csam; trust ncmec police csam; trust ncmec police le-only
trust childfocus ncmec csam; trust childfocus platform csam
trust platform ncmec csam; trust platform childfocus csam
trust police ncmec csam; trust police childfocus csam; trust police ncmec le-only
echo "initialised; now: ${COMPOSE[*]} up -d"
